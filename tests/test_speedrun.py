"""The main job runs end to end (tiny preset) and leaves a readable report."""

import json

from acorn.cli import main
from acorn.speedrun import speedrun
from acorn.tokenizer.bpe import Tokenizer


def test_speedrun_tiny_runs_every_stage(tmp_path):
    out = tmp_path / "run"
    report = speedrun(out, preset="tiny")
    summary = json.loads((out / "speedrun.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [
        "world", "tokenizer", "tokenizer eval", "data", "pretrain", "sft", "eval", "samples"]
    tok = Tokenizer.from_pretrained(out / "sft" / "model")
    assert "<|assistant|>" in tok.special_tokens
    ev = next(s for s in summary["stages"] if s["name"] == "eval")["summary"]
    assert 0.0 <= ev["fact_qa"]["all"] <= 1.0 and ev["fact_qa"]["n"] > 0 and ev["unknown_qa"]["n"] > 0
    text = report.read_text(encoding="utf-8")
    assert "## Results" in text and "pretrain/loss.png" in text and "**Q:**" in text
    assert (out / "pretrain" / "loss.png").exists() and (out / "sft" / "loss.png").exists()


def test_speedrun_refuses_a_file_and_an_old_run(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["speedrun", "--out", str(f), "--preset", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "old" / "pretrain").mkdir(parents=True)
    (tmp_path / "old" / "pretrain" / "metrics.jsonl").write_text("{}\n")
    assert main(["speedrun", "--out", str(tmp_path / "old")]) == 2
    assert "already holds a speedrun" in capsys.readouterr().err
