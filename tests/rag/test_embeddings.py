"""Sentence embeddings against transformers: each vector is the normalised
mean of the final hidden states transformers computes for the text alone,
whatever else shares its padded batch."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

import acorn
from acorn.rag.embeddings import embed
from tests.model.test_checkpoint import VOCAB, _hf_model


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen3"])
def test_vectors_are_transformers_mean_final_hidden_states_alone_or_batched(name, tmp_path):
    hf, path = _hf_model(name, tmp_path)
    model = acorn.load(path, dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 3, 14, 1)]
    batched = embed(model, texts, batch_size=3)  # two batches, the first padded to 14
    assert batched.shape == (4, 32) and batched.dtype == torch.float32
    assert batched.norm(dim=1).tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    with torch.no_grad():
        for v, ids in zip(batched, texts):
            h = hf.base_model(torch.tensor([ids])).last_hidden_state[0].mean(0)
            torch.testing.assert_close(v, torch.nn.functional.normalize(h, dim=0), atol=1e-5, rtol=0)
            torch.testing.assert_close(v, embed(model, [ids])[0], atol=1e-6, rtol=0)
    assert (batched @ batched.T).fill_diagonal_(0).abs().max() < 0.999  # different texts, different vectors

