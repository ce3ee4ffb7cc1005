"""Sampling: from next-token logits to the next token.

A language model gives a score (logit) to every token of the vocabulary; the
decoding strategy turns the scores into one choice. Greedy decoding takes the
argmax. Sampling draws from softmax(logits / temperature), usually after
cutting off the unreliable tail of the distribution. One step applies, in this
order (each only when some row of the batch asks for it, so a plain greedy
batch costs one argmax):

  logits processors   the user's own functions, called per row as
                      fn(prompt_ids, output_ids, logits (V,)) -> logits (V,),
                      vLLM's three-argument form
  logit bias          the OpenAI API's logit_bias: a number added to chosen
                      tokens' logits (-100 bans a token, +100 all but forces it)
  min_new_tokens      the row's stop tokens get -inf until it has generated
                      min_new_tokens tokens (transformers'
                      MinNewTokensLengthLogitsProcessor, vLLM's min_tokens)
  repetition penalty  CTRL (Keskar et al. 2019): a token already in the text
                      has its logit divided by the penalty (multiplied when
                      negative), so it becomes less likely either way
  frequency/presence  the OpenAI API's penalties: subtract count * f and, once
                      present, p from the logit of each token the model has
                      already generated
  (greedy)            rows with temperature 0 take the argmax here, so the
                      steps above change their choice and the ones below do not
  temperature         divide the logits: < 1 sharpens, > 1 flattens
  top-k               keep the k most likely tokens (Fan et al. 2018)
  top-p (nucleus)     keep the smallest set of most likely tokens whose
                      probability adds up to p (Holtzman et al. 2019)
  min-p               keep tokens at least min_p times as likely as the most
                      likely one (Nguyen et al. 2024)
  draw                one torch.multinomial draw from the row's own generator

From the repetition penalty on this is the order of transformers' generate,
and each filter equals its transformers counterpart
(MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)
on the same logits; tests/infer/test_sampling.py holds them to that. User
processors come first, as in vLLM, so they see the model's own scores.

Every function works on a batch (B, V) whose rows may have different
parameters, so one decode step serves requests with different settings (what
a continuous-batching scheduler needs). Each request draws from its own
torch.Generator: a seeded request gives the same tokens whatever else shares
its batch.

token_logprobs() reports log-probabilities for the OpenAI API's `logprobs`
option. The engine passes it the model's raw logits, before any of the steps
above (vLLM's default "raw logprobs"): they say what the model thinks, not the
distribution the token was drawn from after temperature and the filters.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, fields
from typing import Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor

from acorn.errors import AcornError


class GenerationError(AcornError):
    """A request that could not be completed although it was valid: the model
    gave next-token scores that are not finite. The engine fails that request
    alone (finish_reason "error", Completion.error says why) and goes on serving."""


# Why a request failed with non-finite logits, and what to do: one line.
NON_FINITE = ("the model's next-token scores (logits) are not finite (NaN or infinity), so no token can be chosen: "
              "its weights hold NaN/inf values or its activations overflowed; check the checkpoint's weights, "
              "or run in float32 (--dtype float32)")


def non_finite_rows(logits: Tensor) -> Tensor:
    """(B,) bool: the rows of logits (B, V) holding a NaN or an infinity. Softmax of
    such a row is NaN everywhere: a draw fails, an argmax picks an arbitrary id.
    Checked through the row's float32 sum (NaN or +-inf iff an element is, for any
    logits a model gives): one pass over the logits and no (B, V) mask, every step."""
    return ~torch.isfinite(logits.sum(dim=-1, dtype=torch.float32))


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
    n: int = 1  # samples per prompt (the engine runs n rows, seeds seed, seed + 1, ...)
    min_new_tokens: int = 0  # stop tokens are suppressed until this many tokens are generated
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, in [-100, 100] (OpenAI)
    logprobs: int | None = None  # None: off; 0: the chosen token's log-probability; k: also the top k (<= 20)
    logits_processors: Sequence[Callable] = ()  # fn(prompt_ids, output_ids, logits (V,)) -> logits (V,)
    num_beams: int = 1  # beam search (elsewhere) when > 1
    length_penalty: float = 1.0  # beam score = log-prob sum / length ** length_penalty (transformers)
    early_stopping: bool | str = False  # True, False or "never", as transformers' beam search
    # Structured output (acorn.infer.structured): one of {"json_schema": {...}}, {"json_object": True},
    # {"regex": "..."}, {"choice": ["yes", "no"]}, {"grammar": "<lark>"}; tokens that would break it are masked.
    guided: dict | None = None
    lora: str | None = None  # the LoRA adapter to generate with (Engine(lora_adapters=...)); None: the model as it is
    # vLLM's constructor spellings, SamplingParams(max_tokens=64): moved onto the fields above.
    max_tokens: InitVar[int | None] = None
    min_tokens: InitVar[int | None] = None

    # The OpenAI/vLLM names for fields that have a transformers name here.
    ALIASES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}

    def __post_init__(self, max_tokens=None, min_tokens=None):
        if max_tokens is not None:
            self.max_new_tokens = max_tokens
        if min_tokens is not None:
            self.min_new_tokens = min_tokens
        # Normalise the forms people write ("stop": "\n", a tuple) to lists.
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        self.stop_token_ids = [int(i) for i in (self.stop_token_ids or ())]
        problems = []
        guided_kinds = ("json_schema", "json_object", "regex", "choice", "grammar")
        if self.guided is not None and not (isinstance(self.guided, dict) and len(self.guided) == 1
                                            and next(iter(self.guided)) in guided_kinds):
            problems.append(f"guided must be a dict with one key of {', '.join(guided_kinds)}, not {self.guided!r}")
        if _is_int(self.num_beams) and self.num_beams > 1 and (
                self.logits_processors or self.logit_bias or self.repetition_penalty != 1.0
                or self.frequency_penalty or self.presence_penalty):
            problems.append("beam search scores the model's own log-probabilities: it takes no logits_processors, "
                            "logit_bias or penalties")
        if self.guided is not None and isinstance(self.guided, dict) and (self.num_beams != 1 or self.min_new_tokens):
            # The grammar decides where the text ends: a minimum length or a beam could contradict it.
            problems.append("guided (structured output) cannot be combined with num_beams > 1 or min_new_tokens")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature must be >= 0 (0 = greedy), not {self.temperature!r}")
        elif self.temperature < 1e-5:
            # Dividing float32 logits by a temperature this small overflows to inf
            # (and a 1e-50 rounds to 0): such a temperature means greedy (as vLLM).
            self.temperature = 0.0
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            problems.append(f"top_k must be an integer >= 0 (0 = off), not {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), not {self.top_p!r}")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1] (0 = off), not {self.min_p!r}")
        if not 0.01 <= self.repetition_penalty <= 100:
            # Outside this range the penalised float32 logits overflow (or round the penalty to 0).
            problems.append(f"repetition_penalty must be in [0.01, 100] (1 = off), not {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not (isinstance(getattr(self, name), (int, float)) and abs(getattr(self, name)) <= 100):
                problems.append(f"{name} must be a number in [-100, 100] (0 = off), not {getattr(self, name)!r}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if self.seed is not None and not (_is_int(self.seed) and -SEED_LIMIT <= self.seed < SEED_LIMIT):
            problems.append(f"seed must be None or an integer in [-2**63, 2**63 - 1] (64 bits), not {self.seed!r}")
        problems += self._check_new_fields()
        if problems:
            raise AcornError("; ".join(problems))

    def _check_new_fields(self) -> list[str]:
        """Normalise and check n, min_new_tokens, logit_bias, logprobs, the
        processors and the beam-search fields; one message per problem."""
        problems = []
        if not (_is_int(self.n) and self.n >= 1):
            problems.append(f"n must be an integer >= 1, not {self.n!r}")
        if not (_is_int(self.min_new_tokens) and self.min_new_tokens >= 0):
            problems.append(f"min_new_tokens must be an integer >= 0, not {self.min_new_tokens!r}")
        elif _is_int(self.max_new_tokens) and self.min_new_tokens > self.max_new_tokens:
            problems.append(f"min_new_tokens must be <= max_new_tokens ({self.max_new_tokens}), "
                            f"not {self.min_new_tokens!r}")
        bias, bad = {}, []
        if self.logit_bias is not None and not isinstance(self.logit_bias, Mapping):
            problems.append(f"logit_bias must be a mapping of token id to bias, not {type(self.logit_bias).__name__}")
        else:
            for key, value in (self.logit_bias or {}).items():
                try:  # JSON objects have string keys: the OpenAI API sends {"50256": -100}
                    token = int(key) if isinstance(key, str) else key
                    ok_key = _is_int(token) and token >= 0
                    ok_value = not isinstance(value, bool) and -100 <= float(value) <= 100
                except (TypeError, ValueError):
                    ok_key = ok_value = False
                if ok_key and ok_value:
                    bias[token] = float(value)
                else:
                    bad.append(f"{key!r}: {value!r}")
            if bad:
                problems.append("logit_bias must map token ids (integers >= 0) to numbers in [-100, 100]; "
                                f"bad entries {{{', '.join(bad)}}}")
            else:
                self.logit_bias = bias
        if self.logprobs is not None and not (_is_int(self.logprobs) and 0 <= self.logprobs <= 20):
            problems.append(f"logprobs must be None (off) or an integer in [0, 20], not {self.logprobs!r}")
        if callable(self.logits_processors):  # one function passed bare
            self.logits_processors = [self.logits_processors]
        self.logits_processors = list(self.logits_processors or ())
        if not all(callable(f) for f in self.logits_processors):
            problems.append("logits_processors must be callables fn(prompt_ids, output_ids, logits) -> logits")
        if not (_is_int(self.num_beams) and self.num_beams >= 1):
            problems.append(f"num_beams must be an integer >= 1 (1 = no beam search), not {self.num_beams!r}")
        elif self.num_beams > 1 and _is_int(self.n) and self.n > self.num_beams:
            problems.append(f"n must be <= num_beams ({self.num_beams}) with beam search, not {self.n!r}")
        if not (isinstance(self.length_penalty, (int, float)) and not isinstance(self.length_penalty, bool)
                and math.isfinite(self.length_penalty)):
            problems.append(f"length_penalty must be a finite number, not {self.length_penalty!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            problems.append(f'early_stopping must be True, False or "never", not {self.early_stopping!r}')
        if self.lora is not None and not (isinstance(self.lora, str) and self.lora):
            problems.append(f"lora must be an adapter's name or None, not {self.lora!r}")
        return problems

    @classmethod
    def merge(cls, params: "SamplingParams | None", overrides: dict) -> "SamplingParams":
        """params (or the defaults) with some fields replaced, e.g. merge(p, {"temperature": 0}).

        Also takes the OpenAI/vLLM names max_tokens and min_tokens."""
        from dataclasses import replace

        overrides = dict(overrides)
        for alias, name in cls.ALIASES.items():
            if alias in overrides:
                value = overrides.pop(alias)
                if name in overrides and overrides[name] != value:
                    raise AcornError(f"{alias}={value!r} and {name}={overrides[name]!r} disagree; give one of them")
                overrides[name] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AcornError(f"unknown sampling parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known | set(cls.ALIASES)))}")
        return replace(params or cls(), **overrides)


# A seed is a signed 64-bit integer, as the OpenAI API's; torch.Generator.manual_seed takes
# [-2**63, 2**64), which leaves room for the + sample index the engine adds.
SEED_LIMIT = 2 ** 63


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ------------------------------------------------------------ the filters
# Each takes logits (B, V) and a parameter that is a number or one per row
# (a (B,) tensor), and returns new logits with the removed tokens at -inf.

def _column(value, logits: Tensor) -> Tensor:
    """A number or (B,) values as a (B, 1) column in the logits' dtype.

    Plain Python numbers are rounded to the logits' dtype the way torch rounds
    a scalar operand, so the results equal transformers' bit for bit."""
    t = torch.as_tensor(value, dtype=logits.dtype, device=logits.device)
    return t.reshape(-1, 1) if t.dim() else t.reshape(1, 1)


def logit_bias(logits: Tensor, bias_rows: Sequence[Mapping[int, float] | None]) -> Tensor:
    """Add each row's {token id: bias} to its logits (the OpenAI API's logit_bias).

    A bias of -100 makes a token practically impossible and +100 practically
    certain, but neither is exact: the logits keep their scale, so this is a
    nudge the model can still outweigh in between (as in the OpenAI API)."""
    b, vocab = logits.shape
    rows, cols, values = [], [], []
    for i, bias in enumerate(bias_rows):
        for token, value in (bias or {}).items():
            rows.append(i), cols.append(token), values.append(value)
    if not rows:
        return logits
    out_of_range = sorted({t for t in cols if not 0 <= t < vocab})
    if out_of_range:
        raise AcornError(f"logit_bias names token id(s) {out_of_range[:10]} outside the vocabulary of {vocab}")
    dense = torch.zeros(b, vocab, dtype=logits.dtype, device=logits.device)
    dense[rows, cols] = torch.tensor(values, dtype=logits.dtype, device=logits.device)
    return logits + dense


def suppress(logits: Tensor, mask: Tensor) -> Tensor:
    """Set the logits where mask (B, V) is True to -inf: those tokens cannot be chosen."""
    return logits.masked_fill(mask, float("-inf"))


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


def _processors(logits: Tensor, rows: list[SamplingParams], prompts: list, outputs: list) -> Tensor:
    """Each row's own logits processors, in the order given, on that row alone."""
    logits = logits.clone()  # a processor may write into its row in place; never into the caller's tensor
    for i, r in enumerate(rows):
        for fn in r.logits_processors:
            # Copies of the ids: a processor must not change the sequence it is shown.
            row = fn(list(prompts[i]), list(outputs[i]), logits[i])
            if not (isinstance(row, Tensor) and row.shape == logits[i].shape):
                got = tuple(row.shape) if isinstance(row, Tensor) else type(row).__name__
                raise AcornError(f"logits processor {getattr(fn, '__name__', fn)!r} returned {got}; "
                                 f"it must return the row's logits, a tensor of shape {tuple(logits[i].shape)}")
            logits[i] = row
    return logits


def plain_argmax(params: SamplingParams, generated: int, stop_ids: Collection[int] | None = None) -> bool:
    """Whether sample() picks a row's token as the plain argmax of its logits: a greedy row
    that process_logits leaves as it is (no processor, bias or penalty; no stop token still
    to suppress for min_new_tokens). generated: how many tokens the row has; stop_ids as
    sample()'s. A compiled decode step returns that argmax from inside its graph
    (acorn.infer.compiled), which spares a batch-1 step the eager ops of sampling."""
    return (params.temperature == 0 and not params.logits_processors and not params.logit_bias
            and params.repetition_penalty == 1.0 and not params.frequency_penalty and not params.presence_penalty
            and (generated >= params.min_new_tokens or not (stop_ids or params.stop_token_ids)))


def process_logits(
    logits: Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generated: Sequence[Sequence[int]] | None = None,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    stop_ids: Sequence[Collection[int] | None] | None = None,
) -> Tensor:
    """The steps that come before the greedy/sampled choice, as float32 logits (B, V):
    logits processors, logit bias, min_new_tokens, repetition and
    frequency/presence penalties. Arguments as sample()."""
    b, vocab = logits.shape
    rows = _rows(params, b)
    logits = logits.float()  # softmax and penalties in float32 even for a bf16 model
    device = logits.device
    outputs, prompt_ids = _histories(generated, b), _histories(prompts, b)

    if any(r.logits_processors for r in rows):
        logits = _processors(logits, rows, prompt_ids, outputs)
    if any(r.logit_bias for r in rows):
        logits = logit_bias(logits, [r.logit_bias for r in rows])
    # The stop tokens (the engine's, which already hold each row's stop_token_ids
    # and the tokenizer's unless ignore_eos; the row's own stop_token_ids in
    # any case) are banned while a row is shorter than its minimum.
    banned = {}  # row -> its stop ids, for the rows still short of their minimum that have any
    for i, r in enumerate(rows):
        if len(outputs[i]) < r.min_new_tokens:
            given = (stop_ids[i] or ()) if stop_ids is not None else ()
            ids = [t for t in {*given, *r.stop_token_ids} if 0 <= t < vocab]
            if ids:
                banned[i] = ids
    if banned:
        mask = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        for i, ids in banned.items():
            mask[i, ids] = True
        logits = suppress(logits, mask)
    # Penalties before the choice: they change which token is the argmax, so greedy rows get them too.
    if any(r.repetition_penalty != 1.0 for r in rows):
        seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        for i, (p, g) in enumerate(zip(prompt_ids, outputs)):
            ids = [t for t in (*p, *g) if 0 <= t < vocab]
            if ids:
                seen[i, ids] = True
        logits = repetition_penalty(logits, seen, torch.tensor([r.repetition_penalty for r in rows]))
    if any(r.frequency_penalty or r.presence_penalty for r in rows):
        counts = torch.zeros(b, vocab, device=device)
        for i, g in enumerate(outputs):
            ids = torch.tensor([t for t in g if 0 <= t < vocab], dtype=torch.long, device=device)
            counts[i].index_add_(0, ids, torch.ones(len(ids), device=device))
        logits = frequency_presence_penalty(logits, counts, torch.tensor([r.frequency_penalty for r in rows]),
                                            torch.tensor([r.presence_penalty for r in rows]))
    return logits


def sample(
    logits: Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generated: Sequence[Sequence[int]] | None = None,
    generators: torch.Generator | Sequence[torch.Generator | None] | None = None,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    stop_ids: Sequence[Collection[int] | None] | None = None,
) -> Tensor:
    """One next token per row.

    logits (B, V): the model's scores for the next token.
    params: one SamplingParams for all rows, or one per row.
    generated: the ids each row has generated so far (for the penalties,
        min_new_tokens and the logits processors).
    generators: one torch.Generator for all rows or one per row (None: torch's global RNG).
    prompts: each row's prompt ids; the repetition penalty counts them too, as
        transformers does (its input_ids are the prompt plus the output).
    stop_ids: each row's stop token ids (or None), banned while the row has
        generated fewer than its min_new_tokens; the row's stop_token_ids are
        banned too.
    Returns (B,) long: argmax for rows with temperature 0, a draw otherwise.
    """
    b = logits.shape[0]
    rows = _rows(params, b)
    logits = process_logits(logits, rows, generated, prompts=prompts, stop_ids=stop_ids)

    out = logits.argmax(dim=-1)
    drawn = [i for i, r in enumerate(rows) if r.temperature > 0]
    if not drawn:
        return out
    probs = sampling_probs(logits[drawn], [rows[i] for i in drawn])
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


def sampling_probs(logits: Tensor, rows: Sequence[SamplingParams]) -> Tensor:
    """The distribution a sampled row draws from (B, V): temperature, then
    top-k, top-p and min-p, then softmax. Rows need temperature > 0.
    (Speculative decoding verifies draft tokens against exactly this.)"""
    x = temperature(logits, torch.tensor([r.temperature for r in rows]))
    # Each filter only when some row uses it: top-p sorts the whole vocabulary.
    if any(r.top_k > 0 for r in rows):
        x = top_k(x, torch.tensor([r.top_k for r in rows]))
    if any(r.top_p < 1.0 for r in rows):
        x = top_p(x, torch.tensor([r.top_p for r in rows], dtype=torch.float64))
    if any(r.min_p > 0 for r in rows):
        x = min_p(x, torch.tensor([r.min_p for r in rows]))
    return x.softmax(dim=-1)


# ----------------------------------------------------------- log-probabilities
def token_logprobs(logits: Tensor, chosen: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probabilities for the OpenAI API's logprobs option.

    logits (B, V): the engine passes the model's raw logits, before the
        processors, penalties, temperature and filters (vLLM's default "raw
        logprobs"), so the numbers are the model's, not the sampler's.
    chosen (B,): the token each row took.
    k: how many of the most likely tokens to report (0: none; more than V: V).
    Returns (chosen's log-probability (B,), top-k ids (B, k) long, their
    log-probabilities (B, k), in descending order), all from log_softmax in float32.
    """
    logp = logits.float().log_softmax(dim=-1)
    chosen_logp = logp.gather(1, chosen.long().reshape(-1, 1))[:, 0]
    top = torch.topk(logp, min(int(k), logp.shape[-1]), dim=-1)
    return chosen_logp, top.indices.long(), top.values
