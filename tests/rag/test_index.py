"""The index: metrics against brute force, HNSW, round trip, add, refusals."""

import json

import numpy as np
import pytest

from acorn.errors import AcornError
from acorn.rag.chunking import Chunk
from acorn.rag.index import Index

EMB = {"kind": "test", "path": "emb", "fingerprint": "f1", "dim": 4}


def _chunks(n):
    return [Chunk(f"d{i}#0", f"text {i}", "src", f"T{i}", f"d{i}", 0, 6) for i in range(n)]


def test_metrics_match_brute_force_and_differ_on_unnormalised_vectors():
    # d0 points the query's way but is short; d1 is long and a little off.
    v = np.array([[1, 0, 0, 0], [10, 10, 0, 0], [0, 1, 0, 0]], np.float32)
    q = np.array([[1, 0.1, 0, 0]], np.float32)
    top = {m: [h.chunk.doc_id for h in Index(_chunks(3), v, EMB, m).search(q, 3)[0]] for m in ("cosine", "dot", "l2")}
    assert top["cosine"][0] == "d0" and top["dot"][0] == "d1" and top["l2"][0] == "d0"
    for m in ("cosine", "dot", "l2"):
        hits = Index(_chunks(3), v, EMB, m).search(q, 3)[0]
        if m == "cosine":
            ref = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (q[0] / np.linalg.norm(q[0]))
        elif m == "dot":
            ref = v @ q[0]
        else:
            ref = -((v - q[0]) ** 2).sum(1)
        assert [h.chunk.doc_id for h in hits] == [f"d{i}" for i in np.argsort(-ref)]
        assert np.allclose([h.score for h in hits], np.sort(ref)[::-1], atol=1e-5)


def test_hnsw_finds_the_exact_neighbours_on_a_small_set():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200, 4)).astype(np.float32)
    q = rng.normal(size=(10, 4)).astype(np.float32)
    exact = Index(_chunks(200), v, EMB, "cosine", "exact").search(q, 5)
    hnsw = Index(_chunks(200), v, EMB, "cosine", "hnsw", ef_search=200).search(q, 5)
    assert [[h.chunk.id for h in r] for r in exact] == [[h.chunk.id for h in r] for r in hnsw]


def test_round_trip_add_and_refusals(tmp_path):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5, 4)).astype(np.float32)
    idx = Index(_chunks(5), v, EMB, "l2", "hnsw", {"by": "paragraphs", "size": 1, "overlap": 0})
    q = rng.normal(size=(2, 4)).astype(np.float32)
    before = idx.search(q, 3)
    out = idx.save(tmp_path / "idx")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    back = Index.load(out, EMB)
    assert [c.to_json() for c in back.chunks] == [c.to_json() for c in idx.chunks]
    assert back.metric == "l2" and back.kind == "hnsw" and back.chunking["by"] == "paragraphs"
    assert [[(h.chunk.id, round(h.score, 5)) for h in r] for r in back.search(q, 3)] == \
        [[(h.chunk.id, round(h.score, 5)) for h in r] for r in before]
    new = [Chunk("n#0", "new", "s", "N", "n", 0, 3)]
    back.add(new, q[:1])
    assert back.search(q[:1], 1)[0][0].chunk.id == "n#0"
    back.save(out)
    assert len(Index.load(out)) == 6
    with pytest.raises(AcornError, match="already in the index"):
        back.add(new, q[:1])
    with pytest.raises(AcornError, match="built with the test embedder emb"):
        Index.load(out, dict(EMB, fingerprint="other", path="emb2"))
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(AcornError, match="version 99.*rebuild"):
        Index.load(out)
    with pytest.raises(AcornError, match="not an index directory"):
        Index.load(tmp_path)


def test_bm25_ranks_by_shared_rare_words():
    chunks = [Chunk(f"d{i}#0", t, "s", "", f"d{i}", 0, len(t)) for i, t in enumerate(
        ["Kelvo Dranith was born in Osk.", "Mira Tal works at Zen Corp.", "Kelvo Tal is a baker."])]
    idx = Index(chunks, np.zeros((3, 4), np.float32), EMB)
    (hits,) = idx.search_bm25(["Where was Kelvo Dranith born?"], 3)
    assert [h.chunk.doc_id for h in hits] == ["d0", "d2"]  # d1 shares no word: left out
    assert idx.search_bm25(["zzz"], 3) == [[]]
