"""An IsoFLOP sweep: model sizes from one dial, each trained at several compute budgets.

Hoffmann et al. 2022 (Chinchilla), Approach 2: for each compute budget C,
train models of several sizes N, each on the D = C / (6 N) tokens the budget
buys, so that the losses trace one curve per budget whose minimum is the
compute-optimal size. Every run is an ordinary pretraining run through the one
loop (acorn.train.pretrain): resumable, its own directory, its own report.

The sizes come from one dial, depth, as nanochat's do (`--depth`), every other
shape derived from it in `model_for_depth` with its reason. The learning rate
and the schedule are derived too (`plan`), because a sweep whose small runs are
cut off mid-schedule or whose wide models train at a rate tuned for narrow ones
measures the recipe, not the scale: each run's cosine schedule spans exactly
its own tokens and ends decayed.

Compute is counted one stated way, C = 6 N D (Kaplan et al. 2020: 2 FLOPs per
weight per token forward, 4 backward), with N the total parameter count
(embeddings included; the head is tied to them and is a matmul of the same
size). N without the embeddings is recorded beside it, and the fits can use
either: the two conventions give different exponents at small scale (Kaplan
used non-embedding N, Hoffmann total N; Pearce & Song 2024 trace the
disagreement between their exponents largely to this), so a sweep must say
which one it reports.

A sweep directory:
    sweep.json          the plan: settings and every run's shapes, budget and tokens
    runs/NAME/          an ordinary pretraining run (config.yaml, metrics.jsonl, model/, report.md)
    runs/NAME/result.json   written when the run has finished: what the fits read
A killed sweep continues where it stopped (finished runs are skipped, a run
with a checkpoint resumes from it), and `--shard i/n` gives process i the i-th
of n shares of the runs, balanced by compute, so shards may run anywhere.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from acorn.errors import AcornError
from acorn.fileio import read_json, write_json


# ----------------------------------------------------------------- presets
@dataclass(frozen=True)
class SweepPreset:
    depths: tuple[int, ...]  # the dial's values: transformer blocks
    budgets: tuple[float, ...]  # compute budgets C = 6 N D in FLOPs; the largest is held out by the fit
    aspect: int = 32  # d_model = aspect x depth
    head_dim: int = 32  # width of one attention head; n_head = d_model / head_dim
    seq_len: int = 128  # tokens per training row
    micro_batch: int = 16  # rows per forward pass
    batch_tokens: int = 2048  # tokens per optimizer step, at most (runs too short for target_steps get fewer)
    target_steps: int = 250  # a run with fewer steps at batch_tokens halves its batch until it has them
    min_batch_rows: int = 4  # ... down to this many rows
    base_lr: float = 3e-3  # AdamW peak learning rate at base_width
    base_width: int = 128
    tokens_per_param: tuple[float, float] = (0.3, 80.0)  # runs outside this D / N_total window are not planned
    max_epochs: float = 4.0  # nor runs that would repeat the data more often than this
    min_steps: int = 50  # nor runs of fewer optimizer steps (their warmup would be most of them)
    checkpoint_every: int = 250  # steps between checkpoints: how much a killed run loses
    world: str = "default"  # the world size made when no --data is given
    vocab_size: int = 2048  # the tokenizer trained then
    note: str = ""


PRESETS: dict[str, SweepPreset] = {
    # 12 runs, 2.2e13 FLOPs of 6ND on the default world's 1.6M tokens: sized for <= 30 minutes
    # (sweep + fit + emergence) on 2 CPU cores (measured: 5.4 min from nothing on 2 idle cores,
    # docs/BENCHMARKS.md section scaling). Aspect 32 rather than nanochat's 64 gives more than one size below 1M
    # parameters, where the 2048-token embedding is most of a model; the budgets put each
    # curve's minimum among the sizes, and the window keeps 3 sizes per budget without runs that
    # spend a budget on a model far from its optimum. The largest budget is the held-out one.
    "cpu": SweepPreset(depths=(1, 2, 3, 4), budgets=(4e11, 1e12, 2.5e12, 4e12), tokens_per_param=(0.2, 40.0),
                       note="12 runs of 82K-1.1M parameters; <= 30 min on 2 CPU cores"),
    # The same recipe on one GPU: nanochat's aspect (64), 64-wide heads, 1k-token rows, the large
    # world (~15M tokens at this vocabulary), which bounds the budgets: at 4 passes over it the
    # largest runs already repeat their data. Measured on one H200 (docs/BENCHMARKS.md, scaling-gpu):
    # 18 runs in 4.7 min. The first plan (depths 2-8, budgets from 1e14) had no IsoFLOP minimum: the
    # smallest model won at every budget, so depth 1 and the 3e13 budget were added to bracket it.
    "gpu": SweepPreset(depths=(1, 2, 3, 4, 5, 6, 8), budgets=(3e13, 1e14, 3e14, 1e15, 3e15), aspect=64, head_dim=64,
                       seq_len=1024, micro_batch=32, batch_tokens=65536, base_lr=1e-3, base_width=768,
                       tokens_per_param=(0.5, 100.0), max_epochs=4.0, checkpoint_every=200, world="large",
                       vocab_size=8192, note="18 runs of 0.6-30M parameters; 4.7 min of training on one H200"),
    # For tests: two budgets, seconds on a CPU.
    "tiny": SweepPreset(depths=(1, 2), budgets=(1.5e8, 3e8), aspect=16, head_dim=16, seq_len=32, micro_batch=4,
                        batch_tokens=128, tokens_per_param=(0.01, 1000.0), max_epochs=1000.0, min_steps=2,
                        checkpoint_every=4, world="tiny", vocab_size=400, note="for tests"),
}


# ------------------------------------------------------------------ the dial
def model_for_depth(depth: int, p: SweepPreset, vocab_size: int):
    """The model of one setting of the dial."""
    from acorn.model.transformer import ModelConfig

    if depth < 1:
        raise AcornError(f"--sizes: depth {depth} is not a model; give depths of 1 or more")
    # Width grows with depth at a fixed aspect ratio (nanochat: model_dim = depth x 64), so one
    # number orders the models and shapes stay in the proportions that train well (Kaplan et al.
    # found loss depends weakly on the ratio within a wide band; Levine et al. 2020 on depth/width).
    d_model = p.aspect * depth
    # Heads of a fixed width: more heads as the model widens, each still wide enough to attend.
    n_head = max(1, d_model // p.head_dim)
    # The default layout (RoPE, RMSNorm, SwiGLU, tied head) with every head its own keys and
    # values: grouped-query attention saves inference memory, nothing we measure here.
    return ModelConfig(vocab_size=vocab_size, n_layer=depth, d_model=d_model, n_head=n_head, head_dim=d_model // n_head,
                       max_seq_len=p.seq_len)


def learning_rate(d_model: int, p: SweepPreset) -> float:
    # Adam moves every weight by about lr per step, so a matrix's output moves by about lr x its
    # fan-in: wider models need smaller rates (muP: 1 / width for hidden matrices, Yang et al.
    # 2022). nanochat scales its AdamW rates by (width / 768)^-0.5; we take the same square root,
    # which keeps the narrowest models from an oversized rate and the widest from a timid one.
    return p.base_lr * math.sqrt(p.base_width / d_model)


# ------------------------------------------------------------------ the plan
def batch_for(tokens: float, p: SweepPreset) -> int:
    """Tokens per step for a run of `tokens`: the preset's batch, halved while the run would
    have fewer than target_steps steps (down to min_batch_rows rows).

    Why: the law models a loss that depends on N and D alone, which holds while the batch is
    below the critical batch size (McCandlish et al. 2018; Kaplan et al. 2020, section 5): then
    a token is worth the same in any batch. A large model on a small budget at a fixed batch
    gets a few dozen steps, is limited by its number of updates rather than by its tokens, and
    lands far above the law (a depth-3 model at 62 steps: loss 4.08, against 2.30 at 154)."""
    batch = p.batch_tokens
    while tokens / batch < p.target_steps and batch // 2 >= p.min_batch_rows * p.seq_len:
        batch //= 2
    return batch


@dataclass
class RunSpec:
    name: str
    depth: int
    d_model: int
    n_head: int
    lr: float
    budget: float  # the planned compute, 6 N_total D
    n_total: int  # parameters, embeddings included
    n_nonembedding: int
    steps: int
    warmup_steps: int
    batch_tokens: int  # tokens per optimizer step
    tokens: int  # steps x batch_tokens: what the run trains on
    compute_total: float  # 6 N_total D, with D the tokens actually trained on
    compute_nonembedding: float  # 6 N_nonembedding D
    epochs: float  # passes over the training data


def run_name(budget: float, depth: int) -> str:
    return f"c{budget:.3g}".replace("e+", "e") + f"-d{depth}"


def plan(p: SweepPreset, vocab_size: int, data_tokens: int, *, budgets=None, depths=None) -> tuple[list[RunSpec], list[str]]:
    """Every (budget, depth) the window allows, smallest budget first; and why the others were left out."""
    budgets = sorted(set(budgets or p.budgets))
    depths = sorted(set(depths or p.depths))
    for b in budgets:
        if not (b > 0 and math.isfinite(b)):
            raise AcornError(f"--budgets: {b} is not a compute budget; give FLOPs > 0, e.g. 1e12,3e12")
    runs, skipped = [], []
    for b in budgets:
        here = []
        for depth in depths:
            cfg = model_for_depth(depth, p, vocab_size)
            n = cfg.num_params()
            batch = batch_for(b / (6 * n), p)
            steps = round(b / (6 * n) / batch)
            tokens = steps * batch
            ratio, epochs = tokens / n, tokens / max(1, data_tokens)
            name = run_name(b, depth)
            lo, hi = p.tokens_per_param
            if steps < p.min_steps:
                here.append(f"{name}: {steps} steps of {batch} tokens, fewer than {p.min_steps}")
            elif not lo <= ratio <= hi:
                here.append(f"{name}: {ratio:.2g} tokens per parameter, outside {lo:g}-{hi:g}")
            elif epochs > p.max_epochs:
                here.append(f"{name}: {epochs:.1f} passes over the data, more than {p.max_epochs:g}")
            else:
                # Warmup: a twentieth of the run (Adam's moment estimates settle in the first few
                # tens of steps), so every run spends the same share of its schedule warming up.
                warmup = max(1, round(0.05 * steps))
                n_ne = cfg.num_params(embeddings=False)
                runs.append(RunSpec(name, depth, cfg.d_model, cfg.n_head, learning_rate(cfg.d_model, p), b, n, n_ne,
                                    steps, warmup, batch, tokens, 6.0 * n * tokens, 6.0 * n_ne * tokens, epochs))
        if len(here) == len(depths):
            raise AcornError(f"--budgets {b:g}: no size in --sizes {','.join(map(str, depths))} fits it "
                             f"({'; '.join(here)}); give a budget that fits the sizes and the data, or other --sizes")
        skipped += here
    return runs, skipped


def check_memory(depths, p: SweepPreset, vocab_size: int, device_type: str = "cpu") -> None:
    """Refuse a size that cannot fit: fp32 weights, gradients and Adam's two moments (16 bytes
    a parameter) plus the activations of one micro-batch (~34 x d x layers bytes a token,
    Korthikanti et al. 2022, and the logits), against the memory this machine has."""
    avail = _available_memory(device_type)
    if not avail:
        return
    for depth in sorted(set(depths or p.depths)):
        cfg = model_for_depth(depth, p, vocab_size)
        acts = p.micro_batch * p.seq_len * (34 * cfg.d_model * depth + 8 * vocab_size)  # the largest micro-batch
        need = 16 * cfg.num_params() + acts
        if need > 0.8 * avail:
            raise AcornError(f"--sizes: depth {depth} ({cfg.num_params() / 1e6:,.0f}M parameters) needs ~{need / 2**30:,.1f} "
                             f"GiB to train, more than the {avail / 2**30:.1f} GiB free on this {device_type}; "
                             "give smaller --sizes")


def _available_memory(device_type: str) -> int | None:
    if device_type == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def shard_of(runs: list[RunSpec], i: int, n: int) -> list[RunSpec]:
    """Process i's share of n: the runs dealt largest first to the least-loaded share
    (the longest-processing-time rule), so shards take about the same time. Every
    process computes the same deal, so no coordination is needed."""
    if not 0 <= i < n:
        raise AcornError(f"--shard {i}/{n}: the index runs 0 to {n - 1}; e.g. --shard 0/2 and --shard 1/2")
    loads, owner = [0.0] * n, {}
    for r in sorted(runs, key=lambda r: (-r.compute_total, r.name)):
        k = loads.index(min(loads))
        owner[r.name] = k
        loads[k] += r.compute_total
    return [r for r in runs if owner[r.name] == i]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise AcornError(f"--shard {text!r}: write it as i/n, e.g. 0/2 (the first of two shares)") from None
    if n < 1 or not 0 <= i < n:
        raise AcornError(f"--shard {text}: need 0 <= i < n, e.g. 0/2 and 1/2")
    return i, n


# ------------------------------------------------------------------ the data
def ensure_data(out: Path, p: SweepPreset, data: str | None, seed: int = 0) -> Path:
    """The token shards to train on: --data, or a world, tokenizer and shards made in OUT."""
    if data:
        if not (Path(data) / "meta.json").exists():
            raise AcornError(f"--data {data}: no prepared data (meta.json); give a directory written by "
                             "`acorn data prepare`, or leave --data out to make the world's")
        return Path(data)
    shards = out / "data"
    if (shards / "meta.json").exists() and read_json(shards / "meta.json").get("complete"):
        return shards
    from acorn.data.prepare import prepare
    from acorn.data.world import generate_world
    from acorn.tokenizer.bpe import Tokenizer

    world = out / "world"
    if not (world / "pretrain.jsonl").exists():
        generate_world(world, seed=seed, size=p.world, overwrite=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small world supports fewer merges
        tok = Tokenizer.train([world / "pretrain.jsonl"], p.vocab_size)
    tok.save(out / "tokenizer")
    prepare([world / "pretrain.jsonl"], out / "tokenizer", shards, val_fraction=0.01, quiet=True)
    return shards


def world_of(data: Path) -> Path | None:
    """The world directory the shards were prepared from, if they were and it is still there."""
    for inp in read_json(data / "meta.json").get("inputs", []):
        world = Path(inp["path"]).parent
        if (world / "world.json").exists():
            return world
    return None


# ------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    seconds: float = 0.0


def sweep(out: str | os.PathLike, preset: str | SweepPreset = "cpu", *, data: str | None = None, budgets=None,
          depths=None, shard: tuple[int, int] = (0, 1), seed: int = 0, dtype: str = "auto",
          quiet: bool = False) -> SweepResult:
    """Plan the sweep, write sweep.json, and train this shard's runs that have not finished."""
    from acorn.train.run import checkpoints

    p = PRESETS[preset] if isinstance(preset, str) else preset
    if isinstance(preset, str) and preset not in PRESETS:
        raise AcornError(f"unknown sweep preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"--out {out} is a file; give a directory for the sweep")
    data_dir = ensure_data(out, p, data, seed)
    meta = read_json(data_dir / "meta.json")
    vocab = meta["tokenizer"]["vocab_size"]
    data_tokens = sum(s["tokens"] for s in meta["shards"]["train"])
    import torch

    check_memory(depths, p, vocab, "cuda" if torch.cuda.is_available() else "cpu")
    runs, skipped = plan(p, vocab, data_tokens, budgets=budgets, depths=depths)
    settings = {"preset": asdict(p), "data": str(data_dir), "data_tokens": data_tokens, "vocab_size": vocab,
                "seed": seed, "dtype": dtype, "compute": "C = 6 N D; N total (embeddings included) and non-embedding"}
    settings = json.loads(json.dumps(settings))  # as sweep.json holds them: tuples as lists
    old = out / "sweep.json"
    if old.exists():
        before = read_json(old)
        if before.get("settings") != settings or [r["name"] for r in before.get("runs", [])] != [r.name for r in runs]:
            raise AcornError(f"{out} holds a sweep with other settings (its sweep.json); continue it with the "
                             "same --preset, --budgets, --sizes, --data and --seed, or choose another --out")
    # Under torchrun every process runs every run of its shard (as one data-parallel job); the
    # first process writes the sweep's own files.
    main = int(os.environ.get("RANK", 0)) == 0
    if main:
        write_json(old, {"settings": settings, "runs": [asdict(r) for r in runs], "left_out": skipped})
    mine = shard_of(runs, *shard)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"sweep: {len(runs)} runs, {sum(r.compute_total for r in runs):.2e} FLOPs (6ND); this shard "
        f"{shard[0]}/{shard[1]}: {len(mine)} runs, {sum(r.compute_total for r in mine):.2e} FLOPs"
        + (f"; left out: {len(skipped)} (see sweep.json)" if skipped else ""))
    res, t0 = SweepResult(out), time.perf_counter()
    for k, r in enumerate(mine):
        run_dir = out / "runs" / r.name
        if (run_dir / "result.json").exists():
            res.skipped_done.append(r.name)
            continue
        say(f"\n[{k + 1}/{len(mine)}] {r.name}: depth {r.depth}, width {r.d_model}, {r.n_total / 1e6:.2f}M parameters "
            f"({r.n_nonembedding / 1e6:.2f}M non-embedding), {r.tokens / 1e6:.2f}M tokens ({r.tokens / r.n_total:.1f} "
            f"per parameter, {r.epochs:.1f} epochs), {r.steps} steps, lr {r.lr:.2g}")
        t = time.perf_counter()
        train_run(r, p, run_dir, data_dir, vocab, seed=seed, dtype=dtype, resume=bool(checkpoints(run_dir)))
        if main:
            write_result(r, run_dir, time.perf_counter() - t)
        res.ran.append(r.name)
    res.seconds = time.perf_counter() - t0
    return res


def pretrain_config(r: RunSpec, p: SweepPreset, run_dir: Path, data_dir: Path, vocab: int, *, seed: int, dtype: str):
    from acorn.train.loop import EvalConfig, LoopConfig
    from acorn.train.optim import OptimConfig
    from acorn.train.pretrain import PretrainConfig

    model = model_for_depth(r.depth, p, vocab)
    return PretrainConfig(
        data=str(data_dir), out=str(run_dir), seed=seed, model=model,
        # The cosine schedule spans exactly this run's steps and ends at a tenth of the peak, as
        # Hoffmann et al. found necessary: a schedule longer than the run leaves its loss too high.
        optim=OptimConfig(lr=r.lr, warmup_steps=r.warmup_steps, min_lr_ratio=0.1, schedule="cosine"),
        train=LoopConfig(seq_len=p.seq_len, micro_batch=min(p.micro_batch, r.batch_tokens // p.seq_len),
                         batch_tokens=r.batch_tokens,
                         max_steps=r.steps, dtype=dtype),
        # Validated once, at the end, on the whole validation split: every run measured on the
        # same tokens, so the runs' losses differ by the model, not by the sample.
        eval=EvalConfig(every=r.steps, batches=1_000_000, checkpoint_every=p.checkpoint_every),
    )


def train_run(r: RunSpec, p: SweepPreset, run_dir: Path, data_dir: Path, vocab: int, *, seed: int, dtype: str,
              resume: bool) -> Path:
    from acorn.train.pretrain import pretrain

    cfg = pretrain_config(r, p, run_dir, data_dir, vocab, seed=seed, dtype=dtype)
    return pretrain(cfg, resume=resume)


def write_result(r: RunSpec, run_dir: Path, seconds: float) -> dict:
    """result.json from the run's metrics: the final validation and training losses."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    val = [row for row in rows if "val_loss" in row]
    if not val:
        raise AcornError(f"{run_dir}: the run ended without a validation loss; prepare data with a validation split")
    last = rows[-1]
    result = {**asdict(r), "val_loss": val[-1]["val_loss"], "val_bpb": val[-1].get("val_bpb"),
              "train_loss": last["loss"], "seconds": seconds}
    write_json(run_dir / "result.json", result)
    # The model (model/) is what the fits and the emergence evaluation read; the checkpoints,
    # three times its size with Adam's moments, were only needed to resume.
    for ckpt in (run_dir / "checkpoints").glob("step_*.pt"):
        ckpt.unlink()
    return result


def load_results(out: str | os.PathLike) -> list[dict]:
    """The finished runs of a sweep directory, in plan order."""
    out = Path(out)
    if not (out / "sweep.json").exists():
        raise AcornError(f"{out}: no sweep here (sweep.json); run `acorn scaling sweep --out {out}` first")
    plan_ = read_json(out / "sweep.json")
    found = []
    for r in plan_["runs"]:
        path = out / "runs" / r["name"] / "result.json"
        if path.exists():
            found.append(read_json(path))
    return found


def with_overrides(p: SweepPreset, **kw) -> SweepPreset:
    return replace(p, **{k: v for k, v in kw.items() if v is not None})
