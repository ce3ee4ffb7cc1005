"""RoPE: inv_freq and attention factor equal transformers' ROPE_INIT_FUNCTIONS for every scaling type,
cos/sin at positions up to 128k equal transformers' rotary embedding modules, apply_rope equals
apply_rotary_pos_emb (full and partial rotary), scores depend only on relative position, and bad
scaling dicts are refused with the key named."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPTNeoXConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.llama import modeling_llama as llama

from acorn.errors import AcornError
from acorn.model.rope import apply_rope, rope_cos_sin, rope_parameters, validate_scaling

# (head_dim, partial_rotary_factor): full rotary runs through Llama, partial through GPT-NeoX, whose
# default RoPE honours partial_rotary_factor (Llama's default ignores it).
DIMS = [(64, 1.0), (128, 1.0), (80, 0.5), (64, 0.25)]


def _longrope(rot_pairs: int, **extra) -> dict:
    return {"rope_type": "longrope", "original_max_position_embeddings": 4096,
            "short_factor": [1.0 + 0.05 * i for i in range(rot_pairs)],
            "long_factor": [1.0 + 0.9 * i for i in range(rot_pairs)], **extra}


# name -> (scaling builder(rot_pairs), theta, max_position_embeddings, seq_len)
CASES = {
    "default": (lambda p: None, 10000.0, 2048, None),
    "linear": (lambda p: {"type": "linear", "factor": 4.0}, 10000.0, 2048, None),
    "dynamic-short": (lambda p: {"rope_type": "dynamic", "factor": 4.0}, 10000.0, 2048, 1000),
    "dynamic-long": (lambda p: {"rope_type": "dynamic", "factor": 4.0}, 10000.0, 2048, 9000),
    "dynamic-128k": (lambda p: {"rope_type": "dynamic", "factor": 2.0}, 500000.0, 8192, 131072),
    "yarn": (lambda p: {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
             1000000.0, 32768, None),
    "yarn-mscale": (lambda p: {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                               "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1},
                    10000.0, 163840, None),
    "yarn-lone-mscale": (lambda p: {"rope_type": "yarn", "factor": 8.0, "mscale": 0.7,
                                    "original_max_position_embeddings": 4096}, 10000.0, 32768, None),
    "yarn-attention-factor": (lambda p: {"rope_type": "yarn", "factor": 8.0, "attention_factor": 1.5,
                                         "original_max_position_embeddings": 4096}, 10000.0, 32768, None),
    "yarn-no-truncate": (lambda p: {"rope_type": "yarn", "factor": 16.0, "truncate": False, "beta_fast": 16,
                                    "beta_slow": 2, "original_max_position_embeddings": 4096},
                         150000.0, 65536, None),
    "yarn-default-original": (lambda p: {"rope_type": "yarn", "factor": 4.0}, 10000.0, 4096, None),
    "llama3": (lambda p: {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}, 500000.0, 131072, None),
    "longrope-short": (lambda p: _longrope(p), 10000.0, 131072, 4096),
    "longrope-long": (lambda p: _longrope(p), 10000.0, 131072, 4097),
    "longrope-attention-factor": (lambda p: _longrope(p, factor=8.0, attention_factor=1.2), 10000.0, 32768, 9000),
}


def _rot_pairs(head_dim, prf):
    return int(head_dim * prf) // 2


def _hf_config(head_dim, prf, theta, scaling, max_pos):
    params = {**copy.deepcopy(scaling or {"rope_type": "default"}), "rope_theta": theta}
    common = dict(hidden_size=2 * head_dim, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
                  vocab_size=16, max_position_embeddings=max_pos)
    if prf == 1.0:
        return LlamaConfig(head_dim=head_dim, rope_parameters=params, **common)
    return GPTNeoXConfig(rope_parameters={**params, "partial_rotary_factor": prf}, **common)


def _hf_rotary(config):
    cls = llama.LlamaRotaryEmbedding if isinstance(config, LlamaConfig) else neox.GPTNeoXRotaryEmbedding
    return cls(config)


@pytest.mark.parametrize("head_dim,prf", DIMS)
@pytest.mark.parametrize("name", list(CASES))
def test_inv_freq_and_attention_factor_match_transformers(name, head_dim, prf):
    build, theta, max_pos, seq_len = CASES[name]
    scaling = build(_rot_pairs(head_dim, prf))
    config = _hf_config(head_dim, prf, theta, scaling, max_pos)
    rope_type = config.rope_parameters["rope_type"]
    # "default" is not in ROPE_INIT_FUNCTIONS: each model class carries its own compute_default_rope_parameters
    init = ROPE_INIT_FUNCTIONS.get(rope_type) or _hf_rotary(config).compute_default_rope_parameters
    want_freq, want_factor = init(config, seq_len=seq_len)

    got_freq, got_factor = rope_parameters(head_dim, theta=theta, partial_rotary_factor=prf, scaling=scaling,
                                           max_position_embeddings=max_pos, seq_len=seq_len)
    assert got_freq.dtype == torch.float32 and got_freq.shape == (int(head_dim * prf) // 2,)
    torch.testing.assert_close(got_freq, want_freq.float(), rtol=1e-6, atol=0)
    assert got_factor == pytest.approx(want_factor, rel=1e-6)


def test_the_scalings_actually_scale():
    """Guards the parity test against comparing two no-ops: each type moves inv_freq away from plain RoPE."""
    for name in ["linear", "dynamic-long", "yarn", "llama3", "longrope-long"]:
        build, theta, max_pos, seq_len = CASES[name]
        freq, _ = rope_parameters(64, theta=theta, scaling=build(32), max_position_embeddings=max_pos, seq_len=seq_len)
        assert not torch.allclose(freq, rope_parameters(64, theta=theta)[0]), name
    yarn_factor = rope_parameters(64, theta=1e6, scaling=CASES["yarn"][0](32), max_position_embeddings=32768)[1]
    assert yarn_factor == pytest.approx(0.1 * math.log(4.0) + 1)  # YaRN's sqrt(1/t) for factor 4
    at_limit = rope_parameters(64, scaling={"rope_type": "dynamic", "factor": 4.0}, seq_len=2048)[0]
    assert torch.equal(at_limit, rope_parameters(64)[0])  # dynamic leaves the trained length alone


POSITIONS = {
    # largest positions 32499 and 129999: at these lengths transformers' float32 arithmetic for the dynamic
    # base differs from float64's by an ulp, which moves cos by ~1e-3 -- the parity must hold there too
    "32k": torch.tensor([[0, 1, 2, 1000, 4095, 4096, 8191, 20000, 32499],
                         [5, 6, 7, 8, 9, 10, 11, 12, 13]]),
    "128k": torch.tensor([[0, 3, 8192, 65535, 100000, 129999],
                          [129990, 129991, 129992, 129993, 129994, 129995]]),
    "short": torch.tensor([[0, 1, 2, 3, 100, 2047], [7, 8, 9, 10, 11, 12]]),  # dynamic/longrope stay unscaled
}


@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("head_dim,prf", [(128, 1.0), (80, 0.5)])
@pytest.mark.parametrize("name", ["default", "linear", "dynamic-long", "yarn", "yarn-mscale", "yarn-no-truncate",
                                  "llama3", "longrope-long", "longrope-attention-factor"])
def test_cos_sin_match_transformers_rotary_module(name, head_dim, prf, where):
    build, theta, max_pos, _ = CASES[name]
    config = _hf_config(head_dim, prf, theta, build(_rot_pairs(head_dim, prf)), max_pos)
    positions = POSITIONS[where]
    x = torch.zeros(1, dtype=torch.bfloat16)
    want_cos, want_sin = _hf_rotary(config)(x, positions)  # a fresh module: no state from earlier calls

    # Acorn reads the dict as transformers 5 stores it (rope_theta etc. inside); seq_len = largest position + 1
    freq, factor = rope_parameters(head_dim, theta=theta, partial_rotary_factor=prf, scaling=config.rope_parameters,
                                   max_position_embeddings=max_pos, seq_len=int(positions.max()) + 1)
    got_cos, got_sin = rope_cos_sin(freq, positions, factor, dtype=torch.bfloat16)
    assert got_cos.shape == want_cos.shape == (2, positions.shape[1], int(head_dim * prf))
    assert got_cos.dtype == torch.bfloat16
    f32_cos, f32_sin = rope_cos_sin(freq, positions, factor)  # bf16 rounding hides little: compare in float32 too
    ref = _hf_rotary(config)(torch.zeros(1), positions)
    torch.testing.assert_close(f32_cos, ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(f32_sin, ref[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_cos, want_cos, rtol=0, atol=0)
    torch.testing.assert_close(got_sin, want_sin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,prf", DIMS)
def test_apply_rope_matches_apply_rotary_pos_emb(head_dim, prf, dtype):
    gen = torch.Generator().manual_seed(head_dim + int(prf * 100))
    q, k = (torch.randn(2, 3, 7, head_dim, generator=gen).to(dtype) for _ in range(2))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [100, 101, 102, 5000, 5001, 5002, 5003]])
    freq, _ = rope_parameters(head_dim, partial_rotary_factor=prf)
    cos, sin = rope_cos_sin(freq, positions, dtype=dtype)
    # Llama's version rotates the whole head; GPT-NeoX's rotates cos.shape[-1] dims and passes the rest
    reference = llama.apply_rotary_pos_emb if prf == 1.0 else neox.apply_rotary_pos_emb
    want_q, want_k = reference(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), want_q, rtol=0, atol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), want_k, rtol=0, atol=0)
    rot = int(head_dim * prf)
    assert not torch.equal(apply_rope(q, cos, sin)[..., :rot], q[..., :rot])
    assert torch.equal(apply_rope(q, cos, sin)[..., rot:], q[..., rot:])


def test_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 64, generator=gen), torch.randn(1, 1, 1, 64, generator=gen)
    freq, _ = rope_parameters(64)

    def score(m, n):
        cos_m, sin_m = rope_cos_sin(freq, torch.tensor([[m]]))
        cos_n, sin_n = rope_cos_sin(freq, torch.tensor([[n]]))
        return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum().item()

    for m, n in [(0, 0), (3, 10), (10, 3), (50, 51)]:
        for shift in [1, 17, 1000]:
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=2e-3)
    assert abs(score(3, 10) - score(3, 11)) > 1e-2  # position matters at all


@pytest.mark.parametrize("scaling,key", [
    ({"rope_type": "banana", "factor": 2.0}, "banana"),
    ({"type": "linear"}, "'factor'"),
    ({"rope_type": "linear", "factor": None}, "'factor'"),
    ({"rope_type": "linear", "factor": "4"}, "'factor'"),
    ({"rope_type": "linear", "factor": 0.5}, "'factor'"),
    ({"rope_type": "dynamic", "factor": float("nan")}, "'factor'"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, "'high_freq_factor'"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "'high_freq_factor'"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fastt": 32}, "'beta_fastt'"),
    ({"rope_type": "yarn", "factor": 4.0, "truncate": "yes"}, "'truncate'"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096.5},
     "'original_max_position_embeddings'"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [1.0] * 32},
     "'original_max_position_embeddings'"),
    ({"rope_type": "longrope", "short_factor": "1,2", "long_factor": [1.0] * 32,
      "original_max_position_embeddings": 4096}, "'short_factor'"),
    ({"rope_type": "linear", "type": "dynamic", "factor": 2.0}, "rope_type"),
    ("linear", "dict"),
])
def test_bad_scaling_is_refused_naming_the_key(scaling, key):
    with pytest.raises(AcornError) as err:
        validate_scaling(scaling)
    assert key in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AcornError, match=key):
        rope_parameters(64, scaling=scaling)


@pytest.mark.parametrize("kwargs,key", [
    (dict(scaling=_longrope(8)), "'short_factor'"),  # 8 values for 32 rotary pairs
    (dict(scaling=_longrope(8), seq_len=10_000), "'long_factor'"),
    (dict(scaling={"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}), "rope_theta"),
    (dict(scaling={"rope_type": "default", "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
    (dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
])
def test_scaling_that_disagrees_with_the_model_is_refused(kwargs, key):
    with pytest.raises(AcornError, match=key):
        rope_parameters(64, **kwargs)


def test_validate_scaling_normalises_without_mutating():
    given = {"type": "yarn", "factor": 4.0}
    assert validate_scaling(given) == {"rope_type": "yarn", "factor": 4.0}
    assert given == {"type": "yarn", "factor": 4.0}
    assert validate_scaling(None) is None and validate_scaling({}) is None
    assert validate_scaling({"rope_type": "default", "rope_theta": 1e4})["rope_type"] == "default"
