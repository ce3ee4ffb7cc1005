"""`acorn speedrun`: the whole pipeline on the built-in world, one command.

In the spirit of nanochat's speedrun: every stage runs in order on data that
exists on every machine, prints what it does and how long it took, and the
run directory ends with a report.md a person can read. Stages so far:
world -> tokenizer -> tokenizer evaluation. Pretraining, fine-tuning and
evaluation of the model are added as they are built, each as one more stage
function below.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from acorn.errors import AcornError
from acorn.fileio import write_json, write_text


@dataclass
class StageResult:
    name: str
    seconds: float
    summary: dict = field(default_factory=dict)


def _stage(title: str, results: list[StageResult], fn, *args, **kwargs):
    """Run one stage with a header line and its wall time."""
    print(f"\n== [{len(results) + 1}] {title}", flush=True)
    t0 = time.perf_counter()
    summary = fn(*args, **kwargs) or {}
    dt = time.perf_counter() - t0
    results.append(StageResult(title, dt, summary))
    print(f"   done in {dt:.1f}s", flush=True)
    return summary


def stage_world(out: Path, size: str, seed: int) -> dict:
    from acorn.data.world import generate_world

    return generate_world(out, seed=seed, size=size)


def stage_tokenizer(world_dir: Path, out: Path, vocab_size: int) -> dict:
    from acorn.tokenizer import Tokenizer

    # The tokenizer sees the pretraining documents and the instruction data,
    # so the numbers and names of the world are single tokens where frequent.
    sources = [p for p in (world_dir / "pretrain.jsonl", world_dir / "sft.jsonl") if p.exists()]
    texts = list(_jsonl_texts(sources))
    tok = Tokenizer.train(texts, vocab_size)
    tok.save(out)
    print(f"   {tok.vocab_size} tokens ({len(tok.special_tokens)} special) -> {out}")
    return {"vocab_size": tok.vocab_size, "special_tokens": len(tok.special_tokens), "path": str(out)}


def stage_tokenizer_eval(world_dir: Path, tok_dir: Path, out: Path) -> dict:
    from acorn.tokenizer import Tokenizer
    from acorn.tokenizer_eval import compare_bytes_per_token, format_table

    # Held-out prose: knowledge-base documents about people who never appear in
    # pretraining, as plain text (not JSONL, whose quotes and keys the
    # tokenizer never trained on).
    held_out = out / "heldout.txt"
    write_text(held_out, "\n\n".join(_jsonl_texts([world_dir / "knowledge_base.jsonl"])) + "\n")
    toks = {"acorn (this run)": Tokenizer.from_pretrained(tok_dir), "gpt2": Tokenizer.from_pretrained("gpt2")}
    rows = compare_bytes_per_token(toks, [held_out])
    table = format_table(rows)
    print(f"   bytes per token on held-out world prose ({held_out}):")
    print("\n".join("   " + line for line in table.splitlines()))
    return {"rows": rows, "command": f"acorn tokenizer eval {tok_dir} {held_out} --compare gpt2"}


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


def speedrun(out: str | Path = "runs/speedrun", *, size: str = "default", seed: int = 0, vocab_size: int = 2048) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"{out} is a file; give --out a directory")
    out.mkdir(parents=True, exist_ok=True)
    print(f"acorn speedrun -> {out} (world size {size}, seed {seed})")
    t0 = time.perf_counter()
    results: list[StageResult] = []
    world_dir, tok_dir = out / "world", out / "tokenizer"
    _stage("world: generate the built-in synthetic world (seconds)", results, stage_world, world_dir, size, seed)
    _stage(f"tokenizer: train byte-level BPE, vocab {vocab_size} (seconds)", results, stage_tokenizer,
           world_dir, tok_dir, vocab_size)
    _stage("tokenizer eval: bytes per token against GPT-2 (seconds)", results, stage_tokenizer_eval,
           world_dir, tok_dir, out / "tokenizer_eval")
    total = time.perf_counter() - t0
    report = out / "report.md"
    write_text(report, _report(results, total, size, seed))
    write_json(out / "speedrun.json", {"size": size, "seed": seed, "seconds": total,
                                       "stages": [{"name": r.name, "seconds": r.seconds} for r in results]})
    print(f"\nfinished in {total:.1f}s; report: {report}")
    return report


def _report(results: list[StageResult], total: float, size: str, seed: int) -> str:
    from acorn.tokenizer_eval import format_table

    lines = [
        "# Acorn speedrun report", "",
        f"World size `{size}`, seed {seed}, on {platform.machine()} / Python {platform.python_version()}; "
        f"total {total:.1f} s.", "",
        "| stage | seconds |", "|---|---:|",
        *[f"| {r.name.split(':')[0]} | {r.seconds:.1f} |" for r in results],
        "",
    ]
    for r in results:
        if "rows" in r.summary:
            lines += ["## Tokenizer: bytes per token on held-out world prose", "",
                      f"Reproduce with `{r.summary['command']}`.", "", "```", format_table(r.summary["rows"]), "```", ""]
        elif "vocab_size" in r.summary:
            lines += ["## Tokenizer", "", f"{r.summary['vocab_size']} tokens, {r.summary['special_tokens']} special; "
                      f"saved in Hugging Face format at `{r.summary['path']}`.", ""]
    return "\n".join(lines)
