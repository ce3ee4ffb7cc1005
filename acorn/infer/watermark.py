"""Watermarking: a statistical fingerprint in the sampling distribution,
detectable from the text alone.

Kirchenbauer et al. 2023, "A Watermark for Large Language Models" (the "soft"
green-list watermark). Before each token is sampled, a key and the previous
token seed a pseudo-random partition of the vocabulary into a "green" list of
gamma * V tokens and a "red" rest, and delta is added to the green tokens'
logits. The text still reads normally (where the model is confident, one token
wins anyway; where it is not, a green token is chosen), but it holds more green
tokens than chance allows. Someone with the key and the tokenizer, and without
the model, counts them: with T scored tokens of which g are green,

    z = (g - gamma * T) / sqrt(T * gamma * (1 - gamma))

is about standard normal for text written without the key (each token is green
with probability gamma, whoever wrote it), and grows like sqrt(T) for
watermarked text. z > 4 (a one-sided p-value of 3e-5) is the paper's verdict.

Generating watermarked text (Python API; the processor plugs into the one
engine through SamplingParams.logits_processors):

    from acorn.infer import Engine
    from acorn.infer.watermark import WatermarkProcessor, detect
    engine = Engine.from_pretrained("runs/ckpt")
    wm = WatermarkProcessor("my secret", engine.tokenizer.vocab_size, gamma=0.25, delta=2.0)
    text = engine.generate("Once upon a time", logits_processors=[wm], max_new_tokens=200)[0].text
    detect(text, engine.tokenizer, "my secret")   # Detection(..., z_score=9.1, watermarked=True)

and detecting from the command line:

    acorn watermark detect essay.txt --tokenizer runs/ckpt --key "my secret"

The green list (one function, shared by the processor and the detector)
-----------------------------------------------------------------------
The paper seeds torch's generator with key * previous token and takes the
first gamma * V entries of torch.randperm(V). Here the permutation is defined
by our own arithmetic instead, because a watermark must be detectable years
later and on other machines: torch.randperm's algorithm is not part of torch's
contract (it differs between CPU and CUDA and has changed between versions).

  seed   = blake2b-64(previous token, keyed with sha256(str(key)))
  score  = fmix32(fmix32(token ^ seed_low32) ^ seed_high32)     for every token id
  green  = the floor(gamma * V) token ids with the smallest (score, token id)

fmix32 is MurmurHash3's 32-bit finaliser, computed on int64 tensors with the
multipliers taken mod 2**32 in (-2**31, 2**31) so nothing overflows: one vectorised
pass over the vocabulary plus a kthvalue, about a millisecond at V = 50k. The
green list is exactly floor(gamma * V) tokens, as with randperm, and it is
cached per seed (an LRU of at most 64 MiB of masks), so a step whose previous
token was seen before costs only the addition. The cheaper alternative,
green(prev, tok) = hash(key, prev, tok) < gamma, needs no vocabulary size but
makes the green list's size random; ranking keeps the paper's exact fraction.
The consequence: the green list depends on V, so generation and detection must
use the same V, the tokenizer's vocabulary size (not a padded embedding size).

The key is used as str(key): the integer 42 and the string "42" are one key,
so a key given to the Python API as a number works on the command line.

Context width h (the paper's section on "Selecting the hashing scheme", and
Kirchenbauer et al. 2023b, "On the Reliability of Watermarks for LLMs"):
  scheme="lefthash" (default)  the seed is the PRF of the token h positions
                               back ("LeftHash"); h = 1 is the original scheme
  scheme="minhash"             the seed is the smallest PRF value among the
                               previous h tokens ("Min-hash"): any of the h
                               tokens can change the list, yet an edit to one
                               of them changes it only if it was the minimum
The paper's "SelfHash" (the candidate token itself in the context) is not
implemented: it needs a green-list per candidate. Tokens with fewer than h
tokens before them are neither biased nor scored.

Detection tokenises the text with tokenizer.encode (no BOS), scores every
token that has h tokens before it and, with ignore_repeated (the default, as
Kirchenbauer et al. 2023b recommend), counts each distinct (context, token)
pair once: repeated phrases ("the the the", a copied line) are not independent
draws, and would otherwise inflate z for text without a watermark, or let a
single repeated green pair fake one.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from acorn.errors import AcornError

SCHEMES = ("lefthash", "minhash")
_MASK32 = 0xFFFFFFFF
_CACHE_BYTES = 64 << 20  # LRU of green masks (one byte per vocabulary entry each)


# ------------------------------------------------------------ the hash
def _mul32(h: Tensor, c: int) -> Tensor:
    """(h * c) mod 2**32 for h in [0, 2**32) held in int64, without overflow: a
    constant c >= 2**31 is replaced by c - 2**32 (equal mod 2**32), so |h * c| < 2**63
    and the two's-complement & gives the residue."""
    return (h * (c - (1 << 32) if c >= 1 << 31 else c)) & _MASK32


def fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's finaliser on int64 tensors of 32-bit values (a bijection of [0, 2**32))."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _key_digest(key: int | str) -> bytes:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise AcornError(f"the watermark key must be an integer or a string, not {type(key).__name__}")
    if str(key) == "":
        raise AcornError("the watermark key must not be empty")
    return hashlib.sha256(str(key).encode("utf-8")).digest()


class GreenList:
    """The green lists of one (key, vocab_size, gamma, context, scheme):
    mask(context_ids) is a (V,) bool tensor with exactly floor(gamma * V) True."""

    def __init__(self, key: int | str, vocab_size: int, gamma: float = 0.25, context: int = 1,
                 scheme: str = "lefthash"):
        problems = []
        if not (isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size >= 2):
            problems.append(f"vocab_size must be an integer >= 2, not {vocab_size!r}")
        if not (isinstance(gamma, (int, float)) and 0 < gamma < 1):
            problems.append(f"gamma (the green fraction) must be in (0, 1), not {gamma!r}")
        elif not problems and int(gamma * vocab_size) < 1:
            problems.append(f"gamma={gamma} leaves no green token in a vocabulary of {vocab_size}")
        if not (isinstance(context, int) and not isinstance(context, bool) and context >= 1):
            problems.append(f"context (tokens hashed into the seed) must be an integer >= 1, not {context!r}")
        if scheme not in SCHEMES:
            problems.append(f"scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
        if problems:
            raise AcornError("; ".join(problems))
        self.digest = _key_digest(key)
        self.vocab_size, self.gamma, self.context, self.scheme = vocab_size, float(gamma), context, scheme
        self.size = int(gamma * vocab_size)  # the paper's greenlist_size = int(vocab_size * gamma)
        self._ids = torch.arange(vocab_size, dtype=torch.int64)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._capacity = max(16, _CACHE_BYTES // vocab_size)

    def _prf(self, token: int) -> int:
        return int.from_bytes(hashlib.blake2b(int(token).to_bytes(8, "little"), digest_size=8,
                                              key=self.digest).digest(), "little")

    def seed(self, context_ids: Sequence[int]) -> int:
        """The 64-bit seed of the green list that follows these tokens (the last `context` are used)."""
        window = list(context_ids)[-self.context:]
        if len(window) < self.context:
            raise ValueError(f"need {self.context} context tokens, got {len(window)}")
        if self.scheme == "lefthash":
            return self._prf(window[0])
        return min(self._prf(t) for t in window)

    def mask(self, context_ids: Sequence[int]) -> Tensor:
        """(V,) bool on the CPU: True for the green tokens after context_ids. Do not modify it (it is cached)."""
        seed = self.seed(context_ids)
        hit = self._cache.get(seed)
        if hit is not None:
            self._cache.move_to_end(seed)
            return hit
        score = fmix32(fmix32(self._ids ^ (seed & _MASK32)) ^ (seed >> 32))
        # Ties on the 32-bit score are broken by the token id, so the ranking is
        # total and the list has exactly `size` tokens (score < 2**32, id < 2**31).
        rank_key = (score << 31) | self._ids
        kth = torch.kthvalue(rank_key, self.size).values
        green = rank_key <= kth
        self._cache[seed] = green
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return green


class WatermarkProcessor:
    """A logits processor for SamplingParams.logits_processors that adds delta
    to the green tokens' logits (Kirchenbauer et al. 2023's soft watermark).

    key: the secret (int or str; used as str(key)). vocab_size: the
    tokenizer's vocabulary size, which the detector uses too. gamma: the green
    fraction. delta: the logit bonus (larger: easier to detect, further from
    the model's own distribution). context, scheme: see the module docstring.
    Logit columns beyond vocab_size (a padded embedding) are left as they are."""

    def __init__(self, key: int | str, vocab_size: int, gamma: float = 0.25, delta: float = 2.0, context: int = 1,
                 scheme: str = "lefthash"):
        if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and math.isfinite(delta)):
            raise AcornError(f"delta (the green tokens' logit bonus) must be a finite number, not {delta!r}")
        self.green = GreenList(key, vocab_size, gamma, context, scheme)
        self.delta = float(delta)

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: Tensor) -> Tensor:
        h = self.green.context
        window = output_ids[-h:] if len(output_ids) >= h else (list(prompt_ids) + list(output_ids))[-h:]
        if len(window) < h:  # too little text to seed from; the detector skips these tokens too
            return logits
        v = self.green.vocab_size
        if logits.shape[-1] < v:
            raise AcornError(f"the logits have {logits.shape[-1]} entries but the watermark's vocabulary "
                             f"{v}; give WatermarkProcessor the tokenizer's vocab_size")
        mask = self.green.mask(window).to(logits.device, non_blocking=True)
        if logits.shape[-1] > v:
            mask = torch.cat([mask, mask.new_zeros(logits.shape[-1] - v)])
        return torch.where(mask, logits + self.delta, logits)

    def __repr__(self) -> str:
        g = self.green
        return (f"WatermarkProcessor(vocab_size={g.vocab_size}, gamma={g.gamma}, delta={self.delta}, "
                f"context={g.context}, scheme={g.scheme!r})")


# ------------------------------------------------------------ detection
@dataclass
class Detection:
    num_tokens: int  # tokens scored (distinct (context, token) pairs with ignore_repeated)
    num_green: int
    z_score: float
    p_value: float  # one-sided: P(Z >= z) under "no watermark"
    watermarked: bool  # z_score > z_threshold

    @property
    def green_fraction(self) -> float:
        return self.num_green / self.num_tokens


def z_score(num_green: int, num_tokens: int, gamma: float) -> float:
    """The paper's one-proportion z-test: (g - gamma T) / sqrt(T gamma (1 - gamma))."""
    return (num_green - gamma * num_tokens) / math.sqrt(num_tokens * gamma * (1 - gamma))


def p_value(z: float) -> float:
    """One-sided upper tail of the standard normal, 1 - Phi(z), without cancellation for large z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def detect(text_or_ids: str | Sequence[int], tokenizer, key: int | str, gamma: float = 0.25, context: int = 1,
           z_threshold: float = 4.0, ignore_repeated: bool = True, scheme: str = "lefthash") -> Detection:
    """Test a text (or its token ids) for the watermark of `key`; needs the
    tokenizer, not the model. The settings must be the generator's (gamma,
    context, scheme, and the tokenizer's vocabulary)."""
    green = GreenList(key, tokenizer.vocab_size, gamma, context, scheme)
    ids = tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else [int(i) for i in text_or_ids]
    bad = [i for i in ids if not 0 <= i < green.vocab_size]
    if bad:
        raise AcornError(f"token id {bad[0]} is outside the tokenizer's vocabulary (0..{green.vocab_size - 1})")
    h = green.context
    if len(ids) <= h:
        raise AcornError(f"the text has {len(ids)} token(s); the test needs more than {h} "
                         f"(and a few hundred for a confident verdict)")
    seen, scored, num_green = set(), 0, 0
    for t in range(h, len(ids)):
        pair = (*ids[t - h:t], ids[t])
        if ignore_repeated:
            if pair in seen:
                continue
            seen.add(pair)
        scored += 1
        num_green += bool(green.mask(pair[:-1])[ids[t]])
    z = z_score(num_green, scored, green.gamma)
    return Detection(scored, num_green, z, p_value(z), z > z_threshold)
