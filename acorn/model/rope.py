"""Rotary position embeddings (RoPE) and the scalings that stretch them to longer contexts.

RoPE (RoFormer, Su et al. 2021) encodes position by rotating each pair of query/key
dimensions by an angle position * inv_freq[i], with inv_freq[i] = theta^(-2i/d). A dot
product of two rotated vectors then depends only on their distance, and every pair
turns at its own speed: early pairs spin fast (local order), late pairs slowly (long range).
A model trained on L positions has never seen the slow pairs' angles beyond L, so it
fails there. The scalings change inv_freq so a longer context maps into seen angles:

- linear, Position Interpolation (Chen et al. 2023): divide every frequency by `factor`,
  squeezing factor*L positions into L. Needs fine-tuning; blurs nearby tokens.
- dynamic, NTK-aware scaling (bloc97 and emozilla, r/LocalLLaMA 2023): raise theta instead,
  which slows the low frequencies a lot and the high ones hardly at all; "dynamic" grows theta
  only once the sequence exceeds the trained length, so short prompts are untouched.
- yarn, YaRN (Peng et al. 2023): per pair, interpolate the slow ones, keep the fast ones
  (a linear ramp between wavelengths that turn beta_fast and beta_slow times within the
  trained length), and scale cos/sin by 0.1*ln(factor)+1 because attention gets flatter
  (more tokens) as the context grows.
- llama3, Llama 3.1's frequency-dependent scaling: the same idea with wavelength bands:
  short wavelengths kept, long ones divided by factor, a smooth blend in between.
- longrope, LongRoPE (Ding et al. 2024; Phi-3): a searched per-pair rescale factor, one list
  for short and one for long sequences, plus YaRN-like sqrt(1 + ln s / ln L) on cos/sin.

Numbers follow transformers' modeling_rope_utils bit for bit where it matters: at position
100k one float32 ulp of inv_freq turns the angle by ~0.01 rad, so each formula evaluates in
the same order and precision as there. Layout is transformers' "rotate_half" (NeoX) one.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from acorn.errors import AcornError

# rope_type -> (required keys, optional keys). rope_theta and partial_rotary_factor may sit in
# the dict too, because transformers 5 writes them there; they must agree with the arguments.
ROPE_TYPES = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ()),
    "yarn": (("factor",), ("original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                           "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor"), ("original_max_position_embeddings",)),
    # Phi-3 keeps original_max_position_embeddings outside rope_scaling; it must be copied in, since the
    # short/long switch depends on it and a silent default (max_position_embeddings) would never switch.
    "longrope": (("short_factor", "long_factor", "original_max_position_embeddings"), ("factor", "attention_factor")),
}
_SHARED_KEYS = ("rope_theta", "partial_rotary_factor")
_NUMBER_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "mscale",
                "mscale_all_dim", "attention_factor")


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def validate_scaling(scaling: dict | None) -> dict | None:
    """Return a copy of a Hugging Face rope_scaling dict with "type" renamed "rope_type", or None;
    raise AcornError naming the bad key for an unknown type or a missing/invalid/unknown key."""
    if not scaling:
        return None
    if not isinstance(scaling, dict):
        raise AcornError(f"rope scaling must be a dict like {{'rope_type': 'linear', 'factor': 2.0}}, got {scaling!r}")
    s = dict(scaling)
    if "type" in s:
        old = s.pop("type")
        if s.setdefault("rope_type", old) != old:
            raise AcornError(f"rope scaling has type={old!r} and rope_type={s['rope_type']!r}; keep only rope_type")
    kind = s.setdefault("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise AcornError(f"rope scaling rope_type={kind!r} is not supported; use one of {', '.join(ROPE_TYPES)}")
    required, optional = ROPE_TYPES[kind]
    for key in required:
        if s.get(key) is None:
            raise AcornError(f"rope scaling of type {kind!r} needs the key {key!r}; add it to rope_scaling")
    for key in s:
        if key != "rope_type" and key not in required + optional + _SHARED_KEYS:
            raise AcornError(f"rope scaling key {key!r} is not used by rope_type {kind!r}; remove it "
                             f"(allowed: {', '.join(required + optional) or 'none'})")
    for key in _NUMBER_KEYS:
        if s.get(key) is not None and (not _is_number(s[key]) or s[key] < 0):
            raise AcornError(f"rope scaling key {key!r} must be a non-negative number, got {s[key]!r}")
    if s.get("factor") is not None and s["factor"] < 1:
        raise AcornError(f"rope scaling key 'factor' must be >= 1 (the context stretch), got {s['factor']!r}")
    omp = s.get("original_max_position_embeddings")
    if omp is not None and (not isinstance(omp, int) or isinstance(omp, bool) or omp < 1):
        raise AcornError(f"rope scaling key 'original_max_position_embeddings' must be a positive int, got {omp!r}")
    if "truncate" in s and not isinstance(s["truncate"], bool):
        raise AcornError(f"rope scaling key 'truncate' must be true or false, got {s['truncate']!r}")
    if kind == "llama3" and not s["low_freq_factor"] < s["high_freq_factor"]:
        raise AcornError("rope scaling key 'high_freq_factor' must be greater than 'low_freq_factor', got "
                         f"{s['high_freq_factor']!r} <= {s['low_freq_factor']!r}")
    for key in ("short_factor", "long_factor"):
        if key in s and not (isinstance(s[key], (list, tuple)) and all(_is_number(v) and v > 0 for v in s[key])):
            raise AcornError(f"rope scaling key {key!r} must be a list of positive numbers, one per rotary pair")
    return s


def _inv_freq(base, rot_dim: int) -> torch.Tensor:
    """theta^(-2i/d) for i < d/2, in float32 the way transformers evaluates it."""
    return 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))


def rope_parameters(head_dim: int, *, theta: float = 10000.0, partial_rotary_factor: float = 1.0,
                    scaling: dict | None = None, max_position_embeddings: int = 2048,
                    seq_len: int | None = None, device=None) -> tuple[torch.Tensor, float]:
    """inv_freq (rot_dim // 2,) float32 and the factor cos/sin are multiplied by (1.0 except yarn/longrope).

    rot_dim = int(head_dim * partial_rotary_factor) rounded down to even (transformers instead rounds an odd
    one up and keeps the odd divisor in the exponent; no model we know has one). `seq_len` is the number of
    positions in play (largest position + 1); 'dynamic' and 'longrope' depend on it, others ignore it.
    Computed on the CPU and moved to `device`, as transformers does at model init, so frequencies do not
    depend on the accelerator's pow().
    """
    s = validate_scaling(scaling) or {"rope_type": "default"}
    for key, arg in (("rope_theta", theta), ("partial_rotary_factor", partial_rotary_factor)):
        if s.get(key) is not None and float(s[key]) != float(arg):
            raise AcornError(f"rope scaling has {key}={s[key]!r} but the model's is {arg!r}; make them agree")
    if not 0 < partial_rotary_factor <= 1:
        raise AcornError(f"partial_rotary_factor must be in (0, 1], got {partial_rotary_factor!r}")
    rot_dim = int(head_dim * partial_rotary_factor) // 2 * 2
    if rot_dim < 2:
        raise AcornError(f"head_dim {head_dim} x partial_rotary_factor {partial_rotary_factor} rotates no dims; "
                         "raise partial_rotary_factor")
    theta, kind = float(theta), s["rope_type"]
    orig = s.get("original_max_position_embeddings") or max_position_embeddings  # transformers' default
    attention_factor = 1.0

    if kind == "default":
        inv_freq = _inv_freq(theta, rot_dim)
    elif kind == "linear":
        inv_freq = _inv_freq(theta, rot_dim) / s["factor"]
    elif kind == "dynamic":
        if rot_dim == 2:
            raise AcornError("dynamic rope scaling needs a rotary dim > 2 (its exponent is d/(d-2))")
        if seq_len is None or seq_len <= max_position_embeddings:
            inv_freq = _inv_freq(theta, rot_dim)  # within the trained length: plain RoPE, exactly
        else:
            # theta' = theta * (factor*L'/L - (factor-1))^(d/(d-2)): at L' = L nothing changes, and the slowest
            # pair's wavelength grows by about L'/L. Evaluated on a float32 tensor, since transformers takes
            # seq_len from position_ids in forward(), and that rounding shows at long positions.
            factor, n = s["factor"], torch.tensor(int(seq_len))
            base = theta * ((factor * n / max_position_embeddings) - (factor - 1)) ** (rot_dim / (rot_dim - 2))
            inv_freq = _inv_freq(base, rot_dim)
    elif kind == "yarn":
        factor = s["factor"]
        af = s.get("attention_factor")
        if af is None:
            def mscale(scale, m=1.0):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            # DeepSeek-style configs give both mscale and mscale_all_dim; transformers uses their ratio only
            # when both are set (and non-zero), else the paper's 0.1*ln(s)+1 -- a lone mscale is ignored.
            if s.get("mscale") and s.get("mscale_all_dim"):
                af = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
            else:
                af = mscale(factor)
        attention_factor = float(af)
        beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1  # 0 means default, as in HF

        def pair_turning(rotations):  # the (fractional) pair index that turns `rotations` times within orig
            return rot_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low, high = pair_turning(beta_fast), pair_turning(beta_slow)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rot_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(rot_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1 for fast pairs (extrapolate: unchanged), 0 for slow ones (interpolate: / factor)
        pos_freqs = theta ** (torch.arange(0, rot_dim, 2).float() / rot_dim)
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    elif kind == "llama3":
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        base_freq = _inv_freq(theta, rot_dim)
        wavelen = 2 * math.pi / base_freq
        scaled = torch.where(wavelen > orig / lo, base_freq / factor, base_freq)  # long waves: interpolate
        smooth = (orig / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
        inv_freq = torch.where(medium, blended, scaled)
    else:  # longrope
        long = seq_len is not None and seq_len > orig
        ext = s["long_factor" if long else "short_factor"]
        if len(ext) != rot_dim // 2:
            raise AcornError(f"rope scaling key {'long_factor' if long else 'short_factor'!r} has {len(ext)} "
                             f"values; it needs one per rotary pair ({rot_dim // 2})")
        factor = s.get("factor") or max_position_embeddings / orig
        af = s.get("attention_factor")
        if af is None:
            af = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        attention_factor = float(af)
        shape = torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim
        inv_freq = 1.0 / (torch.tensor(ext, dtype=torch.float32) * theta ** shape)
    return inv_freq.to(device=device, dtype=torch.float32), attention_factor


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, attention_factor: float = 1.0,
                 dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) -> cos, sin (B, T, rot_dim), each pair's angle written twice (rotate_half layout).
    float32 throughout: bf16 angles at position 4096 are off by whole radians."""
    freqs = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float32)
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1): pair i is (x[i], x[i + d/2]), rotated by its angle below."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, head_dim): rotate the first cos.shape[-1] dims of every head; the rest pass through."""
    rot_dim = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    if rot_dim == x.shape[-1]:
        return (x * cos) + (_rotate_half(x) * sin)
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    return torch.cat(((x_rot * cos) + (_rotate_half(x_rot) * sin), x_pass), dim=-1)
