"""The pretraining loop: accumulation, exact resume after kill -9, the NaN guard,
outputs, data-parallel and sharded (FSDP2) training equal to one process at the same
global batch, and compiled training equal to eager."""

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

from acorn import hardware
from acorn.cli import main
from acorn.config import load
from acorn.errors import AcornError
from acorn.train.pretrain import PretrainConfig, pretrain
from acorn.train.run import latest_checkpoint

TINY_MODEL = ["--model.vocab_size", "512", "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "2",
              "--model.n_kv_head", "1", "--model.max_seq_len", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_world) -> Path:
    from acorn.data.prepare import prepare
    from acorn.tokenizer.bpe import Tokenizer

    root = tmp_path_factory.mktemp("pretrain")
    tok = Tokenizer.train([tiny_world / "pretrain.jsonl"], 512)
    tok.save(root / "tok")
    prepare([tiny_world / "pretrain.jsonl"], root / "tok", root / "data", val_fraction=0.1, workers=1, quiet=True)
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
    from acorn.model.transformer import Transformer

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
    assert "validation bits per byte" in report
    # MFU against this CPU's peak where its flags give one (acorn.hardware.cpu_peak_flops)
    peak = hardware.peak_flops(torch.device("cpu"), hardware.resolve_dtype("auto"))
    assert ("median MFU" in report) == (peak is not None) and ("MFU | unknown" in report) == (peak is None)
    assert all((r["mfu"] is not None) == (peak is not None) for r in rows)
    assert load(PretrainConfig, out / "config.yaml").train.max_steps == 6  # the resolved config is saved
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(hf).__name__ == "LlamaForCausalLM"
    # Starting again into the same directory without --resume is refused.
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_probe_is_logged_beside_the_validation_loss(data, tmp_path):
    seen = []

    def probe(model):
        seen.append(model.training)
        return {"probe_norm": sum(p.detach().float().norm().item() for p in model.parameters())}

    out = pretrain(config(data, tmp_path / "p", "--train.micro_batch", "4", "--train.batch_tokens", "128",
                          "--train.max_steps", "4", "--eval.every", "2", "--eval.batches", "1"), probe=probe)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in rows if "probe_norm" in r]
    assert [r["step"] for r in probed] == [2, 4] and all("val_loss" in r for r in probed)
    assert probed[0]["probe_norm"] != probed[1]["probe_norm"]  # the model as trained at each step
    assert seen == [False, False]  # in eval mode
    with pytest.raises(AcornError, match="--eval.every"):  # a probe that would never run
        pretrain(config(data, tmp_path / "q", "--train.max_steps", "1"), probe=probe)


def torchrun(data: Path, out: Path, port: int, *extra: str) -> Path:
    """`acorn pretrain` in 2 CPU processes (gloo) under torchrun, one thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "acorn", "pretrain", "--data", str(data), "--out", str(out), *TINY_MODEL,
           "--train.seq_len", "32", "--train.dtype", "float32", "--optim.warmup_steps", "2", "--eval.every", "0",
           *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_two_processes_equal_one_at_the_same_global_batch(data, tmp_path):
    common = ["--train.batch_tokens", "256", "--train.max_steps", "4"]
    single = pretrain(config(data, tmp_path / "single", "--train.micro_batch", "8", *common))
    torchrun(data, tmp_path / "ddp", 29517, "--train.micro_batch", "4", *common)
    assert torch.load(latest_checkpoint(tmp_path / "ddp"), weights_only=True)["world_size"] == 2
    assert losses(tmp_path / "ddp") == pytest.approx(losses(single), abs=1e-5)
    wa, wb = weights(single), weights(tmp_path / "ddp")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_fsdp2_equals_one_process_resumes_and_exports(data, tmp_path):
    import shutil

    from acorn.model.checkpoint import load as load_checkpoint

    # A clip below every step's gradient norm (~0.6-0.7 here), so the global
    # norm over sharded gradients is both computed and applied.
    common = ["--train.batch_tokens", "256", "--train.max_steps", "6", "--optim.grad_clip", "0.5",
              "--eval.checkpoint_every", "3"]
    single = pretrain(config(data, tmp_path / "single", "--train.micro_batch", "8", *common))
    fsdp = torchrun(data, tmp_path / "fsdp", 29531, "--train.micro_batch", "4", "--train.fsdp", "true", *common)
    ckpt = torch.load(latest_checkpoint(fsdp), weights_only=True)
    assert ckpt["world_size"] == 2
    # Full optimizer state dicts from FSDP2 are keyed by parameter name, plain ones by index: the FSDP path ran.
    assert "model.embed_tokens.weight" in ckpt["optimizers"][0]["state"]
    rows = [json.loads(line) for line in (fsdp / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], abs=1e-5)
    assert [r["grad_norm"] for r in rows] == pytest.approx([r["grad_norm"] for r in ref], abs=1e-5)
    wa, wb = weights(single), weights(fsdp)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

    # The exported model is whole: it loads, with the single-process model's parameter count.
    a, b = load_checkpoint(single / "model", device="cpu"), load_checkpoint(fsdp / "model", device="cpu")
    assert sum(p.numel() for p in b.parameters()) == sum(p.numel() for p in a.parameters())

    # Resume from the step-3 checkpoint FSDP wrote, as if the run had died before step 6.
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed)
    (resumed / "checkpoints" / "step_0000006.pt").unlink()
    shutil.rmtree(resumed / "model")
    torchrun(data, resumed, 29532, "--train.micro_batch", "4", "--train.fsdp", "true", *common, "--resume")
    assert [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == losses(fsdp)  # model and optimizer state restored: the same floats
    wa, wb = weights(fsdp), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _compile_unsupported() -> str | None:
    import shutil

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) does not support this Python or platform"
    if not shutil.which(os.environ.get("CXX", "g++")):
        return "torch.compile's CPU backend (inductor) needs a C++ compiler: no g++ (or $CXX) on PATH"
    return None


@pytest.mark.skipif(_compile_unsupported() is not None, reason=str(_compile_unsupported()))
def test_compiled_training_matches_eager(data, tmp_path):
    from acorn.model.checkpoint import load as load_checkpoint

    common = ["--train.micro_batch", "8", "--train.batch_tokens", "256", "--train.max_steps", "4", "--eval.every", "2"]
    from torch._dynamo.utils import counters

    eager = pretrain(config(data, tmp_path / "eager", *common))
    counters.clear()
    try:
        compiled = pretrain(config(data, tmp_path / "compiled", *common, "--train.compile", "true"))
        # The model went through torch.compile, once: RoPE's cache is filled before the graph is
        # traced (filling it inside made the next call compile again) and evaluation runs the
        # model uncompiled (no_grad and the shorter last batch would be graphs of their own).
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()  # leave no compiled code behind for the other tests in this process
    # Inductor fuses kernels and so reorders fp32 sums: not bitwise, but ~1e-7 apart
    # here; 1e-5 leaves a hundredfold margin and still catches a wrong graph.
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    # The export is the plain model (no torch.compile wrapper names) and computes what the eager one does.
    a, b = load_checkpoint(eager / "model", device="cpu"), load_checkpoint(compiled / "model", device="cpu")
    x = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        assert torch.allclose(b(x).logits, a(x).logits, atol=1e-4)
