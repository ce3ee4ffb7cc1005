"""The engine over packed weights (Engine(pack_weights=True), the default): the same
greedy tokens as the model as it is, on both paths, in float32 and for quantized
models; and a model that is being trained (RL rollouts) generates with its current
weights after every optimizer step."""

import copy

import pytest
import torch

from acorn.infer import Engine
from acorn.model import packed, quant
from acorn.model.checkpoint import load

PROMPTS = ["The quick brown fox", "Once", "A small acorn grows into a tall"]
GREEDY = dict(temperature=0, ignore_eos=True, max_new_tokens=12)


def _ids(completions):
    return [c.token_ids for c in completions]


@pytest.mark.parametrize("paged", [True, False])
def test_packed_and_plain_weights_give_the_same_greedy_tokens(checkpoint, tok, paged):
    model = load(checkpoint[0], dtype="float32", device="cpu")
    plain = Engine(copy.deepcopy(model), tok, paged=paged, pack_weights=False)
    fast = Engine(model, tok, paged=paged)
    assert packed.is_packed(fast.model) and not packed.is_packed(plain.model)
    assert _ids(fast.generate(PROMPTS, **GREEDY)) == _ids(plain.generate(PROMPTS, **GREEDY))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_models_fuse_their_layers_and_keep_their_tokens(checkpoint, tok, method):
    model = quant.quantize(load(checkpoint[0], dtype="float32", device="cpu"), method,
                           group_size=32 if method == "int4" else None)
    want = _ids(Engine(copy.deepcopy(model), tok, pack_weights=False).generate(PROMPTS, **GREEDY))
    fast = Engine(model, tok)
    assert _ids(fast.generate(PROMPTS, **GREEDY)) == want
    qkv = fast.model.model.layers[0].self_attn.__dict__[packed.QKV]
    assert isinstance(qkv._run, quant.MODULES[method])  # q, k and v as one quantized layer


def test_an_engine_over_a_model_in_training_sees_each_optimizer_step(checkpoint, tok):
    model = load(checkpoint[0], dtype="float32", device="cpu").train()
    engine = Engine(model, tok)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = _ids(engine.generate(PROMPTS, **GREEDY))
    for _ in range(2):  # a training step between rollouts, in place
        loss = model(torch.tensor([[1, 2, 3, 4, 5]]), targets=torch.tensor([[2, 3, 4, 5, 6]])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    engine.reset_prefix_cache()  # the weights changed: no cached prefix is valid
    after = _ids(engine.generate(PROMPTS, **GREEDY))
    twin = packed.unpack(copy.deepcopy(model))
    assert after == _ids(Engine(twin, tok, pack_weights=False).generate(PROMPTS, **GREEDY))
    assert after != before and model.training
