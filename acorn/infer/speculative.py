"""Speculative decoding: guess several tokens cheaply, check them in one pass.

Decoding one token per forward pass leaves most of the hardware idle: a
forward pass over k + 1 tokens costs about as much as over one (the weights
are read once either way). Speculative decoding (Leviathan et al. 2023; Chen
et al. 2023) lets a cheap drafter propose k tokens d1..dk, then runs the
target model once over [last token, d1..dk], which gives the target's
distribution p_j at every one of the k + 1 positions. Draft token j is kept
with probability min(1, p_j(d_j) / q_j(d_j)) (q_j: the drafter's
distribution); at the first rejection the replacement is drawn from the
normalised residual max(p_j - q_j, 0), and if all k are kept a bonus token is
drawn from p_{k+1}. The tokens that come out are distributed exactly as if
the target had sampled them one by one, however bad the drafter is; a good
drafter only makes it faster. With greedy decoding the rule is simply: keep
draft tokens while they equal the target's argmax, then add the target's
argmax, so the output is token for token the plain greedy output.

Two drafters:

  DraftModel    a small model with the same tokenizer samples k tokens with
                the request's own sampling settings (q is its filtered
                distribution); it keeps a KV cache per request and rolls it
                back to the accepted tokens after each check
  PromptLookup  no model at all (Saxena 2023, "prompt lookup decoding"): find
                the most recent earlier occurrence of the text's last n-gram
                and propose the tokens that followed it. Its q puts all mass
                on one token, so acceptance is p(d) and the residual is p with
                d removed. Strong wherever the output copies the input:
                retrieval-augmented answers, summaries, code edits.

The engine (acorn.infer.engine) runs this inside continuous batching: a
decoding request's one-token piece becomes a (k + 1)-token piece of the same
step, and stats() reports the acceptance rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from acorn.errors import AcornError


@dataclass
class Draft:
    tokens: list[int]
    probs: Tensor | None = None  # (k, V) the drafter's distributions q_j; None: each draft token was certain


def verify(target: Tensor, draft: Draft, greedy: bool, generator: torch.Generator | None) -> tuple[list[int], int]:
    """The tokens that come out of one check, and how many draft tokens were kept.

    target: (k + 1, V) the target's sampling distribution at each position
    (for greedy rows: any scores, only the argmax counts)."""
    k = len(draft.tokens)
    if greedy:
        best = target.argmax(-1).tolist()
        m = 0
        while m < k and draft.tokens[m] == best[m]:
            m += 1
        return draft.tokens[:m] + [best[m]], m
    device = target.device
    for j, x in enumerate(draft.tokens):
        p = target[j]
        q_x = float(draft.probs[j, x]) if draft.probs is not None else 1.0
        u = float(torch.rand((), generator=generator, device=device))
        if u < min(1.0, float(p[x]) / max(q_x, 1e-30)):
            continue
        if draft.probs is not None:
            residual = (p - draft.probs[j]).clamp(min=0)
        else:
            residual = p.clone()
            residual[x] = 0
        total = residual.sum()
        # p == q exactly leaves no residual mass, but then rejection had probability 0.
        residual = residual / total if float(total) > 0 else p
        y = int(torch.multinomial(residual, 1, generator=generator))
        return draft.tokens[:j] + [y], j
    y = int(torch.multinomial(target[k], 1, generator=generator))
    return draft.tokens + [y], k


class PromptLookup:
    """Draft by copying: the tokens that followed the latest earlier occurrence
    of the last n tokens (n from max_ngram down to min_ngram)."""

    def __init__(self, k: int = 4, max_ngram: int = 3, min_ngram: int = 1):
        if k < 1 or not 1 <= min_ngram <= max_ngram:
            raise AcornError("prompt lookup needs k >= 1 and 1 <= min_ngram <= max_ngram")
        self.k, self.max_ngram, self.min_ngram = k, max_ngram, min_ngram

    def propose(self, key, tokens: list[int], params, generator) -> Draft:
        n_tokens = len(tokens)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            tail = tokens[-n:]
            # Latest match first: the most recent context is the best guess.
            for start in range(n_tokens - n - 1, -1, -1):
                if tokens[start:start + n] == tail:
                    follow = tokens[start + n:start + n + self.k]
                    if follow:
                        return Draft(follow)
        return Draft([])

    def release(self, key) -> None:
        pass


@dataclass
class _DraftState:
    cache: object = None  # acorn.model.transformer.KVCache of the tokens the draft model has seen
    seen: list[int] = field(default_factory=list)


class DraftModel:
    """A small model with the target's tokenizer drafts k tokens, sampling with
    the request's own settings (greedy rows draft greedily)."""

    def __init__(self, model, k: int = 4):
        if k < 1:
            raise AcornError("speculative decoding needs k >= 1 draft tokens")
        self.model, self.k = model.eval(), k
        self.vocab_size = model.config.vocab_size  # the engine sets its tokenizer's
        self._states: dict = {}

    @torch.inference_mode()
    def propose(self, key, tokens: list[int], params, generator) -> Draft:
        from acorn.infer.sampling import sampling_probs

        state = self._states.setdefault(key, _DraftState())
        # Keep the cached prefix that still agrees with the text (rejected drafts are dropped).
        keep = 0
        for a, b in zip(state.seen, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last token is fed again for its logits
        if state.cache is None or keep == 0:
            state.cache, keep = None, 0
        else:
            _truncate(state.cache, keep)
        room = self.model.config.max_seq_len - len(tokens)
        k = min(self.k, room)
        if k < 1:
            return Draft([])
        new = torch.tensor([tokens[keep:]], device=self.model.device)
        out = self.model(new, cache=state.cache, use_cache=True, last_only=True)
        drafts, probs = [], []
        for j in range(k):
            logits = out.logits[0, -1:, :self.vocab_size].float()
            if params.temperature == 0:
                d = int(logits.argmax())
                q = None
            else:
                q = sampling_probs(logits, [params])[0]
                d = int(torch.multinomial(q, 1, generator=generator))
            drafts.append(d)
            probs.append(q)
            if j < k - 1:
                out = self.model(torch.tensor([[d]], device=self.model.device), cache=out.cache, use_cache=True)
        state.cache, state.seen = out.cache, tokens + drafts[:-1]
        if params.temperature == 0:
            return Draft(drafts)
        return Draft(drafts, torch.stack(probs))

    def release(self, key) -> None:
        self._states.pop(key, None)


def _truncate(cache, n: int) -> None:
    """Keep the first n tokens of a batch-1 KVCache."""
    cache.keys = [k[:, :, :n] for k in cache.keys]
    cache.values = [v[:, :, :n] for v in cache.values]
    cache.mask, cache.positions = cache.mask[:, :n], cache.positions[:, :n]


def speculates(params) -> bool:
    """Whether a request can be checked against the plain sampling distribution:
    no penalties, biases, processors, grammar, logprobs or minimum length
    (those change the target's distribution with every accepted token)."""
    return not (params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
                or params.logit_bias or params.logits_processors or params.guided is not None
                or params.logprobs is not None or params.min_new_tokens)
