"""LoRA and QLoRA (acorn.model.lora), against the real peft library.

Tiny models built in the test: Acorn's own, and transformers' Llama, Qwen2, Mistral and
GPT-2 saved with save_pretrained. peft is the oracle for the adapter format (its
PeftModel.from_pretrained loads what Acorn saves, Acorn loads what peft saves, both
with logits within 1e-4) and for merging (merge_and_unload).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

import acorn
from acorn.cli import main
from acorn.errors import AcornError
from acorn.model import lora, quant
from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.loop import LossOutput, train_step
from acorn.train.optim import OptimConfig, build_optimizers

peft = pytest.importorskip("peft")

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, bos_token_id=None,
             eos_token_id=None, pad_token_id=None)
HF_MODELS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "mistral": lambda: transformers.MistralConfig(**SMALL, sliding_window=6, head_dim=16),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            initializer_range=0.3, bos_token_id=None, eos_token_id=None),
}


def _ids(seed=0, b=2, t=12):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _acorn_model(d_model=32, seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, n_layer=2, d_model=d_model, n_head=4, n_kv_head=2, max_seq_len=64, init_std=0.3)
    return Transformer(ModelConfig(**{**cfg, **kw})).eval()


def _hf_model(name, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_MODELS[name]()).eval()
    path = tmp_path / name
    hf.save_pretrained(path)
    return hf, path


def _lm_loss(model, ids) -> LossOutput:
    logits = model(ids[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
    return LossOutput(loss, ids[:, 1:].numel())


def _train(model, steps=5, lr=1e-2, autocast=None, seed=0):
    """A few optimizer steps on one batch through the loop's train_step; the losses."""
    opt = build_optimizers(model, OptimConfig(lr=lr, weight_decay=0.0))
    ids = _ids(seed, b=4, t=16)
    model.train()
    kw = {"autocast": autocast} if autocast else {}
    losses = [train_step(model, [ids], _lm_loss, opt, device=torch.device("cpu"), **kw).loss for _ in range(steps)]
    model.eval()
    return losses


@torch.no_grad()
def _randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for layer in lora.lora_layers(model).values():
        for b in layer.lora_B.values():
            b.weight.copy_(torch.randn(b.weight.shape, generator=g) * 0.3)


# ----------------------------------------------------------------- the layer
def test_a_new_adapter_starts_at_the_base_model():
    model = _acorn_model()
    ids = _ids()
    with torch.no_grad():
        before = model(ids).logits
    names = lora.add_lora(model, r=4, alpha=8, targets="all-linear")
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, lora.LoRALinear) and layer.lora_A["default"].weight.abs().sum() > 0
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_only_adapter_parameters_get_gradients_and_optimizer_state():
    model = _acorn_model()
    lora.add_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B of q and v in 2 layers
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = build_optimizers(model, OptimConfig(lr=1e-2))
    in_optimizer = {id(p) for g in opt[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    ids = _ids(b=4, t=16)
    model.train()
    losses = [train_step(model, [ids], _lm_loss, opt, device=torch.device("cpu")).loss for _ in range(3)]
    assert losses[-1] < losses[0]
    assert {id(p) for p in opt[0].state} == in_optimizer  # optimizer state for the adapters only
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trained, total = lora.trainable_parameters(model)
    assert trained == sum(p.numel() for n, p in model.named_parameters() if n in trainable) and trained < total / 10


def test_merge_then_unmerge_restores_the_weight_and_merged_logits_are_equal():
    model = _acorn_model()
    lora.add_lora(model, r=4, alpha=8)
    _randomize_adapters(model)
    ids = _ids()
    w = model.model.layers[1].mlp.down_proj.base_layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(ids).logits
        lora.merge(model)
        assert not torch.equal(model.model.layers[1].mlp.down_proj.base_layer.weight, w)
        assert torch.allclose(model(ids).logits, unmerged, atol=1e-5)
        lora.unmerge(model)
        assert torch.allclose(model.model.layers[1].mlp.down_proj.base_layer.weight, w, atol=1e-6)
        assert torch.allclose(model(ids).logits, unmerged, atol=1e-5)
        lora.merge_and_unload(model)
        assert not lora.lora_layers(model) and torch.allclose(model(ids).logits, unmerged, atol=1e-5)


def test_rslora_scales_by_alpha_over_the_square_root_of_the_rank():
    model = _acorn_model()
    lora.add_lora(model, r=16, alpha=8, targets="q_proj", rslora=True)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(3, 32)
        delta = layer(x) - layer.base_layer(x)
        ab = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    assert torch.allclose(delta, 2.0 * ab, atol=1e-5)
    plain = _acorn_model()
    lora.add_lora(plain, r=16, alpha=8, targets="q_proj")
    assert plain.model.layers[0].self_attn.q_proj.scaling["default"] == 0.5


# ------------------------------------------------------------ PEFT interop
def test_an_adapter_acorn_trains_loads_in_peft_with_equal_logits(tmp_path):
    hf, path = _hf_model("llama", tmp_path)
    model = acorn.load(path, device="cpu")
    lora.add_lora(model, r=4, alpha=8, targets="all-linear", rslora=True)
    losses = _train(model, steps=4)
    assert losses[-1] < losses[0]
    assert all(torch.count_nonzero(b.weight) for layer in lora.lora_layers(model).values() for b in layer.lora_B.values())
    lora.save_adapter(model, tmp_path / "adapter", base=path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(path.resolve())
    assert sorted(config["target_modules"]) == sorted(lora.LINEAR_NAMES)

    tuned = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path),
                                           tmp_path / "adapter").eval()
    ids = _ids()
    with torch.no_grad():
        diff = (tuned(input_ids=ids).logits - model(ids).logits).abs().max().item()
        base_diff = (hf(input_ids=ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-4 and base_diff > 1e-2  # equal to peft's, and the adapter changed something


def test_acorn_saves_what_peft_saves(tmp_path):
    """Key names, shapes and config fields of Acorn's adapter directory are those of peft's own save."""
    hf, path = _hf_model("llama", tmp_path)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                                          task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "peft")
    model = acorn.load(path, device="cpu")
    lora.add_lora(model, r=4, alpha=8, targets="q_proj,down_proj")
    lora.save_adapter(model, tmp_path / "acorn", base=path)
    from safetensors.torch import load_file

    theirs, ours = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("peft", "acorn"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    peft_cfg, our_cfg = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "acorn"))
    for key in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "bias", "fan_in_fan_out",
                "use_dora"):
        assert our_cfg[key] == peft_cfg[key], key
    assert sorted(our_cfg["target_modules"]) == sorted(peft_cfg["target_modules"])


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gpt2"])
def test_a_peft_adapter_loads_in_acorn_and_merges_like_peft(name, tmp_path):
    hf, path = _hf_model(name, tmp_path)
    torch.manual_seed(1)
    targets = ["c_attn", "c_proj", "c_fc"] if name == "gpt2" else "all-linear"
    # init_lora_weights=False: B random too, so the adapter changes the logits.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                             use_rslora=name == "qwen2", alpha_pattern={"down_proj": 2} if name == "llama" else {},
                             fan_in_fan_out=name == "gpt2", task_type="CAUSAL_LM")
    tuned = peft.get_peft_model(hf, config).eval()
    tuned.save_pretrained(tmp_path / "adapter")
    ids = _ids()
    with torch.no_grad():
        expected = tuned(input_ids=ids).logits
    model = acorn.load(path, device="cpu", adapter=tmp_path / "adapter")
    assert lora.lora_layers(model)
    with torch.no_grad():
        ours = model(ids).logits
        base = acorn.load(path, device="cpu")(ids).logits
    assert (ours - expected).abs().max() < 1e-4 and (base - expected).abs().max() > 1e-2

    merged = tuned.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        assert (acorn.load(path, device="cpu", adapter=tmp_path / "adapter", merge=True)(ids).logits
                - merged_logits).abs().max() < 1e-4
    assert main(["lora", "merge", str(path), str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    ours_merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    theirs = merged.state_dict()
    for k, v in ours_merged.state_dict().items():
        assert torch.allclose(v, theirs[k], atol=1e-6), k
    # a second merge into the same directory is refused (it holds a checkpoint) unless --overwrite
    again = ["lora", "merge", str(path), str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]
    assert main(again) == 2 and main([*again, "--overwrite"]) == 0


def test_an_acorn_gpt2_adapter_on_c_attn_loads_in_peft(tmp_path):
    hf, path = _hf_model("gpt2", tmp_path)
    model = acorn.load(path, device="cpu")
    lora.add_lora(model, r=4, alpha=8, targets="c_attn,c_fc")
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.lora_A["default"] is attn.v_proj.lora_A["default"]  # c_attn's one A
    _train(model, steps=3)
    lora.save_adapter(model, tmp_path / "adapter", base=path)
    tuned = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path),
                                           tmp_path / "adapter").eval()
    ids = _ids()
    with torch.no_grad():
        assert (tuned(input_ids=ids).logits - model(ids).logits).abs().max() < 1e-4


def test_named_adapters_side_by_side_switch_like_loading_each_alone(tmp_path):
    """Two adapters in the same layers (the multi-adapter layout serving will batch over):
    the active one decides the output, exactly as when it is the only one loaded."""
    base = _acorn_model()
    base.save(tmp_path / "base")
    for i, targets in enumerate(["q_proj,v_proj", "all-linear"]):
        m = acorn.load(tmp_path / "base", device="cpu")
        lora.add_lora(m, r=2 + i, alpha=8, targets=targets)
        _randomize_adapters(m, seed=i)
        lora.save_adapter(m, tmp_path / f"a{i}", base=tmp_path / "base")
    both = acorn.load(tmp_path / "base", device="cpu", adapter=tmp_path / "a0")
    lora.load_adapter(both, tmp_path / "a1", name="second")
    ids = _ids()
    with torch.no_grad():
        alone = [acorn.load(tmp_path / "base", device="cpu", adapter=tmp_path / f"a{i}")(ids).logits for i in (0, 1)]
        assert torch.equal(both(ids).logits, alone[0])  # the first loaded stays active
        lora.set_active(both, "second")
        assert torch.equal(both(ids).logits, alone[1])
        lora.set_active(both, None)
        assert torch.equal(both(ids).logits, base(ids).logits)
    with pytest.raises(AcornError, match="no adapter named 'third'"):
        lora.set_active(both, "third")


def test_the_engine_generates_with_an_unmerged_adapter_as_with_the_merged_model(tok):
    """Every path runs the same Attention and MLP modules, so the paged engine picks up LoRALinear."""
    import copy

    from acorn.infer.engine import Engine

    model = _acorn_model(vocab_size=tok.vocab_size)
    lora.add_lora(model, r=4, alpha=8)
    _randomize_adapters(model)
    merged = lora.merge_and_unload(copy.deepcopy(model))
    texts = [Engine(m, tok, paged=paged).generate("The quick", max_tokens=16, temperature=0)[0].text
             for m, paged in ((model, True), (model, False), (merged, True))]
    base = Engine(_acorn_model(vocab_size=tok.vocab_size), tok).generate("The quick", max_tokens=16, temperature=0)
    assert texts[0] == texts[1] == texts[2] != base[0].text


# ------------------------------------------------------------------ QLoRA
def test_qlora_trains_adapters_on_a_frozen_nf4_base_in_bf16():
    model = _acorn_model(d_model=64, tie_embeddings=False)
    lora.apply(model, lora.LoRAConfig(r=4, alpha=8, quantize="nf4"))
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer.base_layer, quant.NF4Linear) and layer.lora_A["default"].weight.dtype == torch.float32
    codes = layer.base_layer.weight.clone()
    losses = _train(model, steps=6, lr=2e-2, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert losses[-1] < 0.9 * losses[0]
    assert torch.equal(layer.base_layer.weight, codes) and torch.count_nonzero(layer.lora_B["default"].weight)


# -------------------------------------------------------------- bad input
def test_bad_input_is_one_line_naming_the_problem_and_the_fix(tmp_path, capsys):
    model = _acorn_model()
    with pytest.raises(AcornError, match=r"matches no linear layer.*available names: down_proj, gate_proj"):
        lora.add_lora(model, r=4, alpha=8, targets="query_key_value")
    with pytest.raises(AcornError, match="larger than model.layers.0.self_attn.k_proj"):
        lora.add_lora(model, r=20, alpha=8, targets="k_proj")  # k_proj maps 32 -> 16
    with pytest.raises(AcornError, match="no adapter_config.json"):
        lora.load_adapter(model, tmp_path)

    other = _acorn_model(d_model=64)
    lora.add_lora(other, r=4, alpha=8)
    lora.save_adapter(other, tmp_path / "wide", base="some/base")
    with pytest.raises(AcornError, match=r"maps \d+ -> 64 features but this model.s .* maps \d+ -> 32; it was trained on another base model \(some/base\)"):
        lora.load_adapter(_acorn_model(), tmp_path / "wide")
    base = tmp_path / "base"
    _acorn_model().save(base)
    assert main(["lora", "merge", str(base), str(tmp_path / "wide"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "load it on that base" in err


# ---------------------------------------------------------- the training CLI
def test_sft_with_lora_writes_an_adapter_that_merges_into_a_checkpoint(tok, tmp_path):
    from tests.train.test_sft import CONVS

    torch.manual_seed(0)
    base = tmp_path / "base"
    Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2, max_seq_len=64)).save(
        base, tokenizer=tok)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(CONVS[i % 3]) + "\n" for i in range(40)))
    out = tmp_path / "sft"
    args = ["sft", "--init_from", str(base), "--data", str(data), "--out", str(out), "--train.seq_len", "48",
            "--train.micro_batch", "4", "--train.batch_tokens", "192", "--train.max_steps", "8", "--optim.lr", "1e-2",
            "--optim.warmup_steps", "1", "--eval.every", "0", "--train.dtype", "float32",
            "--lora.r", "4", "--lora.alpha", "8", "--lora.targets", "all-linear"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "model").exists()
    assert "acorn lora merge" in (out / "report.md").read_text()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(base.resolve())

    assert main(["lora", "merge", str(base), str(out / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    ids = _ids()
    with torch.no_grad():
        merged = acorn.load(tmp_path / "merged", device="cpu")(ids).logits
        adapted = acorn.load(base, device="cpu", adapter=out / "adapter")(ids).logits
        plain = acorn.load(base, device="cpu")(ids).logits
    assert (merged - adapted).abs().max() < 1e-5 and (merged - plain).abs().max() > 1e-3
    assert acorn.Tokenizer.from_pretrained(tmp_path / "merged").special_tokens == tok.special_tokens


def test_qlora_sft_run_resumes_exactly(tok, tmp_path):
    """`--lora.quantize nf4` through the CLI: a run stopped at step 3 and resumed to step 6
    ends with the adapter of a run that went straight to 6 (the NF4 base, the adapters and
    their optimizer state all come back from the checkpoint)."""
    from safetensors.torch import load_file

    from tests.train.test_sft import CONVS

    torch.manual_seed(0)
    base = tmp_path / "base"
    Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2, max_seq_len=64)).save(
        base, tokenizer=tok)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(CONVS[i % 3]) + "\n" for i in range(40)))

    def run(out, steps, *extra):
        return main(["sft", "--init_from", str(base), "--data", str(data), "--out", str(out), "--train.seq_len", "48",
                     "--train.micro_batch", "4", "--train.batch_tokens", "192", "--train.max_steps", str(steps),
                     "--optim.lr", "1e-2", "--optim.warmup_steps", "1", "--optim.schedule", "constant",
                     "--eval.every", "0", "--eval.checkpoint_every", "3", "--train.dtype", "bfloat16",
                     "--lora.r", "4", "--lora.targets", "q_proj,v_proj,down_proj", "--lora.quantize", "nf4", *extra])

    assert run(tmp_path / "straight", 6) == 0
    assert run(tmp_path / "resumed", 3) == 0
    assert run(tmp_path / "resumed", 6, "--resume") == 0
    straight, resumed = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and len(straight) == 2 * 3 * 2
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert "over an NF4 base (QLoRA)" in (tmp_path / "straight" / "report.md").read_text()
