"""A tiny world's token shards and one uninterrupted tiny sweep over them, shared by the scaling tests."""

from __future__ import annotations

import pytest

from acorn.scaling.sweep import sweep


@pytest.fixture(scope="session")
def shards(tmp_path_factory, tiny_world, world_tokenizer):
    from acorn.data.prepare import prepare

    out = tmp_path_factory.mktemp("scaling-data")
    prepare([tiny_world / "pretrain.jsonl"], world_tokenizer, out, val_fraction=0.2, quiet=True)
    return out


@pytest.fixture(scope="session")
def whole(tmp_path_factory, shards):
    """An uninterrupted sweep: the reference the others must equal."""
    out = tmp_path_factory.mktemp("sweep-whole")
    sweep(out, "tiny", data=str(shards), quiet=True)
    return out
