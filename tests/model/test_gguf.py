"""GGUF export (acorn.model.gguf): the file read back with gguf's own GGUFReader, every
tensor against the checkpoint's weights (Q/K rows put back in order; q8_0 within its
bound) and every metadata key against the config and the tokenizer; the Q/K reordering
against the two RoPE layouts; Acorn's split patterns against the regexes llama.cpp's
pre-tokenizers use; refusals and the CLI. Whether llama.cpp itself produces Acorn's
greedy tokens is checked once by benchmarks/gguf_llamacpp.py (docs/BENCHMARKS.md)."""

import random

import gguf
import numpy as np
import pytest
import regex
import torch

from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.checkpoint import load, save
from acorn.model.gguf import export_gguf, gguf_architecture, pre_tokenizer_name, rope_rows_to_pairs, write_gguf
from acorn.model.rope import apply_rope, rope_cos_sin, rope_parameters
from acorn.model.transformer import ModelConfig, build
from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, Tokenizer
from acorn.tokenizer.files import bytes_to_unicode

from tests.conftest import TEXT

Q = gguf.GGMLQuantizationType


def _read(path):
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def _unpair(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K order: within each head, rows (0, 1, 2, 3, ...) hold (0, d/2, 1, d/2 + 1, ...)."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _float(t) -> np.ndarray:
    """A tensor as float32 in torch's (out, in) shape, dequantized if it is q8_0."""
    data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type in (Q.Q8_0, Q.Q4_0, Q.BF16) else t.data
    return np.asarray(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))


def _expected_tensors(model, arch: str) -> dict[str, np.ndarray]:
    """GGUF name -> the checkpoint's weight, in the checkpoint's own row order."""
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not model.config.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    for key, value in sd.items():
        if key.startswith("model.layers."):
            i, rest = key.removeprefix("model.layers.").split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            out[f"blk.{i}.{names[module]}.{leaf}"] = value
    return out


def _check_tensors(path, model, arch: str, type: str) -> dict:
    """Every tensor of the file equals the checkpoint's (exactly in f32; as numpy rounds it
    in f16; within q8_0's bound), after Q/K rows are put back for llama. Returns the types."""
    _, tensors = _read(path)
    want = _expected_tensors(model, arch)
    assert set(tensors) == set(want)
    cfg = model.config
    types = {}
    for name, w in want.items():
        t = tensors[name]
        got = _float(t)
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            got = _unpair(got, cfg.n_head if ".attn_q." in name else cfg.n_kv_head)
        assert got.shape == w.shape, name
        types[name] = t.tensor_type
        if w.ndim == 1 or type == "f32":
            assert t.tensor_type == Q.F32 and np.array_equal(got, w), name
        elif type == "f16":
            assert t.tensor_type == Q.F16 and np.array_equal(got, w.astype(np.float16).astype(np.float32)), name
        else:
            assert t.tensor_type == Q.Q8_0, name
            # Blocks of 32: scale d = max|w| / 127 (stored in f16), q = round(w / d); so |error| <= d / 2
            # from rounding, plus at most 127 * d * 2^-11 from the f16 scale.
            blocks = w.reshape(-1, 32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / 127
            err = np.abs(got.reshape(-1, 32) - blocks)
            assert (err <= d * (0.5 + 127 * 2.0 ** -11) + 1e-12).all(), name
            assert err.max() > 0  # it really was quantized
    return types


# ------------------------------------------------------------ llama
def test_llama_f16_every_tensor_and_key(checkpoint, tok, tmp_path):
    path, hf = checkpoint
    out = tmp_path / "model.gguf"
    line = export_gguf(path, out, type="f16")
    assert "llama architecture" in line and "llama-bpe" in line
    model = load(path, dtype="float32", device="cpu")
    cfg = model.config
    _check_tensors(out, model, "llama", "f16")

    fields, _ = _read(out)
    byte_char = bytes_to_unicode()
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [5] * cfg.vocab_size
    for i in range(tok.vocab_size):
        special = tok.is_special(i)
        tokens[i] = tok.decode([i]) if special else "".join(byte_char[b] for b in tok.token_bytes(i))
        types[i] = 3 if special else 1
    expected = {
        "general.architecture": "llama", "general.name": path.name, "general.file_type": 1,
        "general.quantization_version": 2,
        "llama.context_length": 128, "llama.embedding_length": 32, "llama.block_count": 2,
        "llama.feed_forward_length": 64, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.attention.key_length": 8, "llama.attention.value_length": 8, "llama.rope.dimension_count": 8,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(hf.config.rms_norm_eps),
        "llama.rope.freq_base": pytest.approx(10000.0), "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": fields["tokenizer.ggml.merges"],  # checked below
        "tokenizer.ggml.bos_token_id": tok.token_id("<|bos|>"), "tokenizer.ggml.eos_token_id": tok.token_id("<|eos|>"),
        "tokenizer.ggml.padding_token_id": tok.token_id("<|pad|>"),
        "tokenizer.ggml.eot_token_id": tok.token_id("<|end|>"),
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    }
    assert fields == expected
    # A tokenizer Acorn trained learns merge k as token 256 + k: merge k's two halves make that token.
    merges = fields["tokenizer.ggml.merges"]
    n_merges = tok.vocab_size - 256 - len(tok.special_tokens)
    assert len(merges) == n_merges
    assert [m.replace(" ", "", 1) for m in merges] == tokens[256:256 + n_merges]
    assert all(len(m.split(" ")) == 2 for m in merges)


def test_llama_q8_0_within_its_bound(checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "q8.gguf"
    export_gguf(path, out, type="q8_0")
    model = load(path, dtype="float32", device="cpu")
    types = _check_tensors(out, model, "llama", "q8_0")
    assert sorted({t.name for t in types.values()}) == ["F32", "Q8_0"]
    assert _read(out)[0]["general.file_type"] == 7
    # q8_0 is about a quarter of f32 (34 bytes per 32 weights).
    f32 = tmp_path / "f32.gguf"
    export_gguf(path, f32, type="f32")
    _check_tensors(f32, model, "llama", "f32")
    assert out.stat().st_size < 0.5 * f32.stat().st_size


def test_llama_bf16_rounds_as_torch_and_q4_0_within_its_bound(checkpoint, tmp_path):
    path, _ = checkpoint
    model = load(path, dtype="float32", device="cpu")
    want = _expected_tensors(model, "llama")
    for type_, file_type in (("bf16", 32), ("q4_0", 2)):
        out = tmp_path / f"{type_}.gguf"
        export_gguf(path, out, type=type_)
        fields, tensors = _read(out)
        assert fields["general.file_type"] == file_type
        for name, w in want.items():
            t = tensors[name]
            got = _float(t)
            if name.split(".")[-2] in ("attn_q", "attn_k"):
                got = _unpair(got, model.config.n_head if ".attn_q." in name else model.config.n_kv_head)
            if w.ndim == 1:
                assert t.tensor_type == Q.F32 and np.array_equal(got, w), name
            elif type_ == "bf16":  # round to nearest even, as torch rounds
                assert t.tensor_type == Q.BF16, name
                assert np.array_equal(got, torch.from_numpy(w).bfloat16().float().numpy()), name
            elif name in ("token_embd.weight", "output.weight"):  # the 4-bit mix keeps these at 8 bits
                assert t.tensor_type == Q.Q8_0, name
            else:
                # Blocks of 32: d = (the weight of largest magnitude) / -8, code = round(w / d) + 8 in 0..15;
                # |error| <= |d| / 2, or |d| for a weight at -that magnitude (code 16 clipped to 15), plus
                # the f16 rounding of d (at most 8 |d| 2^-11).
                assert t.tensor_type == Q.Q4_0, name
                blocks = w.reshape(-1, 32)
                d = np.abs(blocks).max(axis=1, keepdims=True) / 8
                err = np.abs(got.reshape(-1, 32) - blocks)
                assert (err <= d * (1 + 8 * 2.0 ** -11) + 1e-12).all(), name
                assert np.median(err / np.maximum(d, 1e-12)) < 0.5 and err.max() > 0, name


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tok, tmp_path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=48, n_head=4, n_kv_head=2, d_ff=64,
                      max_seq_len=64)
    torch.manual_seed(0)
    model = build(cfg).eval()
    write_gguf(model, tok, tmp_path / "m.gguf", type="q8_0")
    _, tensors = _read(tmp_path / "m.gguf")
    assert tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0  # rows of d_ff = 64
    assert tensors["blk.0.ffn_up.weight"].tensor_type == Q.F16  # rows of d_model = 48


def test_qk_row_order_turns_rotate_half_into_neighbouring_pairs():
    """What the reordering is for: RoPE on q in transformers' layout (dimension i turns with
    i + d/2) gives, reordered, RoPE in llama.cpp's layout (2i turns with 2i + 1) on reordered
    q; so every attention score is the same."""
    n_heads, d, positions = 3, 8, torch.arange(5)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n_heads * d, 16, generator=g)
    x = torch.randn(5, 16, generator=g)
    inv_freq, _ = rope_parameters(d, theta=10000.0)
    cos, sin = rope_cos_sin(inv_freq, positions)
    q = (x @ w.T).view(5, n_heads, d).transpose(0, 1)  # (heads, T, d)
    rotated = apply_rope(q[None], cos[None], sin[None])[0]

    qp = (x @ rope_rows_to_pairs(w, n_heads).T).view(5, n_heads, d).transpose(0, 1)
    angle = positions[:, None].float() * inv_freq  # (T, d/2): pair i turns at inv_freq[i], as in llama.cpp
    even, odd = qp[..., 0::2], qp[..., 1::2]
    paired = torch.stack([even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1)
    paired = paired.flatten(-2)
    reordered = rope_rows_to_pairs(rotated.transpose(1, 2).reshape(n_heads * d, 5), n_heads)
    assert torch.allclose(paired, reordered.reshape(n_heads, d, 5).transpose(1, 2), atol=1e-5)


# ------------------------------------------------------- qwen2 / qwen3
@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_layouts_keep_rows_and_biases_or_qk_norms(family, tok, tmp_path):
    extra = dict(qkv_bias=True) if family == "qwen2" else dict(qk_norm=True)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=96,
                      max_seq_len=64, rope_theta=1e6, tie_embeddings=family == "qwen2", **extra)
    torch.manual_seed(0)
    model = build(cfg).eval()
    with torch.no_grad():  # biases and norm weights away from 0 and 1
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in n else 0.0))
    save(model, tmp_path / "ckpt", tokenizer=tok)
    model = load(tmp_path / "ckpt", dtype="float32", device="cpu")
    out = tmp_path / "m.gguf"
    assert f"{family} architecture" in export_gguf(tmp_path / "ckpt", out, type="f32")
    types = _check_tensors(out, model, family, "f32")
    assert ("blk.1.attn_q.bias" in types) == (family == "qwen2")
    assert ("blk.1.attn_k_norm.weight" in types) == (family == "qwen3")
    assert ("output.weight" in types) == (family == "qwen3")  # qwen2 here is tied
    fields, _ = _read(out)
    assert fields["general.architecture"] == family
    assert fields[f"{family}.rope.freq_base"] == pytest.approx(1e6)
    assert fields[f"{family}.feed_forward_length"] == 96


def test_rope_scaling_llama3_as_rope_freqs_and_linear_as_keys(tok, tmp_path):
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    for scaling in (llama3, {"rope_type": "linear", "factor": 4.0}):
        cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=64, n_head=2, d_ff=64, max_seq_len=256,
                          rope_theta=500000.0, rope_scaling=scaling)
        write_gguf(build(cfg).eval(), tok, tmp_path / "m.gguf", type="f32")
        fields, tensors = _read(tmp_path / "m.gguf")
        if scaling["rope_type"] == "llama3":
            # llama.cpp divides pair i's frequency by rope_freqs[i]: the plain frequencies
            # divided by it must be transformers' llama3 frequencies.
            plain, _ = rope_parameters(32, theta=500000.0)
            scaled, _ = rope_parameters(32, theta=500000.0, scaling=scaling, max_position_embeddings=256)
            factors = torch.tensor(_float(tensors["rope_freqs.weight"]))
            assert factors.shape == (16,) and factors[0] == 1 and factors[-1] == pytest.approx(8)
            assert torch.allclose(plain / factors, scaled, rtol=1e-6)
            assert "llama.rope.scaling.type" not in fields
        else:
            assert "rope_freqs.weight" not in tensors
            assert fields["llama.rope.scaling.type"] == "linear"
            assert fields["llama.rope.scaling.factor"] == 4.0


# ------------------------------------------------------- pre-tokenizers
# The regexes llama.cpp splits with for these pre-tokenizer names, as written in
# src/llama-vocab.cpp (llm_tokenizer_bpe): LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("llama-bpe") and
# LLAMA_VOCAB_PRE_TYPE_GPT2 ("gpt-2"; its splitter also keeps GPT-2's final |\s+).
LLAMA_CPP_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
                    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA_CPP_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Tricky pieces: contractions in both cases, digit runs, every kind of whitespace run,
# punctuation next to newlines, accents, CJK, emoji. Not 'ſ' (U+017F): case-insensitive
# matching folds it to s, so GPT-4's '(?i:s) takes "'ſ" and llama.cpp's '[sS] does not.
PIECES = ["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'x", "'", "don't", "I'M", "a", "Zebra",
          "héllo", "naïve", "日本語", "😀", "12", "3456789", "0", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ",
          "\t\n", ".", "...", "!?", ",", "(", ")", "-", "$", "#", "\u00a0", "x1", "1x", "__init__", " \n\n  x"]


def _random_texts(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))


@pytest.mark.parametrize("ours, theirs, name", [(GPT4_PATTERN, LLAMA_CPP_LLAMA3, "llama-bpe"),
                                                (GPT2_PATTERN, LLAMA_CPP_GPT2, "gpt-2")])
def test_acorn_patterns_split_as_llama_cpps_pre_tokenizers(ours, theirs, name):
    assert pre_tokenizer_name(ours) == name
    a, b = regex.compile(ours), regex.compile(theirs)
    for text in _random_texts(3000):
        assert a.findall(text) == b.findall(text), repr(text)


def test_gpt2_pattern_tokenizer_is_written_as_gpt2_pre_tokenizer(tmp_path):
    tok2 = Tokenizer.train([TEXT], 300, pattern="gpt2")
    cfg = ModelConfig(vocab_size=320, n_layer=1, d_model=32, n_head=2, d_ff=64, max_seq_len=32)
    write_gguf(build(cfg).eval(), tok2, tmp_path / "m.gguf", type="f16")
    fields, _ = _read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == 320 and fields["tokenizer.ggml.tokens"][-1] == "[PAD319]"
    assert fields["tokenizer.ggml.token_type"][-1] == 5


def test_unknown_split_pattern_is_refused_naming_it(tmp_path):
    pattern = r"\w+|\s+|[^\w\s]+"
    odd = Tokenizer.train([TEXT], 300, pattern=pattern)
    cfg = ModelConfig(vocab_size=odd.vocab_size, n_layer=1, d_model=32, n_head=2, d_ff=64, max_seq_len=32)
    with pytest.raises(AcornError) as e:
        write_gguf(build(cfg).eval(), odd, tmp_path / "m.gguf")
    msg = str(e.value)
    assert "\n" not in msg and repr(pattern) in msg and "--pattern gpt4" in msg
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides, named", [
    (dict(n_experts=4), "mixture of experts"),
    (dict(positions="alibi"), "ALiBi"),
    (dict(positions="learned", norm="layernorm", mlp="gelu_tanh"), "'learned' positions"),
    (dict(sliding_window=16), "sliding window (16) shorter than the context (64)"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "yarn RoPE scaling"),
])
def test_architectures_llama_cpp_cannot_run_are_refused(overrides, named):
    cfg = ModelConfig(vocab_size=300, n_layer=1, d_model=32, n_head=2, max_seq_len=64, **overrides)
    with pytest.raises(AcornError) as e:
        gguf_architecture(cfg)
    msg = str(e.value)
    assert named in msg and "\n" not in msg and "llama" in msg


def test_a_window_as_long_as_the_context_exports_as_llama():
    assert gguf_architecture(ModelConfig(vocab_size=300, d_model=32, n_head=2, max_seq_len=64,
                                         sliding_window=64)) == "llama"


# ------------------------------------------------------------------ CLI
def test_cli_writes_the_file(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "sub" / "model.gguf"
    assert main(["export", "gguf", str(path), "--out", str(out), "--type", "q8_0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _read(out)[0]["general.file_type"] == 7
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary file left


def test_cli_refusals_are_one_line_exit_2(tok, tmp_path, capsys):
    moe = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, d_ff=32, max_seq_len=64,
                      n_experts=4)
    save(build(moe).eval(), tmp_path / "moe", tokenizer=tok)
    odd = Tokenizer.train([TEXT], 300, pattern=r"\w+|\s+|[^\w\s]+")
    llama = ModelConfig(vocab_size=odd.vocab_size, n_layer=1, d_model=32, n_head=2, d_ff=64, max_seq_len=64)
    save(build(llama).eval(), tmp_path / "odd", tokenizer=odd)
    for ckpt, named in (("moe", "mixture of experts"), ("odd", "--pattern gpt4")):
        assert main(["export", "gguf", str(tmp_path / ckpt), "--out", str(tmp_path / "x.gguf")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("acorn: error: ") and err.count("\n") == 1 and named in err
    assert not (tmp_path / "x.gguf").exists()
