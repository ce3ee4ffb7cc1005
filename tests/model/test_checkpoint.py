"""Hugging Face checkpoints, against transformers itself.

Each family's tiny random model is made by transformers in the test and saved with
save_pretrained; Acorn loads it and must give the same logits (on a left-padded
batch, 1e-4) and the same 32-token greedy continuation as transformers' generate.
The other way, Acorn's saves must load in AutoModelForCausalLM with equal logits.
Nothing is fetched: every fixture is built here.
"""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

import acorn
from acorn.model.checkpoint import hf_architecture, model_info, save
from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, build

VOCAB, PROMPT, PAD, NEW = 96, 12, 4, 32


# ----------------------------------------------------------------- helpers
@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Norm weights and biases away from their 1/0 init, so a swapped or dropped one shows."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if name.endswith("bias") else 1.0))


def _batch(seed: int = 0):
    """Two rows; the second left-padded by PAD tokens (id 0, masked)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (2, PROMPT), generator=g)
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    return ids, mask


@torch.no_grad()
def _max_logit_diff(model, hf, ids, mask) -> float:
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    ours = model(ids, attention_mask=mask).logits
    theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert ours.shape == theirs.shape
    return (ours - theirs)[mask.bool()].abs().max().item()


@torch.no_grad()
def _acorn_greedy(model, ids, mask, n):
    out = model(ids, attention_mask=mask, use_cache=True, last_only=True)
    tokens = [out.logits[:, -1].argmax(-1)]
    while len(tokens) < n:
        out = model(tokens[-1][:, None], cache=out.cache, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1)


@torch.no_grad()
def _hf_greedy(hf, ids, mask, n):
    hf.generation_config.eos_token_id = None  # never stop early: all n tokens are compared
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=0)
    new = out[:, ids.shape[1]:]
    assert new.shape[1] == n
    return new


def _no_ids(**kw):
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)


SMALL = _no_ids(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
HF_MODELS = {
    "gpt2": lambda: transformers.GPT2Config(**_no_ids(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                      initializer_range=0.3)),
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "llama-llama3-rope": lambda: transformers.LlamaConfig(**SMALL, rope_parameters=dict(LLAMA3)),
    "llama-yarn-rope": lambda: transformers.LlamaConfig(**SMALL, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}),
    "llama-dynamic-rope": lambda: transformers.LlamaConfig(**{**SMALL, "max_position_embeddings": 16}, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    "llama-tied-biases": lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=True, attention_bias=True,
                                                          mlp_bias=True),
    "mistral-window": lambda: transformers.MistralConfig(**SMALL, sliding_window=6, head_dim=16),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "qwen2-window": lambda: transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=6,
                                                     max_window_layers=0),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, head_dim=16),
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
}


def _hf_model(name: str, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_MODELS[name]()).eval()
    _randomize(hf, 1)
    hf.save_pretrained(tmp_path / name)
    return hf, tmp_path / name


# ------------------------------------------------------- transformers -> Acorn
@pytest.mark.parametrize("name", HF_MODELS)
def test_loads_transformers_checkpoint_with_equal_logits_and_greedy_text(name, tmp_path):
    hf, path = _hf_model(name, tmp_path)
    model = acorn.load(path, dtype="float32", device="cpu")
    ids, mask = _batch()
    diff = _max_logit_diff(model, hf, ids, mask)
    print(f"{name}: max |logit diff| {diff:.2e}")
    assert diff < 1e-4
    ours = _acorn_greedy(model, ids, mask, NEW)
    assert all(len(set(row.tolist())) >= 8 for row in ours)  # a varied continuation, not one token repeated
    assert torch.equal(ours, _hf_greedy(hf, ids, mask, NEW))


def test_the_sliding_window_matters_in_the_window_test(tmp_path):
    """The Mistral window (6) is shorter than the prompt, so dropping it changes the logits."""
    hf, path = _hf_model("mistral-window", tmp_path)
    model = acorn.load(path, device="cpu")
    assert model.config.sliding_window == 6
    ids, mask = _batch()
    windowed = model(ids, attention_mask=mask).logits
    model.config.sliding_window = None
    assert (model(ids, attention_mask=mask).logits - windowed).abs().max() > 1e-3


def test_reads_the_older_rope_theta_and_rope_scaling_fields(tmp_path):
    """Files written before transformers 5 keep rope_theta and rope_scaling at the top level."""
    hf, path = _hf_model("llama-llama3-rope", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in params.items()}
    (path / "config.json").write_text(json.dumps(cfg))
    model = acorn.load(path, device="cpu")
    assert model.config.rope_scaling["rope_type"] == "llama3"
    assert _max_logit_diff(model, hf, *_batch()) < 1e-4


def test_reads_the_original_gpt2_file_layout(tmp_path):
    """OpenAI's GPT-2 files: no 'transformer.' prefix, causal-mask buffers, the tied head written out."""
    hf, path = _hf_model("gpt2", tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    model = acorn.load(path, device="cpu")
    assert _max_logit_diff(model, hf, *_batch()) < 1e-4
    assert f"parameters     {sum(p.numel() for p in model.parameters()):,}" in model_info(path)


def test_qwen2_window_on_some_layers_only_is_refused(tmp_path):
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=6,
                                                                max_window_layers=1))
    hf.save_pretrained(tmp_path)
    with pytest.raises(AcornError, match="sliding window on 1 of 2 layers"):
        acorn.load(tmp_path, device="cpu")


# ------------------------------------------------------- Acorn -> transformers
BASE = dict(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=48, max_seq_len=64, init_std=0.3)
EXPORTS = {
    "native": ("LlamaForCausalLM", dict()),
    "native-untied-llama3": ("LlamaForCausalLM", dict(tie_embeddings=False, rope_theta=5e5, rope_scaling=dict(LLAMA3))),
    "qkv-bias": ("Qwen2ForCausalLM", dict(qkv_bias=True)),
    "sliding-window": ("MistralForCausalLM", dict(sliding_window=6)),
    "qkv-bias-window": ("Qwen2ForCausalLM", dict(qkv_bias=True, sliding_window=6)),
    "qk-norm": ("Qwen3ForCausalLM", dict(qk_norm=True, head_dim=16)),
    "qk-norm-biases-window": ("Qwen3ForCausalLM", dict(qk_norm=True, qkv_bias=True, out_bias=True, sliding_window=6)),
    "gpt2": ("GPT2LMHeadModel", dict(positions="learned", norm="layernorm", mlp="gelu_tanh", n_kv_head=4,
                                     qkv_bias=True, out_bias=True, mlp_bias=True)),
    "moe": ("MixtralForCausalLM", dict(n_experts=4, n_experts_per_token=2, moe_aux_loss_coef=0.02)),
}


def _acorn_model(**kw):
    if kw.get("rope_scaling"):
        kw["rope_scaling"] = {k: v for k, v in kw["rope_scaling"].items() if k != "rope_theta"}
    torch.manual_seed(0)
    model = build(ModelConfig(**{**BASE, **kw})).eval()
    _randomize(model, 2)
    return model


@pytest.mark.parametrize("name", EXPORTS)
def test_saved_checkpoint_loads_in_transformers_and_round_trips(name, tmp_path):
    arch, kw = EXPORTS[name]
    model = _acorn_model(**kw)
    assert model.save(tmp_path) == tmp_path
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [arch]
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == arch
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, mask = _batch(1)
    diff = _max_logit_diff(model, hf.eval(), ids, mask)
    print(f"{name}: max |logit diff| {diff:.2e}")
    assert diff < 1e-4

    back = acorn.load(tmp_path, device="cpu")
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (back.lm_head.weight is back.model.embed_tokens.weight) == model.config.tie_embeddings


def test_bfloat16_save_and_load(tmp_path):
    model = _acorn_model()
    save(model, tmp_path / "f32")
    assert {p.dtype for p in acorn.load(tmp_path / "f32", dtype="bfloat16", device="cpu").parameters()} == {torch.bfloat16}
    save(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(iter(load_file(tmp_path / "bf16" / "model.safetensors").values())).dtype == torch.bfloat16
    loaded = acorn.load(tmp_path / "bf16", device="cpu")  # the config's dtype by default
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_sharded_save_loads_in_acorn_and_transformers_and_overwrites_cleanly(tmp_path):
    model = _acorn_model(**EXPORTS["moe"][1])
    save(model, tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:
        assert sum(t.numel() * t.element_size() for t in load_file(tmp_path / shard).values()) <= 20_000 \
            or len(load_file(tmp_path / shard)) == 1
    back = acorn.load(tmp_path, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert _max_logit_diff(model, hf, *_batch()) < 1e-4

    save(model, tmp_path)  # one file now: the old shards and index must go, or a loader would read them
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    assert torch.equal(acorn.load(tmp_path, device="cpu").lm_head.weight, model.lm_head.weight)


def test_save_with_tokenizer_writes_its_files_and_ids(tmp_path):
    tok = acorn.Tokenizer.from_pretrained("gpt2")
    model = build(ModelConfig(**{**BASE, "vocab_size": 50304, "d_model": 8, "n_head": 2, "n_kv_head": 1, "n_layer": 1}))
    save(model, tmp_path, tokenizer=tok, generation_config={"max_new_tokens": 7})
    config = json.loads((tmp_path / "config.json").read_text())
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert config["eos_token_id"] == gen["eos_token_id"] == tok.eos_id == 50256 and gen["max_new_tokens"] == 7
    assert acorn.Tokenizer.from_pretrained(tmp_path).encode("hello world") == tok.encode("hello world")
    with pytest.raises(AcornError, match="50257 tokens but the model's vocab_size is 96"):
        save(_acorn_model(), tmp_path / "small", tokenizer=tok)


@pytest.mark.parametrize("kw, feature", [
    (dict(positions="alibi"), "ALiBi"),
    (dict(positions="sinusoidal"), "sinusoidal"),
    (dict(mlp="relu2"), "relu2"),
    (dict(logit_softcap=30.0), "soft-capping"),
    (dict(norm="layernorm"), "LayerNorm with RoPE"),
    (dict(rope_partial=0.5), "partial rotary"),
    (dict(n_experts=4, moe_renormalize=False), "moe_renormalize=False"),
])
def test_exports_without_an_equivalent_are_refused(kw, feature, tmp_path):
    model = _acorn_model(**kw)
    with pytest.raises(AcornError, match=feature) as e:
        save(model, tmp_path / "out")
    assert "GPT-2" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_capacity_factor_warns_that_transformers_is_dropless(tmp_path):
    model = _acorn_model(**EXPORTS["moe"][1], moe_capacity_factor=1.0)
    with pytest.warns(UserWarning, match="dropless"):
        save(model, tmp_path)
    assert acorn.load(tmp_path, device="cpu").config.moe_capacity_factor == 1.0


# ------------------------------------------------------------ mixture of experts
def test_moe_routing_and_balance_loss_match_mixtral(tmp_path):
    hf, path = _hf_model("mixtral", tmp_path)
    model = acorn.load(path, device="cpu")
    h = torch.randn(40, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for ours, theirs in zip(model.model.layers, hf.model.layers):
            _, weights, experts = ours.mlp.route(h)
            _, hf_weights, hf_experts = theirs.mlp.gate(h)
            assert torch.equal(experts, hf_experts)
            torch.testing.assert_close(weights, hf_weights)

        ids = torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
        out = model(ids)
        router_logits = hf(input_ids=ids, output_router_logits=True).router_logits
        assert len(router_logits) == 2
        # Acorn averages each layer's Switch loss; transformers pools the layers' counts and
        # probabilities before multiplying, which equals it only for one layer: compare per layer.
        per_layer = [load_balancing_loss_func((logits,), 4, 2) for logits in router_logits]
        expected = hf.config.router_aux_loss_coef * torch.stack(per_layer).mean()
        torch.testing.assert_close(out.aux_loss, expected, rtol=1e-5, atol=1e-8)
        assert out.expert_counts.shape == (2, 4)
        assert out.expert_counts.sum(1).tolist() == [30 * 2, 30 * 2]
        assert out.dropped_tokens == 0


def test_moe_capacity_drops_in_token_order():
    model = _acorn_model(n_experts=4, n_experts_per_token=2, moe_capacity_factor=0.5)
    moe = model.model.layers[0].mlp
    h = torch.randn(24, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, _, counts, dropped = moe(h)
        _, weights, experts = moe.route(h)
    capacity = -(-0.5 * 24 * 2 // 4)  # ceil(c * tokens * k / n_experts) = 6
    taken, expected, n_dropped = [0] * 4, torch.zeros_like(h), 0
    for t in range(24):  # first come, first served, in token order then slot order
        for slot in range(2):
            e = int(experts[t, slot])
            if taken[e] >= capacity:
                n_dropped += 1
                continue
            taken[e] += 1
            x = h[t]
            y = moe.down_proj[e] @ (torch.nn.functional.silu(moe.gate_proj[e] @ x) * (moe.up_proj[e] @ x))
            expected[t] += weights[t, slot] * y
    assert max(taken) <= capacity and n_dropped == dropped > 0
    assert counts.sum() == 48  # counts are the router's choices, before the capacity cut
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ errors
def _saved(tmp_path, **kw):
    save(_acorn_model(**kw), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_bad_inputs_are_one_line_errors(tmp_path):
    cases = []
    cases.append((tmp_path / "nope", "no such directory"))
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file", "is a file"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "has no config.json"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    cases.append((tmp_path / "bert", "'BertForMaskedLM' is not supported; Acorn loads GPT2LMHeadModel, LlamaForCausalLM"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases.append((tmp_path / "noweights", "no weights found"))
    for path, message in cases:
        with pytest.raises(AcornError, match=message) as e:
            acorn.load(path, device="cpu")
        assert "\n" not in str(e.value)


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(AcornError, match=r"tensor model\.layers\.1\.self_attn\.k_proj\.weight is missing"):
        acorn.load(path, device="cpu")

    path = _saved(tmp_path)
    _rewrite(path, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(40, 32)}))
    with pytest.raises(AcornError, match=r"model\.layers\.0\.mlp\.up_proj\.weight has shape \[40, 32\] but config\.json "
                                         r"implies \[48, 32\]"):
        acorn.load(path, device="cpu")

    path = _saved(tmp_path)
    _rewrite(path, lambda t: t.update({f"model.layers.{i}.extra.weight": torch.zeros(2) for i in range(5)}))
    with pytest.raises(AcornError, match=r"unexpected tensors model\.layers\.0\.extra\.weight, .* \(and 2 more\)"):
        acorn.load(path, device="cpu")


def test_unknown_dtype_and_missing_shard(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(AcornError, match="unknown dtype 'float8'"):
        acorn.load(path, dtype="float8", device="cpu")
    with pytest.raises(AcornError, match="is a file"):
        save(_acorn_model(), path / "config.json")
    save(_acorn_model(), tmp_path / "sharded", max_shard_size="30KB")
    (tmp_path / "sharded" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(AcornError, match="lists shard model-00002-of-00003.safetensors, which is missing"):
        acorn.load(tmp_path / "sharded", device="cpu")


def test_pickle_needs_opt_in(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")
    with pytest.raises(AcornError, match=r"pytorch_model\.bin is a pickle checkpoint.*allow_pickle=True"):
        acorn.load(path, device="cpu")
    model = acorn.load(path, allow_pickle=True, device="cpu")
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, tensors["model.layers.1.mlp.down_proj.weight"])
    assert "pickle" in model_info(path)


# ----------------------------------------------------------------- model info
def test_model_info_reads_headers_of_a_checkpoint(tmp_path):
    model = _acorn_model(**EXPORTS["moe"][1])
    save(model, tmp_path, max_shard_size="30KB")
    text = model_info(tmp_path)
    total = sum(p.numel() for p in model.parameters())
    assert "MixtralForCausalLM" in text and f"parameters     {total:,}" in text
    active = total - 2 * 2 * 3 * 32 * 48  # two layers, two unused experts of three 32x48 matrices
    assert f"active/token   {active:,}" in text
    assert f"fp32 {total * 4 / 1000:.1f} KB" in text and "F32" in text


def test_model_info_cli_for_a_preset_and_for_bad_paths(tmp_path, capsys):
    assert main(["model", "info", "gpt2-124m"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "GPT2LMHeadModel" in out and "1,024 tokens" in out
    (tmp_path / "empty").mkdir()
    for bad in [str(tmp_path / "missing"), str(tmp_path / "empty")]:
        assert main(["model", "info", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("acorn: error: ") and err.count("\n") == 1


def test_architecture_choice_follows_the_layout():
    def arch(**kw):
        return hf_architecture(ModelConfig(**{**BASE, **kw}))

    assert arch() == "LlamaForCausalLM"
    assert arch(qkv_bias=True, out_bias=True, mlp_bias=True) == "LlamaForCausalLM"
    assert arch(qkv_bias=True, sliding_window=8) == "Qwen2ForCausalLM"
    with pytest.raises(AcornError, match="output-projection bias without q/k/v biases"):
        arch(out_bias=True)
