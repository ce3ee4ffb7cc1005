"""Weight-only quantization (acorn.model.quant): the error bounds of int8, int4 and NF4 on random
matrices, NF4's tables against QLoRA's and bitsandbytes', the packed kernels against the
fallback, the layers inside a model, save -> load -> generate with the engine, and the CLI."""

import hashlib
import json

import pytest
import torch
from torch import nn

from acorn.hardware import cpu_has_bf16
from acorn.model import quant
from acorn.model.checkpoint import load, save
from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, build


def _linear(out_f: int, in_f: int, *, seed: int = 0, std: float = 0.02, bias: bool = False) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        # Heavy-ish tails and a few outliers, as trained weights have.
        w = torch.randn(out_f, in_f, generator=g) * std
        w[torch.rand(out_f, in_f, generator=g) < 0.01] *= 8
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    return lin


def _quantized(lin: nn.Linear, method: str, group_size: int | None = None):
    cls = quant.MODULES[method]
    return cls.from_linear(lin) if method == "int8" else cls.from_linear(lin, group_size)


# ------------------------------------------------------------- the tables
QLORA_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_nf4_code_values_are_qloras_table_exactly():
    assert quant.NF4_CODE.dtype == torch.float32
    assert torch.equal(quant.NF4_CODE, torch.tensor(QLORA_NF4, dtype=torch.float32))


def test_dynamic_code_is_bitsandbytes_map():
    """The 8-bit code of the double quantization; values from bitsandbytes 0.50.2's
    create_dynamic_map(signed=True), which gave a bit-identical table."""
    code = quant.dynamic_code()
    assert code.shape == (256,) and torch.equal(code, code.sort().values) and code.unique().numel() == 256
    assert code[:3].tolist() == [-0.992968738079071, -0.9789062738418579, -0.96484375]
    assert code[125:131].tolist() == [-3.250000190746505e-06, -5.500000384017767e-07, 0.0, 5.500000384017767e-07,
                                      3.250000190746505e-06, 7.749999895168003e-06]
    assert code[-3:].tolist() == [0.9789062738418579, 0.992968738079071, 1.0]


def test_nf4_with_double_quant_equals_bitsandbytes():
    """Golden values from bitsandbytes 0.50.2, quantize_4bit(w, blocksize=64, compress_statistics=True,
    quant_type='nf4') on CPU: 300 blocks, so the second level has a full and a partial block.
    The weights are exact binary fractions, so every platform computes the same codes."""
    i = torch.arange(150 * 128)
    w = ((((i * 7919) % 2001) - 1000) * (1 + (i // 64) % 7)).float().reshape(150, 128) / 2**16
    lin = nn.Linear(128, 150, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = quant.NF4Linear.from_linear(lin, 64)

    def digest(t):
        return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]

    assert digest(layer.weight.flatten()) == "a697f5b464875fd6"  # packed codes, high nibble first
    assert digest(layer.absmax_code) == "2c15fc893af8258b"
    assert layer.absmax_scale.tolist() == pytest.approx([0.04647735506296158] * 2, rel=1e-6)
    assert layer.absmax_offset.item() == pytest.approx(0.06033416837453842, rel=1e-6)


# ------------------------------------------------------------ error bounds
def test_int8_error_within_half_a_step_per_row():
    lin = _linear(96, 256)
    layer = _quantized(lin, "int8")
    w, deq = lin.weight.detach(), layer.dequantize()
    scale = layer.scale.float()
    assert layer.weight.dtype == torch.int8 and layer.weight.abs().max() <= 127
    assert ((w - deq).abs() <= scale[:, None] / 2 * (1 + 1e-5)).all()
    # The scale is absmax / 127, rounded up to bfloat16 (no coarser than one bf16 step).
    absmax = w.abs().amax(1)
    assert (scale >= absmax / 127).all() and (scale <= absmax / 127 * (1 + 2**-7)).all()
    assert (layer.weight.abs().amax(1) >= 126).all()  # each row's largest weight uses the range


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_within_half_a_step_per_group(group_size):
    lin = _linear(96, 256, seed=group_size)
    layer = _quantized(lin, "int4", group_size)
    w = lin.weight.detach().reshape(96, -1, group_size)
    deq = layer.dequantize().reshape(96, -1, group_size)
    scale = layer.scale.float()[..., None]
    codes = layer.codes()
    assert codes.max() <= 15 and layer.scale.shape == (96, 256 // group_size)
    assert ((w - deq).abs() <= scale / 2 * (1 + 1e-4)).all()
    # Asymmetric: each group's minimum and maximum sit at the ends of the code range.
    g = codes.reshape(96, -1, group_size)
    assert (g.amin(-1) == 0).all() and (g.amax(-1) >= 14).all()
    assert (scale.squeeze(-1) <= (w.amax(-1) - w.amin(-1)) / 15 * (1 + 2**-6)).all()


@pytest.mark.parametrize("block", [64, 32, 128])
def test_nf4_codes_are_nearest_and_error_within_bound(block):
    lin = _linear(96, 256, seed=block)
    layer = _quantized(lin, "nf4", block)
    w = lin.weight.detach().reshape(-1, block)
    absmax = w.abs().amax(1)
    code = quant.NF4_CODE
    # Each element's code is the code value nearest to w / absmax (the true fp32 absmax).
    nearest = ((w / absmax[:, None])[..., None] - code).abs().argmin(-1)
    assert torch.equal(layer.codes().reshape(-1, block).long(), nearest)
    # Double quantization: the stored absmax a' is within half a step of the dynamic code
    # (times its block's scale) of the true a.
    dq = layer.absmax()
    dyn = quant.dynamic_code()
    half_step = max(((dyn[1:] - dyn[:-1]) / 2).max().item(), 1 + dyn[0].item())
    second = layer.absmax_scale.repeat_interleave(256)[: absmax.numel()]
    assert ((dq - absmax).abs() <= second * half_step * (1 + 1e-5) + 1e-7).all()
    assert (dq - absmax).abs().max() > 0  # the scales really are 8-bit
    # Elements: half the widest gap between NF4 codes times a', plus the scale's own error.
    half_gap = ((code[1:] - code[:-1]) / 2).max().item()
    assert half_gap == pytest.approx((1 - 0.6961928009986877) / 2)
    err = (w - layer.dequantize().reshape(-1, block)).abs()
    assert (err <= (dq * half_gap + (absmax - dq).abs())[:, None] * (1 + 1e-5)).all()


@pytest.mark.parametrize("method,group_size,limit", [("int8", None, 0.015), ("int4", 32, 0.10), ("int4", 128, 0.13),
                                                     ("nf4", 64, 0.12)])
def test_quantized_linear_output_close_to_float(method, group_size, limit):
    lin = _linear(96, 256, bias=True)
    layer = _quantized(lin, method, group_size)
    x = torch.randn(4, 7, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, yq = lin(x), layer(x)
    rel = ((yq - y).norm() / y.norm()).item()
    assert 0 < rel < limit
    assert yq.shape == y.shape and torch.allclose(layer.bias, lin.bias)


# ------------------------------------------------------------------- kernels
@pytest.mark.parametrize("method,group_size", [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_kernel_equals_fallback(method, group_size, dtype, monkeypatch):
    path = quant.kernel_path(method, "cpu", dtype)
    if path.startswith("fallback"):
        pytest.skip(f"no packed {method} kernel for {dtype} in this torch build ({path})")
    assert path == ("aten._weight_int8pack_mm" if method == "int8" else "aten._weight_int4pack_mm_for_cpu")
    # out_features 40 is not a multiple of 16: torch's CPU int4 kernel refuses that layer alone.
    for out_f in (96, 40):
        layer = _quantized(_linear(out_f, 256, bias=True), method, group_size)
        x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2)).to(dtype)
        with torch.no_grad():
            fast = layer(x)
            monkeypatch.setattr(quant, "USE_KERNELS", False)
            slow = layer(x)
            monkeypatch.setattr(quant, "USE_KERNELS", True)
        assert fast.dtype == slow.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(fast.float(), slow.float(), rtol=tol, atol=tol * slow.abs().max().item())
        # Only the kernel path fills the layer's cache; a layer the kernel refuses caches None.
        cached = layer._cache[x.device] if method == "int4" else layer._cache[x.device, dtype]
        assert (cached is None) == (method == "int4" and out_f == 40)


# --------------------------------------------------------- NF4 as a base
def test_nf4_is_a_frozen_base_with_gradients_to_the_input():
    lin = _linear(64, 128, bias=True)
    layer = _quantized(lin, "nf4", 64)
    assert not any(p.requires_grad for p in layer.parameters())
    assert {n for n, _ in layer.named_buffers()} == {"weight", "absmax_code", "absmax_scale", "absmax_offset"}
    x = torch.randn(3, 128, requires_grad=True)
    layer(x).square().sum().backward()
    w = layer.dequantize()
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, layer.bias).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert all(b.grad is None for b in layer.buffers())
    # Dequantizes to the input's dtype.
    with torch.no_grad():
        assert layer(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_casting_a_model_keeps_codes_and_scales(method, tok):
    model = quant.quantize(_model(tok, std=0.02), method)
    layer = model.model.layers[0].mlp.up_proj
    stored = {n: b.clone() for n, b in layer.named_buffers()}
    model.to(torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(torch.equal(b, stored[n]) and b.dtype == stored[n].dtype for n, b in layer.named_buffers())
    with torch.no_grad():
        x = torch.randn(2, 128, dtype=torch.bfloat16)
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), x.float() @ layer.dequantize().T, rtol=0.05, atol=0.05 * y.abs().max().item())


def test_int4_with_gradients_takes_the_fallback():
    layer = _quantized(_linear(64, 128), "int4", 64)
    x = torch.randn(3, 128, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.dequantize().sum(0).expand(3, -1), atol=1e-5)


# ------------------------------------------------------------- model level
# `tok` is the root conftest's tiny BPE.
def _model(tok, *, tie: bool = False, std: float = 0.3):
    torch.manual_seed(0)
    # init_std 0.3 keeps the logits apart, so greedy decoding is not decided by rounding noise.
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=128, n_head=4, n_kv_head=2, d_ff=256,
                      max_seq_len=128, tie_embeddings=tie, init_std=std)
    return build(cfg).eval()


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("float")
    save(_model(tok), path, tokenizer=tok)
    return path


LAYERS = [f"model.layers.{i}.{n}" for i in range(2) for n in
          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")]


def test_quantize_replaces_the_block_linears_and_keeps_head_and_embeddings(tok):
    model = _model(tok)
    before = quant.footprint(model)
    quant.quantize(model, "int4", group_size=64)
    assert [n for n, m in model.named_modules() if isinstance(m, quant.Int4Linear)] == LAYERS
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert isinstance(model.model.embed_tokens, nn.Embedding)
    linear_params = sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features for n in LAYERS)
    groups = linear_params // 64
    # 4 bits per weight plus a bf16 scale and offset per group of 64.
    assert before - quant.footprint(model) == linear_params * 4 - linear_params // 2 - groups * 4
    spec = quant.quantization_of(model)
    assert spec["method"] == "int4" and spec["group_size"] == 64 and spec["modules"] == LAYERS

    untied = quant.quantize(_model(tok), "int8", skip=())
    assert isinstance(untied.lm_head, quant.Int8Linear)
    only_mlp = quant.quantize(_model(tok), "nf4", skip=("lm_head", "*self_attn*"))
    assert quant.quantization_of(only_mlp)["modules"] == [n for n in LAYERS if "mlp" in n]


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="int3"), "unknown quantization method"),
    (dict(method="int4", group_size=256), "does not divide model.layers.0.self_attn.q_proj's 128 input features"),
    (dict(method="int4", group_size=48), "group size 48 is not supported"),
    (dict(method="int8", group_size=64), "one scale per output channel"),
    (dict(method="nf4", skip=()), None),
])
def test_quantize_refuses_bad_requests(tok, kwargs, message):
    model = _model(tok, tie=True) if message is None else _model(tok)
    with pytest.raises(AcornError, match=message or "tied to the token embeddings"):
        quant.quantize(model, **kwargs)
    assert quant.quantization_of(model) is None  # nothing changed
    quant.quantize(model, "int8")
    with pytest.raises(AcornError, match="already quantized"):
        quant.quantize(model, "int8")


def test_dequantize_gives_a_plain_float_model(tok, tmp_path):
    model = quant.quantize(_model(tok), "nf4")
    weights = {n: model.get_submodule(n).dequantize() for n in LAYERS}
    quant.dequantize(model)
    assert quant.quantization_of(model) is None
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in weights.items())
    save(model, tmp_path)
    assert "quantization" not in json.loads((tmp_path / "config.json").read_text())
    assert type(load(tmp_path, device="cpu").model.layers[0].mlp.up_proj) is nn.Linear


def test_quantized_model_logits_close_to_float(tok):
    """With weights of a trained model's scale (std 0.02), the logits move by about the
    layers' own error; smaller int4 groups are more accurate, int8 most of all."""
    ids = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    errors = {}
    for method, group_size, limit in [("int8", None, 0.015), ("int4", 32, 0.13), ("int4", 128, 0.16), ("nf4", 64, 0.14)]:
        model = _model(tok, std=0.02)
        with torch.no_grad():
            reference = model(ids).logits
            quant.quantize(model, method, group_size=group_size)
            logits = model(ids).logits
        errors[method, group_size] = ((logits - reference).norm() / reference.norm()).item()
        assert 0 < errors[method, group_size] < limit
    assert errors["int8", None] < errors["int4", 32] < errors["int4", 128]


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """Reference greedy decoding: the whole sequence through the model at every step, no cache."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("method,group_size", [("int8", None), ("int4", 128), ("int4", 32), ("nf4", 64)])
def test_round_trip_save_load_generate(method, group_size, float_checkpoint, tok, tmp_path):
    from acorn.infer import Engine, SamplingParams

    model = load(float_checkpoint, device="cpu")
    reference_logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    quant.quantize(model, method, group_size=group_size)
    save(model, tmp_path, tokenizer=tok)
    spec = json.loads((tmp_path / "config.json").read_text())["quantization"]
    assert spec["method"] == method and spec["group_size"] == group_size and spec["modules"] == LAYERS
    assert (tmp_path / "model.safetensors").stat().st_size < 0.5 * (float_checkpoint / "model.safetensors").stat().st_size

    # With no dtype a quantized checkpoint loads in bf16 where the CPU computes bf16 (its kernels' fast
    # path); float32 pinned here, to compare with the model that was saved.
    by_default = quant.float_dtype(load(tmp_path, device="cpu"))
    assert by_default == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    loaded = load(tmp_path, dtype="float32", device="cpu")
    assert type(loaded.model.layers[1].mlp.down_proj) is quant.MODULES[method]
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) and original[k].dtype == reloaded[k].dtype for k in original)
    assert quant.footprint(loaded) == quant.footprint(model)
    with torch.no_grad():
        logits = loaded(torch.tensor([[1, 2, 3, 4]])).logits
        assert torch.allclose(logits, model(torch.tensor([[1, 2, 3, 4]])).logits, atol=1e-5)
    assert not torch.allclose(logits, reference_logits, atol=1e-3)  # it is not the float model

    engine = Engine.from_pretrained(tmp_path, dtype="float32", device="cpu")
    prompt = engine.encode("The quick brown")
    out = engine.generate(prompt, SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    assert len(out.token_ids) >= 4 and prompt + out.token_ids == _greedy(model, prompt, len(out.token_ids))

    in_bf16 = load(tmp_path, dtype="bfloat16", device="cpu")  # codes and scales keep their own dtype
    layer = in_bf16.model.layers[0].self_attn.q_proj
    assert layer.weight.dtype == original["model.layers.0.self_attn.q_proj.weight"].dtype
    assert in_bf16.model.embed_tokens.weight.dtype == torch.bfloat16


def test_load_refuses_a_foreign_quantization_section(float_checkpoint, tmp_path):
    import shutil

    shutil.copytree(float_checkpoint, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    for section, message in [({"quant_method": "bitsandbytes"}, "not Acorn's"),
                             ({"method": "int4", "group_size": 128, "modules": ["model.norm"]}, "not a linear layer")]:
        (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "quantization": section}))
        with pytest.raises(AcornError, match=message):
            load(tmp_path / "c", device="cpu")


# -------------------------------------------------------------------- CLI
def test_cli_quantize(float_checkpoint, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(float_checkpoint), "--method", "int4", "--group-size", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    model = load(out, dtype="float32", device="cpu")  # as saved (float32 embeddings)
    assert quant.quantization_of(model)["group_size"] == 64
    before, after = quant.footprint(load(float_checkpoint, device="cpu")), quant.footprint(model)
    assert "quantized 14 linear layers to int4, group size 64" in printed
    assert f"({after / before:.2f}x; {before:,} -> {after:,} bytes)" in printed and after < before / 3
    assert (out / "tokenizer.json").is_file()
    from acorn.model.checkpoint import model_info

    info = model_info(out)
    assert "int4, group size 64 in 14 layers" in info
    assert info.split("parameters")[1].split("\n")[0] == model_info(float_checkpoint).split("parameters")[1].split("\n")[0]


@pytest.mark.parametrize("argv,message", [
    (["--method", "int5"], "unknown quantization method 'int5'"),
    (["--method", "int4", "--group-size", "256"], "does not divide"),
    (["--method", "int8", "--group-size", "64"], "one scale per output channel"),
    (["--method", "nf4", "MISSING"], "no such directory"),
])
def test_cli_quantize_errors_are_one_line_exit_2(argv, message, float_checkpoint, tmp_path, capsys):
    checkpoint = str(tmp_path / "missing") if "MISSING" in argv else str(float_checkpoint)
    argv = [a for a in argv if a != "MISSING"]
    assert main(["quantize", checkpoint, *argv, "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acorn: error: ") and message in err
    assert not (tmp_path / "q").exists()
