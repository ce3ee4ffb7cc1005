"""Packed weights (acorn.model.packed): the fused / pre-packed forward gives the plain
forward's numbers, steps aside when it must (gradients, replaced layers) and follows
weights that change (a training step, a load)."""

import copy

import pytest
import torch

from acorn.model import packed, quant
from acorn.model.transformer import ModelConfig, build


def _model(dtype=torch.float32, **over):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=96, n_layer=2, d_model=64, n_head=4, n_kv_head=2, max_seq_len=64,
                                tie_embeddings=False), **over})
    return build(cfg).eval().to(dtype)


IDS = torch.tensor([[5, 17, 3, 44, 9, 60, 2], [1, 2, 3, 4, 5, 6, 7]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits.float()


def _packs_used(model) -> int:
    return sum(p._run is not None for m in model.modules() for p in m.__dict__.values() if isinstance(p, packed.Pack))


@pytest.mark.parametrize("over", [{}, dict(qkv_bias=True), dict(qk_norm=True), dict(mlp="gelu"),
                                  dict(rope_partial=0.5), dict(tie_embeddings=True)])
def test_fused_float32_forward_equals_the_plain_one(over):
    model = _model(**over)
    want = _logits(model)
    packed.pack(model)
    got = _logits(model)
    assert _packs_used(model) >= 2  # q/k/v fused in each layer at least
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    packed.unpack(model)
    assert not packed.is_packed(model) and torch.equal(_logits(model), want)


def test_packed_bf16_forward_is_close_to_the_plain_one():
    model = _model(torch.bfloat16)
    want = _logits(model)
    packed.pack(model)
    got = _logits(model)
    if packed.mkldnn_bf16():  # every linear runs oneDNN's packed kernel: head and o/down too
        assert _packs_used(model) == 2 * 4 + 1
    assert (got - want).abs().max() <= 0.02 * want.abs().max()


def test_packs_step_aside_under_gradients_and_the_backward_is_the_plain_one():
    model = _model()
    plain = copy.deepcopy(model)
    packed.pack(model)
    model(IDS).logits.sum().backward()
    plain(IDS).logits.sum().backward()
    assert _packs_used(model) == 0
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_packs_follow_weights_that_change_in_place():
    model = _model()
    packed.pack(model)
    before = _logits(model)
    with torch.no_grad():  # an optimizer step: in place, same tensors
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    after = _logits(model)
    assert not torch.allclose(after, before)
    want = _logits(packed.unpack(copy.deepcopy(model)))
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    model.load_state_dict(_model().state_dict())  # a load copies into the same tensors
    torch.testing.assert_close(_logits(model), before, rtol=1e-5, atol=1e-5)


def test_a_layer_replaced_after_packing_is_run_as_it_is_now():
    model = _model()
    packed.pack(model)
    _logits(model)
    quant.quantize(model, "int8")  # replaces q/k/v/o and the MLP's layers: the old packs must not run
    want = _logits(packed.unpack(copy.deepcopy(model)))
    packs = model.model.layers[0].self_attn.__dict__[packed.QKV]
    assert packs(torch.randn(1, 64)) is None
    torch.testing.assert_close(_logits(model), want)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_fused_quantized_layers_give_each_layers_rows(method):
    model = quant.quantize(_model(), method, group_size=32 if method == "int4" else None)
    want = _logits(model)
    packed.pack(model)
    got = _logits(model)
    assert _packs_used(model) == 2 * 2  # q/k/v and gate/up of each layer
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_copies_and_state_dicts_know_nothing_of_packs():
    model = _model()
    keys = list(model.state_dict())
    packed.pack(model)
    _logits(model)
    assert list(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    assert twin.model.layers[0].self_attn.__dict__[packed.QKV].owner is twin.model.layers[0].self_attn
    with torch.no_grad():
        twin.model.layers[0].self_attn.q_proj.weight.zero_()  # the copy's weights are its own
    assert not torch.allclose(_logits(twin), _logits(model))
    import pickle

    again = pickle.loads(pickle.dumps(model))  # torch.save(model) pickles: the packed copies stay behind
    assert again.model.layers[0].self_attn.__dict__[packed.QKV]._run is None
    torch.testing.assert_close(_logits(again), _logits(model))


@pytest.mark.parametrize("tied", [False, True])
def test_a_quantized_models_float_head_runs_from_an_int8_copy_in_bf16(tied):
    model = quant.quantize(_model(tie_embeddings=tied), "int8").to(torch.bfloat16)
    twin = copy.deepcopy(model)
    twin.lm_head = quant.Int8Linear.from_linear(twin.lm_head)  # the head quantized for real
    packed.pack(model, int8_head=True)
    packed.pack(twin)
    got = _logits(model)
    head = model.__dict__[packed.HEAD]
    if quant.kernel_path("int8", "cpu", torch.bfloat16) != quant.FALLBACK:
        assert isinstance(head._run, quant.Int8Linear)
        torch.testing.assert_close(got, _logits(twin))
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied  # the embedding is untouched
    assert packed.pack(_model(torch.bfloat16)).__dict__[packed.HEAD].int8 is False  # by default: the head as it is


def test_the_engine_switch_runs_the_head_from_int8(tok):
    from acorn.errors import AcornError
    from acorn.infer import Engine

    model = quant.quantize(_model(vocab_size=tok.vocab_size), "int8").to(torch.bfloat16)
    engine = Engine(model, tok, int8_head=True)
    assert model.__dict__[packed.HEAD].int8 is True
    assert len(engine.generate([1, 2, 3], max_new_tokens=3, temperature=0.0)[0].token_ids) == 3
    with pytest.raises(AcornError, match="int8_head .* needs pack_weights=True"):
        Engine(_model(), tok, int8_head=True, pack_weights=False)
