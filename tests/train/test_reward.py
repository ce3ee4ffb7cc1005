"""Reward models: a scalar head on the transformer, saved as transformers' sequence classifier.

transformers is the oracle for the checkpoint (AutoModelForSequenceClassification gives the same
scores) and TRL 1.16's RewardTrainer for the Bradley-Terry loss (with a margin and reward
centering), gradients included. Then `acorn reward train` / `score` on the tiny world, and the
refusals: another tokenizer, a reward model loaded as a language model."""

from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.checkpoint import load
from acorn.model.heads import RewardModel, sequence_ids
from acorn.train.prefs_data import load_pairs, pair_batch
from acorn.train.reward import load_reward_model, reward_loss
from tests.train.test_prefs import unknown_pairs

ITEMS = ["The quick brown fox.",
         [{"role": "user", "content": "Where did the fox jump?"}, {"role": "assistant", "content": "Over the dog."}],
         "Once upon a time there was a little model that learned to speak. The cat sat on the mat.",
         [5, 17, 42, 9]]


@pytest.fixture(scope="module")
def reward_dir(checkpoint, tok, tmp_path_factory):
    """A reward model on the tiny Llama's backbone, with a random (non-zero) head, saved."""
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(load(checkpoint[0], dtype="float32", device="cpu"), tok)
    with torch.no_grad():
        rm.head.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("rm")
    rm.save(path)
    return path


def padded(rows, pad):
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def test_saved_reward_model_loads_in_transformers_with_the_same_scores(reward_dir, tok):
    import transformers

    config = json.loads((reward_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] == tok.pad_id
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=torch.float32).eval()
    assert hf.config.num_labels == 1 and hf.score.weight.shape == (1, 32)
    rm = load_reward_model(reward_dir, device="cpu")
    ours = rm.score(ITEMS, batch_size=3)  # batches of unequal lengths, right-padded
    ids, mask = padded([sequence_ids(tok, i) for i in ITEMS], tok.pad_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(torch.tensor(ours), theirs, atol=1e-5)
    assert len(set(round(s, 4) for s in ours)) == len(ITEMS)  # the head is not reading one fixed position
    # one at a time, no padding: the same scores
    assert rm.score(ITEMS[:1]) == pytest.approx(ours[:1], abs=1e-5)


def test_bradley_terry_equals_trls_reward_trainer_with_gradients(reward_dir, tok, tmp_path):
    import transformers
    from trl.trainer.reward_trainer import RewardTrainer

    rows = [{"prompt": "The quick brown", "chosen": " fox.", "rejected": " cat sat on the mat.", "margin": 0.5},
            {"prompt": [{"role": "user", "content": "What grows?"}], "margin": 1.5,
             "chosen": [{"role": "assistant", "content": "An acorn."}],
             "rejected": [{"role": "assistant", "content": "A little model that learned to speak."}]},
            {"chosen": "Once upon a time there was a tree.", "rejected": "Once upon a time.", "margin": -0.25}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = load_pairs([data], tok, max_len=64)
    batch = pair_batch(pairs, tok.pad_id)
    for center in (0.0, 0.1):
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=torch.float32).train()
        t = object.__new__(RewardTrainer)
        t.model, t.args, t._tp_size, t._total_train_tokens = hf, SimpleNamespace(center_rewards_coefficient=center), 1, 0
        t.accelerator = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
        t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        theirs = t.compute_loss(hf, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                     "margin": batch.margin})
        theirs.backward()
        rm = load_reward_model(reward_dir, device="cpu").train()
        out = reward_loss(rm, batch, margin=True, center=center)
        (out.loss / out.weight).backward()
        assert (out.loss / out.weight).item() == pytest.approx(theirs.item(), rel=1e-5)
        assert float(out.metrics["accuracy"]) / 3 == pytest.approx(t._metrics["train"]["accuracy"][0])
        ours = {"score.weight": rm.head.weight.grad,
                **{n: p.grad for n, p in rm.transformer.named_parameters() if n.startswith("model.")}}
        for name, p in hf.named_parameters():
            torch.testing.assert_close(ours[name], p.grad, rtol=2e-4, atol=2e-6, msg=name)
    # without the margin the loss differs: the margin is in play
    plain = reward_loss(rm, batch, margin=False)
    assert abs(plain.loss.item() - out.loss.item()) > 1e-3


def test_reward_commands_train_report_the_held_out_accuracy_and_score(tmp_path, tiny_world, world_tokenizer, capsys):
    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.tokenizer.bpe import Tokenizer

    wtok = Tokenizer.from_pretrained(world_tokenizer)
    torch.manual_seed(0)
    base = tmp_path / "base"
    Transformer(ModelConfig(vocab_size=400, n_layer=2, d_model=32, n_head=2, max_seq_len=128)).save(base, tokenizer=wtok)
    out = tmp_path / "rm"
    train, held_out = unknown_pairs(tiny_world, tmp_path)
    args = ["reward", "train", "--init_from", str(base), "--data", str(train), "--eval_data", str(held_out), "--out", str(out), "--train.seq_len", "64", "--train.micro_batch", "8",
            "--train.batch_tokens", "512", "--train.max_steps", "40", "--optim.lr", "3e-3", "--optim.warmup_steps", "2",
            "--eval.every", "20", "--train.dtype", "float32"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["val_accuracy"] > 0.7
    assert "Held-out pairs" in (out / "report.md").read_text()
    capsys.readouterr()
    scored = tmp_path / "scored.jsonl"
    assert main(["reward", "score", str(out / "model"), str(held_out), "--out", str(scored),
                 "--tokenizer", str(base)]) == 0
    lines = [json.loads(line) for line in scored.read_text().splitlines()]
    accuracy = sum(r["score_chosen"] > r["score_rejected"] for r in lines) / len(lines)
    assert accuracy == pytest.approx(rows[-1]["val_accuracy"])  # what training measured is what scoring gives
    assert f"chosen scored higher in {accuracy:.1%}" in capsys.readouterr().err


def test_another_tokenizer_or_a_language_model_load_is_refused(reward_dir, tok, world_tokenizer, capsys, tmp_path):
    from acorn.tokenizer.bpe import Tokenizer

    rm = load_reward_model(reward_dir, device="cpu")
    rm.check_tokenizer(tok)  # its own: fine
    other = Tokenizer.from_pretrained(world_tokenizer)
    with pytest.raises(AcornError, match="differs from this one"):
        rm.check_tokenizer(other)
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    capsys.readouterr()
    assert main(["reward", "score", str(reward_dir), str(data), "--tokenizer", str(world_tokenizer)]) == 2
    err = capsys.readouterr().err
    assert "differs from this one" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(AcornError, match="sequence classifier"):
        load(reward_dir)
    with pytest.raises(AcornError, match="outside the reward model's vocabulary"):
        rm.score([[1, 2, 10_000]])


@pytest.mark.parametrize("layout,arch", [
    (dict(positions="learned", norm="layernorm", mlp="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True),
     "GPT2ForSequenceClassification"),
    (dict(qkv_bias=True), "Qwen2ForSequenceClassification"),
    (dict(qk_norm=True), "Qwen3ForSequenceClassification"),
    (dict(tie_embeddings=False), "LlamaForSequenceClassification"),  # the unused untied LM head is not saved
    (dict(sliding_window=16), "MistralForSequenceClassification"),
    (dict(n_experts=4), "MixtralForSequenceClassification"),
])
def test_every_family_saves_as_its_sequence_classifier_with_the_same_scores(tok, tmp_path, layout, arch):
    import transformers

    from acorn.model.transformer import ModelConfig, Transformer

    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(
        Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, max_seq_len=128, **layout)),
        tok)
    with torch.no_grad():
        rm.head.weight.normal_(0, 1)
    rm.save(tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == arch and "lm_head" not in str(hf.state_dict().keys())
    ids, mask = padded([sequence_ids(tok, i) for i in ITEMS], tok.pad_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(torch.tensor(rm.score(ITEMS)), theirs, atol=1e-4)
    assert load_reward_model(tmp_path, device="cpu").score(ITEMS) == pytest.approx(rm.score(ITEMS), abs=1e-5)
