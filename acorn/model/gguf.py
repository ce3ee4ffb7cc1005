"""GGUF export: an Acorn checkpoint as the one file llama.cpp runs (and Ollama, LM Studio, ...).

GGUF (ggml's file format, 2023) is a header, key-value metadata, a table of tensor
infos (name, shape, type, offset) and the tensor data, aligned. The one file holds
everything llama.cpp needs: it never reads config.json or tokenizer.json, so the
architecture's hyperparameters and the whole tokenizer travel as metadata. What
llama.cpp expects (read from its convert_hf_to_gguf.py and src/llama-vocab.cpp; the
names and keys themselves come from the `gguf` package, llama.cpp's own):

  architecture  general.architecture picks the compute graph: "llama" (Llama; Mistral
                when its window never binds), "qwen2" (q/k/v biases), "qwen3" (QK-norm).
                Its hyperparameters are keys under that name: llama.context_length,
                .embedding_length, .block_count, .feed_forward_length,
                .attention.head_count/_kv, .attention.key_length/value_length,
                .attention.layer_norm_rms_epsilon, .rope.freq_base, .rope.dimension_count,
                .rope.scaling.type/.factor, .vocab_size.
  tensors       token_embd, blk.{i}.attn_norm/attn_q/attn_k/attn_v/attn_output/
                ffn_norm/ffn_gate/ffn_up/ffn_down, output_norm, and output, which is
                left out for a tied head (llama.cpp then reuses token_embd).
  RoPE layout   transformers and Acorn rotate each head's dimension i with i + d/2
                (NeoX's "rotate half"); llama.cpp's llama graph rotates neighbours 2i
                and 2i+1 (GPT-J's layout). The converter reorders the rows of q and k
                within each head (row 2i <- i, row 2i+1 <- i + d/2), which gives the same
                attention scores. qwen2 and qwen3 run NeoX's layout: no reordering.
  types         1-D tensors (norms, biases, RoPE factors) stay float32; matrices are
                f32, f16, bf16, q8_0 (blocks of 32 weights: one f16 scale, 32 int8s)
                or q4_0 (blocks of 32: one f16 scale d, 32 4-bit codes q, w = (q - 8) d).
                In q4_0 the embedding and the output head are q8_0, as llama.cpp's own
                quantizer keeps them at more bits in its 4-bit mixes (Acorn's int4 keeps
                them in floating point). A matrix whose rows are not a multiple of 32
                falls back to f16.
  tokenizer     tokenizer.ggml.model "gpt2" means byte-level BPE: the tokens as GPT-2's
                printable byte characters, the merges "a b" in rank order, token types
                (1 normal, 3 control = special, 5 unused = a hole in the ids), bos/eos/
                pad/eot ids, add_bos_token, and the chat template.
  pre-tokenizer llama.cpp does not read a split regex from the file. tokenizer.ggml.pre
                names one of a fixed list compiled into llama-vocab.cpp, each with its
                own hand-written splitter. PRE_TOKENIZERS maps the patterns whose
                splitter is the same regex; any other is refused, naming the pattern.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, Transformer
from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")

# Split pattern -> the tokenizer.ggml.pre name whose splitter is the same regex. In
# llama-vocab.cpp, "llama-bpe" selects LLAMA_VOCAB_PRE_TYPE_LLAMA3, whose regex is
#   (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
#   \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
# and "gpt-2" selects LLAMA_VOCAB_PRE_TYPE_GPT2, whose regex is GPT-2's; src/unicode.cpp
# splits it by hand (unicode_regex_split_custom_gpt2, "GPT2 system regex"):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# GPT-4's pattern as Acorn writes it (tiktoken's cl100k) splits the same way as the
# first: '(?i:...) is the same seven contractions (only 'ſ, which case-folds to 's, is
# one for tiktoken and not for llama.cpp); the possessive ?+ and ++ never
# change a match there, since what follows cannot take back what they keep; and
# \s*[\r\n] and \s*[\r\n]+ both end at the last newline of a whitespace run. GPT-2's
# as Acorn writes it (tiktoken's r50k) ends in \s++$|\s+(?!\S)|\s, which matches what
# the original's \s+(?!\S)|\s+ does. llama-bpe also takes a chunk that is one token as
# that token (ignore_merges), as tiktoken does; gpt-2 applies the merges, which for BPE
# built from ranks end at that token anyway. tests/model/test_gguf.py replays the splits.
LLAMA3_HF_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's tokenizer.json, as loaded from a Llama 3 checkpoint
QWEN2_HF_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Qwen2's: single digits; llama.cpp's QWEN2 type
PRE_TOKENIZERS = {
    GPT4_PATTERN: "llama-bpe",
    LLAMA3_HF_PATTERN: "llama-bpe",
    GPT2_PATTERN: "gpt-2",
    QWEN2_HF_PATTERN: "qwen2",
}


def pre_tokenizer_name(pattern: str) -> str:
    """The tokenizer.ggml.pre name llama.cpp splits text by `pattern` with; AcornError if none."""
    try:
        return PRE_TOKENIZERS[pattern]
    except KeyError:
        raise AcornError(
            f"the tokenizer's split pattern {pattern!r} has no llama.cpp pre-tokenizer (llama.cpp picks one "
            "by name from a fixed list, and would split text differently); retrain the tokenizer with "
            "`acorn tokenizer train ... --pattern gpt4` (or gpt2)") from None


def gguf_architecture(cfg: ModelConfig) -> str:
    """The llama.cpp architecture that runs `cfg` exactly: "llama", "qwen2" or "qwen3";
    AcornError naming every feature it cannot run."""
    problems = []
    if cfg.positions != "rope":
        problems.append(f"{'ALiBi' if cfg.positions == 'alibi' else repr(cfg.positions)} positions")
    if cfg.norm != "rmsnorm":
        problems.append("LayerNorm")
    if cfg.mlp != "swiglu":
        problems.append(f"a {cfg.mlp} MLP")
    if cfg.n_experts:
        problems.append("a mixture of experts (not exported yet)")
    if cfg.rope_partial != 1:
        problems.append(f"partial rotary (rope_partial={cfg.rope_partial})")
    if cfg.logit_softcap:
        problems.append("logit soft-capping")
    if cfg.mlp_bias or cfg.out_bias:
        problems.append("MLP or output-projection biases")
    if cfg.qkv_bias and cfg.qk_norm:
        problems.append("q/k/v biases together with QK-norm")
    if cfg.sliding_window and cfg.sliding_window < cfg.max_seq_len:
        # llama.cpp's llama/qwen2 graphs attend to the whole context; a window at least
        # as long as the context never binds, so such a model runs the same.
        problems.append(f"a sliding window ({cfg.sliding_window}) shorter than the context ({cfg.max_seq_len})")
    kind = (cfg.rope_scaling or {}).get("rope_type", "default")
    if kind not in ("default", "linear", "llama3"):
        problems.append(f"{kind} RoPE scaling (linear and llama3 are exported)")
    if problems:
        raise AcornError(
            f"cannot export to GGUF: llama.cpp cannot run {'; '.join(problems)} in the architectures exported "
            "here; GGUF export takes RoPE + RMSNorm + SwiGLU models (llama; qwen2 with q/k/v biases; qwen3 "
            "with QK-norm); for the others use the Hugging Face checkpoint (transformers, vLLM)")
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


# ------------------------------------------------------------------ tensors
def rope_rows_to_pairs(w: Tensor, n_heads: int) -> Tensor:
    """Reorder q or k projection rows (a weight or a bias) from the rotate-half layout
    to llama.cpp's neighbouring pairs: within each head, row 2i <- i and 2i+1 <- i + d/2."""
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *rest).transpose(1, 2).reshape(w.shape)


def rope_freqs(cfg: ModelConfig) -> Tensor | None:
    """llama3 scaling as llama.cpp takes it: a rope_freqs tensor, each pair's frequency
    divisor (plain inv_freq / scaled inv_freq). None for the other scalings."""
    if (cfg.rope_scaling or {}).get("rope_type") != "llama3":
        return None
    from acorn.model.rope import rope_parameters

    kw = dict(theta=cfg.rope_theta, max_position_embeddings=cfg.max_seq_len)
    plain, _ = rope_parameters(cfg.head_dim, **kw)
    scaled, _ = rope_parameters(cfg.head_dim, scaling=cfg.rope_scaling, **kw)
    return plain / scaled


def gguf_tensors(model: Transformer, arch: str) -> dict[str, Tensor]:
    """GGUF name -> float32 tensor, in llama.cpp's layout, for every tensor the file holds."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    freqs = rope_freqs(cfg)
    if freqs is not None:
        out["rope_freqs.weight"] = freqs
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for acorn_name, gguf_name in names.items():
            for leaf in ("weight", "bias"):
                t = sd.get(f"model.layers.{i}.{acorn_name}.{leaf}")
                if t is None:
                    continue
                if arch == "llama" and gguf_name in ("attn_q", "attn_k"):
                    t = rope_rows_to_pairs(t, cfg.n_head if gguf_name == "attn_q" else cfg.n_kv_head)
                out[f"blk.{i}.{gguf_name}.{leaf}"] = t
    out["output_norm.weight"] = sd["model.norm.weight"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def encode_tensor(t: Tensor, type: str):
    """(numpy data, GGML type) of one tensor as written: 1-D stays f32 (llama.cpp adds
    norms and biases in f32), matrices take `type`, q8_0 falling back to f16 for rows
    that are not whole blocks."""
    import gguf

    a = t.numpy().astype(np.float32)
    Q = gguf.GGMLQuantizationType
    if a.ndim == 1 or type == "f32":
        return a, Q.F32
    if type == "bf16":
        return gguf.quants.quantize(a, Q.BF16), Q.BF16
    block = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}.get(type)
    if block is not None and a.shape[-1] % gguf.GGML_QUANT_SIZES[block][0] == 0:
        return gguf.quants.quantize(a, block), block
    return a.astype(np.float16), Q.F16


# ---------------------------------------------------------------- tokenizer
def tokenizer_metadata(tok, vocab_size: int) -> dict:
    """The tokenizer as llama.cpp reads it, padded to the model's `vocab_size`:
    model, pre, tokens, token_type, merges, the special ids and add_bos."""
    import tiktoken

    from acorn.chat.formats import FORMATS
    from acorn.tokenizer.files import recover_merges, token_str

    if tok.mergeable_ranks is None or not isinstance(tok.encoding, tiktoken.Encoding):
        raise AcornError(
            f"the tokenizer {tok.name!r} is not plain byte-level BPE (it needs a normalizer, added words or the "
            "tokenizers library), which llama.cpp's BPE cannot reproduce; export a model whose tokenizer Acorn "
            "trained (or GPT-2's / Llama 3's)")
    pre = pre_tokenizer_name(tok.pattern)
    if tok.vocab_size > vocab_size:
        raise AcornError(f"the tokenizer has {tok.vocab_size} tokens but the model only {vocab_size}; "
                         "they do not belong together")
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [5] * vocab_size  # 5: UNUSED
    for b, i in tok.mergeable_ranks.items():
        tokens[i], types[i] = token_str(b), 1  # NORMAL
    for s, i in tok.special_tokens.items():
        tokens[i], types[i] = s, 3  # CONTROL: never produced by splitting text
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [f"{token_str(a)} {token_str(b)}" for a, b in recover_merges(tok.mergeable_ranks)],
        # Acorn's engine puts BOS before a text prompt when the tokenizer has one (models
        # it trains saw it before every document); llama.cpp's llama-bpe adds one by
        # default, so the choice is written either way.
        "tokenizer.ggml.add_bos_token": tok.bos_id is not None,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, tid in (("bos", tok.bos_id), ("eos", tok.eos_id), ("padding", tok.pad_id)):
        if tid is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = tid
    fmt = FORMATS.get(tok.chat_format or "")
    ends = [t for t in (fmt.stop_tokens if fmt else ()) if t in tok.special_tokens and t != tok.eos_token]
    if ends:  # the end of an assistant turn: llama.cpp stops there too
        meta["tokenizer.ggml.eot_token_id"] = tok.special_tokens[ends[0]]
    if tok.chat_template:
        meta["tokenizer.chat_template"] = tok.chat_template
    return meta


# ------------------------------------------------------------------- export
def model_metadata(cfg: ModelConfig, arch: str) -> dict:
    """The architecture's hyperparameters under `arch`'s keys."""
    meta = {
        f"{arch}.context_length": cfg.max_seq_len,
        f"{arch}.embedding_length": cfg.d_model,
        f"{arch}.block_count": cfg.n_layer,
        f"{arch}.feed_forward_length": cfg.d_ff,
        f"{arch}.attention.head_count": cfg.n_head,
        f"{arch}.attention.head_count_kv": cfg.n_kv_head,
        f"{arch}.attention.key_length": cfg.head_dim,
        f"{arch}.attention.value_length": cfg.head_dim,
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        f"{arch}.rope.freq_base": float(cfg.rope_theta),
        f"{arch}.rope.dimension_count": cfg.head_dim,
        f"{arch}.vocab_size": cfg.vocab_size,
    }
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = float(scaling["factor"])
    return meta


def write_gguf(model: Transformer, tokenizer, out, *, type: str = "f16", name: str = "acorn") -> dict:
    """Write `model` and `tokenizer` to the GGUF file `out` (atomically); returns a
    summary: arch, pre-tokenizer, tensor count, each GGML type's count, bytes."""
    import gguf

    from acorn.fileio import atomic_path

    if type not in TYPES:
        raise AcornError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    cfg = model.config
    arch = gguf_architecture(cfg)
    tok_meta = tokenizer_metadata(tokenizer, cfg.vocab_size)
    out = Path(out)
    if out.is_dir():
        raise AcornError(f"{out}: is a directory; give the .gguf file to write, e.g. --out {out / 'model.gguf'}")

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[type]
    counts: dict[str, int] = {}
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in {**model_metadata(cfg, arch), **tok_meta}.items():
            _add(w, key, value)
        for tname, t in gguf_tensors(model, arch).items():
            # 4-bit mixes keep the embedding and the head at 8 bits (llama.cpp's quantizer does too).
            big = type == "q4_0" and tname in ("token_embd.weight", "output.weight")
            data, qtype = encode_tensor(t, "q8_0" if big else type)
            w.add_tensor(tname, data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"arch": arch, "pre": tok_meta["tokenizer.ggml.pre"], "tensors": sum(counts.values()), "types": counts,
            "bytes": out.stat().st_size}


def _add(w, key: str, value) -> None:
    """One metadata key with the GGUF value type llama.cpp reads it as (counts and ids
    uint32, as its converter writes them; a list of ints is int32, as token_type must be)."""
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    else:
        w.add_array(key, list(value))


def export_gguf(checkpoint, out, *, type: str = "f16", overwrite: bool = False) -> str:
    """`acorn export gguf`: load a checkpoint and its tokenizer, write `out` (refused where a file
    is already there, unless overwrite); returns the line printed."""
    from acorn.fileio import read_json
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer

    if type not in TYPES:  # bad flags fail before the model loads
        raise AcornError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    if Path(out).is_dir():
        raise AcornError(f"--out {out} is a directory; give the path of the .gguf file to write")
    if Path(out).exists() and not overwrite:
        raise AcornError(f"--out {out} already exists; choose another --out or pass --overwrite to replace it")
    src = Path(checkpoint)
    config = src / "config.json"
    if config.is_file() and read_json(config).get("quantization") is not None:
        raise AcornError(f"{src}: is a checkpoint quantized by `acorn quantize`; export the float checkpoint it "
                         "was made from (--type q8_0 quantizes for llama.cpp)")
    model = load(src, dtype="float32", device="cpu")
    gguf_architecture(model.config)  # the architecture's refusal comes before the tokenizer's
    tokenizer = Tokenizer.from_pretrained(src)
    info = write_gguf(model, tokenizer, out, type=type, name=src.resolve().name)
    types = ", ".join(f"{n} {k.lower()}" for k, n in sorted(info["types"].items()))
    return (f"wrote {out}: {info['arch']} architecture, {info['tensors']} tensors ({types}), "
            f"pre-tokenizer {info['pre']}, {info['bytes'] / 2**20:.1f} MiB")
