"""Reranking by the chat model: scores are the model's own log-probabilities (checked
against transformers' forward pass of the same checkpoint), the order follows them,
and the pipeline and CLI use it."""

import math

import pytest
import torch

from acorn.cli import main
from acorn.errors import AcornError


@pytest.fixture(scope="module")
def setup(tmp_path_factory, checkpoint):
    from acorn.infer.engine import Engine
    from acorn.rag.pipeline import RAG, build_index

    path, hf = checkpoint
    d = tmp_path_factory.mktemp("rerank")
    for i, text in enumerate(["The fox is quick.", "A tall oak.", "Cats sit on mats.", "The dog is lazy."]):
        (d / f"{i}.txt").write_text(text)  # a document each: retrieval metrics rank documents
    build_index([d / f"{i}.txt" for i in range(4)], d / "idx", str(path), chunk_by="paragraphs")
    engine = Engine.from_pretrained(path)
    return d, engine, hf, RAG(d / "idx", model=engine, mode="bm25", k=2)


def _logprob(hf, ctx, cont) -> float:
    """log P(cont | ctx) from transformers' forward pass: the oracle."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = hf(ids).logits[0].float().log_softmax(-1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_scores_are_the_models_log_probabilities(setup):
    from acorn.rag.rerank import JUDGE, NO, YES, relevance_scores

    _, engine, hf, rag = setup
    hits = rag.retrieve(["the fox"], k=4)[0] + rag.retrieve(["oak"], k=4)[0]
    q = "Is the fox quick?"
    got = relevance_scores(engine, q, hits, "likelihood")
    for h, g in zip(hits, got):
        ctx = engine.encode(f"Passages:\n[1] {h.chunk.title}: {h.chunk.text}\n\nQuestion:")
        assert g == pytest.approx(_logprob(hf, ctx, engine.tokenizer.encode(" " + q)), abs=1e-3)
    got = relevance_scores(engine, q, hits, "yes")
    for h, g in zip(hits, got):
        ctx = engine.chat_prompt([{"role": "user", "content": JUDGE.format(
            passage=f"{h.chunk.title}: {h.chunk.text}", question=q)}])
        p = [math.exp(_logprob(hf, ctx, engine.tokenizer.encode(w))) for w in YES + NO]
        assert g == pytest.approx(math.log(sum(p[:2])) - math.log(sum(p[2:])), abs=1e-3)


def test_rerank_orders_by_score_and_keeps_k(setup, monkeypatch):
    from acorn.rag import rerank as rr

    _, engine, _, rag = setup
    hits = rag.retrieve(["fox oak cats dog"], k=4)[0]
    assert len(hits) == 4
    fake = [0.5, 2.0, 0.5, -1.0]
    monkeypatch.setattr(rr, "relevance_scores", lambda *a, **k: fake)
    out = rr.rerank(engine, "q", hits, k=3)
    assert [h.chunk.id for h in out] == [hits[1].chunk.id, hits[0].chunk.id, hits[2].chunk.id]  # ties: retriever's order
    assert [h.rank for h in out] == [1, 2, 3] and [h.score for h in out] == [2.0, 0.5, 0.5]


def test_pipeline_reranks_before_keeping_k(setup):
    from acorn.rag.pipeline import RAG
    from acorn.rag.rerank import relevance_scores

    d, engine, _, _ = setup
    q = "fox oak cats dog"
    rag = RAG(d / "idx", model=engine, mode="bm25", k=2, rerank=4, rerank_method="likelihood", max_new_tokens=1)
    pool = RAG(d / "idx", model=engine, mode="bm25", k=4).retrieve([q])[0]
    scores = relevance_scores(engine, q, pool, "likelihood")
    best = [pool[i].chunk.id for i in sorted(range(4), key=lambda i: -scores[i])[:2]]
    assert [h.chunk.id for h in rag.retrieve([q])[0]] == best
    rows = [{"question": q, "relevant": [pool[0].chunk.id]}]
    result = rag.evaluate(rows)["retrieval"]
    assert set(result) == {"bm25", "bm25+rerank 4 (likelihood)"}  # bm25 mode loads no embedder
    rank = 1 + sorted(range(4), key=lambda i: -scores[i]).index(0)
    assert result["bm25+rerank 4 (likelihood)"]["mrr"] == pytest.approx(1 / rank)
    with pytest.raises(AcornError, match="--model"):
        RAG(d / "idx", mode="bm25", rerank=3).retrieve([q])
    with pytest.raises(AcornError, match="rerank method"):
        RAG(d / "idx", mode="bm25", rerank=3, rerank_method="vibes")


def test_cli_rerank(setup, checkpoint, capsys):
    d, _, _, _ = setup
    path, _ = checkpoint
    assert main(["rag", "ask", str(d / "idx"), "--mode", "bm25", "--rerank", "3", "fox"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["rag", "ask", str(d / "idx"), "--model", str(path), "--mode", "bm25", "--rerank", "3", "-k", "1",
                 "--max-new-tokens", "2", "--json", "fox"]) == 0
    assert len(__import__("json").loads(capsys.readouterr().out)["passages"]) <= 1


def test_long_passages_are_cut_and_long_questions_refused(setup):
    from acorn.rag.index import Hit
    from acorn.rag.rerank import relevance_scores

    _, engine, _, rag = setup
    (hit,) = rag.retrieve(["fox"], k=1)[0][:1]
    long = Hit(type(hit.chunk)(**{**hit.chunk.__dict__, "text": "The fox is quick. " * 60}), 0.0, 1)
    for method in ("yes", "likelihood"):
        (score,) = relevance_scores(engine, "Is the fox quick?", [long], method)  # fits the context of 128
        assert score == score and abs(score) < float("inf")
        with pytest.raises(AcornError, match="shorten the question"):
            relevance_scores(engine, "fox " * 200, [hit], method)
