"""Retrieval: dense, BM25 and hybrid search over an index, and how to score it.

dense: the query embedded by the index's embedder, nearest chunks in FAISS.
bm25: word overlap weighted by rarity (no model at all).
hybrid: reciprocal rank fusion (Cormack, Clarke & Buettcher 2009): each
chunk scores sum(1 / (60 + rank)) over the lists it appears in, so a chunk
ranked well by both beats one ranked first by one alone, and no score scales
need reconciling.

Metrics over questions whose relevant documents are known:
recall@k = share of a question's relevant documents among the top k (with one
relevant document: whether it is there), MRR = mean of 1 / the rank of the
first relevant document (0 when none is retrieved). Ranks are over documents:
two chunks of one document count once.
"""

from __future__ import annotations

from acorn.errors import AcornError
from acorn.rag.index import Hit, Index

MODES = ("dense", "bm25", "hybrid")
RRF_K = 60  # Cormack et al.'s constant: damps the head of each list


def rrf(lists: list[list[Hit]], k: int, c: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion of ranked hit lists; ties by first appearance."""
    scores: dict[str, float] = {}
    chunk = {}
    for hits in lists:
        for h in hits:
            scores[h.chunk.id] = scores.get(h.chunk.id, 0.0) + 1.0 / (c + h.rank)
            chunk.setdefault(h.chunk.id, h.chunk)
    order = sorted(scores, key=lambda i: -scores[i])  # stable: first appearance breaks ties
    return [Hit(chunk[i], scores[i], r + 1) for r, i in enumerate(order[:k])]


def retrieve(index: Index, embedder, queries: list[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
    """The k best chunks for each query. embedder: None is enough for bm25."""
    if mode not in MODES:
        raise AcornError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
    # Fusion looks deeper than k: a chunk ranked k+3 by both lists may belong in the top k.
    depth = k if mode != "hybrid" else max(k, 20)
    dense = sparse = None
    if mode in ("dense", "hybrid"):
        if embedder is None:
            raise AcornError("dense retrieval needs the index's embedder; pass --embedder or use --mode bm25")
        dense = index.search(embedder.encode(list(queries)), depth)
    if mode in ("bm25", "hybrid"):
        sparse = index.search_bm25(list(queries), depth)
    if mode == "dense":
        return dense
    if mode == "bm25":
        return sparse
    return [rrf([d, s], k) for d, s in zip(dense, sparse)]


def _doc_ranks(hits: list[Hit]) -> list[str]:
    seen: list[str] = []
    for h in hits:
        if h.chunk.doc_id not in seen:
            seen.append(h.chunk.doc_id)
    return seen


def _relevant_docs(relevant: set[str], hits: list[Hit]) -> set[str]:
    """Relevant ids may name documents or chunks: chunks map to their documents."""
    by_chunk = {h.chunk.id: h.chunk.doc_id for h in hits}
    return {by_chunk.get(r, r) for r in relevant}


def recall_at_k(hits: list[Hit], relevant: set[str], k: int) -> float:
    rel = _relevant_docs(relevant, hits)
    if not rel:
        raise AcornError("a question with no relevant documents; give each one its relevant ids")
    return len(rel & set(_doc_ranks(hits)[:k])) / len(rel)


def reciprocal_rank(hits: list[Hit], relevant: set[str]) -> float:
    rel = _relevant_docs(relevant, hits)
    for r, doc in enumerate(_doc_ranks(hits), 1):
        if doc in rel:
            return 1.0 / r
    return 0.0


def retrieval_metrics(index: Index, embedder, questions: list[str], relevant: list[set[str]],
                      modes=MODES, ks=(1, 5), depth: int = 10) -> dict:
    """{mode: {"recall@1": .., "recall@5": .., "mrr": .., "n": ..}} over the questions."""
    out = {}
    for mode in modes:
        hits = retrieve(index, embedder if mode != "bm25" else None, questions, depth, mode)
        row = {f"recall@{k}": sum(recall_at_k(h, r, k) for h, r in zip(hits, relevant)) / len(questions) for k in ks}
        row["mrr"] = sum(reciprocal_rank(h, r) for h, r in zip(hits, relevant)) / len(questions)
        row["n"] = len(questions)
        out[mode] = row
    return out
