"""Checkpoints in the Hugging Face format: load, save, and describe, with the per-family weight-name maps.

A checkpoint is the directory transformers' from_pretrained reads:
  config.json                    the architecture, in transformers' field names
  model.safetensors              the weights; when large, model-0000k-of-0000n.safetensors
  model.safetensors.index.json     shards and an index naming the shard of every tensor
  generation_config.json         default generation settings (bos/eos ids)
  tokenizer files                when a tokenizer is given (acorn.Tokenizer.save)

Safetensors (Hugging Face 2022) is an 8-byte length, a JSON header of names, dtypes,
shapes and offsets, then raw bytes. Unlike a pickle (*.bin, *.pt), reading it runs no
code, and its header alone gives every shape: `model_info` reads only headers.

Acorn's parameter names are transformers' Llama names, so Llama, Mistral, Qwen2 and
Qwen3 tensors load as they are. Two families store weights differently:
  GPT-2    Conv1D layers keep weights as (in, out), the transpose of nn.Linear's (out, in),
           and q, k, v are one fused c_attn matrix; names start transformer.h.{i}.
  Mixtral  each expert's w1 (gate), w3 (up) and w2 (down) is its own tensor under
           block_sparse_moe; Acorn stacks them into (n_experts, ...) tensors.
`_to_hf` is the one map from Acorn's names to the files'; saving applies it, and
loading applies `_from_hf`, its inverse, after checking every name and shape against
what `_to_hf` gives for the config (on the meta device, so no memory).

Loading builds the model on the meta device (shapes, no storage) and assigns each
tensor as it is read, already in the requested dtype and on the target device, so a
model's weights exist once in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.hardware import DTYPE_NAMES, DTYPES, resolve_device, resolve_dtype
from acorn.fileio import atomic_directory, atomic_path, check_new_output, read_json, write_json
from acorn.model import lora, quant
from acorn.model.transformer import PRESETS, ModelConfig, Transformer, build

# transformers architecture -> Acorn's name for the family (also the config's model_type).
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
}
_FAMILY_ARCH = {family: arch for arch, family in ARCHITECTURES.items()}
# The same families as sequence classifiers (a reward model): the backbone's tensors, no LM head, and
# `score.weight` (num_labels x d_model, no bias) read at the last token that is not padding.
CLASSIFIERS = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
               "mistral": "MistralForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
               "qwen3": "Qwen3ForSequenceClassification", "mixtral": "MixtralForSequenceClassification"}
_CLASSIFIER_FAMILY = {arch: family for family, arch in CLASSIFIERS.items()}

# What transformers assumes when config.json leaves a field out (each config class's default).
_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, max_position_embeddings=2048, rope_theta=10000.0, sliding_window=None),
    "mistral": dict(rms_norm_eps=1e-6, max_position_embeddings=131072, rope_theta=10000.0, sliding_window=4096),
    "qwen2": dict(rms_norm_eps=1e-6, max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
                  max_window_layers=28),
    "qwen3": dict(rms_norm_eps=1e-6, max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
                  max_window_layers=28, head_dim=128),
    "mixtral": dict(rms_norm_eps=1e-5, max_position_embeddings=131072, rope_theta=1e6, sliding_window=None,
                    num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.001),
}
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}

_ST_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
# Fields of ModelConfig that no transformers config holds (training-time choices); saved under
# "acorn" in config.json so a save -> load round trip gives the same config.
_ACORN_ONLY = ("dropout", "init_std", "moe_capacity_factor")
# Files next to the weights that are pickles but not weights (HF Trainer's output).
_NOT_WEIGHTS = re.compile(r"(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")


# ------------------------------------------------------------------ config
def config_from_hf(hf: dict, where: str = "config.json") -> tuple[str, ModelConfig]:
    """A transformers config.json (as a dict) -> (family, ModelConfig)."""
    family = _family(hf, where)
    cfg = _gpt2_config(hf, where) if family == "gpt2" else _rope_family_config(hf, family, where)
    extra = hf.get("acorn") or {}
    return family, ModelConfig(**{**cfg, **{k: extra[k] for k in _ACORN_ONLY if k in extra}})


def _family(hf: dict, where: str) -> str:
    if hf.get("model_type") == "llava":
        raise AcornError(f"{where}: this is a LLaVA checkpoint (images + text), not a text-only one; load it with "
                         "acorn.vision.llava.load_llava (or Llava.from_pretrained)")
    archs = hf.get("architectures") or []
    name = archs[0] if archs else hf.get("model_type")
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if name in _CLASSIFIER_FAMILY:
        return _CLASSIFIER_FAMILY[name]
    if not archs and name in _FAMILY_ARCH:
        return name
    raise AcornError(f"{where}: architecture {name!r} is not supported; Acorn loads {', '.join(ARCHITECTURES)}")


def _need(hf: dict, key: str, where: str):
    if hf.get(key) is None:
        raise AcornError(f"{where}: lacks {key!r}; a transformers config.json for this architecture has it")
    return hf[key]


def _gpt2_config(hf: dict, where: str) -> dict:
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTIVATIONS:
        raise AcornError(f"{where}: GPT-2 activation_function {act!r} is not supported; "
                         f"use one of {', '.join(_GPT2_ACTIVATIONS)}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False or hf.get("add_cross_attention"):
        raise AcornError(f"{where}: GPT-2 with scale_attn_by_inverse_layer_idx, unscaled attention or cross-attention "
                         "is not supported; Acorn runs the standard GPT-2 attention")
    d = hf.get("n_embd", 768)
    return dict(vocab_size=hf.get("vocab_size", 50257), n_layer=hf.get("n_layer", 12), d_model=d,
                n_head=hf.get("n_head", 12), d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
                tie_embeddings=hf.get("tie_word_embeddings", True), positions="learned", norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=_GPT2_ACTIVATIONS[act],
                qkv_bias=True, out_bias=True, mlp_bias=True)


def _rope_family_config(hf: dict, family: str, where: str) -> dict:
    dflt = _DEFAULTS[family]

    def get(key):
        return hf[key] if hf.get(key) is not None else dflt.get(key)

    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise AcornError(f"{where}: hidden_act {act!r} is not supported for {family}; Acorn's gated MLP is SwiGLU (silu)")
    d, n_head, n_layer = _need(hf, "hidden_size", where), _need(hf, "num_attention_heads", where), _need(hf, "num_hidden_layers", where)
    max_pos = get("max_position_embeddings")
    theta, partial, scaling = _read_rope(hf, dflt["rope_theta"], max_pos, where)
    cfg = dict(vocab_size=_need(hf, "vocab_size", where), n_layer=n_layer, d_model=d, n_head=n_head,
               n_kv_head=hf.get("num_key_value_heads") or n_head, head_dim=get("head_dim") or d // n_head,
               d_ff=_need(hf, "intermediate_size", where), max_seq_len=max_pos,
               tie_embeddings=bool(hf.get("tie_word_embeddings", False)), positions="rope", rope_theta=float(theta),
               rope_partial=partial, rope_scaling=scaling, norm="rmsnorm", norm_eps=get("rms_norm_eps"), mlp="swiglu")
    if family == "llama":
        cfg.update(qkv_bias=bool(hf.get("attention_bias")), out_bias=bool(hf.get("attention_bias")),
                   mlp_bias=bool(hf.get("mlp_bias")))
    elif family == "qwen2":
        cfg.update(qkv_bias=True, sliding_window=_qwen_window(hf, n_layer, dflt, where))
    elif family == "qwen3":
        cfg.update(qkv_bias=bool(hf.get("attention_bias")), out_bias=bool(hf.get("attention_bias")), qk_norm=True,
                   sliding_window=_qwen_window(hf, n_layer, dflt, where))
    else:  # mistral, mixtral: one window for every layer, or none
        cfg.update(sliding_window=hf["sliding_window"] if "sliding_window" in hf else dflt["sliding_window"])
    if family == "mixtral":
        cfg.update(n_experts=get("num_local_experts"), n_experts_per_token=get("num_experts_per_tok"),
                   moe_aux_loss_coef=get("router_aux_loss_coef"), moe_renormalize=True)
    return cfg


def _read_rope(hf: dict, default_theta: float, max_pos: int, where: str) -> tuple[float, float, dict | None]:
    """(theta, partial rotary factor, scaling or None) from either way transformers writes them:
    5.x: rope_parameters = {rope_type, rope_theta, ...scaling keys}; older: rope_theta and
    rope_scaling (None when unscaled) at the top level. As in transformers, rope_scaling wins."""
    s = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in s.values()):
        raise AcornError(f"{where}: per-layer-type rope parameters are not supported; Acorn uses one RoPE for all layers")
    theta = s.pop("rope_theta", None) or hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") \
        or default_theta
    partial = s.pop("partial_rotary_factor", None) or hf.get("partial_rotary_factor") or 1.0
    kind = s.get("rope_type") or s.get("type") or "default"
    if kind == "default":
        return theta, partial, None
    if kind in ("llama3", "yarn", "longrope") and not s.get("original_max_position_embeddings"):
        s["original_max_position_embeddings"] = hf.get("original_max_position_embeddings") or max_pos
    return theta, partial, s


def _qwen_window(hf: dict, n_layer: int, dflt: dict, where: str) -> int | None:
    """Qwen2/3 slide on the layers listed as sliding_attention in layer_types, or else on layers
    >= max_window_layers -- and only when use_sliding_window is set. Acorn has one window for all."""
    window = (hf["sliding_window"] if "sliding_window" in hf else dflt["sliding_window"]) \
        if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    if types is None:
        first = hf.get("max_window_layers", dflt["max_window_layers"])
        types = ["sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n_layer)]
    sliding = [t == "sliding_attention" for t in types]
    if window is None or not any(sliding):
        return None
    if all(sliding):
        return window
    raise AcornError(f"{where}: sliding window on {sum(sliding)} of {n_layer} layers only (max_window_layers/layer_types); "
                     "Acorn applies one window to every layer, so it cannot run this model exactly")


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers architecture that runs `cfg` exactly; AcornError naming what has no equivalent."""
    problems, target = [], None
    if cfg.logit_softcap:
        problems.append(f"logit soft-capping (logit_softcap={cfg.logit_softcap})")
    if cfg.positions == "learned":
        target = "GPT2LMHeadModel"
        if cfg.norm != "layernorm":
            problems.append("RMSNorm with learned positions")
        if cfg.mlp not in ("gelu", "gelu_tanh"):
            problems.append(f"mlp={cfg.mlp!r} with learned positions")
        if not (cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias):
            problems.append("learned positions without biases on every projection")
        if not cfg.tie_embeddings:
            problems.append("an untied head with learned positions")
        if cfg.n_kv_head != cfg.n_head or cfg.head_dim * cfg.n_head != cfg.d_model:
            problems.append("grouped-query attention or a separate head_dim with learned positions")
        if cfg.qk_norm or cfg.sliding_window or cfg.n_experts:
            problems.append("QK-norm, a sliding window or experts with learned positions")
    elif cfg.positions == "rope":
        if cfg.norm != "rmsnorm":
            problems.append("LayerNorm with RoPE")
        if cfg.mlp != "swiglu":
            problems.append(f"a {cfg.mlp} MLP with RoPE")
        if cfg.rope_partial != 1:
            problems.append(f"partial rotary (rope_partial={cfg.rope_partial})")
        if cfg.n_experts:
            target = "MixtralForCausalLM"
            if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias or cfg.qk_norm:
                problems.append("biases or QK-norm in a mixture-of-experts model")
            if not cfg.moe_renormalize:
                problems.append("top-k router weights that are not renormalised (moe_renormalize=False)")
        elif cfg.qk_norm:
            target = "Qwen3ForCausalLM"
            if cfg.qkv_bias != cfg.out_bias or cfg.mlp_bias:
                problems.append("QK-norm with q/k/v biases but no output bias, or with MLP biases")
        elif cfg.qkv_bias and not cfg.out_bias:
            target = "Qwen2ForCausalLM"
            if cfg.mlp_bias:
                problems.append("q/k/v biases together with MLP biases")
        elif cfg.sliding_window:
            target = "MistralForCausalLM"
            if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
                problems.append("a sliding window with attention or MLP biases (other than Qwen2's q/k/v biases)")
        else:
            target = "LlamaForCausalLM"
            if cfg.out_bias and not cfg.qkv_bias:
                problems.append("an output-projection bias without q/k/v biases")
    else:
        problems.append(f"{cfg.positions!r} positions" if cfg.positions != "alibi" else "ALiBi positions")
    if problems:
        raise AcornError(
            f"cannot save as a Hugging Face checkpoint: {'; '.join(problems)} has no equivalent in "
            f"{target or 'any supported transformers architecture'}; exportable layouts are RoPE + RMSNorm + SwiGLU "
            "(Llama, Mistral with a window, Qwen2 with q/k/v biases, Qwen3 with QK-norm, Mixtral with experts) "
            "and GPT-2 (learned positions, LayerNorm, GELU, all biases, tied head)")
    return target


def hf_config(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32, bos_id=None, eos_id=None, pad_id=None) -> dict:
    """The config.json transformers needs to rebuild `cfg` (raises AcornError via hf_architecture)."""
    arch = hf_architecture(cfg)
    family = ARCHITECTURES[arch]
    out = {"architectures": [arch], "model_type": family, "vocab_size": cfg.vocab_size,
           "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
           "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
           # "dtype" is transformers 5's name; "torch_dtype" the older one, still read silently.
           "dtype": DTYPE_NAMES[dtype], "torch_dtype": DTYPE_NAMES[dtype]}
    if family == "gpt2":
        out.update(n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
                   n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                   activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
                   attn_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
    else:
        rope = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
        out.update(hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
                   num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                   hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                   attention_dropout=cfg.dropout,
                   # transformers 5 reads rope_parameters; older versions rope_theta and rope_scaling.
                   rope_parameters=rope, rope_theta=cfg.rope_theta)
        if cfg.rope_scaling:
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        if family in ("llama", "qwen3"):
            out["attention_bias"] = cfg.qkv_bias
        if family == "llama":
            out["mlp_bias"] = cfg.mlp_bias
        if family in ("mistral", "mixtral"):
            out["sliding_window"] = cfg.sliding_window
        if family in ("qwen2", "qwen3"):  # every layer or none (max_window_layers = first sliding layer)
            out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                       max_window_layers=0 if cfg.sliding_window else cfg.n_layer)
        if family == "mixtral":
            out.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_token,
                       router_aux_loss_coef=cfg.moe_aux_loss_coef)
    out["acorn"] = {k: getattr(cfg, k) for k in _ACORN_ONLY}
    return out


# ------------------------------------------------------------ weight maps
def _to_hf(family: str, cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Acorn state dict -> the tensors a transformers checkpoint of `family` holds (a tied head once)."""
    out = {}
    if family == "gpt2":
        out["transformer.wte.weight"] = sd["model.embed_tokens.weight"]
        out["transformer.wpe.weight"] = sd["model.embed_positions.weight"]
        for i in range(cfg.n_layer):
            a, h = f"model.layers.{i}.", f"transformer.h.{i}."
            for p in ("weight", "bias"):
                out[h + "ln_1." + p] = sd[a + "input_layernorm." + p]
                out[h + "ln_2." + p] = sd[a + "post_attention_layernorm." + p]
            # Conv1D stores (in, out): the transpose of nn.Linear; q, k, v fused in that order.
            out[h + "attn.c_attn.weight"] = torch.cat([sd[a + f"self_attn.{x}_proj.weight"] for x in "qkv"]).T
            out[h + "attn.c_attn.bias"] = torch.cat([sd[a + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            out[h + "attn.c_proj.weight"] = sd[a + "self_attn.o_proj.weight"].T
            out[h + "attn.c_proj.bias"] = sd[a + "self_attn.o_proj.bias"]
            out[h + "mlp.c_fc.weight"] = sd[a + "mlp.up_proj.weight"].T
            out[h + "mlp.c_fc.bias"] = sd[a + "mlp.up_proj.bias"]
            out[h + "mlp.c_proj.weight"] = sd[a + "mlp.down_proj.weight"].T
            out[h + "mlp.c_proj.bias"] = sd[a + "mlp.down_proj.bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["model.norm.weight"], sd["model.norm.bias"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return out
    for name, t in sd.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(gate\.weight|gate_proj|up_proj|down_proj)", name)
        if family == "mixtral" and m:
            moe = f"model.layers.{m[1]}.block_sparse_moe."
            if m[2] == "gate.weight":
                out[moe + "gate.weight"] = t
            else:
                w = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[m[2]]
                for j in range(cfg.n_experts):
                    out[f"{moe}experts.{j}.{w}.weight"] = t[j]
            continue
        out[name] = t
    return out


def _from_hf(family: str, cfg: ModelConfig, get, model: Transformer | None = None):
    """The inverse of _to_hf: yields (Acorn name, tensor), reading each with `get(checkpoint name)`
    only when it is needed, so the caller can convert and place it before the next is read.
    model: the (meta) model to fill, when it is not the plain one of cfg (a quantized one)."""
    if family == "gpt2":
        d = cfg.d_model
        yield "model.embed_tokens.weight", get("transformer.wte.weight")
        yield "model.embed_positions.weight", get("transformer.wpe.weight")
        for i in range(cfg.n_layer):
            a, h = f"model.layers.{i}.", f"transformer.h.{i}."
            for p in ("weight", "bias"):
                yield a + "input_layernorm." + p, get(h + "ln_1." + p)
                yield a + "post_attention_layernorm." + p, get(h + "ln_2." + p)
            for x, w in zip("qkv", get(h + "attn.c_attn.weight").T.split(d)):
                yield a + f"self_attn.{x}_proj.weight", w
            for x, b in zip("qkv", get(h + "attn.c_attn.bias").split(d)):
                yield a + f"self_attn.{x}_proj.bias", b
            yield a + "self_attn.o_proj.weight", get(h + "attn.c_proj.weight").T
            yield a + "self_attn.o_proj.bias", get(h + "attn.c_proj.bias")
            yield a + "mlp.up_proj.weight", get(h + "mlp.c_fc.weight").T
            yield a + "mlp.up_proj.bias", get(h + "mlp.c_fc.bias")
            yield a + "mlp.down_proj.weight", get(h + "mlp.c_proj.weight").T
            yield a + "mlp.down_proj.bias", get(h + "mlp.c_proj.bias")
        yield "model.norm.weight", get("transformer.ln_f.weight")
        yield "model.norm.bias", get("transformer.ln_f.bias")
        if not cfg.tie_embeddings:
            yield "lm_head.weight", get("lm_head.weight")
        return
    for name in (model or build(cfg, device="meta")).state_dict():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(gate\.weight|gate_proj|up_proj|down_proj)", name)
        if family == "mixtral" and m:
            moe = f"model.layers.{m[1]}.block_sparse_moe."
            if m[2] == "gate.weight":
                yield name, get(moe + "gate.weight")
            else:
                w = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[m[2]]
                yield name, torch.stack([get(f"{moe}experts.{j}.{w}.weight") for j in range(cfg.n_experts)])
            continue
        yield name, get(name)


def _expected_tensors(family: str, cfg: ModelConfig, model: Transformer | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint of this config (or of this meta model) holds."""
    return {k: tuple(v.shape) for k, v in _to_hf(family, cfg, (model or build(cfg, device="meta")).state_dict()).items()}


def _ignorable(family: str, cfg: ModelConfig, name: str) -> bool:
    """Tensors some checkpoints carry that are not weights: old RoPE and GPT-2 mask buffers,
    and a tied head written out anyway (transformers ties it to the embedding and ignores it)."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    if family == "gpt2" and re.fullmatch(r"transformer\.h\.\d+\.attn\.(masked_)?bias", name):
        return True
    return name == "lm_head.weight" and cfg.tie_embeddings


# ---------------------------------------------------------------- reading
def read_safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} from a .safetensors header, without reading the data.

    The header also says how long the file must be (8 + header + the last tensor's end):
    a file of another size is refused here, before any tensor is read, so a truncated
    copy is named as such (safetensors would fail later, on the first tensor read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000 or n > size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError) as e:
        raise AcornError(f"{path}: not a readable safetensors file ({e}); re-save or re-download it") from None
    if size != 8 + n + end:
        what = "truncated (an interrupted copy or download?)" if size < 8 + n + end else "longer than its header says"
        raise AcornError(f"{path}: the file is {size:,} bytes but its header describes {8 + n + end:,}: it is "
                         f"{what}; copy or download it again, or re-save the checkpoint")
    return header


class _Weights:
    """The tensors of a checkpoint directory, across shards, read one at a time on demand."""

    def __init__(self, directory: Path, *, allow_pickle: bool = False, headers_only: bool = False):
        self.files: dict[str, Path] = {}  # tensor name -> file
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self._open: dict[Path, object] = {}
        self._stored: dict[str, str] = {}  # a renamed tensor's name -> its name in the file (split)
        self._aside: dict[str, Path] = {}  # tensors split off (not the model's): name -> file
        found = self._find(directory, "model.safetensors", "*.safetensors")
        self.pickle = found is None
        if self.pickle:
            found = self._find(directory, "pytorch_model.bin", "*.bin", "*.pt", "*.pth")
            if found is None:
                raise AcornError(f"{directory}: no weights found; expected model.safetensors or "
                                 "model.safetensors.index.json with its shards")
            if not allow_pickle:
                first = sorted(set(found.values()) if isinstance(found, dict) else found)[0]
                # No command has a flag for this: the advice is a conversion, or the Python keyword.
                raise AcornError(f"{first} is a pickle checkpoint, which can run code when loaded; convert it to "
                                 "safetensors (transformers: AutoModelForCausalLM.from_pretrained(DIR)"
                                 ".save_pretrained(NEW_DIR)), or in Python load it with acorn.load(DIR, "
                                 "allow_pickle=True), which reads it with torch.load(weights_only=True)")
            if headers_only:
                return
        weight_map = found if isinstance(found, dict) else None
        for file in sorted(set(found.values()) if weight_map else found):
            for name, (shape, dtype) in self._read_meta(file).items():
                if weight_map is None or weight_map.get(name) == file:
                    self.files.setdefault(name, file)
                    self.shapes[name], self.dtypes[name] = shape, dtype
        for name, file in (weight_map or {}).items():
            if name not in self.files:
                raise AcornError(f"{file}: lacks tensor {name}, which the index places there; "
                                 "the index and the shards are from different saves")

    @staticmethod
    def _find(directory: Path, single: str, *patterns: str):
        """An index's weight_map (name -> shard path), or a list of files, or None."""
        index = directory / f"{single}.index.json"
        if index.is_file():
            data = read_json(index)
            if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
                raise AcornError(f"{index}: has no weight_map; it is not a checkpoint index")
            weight_map = {name: directory / file for name, file in data["weight_map"].items()}
            for file in sorted(set(weight_map.values())):
                if not file.is_file():
                    raise AcornError(f"{index} lists shard {file.name}, which is missing from {directory}; "
                                     "copy the complete checkpoint")
            return weight_map
        if (directory / single).is_file():
            return [directory / single]
        found = sorted(p for pat in patterns for p in directory.glob(pat) if not _NOT_WEIGHTS.search(p.name))
        return found or None

    def _read_meta(self, file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of one file; a pickle is loaded (memory-mapped) and kept."""
        if not self.pickle:
            return {n: (tuple(i["shape"]), i["dtype"]) for n, i in read_safetensors_header(file).items()}
        try:
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # truncated, the pre-1.6 non-zip format, or objects weights_only refuses
            raise AcornError(f"{file}: torch.load(weights_only=True) failed ({str(e).splitlines()[0]}); "
                             "convert the checkpoint to safetensors") from None
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise AcornError(f"{file}: not a flat state dict of tensors; save model.state_dict() instead")
        self._open[file] = sd
        return {n: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in sd.items()}

    def split(self, rename) -> list[str]:
        """Keep the tensors `rename` gives a name (a part of a larger model, under the names a
        checkpoint of that part alone has); the others (rename gives None) are set aside and
        returned, still readable with get under their own names."""
        kept, others = {}, []
        for name, file in self.files.items():
            new = rename(name)
            if new is None:
                others.append(name)
                self._aside[name] = file
            elif new in kept:
                raise AcornError(f"{file}: holds both {kept[new]} and {name}, one tensor under two layouts' "
                                 "names; re-save the checkpoint")
            else:
                kept[new] = name
        self.files = {new: self.files[old] for new, old in kept.items()}
        self.shapes = {new: self.shapes[old] for new, old in kept.items()}
        self.dtypes = {new: self.dtypes[old] for new, old in kept.items()}
        self._stored = {new: self._stored.get(old, old) for new, old in kept.items()}
        return others

    def get(self, name: str) -> Tensor:
        file = self.files[name] if name in self.files else self._aside[name]
        if file not in self._open:
            from safetensors import safe_open

            self._open[file] = safe_open(str(file), framework="pt", device="cpu")
        name = self._stored.get(name, name)
        return self._open[file][name] if self.pickle else self._open[file].get_tensor(name)


def _canonical_names(family: str, names) -> dict[str, str]:
    """Checkpoint name -> the name _to_hf uses. Original GPT-2 files lack the 'transformer.' prefix."""
    if family != "gpt2":
        return {n: n for n in names}
    return {n: n if n.startswith(("transformer.", "lm_head.", "score.")) else "transformer." + n for n in names}


def _check_tensors(family: str, cfg: ModelConfig, weights: _Weights, names: dict[str, str], where: Path,
                   model: Transformer | None = None, extra: dict[str, tuple[int, ...]] | None = None) -> None:
    """Every tensor the config implies (and `extra`, a head's), with its shape, and nothing else."""
    expected = {**_expected_tensors(family, cfg, model), **(extra or {})}
    present = {canon: weights.shapes[disk] for disk, canon in names.items()}
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AcornError(f"{where}: tensor {missing[0]}{more} is missing; config.json describes a model the "
                         "weights do not match, or the files are incomplete")
    extra = sorted(n for n in present if n not in expected and not _ignorable(family, cfg, n))
    if extra:
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise AcornError(f"{where}: unexpected tensors {', '.join(extra[:3])}{more}; "
                         f"config.json ({_FAMILY_ARCH[family]}) does not describe these weights")
    for name, shape in expected.items():
        if present[name] != shape:
            raise AcornError(f"{where}: tensor {name} has shape {list(present[name])} but config.json implies "
                             f"{list(shape)}; the config and the weights disagree")


# ------------------------------------------------------------------- load
def _checkpoint_dir(path) -> Path:
    directory = Path(path)
    if not directory.exists():
        raise AcornError(f"{directory}: no such directory; give a checkpoint directory with config.json")
    if not directory.is_dir():
        raise AcornError(f"{directory}: is a file; give the checkpoint directory that holds config.json")
    if not (directory / "config.json").is_file():
        raise AcornError(f"{directory}: has no config.json; it is not a Hugging Face checkpoint directory")
    return directory


def is_classifier(path) -> bool:
    """Whether a checkpoint directory holds a sequence classifier (a reward model: CLASSIFIERS)."""
    hf = read_json(_checkpoint_dir(path) / "config.json")
    return isinstance(hf, dict) and (hf.get("architectures") or [None])[0] in _CLASSIFIER_FAMILY


def load(path, *, dtype=None, device="auto", allow_pickle: bool = False, adapter=None,
         merge: bool = False) -> Transformer:
    """Load a local Hugging Face checkpoint directory (GPT-2, Llama, Mistral, Qwen2, Qwen3, Mixtral,
    or one Acorn saved) as an Acorn Transformer, in eval mode.

    dtype: None (the config's dtype when it is float32/bfloat16/float16, else float32; a quantized
        checkpoint on a CPU with bf16 instructions: bfloat16, see acorn.model.quant) or a name/torch dtype.
    device: "auto" picks cuda, then mps, then cpu.
    allow_pickle: also read *.bin/*.pt files, via torch.load(weights_only=True). Never fetches anything.
    adapter: a PEFT LoRA adapter directory (acorn.model.lora) to add to the base, unmerged (LoRALinear
        layers, the adapter in the model's dtype), or folded into the weights with merge=True.
    """
    if adapter is not None:  # a bad adapter directory fails before the base loads
        lora.read_adapter_config(adapter)
    directory = _checkpoint_dir(path)
    if is_classifier(directory):
        raise AcornError(f"{directory}: is a sequence classifier (a reward model: one score, no language-model "
                         "head); load it with acorn.train.reward.load_reward_model, or give a causal LM checkpoint")
    model, _ = _load(directory, dtype, device, allow_pickle)
    if adapter is not None:
        lora.load_adapter(model, adapter, dtype=quant.float_dtype(model))
        if merge:
            lora.merge_and_unload(model)
    return model.eval()


def load_classifier(path, *, dtype=None, device="auto") -> tuple[Transformer, Tensor, dict]:
    """A sequence classifier checkpoint (CLASSIFIERS, e.g. LlamaForSequenceClassification with
    num_labels 1): (the backbone as a Transformer whose head is tied to the embedding and unused,
    score.weight (num_labels, d_model), config.json as a dict). Safetensors only."""
    directory = _checkpoint_dir(path)
    if not is_classifier(directory):
        raise AcornError(f"{directory}: is not a sequence classifier checkpoint (architectures: one of "
                         f"{', '.join(CLASSIFIERS.values())}); train one with `acorn reward train`")
    model, heads = _load(directory, dtype, device, False, classifier=True)
    return model.eval(), heads["score.weight"], read_json(directory / "config.json")


def load_decoder(directory, text_config: dict, rename, *, dtype, device="cpu",
                 where: str = "config.json text_config") -> tuple[Transformer, dict[str, Tensor]]:
    """The decoder inside a larger checkpoint (a LLaVA's language model), and the checkpoint's
    other tensors. text_config: the decoder's transformers config (a dict); rename: a tensor's name
    in the files -> its name in a checkpoint of the decoder alone, or None for a tensor that is not
    the decoder's. The others come back under their own names, floats in dtype, on device."""
    directory = _checkpoint_dir(directory)
    model, others = _load(directory, dtype, device, False, part=(text_config, rename, where))
    return model.eval(), others


def _load(directory: Path, dtype, device, allow_pickle: bool, *, classifier: bool = False, part=None):
    """The weights of a checkpoint directory into a Transformer; with classifier=True the backbone
    of a sequence classifier (no LM head: the model's head is tied to the embedding) and its score;
    with part=(config, rename, where) the decoder of a larger model and the other tensors (load_decoder)."""
    if part is None:
        hf, rename, where = read_json(directory / "config.json"), None, str(directory / "config.json")
        if not isinstance(hf, dict):
            raise AcornError(f"{where}: not a JSON object; it is not a transformers config")
    else:
        hf, rename, where = part
    family, cfg = config_from_hf(hf, where)
    extra = {}
    if classifier:
        cfg.tie_embeddings = True  # a classifier has no LM head to load; tying gives the Transformer one for free
        labels = len(hf.get("id2label") or {}) or hf.get("num_labels") or 2  # transformers' default is 2
        extra = {"score.weight": (labels, cfg.d_model)}
    if dtype is None:
        saved = hf.get("dtype") or hf.get("torch_dtype")
        dtype = saved if isinstance(saved, str) and saved in DTYPES else "float32"
        if hf.get("quantization") is not None:  # int8/int4 kernels want bf16 activations on CPU
            dtype = quant.default_load_dtype(dtype, resolve_device(device))
    dtype, device = resolve_dtype(dtype), resolve_device(device)

    model = build(cfg, device="meta")
    if hf.get("quantization") is not None:  # written by acorn quantize: swap in its quantized layers
        quant.prepare(model, hf["quantization"], str(directory / "config.json"))
    weights = _Weights(directory, allow_pickle=allow_pickle)
    others = weights.split(rename) if rename is not None else []
    names = _canonical_names(family, weights.files)
    _check_tensors(family, cfg, weights, names, directory, model, extra)
    disk = {canon: n for n, canon in names.items()}

    for name, tensor in _from_hf(family, cfg, lambda n: weights.get(disk[n]), model):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, leaf)
        if not isinstance(old, nn.Parameter):  # a quantized layer's codes or scales: kept in their own dtype
            setattr(module, leaf, tensor.to(device=device).contiguous())
            continue
        # Straight to the target dtype and device, one tensor at a time: no second copy of the model.
        value = tensor.to(device=device, dtype=dtype).contiguous()
        setattr(module, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:  # a bug in the weight maps, not a user error
        raise RuntimeError(f"parameters not loaded: {left[:5]}")
    heads = {n: weights.get(disk[n]).to(device=device, dtype=dtype) for n in extra}
    for n in others:
        t = weights.get(n)
        heads[n] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return model, heads


# ------------------------------------------------------------------- save
def _parse_size(size) -> int:
    """5GB = 5 * 10^9 bytes, 5GiB = 5 * 2^30 (transformers' convention); an int is bytes."""
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B\s*", str(size).upper())
    if not m:
        raise AcornError(f"max_shard_size {size!r} is not a size; write it like 5GB, 500MB or 2GiB")
    base = 1024 if m[3] else 1000
    return int(float(m[1]) * base ** " KMGT".index(m[2] or " "))


_WEIGHT_FILES = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")  # what an earlier save left


def _disk_dtype(model: Transformer, dtype) -> torch.dtype:
    """The weights' dtype on disk: `dtype`, else the model's (a quantized model's float dtype)."""
    if dtype is not None:
        return resolve_dtype(dtype)
    return quant.float_dtype(model) if quant.quantization_of(model) is not None else model.dtype


def _own(t: Tensor) -> Tensor:
    """t, or a contiguous copy of it: safetensors refuses tensors that share memory (a stacked
    expert's slices, a tied head) and wants them contiguous."""
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.clone(memory_format=torch.contiguous_format)
    return t


def hf_tensors(model: Transformer, dtype=None) -> dict[str, Tensor]:
    """The tensors of `model`'s Hugging Face checkpoint: transformers' names (a tied head once), on
    the CPU, in `dtype` (default: the model's; quantized codes and scales keep theirs), each in its
    own contiguous storage. What no checkpoint can hold is an AcornError (hf_architecture's, LoRA)."""
    cfg = model.config
    if lora.lora_layers(model):
        raise AcornError("the model carries LoRA adapters, which a Hugging Face checkpoint has no place for; save "
                         "them with acorn.model.lora.save_adapter, or fold them in first with lora.merge_and_unload")
    family = ARCHITECTURES[hf_architecture(cfg)]
    quantization = quant.quantization_of(model)
    if quantization is not None and family == "gpt2":
        raise AcornError("a quantized model with GPT-2's layout cannot be saved: its checkpoint fuses q, k and v "
                         "and transposes every matrix, which packed weights cannot follow; quantize a RoPE model")
    if cfg.n_experts and cfg.moe_capacity_factor is not None:
        warnings.warn(f"moe_capacity_factor={cfg.moe_capacity_factor} is a training-time limit; transformers' "
                      "Mixtral runs dropless, so its outputs can differ where tokens were dropped", stacklevel=3)
    dtype = _disk_dtype(model, dtype)
    keep = quant.stored_tensors(model) if quantization else set()  # quantized codes and scales keep their dtype
    return {name: _own(t.detach().to(device="cpu", dtype=t.dtype if name in keep else dtype))
            for name, t in _to_hf(family, cfg, model.state_dict()).items()}


def save(model: Transformer, directory, *, tokenizer=None, dtype=None, max_shard_size="5GB",
         generation_config: dict | None = None, score: Tensor | None = None, pad_id: int | None = None) -> Path:
    """Write `model` as a Hugging Face checkpoint that transformers' from_pretrained loads.

    The architecture is the transformers one that runs the config exactly (see hf_architecture);
    a config with no equivalent is refused with an AcornError naming the feature. dtype: the weights'
    dtype on disk (default: the model's). Files are written to a temporary directory and moved into
    place, so an interrupted save leaves the previous checkpoint (if any) whole.

    score: (num_labels, d_model) to write a sequence classifier instead (CLASSIFIERS: a reward
    model): the backbone without the LM head, plus score.weight; pad_id (default the tokenizer's)
    is the config's pad_token_id, which transformers uses to find each row's last real token.
    """
    cfg = model.config
    tensors = hf_tensors(model, dtype)  # refuses what a checkpoint cannot hold, first
    family = ARCHITECTURES[hf_architecture(cfg)]
    quantization = quant.quantization_of(model)
    if score is not None and quantization is not None:
        raise AcornError("a quantized sequence classifier cannot be saved; save the float model")
    dtype = _disk_dtype(model, dtype)
    limit = _parse_size(max_shard_size)
    bos = eos = pad = None
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise AcornError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                             f"{cfg.vocab_size}; save with the tokenizer the model was trained with")
        bos, eos, pad = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
    if score is not None and pad_id is not None:
        pad = pad_id

    if score is not None:  # a classifier: the score instead of the LM head
        tensors.pop("lm_head.weight", None)
        tensors["score.weight"] = _own(score.detach().to(device="cpu", dtype=dtype))
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes

    with atomic_directory(directory, stale=_WEIGHT_FILES) as tmp:
        # Through atomic_path, like every other file: safetensors creates its files 0600,
        # atomic_path gives them the mode open() would (the umask's), as config.json has.
        if len(shards) == 1:
            write_safetensors(shards[0], tmp / "model.safetensors", directory)
        else:
            weight_map = {}
            for k, shard in enumerate(shards, 1):
                file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(shard, tmp / file, directory)
                weight_map.update(dict.fromkeys(shard, file))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            write_json(tmp / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
        config = hf_config(cfg, dtype=dtype, bos_id=bos, eos_id=eos, pad_id=pad)
        if quantization:
            config["quantization"] = quantization
        if score is not None:
            # transformers counts the labels from id2label (num_labels is not a stored field).
            labels = range(score.shape[0])
            config.update(architectures=[CLASSIFIERS[family]], id2label={str(i): f"LABEL_{i}" for i in labels},
                          label2id={f"LABEL_{i}": i for i in labels})
        write_json(tmp / "config.json", config)
        gen = {k: v for k, v in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)) if v is not None}
        write_json(tmp / "generation_config.json", {**gen, **(generation_config or {})})
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(directory)


def write_safetensors(tensors: dict[str, Tensor], path: Path, directory: Path) -> None:
    """safetensors' save_file, with an I/O failure (disk full, ...) raised as the OSError it is,
    naming the checkpoint directory: safetensors reports it as text in a SafetensorError."""
    from safetensors.torch import save_file

    try:
        with atomic_path(path) as f:  # safetensors makes its files 0600; atomic_path gives the umask's mode
            save_file(tensors, f, metadata={"format": "pt"})
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(directory / path.name)) from None


# ------------------------------------------------------------------- info
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _count(n: int) -> str:
    return f"{n:,} ({n / 1e9:.2f}B)" if n >= 1e9 else f"{n:,} ({n / 1e6:.1f}M)"


def model_info(path) -> str:
    """A description of a checkpoint directory (from config.json and safetensors headers only: no
    weights are read) or of an Acorn preset name: architecture, sizes, positions, and the memory
    its weights need at each precision."""
    p = Path(path)
    on_disk = None
    if p.exists():
        directory = _checkpoint_dir(p)
        hf = read_json(directory / "config.json")
        if not isinstance(hf, dict):
            raise AcornError(f"{directory / 'config.json'}: not a JSON object; it is not a transformers config")
        family, cfg = config_from_hf(hf, str(directory / "config.json"))
        arch = CLASSIFIERS[family] if is_classifier(directory) else _FAMILY_ARCH[family]
        title = f"{directory}"
        weights = _Weights(directory, allow_pickle=True, headers_only=True)
        if weights.pickle:
            on_disk = "pickle files (not inspected; pass allow_pickle=True to load)"
            total = cfg.num_params()
        else:
            names = _canonical_names(family, weights.files)
            counted = [n for n in names if not _ignorable(family, cfg, names[n])]
            total = sum(math.prod(weights.shapes[n]) for n in counted)
            nbytes = sum(math.prod(weights.shapes[n]) * _ST_BYTES.get(weights.dtypes[n], 4) for n in counted)
            kinds = sorted({weights.dtypes[n] for n in counted})
            n_files = len(set(weights.files.values()))
            on_disk = f"{'/'.join(kinds)}, {_human(nbytes)} in {n_files} file{'s' if n_files > 1 else ''}"
            q = hf.get("quantization")
            if isinstance(q, dict):  # packed codes are not one number per parameter: count from the config
                total = cfg.num_params()
                group = f", group size {q.get('group_size')}" if q.get("group_size") else ""
                on_disk += f"; {q.get('method')}{group} in {len(q.get('modules') or [])} layers (acorn quantize)"
    elif str(path) in PRESETS:
        cfg, title = ModelConfig.from_preset(str(path)), f"{path} (Acorn preset)"
        try:
            arch = f"Acorn; saves as {hf_architecture(cfg)}"
        except AcornError:
            arch = "Acorn (no transformers equivalent)"
        total = cfg.num_params()
    else:
        raise AcornError(f"{path}: no such checkpoint directory or preset; presets: {', '.join(PRESETS)}")

    lines = [title, f"  architecture   {arch}", f"  parameters     {_count(total)}"]
    if cfg.n_experts:
        active = total - (cfg.num_params() - cfg.num_params(active=True))
        lines.append(f"  active/token   {_count(active)} ({cfg.n_experts_per_token} of {cfg.n_experts} experts)")
    kv = f"{cfg.n_kv_head} kv heads" if cfg.n_kv_head != cfg.n_head else "multi-head"
    lines += [f"  layers         {cfg.n_layer}, width {cfg.d_model}, {cfg.n_head} heads of {cfg.head_dim} ({kv}), "
              f"mlp {cfg.d_ff} {cfg.mlp}",
              f"  vocab          {cfg.vocab_size:,}",
              f"  context        {cfg.max_seq_len:,} tokens" + (f", sliding window {cfg.sliding_window:,}"
                                                                 if cfg.sliding_window else "")]
    pos = cfg.positions
    if pos == "rope":
        pos = f"rope, theta {cfg.rope_theta:g}" + (f", rotary {cfg.rope_partial:g} of each head" if cfg.rope_partial != 1 else "")
        if cfg.rope_scaling:
            s = cfg.rope_scaling
            pos += f", {s['rope_type']} scaling" + (f" x{s['factor']:g}" if s.get("factor") else "") + \
                (f" from {s['original_max_position_embeddings']:,}" if s.get("original_max_position_embeddings") else "")
    biases = [b for b, on in (("qkv", cfg.qkv_bias), ("out", cfg.out_bias), ("mlp", cfg.mlp_bias)) if on]
    lines += [f"  positions      {pos}",
              f"  norm           {cfg.norm} (eps {cfg.norm_eps:g})" + (", QK-norm" if cfg.qk_norm else "")
              + f"; biases: {', '.join(biases) or 'none'}; head {'tied to' if cfg.tie_embeddings else 'separate from'} embeddings"]
    if on_disk:
        lines.append(f"  on disk        {on_disk}")
    mem = [f"{name} {_human(total * b)}" for name, b in (("fp32", 4), ("bf16", 2), ("fp16", 2), ("int8", 1), ("int4", 0.5))]
    lines.append(f"  weights memory {' | '.join(mem)} (int8/int4 before their scales)")
    return "\n".join(lines)


# ------------------------------------------------------------- quantize
def quantize_checkpoint(path, method: str, out, *, group_size: int | None = None, skip=("lm_head",),
                        overwrite: bool = False) -> str:
    """`acorn quantize`: load a checkpoint, quantize it, save it to `out` with the source's
    tokenizer and generation files; returns the summary printed (footprint before/after).
    An `out` that already holds files is refused unless `overwrite`."""
    quant.check_method(method, group_size)  # bad flags fail before the model loads
    src, dst = Path(path), Path(out)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise AcornError(f"{dst}: is the checkpoint being quantized; give another --out directory")
    check_new_output(dst, overwrite)
    model = load(src, device="cpu")
    before = quant.footprint(model)
    quant.quantize(model, method, group_size=group_size, skip=skip)
    after = quant.footprint(model)
    save(model, dst)
    # The tokenizer and generation settings are copied as they are: no round trip through
    # Acorn's tokenizer can lose anything of a foreign one.
    for f in sorted(src.iterdir()):
        weights = f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name.endswith(".index.json")
        if f.is_file() and not weights and f.name != "config.json":
            shutil.copyfile(f, dst / f.name)
    spec = quant.quantization_of(model)
    kept = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    group = f", group size {spec['group_size']}" if spec["group_size"] else ""
    kept_dtype = str(quant.float_dtype(model)).removeprefix("torch.")
    return (f"quantized {len(spec['modules'])} linear layers to {method}{group}; kept in {kept_dtype} "
            f"(with the embeddings): {', '.join(kept) or 'none'}\n"
            f"weights: {_human(before)} -> {_human(after)} ({after / before:.2f}x; {before:,} -> {after:,} bytes), "
            f"saved to {dst}")
