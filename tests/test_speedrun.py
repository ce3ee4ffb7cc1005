"""The main job runs end to end on a tiny world and leaves a readable report."""

import json

from acorn.cli import main
from acorn.speedrun import speedrun
from acorn.tokenizer import Tokenizer


def test_speedrun_tiny_writes_report_and_artifacts(tmp_path):
    out = tmp_path / "run"
    report = speedrun(out, size="tiny", vocab_size=400)
    text = report.read_text(encoding="utf-8")
    summary = json.loads((out / "speedrun.json").read_text())
    assert [s["name"].split(":")[0] for s in summary["stages"]] == ["world", "tokenizer", "tokenizer eval"]
    assert (out / "world" / "pretrain.jsonl").stat().st_size > 0
    tok = Tokenizer.from_pretrained(out / "tokenizer")
    assert tok.vocab_size <= 400 and "<|assistant|>" in tok.special_tokens
    # The report's table has one row per tokenizer with a positive bytes/token.
    rows = [line for line in text.splitlines() if line.startswith(("acorn (this run)", "gpt2"))]
    assert len(rows) == 2 and all(float(r.split()[-1]) > 1.0 for r in rows)


def test_speedrun_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["speedrun", "--out", str(f), "--size", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
