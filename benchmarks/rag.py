"""Retrieval-augmented generation on the world's held-out people (issue 16), section `rag`.

The knowledge base (RUN/world/knowledge_base.jsonl) describes people who are
never in pretraining; the questions about its unknown_eval people
(eval/unknown_qa.jsonl, never in pretraining or any SFT) measure:

  retrieval   recall@1/@5 and MRR, dense / BM25 / hybrid (RRF), for the pretrained
              model's mean-pooled states and for an embedder trained from it
              (`acorn embed train`, InfoNCE); and cosine / dot / L2 on the trained
              embedder's vectors as they are (unit length: the three agree) and
              rescaled by random lengths (0.25x-4x, as unnormalised pooled states
              vary): where the metric matters.
  answers     exact match of the knowledge base's value without retrieval (the model
              should say "I don't know.") and with retrieval (hybrid, k=3), for the
              speedrun's chat model and for it fine-tuned further on the world's RAG
              conversations (acorn.data.world.rag_sft_rows, with the original SFT rows
              so nothing is forgotten). Goal: >= 80% with retrieval.
  faithfulness  share of (non-"I don't know") answers stated by the passage they cite;
              made-up answers when the index lacks the person (index without the
              unknown_eval people: every answer but "I don't know." is made up).
  stale       change each held-out person's birth city in the knowledge base, re-index,
              ask again: share of answers that follow the new value (no retraining).
  latency     per question, one at a time: retrieve, generate; index build time of the
              whole knowledge base (median of 3).

    python benchmarks/rag.py --run runs/speedrun                 # needs RUN/world, RUN/pretrain/model, RUN/sft/model
    python benchmarks/rag.py --run runs/speedrun --quick --no-write   # smoke: few steps, few questions

--figures answers-chain (section `rag-chain`): answering from context, in two stages
from the speedrun's *base* model: (1) continued pretraining on reading documents
(acorn.data.world.reading_doc: passages about invented people, then questions
answered from them with a citation), mixed with as many of the world's own
pretraining documents (replay); (2) SFT on the world's sft.jsonl plus one-passage
RAG conversations (rag_sft_rows(passages=1)), in two variants: as --rag-sft writes
them (one "I don't know." turn per fact) and with three more "I don't know." turns
per fact whose passage is about a namesake (idk_per_fact=4), the fix tried for
made-up answers. Answers are measured with BM25 retrieval (recall@1 100% here) at
k=1 and k=3, and with an index that lacks the held-out people (made-up answers).

--figures rerank (section `rag-rerank`): recall@1/@5 and MRR of dense (the
pretrained model's mean-pooled states), BM25 and hybrid retrieval, then of their
top --rerank N reordered by the chat model (acorn.rag.rerank, both scores).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    CACHE, command_line, load_note, log, machine_description, markdown_table, today, write_section,
)

from acorn.fileio import read_jsonl, write_jsonl  # noqa: E402


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def train_embedder(run: Path, work: Path, steps: int) -> Path:
    from acorn.train.embed import EmbedConfig, train_embedder as train

    cfg = EmbedConfig(data=str(run / "world"), out=str(work / "embed"), init_from=str(run / "pretrain" / "model"))
    cfg.train.max_steps, cfg.eval.every = steps, max(1, steps // 4)
    return train(cfg) / "model"


def rag_sft(run: Path, work: Path, steps: int) -> Path:
    """The chat model fine-tuned further on sft.jsonl with the RAG conversations added."""
    import yaml

    from acorn.config import load
    from acorn.data.world import generate_world
    from acorn.train.sft import SFTConfig, sft

    manifest = json.loads((run / "world" / "manifest.json").read_text())
    world = work / "world-rag"
    generate_world(world, seed=manifest["seed"], size=manifest["size"], quiet=True, rag_sft=True,
                   tokenizer=run / "tokenizer" if (run / "tokenizer").is_dir() else None,
                   fact_answers=manifest.get("fact_answers", "value"), tool_sft=manifest.get("tool_sft", False))
    base = yaml.safe_load((run / "sft" / "config.yaml").read_text())
    seq_len = str(base["train"]["seq_len"])
    cfg = load(SFTConfig, None, ["--init_from", str(run / "sft" / "model"), "--data", str(world / "sft.jsonl"),
                                 "--out", str(work / "sft-rag"), "--train.max_steps", str(steps),
                                 "--train.seq_len", seq_len, "--optim.lr", "3e-4"])
    return sft(cfg) / "model"


def _sft(init: Path, data: Path, out: Path, steps: int, lr: float, batch_tokens: int, seq_len: int = 512) -> Path:
    from acorn.config import load
    from acorn.train.sft import SFTConfig, sft

    cfg = load(SFTConfig, None, ["--init_from", str(init), "--data", str(data), "--out", str(out),
                                 "--train.max_steps", str(steps), "--train.seq_len", str(seq_len),
                                 "--train.batch_tokens", str(batch_tokens), "--optim.lr", str(lr),
                                 "--eval.every", str(max(1, steps // 2)), "--eval.checkpoint_every", "0"])
    return sft(cfg) / "model"


def copy_rate(model, run: Path, rows: list[dict]) -> float:
    """Share of held-out questions a model answers right after one passage in the reading
    documents' plain-text layout ("Passages:\n[1] ...\n\nQuestion: q\nAnswer:"): whether a
    base model copies a value from its context at all."""
    from acorn.infer.engine import Engine

    kb = {r["id"]: r for r in read_jsonl(run / "world" / "knowledge_base.jsonl")}
    engine = Engine.from_pretrained(model)
    prompts = [engine.encode(f"Passages:\n[1] {kb[r['kb_id']]['title']}: {kb[r['kb_id']]['text']}\n\n"
                             f"Question: {r['question']}\nAnswer:") for r in rows]
    out = engine.generate(prompts, temperature=0.0, max_new_tokens=16)
    from acorn.chat.context import parse_citations

    return sum(parse_citations(c.text.split("\n")[0])[0].strip().rstrip(".").lower() == r["kb_answer"].lower()
               for r, c in zip(rows, out)) / len(rows)


def reading_cpt(run: Path, work: Path, n_docs: int, steps: int, lr: float, batch_tokens: int,
                questions: int = 4, passages=(1, 3), p_absent: float = 0.2) -> tuple[Path, dict]:
    """The base model's continued pretraining on reading documents plus as many of the
    world's own pretraining documents (replay, so nothing else is forgotten)."""
    import yaml

    from acorn.config import load
    from acorn.data.prepare import prepare
    from acorn.data.world import read_world, reading_documents
    from acorn.train.pretrain import PretrainConfig, pretrain

    world = read_world(run / "world" / "world.json")
    docs = reading_documents(world, n_docs, questions=questions, passages=passages, p_absent=p_absent)
    replay = list(read_jsonl(run / "world" / "pretrain.jsonl"))
    random.Random(0).shuffle(replay)
    write_jsonl(work / "reading.jsonl", docs + replay[:n_docs])
    prepare([work / "reading.jsonl"], run / "tokenizer", work / "data-reading", quiet=True, overwrite=True)
    base = yaml.safe_load((run / "pretrain" / "config.yaml").read_text())
    cfg = load(PretrainConfig, None, [
        "--init_from", str(run / "pretrain" / "model"), "--data", str(work / "data-reading"),
        "--out", str(work / "cpt"), "--train.max_steps", str(steps), "--train.seq_len", str(base["train"]["seq_len"]),
        "--train.batch_tokens", str(batch_tokens), "--train.micro_batch", "16",
        "--optim.lr", str(lr), "--optim.warmup_steps", str(max(1, steps // 20)),
        "--eval.every", str(max(1, steps // 2)), "--eval.checkpoint_every", "0"])
    if (work / "cpt" / "model").is_dir():  # --keep-work: trained already
        return work / "cpt" / "model", {"docs": len(docs), "replay": min(n_docs, len(replay))}
    out = pretrain(cfg)
    return out / "model", {"docs": len(docs), "replay": min(n_docs, len(replay))}


def answers_chain(args, run: Path, work: Path, rows: list[dict]) -> str:
    from acorn.data.world import rag_sft_rows, read_world, reading_people
    from acorn.infer.engine import Engine
    from acorn.rag.pipeline import RAG, answer_metrics, build_index

    kb_path = run / "world" / "knowledge_base.jsonl"
    kb = list(read_jsonl(kb_path))
    held = {r["kb_id"] for r in read_jsonl(run / "world" / "eval" / "unknown_qa.jsonl")}
    write_jsonl(work / "kb-without.jsonl", [r for r in kb if r["id"] not in held])
    embedder = run / "pretrain" / "model"  # the index needs one; retrieval here is BM25
    build_index([kb_path], work / "index", str(embedder), chunk_by="paragraphs")
    build_index([work / "kb-without.jsonl"], work / "index-without", str(embedder), chunk_by="paragraphs")
    questions, golds = [r["question"] for r in rows], [r["kb_answer"] for r in rows]

    t0 = time.perf_counter()
    reused = (work / "cpt" / "model").is_dir()  # --keep-work: trained by an earlier run
    log(f"continued pretraining on {args.reading_docs} reading documents, {args.cpt_steps} steps")
    cpt, mix = reading_cpt(run, work, args.reading_docs, args.cpt_steps, args.cpt_lr, args.cpt_batch_tokens,
                           args.reading_questions, (1, args.reading_passages), args.reading_absent)
    cpt_s = time.perf_counter() - t0
    took = "reused from an earlier run, --keep-work" if reused else f"{cpt_s / 60:.1f} min"
    copies = {"the speedrun's base model": copy_rate(run / "pretrain" / "model", run, rows),
              "after the reading stage": copy_rate(cpt, run, rows)}
    log(f"copy rate from one passage: {copies}")
    if args.copy_only:
        return "copy rate from one passage: " + json.dumps(copies)
    world = read_world(run / "world" / "world.json")
    base_sft = list(read_jsonl(run / "world" / "sft.jsonl"))
    # (label, starting model, "I don't know." turns per fact); the last is the anchor: the same SFT
    # without the reading stage (from the speedrun's base model as it is).
    # A fourth: the RAG rows alone (no sft.jsonl, whose refusals teach "I don't know." for every person of
    # the knowledge base's surname pool without passages), over unknown_sft and 300 invented people.
    # A fifth: the fourth's rows twice over, once with one passage and once with three (the person's among
    # two distractors, as retrieval at k=3 returns them), so answering means picking the passage.
    variants = [("reading stage + one-passage RAG rows (1 I-don't-know per fact)", cpt, 1, (1,)),
                ("reading stage + one-passage RAG rows, + 3 namesake I-don't-know per fact", cpt, 4, (1,)),
                ("no reading stage, one-passage RAG rows (1 per fact)", run / "pretrain" / "model", 1, (1,)),
                ("reading stage + one-passage RAG rows only (no sft.jsonl), + 300 invented people", cpt, 0, (1,)),
                ("reading stage + one- and three-passage RAG rows only (no sft.jsonl), + 300 invented people", cpt, 0,
                 (1, 3))]
    chosen = [int(i) for i in args.chain_variants.split(",")] if args.chain_variants else range(len(variants) - 1)

    def ask(rag, qs):
        return [a for s in range(0, len(qs), 32) for a in rag.ask_many(qs[s:s + 32])]

    table, results, sft_s, counts = [], {}, {}, {}
    for i, (label, init, idk, shown) in enumerate(variants):
        if i not in chosen:
            continue
        extra = []
        for n in shown:
            extra += rag_sft_rows(world, passages=n, idk_per_fact=max(1, idk))
            if idk == 0:
                extra += rag_sft_rows(world, passages=n, people=reading_people(world, 300, "sft_people"),
                                      component="rag_sft_invented")
        counts[(idk, shown)] = (sum(r["kind"] == "rag" for r in extra), sum(r["kind"] == "rag_idk" for r in extra))
        data = work / (f"sft-chain-{idk}.jsonl" if shown == (1,) else f"sft-chain-{idk}-p{''.join(map(str, shown))}.jsonl")
        if not data.exists():
            mixed = (base_sft if idk else []) + extra
            random.Random(idk).shuffle(mixed)
            write_jsonl(data, mixed)
        log(f"SFT {label}: {args.chain_sft_steps} steps")
        t0 = time.perf_counter()
        if (work / f"sft-chain-{i}" / "model").is_dir():  # --keep-work: trained already
            model = work / f"sft-chain-{i}" / "model"
        else:
            model = _sft(init, data, work / f"sft-chain-{i}", args.chain_sft_steps, args.chain_sft_lr,
                         args.chain_sft_batch_tokens)
        sft_s[label] = time.perf_counter() - t0
        engine = Engine.from_pretrained(model)
        r = {}
        for k in (1, 3):
            answers = ask(RAG(work / "index", model=engine, mode="bm25", k=k), questions)
            r[f"k{k}"] = answer_metrics(answers, golds)
            absent = ask(RAG(work / "index-without", model=engine, mode="bm25", k=k), questions)
            r[f"absent_k{k}"] = answer_metrics(absent, golds)
            r[f"examples_k{k}"] = [(a.question, a.text, g) for a, g in zip(answers[:3], golds)]
            r[f"absent_examples_k{k}"] = [(a.question, a.text) for a in absent[:3]]
        results[label] = r
        log(f"{label}: {json.dumps(r, default=str)}")
        table.append([label, _pct(r["k1"]["exact_match"]), _pct(r["k1"]["idk_rate"]), _pct(r["k1"]["faithfulness"]),
                      _pct(1 - r["absent_k1"]["idk_rate"]), _pct(r["k3"]["exact_match"]), _pct(r["k3"]["idk_rate"]),
                      _pct(1 - r["absent_k3"]["idk_rate"])])
    (work / "chain-results.json").write_text(json.dumps(results, indent=2, default=str))
    return "\n\n".join([
        "## RAG answers from context: a reading stage, then SFT",
        f"`{command_line()}` on {machine_description(('faiss-cpu', 'bm25s'))}, {today()}; {load_note()}. "
        f"{len(questions)} questions about the knowledge base's unknown_eval "
        "people; BM25 retrieval (recall@1 100% on these questions, see `rag`), greedy answers. Single runs.",
        f"Reading stage: the speedrun's base model, {args.cpt_steps} steps of {args.cpt_batch_tokens:,} tokens at "
        f"lr {args.cpt_lr:g} on {mix['docs']:,} reading documents (`acorn data world --reading-docs`: passages "
        f"about invented people, then questions answered from them with a citation) and {mix['replay']:,} of the "
        f"world's pretraining documents ({took}; 1-{args.reading_passages} passages and "
        f"{args.reading_questions} questions a document, {_pct(args.reading_absent)} of them about someone absent). "
        "The base model's answers after one passage in the reading documents' plain-text layout (exact match, "
        "the first " + f"{len(rows)} questions): " + ", ".join(f"{k} {_pct(v)}" for k, v in copies.items()) + ". "
        f"SFT: {args.chain_sft_steps} steps of "
        f"{args.chain_sft_batch_tokens:,} tokens at lr {args.chain_sft_lr:g} on sft.jsonl plus one-passage RAG "
        "conversations (answered / \"I don't know.\" rows: " + ", ".join(f"{a:,} / {b:,} with {max(1, k)} per fact"
                                                                      + (" and invented people, without sft.jsonl"
                                                                         if k == 0 else "")
                                                                      + (f", {' and '.join(map(str, n))} passages"
                                                                         if n != (1,) else "")
                                                                      for (k, n), (a, b) in counts.items()) + ").",
        markdown_table(["model", "EM k=1", "I don't know k=1", "faithful k=1", "made up when absent k=1", "EM k=3",
                        "I don't know k=3", "made up when absent k=3"], table),
        "Goal (issue 16): >= 80% exact match with retrieval. Made up = share of answers other than \"I don't know.\" "
        "when the index lacks the person (retrieval then brings other people, often namesakes).",
    ])


def rerank_figures(args, run: Path, work: Path, rows: list[dict]) -> str:
    from acorn.infer.engine import Engine
    from acorn.rag.embeddings import AcornEmbedder
    from acorn.rag.index import Index
    from acorn.rag.pipeline import build_index
    from acorn.rag.rerank import rerank
    from acorn.rag.retrieve import reciprocal_rank, recall_at_k, retrieve

    kb_path = run / "world" / "knowledge_base.jsonl"
    emb = AcornEmbedder(run / "pretrain" / "model")
    build_index([kb_path], work / "index", emb, chunk_by="paragraphs")
    index = Index.load(work / "index", emb.identity)
    questions, relevant = [r["question"] for r in rows], [{r["kb_id"]} for r in rows]
    model = Path(args.rerank_model) if args.rerank_model else run / "sft" / "model"
    engine = Engine.from_pretrained(model)

    def metrics(hits):
        n = len(hits)
        return [_pct(sum(recall_at_k(h, r, 1) for h, r in zip(hits, relevant)) / n),
                _pct(sum(recall_at_k(h, r, 5) for h, r in zip(hits, relevant)) / n),
                f"{sum(reciprocal_rank(h, r) for h, r in zip(hits, relevant)) / n:.3f}"]

    table = []
    for mode in ("dense", "bm25", "hybrid"):
        hits = retrieve(index, emb if mode != "bm25" else None, questions, args.rerank, mode)
        table.append([mode, "-", *metrics(hits), "-"])
        for method in ("yes", "likelihood"):
            t0 = time.perf_counter()
            reranked = [rerank(engine, q, h, method=method) for q, h in zip(questions, hits)]
            ms = 1e3 * (time.perf_counter() - t0) / len(questions)
            table.append([mode, method, *metrics(reranked), f"{ms:.0f}"])
            log(f"{mode} {method}: {table[-1]}")
    return "\n\n".join([
        "## RAG reranking by the chat model",
        f"`{command_line()}` on {machine_description(('faiss-cpu', 'bm25s'))}, {today()}; {load_note()}. "
        f"{len(questions)} questions about the knowledge base's unknown_eval people; the top {args.rerank} "
        f"of each retriever (dense: the pretrained model's mean-pooled states, no embedder training) reordered by "
        f"{model.name if model.name != 'model' else model.parent.name}/model's score (acorn.rag.rerank): `yes` = "
        "log-odds of \"yes\" to \"does the passage answer the question?\", `likelihood` = log P(question | passage).",
        markdown_table(["retrieval", "rerank", "recall@1", "recall@5", "MRR", "rerank ms / question"], table),
        f"A random order of the {args.rerank} candidates would give recall@1 = recall@{args.rerank} / "
        f"{args.rerank}. Reranking helps only where the retriever is near chance (dense from untrained states) and "
        "lowers recall wherever the retriever is good: this chat model (1M parameters) cannot judge relevance, "
        "so a retriever that names the person (BM25 matches the unique name) beats it.",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished speedrun directory")
    ap.add_argument("--work", default=str(CACHE / "rag"), help="where trained models and indexes go")
    ap.add_argument("--embed-steps", type=int, default=300)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--limit", type=int, help="only the first N held-out questions")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 training steps, 20 questions")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/BENCHMARKS.md alone")
    ap.add_argument("--figures", default="main", choices=["main", "answers-chain", "rerank"],
                    help="main: section rag (default); answers-chain: section rag-chain; rerank: section rag-rerank")
    ap.add_argument("--reading-docs", type=int, default=4000, help="answers-chain: reading documents")
    ap.add_argument("--cpt-steps", type=int, default=200, help="answers-chain: continued pretraining steps")
    ap.add_argument("--reading-questions", type=int, default=4, help="answers-chain: questions per reading document")
    ap.add_argument("--reading-passages", type=int, default=3, help="answers-chain: most passages per document")
    ap.add_argument("--reading-absent", type=float, default=0.2,
                    help="answers-chain: share of reading questions about someone absent (answered I don't know)")
    ap.add_argument("--copy-only", action="store_true", help="answers-chain: stop after the reading stage's copy rate")
    ap.add_argument("--keep-work", action="store_true", help="reuse the models already trained in the work directory")
    ap.add_argument("--cpt-lr", type=float, default=1e-3)
    ap.add_argument("--cpt-batch-tokens", type=int, default=4096)
    ap.add_argument("--chain-sft-steps", type=int, default=150)
    ap.add_argument("--chain-sft-lr", type=float, default=1e-3)
    ap.add_argument("--chain-sft-batch-tokens", type=int, default=4096)
    ap.add_argument("--chain-variants", help="answers-chain: the SFT variants to run, by number (0-4; default 0-3: "
                                             "4 adds three-passage rows to 3's)")
    ap.add_argument("--rerank", type=int, default=10, help="rerank: candidates reordered per question")
    ap.add_argument("--rerank-model", help="rerank: the chat model that scores (default: RUN/sft/model)")
    args = ap.parse_args()
    if args.quick:
        args.embed_steps, args.sft_steps, args.limit = 4, 4, args.limit or 20
        args.cpt_steps, args.chain_sft_steps, args.reading_docs, args.rerank = 4, 4, 100, 3
    torch.set_flush_denormal(True)
    run, work = Path(args.run), Path(args.work)
    if args.figures != "main":
        work = work.parent / f"{work.name}-{args.figures}"
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.figures != "main":
        rows = list(read_jsonl(run / "world" / "eval" / "unknown_qa.jsonl"))[: args.limit or None]
        fn, section = {"answers-chain": (answers_chain, "rag-chain"), "rerank": (rerank_figures, "rag-rerank")}[
            args.figures]
        body = fn(args, run, work, rows)
        print(body)
        if not args.no_write:
            write_section(section, body)
        return
    kb_path = run / "world" / "knowledge_base.jsonl"
    kb = list(read_jsonl(kb_path))
    rows = list(read_jsonl(run / "world" / "eval" / "unknown_qa.jsonl"))[: args.limit or None]
    questions, relevant = [r["question"] for r in rows], [{r["kb_id"]} for r in rows]

    from acorn.infer.engine import Engine
    from acorn.rag.embeddings import AcornEmbedder
    from acorn.rag.index import Index
    from acorn.rag.pipeline import RAG, answer_metrics, build_index
    from acorn.rag.retrieve import retrieval_metrics

    # ---- embedders and retrieval
    log("training the embedder")
    t0 = time.perf_counter()
    trained_dir = train_embedder(run, work, args.embed_steps)
    embed_train_s = time.perf_counter() - t0
    embedders = {"pretrained, mean-pooled": AcornEmbedder(run / "pretrain" / "model"),
                 f"trained ({args.embed_steps} steps InfoNCE)": AcornEmbedder(trained_dir)}
    retrieval, build_s = {}, {}
    for name, emb in embedders.items():
        times = []
        for i in range(3):
            t0 = time.perf_counter()
            build_index([kb_path], work / f"index-{i}", emb, chunk_by="paragraphs")
            times.append(time.perf_counter() - t0)
        build_s[name] = statistics.median(times)
        index = Index.load(work / "index-0", emb.identity)
        retrieval[name] = retrieval_metrics(index, emb, questions, relevant)
        log(f"{name}: {retrieval[name]}")
    trained = embedders[list(embedders)[1]]
    build_index([kb_path], work / "index", trained, chunk_by="paragraphs")
    base_index = Index.load(work / "index", trained.identity)

    # ---- the metric on unnormalised vectors
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(np.log(0.25), np.log(4.0), size=(len(base_index), 1))).astype(np.float32)
    metric_rows = []
    for metric in ("cosine", "dot", "l2"):
        for label, vecs in (("unit length", base_index.vectors), ("random lengths", base_index.vectors * scales)):
            idx = Index(base_index.chunks, vecs, trained.identity, metric)
            m = retrieval_metrics(idx, trained, questions, relevant, modes=("dense",))["dense"]
            metric_rows.append([metric, label, _pct(m["recall@1"]), _pct(m["recall@5"]), f"{m['mrr']:.3f}"])

    # ---- answers
    from acorn.eval.harness import evaluate

    log("fine-tuning the chat model on the RAG conversations")
    t0 = time.perf_counter()
    rag_model = rag_sft(run, work, args.sft_steps)
    sft_s = time.perf_counter() - t0
    golds = [r["kb_answer"] for r in rows]
    # An index without the held-out people: whatever is asked about them is not there.
    held = {r["kb_id"] for r in read_jsonl(run / "world" / "eval" / "unknown_qa.jsonl")}
    write_jsonl(work / "kb-without.jsonl", [r for r in kb if r["id"] not in held])
    build_index([work / "kb-without.jsonl"], work / "index-without", trained, chunk_by="paragraphs")
    # Stale knowledge: every held-out person born somewhere else now.
    world = json.loads((run / "world" / "world.json").read_text())
    cities = [c["name"] for c in world["cities"]]
    moved = {}
    changed = []
    for r in kb:
        if r["id"] in held:
            person = next(p for p in world["people"] if p["name"] == r["person"])
            new = random.Random(r["id"]).choice([c for c in cities if c != person["birth_city"]])
            moved[r["person"]] = new
            r = dict(r, text=r["text"].replace(person["birth_city"], new))
        changed.append(r)
    write_jsonl(work / "kb-changed.jsonl", changed)
    t0 = time.perf_counter()
    build_index([work / "kb-changed.jsonl"], work / "index-changed", trained, chunk_by="paragraphs")
    reindex_s = time.perf_counter() - t0
    city_rows = [r for r in rows if r["attribute"] == "birth_city"]

    answer_rows, results = [], {}
    for label, model in (("speedrun chat model", run / "sft" / "model"), ("+ RAG SFT", rag_model)):
        engine = Engine.from_pretrained(model)
        without = evaluate(engine, ["world_unknown_qa"], data_dir=run / "world", limit=args.limit,
                           progress=False)["results"]["world_unknown_qa"]
        rag = RAG(base_index, model=engine, embedder=trained, k=3)
        with_ = answer_metrics([a for s in range(0, len(questions), 32) for a in rag.ask_many(questions[s:s + 32])],
                               golds)
        absent = RAG(work / "index-without", model=engine, embedder=trained, k=3)
        lacking = answer_metrics([a for s in range(0, len(questions), 32)
                                  for a in absent.ask_many(questions[s:s + 32])], golds)
        stale = RAG(work / "index-changed", model=engine, embedder=trained, k=3)
        follow = stale.ask_many([r["question"] for r in city_rows]) if city_rows else []
        follows = sum(a.answer.strip().rstrip(".").lower() == moved[r["person"]].lower()
                      for a, r in zip(follow, city_rows)) / max(1, len(city_rows))
        latency_r, latency_g = [], []
        for q in questions[:20]:
            a = rag.ask(q)
            latency_r.append(a.retrieve_s)
            latency_g.append(a.generate_s)
        results[label] = {"without": without, "with": with_, "lacking": lacking, "stale_follow": follows,
                          "retrieve_ms": 1e3 * statistics.median(latency_r),
                          "generate_ms": 1e3 * statistics.median(latency_g)}
        answer_rows.append([label, _pct(without["kb_answer_rate"]), _pct(without["idk_rate"]), _pct(with_["exact_match"]),
                            _pct(with_["cited_rate"]), _pct(with_["faithfulness"]), _pct(1 - lacking["idk_rate"]),
                            _pct(follows), f"{results[label]['retrieve_ms']:.0f} + {results[label]['generate_ms']:.0f}"])
        log(f"{label}: {results[label]}")
    (work / "results.json").write_text(json.dumps({"retrieval": retrieval, "answers": results}, indent=2, default=str))

    rtable = []
    for name, by_mode in retrieval.items():
        for mode, m in by_mode.items():
            rtable.append([name if mode != "bm25" else "(no model)", mode, _pct(m["recall@1"]), _pct(m["recall@5"]),
                           f"{m['mrr']:.3f}"])
    rtable = [r for i, r in enumerate(rtable) if r[1] != "bm25" or i == 1]  # BM25 needs no embedder: once
    body = "\n\n".join([
        "## Retrieval-augmented generation on the world's held-out people",
        f"`{command_line()}` on {machine_description(('faiss-cpu', 'bm25s'))}, {today()}. "
        f"{len(questions)} questions about the knowledge base's unknown_eval people (never in pretraining or SFT) "
        f"against its {len(kb)} biographies (one chunk each). Single runs (model quality, not timing, except latency "
        "and build time).",
        "Retrieval (dense: FAISS exact, cosine; hybrid: reciprocal rank fusion of dense and BM25):",
        markdown_table(["embedder", "mode", "recall@1", "recall@5", "MRR"], rtable),
        f"Embedder training: {embed_train_s:.0f}s. Index build of the whole knowledge base (embed + FAISS + write), "
        "median of 3: " + ", ".join(f"{k} {v:.2f}s" for k, v in build_s.items()) + ".",
        "The metric (trained embedder, dense): on unit vectors cosine, dot and L2 rank alike; on vectors of random "
        "lengths the dot product favours long vectors and L2 short ones, cosine is unchanged:",
        markdown_table(["metric", "vectors", "recall@1", "recall@5", "MRR"], metric_rows),
        f"Answers (greedy, k=3 hybrid; RAG SFT: {args.sft_steps} steps on sft.jsonl with the world's RAG "
        f"conversations, {sft_s:.0f}s). Without retrieval the right answer is \"I don't know.\"; made up = answers "
        "other than \"I don't know.\" when the index lacks the person; stale = answers following a birth city changed "
        f"in the knowledge base and re-indexed ({reindex_s:.1f}s), no retraining; latency per question, one at a time:",
        markdown_table(["chat model", "EM without retrieval", "I don't know without", "EM with retrieval", "cited",
                        "faithful (cited passage states it)", "made up when absent", "follows the changed fact",
                        "latency ms (retrieve + generate)"], answer_rows),
        "Goal (issue 16): >= 80% exact match with retrieval.",
    ])
    print(body)
    if not args.no_write:
        write_section("rag", body)


if __name__ == "__main__":
    main()
