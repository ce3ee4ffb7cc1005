"""Synthetic question-answer pairs from documents, filtered, and checked against the eval sets.

Self-instruct style data (Wang et al. 2023): questions and answers made from documents
instead of written by people. On the built-in world the documents are its knowledge
base (one biography per person the pretraining never saw) and the questions use the
world's own phrasings for each attribute. The answer comes from

  world   the world's knowledge: the value the document states (the upper bound)
  model   a chat model answering from the document, given in the prompt in the one
          retrieval format (acorn.chat.context), greedily through the one engine

Filters, in this order, each counted:
  1. empty or "I don't know." answers dropped;
  2. duplicates dropped: the same question after normalising case, punctuation and
     spaces (the first kept);
  3. unverifiable answers dropped: the answer must occur in its document as whole words
     (normalised the same way) and be longer than one character, so the pair says nothing
     the source does not.

Contamination (acorn.eval.contamination's n-grams of words, lm-eval's normalisation):
the pairs against the evaluation sets, both ways round — per task, the eval documents
that share an n-gram with the pairs (what training on them would contaminate), and the
pairs that share one with any eval document (what --decontaminate drops). World
questions are short, so the n-gram is 5 words by default, not GPT-3's 13.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from acorn.data import world_text as T
from acorn.data.world import CORE_ATTRIBUTES, IDK_ANSWER, answer_value, read_world
from acorn.errors import AcornError
from acorn.fileio import read_jsonl_lines

DEFAULT_TASKS = ("world_fact_qa", "world_unknown_qa", "world_multiple_choice")
_WORD = re.compile(r"[^\w\s]")


def norm(text: str) -> str:
    return " ".join(_WORD.sub(" ", text.lower()).split())


def read_documents(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such documents file; give a JSONL file with `text` (and `person`) per line")
    docs = []
    for lineno, row in read_jsonl_lines(path):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AcornError(f"{path}:{lineno}: a document needs a non-empty `text`")
        docs.append({**row, "id": row.get("id", f"{path.name}#{lineno}")})
    if not docs:
        raise AcornError(f"{path}: no documents (the file is empty)")
    return docs


def candidates(docs: list[dict], world_dir: str | Path, per_doc: int = 5, seed: int = 0) -> list[dict]:
    """Questions in the world's phrasings about each document's person (per_doc of its
    attributes, phrasings drawn at random), with the world's value as `truth`."""
    people = {p.name: p for p in read_world(Path(world_dir) / "world.json").people}
    rng = random.Random(seed)
    rows = []
    for d in docs:
        p = people.get(d.get("person"))
        if p is None:
            raise AcornError(f"document {d['id']}: its `person` {d.get('person')!r} is not in {world_dir}/world.json; "
                             "question templates need the world's people")
        for attr in rng.sample(list(CORE_ATTRIBUTES), min(per_doc, len(CORE_ATTRIBUTES))):
            rows.append({"question": rng.choice(T.QUESTION_TEMPLATES[attr]).format(name=p.name),
                         "truth": p.value(attr), "doc_id": d["id"], "document": d["text"], "person": p.name,
                         "attribute": attr})
    return rows


def answer_with_model(engine, rows: list[dict], max_new_tokens: int = 24) -> list[str]:
    from acorn.chat.context import context_message, parse_citations
    from acorn.infer import SamplingParams

    prompts = [engine.chat_prompt([{"role": "user", "content": context_message(
        r["question"], [{"title": r.get("person"), "text": r["document"]}])}]) for r in rows]
    completions = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    return [parse_citations(c.text.strip(), 1)[0].strip() for c in completions]


def filter_pairs(rows: list[dict]) -> tuple[list[dict], dict]:
    """The filters of the module docstring; returns the kept rows and the count each dropped."""
    counts = {"candidates": len(rows), "no_answer": 0, "duplicate": 0, "unverifiable": 0}
    seen, kept = set(), []
    for r in rows:
        a = r["answer"].strip()
        if not a or norm(a) == norm(IDK_ANSWER):
            counts["no_answer"] += 1
            continue
        q = norm(r["question"])
        if q in seen:
            counts["duplicate"] += 1
            continue
        seen.add(q)
        # Whole words of the document; one letter ("a", "I") is in almost every document and verifies nothing.
        if len(norm(a)) < 2 or f" {norm(a)} " not in f" {norm(r['document'])} ":
            counts["unverifiable"] += 1
            continue
        kept.append(r)
    counts["kept"] = len(kept)
    return kept, counts


def pair_text(r: dict) -> str:
    return f"{r['question']} {r['answer']}"


def contamination(rows: list[dict], tasks: list[str], data_dir: str | Path, n: int = 5) -> tuple[dict, set[int]]:
    """(per task: eval documents contaminated by the pairs; the indices of pairs that share
    an n-gram with some eval document)."""
    from acorn.eval.contamination import Index, query
    from acorn.eval.tasks import get_task, read_docs, resolve

    forward, backward = Index(n), Index(n)
    backward.add("pairs", [pair_text(r) for r in rows])
    eval_docs = []
    for name in tasks:
        task = get_task(name)
        texts = [query(task, d) for d in read_docs(resolve(task, task.data, Path(data_dir)))]
        forward.add(name, texts)
        eval_docs += [(f"{name} #{i}", t) for i, t in enumerate(texts)]
    forward.scan((f"pair #{i}", pair_text(r)) for i, r in enumerate(rows))
    backward.scan(eval_docs)
    report = {name: {k: v for k, v in r.to_json().items() if k in ("documents", "checked", "contaminated", "fraction")}
              | {"examples": [h["example"] for h in r.to_json()["overlaps"][:3]]}
              for name, r in forward.reports.items()}
    return report, set(backward.reports["pairs"].hits)


def synth_qa(world: str | Path, out: str | Path, *, docs: str | Path | None = None, model: str | Path | None = None,
             per_doc: int = 5, ngram: int = 5, tasks: list[str] | None = None, decontaminate: bool = False,
             seed: int = 0, limit: int | None = None, overwrite: bool = False) -> dict:
    """`acorn synth qa`: OUT/qa.jsonl (SFT conversations), OUT/summary.json; returns the summary."""
    from acorn.fileio import write_json, write_jsonl
    from acorn.synth.constitution import check_run_dir

    world = Path(world)
    docs_path = Path(docs) if docs else world / "knowledge_base.jsonl"
    tasks = list(tasks or DEFAULT_TASKS)
    record = {"world": str(world), "docs": str(docs_path), "model": str(model) if model else None,
              "per_doc": per_doc, "ngram": ngram, "tasks": tasks, "decontaminate": decontaminate, "seed": seed,
              "limit": limit}
    documents = read_documents(docs_path)[: limit or None]
    rows = candidates(documents, world, per_doc, seed)
    check_run_dir(out, record, overwrite)
    if model:
        from acorn.infer import Engine

        answers = answer_with_model(Engine.from_pretrained(model), rows)
    else:
        answers = [r["truth"] for r in rows]
    for r, a in zip(rows, answers):  # a model SFT taught to answer in sentences: the value it states
        r["answer"] = answer_value(a, r.get("person"), r.get("attribute"))
    kept, counts = filter_pairs(rows)
    report, dirty = contamination(kept, tasks, world, ngram)
    counts["contaminated"] = len(dirty)
    counts["correct"] = sum(norm(r["answer"]) == norm(r["truth"]) for r in kept)
    if decontaminate:
        kept = [r for i, r in enumerate(kept) if i not in dirty]
    out = Path(out)
    write_jsonl(out / "qa.jsonl", [{"messages": [{"role": "user", "content": r["question"]},
                                                 {"role": "assistant", "content": r["answer"]}],
                                    "kind": "synthetic_qa", "doc_id": r["doc_id"], "person": r["person"],
                                    "attribute": r["attribute"]} for r in kept])
    summary = {"run": record, "source": "model" if model else "world", "filters": counts, "written": len(kept),
               "contamination": {"ngram": ngram, "tasks": report}}
    write_json(out / "summary.json", summary)
    return summary
