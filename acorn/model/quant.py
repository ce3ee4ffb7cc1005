"""Weight-only quantization: int8 per channel, int4 group-wise, NF4 with double quantization.

A linear layer's weight W (out x in) is stored in fewer bits and turned back into
floats (dequantized) when it is used; activations stay in floating point. Memory
and, where a packed kernel exists, time shrink; the price is a rounding error in
every weight, bounded as stated for each method:

  int8  one symmetric scale per output row, s = absmax(row) / 127, q = round(w / s)
        in [-127, 127]; w' = q s, so |w - w'| <= s/2 (LLM.int8()'s weight format without
        the outlier path, Dettmers et al. 2022; gpt-fast's int8).
  int4  group-wise and asymmetric (GPTQ/AWQ-style groups of 32 to 256 inputs): each
        group's [min, max] is mapped onto the codes 0..15, w' = q s + m with
        s = (max - min) / 15, so |w - w'| <= s/2. The zero point (the code where 0.0
        falls, -m/s) is kept as the float offset m, as llama.cpp's Q4_1 and torch's int4
        kernels keep it: an integer zero point would shift the grid off [min, max] and
        break the s/2 bound at the ends of the group.
  nf4   NormalFloat4 (QLoRA, Dettmers et al. 2023): blocks of 64 weights (QLoRA's) scaled by their
        absmax onto [-1, 1] and rounded to the nearest of 16 code values placed at quantiles
        of a normal distribution (NF4_CODE, bitsandbytes' table). Double quantization: the
        fp32 absmax of every block is itself quantized to 8 bits, in blocks of 256, after
        subtracting their mean (bitsandbytes' compress_statistics; its 8-bit "dynamic" code),
        which takes the scales from 32/64 = 0.5 to about 8/64 + 32/(64*256) = 0.127 bits
        per weight. |w - w'| <= a' * 0.152 + |a - a'|, with a the block absmax, a' its
        double-quantized value and 0.152 half the widest gap between neighbouring codes.

Storage (what the state dict and a saved checkpoint hold) is portable: 4-bit codes two
to a byte, first code in the high nibble (bitsandbytes' and torch's order), scales in
bfloat16, which stores any weight's range. The kernels' layouts are their own (torch's
CPU int4 layout is a blocked one, its CUDA one is tiled for the GPU), so a layer converts
its codes on first use and keeps the converted copy beside the portable one; that copy
is not counted in `footprint` nor saved.

Kernels. int8 uses torch.ops.aten._weight_int8pack_mm; int4 uses
_weight_int4pack_mm_for_cpu (after _convert_weight_to_int4pack_for_cpu) on CPU and
_weight_int4pack_mm on CUDA. Each is used only after a probe on a small random layer
gives the same output as the fallback here (unpack, dequantize, F.linear), because
their names, argument layouts and dtype support have changed between torch versions;
a layer whose shape a kernel refuses (torch's CPU int4 kernel wants out_features % 16
== 0) falls back alone. Kernels have no backward, so a forward that needs gradients
through the input (LoRA on a quantized base) takes the fallback. NF4 always dequantizes
to the input's dtype and calls F.linear, as bitsandbytes does for its CPU path.
On the CPU measured (benchmarks/quant.py) torch's int8/int4 kernels are fast only with
bfloat16 activations (0.4-0.5x the time of a bf16 F.linear at 1024 x 1024); with float32
activations they are 5-12x slower than an fp32 F.linear, so on a CPU with bf16
instructions acorn.load loads a quantized checkpoint in bfloat16 unless given a dtype
(default_load_dtype; pass dtype="float32" for float32 activations).

What is quantized. Every nn.Linear of the blocks (q/k/v/o_proj, gate/up/down_proj).
The embeddings and the output head stay in floating point by default, as llama.cpp
keeps its output.weight at 6 bits or more in most of its mixes: the head's errors land
directly in the logits, and in small models vocab x d_model is a large share of the
weights, so quantizing it costs the most quality per byte saved. An untied head can be
quantized with skip=(); a tied head is the embedding table and cannot (quantizing
it would untie it and hold it twice). Embedding lookups gain no compute from packed
weights and stay float. Mixture-of-experts experts are stacked parameters, not
nn.Linear, and stay float too (the router's nn.Linear is not a target either).

A quantized checkpoint is the usual directory with the packed tensors under the layer
names (`...q_proj.weight` uint8/int8, `...q_proj.scale`, ...) and a `quantization`
section in config.json (method, group size, modules); acorn.load rebuilds it.
transformers reads quantized checkpoints only in formats of its own quantizers, so to
hand one to transformers, `dequantize` it and save.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acorn.errors import AcornError

METHODS = ("int8", "int4", "nf4")
GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = {"int8": None, "int4": 128, "nf4": 64}
NF4_SECOND_BLOCK = 256  # absmax values per block of the second-level (double) quantization
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
SCALE_DTYPE = torch.bfloat16

# NormalFloat4: QLoRA's 16 values, exactly as bitsandbytes tabulates them (float32).
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=torch.float32)


def dynamic_code() -> Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (create_dynamic_map(signed=True)), which
    quantizes the NF4 absmax values: a sign, a run of zero bits giving a power of ten from
    1e-6 to 1, then a linear fraction in whatever bits remain -- 256 values, fine near zero
    and coarse near 1 (Dettmers 2016, 8-bit approximations). Computed as bitsandbytes
    computes it, float32 operation for float32 operation, so the values are its own."""
    data = []
    for i in range(7):  # exponents 1e-6 ... 1e0, with 2**i fraction values each
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


_DYNAMIC = dynamic_code()
# Byte -> its two NF4 values (high nibble first): one lookup per byte dequantizes two weights.
_NF4_PAIRS = torch.stack([NF4_CODE[torch.arange(256) >> 4], NF4_CODE[torch.arange(256) & 15]], dim=-1)


# -------------------------------------------------------------- helpers
def _pack(codes: Tensor) -> Tensor:
    """(..., 2k) codes 0..15 -> (..., k) uint8, the first of each pair in the high nibble."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] << 4) | codes[..., 1::2]


def _unpack(packed: Tensor) -> Tensor:
    """The inverse of _pack: (..., k) uint8 -> (..., 2k) uint8 codes."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).flatten(-2)


def _round_to(x: Tensor, dtype: torch.dtype, direction: int) -> Tensor:
    """x (float32) rounded to a value of `dtype`, towards -inf (direction -1) or +inf (+1),
    returned as float32. Scales are stored in bfloat16: rounding the group minimum down
    and the step up keeps [min, max] inside the stored grid, so no weight is clamped
    and the s/2 bound holds for the stored s."""
    r = x.to(dtype)
    wrong = r.float() < x if direction > 0 else r.float() > x  # round-to-nearest went the other way
    return torch.where(wrong, torch.nextafter(r, torch.full_like(r, direction * math.inf)), r).float()


def _kernels_allowed(x: Tensor) -> bool:
    # The packed kernels have no backward: an input that needs a gradient takes the fallback.
    return not (torch.is_grad_enabled() and x.requires_grad)


# Which kernel calls work here: (kind, device type, dtype) -> bool, filled by _probe.
_PROBED: dict[tuple[str, str, torch.dtype], bool] = {}
USE_KERNELS = True  # False: every layer takes the pure-torch fallback (tests, comparisons)


def _probe(kind: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the packed kernel for `kind` runs on this device and dtype and gives the
    fallback's output on a small random layer. Asked once per (kind, device, dtype)."""
    key = (kind, device.type, dtype)
    if key not in _PROBED:
        _PROBED[key] = False  # a probe that recurses or raises counts as 'no'
        try:
            g = torch.Generator().manual_seed(0)
            lin = nn.Linear(256, 64, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(64, 256, generator=g) * 0.05)
            layer = (Int8Linear.from_linear(lin) if kind == "int8" else Int4Linear.from_linear(lin, 64)).to(device)
            x = torch.randn(3, 256, generator=g).to(device=device, dtype=dtype)
            with torch.no_grad():
                fast = layer._kernel_forward(x)
                slow = F.linear(x.float(), layer.dequantize(torch.float32))
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            _PROBED[key] = fast is not None and torch.allclose(fast.float(), slow, rtol=tol,
                                                               atol=tol * slow.abs().max())
        except Exception:  # a missing op, or one whose arguments changed in this torch
            _PROBED[key] = False
    return _PROBED[key]


def kernel_path(method: str, device="cpu", dtype=torch.float32) -> str:
    """The matmul a `method` layer takes here: a torch op's name, or 'fallback (...)'."""
    device = torch.device(device)
    if method == "nf4":
        return "fallback (dequantize to the input dtype + F.linear)"
    if method not in ("int8", "int4"):
        raise AcornError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    if USE_KERNELS and _probe(method, device, dtype):
        if method == "int8":
            return "aten._weight_int8pack_mm"
        return "aten._weight_int4pack_mm_for_cpu" if device.type == "cpu" else "aten._weight_int4pack_mm"
    return FALLBACK


FALLBACK = "fallback (unpack + dequantize + F.linear)"


# -------------------------------------------------------------- modules
class _QuantLinear(nn.Module):
    """What the three layers share: shapes, a frozen float bias, the kernel cache."""

    method = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, device, dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # The bias stays float and frozen: a quantized layer is a base that is not trained.
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype or torch.float32),
                                 requires_grad=False) if bias else None
        self._cache: dict = {}  # the kernel's layout of the weight and scales, by device (and dtype)

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half() ...: the codes and scales move but keep their dtype (a cast
        would round the fp32 NF4 scales, or make codes of floats); the bias follows the model."""
        self._cache = {}  # the kernel copies belong to the old device or dtype
        stored = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in stored.items():
            new = self._buffers[name]
            if old is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def _bias(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def _kernel_forward(self, x2: Tensor) -> Tensor | None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        if USE_KERNELS and self.method != "nf4" and _kernels_allowed(x) and _probe(self.method, x.device, x.dtype):
            y = self._kernel_forward(x.reshape(-1, self.in_features).contiguous())
            if y is not None:
                y = y.reshape(*x.shape[:-1], self.out_features)
                return y if self.bias is None else y + self._bias(y.dtype)
        return self._fallback(x)

    def _fallback(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantize(x.dtype), self._bias(x.dtype))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def to_linear(self) -> nn.Linear:
        """An nn.Linear holding the dequantized weight (float32, or the bias's dtype)."""
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        w = self.dequantize(dtype)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if getattr(self, "group_size", None) else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{group}"


class Int8Linear(_QuantLinear):
    """weight int8 (out, in) and one bfloat16 scale per output row: W = weight * scale[:, None]."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=SCALE_DTYPE, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, w.device,
                    linear.bias.dtype if linear.bias is not None else None)
        # Rounded up in bfloat16, so |w| / scale <= 127 and nothing is clamped.
        scale = _round_to((w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny), SCALE_DTYPE, +1)
        layer.weight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        layer.scale.copy_(scale.to(SCALE_DTYPE))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (self.weight.float() * self.scale.float()[:, None]).to(dtype)

    def _fallback(self, x: Tensor) -> Tensor:
        # The scale is per output row, so it scales the output instead of W: one cast of W, no second pass.
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self._bias(x.dtype)

    def _kernel_forward(self, x2: Tensor) -> Tensor | None:
        key = (x2.device, x2.dtype)
        if key not in self._cache:
            self._cache[key] = self.scale.to(x2.dtype)
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight, self._cache[key])


class Int4Linear(_QuantLinear):
    """weight uint8 (out, in/2): two 4-bit codes per byte; scale and offset bfloat16
    (out, in/group_size): W[o, i] = code * scale[o, i // g] + offset[o, i // g]."""

    method = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None,
                 group_size: int = 128):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.group_size = group_size
        n_groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=SCALE_DTYPE, device=device))
        self.register_buffer("offset", torch.zeros(out_features, n_groups, dtype=SCALE_DTYPE, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> "Int4Linear":
        out_f, in_f = linear.out_features, linear.in_features
        w = linear.weight.detach().float().reshape(out_f, in_f // group_size, group_size)
        layer = cls(in_f, out_f, linear.bias is not None, w.device,
                    linear.bias.dtype if linear.bias is not None else None, group_size=group_size)
        lo = _round_to(w.amin(-1), SCALE_DTYPE, -1)
        scale = _round_to(((w.amax(-1) - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny), SCALE_DTYPE, +1)
        codes = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15)
        layer.weight.copy_(_pack(codes.reshape(out_f, in_f)))
        layer.scale.copy_(scale.to(SCALE_DTYPE))
        layer.offset.copy_(lo.to(SCALE_DTYPE))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def codes(self) -> Tensor:
        """(out, in) uint8 codes 0..15."""
        return _unpack(self.weight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        q = self.codes().float().reshape(self.out_features, -1, self.group_size)
        w = q * self.scale.float()[..., None] + self.offset.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    def _kernel_forward(self, x2: Tensor) -> Tensor | None:
        if x2.device not in self._cache:  # the packed codes: one copy per device, whatever the dtype
            self._cache[x2.device] = self._kernel_layout(x2.device)
        packed = self._cache[x2.device]
        if packed is None:
            return None
        key = (x2.device, x2.dtype)
        if key not in self._cache:
            # torch's kernels dequantize as (code - 8) * scale + zero: their zero is the value of code 8.
            s, m = self.scale.float(), self.offset.float()
            self._cache[key] = torch.stack([s, m + 8 * s], dim=-1).transpose(0, 1).contiguous().to(x2.dtype)
        scales_and_zeros = self._cache[key]
        if x2.device.type == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scales_and_zeros)
        return torch.ops.aten._weight_int4pack_mm(x2, packed, self.group_size, scales_and_zeros)

    def _kernel_layout(self, device: torch.device) -> Tensor | None:
        """The codes in the kernel's layout, or None where this layer's shape is refused."""
        try:
            if device.type == "cpu":  # wants the codes unpacked, as int32 (out, in)
                return torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
            # CUDA wants the uint8 pairs as stored (high nibble first) and in_features % (16 * inner_k_tiles) == 0.
            tiles = next((t for t in (8, 4, 2) if self.in_features % (16 * t) == 0), None)
            if tiles is None:
                return None
            return torch.ops.aten._convert_weight_to_int4pack(self.weight.contiguous(), tiles)
        except (RuntimeError, AttributeError, NotImplementedError):
            return None


class NF4Linear(_QuantLinear):
    """NF4 codes of blocks of `group_size` weights (row-major, two per byte) with
    double-quantized absmax: absmax = DYNAMIC[absmax_code] * absmax_scale[block // 256]
    + absmax_offset; W = NF4_CODE[code] * absmax[block].

    A frozen base for QLoRA: the codes are buffers (no gradient can reach them); the
    forward dequantizes to the input's dtype, so gradients flow to the input."""

    method = "nf4"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None,
                 group_size: int = 64):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.group_size = group_size
        n_blocks = out_features * in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("absmax_code", torch.zeros(n_blocks, dtype=torch.uint8, device=device))
        self.register_buffer("absmax_scale", torch.ones(math.ceil(n_blocks / NF4_SECOND_BLOCK), device=device))
        self.register_buffer("absmax_offset", torch.zeros(1, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> "NF4Linear":
        out_f, in_f = linear.out_features, linear.in_features
        w = linear.weight.detach().float().reshape(-1, group_size)
        layer = cls(in_f, out_f, linear.bias is not None, w.device,
                    linear.bias.dtype if linear.bias is not None else None, group_size=group_size)
        absmax = w.abs().amax(1)
        # As bitsandbytes: multiply by the reciprocal, clamp, nearest code (an all-zero block stays 0).
        scaled = (w * torch.where(absmax > 0, 1 / absmax, 0)[:, None]).clamp(-1, 1)
        layer.weight.copy_(_pack(_nearest(scaled, NF4_CODE.to(w.device)).reshape(out_f, in_f)))
        code, scale, offset = _quantize_absmax(absmax)
        layer.absmax_code.copy_(code)
        layer.absmax_scale.copy_(scale)
        layer.absmax_offset.copy_(offset)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def absmax(self) -> Tensor:
        """The double-quantized absmax of every block (float32)."""
        q = _DYNAMIC.to(self.absmax_code.device)[self.absmax_code.long()]
        n = q.numel()
        scale = self.absmax_scale.repeat_interleave(NF4_SECOND_BLOCK)[:n]
        return q * scale + self.absmax_offset

    def codes(self) -> Tensor:
        """(out, in) uint8 indices into NF4_CODE."""
        return _unpack(self.weight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        # F.embedding as the byte -> value-pair lookup: about twice as fast as indexing on CPU.
        values = F.embedding(self.weight.int(), _NF4_PAIRS.to(self.weight.device)).reshape(-1, self.group_size)
        w = values * self.absmax()[:, None]
        return w.reshape(self.out_features, self.in_features).to(dtype)


def _nearest(x: Tensor, code: Tensor) -> Tensor:
    """Index of the nearest value of the sorted `code` for every element of x: a search
    among the midpoints, a tie going to the lower value (bitsandbytes' reference does the same)."""
    return torch.bucketize(x, (code[:-1] + code[1:]) / 2)


def _quantize_absmax(absmax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """bitsandbytes' double quantization of the NF4 block scales: subtract their mean, then
    8-bit blockwise quantization (blocks of 256) with the dynamic code.
    Returns (codes uint8, per-256-block absmax float32, the mean as a 1-element tensor)."""
    offset = absmax.mean()
    centred = absmax - offset
    n = centred.numel()
    pad = (-n) % NF4_SECOND_BLOCK
    blocks = F.pad(centred, (0, pad)).reshape(-1, NF4_SECOND_BLOCK)
    scale = blocks.abs().amax(1)
    scaled = (blocks * torch.where(scale > 0, 1 / scale, 0)[:, None]).clamp(-1, 1)
    codes = _nearest(scaled, _DYNAMIC.to(absmax.device)).reshape(-1)[:n].to(torch.uint8)
    return codes, scale, offset.reshape(1)


MODULES = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}


# ------------------------------------------------------------ model level
def _targets(model: nn.Module, skip) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers `quantize` replaces, by name, minus those matched by skip
    (a name, a last component such as 'lm_head', or a glob like 'model.layers.0.*')."""
    out = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name.rpartition(".")[2] not in TARGETS:
            continue
        if any(fnmatch.fnmatchcase(name, s) or name.rpartition(".")[2] == s for s in skip):
            continue
        out.append((name, module))
    return out


def check_method(method: str, group_size: int | None) -> int | None:
    if method not in METHODS:
        raise AcornError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    if method == "int8":
        if group_size is not None:
            raise AcornError("int8 has one scale per output channel, not groups; give --group-size only "
                             "with int4 or nf4")
        return None
    group_size = DEFAULT_GROUP_SIZE[method] if group_size is None else group_size
    if group_size not in GROUP_SIZES:
        raise AcornError(f"group size {group_size} is not supported for {method}; use one of "
                         f"{', '.join(map(str, GROUP_SIZES))}")
    return group_size


def quantize(model: nn.Module, method: str, *, group_size: int | None = None, skip=("lm_head",)) -> nn.Module:
    """Replace the model's linear layers (see TARGETS) by `method`'s quantized layers, in
    place, and return the model. group_size: int4 (default 128) and nf4 (default 64,
    QLoRA's block); int8 takes none. skip: layers kept in floating point (default the
    output head; see the module docstring). Every layer is checked before any changes."""
    group_size = check_method(method, group_size)
    if quantization_of(model) is not None:
        raise AcornError("the model is already quantized; quantize the float model (or dequantize first)")
    skip = tuple(skip or ())
    targets = _targets(model, skip)
    if not targets:
        raise AcornError(f"no linear layer to quantize (skip={skip!r} leaves none of {', '.join(TARGETS)})")
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    for name, lin in targets:
        if embed is not None and lin.weight is embed.weight:
            raise AcornError(f"{name} is tied to the token embeddings; keep it in skip (quantizing it would "
                             "untie it and store the matrix twice)")
        if lin.weight.device.type == "meta":
            raise AcornError("the model has no weights yet (meta device); load or build it first")
        if group_size and lin.in_features % group_size:
            raise AcornError(f"group size {group_size} does not divide {name}'s {lin.in_features} input features; "
                             f"use a group size that divides it (one of "
                             f"{', '.join(str(g) for g in GROUP_SIZES if lin.in_features % g == 0) or 'none'})")
    for name, lin in targets:
        q = MODULES[method].from_linear(lin) if method == "int8" else MODULES[method].from_linear(lin, group_size)
        _set(model, name, q)
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized layer by an nn.Linear holding its dequantized weight, in
    place (a float model that saves as a plain Hugging Face checkpoint)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, _QuantLinear):
            _set(model, name, module.to_linear())
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantization_of(model: nn.Module) -> dict | None:
    """The `quantization` section of config.json for a quantized model, None for a float one."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantLinear)]
    if not layers:
        return None
    methods = {m.method for _, m in layers}
    groups = {getattr(m, "group_size", None) for _, m in layers}
    if len(methods) > 1 or len(groups) > 1:
        raise AcornError(f"the model mixes quantization methods or group sizes ({sorted(methods)}, "
                         f"{sorted(groups, key=str)}); a checkpoint records one")
    spec = {"method": methods.pop(), "group_size": groups.pop(), "modules": [n for n, _ in layers],
            "scale_dtype": "bfloat16" if layers[0][1].method != "nf4" else "float32", "format": "acorn"}
    if spec["method"] == "nf4":
        spec["double_quant"] = {"block_size": NF4_SECOND_BLOCK, "code": "bitsandbytes dynamic (signed, 8-bit)"}
    return spec


def stored_tensors(model: nn.Module) -> set[str]:
    """State-dict names of quantized storage (codes and scales): saved in their own dtype,
    never cast to the checkpoint's float dtype."""
    return {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, _QuantLinear)
            for b, _ in m.named_buffers(recurse=False)}


def prepare(model: nn.Module, spec: dict, where: str = "config.json") -> nn.Module:
    """Swap in empty quantized layers as `spec` (a config.json quantization section)
    describes, on the model's device (meta when loading), so a checkpoint's packed
    tensors can be assigned to them."""
    if not isinstance(spec, dict) or not isinstance(spec.get("modules"), list):
        raise AcornError(f"{where}: its quantization section is not Acorn's (method, group_size, modules); "
                         "it was not written by acorn quantize")
    method = spec.get("method")
    try:
        group_size = check_method(method, spec.get("group_size"))
    except AcornError as e:
        raise AcornError(f"{where}: quantization: {e}") from None
    for name in spec["modules"]:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            lin = None
        if type(lin) is not nn.Linear:
            raise AcornError(f"{where}: quantization lists {name!r}, which is not a linear layer of this model")
        if group_size and lin.in_features % group_size:
            raise AcornError(f"{where}: quantization group size {group_size} does not divide {name}'s "
                             f"{lin.in_features} input features")
        extra = {} if method == "int8" else {"group_size": group_size}
        bias = lin.bias is not None
        _set(model, name, MODULES[method](lin.in_features, lin.out_features, bias, device=lin.weight.device,
                                          dtype=lin.bias.dtype if bias else None, **extra))
    return model


def footprint(model: nn.Module) -> int:
    """Bytes of the model's weights: parameters and buffers, a tied matrix once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.device, t.data_ptr()) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def default_load_dtype(saved, device: torch.device):
    """The float dtype a quantized checkpoint loads in when none is asked for: bfloat16 on a
    CPU with bf16 instructions (AMX, AVX512-BF16), where torch's int8/int4 kernels are fast
    only with bf16 activations (see the module docstring), else `saved` (the config's)."""
    from acorn.hardware import cpu_has_bf16

    return "bfloat16" if device.type == "cpu" and cpu_has_bf16() else saved


def float_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's float weights (a quantized head is not one)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
