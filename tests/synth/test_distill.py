"""Distillation: the divergences against torch's KL and TRL's generalised JSD, hand-computed
values, the mix with the hard label, the loss on the one loop, the stage end to end, the
refusal of a teacher with another tokenizer, and teacher generations (sequence level)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from acorn.cli import main
from acorn.synth.distill import divergence, kd_loss

TINY = ["--model.vocab_size", "300", "--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2",
        "--model.n_kv_head", "1", "--model.max_seq_len", "64"]


def _logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_and_reverse_kl_equal_torch_kl_div(temperature):
    s, t = _logits(0), _logits(1)
    ls, lt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    # F.kl_div(input, target) = KL(target || input)
    fwd = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    rev = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(divergence(s, t, "forward", temperature), fwd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(divergence(s, t, "reverse", temperature), rev, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 0.3])
def test_js_equals_trl_generalized_jsd(beta):
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    s, t = _logits(2), _logits(3)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(4))
    labels[0, :2] = -100
    ref = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=2.0)
    ours = divergence(s, t, "js", 2.0, beta)[labels != -100].mean()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_hand_computed_two_token_vocabulary():
    # teacher (0.5, 0.5), student (0.25, 0.75), at temperature 1
    t = torch.log(torch.tensor([[0.5, 0.5]]))
    s = torch.log(torch.tensor([[0.25, 0.75]]))
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = (0.375, 0.625)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + \
        0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert divergence(s, t, "forward").item() == pytest.approx(fwd, rel=1e-5)
    assert divergence(s, t, "reverse").item() == pytest.approx(rev, rel=1e-5)
    assert divergence(s, t, "js").item() == pytest.approx(js, rel=1e-5)
    assert divergence(t, t, "js").item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_mixes_the_soft_and_the_hard_term_over_trained_tokens():
    s, t = _logits(5), _logits(6)
    y = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(7))
    y[1, 3:] = -100
    keep = y != -100
    ce = F.cross_entropy(s[keep], y[keep], reduction="sum")
    div = divergence(s[keep], t[keep], "forward", 3.0).sum()
    loss, n, d, c = kd_loss(s, t, y, kind="forward", temperature=3.0, alpha=0.25)
    assert int(n) == 8
    torch.testing.assert_close(c, ce)
    torch.testing.assert_close(loss, 0.25 * 9.0 * div + 0.75 * ce)
    assert kd_loss(s, t, y, alpha=0.0)[0].item() == pytest.approx(ce.item(), rel=1e-6)
    # a teacher padded to a larger vocabulary is compared on the shared ids
    padded = torch.cat([t, torch.full((2, 5, 3), -1e4)], -1)
    torch.testing.assert_close(kd_loss(s, padded, y, temperature=3.0, alpha=0.25)[0], loss)


def test_distill_loss_on_the_one_loop_pulls_the_student_to_the_teacher():
    import functools

    from acorn.data.loader import Batch
    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.synth.distill import distill_loss
    from acorn.train.loop import train_step

    cfg = ModelConfig(vocab_size=50, n_layer=1, d_model=16, n_head=2, n_kv_head=1, max_seq_len=16)
    torch.manual_seed(0)
    teacher, student = Transformer(cfg).eval(), Transformer(cfg)
    x = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    batch = Batch(x=x[:, :-1], y=x[:, 1:])
    loss_fn = functools.partial(distill_loss, teacher=teacher, kind="reverse", temperature=1.0, alpha=1.0)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    first = [train_step(student, [batch], loss_fn, [opt], device=torch.device("cpu")) for _ in range(25)]
    assert first[-1].metrics["kd"] < 0.5 * first[0].metrics["kd"]
    assert all(p.grad is None for p in teacher.parameters())


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_world, checkpoint):
    from acorn.data.prepare import prepare

    root = tmp_path_factory.mktemp("distill")
    prepare([tiny_world / "pretrain.jsonl"], checkpoint[0], root / "data", val_fraction=0.2, workers=1, quiet=True)
    return root / "data"


def test_distill_cli_end_to_end(shards, checkpoint, tmp_path):
    out = tmp_path / "student"
    assert main(["synth", "distill", "--teacher", str(checkpoint[0]), "--data", str(shards), "--out", str(out),
                 *TINY, "--train.seq_len", "32", "--train.micro_batch", "2", "--train.batch_tokens", "64",
                 "--train.max_steps", "3", "--train.dtype", "float32", "--eval.every", "3", "--eval.batches", "1",
                 "--kind", "js", "--temperature", "2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["kd"] > 0 and r["ce"] > 0 for r in rows) and "val_loss" in rows[-1]
    assert (out / "model" / "model.safetensors").exists()


def test_a_teacher_with_another_tokenizer_is_refused(shards, tmp_path, capsys, world_tokenizer):
    from acorn.model.checkpoint import save
    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.tokenizer.bpe import Tokenizer

    teacher = tmp_path / "teacher"
    save(Transformer(ModelConfig(vocab_size=400, n_layer=1, d_model=16, n_head=2, n_kv_head=1, max_seq_len=64)),
         teacher, tokenizer=Tokenizer.from_pretrained(world_tokenizer))
    assert main(["synth", "distill", "--teacher", str(teacher), "--data", str(shards), "--out",
                 str(tmp_path / "s"), *TINY, "--train.seq_len", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another tokenizer" in err and "acorn synth generate" in err


def test_generate_replies_and_documents(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The cat"}) + "\n" + json.dumps({"question": "A small acorn"}) + "\n")
    out = tmp_path / "replies.jsonl"
    assert main(["synth", "generate", "--model", str(checkpoint[0]), "--prompts", str(prompts), "--n", "2",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 1 <= len(rows) <= 4 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    docs = tmp_path / "docs.jsonl"
    assert main(["synth", "generate", "--model", str(checkpoint[0]), "--samples", "3", "--max-new-tokens", "8",
                 "--out", str(docs), "--temperature", "1"]) == 0
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    assert 1 <= len(texts) <= 3 and len(set(texts)) == len(texts)
    capsys.readouterr()
    assert main(["synth", "generate", "--model", str(checkpoint[0]), "--samples", "3", "--out", str(docs)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["synth", "generate", "--model", str(checkpoint[0]), "--out", str(tmp_path / "x.jsonl")]) == 2


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    from acorn.errors import AcornError

    with pytest.raises(AcornError, match="unknown distillation divergence"):
        divergence(_logits(0), _logits(1), "kl")
    with pytest.raises(AcornError, match="use kind forward"):
        divergence(_logits(0), _logits(1), "js", beta=0.0)
    assert main(["synth", "distill", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main(["synth", "distill", "--teacher", str(tmp_path), "--data", str(tmp_path), "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
