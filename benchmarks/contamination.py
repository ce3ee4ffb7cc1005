"""Contamination demonstration: leak a slice of an evaluation set into
pretraining, measure how much it inflates the score, and check that the
n-gram check finds exactly the leaked documents.

Two tiny models are pretrained from scratch with the same settings, seed and
number of steps on two corpora that differ only by the leak:

  clean   the built-in world's pretraining documents + Tiny Shakespeare (general
          English, so LAMBADA's words are not all new), as token shards
  leaked  the same + every other one of LAMBADA's first --docs passages
          (context and last word, the text the task scores), each --copies times

Both are then evaluated on lambada_openai's first --docs documents with
`acorn eval --decontaminate CORPUS` against their own corpus. The table gives
each model's accuracy (greedy last word) and perplexity on the leaked half and
on the other half: the inflation is the leaked model's gain on the leaked half
over the clean model's, beside its gain on the half it never saw (the part of
the gain that is just more English). The check must flag every leaked
document and nothing else in the leaked corpus, and nothing in the clean one.

    python benchmarks/contamination.py                       # ~15 min on 2 cores
    python benchmarks/contamination.py --world tiny --docs 20 --steps 10 --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import CACHE, SHARED_DATA, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

WORK = CACHE / "contamination"


def lambada_docs() -> list[dict]:
    path = SHARED_DATA / "eval" / "lambada_openai.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shakespeare_docs(piece: int = 2000) -> list[str]:
    text = (SHARED_DATA / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return [text[i:i + piece] for i in range(0, len(text), piece)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def pretrain_model(data: Path, out: Path, args, vocab_size: int) -> float:
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig, pretrain

    overrides = ["--data", str(data), "--out", str(out), "--seed", "0", "--model.preset", args.preset,
                 "--model.vocab_size", str(vocab_size),
                 "--model.max_seq_len", str(args.seq_len), "--train.seq_len", str(args.seq_len),
                 "--train.micro_batch", str(args.micro_batch), "--train.batch_tokens", str(args.batch_tokens),
                 "--optim.lr", str(args.lr), "--train.max_steps", str(args.steps),
                 "--optim.warmup_steps", str(max(1, args.steps // 20)), "--eval.every", "0",
                 "--eval.checkpoint_every", "0"]
    cfg = load(PretrainConfig, None, overrides)
    t0 = time.perf_counter()
    pretrain(cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="small", help="world size (default small)")
    ap.add_argument("--docs", type=int, default=200, help="LAMBADA documents evaluated; every other one leaks")
    ap.add_argument("--copies", type=int, default=20, help="times each leaked passage is in the corpus")
    ap.add_argument("--preset", default="nano", help="model preset (default nano, ~1M parameters)")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of each pretraining run")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import torch

    from acorn.data.prepare import prepare
    from acorn.data.world import generate_world
    from acorn.eval.contamination import split_scores
    from acorn.eval.harness import evaluate
    from acorn.eval.tasks import get_task
    from acorn.tokenizer.bpe import Tokenizer

    torch.set_flush_denormal(True)
    WORK.mkdir(parents=True, exist_ok=True)
    task = get_task("lambada_openai")
    evaluated = lambada_docs()[:args.docs]
    leaked_ids = list(range(0, args.docs, 2))
    leaked_texts = [evaluated[i]["context"] + " " + evaluated[i]["continuation"] for i in leaked_ids]

    log(f"world ({args.world}), Tiny Shakespeare, {len(leaked_ids)} LAMBADA passages x {args.copies}")
    world = WORK / "world"
    generate_world(world, seed=0, size=args.world, quiet=True)
    english = write_jsonl(WORK / "text" / "shakespeare.jsonl", shakespeare_docs())
    leak = write_jsonl(WORK / "text" / "leak.jsonl", leaked_texts * args.copies)
    tok_dir = WORK / "tokenizer"
    # The tokenizer sees only the clean corpus, so both models share it and differ by the leak alone.
    tok = Tokenizer.train([world / "pretrain.jsonl", english], args.vocab_size)
    tok.save(tok_dir)
    corpora = {"clean": [world / "pretrain.jsonl", english], "leaked": [world / "pretrain.jsonl", english, leak]}
    rows, found, timing, reported = {}, {}, {}, {}
    for name, inputs in corpora.items():
        data = WORK / f"data-{name}"
        prepare(inputs, tok_dir, data, val_fraction=0.0, quiet=True, overwrite=True)
        run = WORK / f"pretrain-{name}"
        log(f"pretraining on the {name} corpus: {args.steps} steps")
        timing[name] = pretrain_model(data, run, args, tok.vocab_size)
        model = run / "model"  # the run's Hugging Face checkpoint
        out = evaluate(model, [task], limit=args.docs, add_bos=False, progress=False, decontaminate=[data],
                       ngram=args.ngram)
        report = out["contamination"]["tasks"][task.task]
        found[name] = report["contaminated_ids"]
        reported[name] = report["scores"]["clean"]["acc"]  # what --decontaminate reports as the clean score
        rows[name] = split_scores(task, out["samples"][task.task], leaked_ids)
        log(f"  {name}: check flags {len(found[name])} documents; acc leaked "
            f"{rows[name]['contaminated']['acc']:.3f} other {rows[name]['clean']['acc']:.3f}")

    # What the leaked corpus should show: the leak, plus whatever the clean part already shares.
    expected = sorted(set(leaked_ids) | set(found["clean"]))
    exact = found["leaked"] == expected
    tp = len(set(leaked_ids) & set(found["leaked"]))
    precision = tp / len(found["leaked"]) if found["leaked"] else float("nan")
    recall = tp / len(leaked_ids)

    def cells(r: dict) -> list[str]:
        return [f"{r['acc']:.3f}", f"{r['perplexity']:.1f}"]

    table = markdown_table(
        ["pretrained on", "leaked half: acc", "leaked half: perplexity", "other half: acc", "other half: perplexity",
         "documents the check flags"],
        [[name, *cells(rows[name]["contaminated"]), *cells(rows[name]["clean"]), str(len(found[name]))]
         for name in corpora])
    gain = rows["leaked"]["contaminated"]["acc"] - rows["clean"]["contaminated"]["acc"]
    control = rows["leaked"]["clean"]["acc"] - rows["clean"]["clean"]["acc"]
    all_acc = {name: rows[name]["all"]["acc"] for name in corpora}
    verdict = "exactly the leaked ones, with what the clean corpus shares" if exact else "NOT exactly the leaked ones"
    body = f"""## Contamination: a leaked slice of LAMBADA, its inflation, and the check that finds it

`{command_line()}` on {today()}; {machine_description()}.

Two `{args.preset}` models pretrained from scratch for {args.steps} steps of {args.batch_tokens:,} tokens
(sequence {args.seq_len}, lr {args.lr}, seed 0) on the built-in world ({args.world}) + Tiny Shakespeare;
the second corpus adds {len(leaked_ids)} of LAMBADA's first {args.docs} passages (every other one,
context and answer) {args.copies} times each. Both evaluated on those {args.docs} documents of
`lambada_openai` with `acorn eval --decontaminate` against their own training shards
({args.ngram}-grams); pretraining took {timing['clean']:.0f} s and {timing['leaked']:.0f} s.

{table}

The leak lifts accuracy on the leaked passages by **{gain:+.3f}** against {control:+.3f} on the
passages it did not contain; over all {args.docs} documents the reported accuracy moves from
{all_acc['clean']:.3f} to {all_acc['leaked']:.3f}. The check flags {len(found['leaked'])} documents in the
leaked corpus (precision {precision:.2f} and recall {recall:.2f} against the leaked ones: {verdict}) and
{len(found['clean'])} in the clean one. The leaked model's accuracy on the documents the check leaves,
{reported['leaked']:.3f}, is the number to report.
"""
    if args.no_write:
        print(body)
    else:
        write_section("contamination", body)
        log("wrote the contamination section of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
