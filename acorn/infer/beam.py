"""Beam search: the most likely continuation, searched num_beams paths wide.

Greedy decoding takes the single most likely token at every step, so a token
that looks good now can lead it into a poor sequence it cannot leave. Beam
search (as in machine translation, e.g. Sutskever et al. 2014; Wu et al. 2016
for the length penalty) keeps the num_beams best partial sequences, the
*beams*, ranked by their summed log-probability. At each step every beam is
extended by every token; the best extensions become the new beams.

This module follows transformers' beam search (generation/utils.py,
`_beam_search`) rule for rule, so the two return the same sequences and
scores:

  candidates  Each step ranks all num_beams * vocab extensions by summed
              log-probability and takes the best K = max(2, 1 + #stop ids)
              * num_beams of them. Each beam can offer at most #stop ids
              candidates that end, so at least num_beams of the K go on.
  running     The best num_beams of the K that did not end are the beams of
              the next step; their KV cache rows are gathered (a beam may
              now be copied into two rows, another dropped).
  finished    A candidate that ends (a stop id, or the last allowed token)
              becomes a finished hypothesis, but only if it ranks among the
              top num_beams of the K (a lower one lost to beams that go on).
              The finished set holds the num_beams best, a bounded heap.
  score       A finished hypothesis of L generated tokens (its stop id
              included, the prompt not) scores
                  sum of its log-probabilities / L ** length_penalty
              length_penalty 0: plain log-probability, which favours short
              sequences (each token only lowers it); 1: the mean per token;
              above 1 longer ones are favoured more. This is the score
              transformers reports as sequences_scores.
  max length  At the last allowed step every candidate ends, so the top
              num_beams of them are finalised with the same formula, as if
              they had stopped: unfinished beams compete on equal terms.

When is the search done before max_new_tokens? Only once num_beams
hypotheses have finished, and then, by `early_stopping`:
  True     at once: the first num_beams finished hypotheses are the answer.
  False    when the best running beam, scored at its current length, is no
           better than the worst finished one. With length_penalty > 0 a
           beam that goes on may still beat that (a longer L divides a
           negative sum by more), so this is a heuristic; it is
           transformers' default.
  "never"  when the best running beam cannot beat the worst finished one
           at any length: scored at max_new_tokens when length_penalty > 0,
           at its current length otherwise. Log-probabilities only lower a
           sum, so this bound is exact: the canonical beam search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from acorn.errors import AcornError
from acorn.infer.sampling import NON_FINITE, GenerationError, non_finite_rows

# transformers' stand-in for "impossible" in its score tensors. The rows that
# start as copies of the prompt get it, so the first step draws its candidates
# from one row only (identical rows would offer every candidate num_beams times).
_IMPOSSIBLE = -1e9


@dataclass
class Beam:
    token_ids: list[int]  # generated ids (not the prompt), including the stop id that ended it, if any
    score: float  # sum of log-probabilities / len(token_ids) ** length_penalty (transformers' sequences_scores)
    finished: bool  # ended with a stop id (vs ran out of max_new_tokens)


def _select_rows(cache, rows: Tensor):
    """The cache of the given rows, in that order (rows may repeat)."""
    cache.keys = [k.index_select(0, rows) for k in cache.keys]
    cache.values = [v.index_select(0, rows) for v in cache.values]
    cache.mask = cache.mask.index_select(0, rows)
    cache.positions = cache.positions.index_select(0, rows)
    return cache


@torch.inference_mode()
def beam_search(model, prompt: list[int], *, num_beams: int, max_new_tokens: int, vocab_size: int,
                stop_ids: frozenset[int] | set[int] = frozenset(), length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return: int = 1, min_new_tokens: int = 0) -> list[Beam]:
    """The num_return best beams, best first.

    vocab_size: the tokenizer's vocabulary; logits past it (a model's padded
        vocabulary) are never considered.
    stop_ids: ids that end a beam (it keeps the id).
    min_new_tokens: stop ids are impossible until this many tokens are out.
    Like the engine, a beam also ends at the model's context length.
    """
    stop_ids = frozenset(stop_ids)
    n_cand = max(2, 1 + len(stop_ids)) * num_beams
    if num_beams < 1 or not 1 <= num_return <= num_beams:
        raise AcornError(f"beam search needs num_beams >= 1 and 1 <= num_return <= num_beams; "
                         f"got num_beams={num_beams}, num_return={num_return}")
    if max_new_tokens < 1:
        raise AcornError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    if not prompt:
        raise AcornError("beam search needs a prompt of at least one token")
    if n_cand > num_beams * vocab_size:
        raise AcornError(f"{n_cand} candidates per step need a vocabulary of at least {n_cand // num_beams}; "
                         f"got {vocab_size}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise AcornError(f"early_stopping is True, False or 'never'; got {early_stopping!r}")
    context = model.config.max_seq_len
    if len(prompt) >= context:
        raise AcornError(f"the prompt has {len(prompt)} tokens; the model's context is {context}")
    max_new_tokens = min(max_new_tokens, context - len(prompt))

    device = next(model.parameters()).device
    # Ids past the vocabulary can never be chosen (they still count in n_cand, as in transformers).
    stop = torch.tensor(sorted(i for i in stop_ids if 0 <= i < vocab_size), dtype=torch.long, device=device)

    # Prefill once, then copy the prompt's cache into num_beams rows.
    out = model(torch.tensor([prompt], device=device), use_cache=True, last_only=True)
    cache = _select_rows(out.cache, torch.zeros(num_beams, dtype=torch.long, device=device))
    logits = out.logits[:, -1, :vocab_size].expand(num_beams, -1)
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    beam_scores = torch.full((num_beams,), _IMPOSSIBLE, device=device)  # summed log-probabilities, float32
    beam_scores[0] = 0.0
    # (score, token ids, ended with a stop id): the best num_beams, best first.
    hypotheses: list[tuple[float, list[int], bool]] = []

    for step in range(max_new_tokens):
        length = step + 1  # tokens a candidate of this step has
        last = length == max_new_tokens
        if bool(non_finite_rows(logits).any()):  # no ranking of NaN: say why, as the engine does
            raise GenerationError(NON_FINITE)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        if step < min_new_tokens and len(stop):
            # transformers masks log-probabilities, after the softmax: the
            # other tokens' are not renormalised.
            logprobs[:, stop] = float("-inf")
        totals = (logprobs + beam_scores[:, None]).reshape(-1)
        cand_scores, flat = totals.topk(n_cand)
        cand_beam, cand_token = flat // vocab_size, flat % vocab_size
        cand_stops = torch.isin(cand_token, stop)
        cand_beam_l, cand_token_l, cand_stops_l = cand_beam.tolist(), cand_token.tolist(), cand_stops.tolist()

        # Only the top num_beams candidates may finish: one ranked lower has
        # num_beams better ones ahead of it and would not have been a beam.
        penalised = (cand_scores[:num_beams] / (length ** length_penalty)).tolist()
        for rank in range(num_beams):
            if cand_stops_l[rank] or last:
                ids = beams[cand_beam_l[rank]] + [cand_token_l[rank]]
                hypotheses.append((penalised[rank], ids, cand_stops_l[rank]))
        # Stable sort: on a tie the earlier hypothesis stays ahead.
        hypotheses = sorted(hypotheses, key=lambda h: -h[0])[:num_beams]
        if last:
            break

        # The next beams: the best num_beams candidates that did not stop
        # (there are at least num_beams of them, see the module docstring).
        going_on = [r for r in range(n_cand) if not cand_stops_l[r]][:num_beams]
        keep = torch.tensor(going_on, device=device)
        beams = [beams[cand_beam_l[r]] + [cand_token_l[r]] for r in going_on]
        beam_scores = cand_scores[keep]

        if len(hypotheses) == num_beams:
            if early_stopping is True:
                break
            # The best a running beam could still score, against the worst kept hypothesis.
            best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
            if not bool(beam_scores[0] / (best_length ** length_penalty) > hypotheses[-1][0]):
                break

        out = model(cand_token[keep][:, None], cache=_select_rows(cache, cand_beam[keep]), use_cache=True,
                    last_only=True)
        cache, logits = out.cache, out.logits[:, -1, :vocab_size]

    return [Beam(token_ids=ids, score=score, finished=ended) for score, ids, ended in hypotheses[:num_return]]
