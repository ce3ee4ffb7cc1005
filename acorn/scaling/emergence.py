"""Emergence under sharp and smooth metrics (Wei et al. 2022; Schaeffer et al. 2023).

Wei et al. reported abilities that are absent in small models and present in
large ones, appearing abruptly with scale. Schaeffer et al. ("Are Emergent
Abilities of Large Language Models a Mirage?") argued that much of the
abruptness is the metric's: exact match gives no credit until every token of
an answer is right, so a per-token ability that improves smoothly with scale
shows as a jump; the same outputs scored by a continuous metric (the answer's
log-probability, the edit distance between the output and the answer) improve
smoothly. Their practical advice: plot several metrics at several scales.

Here every model of a sweep answers the same items of the world
(acorn.data.world), written as the pretraining documents write them, since
these are base models without a chat template:
  arithmetic   "48213 + 9021 =" -> " 57234", by number of digits (the drills' format)
  facts        "Elin Holnard was born in" -> " 1940" (each fact's first biography template)
  icl          a few-shot label mapping invented per item (the in-context documents' format)
and each is scored by
  exact_match     greedy decoding produces the answer: every token the argmax (sharp)
  logprob         the answer's summed log-probability given the prompt (smooth)
  edit_distance   Levenshtein distance between the greedy output and the answer, in
                  tokens, over as many tokens as the answer has (smooth; Schaeffer et al.)
  brier           icl only: squared error of the probabilities the model gives the
                  item's labels (normalised over them) against the right one (smooth)
All through the one engine: log-likelihoods (Engine.loglikelihood) and greedy
generation (Engine.generate).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from acorn.errors import AcornError

METRICS = ("exact_match", "logprob", "edit_distance", "brier")


# ------------------------------------------------------------------ items
def world_items(world: str | Path, limit: int | None = None) -> dict[str, list[dict]]:
    """{task: [{"prompt", "answer" (with its leading space), "group", "labels"?}]} from a world directory;
    at most `limit` items per task, spread evenly over its file."""
    from acorn.data.world import FACT_ATTRIBUTES, read_world
    from acorn.data.world_text import BIO_TEMPLATES

    world = Path(world)
    if not (world / "world.json").exists() or not (world / "eval").is_dir():
        raise AcornError(f"{world}: not a world directory (world.json, eval/); pass --world, a directory written by "
                         "`acorn data world`")
    w = read_world(world / "world.json")
    facts = []
    for p in w.known():
        slots = w.slots[p.name]
        for attr in p.attributes():
            if attr not in FACT_ATTRIBUTES:
                continue
            # The first template with the fact last: the prompt is everything before its slot.
            template = next(t for t in BIO_TEMPLATES[attr] if re.search(r"\{(\w+)\}\.$", t)
                            and re.search(r"\{(\w+)\}\.$", t).group(1) != "name")
            slot = re.search(r"\{(\w+)\}\.$", template).group(1)
            facts.append({"prompt": template[:template.rindex("{")].format(**slots).rstrip(),
                          "answer": " " + str(slots[slot]), "group": attr})
    arithmetic = [{"prompt": f"{r['a']} {r['op']} {r['b']} =", "answer": " " + r["answer"], "group": r["digits"]}
                  for r in _jsonl(world / "eval" / "arithmetic.jsonl")]
    icl = [{"prompt": r["prompt"], "answer": " " + r["answer"], "group": r["k"], "labels": r["labels"]}
           for r in _jsonl(world / "eval" / "icl.jsonl")]
    tasks = {"arithmetic": arithmetic, "facts": facts, "icl": icl}
    # A limit takes every k-th item, not the first ones: the files are ordered (arithmetic by
    # digits, facts by person), and a sample should span every group.
    return {k: v[::max(1, -(-len(v) // limit))][:limit] if limit else v for k, v in tasks.items()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ metrics
def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning a into b."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def brier(label_logprobs: list[float], gold: int) -> float:
    """Sum over labels of (p - [label is gold])^2, p normalised over the labels."""
    top = max(label_logprobs)
    w = [math.exp(x - top) for x in label_logprobs]
    z = sum(w)
    return sum((wi / z - (i == gold)) ** 2 for i, wi in enumerate(w))


def _split(engine, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Context and answer ids as the answer's tokens follow the prompt's in the whole text."""
    ctx, whole = engine.encode(prompt), engine.encode(prompt + answer)
    cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else engine.tokenizer.encode(answer)
    return ctx, cont


def score(engine, rows: list[dict]) -> list[dict]:
    """Every item's metrics (exact_match, logprob, edit_distance; brier where it has labels)."""
    from acorn.infer.sampling import SamplingParams

    ctx_len = engine.model.config.max_seq_len
    reqs = []
    for row in rows:
        ctx, cont = _split(engine, row["prompt"], row["answer"])
        ctx = ctx[-(ctx_len - len(cont)):]  # the most recent context, if an item is longer than the model's
        conts = [cont]
        if "labels" in row:
            conts += [_split(engine, row["prompt"], " " + lab)[1] for lab in row["labels"]]
        reqs.append((ctx, conts))
    lls = engine.loglikelihood(reqs)
    # Greedy outputs as long as the answers, for the edit distance (an exact match's is 0).
    todo = [i for i, ll in enumerate(lls) if not ll[0][1]]
    gens = engine.generate([reqs[i][0] for i in todo],
                           [SamplingParams(temperature=0.0, max_new_tokens=len(reqs[i][1][0]), ignore_eos=True)
                            for i in todo]) if todo else []
    greedy = {i: g.token_ids[:len(reqs[i][1][0])] for i, g in zip(todo, gens)}
    scored = []
    for i, (row, (ctx, conts), ll) in enumerate(zip(rows, reqs, lls)):
        s = {"exact_match": float(ll[0][1]), "logprob": ll[0][0],
             "edit_distance": float(edit_distance(greedy[i], conts[0])) if i in greedy else 0.0}
        if "labels" in row:
            s["brier"] = brier([x for x, _ in ll[1:]], row["labels"].index(row["answer"].strip()))
        scored.append(s)
    return scored


def evaluate(engine, items: dict[str, list[dict]]) -> dict:
    """Every task's means: {task: {"overall": {metric: mean}, "n", "groups": {group: {metric: mean}}}}."""
    out = {}
    for task, rows in items.items():
        scored = score(engine, rows)
        groups = sorted({row["group"] for row in rows}, key=lambda g: (str(type(g)), g))
        out[task] = {"overall": _mean(scored), "n": len(scored),
                     "groups": {str(g): _mean([s for row, s in zip(rows, scored) if row["group"] == g]) for g in groups}}
    return out


def _mean(rows: list[dict]) -> dict:
    keys = [k for k in METRICS if rows and k in rows[0]]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}
