"""Sentence embeddings: one vector per text, from the language model itself.

The vector is the model's final hidden states (after the last norm, before
the output head) averaged over the text's tokens, then L2-normalised, so the
dot product of two vectors is their cosine similarity. Mean pooling is the
SBERT choice (Reimers & Gurevych 2019) and, for a causal model, keeps every
token's state, not only the last one's.

These are a generative model's states, not those of a model trained for
retrieval (no contrastive fine-tuning, as in E5 or GTE): good enough to
compare texts the model has seen, weaker than a dedicated embedding model.
Retrieval and the server's /v1/embeddings both use embed().
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.inference_mode()
def embed(model, token_lists: list[list[int]], batch_size: int = 16) -> Tensor:
    """(len(token_lists), d_model) float32 on the CPU, each row of norm 1.

    Rows of a batch are padded on the right and attention is causal, so no
    real token ever sees a pad (positions start at 0 in every row): each
    vector equals that of its token list run alone."""
    device = model.device
    out = []
    for start in range(0, len(token_lists), batch_size):
        rows = token_lists[start:start + batch_size]
        t = max(map(len, rows))
        ids = torch.tensor([r + [0] * (t - len(r)) for r in rows], device=device)
        hidden = model(ids, hidden_only=True).hidden.float()
        real = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in rows], device=device)
        mean = (hidden * real[:, :, None]).sum(1) / real.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    return torch.cat(out)
