"""Few-shot demonstrations and how to choose them.

In-context learning (Brown et al. 2020, "Language Models are Few-Shot
Learners"): a few solved examples in the prompt show the task, with no
gradient update. Which examples matters: Liu et al. 2021 ("What Makes Good
In-Context Examples for GPT-3?") pick those whose embeddings are nearest to
the query's. choose_examples() does either: a seeded random sample, or the k
most similar by cosine similarity of sentence embeddings (acorn.rag.embeddings,
the model's own mean-pooled states, or any embedder passed in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from acorn.errors import AcornError


@dataclass(frozen=True)
class Example:
    input: str
    output: str  # the final answer
    reasoning: str | None = None  # the worked steps, for chain-of-thought demonstrations

    @classmethod
    def from_row(cls, row: dict) -> "Example":
        """From a JSON row: {"input"|"question", "output"|"answer", "reasoning"?}."""
        text = row.get("input", row.get("question"))
        out = row.get("output", row.get("answer"))
        if not isinstance(text, str) or not isinstance(out, str):
            raise AcornError(f"a few-shot example needs string fields input (or question) and output (or answer); "
                             f"got keys {sorted(row)}")
        return cls(text, out, row.get("reasoning"))


Embedder = Callable[[list[str]], torch.Tensor]  # texts -> (len, d) rows of norm 1


def engine_embedder(engine) -> Embedder:
    """Sentence embeddings from the engine's own model (mean-pooled final states).
    Each text is embedded once: a pool of examples is reused for every query."""
    from acorn.rag.embeddings import embed

    cache: dict[str, torch.Tensor] = {}

    def embedder(texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in cache))
        if new:
            cache.update(zip(new, embed(engine.model, [engine.encode(t) for t in new])))
        return torch.stack([cache[t] for t in texts])

    return embedder


def choose_examples(pool: Sequence[Example], query: str, k: int, *, by: str = "random", seed: int = 0,
                    embedder: Embedder | None = None) -> list[Example]:
    """k demonstrations from pool for query, never the query itself.

    by="random": a sample seeded by (seed, query), so a benchmark is
    reproducible and each query still gets its own draw. by="similar": the k
    with the highest cosine similarity to the query, most similar last (nearest
    the query, where it counts most: Liu et al. 2021's ordering)."""
    if k < 0:
        raise AcornError(f"k (the number of examples) must be >= 0, not {k}")
    candidates = [e for e in pool if e.input != query]
    if k > len(candidates):
        raise AcornError(f"asked for {k} examples but the pool has {len(candidates)}; lower k or add examples")
    if k == 0:
        return []
    if by == "random":
        return random.Random(f"{seed}:{query}").sample(candidates, k)
    if by == "similar":
        if embedder is None:
            raise AcornError("similarity-chosen examples need an embedder (engine_embedder(engine))")
        vecs = embedder([query] + [e.input for e in candidates])
        sims = (vecs[1:] @ vecs[0]).tolist()
        # Ties (equal vectors) keep pool order, so the choice is deterministic.
        best = sorted(range(len(candidates)), key=lambda i: (-sims[i], i))[:k]
        return [candidates[i] for i in reversed(best)]
    raise AcornError(f"unknown example selection {by!r}; choose random or similar")
