"""Fixtures of the synth tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory, world_tokenizer) -> Path:
    """A tiny random Llama with the world's tokenizer and room for a critique (context 512)."""
    from acorn.tokenizer.bpe import Tokenizer
    from tests.conftest import random_llama

    tok = Tokenizer.from_pretrained(world_tokenizer)
    path = tmp_path_factory.mktemp("chat")
    random_llama(tok.vocab_size, context=512, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id).save_pretrained(path)
    tok.save(path)
    return path
