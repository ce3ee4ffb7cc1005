"""A training run: everything around the loop that is not the step itself.

Before the first step (`start`, `build_model`, `open_run`): the device, the
processes under torchrun (rank and world size), the seeds, the model, the run
directory, resuming from its newest checkpoint (model, optimizers, step,
loader position, RNG states), wrapping the model for data parallelism (DDP
averages gradients; FSDP2 with `--train.fsdp true` also shards parameters,
gradients and optimizer state) and config.yaml.

While it runs (`Run.log`, `Run.checkpoint`): metrics.jsonl, the progress bar,
atomic checkpoints of everything needed to continue exactly, the two newest kept.

Resuming (`--resume`) takes the newest checkpoint that loads; an unreadable one
(a disk that filled up, a file cut short) is renamed *.unreadable and the one
before it, kept for this, is used instead, saying so. The checkpoint records the
run's settings: a model (or LoRA) setting that differs is refused, naming it,
and any other change (max_steps, the learning rate, ...) is warned about. A run
started afresh into a directory that holds no checkpoint (killed before its
first) starts metrics.jsonl afresh too. Temporary files that a kill left behind
(an atomic write's `.NAME.XXXXXXXX.tmp`) are removed when a run starts.

At the end (`Run.finish`): the model in Hugging Face format, loss.png and
report.md, the files a person reads. Rank 0 writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from acorn import hardware
from acorn.errors import AcornError
from acorn.fileio import atomic_write, remove_temp_files, write_text
from acorn.model import lora
from acorn.model.transformer import Transformer
from acorn.train.optim import build_optimizers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(cfg) -> tuple[torch.device, Dist]:
    """Device, processes, seeds: the first thing every training stage does."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise AcornError(f"--out {cfg.out} is a file; give a directory for the run")
    device = hardware.resolve_device()
    dist = init_distributed(device)
    hardware.flush_denormals(device)
    torch.manual_seed(cfg.seed + dist.rank)
    random.seed(cfg.seed)
    return device, dist


def init_distributed(device: torch.device) -> Dist:
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size())


def compile_for_training(model: nn.Module, raw_model: nn.Module | None = None) -> nn.Module:
    """torch.compile(model) for training, with the caches the forward fills on its first call
    filled first. A cache the compiled forward fills (RoPE's inverse frequencies, keyed by
    device) is a guard of the graph (the key was missing), so the next call fails it and
    compiles the model a second time: a whole compilation (20-30 s on a 2-core CPU) that a
    time-budgeted run did not plan for. raw_model: the model itself when `model` is a DDP /
    FSDP2 wrapper of it."""
    raw = raw_model if raw_model is not None else model
    if isinstance(raw, Transformer):
        device = next(raw.parameters()).device
        raw.position_encoding(torch.zeros(1, dtype=torch.long, device=device), torch.float32)
    return torch.compile(model)


def build_model(cfg, device: torch.device, vocab_size: int | None = None) -> Transformer:
    """A fresh model from cfg.model, or the checkpoint in cfg.init_from (which then sets cfg.model)."""
    if cfg.init_from:
        from acorn.model.checkpoint import load as load_checkpoint

        model = load_checkpoint(cfg.init_from, dtype="float32", device=str(device))
        # --model.* settings would be silently replaced by the checkpoint's. cfg.model may hold the
        # checkpoint's own settings already (a resumed run's config.yaml; a stage that builds a
        # policy and then its reference): those are no conflict.
        if cfg.model not in (type(cfg)().model, model.config):
            raise AcornError(f"--model.* settings do not apply with --init_from: the model is {cfg.init_from}'s "
                             "(its config.json); drop the --model settings")
        cfg.model = model.config
    else:
        from acorn.model.checkpoint import hf_architecture

        try:  # the run ends by saving a Hugging Face checkpoint: refuse now what it could not save then
            hf_architecture(cfg.model)
        except AcornError as e:
            raise AcornError(f"--model settings: {e}; change them before training") from None
        if vocab_size and cfg.model.vocab_size < vocab_size:
            raise AcornError(f"model vocab_size {cfg.model.vocab_size} is smaller than the data's tokenizer "
                             f"({vocab_size}); set --model.vocab_size {vocab_size}")
        model = Transformer(cfg.model).to(device)
    if vocab_size and model.config.vocab_size < vocab_size:
        raise AcornError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                         f"({vocab_size}); use the tokenizer the model was trained with")
    if cfg.train.seq_len > cfg.model.max_seq_len:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}")
    if lora_enabled(cfg):
        # Adapters instead of full weights: the base is frozen (QLoRA: stored as NF4 first), so
        # the optimizer, which takes only parameters that require gradients, holds the adapters alone.
        if not cfg.init_from:
            raise AcornError("LoRA trains adapters on a pretrained base: pass --init_from CHECKPOINT_DIR "
                             "(or --lora.r 0 to train every weight)")
        if cfg.train.fsdp:
            raise AcornError("LoRA with --train.fsdp is not supported; adapters are small, so train them with "
                             "plain data parallelism (torchrun without --train.fsdp)")
        lora.apply(model, cfg.lora)
    return model


def lora_enabled(cfg) -> bool:
    return getattr(cfg, "lora", None) is not None and cfg.lora.r > 0


@dataclass
class Run:
    """A run's state around the step: where it writes, which process this is,
    the model as trained (wrapped) and as saved (raw), the optimizers, the metrics so far."""

    cfg: Any
    out: Path
    dist: Dist
    model: nn.Module  # what the step calls: DDP / FSDP2 / torch.compile wrapped as asked
    raw_model: nn.Module  # the model itself (sharded in place by FSDP2): what checkpoints and the export hold
    optimizers: list[torch.optim.Optimizer]
    fsdp: bool
    start_step: int = 0  # steps already done (a resumed run)
    history: list[dict] = field(default_factory=list)
    bar: Any = None  # the progress bar, on the main process

    def log(self, row: dict) -> None:
        self.history.append(row)
        if self.dist.main:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {row['loss']:.3f} {row['tok_s']:,.0f} tok/s" +
                                     (f" val {row['val_loss']:.3f}" if "val_loss" in row else ""))

    def checkpoint(self, step: int, loader) -> None:
        """Everything needed to continue exactly, as checkpoints/step_N.pt; the two newest are kept."""
        if self.fsdp:
            # Gathering full tensors is collective: every process takes part, rank 0 writes.
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(self.raw_model, options=opts)
            optimizer_states = [get_optimizer_state_dict(self.raw_model, o, options=opts) for o in self.optimizers]
        else:
            model_state, optimizer_states = self.raw_model.state_dict(), [o.state_dict() for o in self.optimizers]
        if not self.dist.main:
            return
        save_state(self.out / "checkpoints" / f"step_{step:07d}.pt", model_state, optimizer_states, step, loader,
                   {"world_size": self.dist.world, "config": config_record(self.cfg)})
        # Keep the two newest: enough to survive a crash while writing the next one.
        for old in sorted((self.out / "checkpoints").glob("step_*.pt"))[:-2]:
            old.unlink(missing_ok=True)

    def finish(self, tokenizer, seconds: float, stage: str) -> None:
        """The model in Hugging Face format, loss.png and report.md; then leave the process group."""
        if self.bar is not None:
            self.bar.close()
        model = self.raw_model
        if self.fsdp:  # the export wants whole tensors; gathering them is collective
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.dist.main:
                model = type(self.raw_model)(self.raw_model.config)
                model.load_state_dict(full)
        if self.dist.main:
            if lora_enabled(self.cfg):  # the adapter alone, in PEFT's layout: the base is unchanged
                export = lora.save_adapter(model, self.out / "adapter", base=self.cfg.init_from)
            else:
                export = model.save(self.out / "model", tokenizer=tokenizer)
            plot_losses(self.history, self.out / "loss.png")
            write_text(self.out / "report.md", run_report(self.cfg, self.history, seconds, model, stage))
            print(f"{export.name} -> {export}; report -> {self.out / 'report.md'}", flush=True)
        if self.dist.world > 1:
            tdist.destroy_process_group()


def open_run(cfg, model: nn.Module, loader, dist: Dist, *, resume: bool = False) -> Run:
    """The run directory, resumed from its newest checkpoint if asked, the model
    wrapped for DDP or sharded by FSDP2, its optimizers, and config.yaml."""
    out = Path(cfg.out)
    if dist.main:  # a kill -9 during a write leaves its temporary (a whole checkpoint, for step_N.pt)
        stale = remove_temp_files(out) + remove_temp_files(out / "checkpoints")
        if stale:
            print(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} an interrupted run left in "
                  f"{out}: {', '.join(p.name for p in stale[:3])}{' ...' if len(stale) > 3 else ''}", flush=True)
    state = None
    if resume:
        ckpt, state = resume_state(out, rename=dist.main)
        check_resumed_config(cfg, state, ckpt)
        model.load_state_dict(state["model"])  # full tensors, before any sharding
    elif dist.main and checkpoints(out):
        raise AcornError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    elif dist.main:
        # No checkpoint: a run killed before its first one starts over, metrics.jsonl too
        # (appending would log steps 1..k of the dead run, then 1..n of this one).
        (out / "metrics.jsonl").unlink(missing_ok=True)

    raw_model, fsdp = model, cfg.train.fsdp and dist.world > 1
    if fsdp:
        # FSDP2: each block's parameters, gradients and optimizer state are split
        # across processes and gathered just in time for its forward/backward.
        from torch.distributed.fsdp import fully_shard

        # Every process initialised from its own seed, and unlike DDP,
        # fully_shard keeps each process's own values for its shard: start all
        # from rank 0's weights, as DDP does.
        for t in (*raw_model.parameters(), *raw_model.buffers()):
            tdist.broadcast(t.detach(), src=0)
        for block in raw_model.model.layers:
            fully_shard(block)
        model = fully_shard(raw_model)
    elif dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw_model)
    # After sharding: FSDP2 replaces the parameters with sharded ones.
    optimizers = build_optimizers(raw_model, cfg.optim)
    start_step, history = 0, []
    if state is not None:
        load_optimizers(raw_model, optimizers, state["optimizers"], fsdp)
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        start_step = state["step"]
        if dist.main:
            history = read_metrics(out / "metrics.jsonl", up_to=start_step)
    if cfg.train.compile:
        model = compile_for_training(model, raw_model)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        from acorn.config import to_yaml

        write_text(out / "config.yaml", to_yaml(cfg))
    return Run(cfg, out, dist, model, raw_model, optimizers, fsdp, start_step, history)


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


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoints/step_N.pt, oldest first."""
    found = [p for p in (out / "checkpoints").glob("step_*.pt") if p.stem.split("_")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = checkpoints(out)
    return ckpts[-1] if ckpts else None


_STATE_KEYS = ("model", "optimizers", "step", "loader", "rng")


def resume_state(out: Path, *, rename: bool = True) -> tuple[Path, dict]:
    """The newest checkpoint that loads, and its state. One that does not (cut
    short by a full disk, damaged by a copy) is skipped with a warning and, when
    `rename`, renamed NAME.unreadable, so the next resume does not trip on it and
    nothing is deleted; the checkpoint before it (two are kept for this) is used."""
    ckpts = checkpoints(out)
    if not ckpts:
        raise AcornError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
    bad: list[tuple[Path, str]] = []
    for path in reversed(ckpts):
        try:
            state = load_state(path)
            if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
                raise ValueError("not a training checkpoint (model, optimizers, step, loader, rng)")
        except Exception as e:  # torch.load of a damaged file: RuntimeError, EOFError, UnpicklingError, ...
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            bad.append((path, f"{type(e).__name__}: {reason}"))
            continue
        if bad:
            moved = []
            for p, _ in bad:
                if rename:
                    p.rename(p.with_name(p.name + ".unreadable"))
                moved.append(p.name + (".unreadable" if rename else ""))
            warnings.warn(f"--resume: {bad[0][0]} is unreadable ({bad[0][1]}); resuming from {path.name} (step "
                          f"{state['step']}), the previous checkpoint, kept for this; the unreadable file"
                          f"{'s are' if len(bad) > 1 else ' is'} now {', '.join(moved)}", stacklevel=3)
        return path, state
    raise AcornError(f"--resume: no checkpoint in {out / 'checkpoints'} is readable ({bad[0][0].name}: {bad[0][1]}); "
                     "start the run again without --resume, into another --out")


def config_record(cfg) -> dict | None:
    """The run's settings as plain data (for the checkpoint: torch.load(weights_only=True) reads it back)."""
    if not dataclasses.is_dataclass(cfg):
        return None
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("rope_scaling",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumed_config(cfg, state: dict, ckpt: Path) -> None:
    """Compare the settings a checkpoint was trained with to this run's. The model's
    (and LoRA's) must match: other shapes cannot load, and other hyper-parameters of
    the same shapes would silently be another model. Anything else may change (it is
    how a run is extended), with a warning that says what and what it means."""
    saved = state.get("config")
    if saved is None:  # a checkpoint from before settings were recorded: the run's config.yaml
        try:
            import yaml

            saved = yaml.safe_load((ckpt.parent.parent / "config.yaml").read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - nothing to compare with; load_state_dict still checks shapes
            saved = None
    now = config_record(cfg)
    if not isinstance(saved, dict) or now is None:
        return
    old, new = _flat(saved), _flat(now)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "out"]
    fixed = [k for k in changed if k.split(".")[0] in ("model", "lora")]
    show = lambda k: f"{k} {old.get(k)!r} (now {new.get(k)!r})"  # noqa: E731
    if fixed:
        more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
        raise AcornError(f"--resume: {ckpt} was trained with other model settings: "
                         f"{', '.join(show(k) for k in fixed[:4])}{more}; resume with the settings the run "
                         f"started with (see {ckpt.parent.parent / 'config.yaml'}), or start a new run with another --out")
    step, max_steps = state["step"], new.get("train.max_steps")
    if isinstance(max_steps, int) and 0 < max_steps < step:
        raise AcornError(f"--resume: {ckpt.name} is at step {step}, past --train.max_steps {max_steps}; raise "
                         "--train.max_steps to train on (or use the run's model as it is)")
    if changed:
        notes = []
        for k in changed:
            note = show(k)
            if k == "train.max_steps":
                note += (f": the learning-rate schedule (warmup, decay) is now spread over {max_steps} steps, so "
                         f"from step {step} on the rate differs from the first run's; allowed, to extend or shorten "
                         "a run")
            notes.append(note)
        warnings.warn(f"--resume: settings changed since {ckpt.name}: {'; '.join(notes)}", stacklevel=3)


def load_optimizers(model, optimizers, states: list[dict], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for o, s in zip(optimizers, states):
            set_optimizer_state_dict(model, o, s, options=StateDictOptions(full_state_dict=True))
    else:
        for o, s in zip(optimizers, states):
            o.load_state_dict(s)


# ------------------------------------------------------------- outputs
def read_metrics(path: Path, up_to: int) -> list[dict]:
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
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run_report(cfg, history: list[dict], seconds: float, model, stage: str = "train") -> str:
    from acorn.config import to_yaml

    last = history[-1] if history else {}
    val = [r for r in history if "val_loss" in r]
    lines = [
        f"# Training report: {stage}", "",
        f"{model.num_params() / 1e6:.2f}M parameters; {len(history)} steps, {last.get('tokens', 0):,} tokens "
        f"in {seconds / 60:.1f} min.", "",
        "![loss](loss.png)", "",
        "| metric | value |", "|---|---:|",
        f"| final train loss | {last.get('loss', float('nan')):.4f} |",
    ]
    if val:
        v = val[-1]
        lines.append(f"| validation loss | {v['val_loss']:.4f} |")
        if "val_ppl" in v:
            lines.append(f"| validation perplexity | {v['val_ppl']:.2f} |")
        if "val_bpb" in v:
            lines.append(f"| validation bits per byte | {v['val_bpb']:.4f} |")
    if history:
        tok_s = sorted(r["tok_s"] for r in history)[len(history) // 2]
        lines.append(f"| median tokens/s | {tok_s:,.0f} |")
        mfu = [r["mfu"] for r in history if r.get("mfu")]
        lines.append(f"| median MFU | {sorted(mfu)[len(mfu) // 2]:.1%} |" if mfu else "| MFU | unknown (no peak for this device) |")
    if lora_enabled(cfg):
        trained, total = lora.trainable_parameters(model)
        out = Path(cfg.out)
        lines += ["", "## LoRA adapter", "",
                  f"{trained:,} of {total:,} parameters trained ({trained / total:.2%}): rank {cfg.lora.r} adapters on "
                  f"{', '.join(cfg.lora.targets)}{' over an NF4 base (QLoRA)' if cfg.lora.quantize else ''}. "
                  f"`{out / 'adapter'}` is a PEFT adapter directory for the base `{cfg.init_from}`. Use it as it is "
                  f"with `acorn.load(\"{cfg.init_from}\", adapter=\"{out / 'adapter'}\")` or peft's "
                  "`PeftModel.from_pretrained`, or merge it into a plain checkpoint:", "",
                  f"    acorn lora merge {cfg.init_from} {out / 'adapter'} --out {out / 'model'}"]
        if cfg.lora.quantize:
            lines += ["", "The adapter learned on the NF4-rounded base; merged into the float base (as peft's "
                      "merge_and_unload does too) its outputs differ from the QLoRA model's by that rounding."]
    lines += ["", "## Configuration", "", "```yaml", to_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


def progress(start: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
