"""LoRA and QLoRA: train a small low-rank update beside a frozen model, stored in PEFT's layout.

LoRA (Hu et al. 2021). A linear layer y = W x is given a trainable update of rank r:

    y = W x + s * B (A dropout(x)),   A: (r, in), B: (out, r), s = alpha / r

W stays frozen; only A and B are trained, r * (in + out) numbers instead of in * out.
A starts random (Kaiming-uniform, as nn.Linear's default and PEFT's) and B at zero, so
the first step starts exactly at the base model. rsLoRA (Kalajdzievski 2023) scales by
s = alpha / sqrt(r) instead: with alpha / r the update's size falls as r grows, so large
ranks learned no better than small ones. After training, the update can be folded into
the weight, W' = W + s * B A (`merge`), which costs nothing at inference; `unmerge`
takes it out again.

QLoRA (Dettmers et al. 2023): the frozen base is stored as NF4 with double-quantized
scales (acorn.model.quant.NF4Linear); its forward dequantizes to the compute dtype (bf16
under autocast) and the adapters, in float32, learn on top. Gradients flow through the
dequantized base into the layers below; none reach the 4-bit codes, which are buffers.

Which layers. Targets are Hugging Face module names, as PEFT takes them: q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj (Acorn's own names, which are Llama's),
GPT-2's c_attn (q, k and v), c_proj (o_proj and down_proj) and c_fc (up_proj), a full
or dotted-suffix module name (`layers.0.self_attn.q_proj`), or `all-linear`: every
projection of the blocks, not the output head (as PEFT). Mixture-of-experts experts are
stacked tensors, not linear layers, and are not targets.

The adapter directory is PEFT's, so `peft.PeftModel.from_pretrained` loads what Acorn
trains and Acorn loads what PEFT trains:
  adapter_config.json          peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
                               lora_dropout, use_rslora, target_modules, bias "none",
                               base_model_name_or_path (a local path: nothing is fetched)
  adapter_model.safetensors    base_model.model.<HF module name>.lora_A.weight (r, in)
                               and .lora_B.weight (out, r), in the base's transformers
                               names (GPT-2's fused c_attn: one A, the three Bs stacked)

Several adapters at once. A LoRALinear holds named adapters (lora_A[name], lora_B[name],
scaling[name]), as PEFT's layers do, and `active` picks the one its forward applies:
training uses one. Serving many adapters in one batch (S-LoRA, Sheng et al. 2023; Punica,
Chen et al. 2023) lets each token pick its own: inside `use_adapters(model, index, names)`
token i applies adapter names[index[i]] (None: the base alone). Every token shares the base
matmul; the tokens are then sorted by adapter, each adapter present computes its low-rank
term on its contiguous slice (`delta`), and the terms go back in token order
(`LoRALinear.forward`). Punica's SGMV kernel does the same for all slices in one launch;
here it is one small loop.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.model import quant
from acorn.model.transformer import Transformer

# Acorn's linear layers that can carry an adapter (by last name component), which are
# also their Llama / Mistral / Qwen2 / Qwen3 names in transformers.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GPT-2's module names -> Acorn's (acorn.model.checkpoint splits and transposes them).
GPT2_NAMES = {"c_attn": ("q_proj", "k_proj", "v_proj"), "c_proj": ("o_proj", "down_proj"), "c_fc": ("up_proj",)}
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_QUANTIZED = tuple(quant.MODULES.values())


@dataclass
class LoRAConfig:
    """Train adapters instead of the full weights (`--lora.r 16`); every training stage has one."""

    r: int = 0  # rank of the update; 0: off, the full weights are trained
    alpha: float = 16.0  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # dropout on the adapter's input, in training only
    targets: list[str] = field(default_factory=lambda: ["all-linear"])  # HF module names, comma-separated on the CLI
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)
    quantize: Literal["nf4"] | None = None  # QLoRA: store the frozen base as NF4 (double-quantized)

    LIMITS: ClassVar[dict[str, str]] = {"r": ">= 0", "alpha": "> 0", "dropout": "[0, 1)"}


def scaling(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


# ------------------------------------------------------------------- layer
class LoRALinear(nn.Module):
    """A frozen linear layer (nn.Linear or a quantized one) plus named low-rank adapters.

    forward(x) = base_layer(x) + delta(x, active), delta(x, name) = s * B(A(dropout(x))).
    The parameter names are PEFT's (base_layer, lora_A.<name>, lora_B.<name>)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.alpha: dict[str, float] = {}  # what adapter_config.json records, with the kind of scaling
        self.rslora: dict[str, bool] = {}
        self.active: str | None = None  # the adapter forward applies; None: the base alone
        self.merged: list[str] = []  # adapters folded into the base weight (forward skips them)
        self._stack: tuple | None = None  # (key, A, B): a mixed batch's adapters side by side (stacked)

    # nn.Linear's attributes, so code that reads a layer's weight (model.dtype) keeps working.
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def add_adapter(self, name: str, r: int, alpha: float, *, dropout: float = 0.0, rslora: bool = False,
                    dtype: torch.dtype = torch.float32) -> None:
        """A new adapter, initialised as PEFT does: A Kaiming-uniform, B zero (the update starts at 0)."""
        if name in self.lora_A:
            raise AcornError(f"the model already has an adapter named {name!r}; choose another name")
        device = self.base_layer.bias.device if self.base_layer.bias is not None else self.weight.device
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling[name] = scaling(r, alpha, rslora)
        self.alpha[name], self.rslora[name] = alpha, rslora
        self._stack = None
        if self.active is None:
            self.active = name

    def delta_weight(self, name: str) -> Tensor:
        """s * B A (out, in), in float32: what merging adds to the base weight."""
        return self.scaling[name] * (self.lora_B[name].weight.float() @ self.lora_A[name].weight.float())

    def delta(self, x: Tensor, name: str) -> Tensor:
        """One adapter's term for every row of x: training and single-adapter inference call
        it once, a batch of many adapters once per adapter on its own rows (forward)."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        x = x.to(a.dtype)
        if self.training:  # dropout is the identity otherwise: skipping the call saves a serving step ~1k of them
            x = self.lora_dropout[name](x)
        return F.linear(F.linear(x, a), b) * self.scaling[name]

    def applies(self, name: str | None) -> bool:
        """Whether forward adds adapter `name`: not when this layer lacks it or has it merged."""
        return name is not None and name in self.lora_A and name not in self.merged

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        routing = _ROUTING.get().get(id(self))
        if routing is None:  # one adapter for every token
            return y + self.delta(x, self.active).to(y.dtype) if self.applies(self.active) else y
        # Each token its own adapter (S-LoRA / Punica). The base matmul is shared by every
        # token. Each adapter's tokens are one contiguous slice of the tokens sorted by adapter
        # (Punica's segments; the engine already orders a step's requests by adapter, so
        # there is usually nothing to sort). The adapter terms are r * (in + out)
        # multiply-adds a token, ~2r/d of the base's (6% at r=16, d=512): small FLOPs, but
        # two matmuls per adapter per layer make ~900 launches a step for 8 adapters, whose
        # fixed cost is what shows on a small model. So at inference the segments are laid
        # out as k rows of one length and run as one batched matmul pair for all adapters
        # (Punica's SGMV in one launch; AdapterRouting.padded, LoRALinear.stacked); with
        # autograd on (training), or segments too uneven to pad, one pair per segment.
        # (A gather and a scatter-add per adapter was ~5x slower on CPU.)
        order, inverse, segments = routing.plan(x.shape[:-1], x.device)
        if len(segments) == 1:  # every token has the same adapter
            name = segments[0][0]
            return y + self.delta(x, name).to(y.dtype) if self.applies(name) else y
        if not any(self.applies(name) for name, _, _ in segments):
            return y
        padded = routing.padded(x.shape[:-1], x.device) if not torch.is_grad_enabled() else None
        if padded is not None:  # inference: every segment in one batched matmul pair (see stacked)
            gather, scatter, length = padded
            a, b = self.stacked([name for name, _, _ in segments])
            xs = x.reshape(-1, x.shape[-1]).index_select(0, gather).view(len(segments), length, -1)
            terms = torch.bmm(torch.bmm(xs.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))
            return y + terms.view(-1, y.shape[-1]).index_select(0, scatter).to(y.dtype).view(y.shape)
        tokens = x.reshape(-1, x.shape[-1])
        if order is not None:
            tokens = tokens.index_select(0, order)
        terms = torch.cat([self.delta(tokens[a:b], name).to(y.dtype) if self.applies(name)
                           else y.new_zeros(b - a, y.shape[-1]) for name, a, b in segments])
        return y + (terms if inverse is None else terms.index_select(0, inverse)).view(y.shape)

    def stacked(self, names: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        """The adapters `names` side by side for a batched matmul: A (k, r, in) and B (k, out, r),
        B scaled, r the largest rank (a smaller rank is padded with zero rows of A and zero
        columns of B, which add nothing), zeros for a name this layer does not apply (the base,
        a merged adapter). Kept until the names or an adapter's weights change (the tensors'
        version counters are in the key)."""
        # The key: the names, the merged ones, and the version counter of every weight stacked
        # (an in-place update, by an optimizer or load_adapter, bumps it). Read off the
        # tensors kept with the stack: a decode step asks each layer once, so this is cheap.
        if self._stack is not None and self._stack[0] == (tuple(names), tuple(self.merged)) \
                and self._stack[3] == tuple(t._version for t in self._stack[4]):
            return self._stack[1:3]
        live = [n if self.applies(n) else None for n in names]
        ranks = [self.lora_A[n].weight.shape[0] for n in live if n]
        ref = self.lora_A[next(n for n in live if n)].weight  # forward calls this only when one applies
        r = max(ranks)
        a = ref.new_zeros(len(names), r, self.in_features)
        b = ref.new_zeros(len(names), self.out_features, r)
        for i, n in enumerate(live):
            if n:
                rank = self.lora_A[n].weight.shape[0]
                a[i, :rank] = self.lora_A[n].weight
                b[i, :, :rank] = self.lora_B[n].weight * self.scaling[n]
        weights = [t for n in live if n for t in (self.lora_A[n].weight, self.lora_B[n].weight)]
        self._stack = ((tuple(names), tuple(self.merged)), a, b, tuple(t._version for t in weights), weights)
        return self._stack[1:3]

    # ---- merge / unmerge
    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold adapter `name` (default: the active one) into the base weight: W += s B A."""
        name = name or self.active
        if name is None or name not in self.lora_A or name in self.merged:
            return
        if not isinstance(self.base_layer, nn.Linear):
            raise AcornError("merging into a quantized base would round the update away; dequantize the base "
                             "first (merge_and_unload does) or keep the adapter unmerged")
        w = self.base_layer.weight
        w.copy_((w.float() + self.delta_weight(name)).to(w.dtype))
        self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take every merged adapter out of the base weight again: W -= s B A."""
        w = self.base_layer.weight
        while self.merged:
            w.copy_((w.float() - self.delta_weight(self.merged.pop())).to(w.dtype))

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{n}: r={self.lora_A[n].out_features} scale={self.scaling[n]:g}" for n in self.lora_A)
        return f"adapters [{ranks}], active={self.active!r}"


# ----------------------------------------------------------- the model
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _linears(model: Transformer) -> dict[str, nn.Module]:
    """The layers an adapter can go on: the blocks' projections (float or quantized), and an
    untied output head (a tied one is the embedding table too: merging would change both)."""
    out = {}
    for name, m in model.named_modules():
        leaf = name.rpartition(".")[2]
        if isinstance(m, (nn.Linear, *_QUANTIZED, LoRALinear)) and leaf in LINEAR_NAMES:
            out[name] = m
    if not model.config.tie_embeddings:
        out["lm_head"] = model.lm_head
    return out


def resolve_targets(model: Transformer, targets) -> list[str]:
    """Module names of the layers `targets` selects (see the module docstring); an
    AcornError listing the available names when one matches nothing."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not targets:
        raise AcornError("no LoRA targets given; use --lora.targets all-linear or names like q_proj,v_proj")
    linears = _linears(model)
    available = sorted({n.rpartition(".")[2] for n in linears})
    chosen: set[str] = set()
    for t in targets:
        if t == "all-linear":
            found = [n for n in linears if n != "lm_head"]
        elif t in GPT2_NAMES:  # PEFT matches a bare c_proj in attention and in the MLP alike
            found = [n for n in linears if n.rpartition(".")[2] in GPT2_NAMES[t]]
        else:  # PEFT's rule: the whole name, or its last dotted components
            found = [n for n in linears if n == t or n.endswith("." + t)]
        if not found:
            hint = " (lm_head is tied to the embeddings and takes no adapter)" if t == "lm_head" else ""
            raise AcornError(f"LoRA target {t!r} matches no linear layer of this model{hint}; available names: "
                             f"{', '.join(available + ['all-linear'])} (GPT-2's c_attn, c_proj, c_fc also work)")
        chosen.update(found)
    return [n for n in linears if n in chosen]  # in the model's order


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    global _STRUCTURE
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
    _STRUCTURE += 1


# Which LoRALinear layers a module holds, for use_adapters (a serving step asks once per
# step; walking a model's modules is ~14k Python calls). _set bumps the counter whenever a
# layer is wrapped or unwrapped, which makes every cached list stale.
_STRUCTURE = 0
_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (_STRUCTURE, its LoRALinear layers)


def _layers_of(module: nn.Module) -> list[LoRALinear]:
    cached = _LAYERS.get(module)
    if cached is None or cached[0] != _STRUCTURE:
        cached = _LAYERS[module] = (_STRUCTURE, [m for m in module.modules() if isinstance(m, LoRALinear)])
    return cached[1]


def _wrap(model: nn.Module, name: str) -> LoRALinear:
    layer = model.get_submodule(name)
    if not isinstance(layer, LoRALinear):
        layer = LoRALinear(layer)
        _set(model, name, layer)
    return layer


def freeze_base(model: nn.Module) -> None:
    """Only adapter parameters train: the rest get no gradient and no optimizer state."""
    for pname, p in model.named_parameters():
        p.requires_grad_(".lora_A." in pname or ".lora_B." in pname)


def add_lora(model: Transformer, *, r: int, alpha: float, dropout: float = 0.0, targets=("all-linear",),
             rslora: bool = False, name: str = "default") -> list[str]:
    """Wrap the target layers in LoRALinear with a fresh adapter `name` (PEFT's init),
    freeze everything else; returns the wrapped module names. Every layer is checked
    before any is changed."""
    if not isinstance(r, int) or r < 1:
        raise AcornError(f"LoRA rank r must be a positive integer, not {r!r}; e.g. --lora.r 16")
    if not 0 <= dropout < 1:
        raise AcornError(f"LoRA dropout must be in [0, 1), not {dropout}")
    names = resolve_targets(model, targets)
    active = _active_after_adding(model, name)
    for n in names:
        layer = model.get_submodule(n)
        if r > min(layer.in_features, layer.out_features):
            raise AcornError(f"LoRA rank {r} is larger than {n} ({layer.in_features} -> {layer.out_features}), "
                             f"where a rank above {min(layer.in_features, layer.out_features)} adds nothing; "
                             "lower --lora.r")
    for n in names:
        _wrap(model, n).add_adapter(name, r, alpha, dropout=dropout, rslora=rslora)
    set_active(model, active)
    if _family(model) == "gpt2":  # its checkpoints fuse q, k, v: their adapters share A, as PEFT's on c_attn
        tie_gpt2_qkv(model, name)
    freeze_base(model)
    return names


def apply(model: Transformer, cfg: LoRAConfig) -> list[str]:
    """A training stage's LoRA: quantize the base to NF4 first if asked (QLoRA), then add_lora."""
    if cfg.quantize is not None:
        if cfg.quantize != "nf4":
            raise AcornError(f"--lora.quantize {cfg.quantize!r} is not supported; QLoRA's base format is nf4")
        if quant.quantization_of(model) is None:
            # QLoRA's blocks are 64 weights; a model whose widths 64 does not divide (a tiny
            # test model) takes the largest block size that divides them all.
            widths = {m.in_features for n, m in _linears(model).items() if n != "lm_head"}
            group = next((g for g in (64, 32) if all(w % g == 0 for w in widths)), 64)
            quant.quantize(model, "nf4", group_size=group)
    return add_lora(model, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets, rslora=cfg.rslora)


def set_active(model: nn.Module, name: str | None) -> None:
    """Which adapter the model applies (None: the base model alone). It is one name for the
    whole model: a layer without that adapter applies none."""
    layers = lora_layers(model).values()
    if name is not None and not any(name in layer.lora_A for layer in layers):
        known = sorted({n for layer in layers for n in layer.lora_A})
        raise AcornError(f"no adapter named {name!r}; the model has {', '.join(known) or 'none'}")
    for layer in layers:
        layer.active = name


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters the model holds, sorted."""
    return sorted({n for layer in lora_layers(model).values() for n in layer.lora_A})


def active_adapter(model: nn.Module) -> str | None:
    """The adapter the model applies (set_active), or None."""
    return next((layer.active for layer in lora_layers(model).values()), None)


class AdapterRouting:
    """Which adapter each token applies: index holds positions in `names` (a None entry: the
    base alone) and broadcasts against a layer input's leading dimensions: (1, N) for the N
    tokens of a flattened step, (B, 1) for one adapter per row of a (B, T) batch. A layer asks
    for the plan of its input's shape; it is worked out once per shape, on the CPU (no device
    sync per layer)."""

    def __init__(self, index: Tensor, names: Sequence[str | None]):
        self.index, self.names = index.cpu(), list(names)
        self._plans: dict[tuple, tuple] = {}

    def plan(self, shape: torch.Size, device) -> tuple[Tensor | None, Tensor | None, list[tuple[str | None, int, int]]]:
        """(order, inverse, segments) for the flattened input's tokens: order sorts them by
        adapter, inverse puts them back, and segments are (adapter, start, end) slices of the
        sorted tokens. order and inverse are None when the tokens are in adapter order already."""
        key = (tuple(shape), str(device))
        if key not in self._plans:
            idx = self.index.expand(shape).reshape(-1)
            counts = torch.bincount(idx, minlength=len(self.names)).tolist()
            ends = list(itertools.accumulate(counts))
            segments = [(self.names[i], ends[i] - c, ends[i]) for i, c in enumerate(counts) if c]
            if len(segments) == 1 or bool((idx[1:] >= idx[:-1]).all()):
                self._plans[key] = None, None, segments
            else:
                order = torch.argsort(idx, stable=True)
                inverse = torch.empty_like(order)
                inverse[order] = torch.arange(len(order))
                self._plans[key] = order.to(device), inverse.to(device), segments
        return self._plans[key]


    def padded(self, shape: torch.Size, device) -> tuple[Tensor, Tensor, int] | None:
        """The segments laid out as k rows of one length L (the longest segment) for a batched
        matmul: gather (k * L,) picks the flattened input's tokens into that layout (a short
        segment repeats its last token as padding), scatter (N,) picks each token's row back
        out. None when the padding would more than double the rows (uneven segments: a long
        prefill beside a few decodes), where the per-segment matmuls waste nothing."""
        key = ("padded", tuple(shape), str(device))
        if key not in self._plans:
            order, _, segments = self.plan(shape, device)
            length = max(end - start for _, start, end in segments)
            n = segments[-1][2]
            if len(segments) * length > 2 * n:
                self._plans[key] = None
            else:
                order = torch.arange(n) if order is None else order.cpu()
                gather = torch.cat([order[torch.arange(start, start + length).clamp(max=end - 1)]
                                    for _, start, end in segments])
                scatter = torch.empty(n, dtype=torch.long)
                for i, (_, start, end) in enumerate(segments):
                    scatter[order[start:end]] = torch.arange(i * length, i * length + end - start)
                self._plans[key] = gather.to(device), scatter.to(device), length
        return self._plans[key]


# id(LoRALinear) -> its AdapterRouting, inside use_adapters. A context variable, not an
# attribute of the layer: each thread has its own, so a server's engine thread routing a
# mixed batch never reaches a forward pass another thread runs on the same model meanwhile.
_ROUTING: ContextVar[dict[int, AdapterRouting]] = ContextVar("lora_routing", default={})


@contextmanager
def use_adapters(module: nn.Module, index: Tensor | None, names: Sequence[str | None]) -> Iterator[None]:
    """Per-token adapters for the forward passes inside (in this thread): every LoRALinear in
    `module` (or the module itself) applies adapter names[index[...]] to each token (see
    AdapterRouting), in place of the active one; a layer without a token's adapter adds
    nothing to it (as with set_active). index None: no change."""
    layers = [] if index is None else _layers_of(module)
    if not layers:
        yield
        return
    routing = AdapterRouting(index, names)
    token = _ROUTING.set({**_ROUTING.get(), **{id(layer): routing for layer in layers}})
    try:
        yield
    finally:
        _ROUTING.reset(token)


def use_adapter(module: nn.Module, name: str | None):
    """use_adapters with one adapter for every token (in this thread); None: no change."""
    return use_adapters(module, None if name is None else torch.zeros(1, 1, dtype=torch.long), [name])


def _active_after_adding(model: nn.Module, name: str) -> str | None:
    """The first adapter becomes active; adding another keeps the one that was active.
    Asked before any layer changes, so it also refuses a name already taken."""
    layers = lora_layers(model).values()
    if any(name in layer.lora_A for layer in layers):
        raise AcornError(f"the model already has an adapter named {name!r}; give the new one another name")
    return next((layer.active for layer in layers), None) if layers else name


def merge(model: nn.Module, name: str | None = None) -> None:
    for layer in lora_layers(model).values():
        layer.merge(name)


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


@torch.no_grad()
def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """A plain model again: every LoRALinear replaced by its base with adapter `name`
    (default: the active one) folded in; a quantized base is dequantized first (to
    float32), since an update rounded back to 4 bits would be mostly lost."""
    for n, layer in lora_layers(model).items():
        base = layer.base_layer
        if isinstance(base, _QUANTIZED):
            base = base.to_linear()
        w = base.weight
        if layer.merged:
            layer.unmerge()
        adapter = name or layer.active
        if adapter is not None and adapter in layer.lora_A:
            w.copy_((w.float() + layer.delta_weight(adapter)).to(w.dtype))
        _set(model, n, base)
    for m in model.modules():  # trainable again, as a loaded model is; quantized layers stay frozen
        if not isinstance(m, _QUANTIZED):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, a tied matrix once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# --------------------------------------------------------- PEFT's names
def _family(model: Transformer) -> str:
    from acorn.model.checkpoint import ARCHITECTURES, hf_architecture

    try:
        return ARCHITECTURES[hf_architecture(model.config)]
    except AcornError:  # no transformers equivalent: Acorn's own (Llama's) names
        return "llama"


def _gpt2_module(name: str) -> tuple[str, int]:
    """Acorn module name -> (GPT-2 module name, which slice of a fused output: 0/1/2 for q/k/v, else 0)."""
    if name == "lm_head":
        return name, 0
    m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)", name)
    h, leaf = f"transformer.h.{m[1]}.", m[3]
    if leaf in ("q_proj", "k_proj", "v_proj"):
        return h + "attn.c_attn", "qkv".index(leaf[0])
    return h + {"o_proj": "attn.c_proj", "up_proj": "mlp.c_fc", "down_proj": "mlp.c_proj"}[leaf], 0


def _acorn_modules(family: str, hf_name: str, d_model: int) -> list[tuple[str, slice | None]]:
    """HF module name -> [(Acorn module name, rows of the HF layer's output it computes)]."""
    if family != "gpt2":
        return [(hf_name, None)]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)", hf_name)
    if not m:
        return [(hf_name, None)]
    a = f"model.layers.{m[1]}."
    if m[2] == "attn.c_attn":
        return [(a + f"self_attn.{x}_proj", slice(i * d_model, (i + 1) * d_model)) for i, x in enumerate("qkv")]
    return [(a + {"attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}[m[2]],
             None)]


def adapter_state_dict(model: Transformer, name: str = "default") -> dict[str, Tensor]:
    """Adapter `name`'s tensors under PEFT's keys, in the base's transformers module names."""
    family, out = _family(model), {}
    fused: dict[str, list] = {}
    for n, layer in lora_layers(model).items():
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
        if family == "gpt2":
            hf, part = _gpt2_module(n)
            if hf.endswith("c_attn"):
                fused.setdefault(hf, [None, None, None])[part] = (n, a, b)
                continue
            n = hf
        out[f"{PEFT_PREFIX}{n}.lora_A.weight"], out[f"{PEFT_PREFIX}{n}.lora_B.weight"] = a, b
    for hf, parts in fused.items():
        # PEFT's adapter on the fused c_attn is one A and one B of 3 d_model rows: it is
        # Acorn's q, k and v adapters exactly when they share A (as `tie_gpt2_qkv` makes them).
        if any(p is None for p in parts) or not all(torch.equal(parts[0][1], p[1]) for p in parts):
            raise AcornError(f"{hf}: GPT-2 fuses q, k and v into c_attn, so its adapter needs the same A on all "
                             "three; target c_attn (not q_proj/k_proj/v_proj alone) for a GPT-2 model")
        out[f"{PEFT_PREFIX}{hf}.lora_A.weight"] = parts[0][1]
        out[f"{PEFT_PREFIX}{hf}.lora_B.weight"] = torch.cat([p[2] for p in parts])
    return out


def tie_gpt2_qkv(model: Transformer, name: str = "default") -> None:
    """GPT-2's c_attn adapter as three Acorn adapters that share one A parameter (and B
    rows of one fused B): q, k and v get the same input projection, as PEFT's on c_attn."""
    layers = lora_layers(model)
    for i in range(model.config.n_layer):
        qkv = [layers.get(f"model.layers.{i}.self_attn.{x}_proj") for x in "qkv"]
        if all(q is not None and name in q.lora_A for q in qkv):
            for other in qkv[1:]:
                other.lora_A[name] = qkv[0].lora_A[name]


def adapter_config(model: Transformer, name: str = "default", *, base: str | None = None) -> dict:
    """adapter_config.json as PEFT writes it for a LoRA on a causal LM."""
    layers = {n: m for n, m in lora_layers(model).items() if name in m.lora_A}
    if not layers:
        raise AcornError(f"the model has no adapter named {name!r} to save")
    family = _family(model)
    settings = {(m.lora_A[name].out_features, m.alpha[name], m.rslora[name]) for m in layers.values()}
    if len(settings) > 1:
        raise AcornError("the adapter's layers have different ranks or alphas; one adapter_config.json records one")
    r, alpha, use_rslora = settings.pop()
    hf_names = sorted({(_gpt2_module(n)[0] if family == "gpt2" else n).rpartition(".")[2] for n in layers})
    wanted = {n for n in _linears(model) if n != "lm_head" and
              (_gpt2_module(n)[0] if family == "gpt2" else n).rpartition(".")[2] in hf_names}
    if "lm_head" in layers:
        wanted.add("lm_head")
    if wanted != set(layers):  # only some layers of a kind: name them in full
        hf_names = sorted({_gpt2_module(n)[0] if family == "gpt2" else n for n in layers})
    dropout = next(iter(layers.values())).lora_dropout[name]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": alpha if not float(alpha).is_integer() else int(alpha),
        "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "use_rslora": use_rslora,
        "target_modules": hf_names,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "revision": None,
    }


# ------------------------------------------------------ adapter files
def save_adapter(model: Transformer, directory, *, base=None, name: str = "default") -> Path:
    """Write adapter `name` as a PEFT adapter directory (adapter_config.json +
    adapter_model.safetensors). base: the base checkpoint's directory, recorded as
    base_model_name_or_path (absolute, so loading it fetches nothing)."""
    from safetensors.torch import save_file

    from acorn.fileio import atomic_path, write_json

    base_name = str(Path(base).resolve()) if base is not None and Path(base).exists() else base
    config = adapter_config(model, name, base=None if base_name is None else str(base_name))
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in adapter_state_dict(model, name).items()}
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AcornError(f"{directory}: is a file; give a directory to save the adapter in")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:  # the umask's mode, not safetensors' 0600
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(directory / ADAPTER_CONFIG, config)  # last: it marks a complete adapter
    return directory


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches a module name whole or as its dotted suffix (a regex)."""
    for key, value in (patterns or {}).items():
        if module == key or re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_adapter_config(directory) -> tuple[Path, dict]:
    directory = Path(directory)
    if not directory.is_dir():
        raise AcornError(f"{directory}: no such adapter directory; give the directory holding adapter_config.json "
                         "and adapter_model.safetensors (a LoRA run writes RUN/adapter)")
    if not (directory / ADAPTER_CONFIG).is_file():
        raise AcornError(f"{directory}: has no adapter_config.json, so it is not a PEFT adapter directory; give the "
                         "adapter/ directory of a LoRA run (acorn sft --lora.r 16) or one that peft's save_pretrained wrote")
    from acorn.fileio import read_json

    where = directory / ADAPTER_CONFIG
    try:
        cfg = read_json(where)
    except (ValueError, json.JSONDecodeError):
        raise AcornError(f"{where}: not valid JSON; re-save the adapter") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise AcornError(f"{where}: peft_type is {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}, "
                         "not 'LORA'; Acorn loads LoRA adapters only")
    problems = [what for what, bad in (
        ("DoRA (use_dora)", cfg.get("use_dora")),
        (f"trained biases (bias={cfg.get('bias')!r})", cfg.get("bias", "none") != "none"),
        (f"fully trained modules (modules_to_save={cfg.get('modules_to_save')})", cfg.get("modules_to_save")),
    ) if bad]
    if problems:
        raise AcornError(f"{where}: {', '.join(problems)} is not supported; Acorn loads plain LoRA adapters "
                         "(merge it with peft's merge_and_unload and load the merged checkpoint instead)")
    return directory, cfg


def load_adapter(model: Transformer, directory, *, name: str = "default", dtype: torch.dtype = torch.float32,
                 ) -> list[str]:
    """Add the PEFT LoRA adapter in `directory` to `model` as adapter `name` (unmerged, active);
    returns the Acorn module names it adapts. Every tensor's module and shape is checked against
    the model before anything changes."""
    directory, cfg = read_adapter_config(directory)
    file = directory / ADAPTER_WEIGHTS
    if not file.is_file():
        pickle = directory / "adapter_model.bin"
        raise AcornError(f"{directory}: has no {ADAPTER_WEIGHTS}" + (
            "; adapter_model.bin is a pickle, which can run code when loaded: re-save the adapter with peft's "
            "save_pretrained(safe_serialization=True)" if pickle.exists() else "; the adapter directory is incomplete"))
    from safetensors.torch import load_file

    from acorn.model.checkpoint import read_safetensors_header

    read_safetensors_header(file)  # a truncated copy: one clear line, not safetensors' error
    tensors = load_file(str(file))
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise AcornError(f"{file}: tensor {key} is not a LoRA A or B matrix under PEFT's names; Acorn loads "
                             "plain LoRA adapters of causal language models")
        pairs.setdefault(m[1], {})[m[2]] = t
    family, linears = _family(model), _linears(model)
    base = cfg.get("base_model_name_or_path")
    other_base = f"it was trained on another base model ({base}); load it on that base" if base else \
        "it was trained on another base model; load it on that base"
    plan = []
    for hf, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AcornError(f"{file}: {hf} has lora_{''.join(ab)} but not lora_{'B' if 'A' in ab else 'A'}; "
                             "the adapter file is incomplete")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise AcornError(f"{file}: {hf}'s lora_A {list(a.shape)} and lora_B {list(b.shape)} are not a rank-r "
                             "pair (r x in, out x r); the adapter file is damaged")
        r = a.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern"), hf, cfg.get("lora_alpha", 8))
        for acorn_name, rows in _acorn_modules(family, hf, model.config.d_model):
            layer = linears.get(acorn_name)
            if layer is None:
                raise AcornError(f"{directory}: the adapter has weights for {hf}, which this {family} model does "
                                 f"not have; {other_base}")
            b_rows = b if rows is None else b[rows]
            if a.shape[1] != layer.in_features or b_rows.shape[0] != layer.out_features:
                raise AcornError(f"{directory}: the adapter's {hf} maps {a.shape[1]} -> {b.shape[0]} features but "
                                 f"this model's {acorn_name} maps {layer.in_features} -> {layer.out_features}; "
                                 f"{other_base}")
            plan.append((acorn_name, a, b_rows, r, alpha))
    if not plan:
        raise AcornError(f"{file}: holds no LoRA weights; re-save the adapter")
    active = _active_after_adding(model, name)  # before any layer changes
    for acorn_name, a, b, r, alpha in plan:
        layer = _wrap(model, acorn_name)
        layer.add_adapter(name, r, alpha, dropout=cfg.get("lora_dropout") or 0.0, rslora=bool(cfg.get("use_rslora")),
                          dtype=dtype)
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(a)
            layer.lora_B[name].weight.copy_(b)
    set_active(model, active)
    if family == "gpt2":
        tie_gpt2_qkv(model, name)
    return [p[0] for p in plan]


def merge_checkpoint(base, adapter, out, *, overwrite: bool = False) -> str:
    """`acorn lora merge`: base + adapter -> a plain Hugging Face checkpoint in `out`, with the
    base's tokenizer and generation files (refused where `out` already holds files, unless
    overwrite). Returns the summary printed."""
    from acorn.fileio import check_new_output
    from acorn.model.checkpoint import load, save

    src, dst, adapter = Path(base), Path(out), Path(adapter)
    read_adapter_config(adapter)  # a bad adapter fails before the base loads
    for p in (src, adapter):
        if dst.exists() and p.exists() and dst.resolve() == p.resolve():
            raise AcornError(f"{dst}: is an input of the merge; give another --out directory")
    check_new_output(dst, overwrite)
    model = load(src, device="cpu")
    names = load_adapter(model, adapter, dtype=quant.float_dtype(model))
    merge_and_unload(model)
    quantized = quant.quantization_of(model) is not None
    if quantized:  # a plain checkpoint: the layers without an adapter are dequantized too
        quant.dequantize(model)
    save(model, dst)
    for f in sorted(src.iterdir()):
        weights = f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name.endswith(".index.json")
        if f.is_file() and not weights and f.name != "config.json":
            shutil.copyfile(f, dst / f.name)
    return (f"merged the adapter in {adapter} into {len(names)} layers of {src}"
            f"{' (dequantized from ' + 'its quantized weights)' if quantized else ''} -> {dst}")
