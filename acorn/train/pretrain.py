"""Pretraining: next-token cross-entropy on token shards, the recipe of the seeds.

    for each step:
        lr = schedule(step)                        # warmup, then cosine (or WSD)
        for each micro-batch of the step:          # gradient accumulation builds
            loss = model(x, targets=y) / accum     # a large batch from small ones
            loss.backward()
        clip the global gradient norm              # one bad batch cannot blow up
        optimizer.step()                           # AdamW (or Muon + AdamW)

around it: bf16 autocast where the hardware has it, flushed denormals on CPU,
atomic checkpoints with everything needed to continue exactly (model,
optimizer, step, loader position, RNG states), a guard that skips steps whose
loss or gradient is not finite, periodic validation (loss, perplexity, bits
per byte), logging (loss, lr, grad norm, tokens/s, MFU), and the outputs a
person reads: a progress bar, metrics.jsonl, loss.png and report.md.

The same function runs under torchrun: each process takes its share of every
global batch, DDP averages gradients (or FSDP2 shards the model with
`--train.fsdp true`), and rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from acorn import hardware
from acorn.errors import AcornError
from acorn.fileio import atomic_write, read_json, write_text
from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.optim import OptimConfig, build_optimizers, lr_multiplier, set_lr


# ----------------------------------------------------------------- config
@dataclass
class LoopConfig:
    seq_len: int = 256
    micro_batch: int = 16  # sequences per forward pass, per process
    batch_tokens: int = 16384  # tokens per optimizer step, all processes: accumulation = this / (micro x seq x world)
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early when this much time has passed (the schedule still uses max_steps)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    pack_documents: bool = False  # rows start at document boundaries; no attention across documents
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2)
    nan_patience: int = 5  # consecutive non-finite steps before giving up


@dataclass
class EvalConfig:
    every: int = 100
    batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 250


@dataclass
class PretrainConfig:
    data: str = "runs/data"
    out: str = "runs/pretrain"
    seed: int = 0
    init_from: str | None = None  # a Hugging Face / Acorn checkpoint directory to start from
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("micro"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def _all_sum(value: float, dist_: Dist) -> float:
    if dist_.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


# ---------------------------------------------------------- checkpoints
def save_state(path: Path, model_state: dict, optimizer_states: list[dict], step: int, loader, extra: dict) -> None:
    """Everything needed to continue exactly, written atomically."""
    state = {
        "model": model_state,
        "optimizers": optimizer_states,
        "step": step,
        "loader": loader.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        **extra,
    }
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_state(path: Path) -> dict:
    # Our own files, but read like any other: tensors and plain data only.
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return ckpts[-1] if ckpts else None


# ----------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, loader, batches: int, autocast, token_nbytes: torch.Tensor | None, device) -> dict:
    """Validation loss (nats per token), perplexity = exp(loss), and bits per
    byte: the same text's loss divided by its UTF-8 size, which unlike the loss
    compares across tokenizers. Targets that are special tokens (no bytes of
    text) are left out of bits per byte, as nanochat does."""
    import torch.nn.functional as F

    model.eval()
    nll_sum = n = nll_text = n_bytes = 0.0
    for batch in loader.iter_eval(batches):
        x, y = batch.x.to(device), batch.y.to(device)
        docs = batch.document_ids.to(device) if batch.document_ids is not None else None
        with autocast():
            logits = model(x, document_ids=docs).logits
        y = y.flatten()
        nll = F.cross_entropy(logits.float().flatten(0, 1), y, ignore_index=-100, reduction="none")
        valid = y != -100
        nll_sum += nll[valid].sum().item()
        n += valid.sum().item()
        if token_nbytes is not None:
            b = token_nbytes[y.clamp(min=0)] * valid
            nll_text += nll[b > 0].sum().item()
            n_bytes += b.sum().item()
    model.train()
    if not n:
        return {}
    loss = nll_sum / n
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    if n_bytes:
        out["val_bpb"] = nll_text / math.log(2) / n_bytes
    return out


def token_nbytes(tok, device) -> torch.Tensor:
    """UTF-8 length of every token's text; 0 for special tokens."""
    return torch.tensor([0 if tok.is_special(i) else len(tok.token_bytes(i)) for i in range(tok.vocab_size)],
                        dtype=torch.float64, device=device)


# ---------------------------------------------------------------- loop
def pretrain(cfg: PretrainConfig, *, resume: bool = False) -> Path:
    """Pretrain on the token shards in cfg.data; returns the run directory."""
    from acorn.data.loader import TokenLoader

    device, dist_ = start(cfg)
    meta = _data_meta(Path(cfg.data))
    model = build_model(cfg, device, meta["tokenizer"]["vocab_size"])
    loader = TokenLoader(cfg.data, "train", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                         seed=cfg.seed, rank=dist_.rank, world_size=dist_.world, pack_documents=cfg.train.pack_documents)
    # Only read when evaluating: data prepared without a validation split trains with --eval.every 0.
    val_loader = None
    if cfg.eval.every:
        try:
            val_loader = TokenLoader(cfg.data, "val", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                                     seed=cfg.seed, pack_documents=cfg.train.pack_documents)
        except AcornError as e:  # a tiny corpus may hold back too little to evaluate on
            if dist_.main:
                print(f"no validation: {e}", flush=True)
    return train(cfg, model, loader, val_loader, _tokenizer(meta), device, dist_, resume=resume, stage="pretrain")


def start(cfg) -> tuple[torch.device, Dist]:
    """Device, processes, seeds: the first thing every training stage does."""
    device = hardware.resolve_device()
    dist_ = init_distributed(device)
    hardware.flush_denormals(device)
    torch.manual_seed(cfg.seed + dist_.rank)
    random.seed(cfg.seed)
    return device, dist_


def build_model(cfg, device: torch.device, vocab_size: int | None = None) -> Transformer:
    """A fresh model from cfg.model, or the checkpoint in cfg.init_from (which then sets cfg.model)."""
    if cfg.init_from:
        from acorn.model.checkpoint import load as load_checkpoint

        model = load_checkpoint(cfg.init_from, dtype="float32", device=str(device))
        cfg.model = model.config
    else:
        if vocab_size and cfg.model.vocab_size < vocab_size:
            raise AcornError(f"model vocab_size {cfg.model.vocab_size} is smaller than the data's tokenizer "
                             f"({vocab_size}); set --model.vocab_size {vocab_size}")
        model = Transformer(cfg.model).to(device)
    if vocab_size and model.config.vocab_size < vocab_size:
        raise AcornError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                         f"({vocab_size}); use the tokenizer the model was trained with")
    if cfg.train.seq_len > cfg.model.max_seq_len:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}")
    return model


def train(cfg, model: Transformer, loader, val_loader, tokenizer, device: torch.device, dist_: Dist, *,
          resume: bool = False, stage: str = "pretrain") -> Path:
    """The training loop shared by every stage that minimises next-token loss
    (pretraining, SFT): loaders yield Batch(x, y, document_ids), y = -100 where
    no loss is wanted. Returns the run directory."""
    out = Path(cfg.out)
    dtype = hardware.resolve_dtype(cfg.train.dtype, device)
    raw_model = model
    per_step = cfg.train.micro_batch * cfg.train.seq_len * dist_.world
    accum = max(1, round(cfg.train.batch_tokens / per_step))

    start_step, history, state = 0, [], None
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise AcornError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
    if ckpt is not None:
        state = load_state(ckpt)
        raw_model.load_state_dict(state["model"])  # full tensors, before any sharding
    elif dist_.main and (out / "checkpoints").exists():
        raise AcornError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    fsdp = cfg.train.fsdp and dist_.world > 1
    if fsdp:
        # FSDP2: each block's parameters, gradients and optimizer state are split
        # across processes and gathered just in time for its forward/backward.
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        # Every process initialised from its own seed, and unlike DDP,
        # fully_shard keeps each process's own values for its shard: start all
        # from rank 0's weights, as DDP does.
        for t in (*raw_model.parameters(), *raw_model.buffers()):
            dist.broadcast(t.detach(), src=0)
        for block in raw_model.model.layers:
            fully_shard(block)
        model = fully_shard(raw_model)
    elif dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw_model)
    # After sharding: FSDP2 replaces the parameters with sharded ones.
    optimizers = build_optimizers(raw_model, cfg.optim)
    if state is not None:
        _load_optimizers(raw_model, optimizers, state["optimizers"], fsdp)
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        start_step = state["step"]
        if dist_.main:
            history = _read_metrics(out / "metrics.jsonl", up_to=start_step)
    if cfg.train.compile:
        model = torch.compile(model)

    if dist_.main:
        out.mkdir(parents=True, exist_ok=True)
        from acorn.config import to_yaml

        write_text(out / "config.yaml", to_yaml(cfg))
    autocast = functools.partial(hardware.autocast, device, dtype)
    peak = hardware.peak_flops(device, dtype)
    flops_per_token = cfg.model.flops_per_token(cfg.train.seq_len)
    nbytes = token_nbytes(tokenizer, device) if tokenizer is not None else None
    tokens_per_step = per_step * accum
    if dist_.main:
        print(f"{stage}: {raw_model.num_params() / 1e6:.2f}M parameters, {dtype} on {device}"
              f"{f' x {dist_.world}' if dist_.world > 1 else ''}; {cfg.train.max_steps} steps of "
              f"{tokens_per_step:,} tokens ({cfg.train.micro_batch} x {cfg.train.seq_len} x {accum} accumulation"
              f"{f' x {dist_.world} processes' if dist_.world > 1 else ''})", flush=True)

    model.train()
    t_start = time.perf_counter()
    bad_steps = 0
    bar = _progress(start_step, cfg.train.max_steps, dist_.main)
    step = start_step
    for step in range(start_step, cfg.train.max_steps):
        t0 = time.perf_counter()
        set_lr(optimizers, lr_multiplier(step, cfg.train.max_steps, cfg.optim), cfg.optim)
        # Every trained token weighs the same, however the step's tokens fall
        # into micro-batches and processes (SFT masks make the counts differ):
        # each micro-batch's mean loss is scaled by its share of the step's
        # trained tokens, counted over all processes.
        batches = [next(loader) for _ in range(accum)]
        counts = [int((b.y != -100).sum()) for b in batches]
        n_step = _all_sum(sum(counts), dist_)
        total = torch.zeros((), device=device)
        for micro, (batch, n) in enumerate(zip(batches, counts)):
            x, y = batch.x.to(device), batch.y.to(device)
            docs = batch.document_ids.to(device) if batch.document_ids is not None else None
            share = n * dist_.world / max(n_step, 1)  # DDP then averages over processes
            # DDP: all-reduce the gradients once, after the last micro-batch.
            sync = micro == accum - 1 or not hasattr(model, "no_sync")
            with (model.no_sync() if not sync else contextlib.nullcontext()), autocast():
                out_ = model(x, targets=y, document_ids=docs)
                loss = out_.loss * share if n else out_.logits.sum() * 0.0
                if out_.aux_loss is not None:
                    loss = loss + out_.aux_loss / accum
            loss.backward()
            if n:
                total += out_.loss.detach().float() * n
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        loss_value = _all_sum(total.item(), dist_) / max(n_step, 1)
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            # A non-finite loss or gradient: skip the update rather than poison the weights.
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            bad_steps += 1
            if dist_.main:
                print(f"step {step}: loss {loss_value} / grad norm {float(grad_norm)} not finite; step skipped", flush=True)
            if bad_steps >= cfg.train.nan_patience:
                raise AcornError(
                    f"{bad_steps} steps in a row had a non-finite loss or gradient (last at step {step}); lower "
                    f"--optim.lr (now {cfg.optim.lr}), check the data, or use --train.dtype float32"
                )
            continue
        bad_steps = 0
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        row = {"step": step + 1, "loss": loss_value, "lr": optimizers[-1].param_groups[0]["lr"],
               "grad_norm": float(grad_norm), "tokens": (step + 1) * tokens_per_step, "tok_s": tok_s,
               "mfu": flops_per_token * tok_s / (peak * dist_.world) if peak else None}
        last = step + 1 == cfg.train.max_steps
        out_of_time = cfg.train.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.train.max_minutes
        if val_loader is not None and cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or last or out_of_time):
            row.update(evaluate(model, val_loader, cfg.eval.batches, autocast, nbytes, device))
        history.append(row)
        if dist_.main:
            _append_metrics(out / "metrics.jsonl", row)
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_value:.3f} {tok_s:,.0f} tok/s" +
                                (f" val {row['val_loss']:.3f}" if "val_loss" in row else ""))
        if (cfg.eval.checkpoint_every and (step + 1) % cfg.eval.checkpoint_every == 0) or last or out_of_time:
            _checkpoint(out, raw_model, optimizers, step + 1, loader, dist_, fsdp)
        if out_of_time:
            if dist_.main:
                print(f"\nstopping at step {step + 1}: --train.max_minutes {cfg.train.max_minutes} reached", flush=True)
            break
    bar.close()

    if fsdp:  # the export below wants whole tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist_.main:
        if fsdp:
            raw_model = Transformer(cfg.model)
            raw_model.load_state_dict(full)
        _finish(out, raw_model, cfg, history, tokenizer, time.perf_counter() - t_start)
    if dist_.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return out


def _checkpoint(out: Path, model, optimizers, step: int, loader, dist_: Dist, fsdp: bool) -> None:
    if fsdp:
        # Gathering full tensors is collective: every process takes part, rank 0 writes.
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=opts)
        optimizer_states = [get_optimizer_state_dict(model, o, options=opts) for o in optimizers]
    else:
        model_state, optimizer_states = model.state_dict(), [o.state_dict() for o in optimizers]
    if not dist_.main:
        return
    path = out / "checkpoints" / f"step_{step:07d}.pt"
    save_state(path, model_state, optimizer_states, step, loader, {"world_size": dist_.world})
    # Keep the two newest: enough to survive a crash while writing the next one.
    for old in sorted((out / "checkpoints").glob("step_*.pt"))[:-2]:
        old.unlink(missing_ok=True)


def _load_optimizers(model, optimizers, states: list[dict], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for o, s in zip(optimizers, states):
            set_optimizer_state_dict(model, o, s, options=StateDictOptions(full_state_dict=True))
    else:
        for o, s in zip(optimizers, states):
            o.load_state_dict(s)


def _tokenizer(meta: dict):
    """The tokenizer the data was prepared with, if it is still where it was."""
    path = meta.get("tokenizer", {}).get("path")
    if not path or not Path(path).exists():
        return None
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.from_pretrained(path)


def _finish(out: Path, model, cfg: PretrainConfig, history: list[dict], tokenizer, seconds: float) -> None:
    model.save(out / "model", tokenizer=tokenizer)
    plot_losses(history, out / "loss.png")
    write_text(out / "report.md", run_report(cfg, history, seconds, model))
    print(f"model -> {out / 'model'}; report -> {out / 'report.md'}", flush=True)


# ------------------------------------------------------------- outputs
def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _read_metrics(path: Path, up_to: int) -> list[dict]:
    """Rows up to a step, rewriting the file without the rest (a run killed after
    its last checkpoint logged steps that the resumed run will log again)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by the kill
            if row.get("step", 0) <= up_to:
                rows.append(row)
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train", lw=1)
    val = [r for r in history if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run_report(cfg: PretrainConfig, history: list[dict], seconds: float, model) -> str:
    last = history[-1] if history else {}
    val = [r for r in history if "val_loss" in r]
    lines = [
        "# Pretraining report", "",
        f"{model.num_params() / 1e6:.2f}M parameters; {len(history)} steps, {last.get('tokens', 0):,} tokens "
        f"in {seconds / 60:.1f} min.", "",
        "![loss](loss.png)", "",
        "| metric | value |", "|---|---:|",
        f"| final train loss | {last.get('loss', float('nan')):.4f} |",
    ]
    if val:
        v = val[-1]
        lines += [f"| validation loss | {v['val_loss']:.4f} |", f"| validation perplexity | {v['val_ppl']:.2f} |"]
        if "val_bpb" in v:
            lines.append(f"| validation bits per byte | {v['val_bpb']:.4f} |")
    if history:
        tok_s = sorted(r["tok_s"] for r in history)[len(history) // 2]
        lines.append(f"| median tokens/s | {tok_s:,.0f} |")
        mfu = [r["mfu"] for r in history if r.get("mfu")]
        lines.append(f"| median MFU | {sorted(mfu)[len(mfu) // 2]:.1%} |" if mfu else "| MFU | unknown (no peak for this device) |")
    lines += ["", "## Configuration", "", "```yaml", _yaml(cfg), "```", ""]
    return "\n".join(lines)


def _yaml(cfg) -> str:
    from acorn.config import to_yaml

    return to_yaml(cfg).rstrip()


def _data_meta(data: Path) -> dict:
    if not (data / "meta.json").exists():
        raise AcornError(f"{data}: no prepared data (meta.json); run `acorn data prepare INPUTS --tokenizer DIR --out {data}`")
    return read_json(data / "meta.json")


def _progress(start: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
