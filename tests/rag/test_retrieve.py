"""Retrieval metrics, exactly, on hand-made rankings and on the tiny world."""

import numpy as np
import pytest

from acorn.fileio import read_jsonl
from acorn.rag.chunking import Chunk, chunk_documents, read_documents
from acorn.rag.index import Hit, Index
from acorn.rag.retrieve import recall_at_k, reciprocal_rank, retrieval_metrics, retrieve, rrf

EMB = {"kind": "test", "path": "emb", "fingerprint": "f", "dim": 2}


def _hits(doc_ids):
    """Ranked hits; a document's n-th chunk in the list is chunk "doc#n"."""
    return [Hit(Chunk(f"{d}#{doc_ids[:r].count(d)}", "", "", "", d, 0, 0), 1.0, r + 1) for r, d in enumerate(doc_ids)]


def test_recall_and_mrr_by_hand():
    hits = _hits(["a", "b", "a", "c"])  # two chunks of a: ranks over documents are a, b, c
    assert recall_at_k(hits, {"c"}, 2) == 0.0 and recall_at_k(hits, {"c"}, 3) == 1.0
    assert recall_at_k(hits, {"b", "z"}, 5) == 0.5
    assert reciprocal_rank(hits, {"c"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(hits, {"a#1"}) == 1.0  # a chunk id counts for its document
    assert reciprocal_rank(hits, {"z"}) == 0.0


def test_rrf_rewards_agreement():
    a, b = _hits(["x", "y", "z"]), _hits(["y", "w", "x"])
    fused = rrf([a, b], 4)
    assert [h.chunk.doc_id for h in fused] == ["y", "x", "w", "z"]  # y: 1/61 + 1/62 beats x: 1/61 + 1/63
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)


class _Oracle:
    """An embedder that knows the answer: a question's vector is its person's one-hot."""

    def __init__(self, people):
        self.people = people
        self.identity = EMB

    def encode(self, texts):
        out = np.zeros((len(texts), len(self.people)), np.float32)
        for i, t in enumerate(texts):
            for j, p in enumerate(self.people):
                if p in t:
                    out[i, j] = 1.0
        return out


def test_exact_metrics_on_the_tiny_world(tiny_world):
    docs, skipped = read_documents([tiny_world / "knowledge_base.jsonl"])
    assert not skipped and len(docs) == 9
    chunks = chunk_documents(docs, "paragraphs")
    assert [c.doc_id for c in chunks] == [d.id for d in docs]  # one biography, one chunk
    rows = list(read_jsonl(tiny_world / "eval" / "unknown_qa.jsonl"))
    people = [d.title for d in docs]
    emb = _Oracle(people)
    index = Index(chunks, emb.encode([c.text for c in chunks]), EMB)
    qs, rel = [r["question"] for r in rows], [{r["kb_id"]} for r in rows]
    m = retrieval_metrics(index, emb, qs, rel)
    # Each biography names its person alone (a mentor is a known person, never in the base):
    # the oracle ranks the right chunk first, every time.
    assert m["dense"] == {"recall@1": 1.0, "recall@5": 1.0, "mrr": 1.0, "n": len(rows)}
    # BM25 by hand: the rank of the right chunk in BM25's own list, averaged.
    hits = retrieve(index, None, qs, 10, "bm25")
    ranks = [next(i for i, h in enumerate(hs, 1) if h.chunk.doc_id == r["kb_id"]) for hs, r in zip(hits, rows)]
    assert m["bm25"]["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(rows))
    assert m["bm25"]["recall@1"] == pytest.approx(sum(r == 1 for r in ranks) / len(rows))
    assert m["bm25"]["recall@1"] >= 0.8  # the full name is rare in the base
