"""Shared fixtures of the inference tests: a tiny byte-level BPE trained on a
few sentences and a tiny random Llama made by transformers (std 0.3, so greedy
text varies), saved together as a Hugging Face checkpoint directory."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import transformers

from acorn.tokenizer.bpe import Tokenizer

transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only cost synchronisation (tens of times
    slower on a shared 2-core machine). Restored after this module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TEXT = (
    "The quick brown fox jumps over the lazy dog. A small acorn grows into a tall oak tree. "
    "Once upon a time there was a little model that learned to speak. The cat sat on the mat. "
) * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], 300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    """(directory, transformers model) of a tiny random Llama with an Acorn tokenizer."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, initializer_range=0.3,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norm weights away from 1, so a dropped norm would show
        g = torch.Generator().manual_seed(1)
        for p in hf.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + 1.0)
    path = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(path)
    tok.save(path)
    return path, hf
