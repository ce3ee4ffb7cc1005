"""`acorn speedrun`: the whole pipeline on the built-in world, one command.

In the spirit of nanochat's speedrun: every stage runs in order on data that
exists on every machine, says what it does and how long it will take, and the
run directory ends with a report.md a person can read:

  world -> tokenizer -> token shards -> pretrain -> SFT -> evaluation -> samples -> report

Presets size the run to the hardware. The default, `cpu`, is tuned to finish
within 15 minutes on a 2-core CPU: pretraining and SFT get fixed time budgets,
and their step counts are derived from a measured throughput, so a faster
machine trains more steps rather than finishing early with a worse model.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from acorn.errors import AcornError
from acorn.fileio import write_json, write_text


@dataclass(frozen=True)
class SpeedrunPreset:
    world: str
    vocab_size: int
    model: str  # a ModelConfig preset
    seq_len: int
    sft_seq_len: int  # conversations with a tool schema in the system prompt need ~300 tokens
    micro_batch: int
    batch_tokens: int
    pretrain_minutes: float
    sft_minutes: float
    lr: float
    sft_lr: float
    eval_limit: int | None
    note: str


PRESETS = {
    # Facts are learned by seeing them many times: on a CPU the 1M-parameter model,
    # three times faster than the 5M one, gets ~10 passes over the world in the
    # budget and has capacity to spare for its ~1,200 facts.
    "cpu": SpeedrunPreset("default", 2048, "nano", 256, 512, 16, 16384, 9.0, 3.5, 3e-3, 1e-3, None,
                          "~15 min on a 2-core CPU, ~1 GB of memory"),
    "tiny": SpeedrunPreset("tiny", 512, "nano", 128, 128, 8, 2048, 0.1, 0.05, 3e-3, 1e-3, 20,
                           "under a minute; checks the pipeline end to end, not for results"),
    "gpu": SpeedrunPreset("large", 8192, "d12", 1024, 1024, 32, 262144, 30.0, 10.0, 1e-3, 3e-4, None,
                          "a GPT-2-small-class model (114M) on one GPU; estimated ~45 min and ~20 GB, not yet measured"),
}


@dataclass
class StageResult:
    name: str
    seconds: float
    summary: dict = field(default_factory=dict)


def _stage(title: str, estimate: str, results: list[StageResult], fn, *args, **kwargs):
    """Run one stage with a header line, what it will take, and its wall time."""
    print(f"\n== [{len(results) + 1}] {title} ({estimate})", flush=True)
    t0 = time.perf_counter()
    summary = fn(*args, **kwargs) or {}
    dt = time.perf_counter() - t0
    results.append(StageResult(title.split(":")[0], dt, summary))
    print(f"   done in {_fmt_time(dt)}", flush=True)
    return summary


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------ stages
def stage_world(out: Path, size: str, seed: int) -> dict:
    from acorn.data.world import generate_world

    return generate_world(out, seed=seed, size=size)


def stage_tokenizer(world_dir: Path, out: Path, vocab_size: int) -> dict:
    import warnings

    from acorn.tokenizer.bpe import Tokenizer

    # The tokenizer sees the pretraining documents and the conversations, so
    # the world's names and numbers are single tokens where frequent.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small world supports fewer merges; the size is reported
        tok = Tokenizer.train([world_dir / "pretrain.jsonl", world_dir / "sft.jsonl"], vocab_size)
    tok.save(out)
    print(f"   {tok.vocab_size} tokens ({len(tok.special_tokens)} special) -> {out}")
    return {"vocab_size": tok.vocab_size, "special_tokens": len(tok.special_tokens), "path": str(out)}


def stage_tokenizer_eval(world_dir: Path, tok_dir: Path, out: Path) -> dict:
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.tokenizer.counting import compare_bytes_per_token, format_table

    # Held-out prose: knowledge-base documents about people who never appear in
    # pretraining, as plain text (not JSONL, whose quotes and keys the
    # tokenizer never trained on).
    held_out = out / "heldout.txt"
    write_text(held_out, "\n\n".join(_jsonl_texts([world_dir / "knowledge_base.jsonl"])) + "\n")
    toks = {"acorn (this run)": Tokenizer.from_pretrained(tok_dir), "gpt2": Tokenizer.from_pretrained("gpt2")}
    rows = compare_bytes_per_token(toks, [held_out])
    print("\n".join("   " + line for line in format_table(rows).splitlines()))
    return {"rows": rows, "command": f"acorn tokenizer eval {tok_dir} {held_out} --compare gpt2"}


def stage_prepare(world_dir: Path, tok_dir: Path, out: Path) -> dict:
    from acorn.data.prepare import prepare

    return prepare([world_dir / "pretrain.jsonl"], tok_dir, out, val_fraction=0.01, quiet=True)


def stage_pretrain(p: SpeedrunPreset, data: Path, out: Path, vocab_size: int, seed: int) -> dict:
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig, pretrain

    args = ["--data", str(data), "--out", str(out), "--seed", str(seed), "--model.preset", p.model,
            "--model.vocab_size", str(vocab_size), "--model.max_seq_len", str(max(p.seq_len, p.sft_seq_len)),
            "--train.seq_len", str(p.seq_len), "--train.micro_batch", str(p.micro_batch),
            "--train.batch_tokens", str(p.batch_tokens), "--optim.lr", str(p.lr),
            "--train.max_minutes", str(p.pretrain_minutes * 1.1), "--eval.every", "100", "--eval.batches", "10",
            "--eval.checkpoint_every", "0"]
    cfg = load(PretrainConfig, None, args)
    steps = _steps_for(cfg, p.pretrain_minutes)
    cfg.train.max_steps = steps
    cfg.optim.warmup_steps = max(10, steps // 20)
    pretrain(cfg)
    return _last_metrics(out) | {"steps": steps}


def stage_sft(p: SpeedrunPreset, world_dir: Path, base: Path, out: Path, seed: int) -> dict:
    from acorn.config import load
    from acorn.train.sft import SFTConfig, sft

    args = ["--data", str(world_dir / "sft.jsonl"), "--init_from", str(base), "--out", str(out), "--seed", str(seed),
            "--train.seq_len", str(p.sft_seq_len), "--train.micro_batch", str(max(1, p.micro_batch * p.seq_len // p.sft_seq_len)),
            "--train.batch_tokens", str(p.batch_tokens // 2), "--optim.lr", str(p.sft_lr),
            "--train.max_minutes", str(p.sft_minutes * 1.1), "--eval.every", "50", "--eval.batches", "10",
            "--eval.checkpoint_every", "0"]
    cfg = load(SFTConfig, None, args)
    steps = _steps_for(cfg, p.sft_minutes, init_from=base)
    cfg.train.max_steps = steps
    sft(cfg)
    return _last_metrics(out) | {"steps": steps}


def stage_eval(model_dir: Path, world_dir: Path, limit: int | None, base_dir: Path | None = None) -> dict:
    from acorn.eval.world import evaluate_world
    from acorn.infer.engine import Engine

    engine = Engine.from_pretrained(model_dir)
    results = evaluate_world(engine, world_dir, limit=limit)
    if base_dir is not None:
        # In-context learning is a base-model ability, asked on raw "Input:/Label:" text
        # (the chat model gets the same raw prompt above, outside its chat format).
        base = evaluate_world(Engine.from_pretrained(base_dir), world_dir, limit=limit, tasks=("in_context",))
        results["in_context_base"] = base["in_context"]
        print(f"   in-context learning, base model: {base['in_context']['accuracy']:.1%} "
              f"(chance {base['in_context']['chance']:.1%})")
    qa, unk, ar = results["fact_qa"], results["unknown_qa"], results["arithmetic"]
    print(f"   fact QA exact match: {qa['all']:.1%} (asked in SFT {qa.get('in_sft', 0):.1%}, "
          f"only in pretraining {qa.get('not_in_sft', 0):.1%}); \"I don't know\" for unknown people: "
          f"{unk['idk_rate']:.1%}; arithmetic {ar['all']:.1%}")
    return results


def stage_samples(model_dir: Path) -> dict:
    from acorn.infer.engine import Engine

    engine = Engine.from_pretrained(model_dir)
    questions = _sample_questions(model_dir)
    out = []
    for q in questions:
        c = engine.chat([{"role": "user", "content": q}], temperature=0.0, max_new_tokens=32)
        out.append({"question": q, "answer": c.text})
        print(f"   Q: {q}\n   A: {c.text}")
    return {"samples": out}


def _sample_questions(model_dir: Path) -> list[str]:
    world = model_dir.parent.parent / "world"
    qs = []
    for name, n in (("fact_qa", 3), ("unknown_qa", 2), ("arithmetic", 2)):
        path = world / "eval" / f"{name}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            qs += [r["question"] for r in rows[:: max(1, len(rows) // n)][:n]]
    return qs


# ----------------------------------------------------------------- helpers
def _steps_for(cfg, minutes: float, init_from: Path | None = None) -> int:
    """Optimizer steps that fit in `minutes`, from the timing of a few real steps
    (the loop's own train_step, one micro-batch each, on random tokens)."""
    import functools

    import torch

    from acorn import hardware
    from acorn.data.loader import Batch
    from acorn.model.transformer import Transformer
    from acorn.train.loop import accumulation, train_step
    from acorn.train.optim import build_optimizers
    from acorn.train.pretrain import next_token_loss

    device = hardware.resolve_device()
    if init_from is not None:
        from acorn.model.checkpoint import load as load_checkpoint

        model = load_checkpoint(init_from, dtype="float32", device=str(device))
    else:
        model = Transformer(cfg.model).to(device)
    dtype = hardware.resolve_dtype(cfg.train.dtype, device)
    autocast = functools.partial(hardware.autocast, device, dtype)
    optimizers = build_optimizers(model, cfg.optim)
    x = torch.randint(0, model.config.vocab_size, (cfg.train.micro_batch, cfg.train.seq_len), device=device)
    hardware.flush_denormals(device)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        train_step(model, [Batch(x, x)], next_token_loss, optimizers, device=device, autocast=autocast,
                   grad_clip=cfg.optim.grad_clip)
        times.append(time.perf_counter() - t0)
    # The first steps are slow while kernels and memory warm up: the median of the later ones.
    per_micro = sorted(times[4:])[len(times[4:]) // 2]
    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len)
    # ~8% of the time goes to evaluation, data and logging around the steps.
    steps = int(minutes * 60 * 0.92 / (per_micro * accum))
    tok_s = cfg.train.micro_batch * cfg.train.seq_len / per_micro
    print(f"   measured {tok_s:,.0f} tokens/s -> {steps} steps of {accum * cfg.train.micro_batch * cfg.train.seq_len:,} "
          f"tokens in {minutes:g} min", flush=True)
    del model, optimizers
    return max(steps, 10)


def _last_metrics(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    tok_s = sorted(r["tok_s"] for r in rows)[len(rows) // 2]
    return {"train_loss": rows[-1]["loss"], "val_loss": val[-1]["val_loss"] if val else None,
            "val_bpb": val[-1].get("val_bpb") if val else None, "tokens": rows[-1]["tokens"], "tok_s": tok_s,
            "loss_plot": str(out / "loss.png")}


def _jsonl_texts(paths: list[Path]):
    """The text of world files: 'text' fields, or the contents of 'messages'."""
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "text" in row:
                    yield row["text"]
                for m in row.get("messages", ()):
                    if isinstance(m.get("content"), str):
                        yield m["content"]


# ----------------------------------------------------------------- the run
def speedrun(out: str | Path = "runs/speedrun", *, preset: str = "cpu", seed: int = 0,
             size: str | None = None, vocab_size: int | None = None) -> Path:
    if preset not in PRESETS:
        raise AcornError(f"unknown speedrun preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if size or vocab_size:
        p = SpeedrunPreset(**{**p.__dict__, "world": size or p.world, "vocab_size": vocab_size or p.vocab_size})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"{out} is a file; give --out a directory")
    if (out / "pretrain" / "metrics.jsonl").exists():
        raise AcornError(f"{out} already holds a speedrun; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    print(f"acorn speedrun -> {out}: preset {preset} ({p.note}), world {p.world}, seed {seed}")
    t0 = time.perf_counter()
    results: list[StageResult] = []
    world, tok, data = out / "world", out / "tokenizer", out / "data"
    _stage("world: generate the built-in synthetic world", "seconds", results, stage_world, world, p.world, seed)
    tok_summary = _stage(f"tokenizer: train byte-level BPE, vocab {p.vocab_size}", "seconds", results,
                         stage_tokenizer, world, tok, p.vocab_size)
    _stage("tokenizer eval: bytes per token against GPT-2", "seconds", results, stage_tokenizer_eval, world, tok,
           out / "tokenizer_eval")
    _stage("data: tokenize the pretraining documents into shards", "seconds", results, stage_prepare, world, tok, data)
    _stage(f"pretrain: {p.model} model, next-token prediction", f"{p.pretrain_minutes:g} min", results,
           stage_pretrain, p, data, out / "pretrain", tok_summary["vocab_size"], seed)
    _stage("sft: fine-tune on the world's conversations", f"{p.sft_minutes:g} min", results, stage_sft, p, world,
           out / "pretrain" / "model", out / "sft", seed)
    _stage("eval: facts, unknowns, arithmetic, multiple choice, in-context", "a minute or two", results, stage_eval,
           out / "sft" / "model", world, p.eval_limit, out / "pretrain" / "model")
    _stage("samples: a few answers from the chat model", "seconds", results, stage_samples, out / "sft" / "model")
    total = time.perf_counter() - t0
    report = out / "report.md"
    write_text(report, _report(results, total, preset, p, seed, out))
    write_json(out / "speedrun.json", {"preset": preset, "seed": seed, "seconds": total,
                                       "stages": [{"name": r.name, "seconds": r.seconds, "summary": r.summary}
                                                  for r in results]})
    print(f"\nfinished in {_fmt_time(total)}; report: {report}; chat with it: acorn chat {out / 'sft' / 'model'}")
    return report


def _report(results: list[StageResult], total: float, preset: str, p: SpeedrunPreset, seed: int, out: Path) -> str:
    from acorn.eval.world import format_results
    from acorn.tokenizer.counting import format_table

    by = {r.name: r for r in results}
    lines = [
        "# Acorn speedrun report", "",
        f"Preset `{preset}` ({p.note}): world `{p.world}`, model preset `{p.model}`, seed {seed}; "
        f"{platform.machine()}, Python {platform.python_version()}; total {_fmt_time(total)}.", "",
        "| stage | time |", "|---|---:|", *[f"| {r.name} | {_fmt_time(r.seconds)} |" for r in results], "",
    ]
    if "eval" in by:
        ev = by["eval"].summary
        qa, unk = ev["fact_qa"], ev["unknown_qa"]
        lines += ["## Results", "",
                  f"- Fact questions answered exactly: **{qa['all']:.1%}** (questions SFT asked: {qa.get('in_sft', 0):.1%}; "
                  f"facts only in pretraining documents: {qa.get('not_in_sft', 0):.1%})",
                  f"- \"I don't know\" for people never seen: **{unk['idk_rate']:.1%}** "
                  f"(made-up answers: {unk['hallucination_rate']:.1%})",
                  *([f"- In-context learning, base model on raw few-shot prompts: "
                     f"**{ev['in_context_base']['accuracy']:.1%}** (chance {ev['in_context_base']['chance']:.1%})"]
                    if "in_context_base" in ev else []), "",
                  format_results(ev), ""]
    for name, title in (("pretrain", "Pretraining"), ("sft", "Supervised fine-tuning")):
        if name in by:
            s = by[name].summary
            lines += [f"## {title}", "", f"![{name} loss]({name}/loss.png)", "",
                      f"{s['steps']} steps, {s['tokens']:,} tokens at {s['tok_s']:,.0f} tokens/s; final train loss "
                      f"{s['train_loss']:.3f}" + (f", validation loss {s['val_loss']:.3f}" if s.get("val_loss") else "")
                      + (f", {s['val_bpb']:.3f} bits per byte" if s.get("val_bpb") else "") + ".", ""]
    if "tokenizer eval" in by:
        lines += ["## Tokenizer: bytes per token on held-out world prose", "",
                  f"Reproduce with `{by['tokenizer eval'].summary['command']}`.", "", "```",
                  format_table(by["tokenizer eval"].summary["rows"]), "```", ""]
    if "samples" in by:
        lines += ["## Samples (greedy)", ""]
        lines += [f"- **Q:** {s['question']}  \n  **A:** {s['answer']}" for s in by["samples"].summary["samples"]]
        lines.append("")
    return "\n".join(lines)
