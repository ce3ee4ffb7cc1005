"""A run's directory through kills, Ctrl-C and changed minds: resume falls back to
the previous checkpoint when the newest is unreadable, refuses other model
settings naming them and warns about other changes, a restart after a kill
before the first checkpoint starts metrics.jsonl afresh, temporaries a kill left
are removed, and Ctrl-C saves a checkpoint that --resume continues exactly.

fit runs a tiny Llama (one layer, width 16) on random tokens: a few steps take
well under a second."""

from __future__ import annotations

import dataclasses
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acorn.data.loader import Batch
from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.loop import EvalConfig, LoopConfig, fit
from acorn.train.optim import OptimConfig
from acorn.train.pretrain import next_token_loss
from acorn.train.run import Dist, checkpoints

TINY = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, n_kv_head=1, max_seq_len=16)


class Tokens:
    """Random rows, the same for the same cursor: a loader with a state to resume."""

    def __init__(self):
        self.cursor = 0

    def __next__(self) -> Batch:
        g = torch.Generator().manual_seed(self.cursor)
        self.cursor += 1
        x = torch.randint(0, 64, (2, 9), generator=g)
        return Batch(x[:, :-1], x[:, 1:])

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]


@dataclass
class Config:
    out: str
    max_steps: dataclasses.InitVar[int] = 4
    model: ModelConfig = field(default_factory=lambda: TINY)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2, warmup_steps=1))
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=0, checkpoint_every=2))

    def __post_init__(self, max_steps):
        # 2 micro-batches of 2 rows of 8 tokens a step
        self.train = LoopConfig(seq_len=8, micro_batch=2, batch_tokens=32, max_steps=max_steps, dtype="float32")


def train(out: Path, *, resume: bool = False, loss_fn=next_token_loss, model: ModelConfig = TINY, **kw) -> Path:
    torch.manual_seed(0)
    cfg = Config(str(out), **kw)
    cfg.model = model
    return fit(cfg, Transformer(model), Tokens(), loss_fn, device=torch.device("cpu"), dist=Dist(), resume=resume)


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The uninterrupted 4-step run every resumed one must equal."""
    return train(tmp_path_factory.mktemp("whole") / "run")


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_unreadable(whole, tmp_path):
    out = train(tmp_path / "run")
    newest = out / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a write cut short by a full disk
    with pytest.warns(UserWarning, match=r"step_0000004\.pt is unreadable .*resuming from step_0000002\.pt"):
        train(out, resume=True)
    assert steps(out) == [1, 2, 3, 4] and same_weights(out, whole)
    # Kept, not deleted, and out of the way of the next resume.
    assert (out / "checkpoints" / "step_0000004.pt.unreadable").stat().st_size == 1000
    assert [p.name for p in checkpoints(out)] == ["step_0000002.pt", "step_0000004.pt"]

    for p in checkpoints(out):
        p.write_bytes(b"not a checkpoint")
    with pytest.raises(AcornError, match="no checkpoint .* is readable"):
        train(out, resume=True)


def test_resume_refuses_other_model_settings_naming_them(tmp_path):
    out = train(tmp_path / "run")
    wider = dataclasses.replace(TINY, d_model=32)
    with pytest.raises(AcornError, match=r"other model settings: model\.d_model 16 \(now 32\)") as e:
        train(out, resume=True, model=wider)
    assert "\n" not in str(e.value)
    with pytest.raises(AcornError, match=r"model\.norm_eps"):  # the same shapes, another model
        train(out, resume=True, model=dataclasses.replace(TINY, norm_eps=1e-3))


def test_resume_says_that_max_steps_changed(tmp_path):
    out = train(tmp_path / "run", max_steps=2)
    with pytest.warns(UserWarning, match=r"train\.max_steps 2 \(now 4\): the learning-rate schedule"):
        train(out, resume=True, max_steps=4)
    assert steps(out) == [1, 2, 3, 4]
    with pytest.raises(AcornError, match=r"step 4, past --train\.max_steps 3"):
        train(out, resume=True, max_steps=3)


def test_a_restart_after_a_kill_before_the_first_checkpoint_starts_metrics_afresh(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # What a run killed at step 5, before its first checkpoint, leaves: metrics, and the temporary of the
    # checkpoint it was writing (which used to make the restart refused: "already holds a run").
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 9.0}) + "\n" for i in range(1, 6)))
    train(out)
    assert steps(out) == [1, 2, 3, 4]  # not 1..5 of the dead run, then 1..4


def test_temporaries_left_by_kills_are_removed_when_the_run_starts_or_resumes(tmp_path):
    # Killed while writing its first checkpoint: only the temporary is there. The restart is a fresh
    # run (it used to be refused as "already holds a run", while --resume found no checkpoint).
    out = tmp_path / "first"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / ".step_0000002.pt.k2j4_x9q.tmp").write_bytes(b"half a checkpoint")
    train(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]

    out = train(tmp_path / "run", max_steps=2)
    stale = [out / "checkpoints" / ".step_0000004.pt.a1b2c3d4.tmp", out / ".metrics.jsonl.zz_zz_zz.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    (out / ".model.abcd1234.tmp").mkdir()  # a checkpoint save's directory, killed half-way
    (out / ".model.abcd1234.tmp" / "model.safetensors").write_bytes(b"x")
    mine = out / ".notes.tmp"  # not a name atomic writes make: left alone
    mine.write_text("keep")
    train(out, resume=True, max_steps=2)
    assert not any(p.exists() for p in stale) and not (out / ".model.abcd1234.tmp").exists()
    assert mine.read_text() == "keep"


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(whole, tmp_path, capsys):
    calls = {"n": 0}

    def interrupted_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the first micro-batch of step 3: Ctrl-C while it trains
            signal.raise_signal(signal.SIGINT)
        return next_token_loss(model, batch)

    out, before = tmp_path / "run", signal.getsignal(signal.SIGINT)
    no_checkpoints = EvalConfig(every=0, checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        train(out, loss_fn=interrupted_loss, eval=no_checkpoints)
    said = capsys.readouterr()
    assert "interrupted at step 3: checkpoint saved at step 3" in said.out
    assert "--resume" in said.out and "continues from step 3" in said.out
    assert [p.name for p in checkpoints(out)] == ["step_0000003.pt"] and steps(out) == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is plain again after fit
    train(out, resume=True, eval=no_checkpoints)
    assert steps(out) == [1, 2, 3, 4] and same_weights(out, whole)
