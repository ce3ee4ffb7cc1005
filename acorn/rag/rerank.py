"""Reranking retrieved chunks by the chat model's own judgement.

Retrieval (acorn.rag.retrieve) ranks chunks by embeddings and word overlap;
a reranker reads each (question, chunk) pair with a language model and
reorders the top candidates by a score, as cross-encoder rerankers do
(Nogueira & Cho 2019). Here the scorer is the chat model itself, through the
one engine's log-likelihoods (Engine.loglikelihood), with two scores:

  yes         the log-odds log P("yes") - log P("no") of the model's reply to
              "does this passage answer the question?" (each summed over the
              capitalised and lower-case spellings): a pointwise relevance
              judgement, as in Nogueira et al. 2020 (monoT5) and the
              LLM-as-reranker recipes.
  likelihood  log P(question | passage): the question's tokens after the
              passage, in the RAG prompt's layout (acorn.chat.context). A
              passage about the person asked for makes the question likely
              (Sachan et al. 2022, "unsupervised passage reranking"). Every
              candidate scores the same question tokens, so the sums compare.

    from acorn.rag.rerank import rerank
    hits = rerank(engine, "Where was Kelvo Dranith born?", hits, method="likelihood")

Reranking costs one forward pass over every candidate per question; it pays
only when the model judges relevance better than the retriever ranks it.
benchmarks/rag.py measures that on the world.
"""

from __future__ import annotations

import math

from acorn.errors import AcornError
from acorn.rag.index import Hit

METHODS = ("yes", "likelihood")
JUDGE = "Passage: {passage}\n\nQuestion: {question}\nDoes the passage answer the question? Answer yes or no."
YES, NO = ("yes", "Yes"), ("no", "No")


def _passage(hit: Hit) -> str:
    return f"{hit.chunk.title}: {hit.chunk.text}" if hit.chunk.title else hit.chunk.text


def _fit(ctx: list[int], cont_len: int, limit: int) -> list[int]:
    """Cut the context from its start (keeping the BOS token) so context + continuation fit."""
    room = limit - cont_len
    if room < 2:
        raise AcornError(f"the question takes {cont_len} tokens, too many for the model's context of {limit} "
                         "to rerank; shorten the question")
    return ctx if len(ctx) <= room else ctx[:1] + ctx[len(ctx) - room + 1:]


def relevance_scores(engine, question: str, hits: list[Hit], method: str = "yes") -> list[float]:
    """One score per hit, higher = more relevant (see the module docstring)."""
    if method not in METHODS:
        raise AcornError(f"unknown rerank method {method!r}; choose one of {', '.join(METHODS)}")
    if not hits:
        return []
    tok, limit = engine.tokenizer, engine.model.config.max_seq_len
    requests = []
    if method == "yes":
        words = [tok.encode(w) for w in YES + NO]
        room = limit - max(map(len, words)) + 1
        for h in hits:
            passage = _passage(h)
            while True:  # a passage too long for the context is cut from its end; the question is kept
                ctx = engine.chat_prompt([{"role": "user", "content": JUDGE.format(passage=passage,
                                                                                    question=question)}])
                if len(ctx) <= room:
                    break
                if not passage:
                    raise AcornError(f"the question takes {len(ctx)} tokens with the reranking prompt, more than "
                                     f"the model's context of {limit}; shorten the question")
                passage = passage[:len(passage) * 3 // 4]
            requests.append((ctx, words))
        out = []
        for lps in engine.loglikelihood(requests):
            lp = [x for x, _ in lps]
            yes = math.log(sum(math.exp(x) for x in lp[:len(YES)]))
            no = math.log(sum(math.exp(x) for x in lp[len(YES):]))
            out.append(yes - no)
        return out
    cont = tok.encode(" " + question.strip())
    for h in hits:
        ctx = engine.encode(f"Passages:\n[1] {_passage(h)}\n\nQuestion:")
        requests.append((_fit(ctx, len(cont), limit), [cont]))
    return [lps[0][0] for lps in engine.loglikelihood(requests)]


def rerank(engine, question: str, hits: list[Hit], k: int | None = None, method: str = "yes") -> list[Hit]:
    """The hits reordered by relevance_scores (ties keep the retriever's order),
    the best k of them (default: all), ranked from 1 with the reranker's score."""
    scores = relevance_scores(engine, question, hits, method)
    order = sorted(range(len(hits)), key=lambda i: -scores[i])  # stable
    return [Hit(hits[i].chunk, scores[i], r + 1) for r, i in enumerate(order[:k])]
