"""Linear weights laid out for fast inference: fused projections and pre-packed bf16.

A decode step multiplies one token's vector (or a few) by every weight matrix of the
model. At that size the matmul kernel's fixed costs matter as much as its FLOPs, and
two things help on a CPU:

  fusion     q, k and v read the same input, and so do SwiGLU's gate and up
             projections: their weights concatenated along the output make one
             matmul instead of three (two), one kernel launch and one pass over
             the input. The model splits the output again (transformer.Attention.qkv,
             MLP.forward), so the numbers are the same matmuls' (for float
             weights; int8/int4 codes are concatenated with their scales, which
             are per output row or per group of a row, so each row is unchanged).
  packing    torch's bfloat16 F.linear on CPU reorders the weight into oneDNN's
             blocked layout on every call, which costs more than the matmul at
             batch 1. torch.ops.mkldnn._reorder_linear_weight does that once;
             mkldnn._linear_pointwise then runs oneDNN's AMX / AVX512-BF16 kernel on
             the packed copy (the path torch.compile's CPU backend takes for bf16
             linears). Measured here at batch 1: 1.5-3x faster than F.linear in bf16,
             and 1.2-3x faster than float32 (benchmarks/llamacpp.py). float32 gains
             nothing from packing (its F.linear is already MKL's sgemm), so float32
             weights are only fused.

A Pack is a cache beside the model's own weights, never a replacement: the parameters
stay where they are (state_dict, saving, LoRA, training all see them unchanged), and
a Pack checks on every call that its source layers are still the owner's and their
tensors unchanged (same storage, same version counter: an optimizer step or a
load_state_dict bumps it), rebuilding itself when they changed. It steps aside (the
caller runs the plain layers) when gradients are on, when a layer was replaced (LoRA,
quantization) or when its layers are of kinds it does not fuse. So `pack(model)`
speeds up inference and changes nothing else: the engine calls it (Engine's
pack_weights=True, the default), `unpack(model)` takes the caches away.

Quantized models: q/k/v and gate/up of int8 (int4) layers fuse into one int8 (int4) layer,
their codes and scales concatenated. The output head, which quantization leaves in floating
point, can run from an int8 copy where the activations are bf16 (pack's int8_head, off by
default: see pack).

Memory: a packed bf16 copy holds the weights a second time (the model's own stay for
the backward pass and saving); float32 fusion and the quantized fusion hold the fused
groups (q/k/v, gate/up) a second time.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MKLDNN_BF16: bool | None = None


def mkldnn_bf16() -> bool:
    """Whether torch can run oneDNN's packed bf16 linear here (and gives F.linear's numbers)."""
    global _MKLDNN_BF16
    if _MKLDNN_BF16 is None:
        _MKLDNN_BF16 = False
        try:
            if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
                g = torch.Generator().manual_seed(0)
                w = torch.randn(48, 64, generator=g).bfloat16()
                x = torch.randn(3, 64, generator=g).bfloat16()
                with torch.no_grad():
                    y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 1),
                                                           None, "none", [], "")
                _MKLDNN_BF16 = torch.allclose(y.float(), F.linear(x, w).float(), rtol=2e-2, atol=2e-2)
        except (RuntimeError, AttributeError, NotImplementedError):
            _MKLDNN_BF16 = False
    return _MKLDNN_BF16


def _watched(modules) -> list[tuple[nn.Module, str, Tensor, int, int]]:
    """Every tensor of `modules` as (its module, its name, it, its version, its storage)."""
    out = []
    for m in modules:
        for name, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)):
            out.append((m, name, t, t._version, t.data_ptr()))
    return out


class Pack:
    """y = x @ W.T (+ b) for the layers `names` of `owner`, their outputs concatenated,
    in the fastest layout this device and dtype have. Calling it returns None where the
    caller must run its plain layers instead (see the module docstring)."""

    def __init__(self, owner: nn.Module, names: tuple[str, ...], int8: bool = False):
        self.owner, self.names = owner, names
        self.sources = tuple(getattr(owner, n) for n in names)
        self.int8 = int8  # an int8 copy of a float layer (the head of a quantized model): see pack()
        self._watch = None  # what the packed copy was made from; None: not built
        self._run = None

    def _valid(self) -> bool:
        """The source layers are still the owner's, and their tensors the same objects,
        storage and version as when the pack was built (an in-place update bumps the
        version; .to() or a new Parameter changes the object or the storage)."""
        if self._watch is None:
            return False
        modules = self.owner._modules
        for name, src in zip(self.names, self.sources):
            if modules.get(name) is not src:
                return False
        for module, name, t, version, ptr in self._watch:
            if getattr(module, name) is not t or t._version != version or t.data_ptr() != ptr:
                return False
        return True

    def __call__(self, x: Tensor) -> Tensor | None:
        if torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling():
            # Traced into a compiled decode step (acorn.infer.compiled), which checks that
            # every pack is built and valid (ready()) before each call: no checks in the graph.
            return None if self._run is None else self._run(x)
        if not self._valid():
            modules = self.owner._modules
            if any(modules.get(n) is not s for n, s in zip(self.names, self.sources)):
                return None  # replaced (LoRA, quantization): not ours to fuse any more
            self._run = self._build(x)
            self._watch = _watched(self.sources)
        return None if self._run is None else self._run(x)

    def _build(self, x: Tensor):
        """The function that computes the fused output, or None where packing gains nothing."""
        from acorn.model import quant

        mods = self.sources
        kinds = {type(m) for m in mods}
        if len(kinds) != 1:
            return None
        kind = kinds.pop()
        if kind is nn.Linear and self.int8 and len(mods) == 1 and x.device.type == "cpu" \
                and x.dtype == torch.bfloat16 and quant.kernel_path("int8", x.device, x.dtype) != quant.FALLBACK:
            return quant.Int8Linear.from_linear(mods[0])
        if kind is nn.Linear:
            w = mods[0].weight
            bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
            weight = torch.cat([m.weight.detach() for m in mods]) if len(mods) > 1 else w.detach()
            if w.device.type == "cpu" and w.dtype == torch.bfloat16 and mkldnn_bf16():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
                bias = None if bias is None else bias.contiguous()
                return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            if len(mods) == 1:
                return None  # one float layer: F.linear as it is
            return lambda x: F.linear(x, weight, bias)
        if len(mods) == 1 or kind not in (quant.Int8Linear, quant.Int4Linear):
            return None  # a lone quantized layer already runs its kernel; NF4 has no fused kernel
        if kind is quant.Int4Linear and len({m.group_size for m in mods}) != 1:
            return None
        fused = _fuse_quantized(mods)
        return fused

    # The pack is a cache: a copy of the model (an RL reference policy) gets an empty one
    # that points at the copy's own layers, and pickling drops the packed tensors.
    def __deepcopy__(self, memo):
        return Pack._restore(copy.deepcopy(self.__getstate__(), memo))

    def __getstate__(self):
        return {"owner": self.owner, "names": self.names, "sources": self.sources, "int8": self.int8}

    def __setstate__(self, state):
        self.__dict__.update(Pack._restore(state).__dict__)

    @staticmethod
    def _restore(state) -> "Pack":
        new = Pack.__new__(Pack)
        new.owner, new.names, new.sources = state["owner"], state["names"], state["sources"]
        new.int8 = state.get("int8", False)
        new._watch, new._run = None, None
        return new


def _fuse_quantized(mods) -> nn.Module:
    """One quantized layer holding the rows of `mods` one after another (codes and their
    per-row / per-group scales concatenated: each output row is computed as before)."""
    from acorn.model import quant

    first = mods[0]
    out = sum(m.out_features for m in mods)
    bias = first.bias is not None
    extra = {"group_size": first.group_size} if isinstance(first, quant.Int4Linear) else {}
    fused = type(first)(first.in_features, out, bias, device=first.weight.device,
                        dtype=first.bias.dtype if bias else None, **extra)
    with torch.no_grad():
        for name, _ in fused.named_buffers(recurse=False):
            getattr(fused, name).copy_(torch.cat([getattr(m, name) for m in mods]))
        if bias:
            fused.bias.copy_(torch.cat([m.bias for m in mods]))
    return fused


# The groups a block's layers are packed in, by the attribute of the module that owns them.
QKV, GATE_UP, OUT, DOWN, HEAD = "packed_qkv", "packed_gate_up", "packed_o", "packed_down", "packed_head"


def pack(model: nn.Module, *, int8_head: bool = False) -> nn.Module:
    """Attach packs to a Transformer's layers (idempotent); returns the model. The model's
    forward uses them under torch.no_grad / inference_mode, and only while valid.

    int8_head: run the float output head from an int8 copy (one scale per row, as
    acorn.model.quant's int8) where the activations are bf16 on CPU, as llama.cpp's Q8_0 /
    Q4_0 mixes keep their head at 8 bits; the embedding itself is untouched. Off by default
    (Engine(int8_head=True), `--int8-head` on the command line): it changes the logits, and
    it pays only in a compiled decode step, where inductor's int8 kernel for the 50M model's
    32,000 x 512 head beats the bf16 matmul (int8 model 0.66x -> 0.76-0.82x llama.cpp's Q8_0);
    eagerly torch's int8 kernel at batch 1 is compute-bound and took about the time of the
    packed bf16 matmul, though it reads half the bytes (0.33x -> 0.35x; benchmarks/llamacpp.py)."""
    from acorn.model.transformer import MLP, Attention, Transformer

    for module in model.modules():
        if isinstance(module, Attention) and QKV not in module.__dict__:
            module.__dict__[QKV] = Pack(module, ("q_proj", "k_proj", "v_proj"))
            module.__dict__[OUT] = Pack(module, ("o_proj",))
        elif isinstance(module, MLP) and GATE_UP not in module.__dict__:
            if module.kind == "swiglu":
                module.__dict__[GATE_UP] = Pack(module, ("gate_proj", "up_proj"))
            module.__dict__[DOWN] = Pack(module, ("down_proj",))
    if isinstance(model, Transformer) and HEAD not in model.__dict__:
        model.__dict__[HEAD] = Pack(model, ("lm_head",), int8=int8_head)
    return model


def unpack(model: nn.Module) -> nn.Module:
    """Drop every pack (and the memory its copies hold); returns the model."""
    for module in model.modules():
        for name in _GROUPS:
            module.__dict__.pop(name, None)
    return model


def ready(model: nn.Module) -> bool:
    """Whether every pack of the model is built from its layers' current tensors: what a
    compiled graph that traced the packs takes for granted (acorn.infer.compiled). A pack
    is built on its first call, so after one eager forward pass; a pack that stepped aside
    for a replaced layer (LoRA, quantization after packing) is never ready."""
    return all(p._valid() for m in model.modules() for p in (m.__dict__.get(n) for n in _GROUPS) if p is not None)


def is_packed(model: nn.Module) -> bool:
    return any(QKV in m.__dict__ or HEAD in m.__dict__ for m in model.modules())


def linear(module: nn.Module, name: str, x: Tensor) -> Tensor:
    """module.<layer>(x) through the layer's pack when there is a usable one (the
    single-layer packs: o_proj, down_proj, lm_head)."""
    p = module.__dict__.get(_SINGLE[name])
    if p is not None:
        y = p(x)
        if y is not None:
            return y
    return getattr(module, name)(x)


_SINGLE = {"o_proj": OUT, "down_proj": DOWN, "lm_head": HEAD}
_GROUPS = (QKV, GATE_UP, OUT, DOWN, HEAD)
