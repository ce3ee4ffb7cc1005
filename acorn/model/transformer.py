"""The decoder-only transformer: every family Acorn runs, in one file.

A GPT (Radford et al. 2018/2019) is a stack of blocks, each
    x = x + attention(norm(x));  x = x + mlp(norm(x))
over token embeddings, with a causal mask so position t sees only positions
<= t, and a linear head that scores the next token. The families differ in
small choices, each a field of ModelConfig:

  positions   learned (GPT-2), sinusoidal (Vaswani et al. 2017), RoPE (Su et al.
              2021; Llama, Mistral, Qwen2, Mixtral) with its context-extension
              scalings (acorn.model.rope), ALiBi (Press et al. 2022)
  attention   multi-head, grouped-query (Ainslie et al. 2023), multi-query
              (Shazeer 2019) by n_kv_head; q/k/v biases (Qwen2); QK-norm (Qwen3);
              sliding window (Mistral); through torch's scaled_dot_product_attention,
              which picks a fused flash kernel when no explicit mask is needed
  norms       RMSNorm (Zhang & Sennrich 2019) or LayerNorm, before each sublayer
  mlp         SwiGLU (Shazeer 2020), GELU (or CLIP's quick GELU), ReLU^2 (So et al. 2021), or a mixture
              of experts (Shazeer 2017; Switch, Fedus et al. 2021; Mixtral 2024)
  head        tied to the embedding or not; optional logit soft-capping (Gemma 2)

Acorn's own default is the modern one (RoPE, RMSNorm, SwiGLU, GQA, no biases),
which is Llama's layout: its checkpoints are LlamaForCausalLM checkpoints.
Parameter names follow transformers' Llama names so that Llama, Mistral and
Qwen2 weights load with no renaming (acorn.model.checkpoint maps the others).

The forward pass is written once, as public pieces that forward() strings
together: embed (tokens and added positions), position_encoding (RoPE),
attention_mask, blocks (the block stack and the final norm: the final hidden
states) and logits (the head and soft-capping). The engine's paged step
(acorn.infer.paged) and sentence embeddings (acorn.rag.embeddings) use the same
pieces, so LoRA, a value head or a new position type changes one place.

Where attention keeps its keys and values is a parameter of the block stack
(KVAttention). forward() keeps them explicitly: it takes the keys and values
of the tokens seen so far (a KVCache) and returns them extended by the new
tokens; the inference engine decides what to keep, in its own paged pool.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acorn.config import check as check_config
from acorn.errors import AcornError
from acorn.model import packed

_TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
# scaled_dot_product_attention broadcasts grouped KV heads itself from torch 2.5.
_SDPA_GQA = _TORCH_VERSION >= (2, 5)


# ----------------------------------------------------------------- config
@dataclass
class ModelConfig:
    vocab_size: int = 4096  # token ids the embedding holds (at least the tokenizer's vocabulary)
    n_layer: int = 4  # transformer blocks
    d_model: int = 256  # width of the residual stream
    n_head: int = 4  # query heads per attention layer
    n_kv_head: int | None = None  # None: = n_head (MHA); 1: MQA; in between: GQA
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # MLP hidden width; None: 4 x d_model (2/3 of it for SwiGLU), rounded up to 64
    max_seq_len: int = 1024  # longest context, in tokens
    # embeddings and positions
    tie_embeddings: bool = True  # the output head shares the embedding matrix
    positions: Literal["rope", "learned", "sinusoidal", "alibi", "none"] = "rope"  # how a token knows where it is
    rope_theta: float = 10000.0  # RoPE base: larger rotates slower, for longer contexts
    rope_partial: float = 1.0  # fraction of each head's dims that rotate (partial rotary)
    rope_scaling: dict | None = None  # Hugging Face rope_scaling dict (linear, dynamic, yarn, llama3, longrope)
    # attention
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2, GPT-2)
    out_bias: bool = False  # a bias on the attention output projection
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3)
    sliding_window: int | None = None  # attend to at most this many recent tokens (Mistral); None: all
    # norms and MLP
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"  # the normalisation before each sublayer
    norm_eps: float = 1e-5  # added to the variance inside the norm
    mlp: Literal["swiglu", "gelu", "gelu_tanh", "relu2", "quick_gelu"] = "swiglu"  # feed-forward activation
    mlp_bias: bool = False  # biases in the MLP
    logit_softcap: float | None = None  # cap logits smoothly at +-this (Gemma 2); None: off
    # mixture of experts (n_experts = 0: a dense MLP)
    n_experts: int = 0  # experts per MLP; 0: a dense MLP
    n_experts_per_token: int = 2  # experts each token is routed to (top-k)
    moe_capacity_factor: float | None = None  # None: no token dropping (Mixtral)
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss
    moe_renormalize: bool = True  # renormalise the top-k router weights to sum to 1 (Mixtral)
    # training
    dropout: float = 0.0  # dropout probability in training (0 at scale)
    init_std: float = 0.02  # standard deviation of the initial weights
    # The preset this config was made from, if any: overrides of a config
    # section re-derive from it (head_dim, d_ff follow a changed d_model).
    preset: str | None = field(default=None, compare=False)

    # Ranges, checked before anything is derived or allocated (acorn.config).
    LIMITS: ClassVar[dict[str, str]] = {
        "vocab_size": ">= 1", "n_layer": ">= 1", "d_model": ">= 1", "n_head": ">= 1", "n_kv_head": ">= 1",
        "head_dim": ">= 1", "d_ff": ">= 1", "max_seq_len": ">= 1", "rope_theta": "> 0", "rope_partial": "(0, 1]",
        "sliding_window": ">= 1", "norm_eps": "> 0", "logit_softcap": "> 0", "n_experts": ">= 0",
        "n_experts_per_token": ">= 1", "moe_capacity_factor": "> 0", "moe_aux_loss_coef": ">= 0",
        "dropout": "[0, 1)", "init_std": "> 0",
    }

    def __post_init__(self):
        check_config(self)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise AcornError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}; set head_dim")
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            # A gated MLP has three matrices instead of two, so it gets 2/3 of
            # the usual 4*d hidden width for the same parameters (Shazeer 2020);
            # rounded up to a multiple of 64 for efficient matmuls.
            width = 4 * self.d_model * (2 / 3 if self.mlp == "swiglu" else 1)
            self.d_ff = int(64 * math.ceil(width / 64))
        if self.n_head % self.n_kv_head:
            raise AcornError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if self.n_experts and not 0 < self.n_experts_per_token <= self.n_experts:
            raise AcornError(f"n_experts_per_token must be in 1..{self.n_experts}, not {self.n_experts_per_token}")
        if self.positions == "rope":
            from acorn.model.rope import validate_scaling

            self.rope_scaling = validate_scaling(self.rope_scaling)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise AcornError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AcornError(f"unknown model config keys: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    # ---- sizes
    def num_params(self, *, active: bool = False, embeddings: bool = True) -> int:
        """Parameter count from the shapes alone. active=True counts only the
        experts a token uses (what a forward pass costs in an MoE model)."""
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (self.n_head * 2 + self.n_kv_head * 2)
        attn += (hd * (self.n_head + 2 * self.n_kv_head) if self.qkv_bias else 0) + (d if self.out_bias else 0)
        attn += 2 * hd if self.qk_norm else 0
        n_mats = 3 if self.mlp == "swiglu" else 2
        expert = n_mats * d * self.d_ff + ((n_mats - 1) * self.d_ff + d if self.mlp_bias else 0)
        if self.n_experts:
            mlp = (self.n_experts_per_token if active else self.n_experts) * expert + d * self.n_experts
        else:
            mlp = expert
        norm = d * (2 if self.norm == "layernorm" else 1)
        per_layer = attn + mlp + 2 * norm
        total = self.n_layer * per_layer + norm
        if embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            total += self.max_seq_len * d if self.positions == "learned" else 0
        return total

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = True) -> float:
        """Matmul FLOPs per token (Kaplan et al. 2020; PaLM appendix B): 2 per
        active weight forward (6 with the backward pass) plus attention's
        QK^T and AV, which grow with the context length."""
        t = seq_len or self.max_seq_len
        if self.sliding_window:
            t = min(t, self.sliding_window)
        n = self.num_params(active=True, embeddings=False) + self.vocab_size * self.d_model  # the head is a matmul
        # QK^T and AV over the whole T x T square, forward: 4 FLOPs per layer,
        # head dim and key. Causal attention needs only half of it, but PaLM and
        # nanoGPT count the square, and MFU figures are comparable only under
        # one convention.
        attn = 4 * self.n_layer * self.n_head * self.head_dim * t
        return (3 if training else 1) * (2 * n + attn)


PRESETS: dict[str, dict] = {
    # ~1M parameters: for tests, trains in seconds on a CPU.
    "nano": dict(vocab_size=2048, n_layer=4, d_model=128, n_head=4, n_kv_head=2, max_seq_len=256),
    # ~5M: the built-in world's speedrun size on a 2-core CPU.
    "micro": dict(vocab_size=2048, n_layer=6, d_model=256, n_head=8, n_kv_head=4, max_seq_len=512),
    # ~30M
    "small": dict(vocab_size=8192, n_layer=8, d_model=512, n_head=8, n_kv_head=4, max_seq_len=1024),
    # GPT-2 small exactly (124M): learned positions, LayerNorm, GELU, biases, tied head.
    "gpt2-124m": dict(vocab_size=50257, n_layer=12, d_model=768, n_head=12, max_seq_len=1024, positions="learned",
                      norm="layernorm", mlp="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True, d_ff=3072),
    # The same size in Acorn's modern layout.
    "d12": dict(vocab_size=50304, n_layer=12, d_model=768, n_head=12, n_kv_head=4, max_seq_len=2048),
    # Llama-3.2-1B's shape: GQA 32/8, RoPE with Llama 3 scaling, tied embeddings.
    "1b": dict(vocab_size=128256, n_layer=16, d_model=2048, n_head=32, n_kv_head=8, d_ff=8192, max_seq_len=8192,
               rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


# ---------------------------------------------------------------- cache
@dataclass
class KVCache:
    """The keys and values of every layer for the tokens seen so far.

    keys/values[i]: (B, n_kv_head, T, head_dim) for layer i, RoPE already applied.
    mask: (B, T) bool, False where a cached token is padding.
    positions: (B, T) the position of each cached token (for ALiBi and the next positions).
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    mask: Tensor | None = None
    positions: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class ModelOutput:
    logits: Tensor | None = None  # None with hidden_only
    hidden: Tensor | None = None  # the final hidden states (after the last norm) the logits come from
    loss: Tensor | None = None
    cache: KVCache | None = None
    aux_loss: Tensor | None = None  # MoE load balancing, already multiplied by its coefficient
    expert_counts: Tensor | None = None  # (n_layer, n_experts) tokens routed to each expert
    dropped_tokens: int = 0  # token-expert assignments dropped by the capacity limit


# ------------------------------------------------------------ attention
# How attention reaches the keys and values of the context, as a function
#     attention(layer, q, k, v) -> output (B, n_head, T, head_dim)
# of the new tokens' queries, keys and values (B, heads, T, head_dim): it keeps
# k and v wherever it keeps them and attends q to the whole context. Two kinds:
# ContiguousAttention (a tensor per layer, forward()'s KVCache) and the
# engine's acorn.infer.paged.PagedAttention (blocks of a shared pool).
KVAttention = Callable[[int, Tensor, Tensor, Tensor], Tensor]


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False,
         dropout: float = 0.0) -> Tensor:
    """torch's scaled_dot_product_attention, also when k and v have fewer heads
    than q (GQA, MQA): torch broadcasts them itself from 2.5; before that they
    are repeated, which costs memory but gives the same numbers."""
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout,
                                                  enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)


@dataclass
class ContiguousAttention:
    """Attention over keys and values held as one tensor per layer: the past
    cache's (if any) followed by the new tokens'. When `cache` is given, each
    layer's extended keys and values are appended to it, so it ends up as the
    cache of past + new tokens."""

    mask: Tensor | None  # for sdpa; None with is_causal for the fused causal kernel
    is_causal: bool
    past: KVCache | None = None
    cache: KVCache | None = None
    dropout: float = 0.0

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.past is not None:
            k, v = torch.cat([self.past.keys[layer], k], dim=2), torch.cat([self.past.values[layer], v], dim=2)
        if self.cache is not None:
            self.cache.keys.append(k)
            self.cache.values.append(v)
        return sdpa(q, k, v, self.mask, self.is_causal, self.dropout)


# ---------------------------------------------------------------- layers
def _identity(x: Tensor) -> Tensor:
    return x


_FUSED_RMS_NORM = hasattr(F, "rms_norm")  # torch >= 2.4


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 whatever the input dtype.

    torch's fused F.rms_norm where there is one: one kernel instead of six (a decode step
    runs two norms per layer), the same float32 numbers; for a 16-bit input it rounds once,
    after the weight, where transformers' Llama rounds before it (a last-bit difference)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if _FUSED_RMS_NORM and x.dtype == self.weight.dtype:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rmsnorm" else nn.LayerNorm(dim, eps=cfg.norm_eps)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            # Gate and up in one matmul where the layers are packed (acorn.model.packed).
            fused = self.__dict__.get(packed.GATE_UP)
            gu = fused(x) if fused is not None else None
            if gu is not None:
                gate, up = gu.chunk(2, dim=-1)
                return packed.linear(self, "down_proj", F.silu(gate) * up)
            return packed.linear(self, "down_proj", F.silu(self.gate_proj(x)) * self.up_proj(x))
        return packed.linear(self, "down_proj", activation(self.kind, self.up_proj(x)))


def activation(kind: str, x: Tensor) -> Tensor:
    if kind == "gelu":
        return F.gelu(x)
    if kind == "gelu_tanh":  # GPT-2's "gelu_new"
        return F.gelu(x, approximate="tanh")
    if kind == "relu2":
        return F.relu(x).square()
    if kind == "quick_gelu":  # OpenAI CLIP's approximation, x * sigmoid(1.702 x) (CLIP and LLaVA vision towers)
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(kind)


class MoE(nn.Module):
    """A mixture of SwiGLU experts with a top-k router.

    Each token's router logits go through a softmax; the top k experts process
    the token and their outputs are summed, weighted by the (renormalised)
    router probabilities. Experts are stored stacked, (n_experts, ...), as one
    tensor per matrix.

    Load balancing (Switch Transformer): without a push, the router collapses
    onto a few experts. The auxiliary loss n_experts * sum_e f_e * P_e, with f_e
    the share of assignments to expert e and P_e its mean router probability,
    is smallest when both are uniform.

    Capacity: with a capacity factor c, each expert takes at most
    ceil(c * tokens * k / n_experts) assignments per batch, in token order; the
    rest are dropped (the token passes on through the residual), which bounds
    the work per expert on parallel hardware.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mlp != "swiglu":
            raise AcornError("mixture-of-experts layers use SwiGLU experts; set mlp='swiglu'")
        e, d, f = cfg.n_experts, cfg.d_model, cfg.d_ff
        self.n_experts, self.top_k = e, cfg.n_experts_per_token
        self.capacity_factor, self.renormalize = cfg.moe_capacity_factor, cfg.moe_renormalize
        self.gate = nn.Linear(d, e, bias=False)  # the router
        self.gate_proj = nn.Parameter(torch.empty(e, f, d))
        self.up_proj = nn.Parameter(torch.empty(e, f, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, f))

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (N, d) -> router probabilities (N, E) float32, top-k weights (N, k), expert ids (N, k)."""
        probs = F.softmax(self.gate(h).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        n = h.shape[0]
        probs, weights, experts = self.route(h)
        one_hot = F.one_hot(experts, self.n_experts)  # (N, k, E)
        counts = one_hot.sum((0, 1))
        aux = self.n_experts * (counts.float() / n * probs.mean(0)).sum()
        keep = torch.ones_like(experts, dtype=torch.bool)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * n * self.top_k / self.n_experts)
            # Rank of each assignment within its expert, in token order.
            rank = (one_hot.reshape(n * self.top_k, -1).cumsum(0).reshape(n, self.top_k, -1) * one_hot).sum(-1) - 1
            keep = rank < capacity
        out = torch.zeros_like(h)
        weights = weights.to(h.dtype)
        for e in range(self.n_experts):
            tok, slot = torch.where((experts == e) & keep)
            if tok.numel() == 0:
                continue
            xe = h[tok]
            ye = F.linear(F.silu(F.linear(xe, self.gate_proj[e])) * F.linear(xe, self.up_proj[e]), self.down_proj[e])
            out.index_add_(0, tok, ye * weights[tok, slot, None])
        dropped = int((~keep).sum())
        return out.reshape(shape), aux, counts, dropped


class Attention(nn.Module):
    """The projections around attention: into queries, keys and values (normed
    and rotated), and from the heads' outputs back to the residual stream.
    What happens in between, attending to the keys and values of the context,
    is the `attention` argument's (a KVAttention). Every path thus runs these
    same modules, so a change to them (LoRA, quantization) reaches training,
    generation, serving and embeddings alike."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer  # which layer's keys and values `attention` reads and writes
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
        if cfg.qk_norm:  # per-head RMSNorm of q and k (Qwen3, OLMo 2): keeps attention logits bounded
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (B, heads, T, head_dim), normed and rotated:
        what goes into attention and, for k and v, into a KV cache."""
        b, t, _ = x.shape
        fused = self.__dict__.get(packed.QKV)
        y = fused(x) if fused is not None else None
        if y is not None:  # q, k and v from one matmul (acorn.model.packed), and q and k rotated in one op
            from acorn.model.rope import apply_rope

            h, hkv = self.n_head, self.n_kv_head
            y = y.view(b, t, h + 2 * hkv, self.head_dim).transpose(1, 2)
            if self.cfg.qk_norm:
                q, k, v = y.split([h, hkv, hkv], dim=1)
                q, k = self.q_norm(q), self.k_norm(k)
                if rope is not None:
                    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
                return q, k, v
            qk, v = y[:, :h + hkv], y[:, h + hkv:]
            if rope is not None:
                qk = apply_rope(qk, *rope)
            return qk[:, :h], qk[:, h:], v
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            from acorn.model.rope import apply_rope

            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, attention: KVAttention) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x, rope)
        y = attention(self.layer, q, k, v)
        return packed.linear(self, "o_proj", y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None,
                attention: KVAttention) -> tuple[Tensor, tuple | None]:
        """x -> (x, the MoE layer's (aux loss, expert counts, dropped) or None)."""
        # Dropout is the identity outside training: skipping the call spares the
        # decode step two module calls per layer.
        drop = self.drop if self.training else _identity
        x = x + drop(self.self_attn(self.input_layernorm(x), rope, attention))
        m = self.mlp(self.post_attention_layernorm(x))
        moe = None
        if isinstance(m, tuple):
            m, *moe = m
        return x + drop(m), moe


class Backbone(nn.Module):
    """Embeddings, blocks and the final norm: transformers' `model.` prefix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)


# ------------------------------------------------------------------ model
class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope_cache: dict = {}
        if self.model.embed_tokens.weight.device.type != "meta":
            self.init_weights()

    # ---- initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, 0.02) for matrices and embeddings; the projections that write
        into the residual stream (o_proj, down_proj) scaled by 1/sqrt(2 n_layer)
        so the residual's variance does not grow with depth (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)  # norm weights
            elif name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                p.normal_(0.0, std)

    # ---- sizes
    def num_params(self, *, embeddings: bool = True) -> int:
        seen, n = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (not embeddings and "embed" in name):
                continue
            seen.add(id(p))
            n += p.numel()
        return n

    # ---- the forward pass, piece by piece: every path that runs the model
    # (forward below, the engine's paged step, sentence embeddings) is built
    # from these, so a new position type or head changes one place.
    def embed(self, input_ids: Tensor, positions: Tensor, image_features: Tensor | None = None,
              image_mask: Tensor | None = None) -> Tensor:
        """The residual stream's start: token embeddings, plus a vector per
        position for the families that add positions to the input (learned,
        sinusoidal). RoPE and ALiBi act inside attention instead
        (position_encoding, attention_mask).

        image_features (M, d_model) and image_mask (like input_ids, bool, M True):
        the rows replace the embeddings of the masked tokens (an image's
        placeholder tokens), in order, row-major (LLaVA: an image becomes M
        vectors the decoder reads like tokens; acorn.vision.llava)."""
        cfg = self.config
        x = self.model.embed_tokens(input_ids)
        if image_features is not None:
            x = merge_image_features(x, image_mask, image_features)
        if cfg.positions == "learned":
            x = x + self.model.embed_positions(positions)
        elif cfg.positions == "sinusoidal":
            x = x + sinusoidal(positions, cfg.d_model).to(x.dtype)
        return self.model.drop(x)

    def position_encoding(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """RoPE's (cos, sin) at these positions, which Attention rotates q and k
        by; None for the families whose positions live elsewhere."""
        from acorn.model.rope import rope_cos_sin, rope_parameters

        cfg = self.config
        if cfg.positions != "rope":
            return None
        seq_len = None
        if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") in ("dynamic", "longrope"):
            # These scalings depend on how long the sequence has grown.
            seq_len = int(positions.max()) + 1
        key = (positions.device, seq_len)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 8:  # dynamic scaling keys by length: keep only recent ones
                self._rope_cache.clear()
            self._rope_cache[key] = rope_parameters(
                cfg.head_dim, theta=cfg.rope_theta, partial_rotary_factor=cfg.rope_partial,
                scaling=cfg.rope_scaling, max_position_embeddings=cfg.max_seq_len, seq_len=seq_len,
                device=positions.device,
            )
        inv_freq, factor = self._rope_cache[key]
        return rope_cos_sin(inv_freq, positions, factor, dtype=dtype)

    def alibi_slopes(self, device) -> Tensor:
        """Head h's penalty per token of distance: a geometric sequence (Press et al. 2022)."""
        n = self.config.n_head
        closest = 2 ** math.floor(math.log2(n))
        slopes = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
        # For a head count that is not a power of two, take every other slope of the next power.
        slopes += [2 ** (-4 * (2 * i + 1) / closest) for i in range(n - closest)]
        return torch.tensor(slopes, device=device)

    def attention_mask(self, t: int, past_len: int, key_mask: Tensor | None, q_pos: Tensor, k_pos: Tensor,
                       dtype: torch.dtype, document_ids: Tensor | None = None) -> tuple[Tensor | None, bool]:
        """The mask for t new tokens after past_len cached ones, for
        scaled_dot_product_attention: (mask, False), or (None, is_causal) when
        plain causal attention is all that is needed (the fast fused path).
        key_mask (B, past_len + t): False at padding; q_pos/k_pos: positions of
        the new and of all tokens (ALiBi's distances)."""
        cfg = self.config
        window = cfg.sliding_window if cfg.sliding_window and cfg.sliding_window < past_len + t else None
        if key_mask is None and window is None and document_ids is None and cfg.positions != "alibi":
            if past_len == 0:
                return None, True
            if t == 1:
                return None, False  # one new token sees every cached one
        device = q_pos.device
        q_idx = torch.arange(past_len, past_len + t, device=device)[:, None]
        k_idx = torch.arange(past_len + t, device=device)[None, :]
        allowed = k_idx <= q_idx  # causal, by index in the sequence
        if window is not None:
            allowed = allowed & (k_idx > q_idx - window)
        allowed = allowed[None, None]  # (1, 1, T, S)
        if document_ids is not None:  # block-diagonal: only the same document
            allowed = allowed & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
        if key_mask is not None:
            # A query always sees itself, so rows of padding still have a
            # non-empty softmax (an empty one is NaN, and NaN leaks through 0 * NaN).
            allowed = (allowed & key_mask[:, None, None, :]) | (k_idx == q_idx)[None, None]
        if cfg.positions != "alibi":
            return allowed, False
        distance = (q_pos[:, :, None] - k_pos[:, None, :]).to(torch.float32)  # (B, T, S)
        bias = -self.alibi_slopes(device)[None, :, None, None] * distance[:, None]
        return bias.masked_fill(~allowed, float("-inf")).to(dtype), False

    def blocks(self, x: Tensor, rope: tuple[Tensor, Tensor] | None,
               attention: KVAttention) -> tuple[Tensor, list[tuple]]:
        """The residual stream through every block, then the final norm: the
        final hidden states, and each MoE layer's (aux loss, expert counts,
        dropped assignments)."""
        moe = []
        for layer in self.model.layers:
            x, stats = layer(x, rope, attention)
            if stats is not None:
                moe.append(stats)
        return self.model.norm(x), moe

    def logits(self, hidden: Tensor) -> Tensor:
        """Next-token scores from final hidden states: the head, soft-capped
        (Gemma 2: c * tanh(logits / c)) when the config asks for it."""
        logits = packed.linear(self, "lm_head", hidden)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def forward(
        self,
        input_ids: Tensor,
        *,
        targets: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        last_only: bool = False,
        document_ids: Tensor | None = None,
        hidden_only: bool = False,
        image_features: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> ModelOutput:
        """input_ids (B, T): the new tokens.

        targets: (B, T) next-token ids, -100 where no loss is wanted.
        attention_mask: (B, T) 1 for real tokens, 0 for padding of the new tokens.
        positions: (B, T) positions of the new tokens; by default they continue
            from the cache, counting real tokens only (so left padding works).
        cache: what earlier calls returned; with use_cache=True the output
            carries the cache extended by these tokens.
        last_only: compute logits for the last position only (generation).
        document_ids: (B, T) which packed document each token belongs to; a token
            attends only within its document and positions restart at each
            document's first token, so packed sequences do not see each other
            (no cache with this: it is for training on packed rows).
        hidden_only: stop at the final hidden states (out.hidden) and skip the
            vocabulary-sized head, for what needs only the states (embeddings).
        image_features, image_mask: image tokens in place of the masked tokens'
            embeddings (see embed; acorn.vision.llava makes them).
        """
        cfg = self.config
        b, t = input_ids.shape
        device = input_ids.device
        if hidden_only and targets is not None:
            raise ValueError("a loss needs logits: targets and hidden_only=True do not go together")
        past_len = cache.length if cache is not None else 0
        new_mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
        if document_ids is not None:
            if past_len:
                raise ValueError("document_ids is for packed training rows, not for decoding with a cache")
            if positions is None:
                # Position = distance from the first token of the same document.
                idx = torch.arange(t, device=device).expand(b, t)
                starts = torch.ones_like(document_ids, dtype=torch.bool)
                starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
                positions = idx - torch.cummax(torch.where(starts, idx, 0), dim=1).values
        if positions is None:
            start = cache.mask.sum(1, keepdim=True) if past_len else torch.zeros(b, 1, dtype=torch.long, device=device)
            if new_mask is None:
                positions = start + torch.arange(t, device=device)
            else:
                positions = start + (new_mask.long().cumsum(1) - 1).clamp(min=0)
        if past_len + t > cfg.max_seq_len and cfg.positions == "learned":
            raise AcornError(f"sequence of {past_len + t} tokens is longer than the model's {cfg.max_seq_len} positions")

        x = self.embed(input_ids, positions, image_features, image_mask)
        rope = self.position_encoding(positions, x.dtype)
        key_mask = None
        if past_len or new_mask is not None:
            old = cache.mask if past_len else torch.zeros(b, 0, dtype=torch.bool, device=device)
            key_mask = torch.cat([old, new_mask if new_mask is not None else torch.ones(b, t, dtype=torch.bool, device=device)], 1)
        key_pos = torch.cat([cache.positions, positions], 1) if past_len else positions
        mask, is_causal = self.attention_mask(t, past_len, key_mask, positions, key_pos, x.dtype, document_ids)
        new_cache = KVCache(mask=key_mask if key_mask is not None else torch.ones(b, past_len + t, dtype=torch.bool, device=device),
                            positions=key_pos) if use_cache else None
        attention = ContiguousAttention(mask, is_causal, past=cache if past_len else None, cache=new_cache,
                                        dropout=cfg.dropout if self.training else 0.0)
        hidden, moe = self.blocks(x, rope, attention)
        if last_only:
            hidden = hidden[:, -1:]

        out = ModelOutput(hidden=hidden, cache=new_cache, dropped_tokens=sum(m[2] for m in moe))
        if moe:
            out.aux_loss = cfg.moe_aux_loss_coef * torch.stack([m[0] for m in moe]).mean()
            out.expert_counts = torch.stack([m[1] for m in moe])
        if hidden_only:
            return out
        out.logits = self.logits(hidden)
        if targets is not None:
            out.loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100)
        return out

    # ---- conveniences
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def save(self, directory, **kwargs):
        """Write a Hugging Face checkpoint directory (see acorn.model.checkpoint.save)."""
        from acorn.model.checkpoint import save

        return save(self, directory, **kwargs)

    save_pretrained = save


def merge_image_features(x: Tensor, image_mask: Tensor | None, features: Tensor) -> Tensor:
    """x (B, T, d) with the rows of features (M, d) -- or (images, tokens per image, d) -- written,
    in order, where image_mask (B, T) is True."""
    if image_mask is None:
        raise ValueError("image_features need an image_mask saying which tokens they replace")
    rows = features.reshape(-1, features.shape[-1])
    n = int(image_mask.sum())
    if n != rows.shape[0]:
        raise AcornError(f"{n} image placeholder tokens but {rows.shape[0]} image feature rows; each image "
                         "needs exactly its own number of placeholder tokens in the prompt")
    return x.masked_scatter(image_mask[..., None].to(x.device), rows.to(x.dtype))


def sinusoidal(positions: Tensor, dim: int) -> Tensor:
    """The fixed position encoding of Vaswani et al. 2017: sin/cos at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions[..., None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def build(cfg: ModelConfig, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Transformer:
    """A model with fresh weights; on device 'meta' it has shapes but no memory
    (for loading a large checkpoint without a second copy)."""
    with torch.device(device or "cpu"):
        model = Transformer(cfg)
    return model.to(dtype) if dtype is not None else model


@torch.no_grad()
def resize_vocab(model: Transformer, vocab_size: int) -> Transformer:
    """Grow the model's vocabulary to vocab_size ids in place (a tokenizer got new
    special tokens: Tokenizer.add_special_tokens). Every existing row is kept; a
    new one starts at the mean of the existing embeddings (and of the output
    head's rows when untied), a vector the model already reads as "some token",
    not a random one whose norm the trained rows never had (Hewitt 2021, as
    transformers' resize_token_embeddings(mean_resizing=True) does). A tied head
    stays tied. Shrinking is refused: it would change what ids mean."""
    old = model.config.vocab_size
    if vocab_size < old:
        raise AcornError(f"cannot shrink the vocabulary from {old} to {vocab_size} ids; ids would lose their rows")
    if vocab_size == old:
        return model

    def grown(weight: Tensor) -> nn.Parameter:
        extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(vocab_size - old, -1)
        return nn.Parameter(torch.cat([weight, extra]), requires_grad=weight.requires_grad)

    emb = model.model.embed_tokens
    emb.weight = grown(emb.weight)
    emb.num_embeddings = vocab_size
    if model.config.tie_embeddings:
        model.lm_head.weight = emb.weight
    else:
        model.lm_head.weight = grown(model.lm_head.weight)
    model.lm_head.out_features = vocab_size
    model.config.vocab_size = vocab_size
    return model
