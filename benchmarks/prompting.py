"""Prompting benchmark: what each strategy buys on the world, against direct answering.

On a speedrun's models (RUN/sft/model, the chat model; RUN/pretrain/model,
the base model) and the world they were trained on (RUN/world):

  strategies      accuracy of direct answering (zero-shot), few-shot, zero-
                  shot chain of thought, few-shot chain of thought,
                  self-consistency over few-shot chains and tree of thoughts,
                  on two tasks where reasoning should matter: multi-step
                  arithmetic without the calculator ("What is (12 + 7) * 3?")
                  and the world's two-step reasoning chains ("In which country
                  was X born?": the birth city, then its country), both from
                  acorn.data.world (multistep_arithmetic_items, reasoning_items;
                  the few-shot pool and the test items come from separate
                  random streams)
  self-consistency  accuracy against n, the votes over the first n of the
                  same samples (so the curve is one set of draws)
  few-shot        accuracy of direct answering against k, examples at random
                  and by embedding similarity (acorn.rag.embeddings)
  in-context      the base model on eval/icl.jsonl's raw "Input:/Label:"
                  prompts, by task and k; with --before RUN0 also a base
                  model trained without the world's in-context documents
                  (e.g. a speedrun of the commit before them), on the same items

Every token comes from the one engine; decoding is greedy except where a
strategy samples (self-consistency and tree of thoughts: temperature 0.7,
seeded).

    python benchmarks/prompting.py --run runs/speedrun [--before runs/speedrun-before]
    python benchmarks/prompting.py --run /tmp/icl-tiny --limit 8 --no-write     # a smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.speedrun import base_model  # noqa: E402


def _accuracy(answers, rows) -> float:
    from acorn.prompting.answers import normalize

    right = [a.answer is not None and a.answer == normalize(r["answer"]) for a, r in zip(answers, rows)]
    return sum(right) / max(1, len(rows))


def _pct(x: float) -> str:
    return f"{x:.1%}"


def tasks(world_dir: Path, limit: int, pool_size: int) -> dict:
    from acorn.data.world import multistep_arithmetic_items, read_world, reasoning_items
    from acorn.prompting import Example

    world = read_world(world_dir / "world.json")
    out = {}
    for name, make, numeric in (("multi-step arithmetic", multistep_arithmetic_items, True),
                                ("reasoning chains", reasoning_items, False)):
        pool = make(world, pool_size, f"{name}:pool")
        test = [r for r in make(world, limit * 2, f"{name}:test") if r["question"] not in {p["question"] for p in pool}]
        out[name] = {"test": test[:limit], "pool": [Example(r["question"], r["answer"], r["reasoning"]) for r in pool],
                     "numeric": numeric}
    return out


def strategies(engine, task: dict, *, k: int, n: int, tot_limit: int) -> tuple[list[list], dict]:
    from acorn.prompting import (chain_of_thought, choose_examples, few_shot, self_consistency, tree_of_thoughts,
                                 zero_shot)

    test, pool, numeric = task["test"], task["pool"], task["numeric"]
    qs = [r["question"] for r in test]
    shots = lambda q: choose_examples(pool, q, k, seed=0)  # noqa: E731
    rows, curves = [], {}
    runs = [
        ("direct (zero-shot)", lambda: zero_shot(engine, qs, numeric=numeric)),
        (f"few-shot, k={k}", lambda: few_shot(engine, qs, shots, numeric=numeric)),
        ("chain of thought, zero-shot (\"Let's think step by step.\")",
         lambda: chain_of_thought(engine, qs, numeric=numeric)),
        (f"chain of thought, k={k} worked examples", lambda: chain_of_thought(engine, qs, examples=shots,
                                                                               numeric=numeric)),
        (f"self-consistency, n={n} few-shot chains", lambda: self_consistency(engine, qs, n=n, examples=shots,
                                                                               numeric=numeric)),
    ]
    for label, fn in runs:
        t0 = time.perf_counter()
        answers = fn()
        dt = time.perf_counter() - t0
        rows.append([label, _pct(_accuracy(answers, test)), sum(a.skipped for a in answers), f"{dt:.1f}s"])
        log(f"  {label}: {rows[-1][1]}")
        if label.startswith("self-consistency"):
            from acorn.prompting import extract_answer, majority_vote

            for m in sorted({1, 3, 5, n} & set(range(1, n + 1))):
                voted = [majority_vote(extract_answer(s, numeric=numeric) for s in a.samples[:m])[0] for a in answers]
                right = [v is not None and v == extract_answer(r["answer"], numeric=numeric)
                         for v, r in zip(voted, test)]
                curves[m] = sum(right) / len(test)
    t0 = time.perf_counter()
    sub = test[:tot_limit]
    answers = tree_of_thoughts(engine, [r["question"] for r in sub], examples=shots, branches=3, beam=2, depth=3,
                               temperature=0.7, numeric=numeric)
    rows.append([f"tree of thoughts, branches 3, beam 2, depth 3 (first {len(sub)} items)",
                 _pct(_accuracy(answers, sub)), sum(a.skipped for a in answers), f"{time.perf_counter() - t0:.1f}s"])
    log(f"  tree of thoughts: {rows[-1][1]}")
    return rows, curves


def few_shot_curve(engine, task: dict, ks: list[int]) -> list[list]:
    from acorn.prompting import choose_examples, few_shot
    from acorn.prompting.examples import engine_embedder

    test, pool, numeric = task["test"], task["pool"], task["numeric"]
    qs = [r["question"] for r in test]
    embedder = engine_embedder(engine)
    rows = []
    for k in ks:
        row = [k]
        for by in ("random", "similar"):
            answers = few_shot(engine, qs, lambda q: choose_examples(pool, q, k, by=by, seed=0, embedder=embedder),
                               numeric=numeric)
            row.append(_pct(_accuracy(answers, test)))
        rows.append(row)
        log(f"  few-shot k={k}: {row[1:]}")
    return rows


def in_context(model_dir: Path, world_dir: Path, limit: int | None) -> dict:
    from collections import defaultdict

    from acorn.eval.world import normalize
    from acorn.fileio import read_jsonl
    from acorn.infer.engine import Engine

    engine = Engine.from_pretrained(model_dir)
    rows = list(read_jsonl(world_dir / "eval" / "icl.jsonl"))[:limit]
    room = engine.model.config.max_seq_len - 6
    prompts = [engine.encode(r["prompt"]) for r in rows]
    fits = [i for i, p in enumerate(prompts) if len(p) <= room]
    done = dict(zip(fits, engine.generate([prompts[i] for i in fits], temperature=0.0, max_new_tokens=6,
                                          stop=["\n"])))
    by = defaultdict(list)
    for i, r in enumerate(rows):
        text = done[i].text if i in done else ""
        ok = normalize(text).split(" ")[:1] == [normalize(r["answer"])]
        for key in ("all", f"task {r['task']}", f"k={r['k']}"):
            by[key].append(ok)
    chance = sum(1 / len(r["labels"]) for r in rows) / len(rows)
    return {k: sum(v) / len(v) for k, v in by.items()} | {"chance": chance, "n": len(rows),
                                                          "skipped": len(rows) - len(fits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a speedrun directory (world/, pretrain/model, sft/model)")
    ap.add_argument("--before", type=Path, help="a speedrun whose base model never saw in-context documents")
    ap.add_argument("--limit", type=int, default=100, help="test items per task (default: 100)")
    ap.add_argument("--tot-limit", type=int, default=30, help="items for tree of thoughts, the slow one (default: 30)")
    ap.add_argument("--k", type=int, default=4, help="few-shot examples for the strategy table (default: 4)")
    ap.add_argument("--n", type=int, default=9, help="self-consistency samples (default: 9)")
    ap.add_argument("--ks", default="0,1,2,4,8", help="k values of the few-shot curve (default: 0,1,2,4,8)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = ap.parse_args()

    from acorn.infer.engine import Engine

    t_start = time.perf_counter()
    world = args.run / "world"
    all_tasks = tasks(world, args.limit, pool_size=64)
    engine = Engine.from_pretrained(args.run / "sft" / "model")
    body = [f"`{command_line()}` on {machine_description()}, {today()}.", "",
            f"Models of the speedrun in `{args.run}`: the chat model (`sft/model`, prompts through its chat "
            f"template) for the strategies, the base model (`{base_model(args.run).relative_to(args.run)}`: after the "
            "in-context phase where the run had one; raw text) for in-context learning. "
            f"{args.limit} test items per task; few-shot examples from a pool of 64 items drawn apart from them. "
            "Greedy decoding; self-consistency and tree of thoughts sample at temperature 0.7, seeded. "
            "\"skipped\": prompts that do not fit the model's context.", ""]
    curves = {}
    for name, task in all_tasks.items():
        log(f"{name}: strategies")
        rows, curves[name] = strategies(engine, task, k=args.k, n=args.n, tot_limit=args.tot_limit)
        body += [f"### {name}", "", markdown_table(["strategy", "accuracy", "skipped", "time"], rows, "lrrr"), ""]
    ns = sorted({m for c in curves.values() for m in c})
    body += ["### Self-consistency: accuracy against n (votes over the first n of the same samples)", "",
             markdown_table(["task", *[f"n={m}" for m in ns]],
                            [[name, *[_pct(c.get(m, float("nan"))) for m in ns]] for name, c in curves.items()]), ""]
    ks = [int(k) for k in args.ks.split(",")]
    for name, task in all_tasks.items():
        log(f"{name}: few-shot curve")
        rows = few_shot_curve(engine, task, ks)
        body += [f"### Few-shot (direct answers): accuracy against k, {name}", "",
                 markdown_table(["k", "random examples", "most similar examples"], rows), ""]
    log("in-context learning (base model)")
    icl_rows = []
    runs = [("before: no in-context documents", args.before), ("after: with in-context documents", args.run)]
    results = {label: in_context(base_model(run), world, None) for label, run in runs if run is not None}
    keys = sorted({k for r in results.values() for k in r if k not in ("chance", "n", "skipped")},
                  key=lambda k: (k != "all", k))
    for label, r in results.items():
        icl_rows.append([label, *[_pct(r.get(k, float("nan"))) for k in keys], _pct(r["chance"]), r["skipped"]])
    n_icl = next(iter(results.values()))["n"]
    body += [f"### In-context learning: the base model on raw few-shot prompts ({n_icl} items of eval/icl.jsonl)", "",
             "Label words invented per item, so only the examples in the prompt tell the answer. \"task category\": "
             "the query is a new member of a category shown; \"task induction\": it repeats a shown input."
             + ("" if args.before else " Run with `--before RUN0` (a speedrun of a world without `icl` pretraining "
                                       "documents) for the before row."), "",
             markdown_table(["base model", *keys, "chance", "skipped"], icl_rows), "",
             f"Whole benchmark: {time.perf_counter() - t_start:.0f}s."]
    text = "\n".join(["## Prompting strategies and in-context learning", "", *body])
    print(text)
    if not args.no_write:
        write_section("prompting", text)


if __name__ == "__main__":
    main()
