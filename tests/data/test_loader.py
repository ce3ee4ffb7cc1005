"""TokenLoader: next-token rows, seeded order, exact resume, rank shares of a global batch, BOS-aligned packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acorn.data.loader import Batch, TokenLoader
from acorn.data.prepare import prepare
from acorn.errors import AcornError


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_world, world_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("loader") / "data"
    # small shards, so rows cross shard ends
    prepare([tiny_world / "pretrain.jsonl"], world_tokenizer, out, val_fraction=0.2, shard_tokens=1000,
            workers=1, quiet=True)
    return out


def stream(data: Path, split: str) -> np.ndarray:
    meta = json.loads((data / "meta.json").read_text())
    parts = [np.fromfile(data / r["file"], dtype=meta["dtype"]) for r in meta["shards"][split]]
    return np.concatenate(parts).astype(np.int64)


def bos_id(data: Path) -> int:
    return json.loads((data / "meta.json").read_text())["tokenizer"]["bos_id"]


def take(loader, n) -> list[Batch]:
    return [next(loader) for _ in range(n)]


def same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(a, b))


def test_rows_are_next_token_windows_and_an_epoch_covers_every_window_once(data):
    s = stream(data, "train")
    L, B = 16, 4
    loader = TokenLoader(data, batch_size=B, seq_len=L, seed=0)
    assert len(loader._shards) > 1 and loader.num_rows == (len(s) - 1) // L
    seen = []
    for batch in take(loader, loader.steps_per_epoch):
        assert batch.x.shape == batch.y.shape == (B, L) and batch.x.dtype == batch.y.dtype == torch.int64
        assert batch.document_ids is None
        assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])
        for x, y in zip(batch.x.numpy(), batch.y.numpy()):
            # the windows with this content (the world repeats some text: in-context documents
            # share lines), of which one not yet seen this epoch
            matches = np.flatnonzero([np.array_equal(s[j * L:j * L + L], x) for j in range(loader.num_rows)])
            fresh = [int(j) for j in matches if int(j) not in seen]
            assert fresh, "a window came twice in one epoch"
            k = fresh[0]
            assert np.array_equal(s[k * L + 1:k * L + L + 1], y)
            seen.append(k)
    assert len(set(seen)) == len(seen) == loader.steps_per_epoch * B  # no window twice in an epoch
    assert seen != sorted(seen)  # shuffled


def test_order_is_a_function_of_the_seed(data):
    a = take(TokenLoader(data, batch_size=4, seq_len=16, seed=3), 5)
    assert same(a, take(TokenLoader(data, batch_size=4, seq_len=16, seed=3), 5))
    assert not same(a, take(TokenLoader(data, batch_size=4, seq_len=16, seed=4), 5))


@pytest.mark.parametrize("pack", [False, True])
def test_state_dict_restores_the_exact_next_batches(data, pack):
    kw = dict(batch_size=8, seq_len=32, seed=1, pack_documents=pack)
    a = TokenLoader(data, **kw)
    n = a.steps_per_epoch
    take(a, n - 1)  # stop one batch before an epoch ends, so the continuation crosses into the next epoch
    state = json.loads(json.dumps(a.state_dict()))  # it survives a checkpoint file
    want = take(a, 2 * n + 1)
    b = TokenLoader(data, **kw)
    b.load_state_dict(state)
    assert same(take(b, 2 * n + 1), want)
    assert b.epoch == a.epoch >= 2
    # ... also on two ranks with the same global batch
    halves = [TokenLoader(data, **dict(kw, batch_size=4), rank=r, world_size=2) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)
    for batch in want:
        parts = [next(h) for h in halves]
        assert torch.equal(torch.cat([p.x for p in parts]), batch.x)
    with pytest.raises(AcornError, match="seq_len"):
        TokenLoader(data, **dict(kw, seq_len=16)).load_state_dict(state)


@pytest.mark.parametrize("pack", [False, True])
def test_ranks_split_the_single_process_global_batch(data, pack):
    single = TokenLoader(data, batch_size=6, seq_len=16, seed=2, pack_documents=pack)
    ranks = [TokenLoader(data, batch_size=2, seq_len=16, seed=2, rank=r, world_size=3, pack_documents=pack)
             for r in range(3)]
    for _ in range(single.steps_per_epoch + 3):  # across an epoch end
        g = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p.x for p in parts]), g.x) and torch.equal(torch.cat([p.y for p in parts]), g.y)
        if pack:
            assert torch.equal(torch.cat([p.document_ids for p in parts]), g.document_ids)
    xs = [p.x for p in parts]
    assert not any(torch.equal(xs[i], xs[j]) for i in range(3) for j in range(i))


def test_packed_rows_start_at_bos_and_document_ids_change_exactly_at_bos(data):
    s, bos = stream(data, "train"), bos_id(data)
    L = 128
    loader = TokenLoader(data, batch_size=4, seq_len=L, seed=0, pack_documents=True)
    starts, multi = [], 0
    for batch in take(loader, loader.steps_per_epoch):
        x, y, doc = batch.x, batch.y, batch.document_ids
        assert doc.shape == x.shape and doc.dtype == torch.int64
        assert (x[:, 0] == bos).all() and (doc[:, 0] == 0).all()
        assert torch.equal(doc[:, 1:] != doc[:, :-1], x[:, 1:] == bos)
        assert torch.equal(doc[:, 1:] - doc[:, :-1], (x[:, 1:] == bos).long())
        assert torch.equal(x[:, 1:], y[:, :-1])
        multi += int((doc[:, -1] > 0).sum())
        for row in x.numpy():  # a contiguous run of whole documents from a document start
            k = int(np.flatnonzero([np.array_equal(s[j:j + L], row) for j in np.flatnonzero(s == bos)])[0])
            starts.append(int(np.flatnonzero(s == bos)[k]))
    starts.sort()
    assert all(b - a >= L for a, b in zip(starts, starts[1:]))  # rows never share an input token
    assert multi >= len(starts) // 2  # most rows pack several documents, so the checks above had boundaries to see
    assert loader.num_rows <= int((s == bos).sum())


def test_eval_pass_is_finite_in_order_and_leaves_the_training_position(data):
    val = stream(data, "val")
    loader = TokenLoader(data, "val", batch_size=2, seq_len=16)
    first = list(loader.iter_eval())
    assert len(first) == loader.steps_per_epoch == (len(val) - 1) // 16 // 2
    rows = torch.cat([b.x for b in first]).numpy()
    assert np.array_equal(rows.reshape(-1), val[:rows.size])  # in stream order, nothing skipped
    assert same(first, list(loader.iter_eval()))
    assert len(list(loader.iter_eval(max_batches=2))) == 2
    assert loader.state_dict()["cursor"] == 0 and loader.state_dict()["epoch"] == 0
    r1 = list(TokenLoader(data, "val", batch_size=1, seq_len=16, rank=1, world_size=2).iter_eval())
    assert all(torch.equal(a.x[1:], b.x) for a, b in zip(first, r1))


def test_refusals(data, tmp_path):
    small = TokenLoader(data, "val", batch_size=256, seq_len=32)
    assert 0 < small.num_rows < 256
    evaluated = list(small.iter_eval())  # evaluation takes what there is ...
    assert len(evaluated) == 1 and evaluated[0].x.shape[0] == small.num_rows
    with pytest.raises(AcornError, match="fewer than one global batch"):  # ... training needs a whole batch
        next(small)
    with pytest.raises(AcornError, match="has no row of"):
        TokenLoader(data, "val", batch_size=1, seq_len=10**9)
    with pytest.raises(AcornError, match="no meta.json"):
        TokenLoader(tmp_path, batch_size=1, seq_len=8)
    with pytest.raises(AcornError, match="rank 2 is outside"):
        TokenLoader(data, batch_size=1, seq_len=8, rank=2, world_size=2)
    meta = json.loads((data / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps(dict(meta, complete=False)))
    with pytest.raises(AcornError, match="did not finish"):
        TokenLoader(tmp_path, batch_size=1, seq_len=8)
