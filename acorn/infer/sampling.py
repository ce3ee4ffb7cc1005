"""Sampling: from next-token logits to the next token.

A language model gives a score (logit) to every token of the vocabulary; the
decoding strategy turns the scores into one choice. Greedy decoding takes the
argmax. Sampling draws from softmax(logits / temperature), usually after
cutting off the unreliable tail of the distribution:

  repetition penalty  CTRL (Keskar et al. 2019): a token already in the text
                      has its logit divided by the penalty (multiplied when
                      negative), so it becomes less likely either way
  frequency/presence  the OpenAI API's penalties: subtract count * f and, once
                      present, p from the logit of each token the model has
                      already generated
  temperature         divide the logits: < 1 sharpens, > 1 flattens
  top-k               keep the k most likely tokens (Fan et al. 2018)
  top-p (nucleus)     keep the smallest set of most likely tokens whose
                      probability adds up to p (Holtzman et al. 2019)
  min-p               keep tokens at least min_p times as likely as the most
                      likely one (Nguyen et al. 2024)

They apply in that order, the order of transformers' generate, and each filter
equals its transformers counterpart (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)
on the same logits; tests/infer/test_sampling.py holds them to that.

Every function works on a batch (B, V) whose rows may have different
parameters, so one decode step serves requests with different settings (what
a continuous-batching scheduler needs). Each request draws from its own
torch.Generator: a seeded request gives the same tokens whatever else shares
its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import Tensor

from acorn.errors import AcornError


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # CTRL-style, over the prompt and the output (as transformers)
    frequency_penalty: float = 0.0  # OpenAI-style: subtract count * f, over the output only (as OpenAI/vLLM)
    presence_penalty: float = 0.0  # OpenAI-style: subtract p once a token is present in the output
    stop: Sequence[str] = ()  # stop strings; the text is cut before the first one
    stop_token_ids: Sequence[int] = ()  # in addition to the tokenizer's / chat format's stop tokens
    seed: int | None = None  # None: drawn from torch's global RNG (so torch.manual_seed reproduces it)
    ignore_eos: bool = False  # do not stop at the default stop tokens (benchmarks, parity tests)

    def __post_init__(self):
        # Normalise the forms people write ("stop": "\n", a tuple) to lists.
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        self.stop_token_ids = [int(i) for i in (self.stop_token_ids or ())]
        problems = []
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature must be >= 0 (0 = greedy), not {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            problems.append(f"top_k must be an integer >= 0 (0 = off), not {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), not {self.top_p!r}")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1] (0 = off), not {self.min_p!r}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), not {self.repetition_penalty!r}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise AcornError("; ".join(problems))

    @classmethod
    def merge(cls, params: "SamplingParams | None", overrides: dict) -> "SamplingParams":
        """params (or the defaults) with some fields replaced, e.g. merge(p, {"temperature": 0})."""
        from dataclasses import replace

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AcornError(f"unknown sampling parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(params or cls(), **overrides)


# ------------------------------------------------------------ the filters
# Each takes logits (B, V) and a parameter that is a number or one per row
# (a (B,) tensor), and returns new logits with the removed tokens at -inf.

def _column(value, logits: Tensor) -> Tensor:
    """A number or (B,) values as a (B, 1) column in the logits' dtype.

    Plain Python numbers are rounded to the logits' dtype the way torch rounds
    a scalar operand, so the results equal transformers' bit for bit."""
    t = torch.as_tensor(value, dtype=logits.dtype, device=logits.device)
    return t.reshape(-1, 1) if t.dim() else t.reshape(1, 1)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019) on tokens with seen[b, v] True.

    Dividing a positive logit and multiplying a negative one by the same
    penalty > 1 lowers both: a plain division would make a negative logit
    (an unlikely token) more likely."""
    p = _column(penalty, logits)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(logits: Tensor, counts: Tensor, frequency, presence) -> Tensor:
    """The OpenAI API's penalties: logit - count * frequency - (count > 0) * presence."""
    f, p = _column(frequency, logits), _column(presence, logits)
    counts = counts.to(logits.dtype)
    return logits - counts * f - (counts > 0).to(logits.dtype) * p


def temperature(logits: Tensor, t) -> Tensor:
    return logits / _column(t, logits)


def top_k(logits: Tensor, k) -> Tensor:
    """Keep the k highest logits of each row (k = 0: keep all). Ties with the
    k-th logit are all kept, as in transformers."""
    vocab = logits.shape[-1]
    k = torch.as_tensor(k, device=logits.device).reshape(-1)
    k = torch.where(k > 0, k, vocab).clamp(max=vocab).expand(logits.shape[0])
    kmax = int(k.max())
    # topk of the largest k in the batch, then each row's own k-th value.
    kth = torch.topk(logits, kmax, dim=-1).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: Tensor, p) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the most likely tokens
    until their probability adds up to p; the most likely token always stays.

    Written as transformers does it, from the unlikely end: ascending sort,
    drop tokens while the cumulative probability is <= 1 - p. Starting from
    the tail keeps the same tokens as starting from the head, and the same
    arithmetic gives the same decisions at the boundary and on ties."""
    if isinstance(p, (int, float)):
        cut = _column(1 - p, logits)
    else:
        # 1 - p computed in float64 like the Python scalar transformers uses, then rounded.
        cut = _column((1 - torch.as_tensor(p, dtype=torch.float64)).to(logits.dtype), logits)
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= cut
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p(logits: Tensor, m) -> Tensor:
    """Keep tokens whose probability is at least m times the top token's. The
    cut-off scales with the model's confidence: strict when one token
    dominates, lenient when many are plausible."""
    probs = logits.softmax(dim=-1)
    threshold = _column(m, logits) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


# --------------------------------------------------------- the whole step
def _rows(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling params for {n} rows")
    return params


def _histories(ids: Sequence[Sequence[int]] | None, n: int) -> list[Sequence[int]]:
    return [()] * n if ids is None else list(ids)


def sample(
    logits: Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generated: Sequence[Sequence[int]] | None = None,
    generators: torch.Generator | Sequence[torch.Generator | None] | None = None,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """One next token per row.

    logits (B, V): the model's scores for the next token.
    params: one SamplingParams for all rows, or one per row.
    generated: the ids each row has generated so far (for the penalties).
    generators: one torch.Generator for all rows or one per row (None: torch's global RNG).
    prompts: each row's prompt ids; the repetition penalty counts them too, as
        transformers does (its input_ids are the prompt plus the output).
    Returns (B,) long: argmax for rows with temperature 0, a draw otherwise.
    """
    b, vocab = logits.shape
    rows = _rows(params, b)
    logits = logits.float()  # softmax and penalties in float32 even for a bf16 model
    device = logits.device

    # Penalties first: they change which token is the argmax, so greedy rows get them too.
    if any(r.repetition_penalty != 1.0 for r in rows):
        seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        for i, (p, g) in enumerate(zip(_histories(prompts, b), _histories(generated, b))):
            ids = [t for t in (*p, *g) if 0 <= t < vocab]
            if ids:
                seen[i, ids] = True
        logits = repetition_penalty(logits, seen, torch.tensor([r.repetition_penalty for r in rows]))
    if any(r.frequency_penalty or r.presence_penalty for r in rows):
        counts = torch.zeros(b, vocab, device=device)
        for i, g in enumerate(_histories(generated, b)):
            ids = torch.tensor([t for t in g if 0 <= t < vocab], dtype=torch.long, device=device)
            counts[i].index_add_(0, ids, torch.ones(len(ids), device=device))
        logits = frequency_presence_penalty(logits, counts, torch.tensor([r.frequency_penalty for r in rows]),
                                            torch.tensor([r.presence_penalty for r in rows]))

    out = logits.argmax(dim=-1)
    drawn = [i for i, r in enumerate(rows) if r.temperature > 0]
    if not drawn:
        return out
    sub = [rows[i] for i in drawn]
    x = logits[drawn]
    x = temperature(x, torch.tensor([r.temperature for r in sub]))
    # Each filter only when some row uses it: top-p sorts the whole vocabulary.
    if any(r.top_k > 0 for r in sub):
        x = top_k(x, torch.tensor([r.top_k for r in sub]))
    if any(r.top_p < 1.0 for r in sub):
        x = top_p(x, torch.tensor([r.top_p for r in sub], dtype=torch.float64))
    if any(r.min_p > 0 for r in sub):
        x = min_p(x, torch.tensor([r.min_p for r in sub]))
    probs = x.softmax(dim=-1)
    if generators is None or isinstance(generators, torch.Generator):
        gens = [generators] * b
    else:
        gens = list(generators)
    if all(gens[i] is gens[drawn[0]] for i in drawn):  # one shared generator: one call
        out[drawn] = torch.multinomial(probs, 1, generator=gens[drawn[0]])[:, 0]
        return out
    for j, i in enumerate(drawn):
        # One draw per row from that row's own generator: the draw does not
        # depend on the batch it happens to share.
        out[i] = torch.multinomial(probs[j], 1, generator=gens[i])[0]
    return out
