"""Hostile and broken inputs at run time, through `acorn.cli.main` as a user meets
them: each case is (command line, what is broken) -> exit 2 and one line on
stderr naming the problem, never a traceback. Then the files behind them:
a truncated model.safetensors is named as such wherever it is read, and
checkpoints are written with the umask's permissions.

Broken checkpoints are copies of the root conftest's tiny one:
  truncated  model.safetensors cut to half (an interrupted copy)
  nan        one down_proj weight NaN (every logit NaN: the issue's repro)
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from acorn.cli import main
from acorn.errors import AcornError


@pytest.fixture(scope="module")
def broken(tmp_path_factory, checkpoint) -> dict:
    path, _ = checkpoint
    root = tmp_path_factory.mktemp("broken")
    truncated = shutil.copytree(path, root / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    nan = shutil.copytree(path, root / "nan")
    tensors = load_file(nan / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    return {"ok": path, "truncated": truncated, "nan": nan, "out": root / "out"}


# (id, command line with {ok}/{truncated}/{nan}/{out} for the fixture's paths, stdin, environment, message fragment)
CASES = [
    ("serve-empty-key", "serve {ok} --api-key ", None, {}, "API key '' is empty"),
    ("serve-empty-and-good-key", "serve {ok} --api-key good --api-key ", None, {}, "API key '' is empty"),
    ("serve-empty-env-key", "serve {ok}", None, {"ACORN_API_KEY": ""}, "ACORN_API_KEY is set but empty"),
    ("generate-truncated", "generate {truncated} --prompt hi", None, {}, "truncated"),
    ("chat-truncated", "chat {truncated}", "hi\n", {}, "truncated"),
    ("serve-truncated", "serve {truncated}", None, {}, "truncated"),
    ("quantize-truncated", "quantize {truncated} --method int8 --out {out}", None, {}, "truncated"),
    ("model-info-truncated", "model info {truncated}", None, {}, "truncated"),
    ("generate-nan-sampled", "generate {nan} --prompt hi --temperature 0.8 --seed 1", None, {}, "not finite"),
    ("generate-nan-greedy", "generate {nan} --prompt hi --temperature 0", None, {}, "not finite"),
    ("generate-nan-n2", "generate {nan} --prompt hi -n 2", None, {}, "not finite"),
    ("chat-nan", "chat {nan} --temperature 0.8", "hello\nhello again\n", {}, "not finite"),
    ("generate-seed-70-bits", "generate {ok} --prompt hi --seed 1180591620717411303424", None, {}, "seed must be"),
]


@pytest.mark.parametrize("argv, stdin, env, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_runtime_failures_are_one_line_exit_2(broken, argv, stdin, env, fragment, capsys, monkeypatch):
    monkeypatch.delenv("ACORN_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))

    def serve_forever(*args, **kwargs):  # a regression must fail here, not hang the suite serving
        raise AssertionError("the server started")

    monkeypatch.setattr("uvicorn.run", serve_forever)
    args = [a.format(**broken) for a in argv.split(" ")]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("acorn: error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert "Traceback" not in err and "\x00" not in out  # a NaN argmax used to print NUL bytes


def test_init_from_a_truncated_checkpoint_is_one_clear_error(broken):
    from acorn.train.pretrain import PretrainConfig
    from acorn.train.run import build_model

    with pytest.raises(AcornError, match=r"model\.safetensors: the file is .* bytes but its header describes .*"
                                         r"truncated"):
        build_model(PretrainConfig(init_from=str(broken["truncated"])), torch.device("cpu"))


def test_a_truncated_adapter_is_one_clear_error(tmp_path, checkpoint):
    import acorn
    from acorn.model import lora

    model = acorn.load(checkpoint[0], device="cpu")
    lora.add_lora(model, r=2, alpha=4, targets="q_proj")
    lora.save_adapter(model, tmp_path / "adapter", base=checkpoint[0])
    file = tmp_path / "adapter" / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(AcornError, match="truncated"):
        acorn.load(checkpoint[0], device="cpu", adapter=tmp_path / "adapter")


def test_written_weights_get_the_umasks_permissions_like_every_other_file(tmp_path, checkpoint):
    import acorn
    from acorn.fileio import UMASK
    from acorn.model import lora

    assert UMASK & 0o044 == 0, "this test needs a umask that lets others read (the usual 022)"
    model = acorn.load(checkpoint[0], device="cpu")
    model.save(tmp_path / "ckpt")
    model.save(tmp_path / "sharded", max_shard_size=20_000)  # several files and an index
    lora.add_lora(model, r=2, alpha=4, targets="q_proj")
    lora.save_adapter(model, tmp_path / "adapter")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("model-00002") for p in files) and any(p.suffix == ".safetensors" for p in files)
    modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~UMASK)}, modes  # model.safetensors was 0o600
