"""Training benchmark: Acorn's pretraining loop against a plain nanoGPT-style baseline.

Two questions, both answered side by side in one run on one machine:

  a. Throughput. Tokens/s of `acorn.train.pretrain.pretrain()` (evaluation
     off, no checkpoints until the last step) against a GPT-2 model and AdamW
     loop written below in nanoGPT's style, at the same configuration: same
     tokenizer and token shards, same n_layer / d_model / n_head, sequence
     length, batch and number of steps, fp32 and bf16 autocast. Acorn runs in
     two layouts: its own default (RoPE, RMSNorm, SwiGLU, GQA with n_kv_head =
     n_head / 2 as in the nano and micro presets, no biases) and GPT-2's (learned positions,
     LayerNorm, tanh-GELU, biases: the "gpt2-124m" preset's switches), which
     isolates the loop from the architecture. Tokens/s is the median over the
     steady-state steps of a run (the first steps are skipped), then the median
     over --runs runs, the contenders taking turns.

  b. Loss at equal wall time. Acorn's default recipe (its optimizer, schedule,
     batch and dtype=auto) and the baseline with nanoGPT's shakespeare-char
     hyperparameters adapted to BPE each train for the same wall-clock budget
     on the training 90% of tinyshakespeare. Each schedule's length comes from
     a short throughput calibration, so the cosine ends at the budget; a run
     stops at its last step or at the budget, whichever is first. Both models
     are then scored by the same code here: mean cross-entropy over fixed,
     non-overlapping windows of the held-out last 10% of the text.

The tokenizer is an Acorn BPE trained on the training split only; shards are
made by acorn.data.prepare. Everything built lives in benchmarks/.cache/train/.

    python benchmarks/train.py                  # full: two sizes, fp32 + bf16, 3-minute races
    python benchmarks/train.py --quick          # a tiny size, a few steps, 20-second races
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402
from torch import nn  # noqa: E402

TEXT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
WORK = CACHE / "train"

# name: (n_layer, d_model, n_head)
SIZES = {"small": (4, 128, 4), "medium": (6, 256, 8)}
QUICK_SIZES = {"tiny": (2, 64, 2)}


# ======================================================================
# The baseline: GPT-2 and its training loop in nanoGPT's style
# (Karpathy's nanoGPT model.py / train.py, rewritten here; no Acorn code).
# ======================================================================
@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)  # fused/foreach as torch picks


@dataclass
class BaselineRecipe:
    batch_size: int
    block_size: int
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    warmup_frac: float = 0.02  # shakespeare-char: 100 of 5000 iterations


def get_batch(data: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator):
    """nanoGPT's get_batch: random offsets into one uint16 token array."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


def get_lr(it: int, warmup_iters: int, lr_decay_iters: int, learning_rate: float, min_lr: float) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def train_baseline(data: np.ndarray, mc: GPTConfig, r: BaselineRecipe, steps: int, dtype: torch.dtype,
                   max_seconds: float | None = None, seed: int = 0) -> tuple[GPT, list[float], list[float]]:
    """nanoGPT's loop. Returns the model, each step's seconds and each step's loss."""
    torch.set_flush_denormal(True)  # the same as Acorn does on CPU: fair
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GPT(mc)
    optimizer = model.configure_optimizers(r.weight_decay, r.learning_rate, (r.beta1, r.beta2))
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext()
    warmup = max(1, round(r.warmup_frac * steps))
    model.train()
    times, losses = [], []
    t_start = time.perf_counter()
    for it in range(steps):
        t0 = time.perf_counter()
        lr = get_lr(it, warmup, steps, r.learning_rate, r.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        X, Y = get_batch(data, r.batch_size, r.block_size, gen)
        with ctx:
            _, loss = model(X, Y)
        loss.backward()
        if r.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
    return model, times, losses


# ======================================================================
# Data: tokenizer, shards, held-out windows
# ======================================================================
@dataclass
class Data:
    shards: Path  # Acorn's prepared data dir (train split only)
    train: np.ndarray  # the same training tokens as one array, for the baseline
    val: torch.Tensor  # held-out token ids (the last 10% of the text)
    vocab_size: int
    train_chars: int
    val_chars: int


def prepare_data(vocab: int) -> Data:
    from acorn.data.prepare import prepare
    from acorn.fileio import read_json
    from acorn.tokenizer.bpe import Tokenizer

    text = (TEXT_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1  # the last 10%, from a line start
    train_text, val_text = text[:cut], text[cut:]
    root = WORK / f"shakespeare-bpe{vocab}"
    tok_dir, train_file, shards = root / "tokenizer", root / "train.txt", root / "shards"
    if not (tok_dir / "tokenizer.json").exists():
        log(f"training a {vocab}-token BPE on the training split ({len(train_text):,} chars)")
        Tokenizer.train([train_text], vocab).save(tok_dir)
    if not train_file.exists() or train_file.read_text(encoding="utf-8") != train_text:
        root.mkdir(parents=True, exist_ok=True)
        train_file.write_text(train_text, encoding="utf-8")
    # The whole training text goes to "train": validation is the held-out 10%, scored here.
    prepare([train_file], tok_dir, shards, val_fraction=0.0, workers=1, overwrite=True, quiet=True)
    tok = Tokenizer.from_pretrained(tok_dir)
    meta = read_json(shards / "meta.json")
    train = np.concatenate([np.fromfile(shards / s["file"], dtype=meta["dtype"]) for s in meta["shards"]["train"]])
    val = torch.tensor(tok.encode(val_text), dtype=torch.long)
    return Data(shards, train, val, tok.vocab_size, len(train_text), len(val_text))


@torch.no_grad()
def heldout_loss(logits_fn, val: torch.Tensor, seq_len: int, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over the fixed, non-overlapping
    windows of the held-out ids; float32, no autocast, the same for every model."""
    n = (len(val) - 1) // seq_len
    x = val[: n * seq_len].view(n, seq_len)
    y = val[1: n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, batch):
        logits = logits_fn(x[i:i + batch])
        total += F.cross_entropy(logits.float().flatten(0, 1), y[i:i + batch].flatten(), reduction="sum").item()
    return total / (n * seq_len)


# ======================================================================
# Acorn: pretrain() driven through its own configuration
# ======================================================================
def acorn_model(kind: str, size: tuple[int, int, int], vocab: int, seq: int) -> dict:
    n_layer, d_model, n_head = size
    m = dict(vocab_size=vocab, n_layer=n_layer, d_model=d_model, n_head=n_head, max_seq_len=seq)
    if kind == "default":  # GQA with half as many KV heads, as the nano/micro presets
        return {**m, "n_kv_head": max(1, n_head // 2)}
    # GPT-2's layout: the switches of the "gpt2-124m" preset (every field named, so no
    # field of the stage's default model preset carries over)
    return {**m, "n_kv_head": n_head, "positions": "learned", "norm": "layernorm", "mlp": "gelu_tanh", "qkv_bias": True,
            "out_bias": True, "mlp_bias": True, "d_ff": 4 * d_model}


def run_acorn(data: Data, overrides: dict, keep_model: bool = False):
    """One pretrain() call in a fresh output dir; returns (metrics rows, model or None)."""
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig, pretrain

    out = Path(tempfile.mkdtemp(prefix="acorn-", dir=WORK))
    try:
        base = {"data": str(data.shards), "out": str(out),
                "eval": {"every": 0, "checkpoint_every": 0}}  # no evaluation, a checkpoint only at the end
        cfg = load(PretrainConfig, None, _merge(base, overrides))
        pretrain(cfg)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        model = None
        if keep_model:
            from acorn.model.checkpoint import load as load_checkpoint

            model = load_checkpoint(out / "model", dtype="float32", device="cpu")
        return rows, model
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ======================================================================
# a. Throughput
# ======================================================================
def speed(data: Data, sizes: dict, dtypes: list[str], batch: int, seq: int, steps: int, skip: int,
          runs: int, compile_: bool = False) -> list[dict]:
    results = []
    for size_name, size in sizes.items():
        n_layer, d_model, n_head = size
        gpt = GPTConfig(data.vocab_size, seq, n_layer, n_head, d_model)
        recipe = BaselineRecipe(batch_size=batch, block_size=seq)
        for dt in dtypes:
            tdtype = getattr(torch, dt)

            def acorn(kind, compiled=False):
                def run():
                    rows, _ = run_acorn(data, {
                        "model": acorn_model(kind, size, data.vocab_size, seq),
                        "train": {"seq_len": seq, "micro_batch": batch, "batch_tokens": batch * seq,
                                  "max_steps": steps, "dtype": dt, "compile": compiled}})
                    return statistics.median(r["tok_s"] for r in rows[skip:])
                return run

            def baseline():
                _, times, _ = train_baseline(data.train, gpt, recipe, steps, tdtype)
                return statistics.median(batch * seq / t for t in times[skip:])

            contenders = [("acorn default layout", acorn("default")), ("acorn gpt-2 layout", acorn("gpt2")),
                          ("baseline (nanoGPT-style)", baseline)]
            if compile_:  # Acorn's --train.compile true: the first steps compile, and are skipped
                contenders.insert(1, ("acorn default layout, compiled", acorn("default", compiled=True)))
            per = {name: [] for name, _ in contenders}
            for i in range(runs):  # taking turns, so a drift in machine load is shared
                for name, fn in contenders:
                    gc.collect()
                    per[name].append(fn())
                    log(f"{size_name} {dt} run {i + 1}/{runs} {name}: {per[name][-1]:,.0f} tok/s")
            params = {"acorn default layout": _acorn_params(acorn_model("default", size, data.vocab_size, seq)),
                      "acorn default layout, compiled": _acorn_params(acorn_model("default", size, data.vocab_size, seq)),
                      "acorn gpt-2 layout": _acorn_params(acorn_model("gpt2", size, data.vocab_size, seq)),
                      "baseline (nanoGPT-style)": sum(p.numel() for p in GPT(gpt).parameters())}
            results.append({"size": size_name, "shape": size, "dtype": dt, "params": params,
                            "tok_s": {k: statistics.median(v) for k, v in per.items()}, "runs": per})
    return results


def _acorn_params(m: dict) -> int:
    from acorn.model.transformer import ModelConfig

    return ModelConfig(**m).num_params()


# ======================================================================
# b. Loss at equal wall time
# ======================================================================
def race(data: Data, size: tuple[int, int, int], seconds: float, calib_steps: int, races: int,
         baseline_dropout: float) -> dict:
    from acorn.hardware import resolve_dtype
    from acorn.train.loop import LoopConfig
    from acorn.train.pretrain import PretrainConfig

    n_layer, d_model, n_head = size
    defaults = PretrainConfig()
    seq = defaults.train.seq_len
    # dtype=auto for Acorn; the baseline gets the same dtype (nanoGPT itself would
    # run fp32 on a CPU, which would only make it slower).
    dt = resolve_dtype(LoopConfig().dtype, torch.device("cpu"))
    acorn_tokens_per_step = defaults.train.batch_tokens
    # shakespeare-char: batch 64 x block 256 (16,384 tokens per step, as Acorn's default),
    # lr 1e-3 -> 1e-4, beta2 0.99, warmup 2% of the run, weight decay 0.1, clip 1.0.
    recipe = BaselineRecipe(batch_size=max(1, acorn_tokens_per_step // seq), block_size=seq, dropout=baseline_dropout)
    gpt = GPTConfig(data.vocab_size, seq, n_layer, n_head, d_model, dropout=baseline_dropout)
    acorn_m = acorn_model("default", size, data.vocab_size, seq)

    # Calibration: a few steps of each, so each schedule ends where the budget does.
    log(f"race: calibrating ({calib_steps} steps each)")
    rows, _ = run_acorn(data, {"model": acorn_m, "train": {"max_steps": calib_steps}})
    acorn_step_s = statistics.median(acorn_tokens_per_step / r["tok_s"] for r in rows[1:])
    _, times, _ = train_baseline(data.train, gpt, recipe, calib_steps, dt)
    base_step_s = statistics.median(times[1:])
    acorn_steps = max(2, int(seconds / acorn_step_s))
    base_steps = max(2, int(seconds / base_step_s))
    log(f"race: {seconds:.0f}s budget -> Acorn {acorn_steps} steps ({acorn_step_s:.2f}s each), "
        f"baseline {base_steps} steps ({base_step_s:.2f}s each)")

    out = {"acorn": [], "baseline": []}
    for i in range(races):
        t0 = time.perf_counter()
        rows, model = run_acorn(data, {"model": acorn_m, "train": {"max_steps": acorn_steps,
                                                                   "max_minutes": seconds / 60}}, keep_model=True)
        acorn_train_s = sum(acorn_tokens_per_step / r["tok_s"] for r in rows)
        loss = heldout_loss(lambda x, m=model: m(x).logits, data.val, seq)
        out["acorn"].append({"loss": loss, "steps": len(rows), "tokens": len(rows) * acorn_tokens_per_step,
                             "train_s": acorn_train_s, "train_loss": rows[-1]["loss"]})
        log(f"race {i + 1}/{races} acorn: {len(rows)} steps in {acorn_train_s:.0f}s of steps "
            f"({time.perf_counter() - t0:.0f}s in all), held-out loss {loss:.4f}")
        model = None
        gc.collect()

        t0 = time.perf_counter()
        model, times, losses = train_baseline(data.train, gpt, recipe, base_steps, dt, max_seconds=seconds)
        model.eval()
        loss = heldout_loss(lambda x, m=model: m(x)[0], data.val, seq)
        out["baseline"].append({"loss": loss, "steps": len(times), "tokens": len(times) * recipe.batch_size * seq,
                                "train_s": sum(times), "train_loss": losses[-1]})
        log(f"race {i + 1}/{races} baseline: {len(times)} steps in {sum(times):.0f}s of steps "
            f"({time.perf_counter() - t0:.0f}s in all), held-out loss {loss:.4f}")
        model = None
        gc.collect()
    return {"size": size, "seconds": seconds, "dtype": str(dt).replace("torch.", ""), "acorn_steps": acorn_steps,
            "base_steps": base_steps, "recipe": recipe, "acorn_model": acorn_m, "defaults": defaults,
            "acorn_params": _acorn_params(acorn_m), "base_params": sum(p.numel() for p in GPT(gpt).parameters()),
            **out}


# ======================================================================
# report
# ======================================================================
def report(args, data: Data, sp: list[dict], rc: dict, batch: int, seq: int, steps: int, skip: int, runs: int) -> str:
    names = list(sp[0]["tok_s"])
    rows, ratios = [], {name: [] for name in names if name.startswith("acorn")}
    for r in sp:
        n_layer, d_model, n_head = r["shape"]
        b = r["tok_s"]["baseline (nanoGPT-style)"]
        for name in names:
            ratio = r["tok_s"][name] / b
            if name in ratios:
                ratios[name].append(ratio)
            rows.append([f"{r['size']} ({n_layer}x{d_model}, {n_head} heads)", r["dtype"], name,
                         f"{r['params'][name] / 1e6:.2f}M", f"{r['tok_s'][name]:,.0f}", f"{ratio:.2f}x",
                         " / ".join(f"{v:,.0f}" for v in r["runs"][name])])
    speed_table = markdown_table(["size", "dtype", "loop", "params", "tokens/s", "vs baseline", "runs"], rows,
                                 align="lllrrrr")
    goal = []
    for name, rs in ratios.items():
        met = sum(x >= 1.3 for x in rs)
        goal.append(f"- {name}: {met} of {len(rs)} rows at 1.3x or more "
                    f"(range {min(rs):.2f}x to {max(rs):.2f}x){' - **met**' if met == len(rs) else ' - **not met**'}")

    a_loss = statistics.median(x["loss"] for x in rc["acorn"])
    b_loss = statistics.median(x["loss"] for x in rc["baseline"])
    race_rows = []
    for who, name in (("acorn", "Acorn default recipe"), ("baseline", "baseline, nanoGPT shakespeare-char recipe")):
        for i, x in enumerate(rc[who]):
            race_rows.append([name, i + 1, x["steps"], f"{x['tokens']:,}", f"{x['train_s']:.0f}",
                              f"{x['tokens'] / x['train_s']:,.0f}", f"{x['train_loss']:.3f}", f"{x['loss']:.4f}"])
    race_table = markdown_table(["contender", "race", "steps", "tokens", "s in steps", "tokens/s", "last train loss",
                                 "held-out loss"], race_rows, align="lrrrrrrr")
    compiled_note = ("\n\"compiled\": the default layout with `--train.compile true` (torch.compile; its first steps,"
                     " which compile, are among the skipped ones).") if args.compile else ""
    d, r = rc["defaults"], rc["recipe"]
    n_layer, d_model, n_head = rc["size"]
    lower = a_loss < b_loss
    return f"""## Training: Acorn's pretraining loop against a nanoGPT-style baseline

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description()}, {torch.get_num_threads()} torch threads

Data: tinyshakespeare, the first 90% ({data.train_chars:,} chars, {len(data.train):,} tokens with BOS/EOS) for
training, the last 10% ({data.val_chars:,} chars, {len(data.val):,} tokens) held out. Tokenizer: an Acorn
byte-level BPE of {data.vocab_size:,} tokens trained on the training part only; shards by `acorn.data.prepare`.
The baseline (in `benchmarks/train.py`, nanoGPT's model and loop rewritten: fused qkv, learned positions,
pre-LayerNorm with biases, exact GELU 4x, tied head, `scaled_dot_product_attention(is_causal=True)`, AdamW with decay
on 2-D parameters, warmup + cosine, clipping at 1.0, random-offset `get_batch`) reads the same training tokens.
Denormals are flushed for both.

### a. Throughput at the same configuration

Batch {batch} x {seq} tokens, {steps} optimizer steps per run, no gradient accumulation, no evaluation, the same
AdamW settings; tokens/s is the median of steps {skip + 1}..{steps} of a run (Acorn's `tok_s` in metrics.jsonl; the
baseline's steps timed the same way, from the learning-rate update to after `zero_grad`), then the median of
{runs} runs, the contenders taking turns ("runs" lists each run's figure). bf16 rows: float32 weights under bf16
autocast. "Acorn default layout": RoPE, RMSNorm, SwiGLU (d_ff 8/3 d), GQA with n_kv_head = n_head / 2, no biases.
"Acorn gpt-2 layout": learned positions, LayerNorm, tanh-GELU 4x, biases (the `gpt2-124m` preset's switches).{compiled_note}

{speed_table}

Goal, at least 1.3x the baseline's tokens/s:
{chr(10).join(goal)}

### b. Held-out loss at equal wall time

Model size {n_layer} x {d_model}, {n_head} heads, sequence {seq}, {rc['dtype']} autocast for both (Acorn's dtype=auto
on this machine; the baseline is given the same). Budget: {rc['seconds']:.0f} s of training steps each
(Acorn stops by `--train.max_minutes`, the baseline by the same test after each step); each schedule's length
is set from a {args.calib_steps}-step calibration of its own loop so its cosine ends at the budget.

- Acorn, its defaults ({rc['acorn_params'] / 1e6:.2f}M parameters, default layout, n_kv_head {rc['acorn_model']['n_kv_head']}):
  AdamW lr {d.optim.lr:g}, betas ({d.optim.beta1}, {d.optim.beta2}), weight decay {d.optim.weight_decay} on matrices
  (not embeddings), {d.optim.schedule} to {d.optim.min_lr_ratio:g} x lr after {d.optim.warmup_steps} warmup steps, clip
  {d.optim.grad_clip}, {d.train.batch_tokens:,} tokens per step ({d.train.micro_batch} x {d.train.seq_len} x
  accumulation), dropout {d.model.dropout}; schedule {rc['acorn_steps']} steps.
- Baseline, nanoGPT's shakespeare-char recipe adapted to BPE ({rc['base_params'] / 1e6:.2f}M parameters): AdamW lr
  {r.learning_rate:g} to {r.min_lr:g}, betas ({r.beta1}, {r.beta2}), weight decay {r.weight_decay} on 2-D parameters,
  warmup {r.warmup_frac:.0%} of the run, clip {r.grad_clip}, batch {r.batch_size} x {r.block_size}, dropout {r.dropout};
  schedule {rc['base_steps']} steps.

Held-out loss: mean cross-entropy (nats/token) over the {(len(data.val) - 1) // seq} non-overlapping {seq}-token windows
of the held-out text, float32, computed by the same function for both models after training.

{race_table}

Median held-out loss: Acorn {a_loss:.4f}, baseline {b_loss:.4f}. Goal, a lower loss at equal time:
**{'met' if lower else 'not met'}** ({'lower' if lower else 'higher'} by {abs(b_loss - a_loss):.4f} nats/token).
{args.note or ''}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny size, a few steps, 20-second races")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs per contender (median)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per throughput run")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of a run's median")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step in the throughput runs")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget of each race contender")
    ap.add_argument("--races", type=int, default=1)
    ap.add_argument("--race-size", default="small", choices=list(SIZES) + list(QUICK_SIZES))
    ap.add_argument("--calib-steps", type=int, default=6)
    ap.add_argument("--baseline-dropout", type=float, default=0.0,
                    help="nanoGPT's shakespeare-char uses 0.2 for 5000 iterations; a minutes-long run does not overfit")
    ap.add_argument("--compile", action="store_true",
                    help="also measure Acorn's default layout with --train.compile true (each run compiles: slow)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); on a machine shared with other work, 1 "
                         "avoids threads waiting on each other")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-race", action="store_true")
    ap.add_argument("--note", default="", help="a line added to the report")
    ap.add_argument("--no-write", action="store_true", help="print instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, steps, skip, runs, batch, seconds = SIZES, args.steps, args.skip, args.runs, args.batch, args.minutes * 60
    race_size = SIZES.get(args.race_size) or QUICK_SIZES[args.race_size]
    if args.quick:
        sizes, steps, skip, runs, batch, seconds = QUICK_SIZES, 6, 2, min(args.runs, 2), 8, 20.0
        race_size, args.calib_steps = QUICK_SIZES["tiny"], 4
    WORK.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.vocab)
    log(f"data: {len(data.train):,} training tokens, {len(data.val):,} held-out tokens, vocab {data.vocab_size}")

    sp = [] if args.skip_speed else speed(data, sizes, ["float32", "bfloat16"], batch, args.seq, steps, skip, runs,
                                    args.compile)
    rc = None if args.skip_race else race(data, race_size, seconds, args.calib_steps, args.races,
                                          args.baseline_dropout)
    if not sp or rc is None:
        print(json.dumps({"speed": sp, "race": rc and {k: rc[k] for k in ("acorn", "baseline")}}, indent=1,
                         default=str))
        return
    body = report(args, data, sp, rc, batch, args.seq, steps, skip, runs)
    if args.no_write:
        print(body)
    else:
        log(f"wrote {write_section('train', body)}")


if __name__ == "__main__":
    main()
