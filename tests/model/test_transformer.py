"""The transformer's own properties: causality, the KV cache, padding, sizes,
mixture of experts and initialisation. (Parity with transformers, family by
family, is in tests/model/test_checkpoint.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from acorn.errors import AcornError
from acorn.model.transformer import PRESETS, ModelConfig, Transformer, build, sinusoidal

VARIANTS = {
    "rope-gqa": dict(),
    "mqa-qknorm": dict(n_kv_head=1, qk_norm=True),
    "learned-gpt2": dict(positions="learned", norm="layernorm", mlp="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True),
    "alibi": dict(positions="alibi", mlp="relu2"),
    "sinusoidal": dict(positions="sinusoidal", mlp="gelu"),
    "window": dict(sliding_window=5),
    "moe": dict(n_experts=4, n_experts_per_token=2),
    "softcap-untied": dict(logit_softcap=5.0, tie_embeddings=False),
    "partial-rope": dict(rope_partial=0.5),
}


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, n_layer=2, d_model=32, n_head=4, n_kv_head=2, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


def model_for(name: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny(**VARIANTS[name])).eval()


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


@torch.no_grad()
def test_future_tokens_do_not_change_past_logits(variant):
    m = model_for(variant)
    ids = torch.randint(0, 61, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = torch.randint(0, 61, (2, 6))
    a, b = m(ids).logits, m(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@torch.no_grad()
def test_cache_decoding_equals_the_full_forward_with_padding(variant):
    m = model_for(variant)
    ids = torch.randint(0, 61, (3, 14))
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    full = m(ids, attention_mask=mask).logits
    out = m(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
    pieces, cache = [out.logits], out.cache
    for i in range(7, 14):
        out = m(ids[:, i : i + 1], attention_mask=mask[:, i : i + 1], cache=cache, use_cache=True)
        pieces.append(out.logits)
        cache = out.cache
    inc = torch.cat(pieces, 1)
    real = mask.bool()
    assert torch.isfinite(full).all() and torch.isfinite(inc).all()
    assert torch.allclose(inc[real], full[real], atol=1e-5)
    assert cache.length == 14 and cache.keys[0].shape == (3, m.config.n_kv_head, 14, 8)


@torch.no_grad()
def test_left_padding_does_not_change_real_logits(variant):
    m = model_for(variant)
    seq = torch.randint(0, 61, (1, 9))
    alone = m(seq).logits
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], 1).long()
    assert torch.allclose(m(padded, attention_mask=mask).logits[:, 4:], alone, atol=1e-5)


@pytest.mark.parametrize("name", ["rope-gqa", "alibi", "window"])
def test_no_attention_row_is_empty_under_padding(name):
    # An all-masked row is NaN in older torch and some fused kernels, and NaN
    # spreads through 0 * NaN to real tokens; every query must see a key.
    m = model_for(name)
    key_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    mask, _ = m.attention_mask(6, 0, key_mask, pos, pos, torch.float32)
    allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
    assert allowed.any(-1).all()


@torch.no_grad()
def test_packed_documents_equal_running_each_alone(variant):
    m = model_for(variant)
    docs = [torch.randint(0, 61, (1, n)) for n in (5, 7, 4)]
    packed = torch.cat(docs, 1)
    doc_ids = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], 1)
    out = m(packed, document_ids=doc_ids).logits
    alone = torch.cat([m(d).logits for d in docs], 1)
    assert torch.allclose(out, alone, atol=1e-5)
    # ... and without document_ids the later documents do see the earlier ones.
    assert not torch.allclose(m(packed).logits[:, 5:], alone[:, 5:], atol=1e-3)


@torch.no_grad()
def test_sliding_window_limits_what_a_token_sees():
    m = model_for("window")
    ids = torch.randint(0, 61, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 61
    a, b = m(ids).logits, m(changed).logits
    # Token 0 is inside the window of positions 1..4 only (window 5, two layers: up to 8).
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-4)
    assert torch.allclose(a[0, 9:], b[0, 9:], atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_formula_matches_the_module(name):
    cfg = tiny(**VARIANTS[name])
    assert cfg.num_params() == Transformer(cfg).num_params()


@pytest.mark.parametrize("name", ["nano", "gpt2-124m", "1b"])
def test_presets_have_their_advertised_size(name):
    n = ModelConfig.from_preset(name).num_params()
    expected = {"nano": 1.05e6, "gpt2-124m": 124.44e6, "1b": 1235.8e6}[name]  # GPT-2 small, Llama-3.2-1B
    assert abs(n - expected) / expected < 0.01


def test_flops_are_six_per_parameter_plus_attention():
    cfg = ModelConfig.from_preset("gpt2-124m")
    n = cfg.num_params(embeddings=False) + cfg.vocab_size * cfg.d_model
    assert cfg.flops_per_token(1024) == pytest.approx(6 * n + 6 * 2 * 12 * 768 * 1024)
    assert cfg.flops_per_token(1024, training=False) == pytest.approx(cfg.flops_per_token(1024) / 3)


def test_meta_build_has_no_storage():
    m = build(ModelConfig.from_preset("small"), device="meta")
    assert all(p.is_meta for p in m.parameters())


def test_residual_projections_start_smaller():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, n_layer=8, d_model=256, n_head=4))
    q = m.model.layers[0].self_attn.q_proj.weight.std().item()
    o = m.model.layers[0].self_attn.o_proj.weight.std().item()
    assert q == pytest.approx(0.02, rel=0.05)
    assert o == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_alibi_slopes_and_sinusoids():
    m = Transformer(tiny(positions="alibi", n_head=8, n_kv_head=8))
    assert torch.allclose(m.alibi_slopes("cpu"), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    pe = sinusoidal(torch.arange(5)[None], 8)[0]
    assert torch.allclose(pe[3, 0], torch.tensor(math.sin(3.0)))
    assert torch.allclose(pe[3, 5], torch.tensor(math.cos(3.0 / 10000 ** (1 / 4))))


def test_moe_counts_and_capacity():
    torch.manual_seed(0)
    m = Transformer(tiny(n_experts=4, n_experts_per_token=2)).eval()
    ids = torch.randint(0, 61, (2, 20))
    out = m(ids)
    assert out.expert_counts.shape == (2, 4)
    assert out.expert_counts.sum(1).tolist() == [80, 80]  # 40 tokens x 2 experts, per layer
    assert out.dropped_tokens == 0 and out.aux_loss.item() > 0
    m.config.moe_capacity_factor = 0.5
    for layer in m.model.layers:
        layer.mlp.capacity_factor = 0.5
    capped = m(ids)
    cap = math.ceil(0.5 * 40 * 2 / 4)
    over = (capped.expert_counts - cap).clamp(min=0).sum().item()
    assert capped.dropped_tokens == over > 0


def test_moe_balance_loss_is_k_when_routing_is_uniform():
    torch.manual_seed(0)
    cfg = tiny(n_experts=4, n_experts_per_token=2, moe_aux_loss_coef=1.0)
    moe = Transformer(cfg).model.layers[0].mlp
    torch.nn.init.zeros_(moe.gate.weight)  # every expert equally likely
    h = torch.randn(64, 1, cfg.d_model)
    _, aux, counts, _ = moe(h)
    # Ties in topk pick the same experts, so f is one-sided while P is uniform:
    # n_experts * sum_e (count_e / N) * (1 / n_experts) = k.
    assert aux.item() == pytest.approx(2.0)


def test_a_tiny_model_learns_a_batch():
    torch.manual_seed(0)
    m = Transformer(tiny())
    ids = torch.randint(0, 61, (4, 24))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = m(ids[:, :-1], targets=ids[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(61), rel=0.1)  # starts near uniform
    assert loss.item() < 0.5 * first


def test_ignore_index_and_last_only():
    m = model_for("rope-gqa")
    ids = torch.randint(0, 61, (2, 8))
    targets = ids.clone()
    targets[:, :4] = -100
    full = m(ids, targets=targets)
    manual = torch.nn.functional.cross_entropy(full.logits[:, 4:].reshape(-1, 61), ids[:, 4:].reshape(-1))
    assert torch.allclose(full.loss, manual)
    assert torch.allclose(m(ids, last_only=True).logits[:, 0], full.logits[:, -1])


def test_softcap_bounds_logits():
    m = model_for("softcap-untied")
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)
    assert m(torch.randint(0, 61, (1, 5))).logits.abs().max() <= 5.0


@torch.no_grad()
def test_hidden_only_gives_the_hidden_states_the_logits_come_from(variant):
    # What sentence embeddings and value heads read: the same states, without the head.
    m = model_for(variant)
    ids = torch.randint(0, 61, (2, 7))
    full, states = m(ids), m(ids, hidden_only=True)
    assert states.logits is None and full.hidden.shape == (2, 7, 32)
    assert torch.equal(states.hidden, full.hidden) and torch.equal(m.logits(full.hidden), full.logits)
    assert torch.equal(m(ids, last_only=True).hidden, full.hidden[:, -1:])
    with pytest.raises(ValueError, match="logits"):
        m(ids, targets=ids, hidden_only=True)


def test_config_errors():
    with pytest.raises(AcornError, match="multiple of n_kv_head"):
        ModelConfig(n_head=6, n_kv_head=4, d_model=48)
    with pytest.raises(AcornError, match="unknown model preset"):
        ModelConfig.from_preset("huge")
    with pytest.raises(AcornError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({"colour": 1})
    with pytest.raises(AcornError, match="longer than"):
        Transformer(tiny(positions="learned", max_seq_len=8))(torch.zeros(1, 9, dtype=torch.long))


def test_every_preset_builds_on_meta():
    for name in PRESETS:
        m = build(ModelConfig.from_preset(name), device="meta")
        assert m.num_params() == m.config.num_params()
