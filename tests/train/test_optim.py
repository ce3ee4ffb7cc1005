"""Parameter groups, optimizers and learning-rate schedule shapes."""

import pytest
import torch

from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.optim import OptimConfig, build_optimizers, lr_multiplier, param_groups


def test_no_weight_decay_on_norms_biases_and_embeddings():
    m = Transformer(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=2, qkv_bias=True, n_experts=2,
                                n_experts_per_token=1))
    groups = {g["name"]: g for g in param_groups(m, 0.1)}
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    plain = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in plain  # tied head: listed once, not decayed
    assert all(n.endswith(("bias", "norm.weight", "layernorm.weight")) or "embed" in n for n in plain)
    assert "model.layers.0.mlp.gate_proj" in decayed and "model.layers.0.self_attn.q_proj.weight" in decayed
    n_unique = len({id(p) for p in m.parameters()})
    assert len(decayed) + len(plain) == n_unique


def test_muon_takes_hidden_matrices_adamw_the_rest():
    m = Transformer(ModelConfig.from_preset("nano"))
    muon, adamw = build_optimizers(m, OptimConfig(optimizer="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert id(m.model.embed_tokens.weight) not in in_muon
    assert id(m.model.layers[0].self_attn.q_proj.weight) in in_muon


def test_cosine_schedule_shape():
    c = OptimConfig(warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    lrs = [lr_multiplier(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only falls
    assert lrs[55] == pytest.approx(0.55, abs=0.01)  # halfway down the cosine
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_schedule_shape():
    c = OptimConfig(warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    lrs = [lr_multiplier(s, 100, c) for s in range(100)]
    assert lrs[10:80] == [1.0] * 70  # stable
    assert lrs[80] < 1.0 and lrs[99] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # linear decay


def test_fused_adamw_takes_the_same_steps_as_the_default():
    # torch's default (foreach) AdamW is the oracle: --optim.fused changes the kernel, not the update
    def trained(fused: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        m = Transformer(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_head=2, max_seq_len=16))
        start = [p.detach().clone() for p in m.parameters()]
        (opt,) = build_optimizers(m, OptimConfig(fused=fused))
        assert bool(opt.defaults["fused"]) is fused
        x = torch.randint(0, 50, (2, 8))
        for _ in range(3):
            m(x).logits.float().square().mean().backward()
            opt.step()
            opt.zero_grad()
        return start, [p.detach().clone() for p in m.parameters()]

    start, fused = trained(True)
    _, plain = trained(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused, plain))
    assert not all(torch.equal(a, b) for a, b in zip(start, fused))  # the steps did move the weights
