"""Hostile input to the command line (issue 21): each case is a command, the files it
reads, and the one line it must answer with (exit 2, a fragment of the message).
Every row failed before its fix: a traceback, a silent acceptance or overwrite, or
advice naming a flag the command does not have."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from acorn.cli import build_parser, main
from acorn.errors import AcornError

BAD_UTF8 = b'{"text": "fine"}\n{"text": "caf\xe9"}\n'  # line 2, column 14
SFT_OK = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
FILES = {
    "bad.jsonl": BAD_UTF8,
    "array.jsonl": b"[1, 2]\n",
    "bad.txt": b"caf\xe9 au lait\n",
    "binary.yaml": bytes(range(256)),
    "a_file": b"x",
    "full/old.txt": b"something already here",
    "meta/meta.json": b'{"tokenizer": {"vocab_size": 300}}',  # enough for pretraining to build its model
    "sft_bad.jsonl": SFT_OK + SFT_OK + b'{"messages": [{"role": "bogus", "content": "x"}]}\n',
    "sft_utf8.jsonl": SFT_OK + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
}
P = ["pretrain", "--data", "{tmp}/meta", "--out", "{tmp}/run"]

# (id, argv, message fragment, fragment that must NOT be in the message)
CASES = [
    # 11, 15: configuration values are checked when the config is built, by key
    ("lr-negative", [*P, "--optim.lr", "-1"], "--optim.lr must be > 0 (got -1", None),
    ("lr-nan", [*P, "--optim.lr", "nan"], "--optim.lr must be a finite number", None),
    ("beta1", [*P, "--optim.beta1", "5"], "--optim.beta1 must be in [0, 1)", None),
    ("dropout", [*P, "--model.dropout", "2"], "--model.dropout must be in [0, 1)", None),
    ("n_head-0", [*P, "--model.n_head", "0"], "--model.n_head must be >= 1", None),
    ("d_model-negative", [*P, "--model.d_model", "-128"], "--model.d_model must be >= 1", None),
    ("init_std", [*P, "--model.init_std", "-1"], "--model.init_std must be > 0", None),
    ("n_layer-0", [*P, "--model.n_layer", "0"], "--model.n_layer must be >= 1", None),
    ("norm_eps", [*P, "--model.norm_eps", "-1"], "--model.norm_eps must be > 0", None),
    ("sliding_window", [*P, "--model.sliding_window", "-1"], "--model.sliding_window must be >= 1, or none", None),
    ("max_steps-0", [*P, "--train.max_steps", "0"], "--train.max_steps must be >= 1 (got 0)", None),
    ("max_steps-negative", [*P, "--train.max_steps", "-5"], "--train.max_steps must be >= 1", None),
    ("sft-max_steps", ["sft", "--init_from", "x", "--train.max_steps", "-5"], "--train.max_steps must be >= 0", None),
    ("eval-every", [*P, "--eval.every", "-1"], "--eval.every must be >= 0", None),
    ("checkpoint-every", [*P, "--eval.checkpoint_every", "-5"], "--eval.checkpoint_every must be >= 0", None),
    ("warmup", [*P, "--optim.warmup_steps", "-10"], "--optim.warmup_steps must be >= 0", None),
    ("binary-config", ["pretrain", "--config", "{tmp}/binary.yaml"], "binary.yaml: not a text file", None),
    ("out-is-a-file", ["pretrain", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file", None),
    ("sft-out-is-a-file", ["sft", "--init_from", "{ckpt}", "--out", "{tmp}/a_file"], "is a file", None),
    ("model-with-init_from", ["sft", "--init_from", "{ckpt}", "--data", "{tmp}/sft_bad.jsonl", "--out", "{tmp}/r",
                              "--model.n_layer", "2"], "--model.* settings do not apply with --init_from", None),
    ("serve-port", ["serve", "{tmp}", "--port", "99999"], "--port: must be 1 to 65535", None),
    ("serve-max-pending", ["serve", "{tmp}", "--max-pending", "-1"], "--max-pending: must be >= 0", None),
    ("prepare-workers", ["data", "prepare", "{tmp}/bad.txt", "--tokenizer", "{tok}", "--out", "{tmp}/d",
                         "--workers", "-1"], "--workers: must be >= 0", None),
    ("speedrun-vocab", ["speedrun", "--out", "{tmp}/s", "--vocab-size", "0"], "--vocab-size: must be >= 1", None),
    ("generate-n", ["generate", "{ckpt}", "hi", "-n", "100000"], "-n: must be 1 to 64", None),
    # 9: a model the end of training could not save is refused before training
    ("rope_partial", [*P, "--model.rope_partial", "0.5"], "--model settings: cannot save as a Hugging Face", None),
    ("relu2", [*P, "--model.mlp", "relu2"], "relu2 MLP with RoPE", None),
    # 6: outputs are not overwritten without --overwrite
    ("world-overwrite", ["data", "world", "--out", "{tmp}/full", "--size", "tiny"], "pass --overwrite", None),
    ("quantize-overwrite", ["quantize", "{ckpt}", "--method", "int8", "--out", "{tmp}/full"], "pass --overwrite", None),
    ("tokenizer-overwrite", ["tokenizer", "train", "{tmp}/bad.txt", "--errors", "replace", "--out", "{tmp}/full"],
     "pass --overwrite", None),
    ("gguf-overwrite", ["export", "gguf", "{ckpt}", "--out", "{tmp}/a_file"], "pass --overwrite", None),
    ("gguf-out-directory", ["export", "gguf", "{ckpt}", "--out", "{tmp}/full"], "is a directory", None),
    # 7: bytes that are not UTF-8, and rows that are not objects, in .jsonl files
    ("train-utf8", ["tokenizer", "train", "{tmp}/bad.jsonl", "--out", "{tmp}/t"],
     "bad.jsonl:2: bytes at column 14 are not UTF-8", None),
    ("train-array", ["tokenizer", "train", "{tmp}/array.jsonl", "--out", "{tmp}/t"],
     "array.jsonl:1: an array, not a JSON object", None),
    ("prepare-utf8-worker", ["data", "prepare", "{tmp}/bad.jsonl", "--tokenizer", "{tok}", "--out", "{tmp}/d",
                             "--workers", "2"], "bad.jsonl:2: bytes at column 14 are not UTF-8", None),
    ("count-utf8", ["tokens", "count", "{tmp}/bad.jsonl", "--tokenizer", "{tok}"], "bad.jsonl:2: bytes", None),
    ("sft-utf8", ["sft", "--init_from", "{ckpt}", "--data", "{tmp}/sft_utf8.jsonl", "--out", "{tmp}/r",
                  "--train.seq_len", "64"],
     "sft_utf8.jsonl:2: bytes at column", "--errors"),  # sft has no --errors flag: no advice to pass it
    # 16: an empty special token (encoding with it hung)
    ("special-empty", ["tokenizer", "train", "{tmp}/bad.txt", "--errors", "replace", "--out", "{tmp}/t",
                       "--special", ""], "a special token cannot be empty", None),
    # 17: advice names a flag the command has
    ("encode-utf8", ["tokenizer", "encode", "{tok}", "--file", "{tmp}/bad.txt"], "or pass --errors replace", None),
    ("prepare-utf8", ["data", "prepare", "{tmp}/bad.txt", "--tokenizer", "{tok}", "--out", "{tmp}/d"],
     "or pass --errors replace", None),
    ("watermark-utf8", ["watermark", "detect", "{tmp}/bad.txt", "--tokenizer", "{tok}", "--key", "k"],
     "or pass --errors replace", None),
    ("sft-message", ["sft", "--init_from", "{ckpt}", "--data", "{tmp}/sft_bad.jsonl", "--out", "{tmp}/r",
                     "--train.seq_len", "64"],
     "sft_bad.jsonl:3: message 0 has role 'bogus'", None),
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tok) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tok.save(path)
    return path


def _files(root: Path) -> None:
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment, absent", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2(argv, fragment, absent, tmp_path, tok_dir, request, capsys):
    _files(tmp_path)
    values = {"tmp": str(tmp_path), "tok": str(tok_dir)}
    if any("{ckpt}" in a for a in argv):
        values["ckpt"] = str(request.getfixturevalue("checkpoint")[0])
        capsys.readouterr()  # transformers' progress bars while the fixture saves
    argv = [a.format(**values) for a in argv]
    code, err = run(argv, capsys)
    assert code == 2, err
    assert err.startswith("acorn: error: ") and err.count("\n") == 1, err
    assert fragment.format(**values) in err
    assert absent is None or absent not in err
    if "full" in " ".join(argv):
        assert (tmp_path / "full").iterdir() and [p.name for p in (tmp_path / "full").iterdir()] == ["old.txt"]


@pytest.mark.parametrize("argv", [["tokenizer", "encode", "{tok}", "--file", "{tmp}/bad.txt"],
                                  ["data", "prepare", "{tmp}/bad.txt", "--tokenizer", "{tok}", "--out", "{tmp}/d",
                                   "--workers", "0"],
                                  ["watermark", "detect", "{tmp}/bad.txt", "--tokenizer", "{tok}", "--key", "k"]])
def test_the_advised_errors_flag_exists_and_works(argv, tmp_path, tok_dir, capsys):
    _files(tmp_path)
    argv = [a.format(tmp=tmp_path, tok=tok_dir) for a in argv]
    assert "or pass --errors replace" in run(argv, capsys)[1]
    code, err = run([*argv, "--errors", "replace"], capsys)
    assert code == 0, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_generate_on_a_device_that_is_not_there(checkpoint, capsys):
    code, err = run(["generate", str(checkpoint[0]), "hi", "--device", "cuda"], capsys)
    assert code == 2 and "device 'cuda'" in err and "--device cpu" in err


def test_overwrite_replaces_and_is_documented(tmp_path, capsys):
    _files(tmp_path)
    argv = ["tokenizer", "train", str(tmp_path / "bad.txt"), "--errors", "replace", "--vocab-size", "270",
            "--out", str(tmp_path / "full")]
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert (tmp_path / "full" / "tokenizer.json").is_file()
    for cmd in (["data", "world"], ["quantize"], ["tokenizer", "train"], ["data", "prepare"], ["lora", "merge"],
                ["export", "gguf"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert "--overwrite" in capsys.readouterr().out


def test_bad_value_in_python_api_is_an_acorn_error():
    from acorn.model.transformer import ModelConfig

    with pytest.raises(AcornError, match="n_head must be >= 1"):  # was a ZeroDivisionError
        ModelConfig(n_head=0)


# -------------------------------------------------------- 8: the machine says no
@pytest.mark.parametrize("command", ["tokenizer train", "tokens count", "data prepare"])
def test_permission_denied_and_disk_full_are_one_line(command, tmp_path, tok_dir, monkeypatch, capsys):
    import tempfile

    import acorn.tokenizer.text as text_module

    (tmp_path / "a.txt").write_text("hello world " * 50)
    if command == "tokens count":  # reading: permission denied
        def denied(path, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(text_module, "open", denied, raising=False)
        argv = ["tokens", "count", str(tmp_path / "a.txt"), "--tokenizer", str(tok_dir)]
        want = "a.txt: Permission denied; check its permissions"
    else:  # writing: the disk is full
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tempfile, "mkstemp", full)
        argv = (["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "270", "--out", str(tmp_path / "t")]
                if command == "tokenizer train" else
                ["data", "prepare", str(tmp_path / "a.txt"), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "d"),
                 "--workers", "0"])
        want = "No space left on device; free some disk space"
    code, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and want in err, err
    if command != "tokens count":  # a failed write names the file it was writing
        assert str(tmp_path) in err


def test_disk_full_while_saving_a_checkpoint_names_it(checkpoint, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    def full(*a, **k):  # what safetensors raises when the disk fills: its own error, the OS error as text
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, err = run(["quantize", str(checkpoint[0]), "--method", "int8", "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and f"{tmp_path / 'q'}/model.safetensors: No space left on device" in err, err


def test_torch_save_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path):
    from acorn.fileio import atomic_write

    target = tmp_path / "step_0000003.pt"
    with pytest.raises(OSError) as e, atomic_write(target, "wb") as f:
        f.write(b"PK")  # what torch.save raises when its writes failed for lack of space:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 21184 vs 21078")
    assert e.value.filename == str(target) and "writing failed" in e.value.strerror
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written left


# ------------------------------------------------- 10: workers die with the parent
def test_prepare_workers_die_when_the_parent_is_killed(tmp_path):
    """A parent killed with -9 runs no cleanup; its pool's workers must not live on."""
    script = textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing
        import acorn.data.prepare as P

        # the pool of `acorn data prepare`, whose workers start with die_with_parent
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=P.die_with_parent, initargs=(os.getpid(),))
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    worker = int(proc.stdout.readline())
    os.kill(worker, 0)  # alive
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{worker}/stat") as f:  # reaped by init, or a zombie not yet reaped: both dead
            if f.read().split(")")[1].split()[0] == "Z":
                break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("a worker outlived its parent")


# ------------------------------------------- 18: a kill during the first shard write
def test_prepare_killed_in_its_first_shard_write_resumes(tmp_path, tok_dir, monkeypatch):
    import acorn.data.prepare as P

    (tmp_path / "a.txt").write_text("hello world, a document. " * 40)
    out = tmp_path / "d"
    real = P._ShardWriter.flush

    def killed(self, end_chunk):  # dies with the shard's temporary file on disk and nothing renamed
        (self.out / f".{P.shard_name(self.split, self.index)}.x1y2.tmp").write_bytes(b"\0\0")
        raise KeyboardInterrupt

    monkeypatch.setattr(P._ShardWriter, "flush", killed)
    with pytest.raises(KeyboardInterrupt):
        P.prepare([tmp_path / "a.txt"], tok_dir, out, workers=0, quiet=True)
    monkeypatch.setattr(P._ShardWriter, "flush", real)
    s = P.prepare([tmp_path / "a.txt"], tok_dir, out, workers=0, quiet=True)  # resumed, not refused
    fresh = P.prepare([tmp_path / "a.txt"], tok_dir, tmp_path / "fresh", workers=0, quiet=True)
    assert s["tokens"] == fresh["tokens"] and not list(out.glob(".*.tmp"))
    assert (out / "train_000.bin").read_bytes() == (tmp_path / "fresh" / "train_000.bin").read_bytes()


# --------------------------------------------- 13: count what training reads
def test_counting_a_jsonl_counts_its_text_field(tmp_path, tok, tok_dir, capsys):
    from acorn.tokenizer.counting import compare_bytes_per_token, count_tokens

    texts = ["The quick brown fox.", 'She said "hi" \\ left.', "caf\u00e9 au lait"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    want = sum(len(tok.encode(t)) for t in texts)
    assert count_tokens(tok, path) == want
    row = compare_bytes_per_token({"t": tok}, [path])[0]
    assert (row["bytes"], row["tokens"]) == (sum(len(t.encode()) for t in texts), want)
    assert main(["tokens", "count", str(path), "--tokenizer", str(tok_dir)]) == 0
    assert f"{want:>12,}  {path}" in capsys.readouterr().out
    (tmp_path / "other.jsonl").write_text(json.dumps({"body": texts[0]}) + "\n")
    assert count_tokens(tok, tmp_path / "other.jsonl", text_field="body") == len(tok.encode(texts[0]))


# ----------------------------------------------------- 16: empty special tokens
def test_a_tokenizer_with_an_empty_special_token_is_refused(tok):
    from acorn.tokenizer.bpe import Tokenizer

    with pytest.raises(AcornError, match="empty text"):  # encoding with it never returned
        Tokenizer(tok.mergeable_ranks, {"": tok.vocab_size})


def test_pickle_advice_names_no_missing_flag(tmp_path, checkpoint):
    import shutil

    from acorn.model.checkpoint import load

    d = tmp_path / "pickled"
    shutil.copytree(checkpoint[0], d)
    (d / "model.safetensors").unlink()
    torch.save({}, d / "pytorch_model.bin")
    with pytest.raises(AcornError) as e:
        load(d)
    assert "convert it to safetensors" in str(e.value) and "pass allow_pickle" not in str(e.value)


# ------------------------------------------------------------------ 20: help
def _flatten(cls, instance, prefix=""):
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            yield from _flatten(type(value), value, f"{prefix}{f.name}.")
        elif f.name != "preset":
            yield f"{prefix}{f.name}"


@pytest.mark.parametrize("command, config", [("pretrain", "acorn.train.pretrain:PretrainConfig"),
                                             ("sft", "acorn.train.sft:SFTConfig")])
def test_config_commands_list_every_setting_with_default_and_meaning(command, config, capsys):
    import importlib

    module, _, name = config.partition(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    lines = out.split("\nsettings (")[1].splitlines()
    for key in _flatten(cls, cls()):
        i = next((i for i, ln in enumerate(lines) if ln.strip().startswith((f"--{key} ", f"--{key}.* "))), None)
        assert i is not None, f"--{key} missing from `acorn {command} --help`"
        assert len(lines[i].split()) >= 3 and lines[i + 1].startswith("      "), lines[i]  # default, then meaning
    assert "must be > 0" in out  # ranges are shown


def test_pretrain_example_config_exists_and_loads(capsys):
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    example = capsys.readouterr().out.split("example:")[1]
    config = example.split("--config")[1].split()[0]
    path = Path(__file__).parents[1] / config
    assert path.is_file() and load(PretrainConfig, path).model.preset == "micro"


@pytest.mark.parametrize("command, flag", [("speedrun", "--seed"), ("tokenizer eval", "--errors"),
                                           ("tokens count", "--errors")])
def test_flags_have_help(command, flag):
    parser = build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions if a.dest in ("stage", "cmd")).choices[word]
    action = next(a for a in parser._actions if flag in a.option_strings)
    assert action.help
