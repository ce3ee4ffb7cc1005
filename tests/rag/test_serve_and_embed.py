"""acorn serve --rag returns sources; acorn embed train's loss, loader and one run."""

import pytest
import torch
import torch.nn.functional as F


def test_serve_with_rag_returns_the_passages_as_sources(tmp_path, checkpoint):
    from fastapi.testclient import TestClient

    from acorn.infer import Engine
    from acorn.rag.pipeline import RAG, build_index
    from acorn.serve.app import create_app

    path, _ = checkpoint
    (tmp_path / "d.txt").write_text("The cat sat on the mat.")
    build_index([tmp_path / "d.txt"], tmp_path / "idx", str(path), chunk_by="paragraphs")
    rag = RAG(tmp_path / "idx", mode="bm25", k=1)
    engine = Engine.from_pretrained(path)
    with TestClient(create_app(engine, rag=rag)) as client:
        body = {"model": "acorn", "messages": [{"role": "user", "content": "cat"}], "max_tokens": 2,
                "temperature": 0}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        sources = r.json()["sources"]
        assert [s["text"] for s in sources] == ["The cat sat on the mat."] and sources[0]["number"] == 1
        assert sources[0]["cited"] in (True, False)
        r = client.post("/v1/chat/completions", json=dict(body, messages=[{"role": "user", "content": "cat " * 300}]))
        assert r.status_code == 400 and "shorten the question" in r.json()["error"]["message"]
    with TestClient(create_app(engine)) as client:  # without --rag: no sources key
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and "sources" not in r.json()


def test_info_nce_matches_a_direct_computation(checkpoint):
    from acorn.model.checkpoint import load
    from acorn.train.embed import _pad, info_nce_loss

    path, _ = checkpoint
    model = load(path)
    qs, ps = [[1, 5, 9], [2, 7], [3, 3, 3, 3]], [[4, 4], [8, 1, 2, 6], [9]]
    q, qm = _pad(qs)
    p, pm = _pad(ps)
    out = info_nce_loss(model, {"q": q, "q_mask": qm, "p": p, "p_mask": pm}, temperature=0.1)

    def vec(ids):  # each text alone: no padding to get wrong
        return F.normalize(model(torch.tensor([ids]), hidden_only=True).hidden.float().mean(1)[0], dim=-1)

    logits = torch.stack([vec(a) for a in qs]) @ torch.stack([vec(b) for b in ps]).T / 0.1
    ref = -torch.log_softmax(logits, -1).diagonal().sum()
    assert out.weight == 3 and float(out.loss.detach()) == pytest.approx(float(ref), rel=1e-4)
    assert int(out.metrics["accuracy"]) == int((logits.argmax(-1) == torch.arange(3)).sum())


def test_pair_batches_hold_distinct_people_and_resume_exactly():
    from acorn.train.embed import pair_loader

    pairs = [([i], [i + 1], f"p{i % 5}") for i in range(40)]
    a = pair_loader(pairs, 4, seed=0)
    seen = []
    for _ in range(12):  # past an epoch
        for order in [a.order[a.pos] if a.pos < len(a.order) else None]:
            if order:
                assert len({pairs[i][2] for i in order}) == len(order)
        seen.append(next(a)["q"].tolist())
    b = pair_loader(pairs, 4, seed=0)
    for _ in range(5):
        next(b)
    state = b.state_dict()
    c = pair_loader(pairs, 4, seed=0)
    c.load_state_dict(state)
    assert [next(c)["q"].tolist() for _ in range(7)] == seen[5:]


def test_embed_train_runs_on_the_one_loop(tmp_path, tiny_world, checkpoint):
    from acorn.rag.embeddings import AcornEmbedder
    from acorn.train.embed import EmbedConfig, train_embedder

    path, _ = checkpoint
    cfg = EmbedConfig(data=str(tiny_world), out=str(tmp_path / "embed"), init_from=str(path))
    cfg.train.max_steps, cfg.train.micro_batch, cfg.train.batch_tokens, cfg.train.dtype = 2, 4, 4 * 128, "float32"
    cfg.eval.every = 2
    out = train_embedder(cfg)
    rows = [__import__("json").loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and 0.0 <= rows[-1]["recall@1"] <= 1.0 and "accuracy" in rows[-1]
    emb = AcornEmbedder(out / "model")  # a checkpoint `acorn rag index --embedder` loads
    assert emb.encode(["a"]).shape == (1, emb.dim)
