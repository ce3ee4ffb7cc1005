"""The pretraining loop: accumulation, exact resume after kill -9, the NaN guard,
outputs, and data-parallel training equal to one process at the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acorn.cli import main
from acorn.config import load
from acorn.errors import AcornError
from acorn.train.pretrain import PretrainConfig, latest_checkpoint, pretrain

TINY_MODEL = ["--model.vocab_size", "512", "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "2",
              "--model.n_kv_head", "1", "--model.max_seq_len", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from acorn.data.prepare import prepare
    from acorn.data.world import generate_world
    from acorn.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("pretrain")
    generate_world(root / "world", size="tiny", quiet=True)
    tok = Tokenizer.train([root / "world" / "pretrain.jsonl"], 512)
    tok.save(root / "tok")
    prepare([root / "world" / "pretrain.jsonl"], root / "tok", root / "data", val_fraction=0.1, workers=1, quiet=True)
    return root / "data"


def config(data: Path, out: Path, *extra: str) -> PretrainConfig:
    args = ["--data", str(data), "--out", str(out), *TINY_MODEL, "--train.seq_len", "32", "--train.dtype", "float32",
            "--optim.warmup_steps", "2", "--eval.every", "0", "--eval.log_every", "1", *extra]
    return load(PretrainConfig, None, args)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_accumulating_micro_batches_equals_one_big_batch(data, tmp_path):
    # 4 micro-batches of 2 rows vs 1 micro-batch of 8 rows: the same rows, the same mean loss.
    a = pretrain(config(data, tmp_path / "a", "--train.micro_batch", "2", "--train.batch_tokens", "256",
                        "--train.max_steps", "3"))
    b = pretrain(config(data, tmp_path / "b", "--train.micro_batch", "8", "--train.batch_tokens", "256",
                        "--train.max_steps", "3"))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_kill_9_then_resume_is_bitwise_identical(data, tmp_path):
    common = ["--train.micro_batch", "4", "--train.batch_tokens", "128", "--train.max_steps", "120",
              "--eval.checkpoint_every", "7"]
    whole = pretrain(config(data, tmp_path / "whole", *common))
    args = [sys.executable, "-m", "acorn", "pretrain", "--data", str(data), "--out", str(tmp_path / "killed"),
            *TINY_MODEL, "--train.seq_len", "32", "--train.dtype", "float32", "--optim.warmup_steps", "2",
            "--eval.every", "0", *common]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 30:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert killed_at < 120 and latest_checkpoint(tmp_path / "killed") is not None
    resumed = pretrain(config(data, tmp_path / "killed", *common), resume=True)
    assert losses(resumed) == losses(whole)  # bitwise: same floats, every step
    wa, wb = weights(whole), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_steps_are_skipped_then_the_run_stops(data, tmp_path, monkeypatch):
    from acorn.model import Transformer

    real_forward = Transformer.forward
    calls = {"n": 0}
    poison: set[int] = {3, 4}  # forward calls (= steps here) whose loss is NaN

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if out.loss is not None and calls["n"] in poison:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", forward)
    out = pretrain(config(data, tmp_path / "skip", "--train.micro_batch", "4", "--train.batch_tokens", "128",
                          "--train.max_steps", "8", "--train.nan_patience", "3"))
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 5, 6, 7, 8]  # steps 3 and 4 skipped, the run went on
    assert all(torch.isfinite(t).all() for t in weights(out).values())

    calls["n"] = 0
    poison.update(range(5, 100))
    with pytest.raises(AcornError, match=r"3 steps in a row.*non-finite"):
        pretrain(config(data, tmp_path / "stop", "--train.micro_batch", "4", "--train.batch_tokens", "128",
                        "--train.max_steps", "20", "--train.nan_patience", "3"))


def test_outputs_and_cli(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(data), "--out", str(out), *TINY_MODEL, "--train.seq_len", "32",
            "--train.micro_batch", "4", "--train.batch_tokens", "128", "--train.max_steps", "6", "--eval.every", "3",
            "--eval.batches", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    v = evals[-1]
    assert v["val_ppl"] == pytest.approx(torch.tensor(v["val_loss"]).exp().item(), rel=1e-6)
    assert 0 < v["val_bpb"] < v["val_loss"] / 0.693  # bytes per token > 1 on this text
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "validation bits per byte" in report and "MFU | unknown" in report
    assert load(PretrainConfig, out / "config.yaml").train.max_steps == 6  # the resolved config is saved
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(hf).__name__ == "LlamaForCausalLM"
    # Starting again into the same directory without --resume is refused.
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def test_two_processes_equal_one_at_the_same_global_batch(data, tmp_path):
    common = ["--train.batch_tokens", "256", "--train.max_steps", "4"]
    single = pretrain(config(data, tmp_path / "single", "--train.micro_batch", "8", *common))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "acorn", "pretrain", "--data", str(data), "--out", str(tmp_path / "ddp"), *TINY_MODEL,
           "--train.seq_len", "32", "--train.dtype", "float32", "--optim.warmup_steps", "2", "--eval.every", "0",
           "--train.micro_batch", "4", *common]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(latest_checkpoint(tmp_path / "ddp"), weights_only=True)["world_size"] == 2
    assert losses(tmp_path / "ddp") == pytest.approx(losses(single), abs=1e-5)
    wa, wb = weights(single), weights(tmp_path / "ddp")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
