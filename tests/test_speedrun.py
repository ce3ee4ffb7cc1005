"""The main job runs end to end (tiny preset) and leaves a readable report
with a report card; registered stages add to a finished run."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from acorn import speedrun as sr
from acorn.cli import main
from acorn.errors import AcornError
from acorn.eval.results import load
from acorn.tokenizer.bpe import Tokenizer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun") / "run"
    return out, sr.speedrun(out, preset="tiny")


def test_speedrun_tiny_runs_every_stage(tiny_run):
    out, report = tiny_run
    summary = json.loads((out / "speedrun.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [
        "world", "tokenizer", "tokenizer eval", "data", "pretrain", "icl", "sft", "eval", "samples"]
    # The in-context phase, a chain: copying runs from the pretrained model, then the world's text and in-context
    # documents from the copying model.
    icl = next(s for s in summary["stages"] if s["name"] == "icl")["summary"]
    assert (icl["phase"], icl["steps"], icl["docs"]) == ("copy@2>world+formats@2", 4, 60)
    assert icl["tokens"] == 4 * sr.PRESETS["tiny"].batch_tokens  # every design's tokens, not the last one's
    assert sr.base_model(out) == out / "pretrain-icl" / "model"
    cfg = yaml.safe_load((out / "pretrain-icl-1-copy" / "config.yaml").read_text())
    assert cfg["init_from"] == str(out / "pretrain" / "model") and cfg["train"]["max_steps"] == 2
    cfg = yaml.safe_load((out / "pretrain-icl" / "config.yaml").read_text())
    assert cfg["init_from"] == str(out / "pretrain-icl-1-copy" / "model") and cfg["train"]["max_steps"] == 2
    rows = (out / "data-icl-1-copy" / "docs.jsonl").read_text().splitlines()
    copies = [json.loads(d)["text"].splitlines() for d in rows]
    assert len(copies) == 60 and all(len(set(lines)) == 1 and len(lines) >= 2 for lines in copies)  # each run again
    docs = (out / "data-icl" / "docs.jsonl").read_text().splitlines()
    assert len(docs) == 60 and any("Label:" in d or "->" in d for d in docs)
    assert yaml.safe_load((out / "sft" / "config.yaml").read_text())["init_from"] == str(sr.base_model(out))
    tok = Tokenizer.from_pretrained(out / "sft" / "model")
    assert "<|assistant|>" in tok.special_tokens
    # The eval stage is the harness's world group on both models, each saved as `acorn eval --out` saves it.
    card = next(s for s in summary["stages"] if s["name"] == "eval")["summary"]["card"]
    assert list(card) == ["base", "sft"]
    for column in card:
        saved = load(out / "eval" / column)
        assert saved["results"] == card[column] and saved["config"]["limit"] == 20
        assert saved["config"]["model"] == str(out / ("pretrain-icl" if column == "base" else "sft") / "model")
        qa = saved["results"]["world_fact_qa"]
        assert 0.0 <= qa["answer_match"] <= 1.0 and qa["n"] == 20 and saved["results"]["world_unknown_qa"]["n"] > 0
    text = report.read_text(encoding="utf-8")
    assert "## Results" in text and "pretrain/loss.png" in text and "**Q:**" in text
    assert "## Report card" in text and "| task | metric | base | sft |" in text
    assert "| world_unknown_qa | idk_rate |" in text and "![report card](card.png)" in text
    assert (out / "card.png").stat().st_size > 1000
    assert (out / "pretrain" / "loss.png").exists() and (out / "sft" / "loss.png").exists()
    # The recipe that made it, from the stages' own config.yaml, and the estimate made before it started.
    assert "## Recipe" in text and "| model | preset `nano`: 4 layers, width 128" in text
    assert "| world | `tiny`, seed 0, no QA in pretraining |" in text and "AdamW lr 0.003" in text and "eager" in text
    assert "| in-context phase 1: copy | 2 steps of" in text and "| in-context phase 2: world+formats | 2 steps" in text
    assert "| in-context phase data | 60 documents of each design, from the pretrained model (--icl-phase" in text
    assert "## In-context phase" in text and "pretrain-icl/loss.png" in text
    assert summary["estimated_seconds"] > 0 and "(estimated " in text


def test_a_registered_stage_adds_its_columns_to_a_finished_run(tiny_run, monkeypatch, capsys):
    out, report = tiny_run
    seen = []

    def aligned(run):  # what an alignment stage would return: its model's numbers beside sft's
        seen.append((run.preset_name, run.preset.eval_limit, run.sft))
        return {"card": {"sft+aligned": {"world_unknown_qa": {"idk_rate": 0.5, "n": 20}}}}

    monkeypatch.setitem(sr.STAGES, "aligned", sr.Stage("aligned", "aligned: a later capability", "seconds",
                                                        aligned, default=False))
    before = json.loads((out / "speedrun.json").read_text())
    assert main(["speedrun", "--out", str(out), "--stages", "aligned,samples"]) == 0
    assert seen == [("tiny", 20, out / "sft" / "model")]
    after = json.loads((out / "speedrun.json").read_text())
    names = [s["name"] for s in after["stages"]]
    assert names == [s["name"] for s in before["stages"]] + ["aligned"]  # samples replaced in place
    text = report.read_text(encoding="utf-8")
    assert "| task | metric | base | sft | sft+aligned |" in text and "| aligned |" in text
    row = next(line for line in text.splitlines() if line.startswith("| world_unknown_qa | idk_rate |"))
    assert row.rstrip().endswith("| 0.5000 |")
    # Bad input: an unknown stage (listing the registered ones), a directory without a run.
    assert main(["speedrun", "--out", str(out), "--stages", "dpo"]) == 2
    assert "unknown speedrun stage dpo; available: eval, samples, benchmarks, align, grpo" in capsys.readouterr().err
    assert main(["speedrun", "--out", str(out.parent / "none"), "--stages", "eval"]) == 2
    assert "--stages adds to a finished run" in capsys.readouterr().err


def test_align_and_grpo_stages_train_from_the_sft_model_and_add_their_columns(tiny_run):
    out, report = tiny_run
    assert main(["speedrun", "--out", str(out), "--stages", "align,grpo"]) == 0
    stages = json.loads((out / "speedrun.json").read_text())["stages"]
    by = {s["name"]: s["summary"] for s in stages}
    assert by["align"]["steps"] == 2 and by["grpo"]["steps"] == 2  # the tiny preset's
    assert "--loss orpo --beta 0.1" in by["align"]["command"] and "--optim.lr 3e-4" in by["align"]["command"]
    kinds = {json.loads(line)["kind"] for line in (out / "align" / "pairs_train.jsonl").read_text().splitlines()}
    assert kinds == {"unknown", "fact"}
    # ORPO's loss always has a gradient: the aligned model is trained from the SFT model, not a copy of it
    # (the tiny model's arithmetic reward is mostly 0, which gives GRPO none in two steps).
    weights = [(out / m / "model" / "model.safetensors").read_bytes() for m in ("sft", "align")]
    assert weights[0] != weights[1] and (out / "grpo" / "model" / "model.safetensors").exists()
    for stage in ("align", "grpo"):
        assert load(out / stage / stage)["config"]["model"] == str(out / stage / "model")
    card = sr.report_card([sr.StageResult(s["name"], s["seconds"], s["summary"]) for s in stages])
    assert {"world_fact_qa", "world_unknown_qa", "world_arithmetic"} <= set(card["align"])
    assert "world_arithmetic" in card["grpo"] and all(t.startswith("world_arithmetic") for t in card["grpo"])
    text = report.read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| task | metric |"))
    assert header.endswith("| align | grpo |") and "## Stages over the run" in text


def test_the_synthetic_data_stages_add_their_columns_files_and_plot(tiny_run, monkeypatch):
    """synth-qa, collapse and distill over the finished tiny run (seconds at the tiny preset's
    sizes): each stage's card columns, files and numbers in range. The tiny chat model's
    128-token context holds no knowledge-base document, which synth-qa says instead of failing;
    with the model's answers stubbed, its column counts them."""
    import math

    import acorn.synth.qa as qa

    out, report = tiny_run
    assert main(["speedrun", "--out", str(out), "--stages", "synth-qa,collapse,distill"]) == 0
    stages = json.loads((out / "speedrun.json").read_text())["stages"]
    by = {s["name"]: s["summary"] for s in stages}
    card = sr.report_card([sr.StageResult(s["name"], s["seconds"], s["summary"]) for s in stages])
    p = sr.PRESETS["tiny"]
    # synth-qa: the world's values are all kept and correct; every eval task gets a contaminated fraction.
    world = card["synth-qa-world"]
    assert world["synth_qa"] == {"candidates": 5 * p.synth_qa_docs, "kept": 5 * p.synth_qa_docs, "correct": 1.0,
                                 "overlapping_pairs": world["synth_qa"]["overlapping_pairs"]}
    assert 0 <= world["synth_qa"]["overlapping_pairs"] <= 5 * p.synth_qa_docs
    assert {f"synth_qa:{t}" for t in qa.DEFAULT_TASKS} <= set(world)
    assert all(0.0 <= world[f"synth_qa:{t}"]["contaminated"] <= 1.0 for t in qa.DEFAULT_TASKS)
    rows = (out / "synth-qa" / "world" / "qa.jsonl").read_text().splitlines()
    assert len(rows) == 5 * p.synth_qa_docs and (out / "synth-qa" / "world" / "summary.json").exists()
    assert "synth-qa-sft" not in card and "context" in by["synth-qa"]["skipped"]["sft"]
    # collapse: both modes from the same generation 0, measured at it and at the last generation.
    last = p.collapse_generations
    cols = [card[f"collapse-{m}"]["collapse"] for m in sr.COLLAPSE_MODES]
    assert cols[0]["val_loss@gen0"] == cols[1]["val_loss@gen0"]
    for col in cols:
        assert set(col) == {f"{m}@gen{g}" for m in ("val_loss", "tail_loss", "distinct_2") for g in (0, last)}
        assert all(0.0 < col[f"{m}@gen{g}"] < 2 * math.log(p.vocab_size) for m in ("val_loss", "tail_loss")
                   for g in (0, last))
        assert all(0.0 < col[f"distinct_2@gen{g}"] <= 1.0 for g in (0, last))
    for mode in sr.COLLAPSE_MODES:
        gens = (out / "collapse" / mode / "generations.jsonl").read_text().splitlines()
        assert len(gens) == last + 1 and (out / "collapse" / mode / f"gen_{last}" / "model").is_dir()
    assert (out / "collapse" / "collapse.png").stat().st_size > 1000
    # distill: the teacher (the base column) and both students on the same val rows; the students
    # start alike and the teacher's term is what tells them apart.
    losses = {c: card[c]["distill"]["val_loss"] for c in ("base", "distill-scratch", "distill-js")}
    assert all(0.0 < v < 2 * math.log(p.vocab_size) for v in losses.values())
    weights = [(out / "distill" / s / "model" / "model.safetensors").read_bytes() for s in ("scratch", "js")]
    assert weights[0] != weights[1]
    for column in ("distill-scratch", "distill-js"):
        assert 0.0 <= card[column]["world_multiple_choice"]["acc"] <= 1.0
        assert load(out / "distill" / "eval" / column)["config"]["limit"] == p.eval_limit
    assert by["distill"]["steps"] == p.distill_steps and "--kind js" in by["distill"]["commands"][1]
    text = report.read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| task | metric |"))
    assert "| synth-qa-world | collapse-replace | collapse-mix | distill-scratch | distill-js |" in header
    assert "| synth_qa | kept |" in text and f"| {5 * p.synth_qa_docs} |" in text  # counts as counts
    assert "![model collapse: replace vs mix (acorn synth collapse)](collapse/collapse.png)" in text
    assert "`acorn synth distill --teacher" in text and "`acorn synth collapse --data" in text

    # The chat model's column, with its answers stubbed: the truth for every other pair, a made-up value else.
    monkeypatch.setattr(qa, "answer_with_model", lambda engine, rows: [
        r["truth"] if i % 2 == 0 else "Zzyx" for i, r in enumerate(rows)])
    assert main(["speedrun", "--out", str(out), "--stages", "synth-qa"]) == 0
    stages = json.loads((out / "speedrun.json").read_text())["stages"]
    sft = next(s for s in stages if s["name"] == "synth-qa")["summary"]["card"]["synth-qa-sft"]["synth_qa"]
    n = 5 * p.synth_qa_docs
    assert sft["candidates"] == n and sft["kept"] == (n + 1) // 2 and sft["correct"] == 1.0  # "Zzyx": unverifiable


def test_the_injection_stage_scores_each_chat_model_undefended_and_defended(tiny_run, monkeypatch):
    """Over the finished tiny run: the tiny model's 128-token context holds no
    attack prompt, which the stage says instead of failing; with the evaluation
    stubbed, each chat model (sft, and align when that stage ran) gets the
    suite's metrics in both settings as report-card rows."""
    import acorn.eval.injection as inj

    out, report = tiny_run
    assert main(["speedrun", "--out", str(out), "--stages", "injection"]) == 0
    by = {s["name"]: s["summary"] for s in json.loads((out / "speedrun.json").read_text())["stages"]}
    assert by["injection"]["skipped"] and all("context" in why for why in by["injection"]["skipped"].values())
    calls = []

    def fake(model, *, items, layout, spotlight, progress):
        calls.append((Path(model).parent.name, layout, spotlight))
        return {m: 0.25 for m in inj.METRICS} | {"attacks": {}, "n": len(items), "samples": [], "layout": layout,
                                                 "spotlight": spotlight, "skipped": 0}

    monkeypatch.setattr(inj, "evaluate_injection", fake)
    assert main(["speedrun", "--out", str(out), "--stages", "injection"]) == 0
    models = ["sft", "align"] if (out / "align" / "model").exists() else ["sft"]
    assert calls == [(m, *sr.INJECTION_SETTINGS[t]) for m in models for t in ("injection", "injection:defended")]
    stages = json.loads((out / "speedrun.json").read_text())["stages"]
    card = sr.report_card([sr.StageResult(s["name"], s["seconds"], s["summary"]) for s in stages])
    assert card["sft"]["injection:defended"]["attack_success"] == 0.25 and "utility_clean" in card["sft"]["injection"]
    assert "attack_success" in report.read_text(encoding="utf-8")


def test_speedrun_refuses_a_file_and_an_old_run(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["speedrun", "--out", str(f), "--preset", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "old" / "pretrain").mkdir(parents=True)
    (tmp_path / "old" / "pretrain" / "metrics.jsonl").write_text("{}\n")
    assert main(["speedrun", "--out", str(tmp_path / "old")]) == 2
    assert "already holds a speedrun" in capsys.readouterr().err


def test_every_preset_resolved_passes_its_own_checks_as_speedrun_hands_them_to_the_estimate(monkeypatch):
    # speedrun() estimates with every field of the resolved preset: a check that refused one of the preset's
    # own values (icl_docs with the phase off) stopped the default `acorn speedrun` before its first stage
    from dataclasses import asdict

    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 0.0))
    for name in sr.PRESETS:
        for recipe in ({}, {"icl_phase": ""}, {"icl_phase": "copy@3"}):
            p = sr.resolve_preset(name, **recipe)
            fields = {k: v for k, v in asdict(p).items() if k != "world"}
            assert sr.resolve_preset(name, **fields) == p
            assert sr.estimate(name, **fields)["seconds"] > 0


def test_every_preset_speedrun_starts_its_first_stage(monkeypatch, tmp_path):
    # speedrun() itself, up to its first stage (the world), for every preset: what the README's first command runs
    class Reached(Exception):
        pass

    def first_stage(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 0.0))
    monkeypatch.setattr(sr, "stage_world", first_stage)
    for name in sr.PRESETS:
        with pytest.raises(Reached):
            sr.speedrun(tmp_path / name, preset=name)


def test_estimate_adds_the_budgets_and_scales_the_other_stages_by_the_probe(monkeypatch):
    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 0.0))  # 0.1 s per micro-batch
    e = sr.estimate("cpu")
    p = sr.PRESETS["cpu"]
    tok_s = p.micro_batch * p.seq_len / 0.1  # 40,960
    assert e["tok_s"] == pytest.approx(tok_s)
    ref_seconds, ref_tok_s = sr.REFERENCE_OTHER_STAGES["cpu"]
    assert e["stages"] == pytest.approx({"pretrain": 540.0, "sft": 270.0, "other stages": ref_seconds * ref_tok_s / tok_s})
    accum = p.batch_tokens // (p.micro_batch * p.seq_len)
    # the in-context phase (opt-in) is a number of steps: their time at the probe's speed, compiled in the cpu
    # preset (its measured speedup), plus writing and tokenizing each design's documents
    with_icl = sr.estimate("cpu", icl_phase="world+copy+formats@400")
    assert with_icl["stages"]["in-context phase"] == pytest.approx(400 * 0.1 * accum / sr.COMPILED_SPEEDUP + 5.0)
    assert "the in-context phase's steps ~2.0 min" in sr.format_estimate(with_icl)
    chain = sr.estimate("cpu", icl_phase="copy@200>formats@200>world+formats@200")  # each design's documents too
    assert chain["stages"]["in-context phase"] == pytest.approx(600 * 0.1 * accum / sr.COMPILED_SPEEDUP + 3 * 5.0)
    eager = sr.estimate("cpu", icl_phase="copy@200>formats@200>world+formats@200", compile=False)
    assert eager["stages"]["in-context phase"] == pytest.approx(600 * 0.1 * accum + 3 * 5.0)
    assert "in-context" not in sr.format_estimate(e)
    assert e["pretrain_steps"] == int(540 * sr.STEP_SHARE / (0.1 * accum)) and e["pretrain_tokens"] == e["pretrain_steps"] * p.batch_tokens
    assert e["seconds"] == pytest.approx(sum(e["stages"].values())) and "slower" not in sr.format_estimate(e)
    # a machine 10x slower than the reference says what that costs
    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (2.048, 0.0))
    slow = sr.format_estimate(sr.estimate("cpu"))
    assert "10.0x slower than the reference machine" in slow and "pretraining will see" in slow
    # no measured reference for the gpu preset: said, not guessed
    assert "not yet measured" in sr.format_estimate(sr.estimate("gpu"))
    # compilation is paid out of the pretraining budget (the stage's own probe measures it)
    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 30.0 if cfg.train.compile else 0.0))
    from acorn.train.pretrain import PretrainConfig

    cfg = PretrainConfig()
    cfg.train.compile, cfg.train.micro_batch, cfg.train.seq_len, cfg.train.batch_tokens = True, 16, 256, 16384
    assert sr._steps_for(cfg, 9.0) == int((540 * sr.STEP_SHARE - 30) / (0.1 * accum))
    # the estimate itself never compiles (minutes under load, only to guess); it says so
    e = sr.estimate("cpu", compile=True)
    assert e["pretrain_steps"] == int(540 * sr.STEP_SHARE / (0.1 * accum)) and "compilation is paid out" in sr.format_estimate(e)


def test_estimate_from_the_command_line_and_recipe_settings(monkeypatch, capsys, tmp_path):
    seen = []
    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: seen.append(cfg) or (0.1, 0.0))
    assert main(["speedrun", "--estimate", "--compile", "--mixed-qa", "2"]) == 0
    assert capsys.readouterr().out.startswith("estimate: ~")
    assert main(["speedrun", "--estimate", "--icl-phase", "copy@20>formats@30"]) == 0  # the in-context phase, opt-in
    assert "the in-context phase's steps ~" in capsys.readouterr().out
    # the preset's own pretraining config, probed eagerly
    assert seen[-1].train.compile is False and seen[-1].model.preset == "nano" and seen[-1].train.micro_batch == 16
    p = sr.resolve_preset("cpu", mixed_qa=2, fused_adamw=True)
    assert (p.mixed_qa, p.fused_adamw, p.lr) == (2, True, sr.PRESETS["cpu"].lr)
    cfg = sr.pretrain_config(p, tmp_path, tmp_path, 2048, 0)
    assert cfg.optim.fused is True and cfg.train.compile is True  # the cpu preset compiles
    assert sr.pretrain_config(sr.resolve_preset("cpu", compile=False), tmp_path, tmp_path, 2048, 0).train.compile is False
    with pytest.raises(AcornError, match="unknown speedrun setting warp; settable: world"):
        sr.resolve_preset("cpu", warp=9)
    with pytest.raises(AcornError, match="mixed_qa must be a non-negative integer"):
        sr.resolve_preset("cpu", mixed_qa=-1)
    with pytest.raises(AcornError, match="unknown in-context phase design 'chat' in 'copy@9>chat@9'; choose from"):
        sr.resolve_preset("cpu", icl_phase="copy@9>chat@9")
    with pytest.raises(AcornError, match="each design needs a positive number of steps"):
        sr.resolve_preset("cpu", icl_phase="copy@9>formats")
    with pytest.raises(AcornError, match="icl_docs must be a positive integer"):
        sr.resolve_preset("cpu", icl_phase="copy@9", icl_docs=0)
    with pytest.raises(AcornError, match="icl_docs sizes the in-context phase, which is off"):
        sr.resolve_preset("cpu", icl_docs=50)
    assert sr.resolve_preset("cpu", pretrain_minutes=5, sft_minutes=2.5).pretrain_minutes == 5
    with pytest.raises(AcornError, match="sft_minutes is a time budget in minutes, a number above 0, got 0"):
        sr.resolve_preset("cpu", sft_minutes=0)
    assert sr.resolve_preset("tiny", icl_phase="").icl_phase == ""  # a preset's phase turned off
    assert sr.resolve_preset("cpu", icl_docs=sr.PRESETS["cpu"].icl_docs).icl_phase == ""  # the preset's own value
    # a run made before the chains (icl_steps: that many steps of the one mixture) reads back as that chain
    old = {"preset": "cpu", "preset_settings": {"icl_steps": 400}}
    assert sr.saved_preset(old).icl_phase == "world+copy+formats@400"
    assert sr.saved_preset({"preset": "cpu", "preset_settings": {}}).icl_phase == ""
    with pytest.raises(AcornError, match="recipe settings make a new run"):
        sr.speedrun(tmp_path, stages=["eval"], mixed_qa=2)
    with pytest.raises(SystemExit) as e:  # argparse's own check, one line
        main(["speedrun", "--estimate", "--mixed-qa", "-2"])
    assert e.value.code == 2 and "--mixed-qa: must be >= 0" in capsys.readouterr().err
    assert main(["speedrun", "--estimate", "--pretrain-minutes", "5"]) == 0  # the budget reaches the estimate
    assert "pretraining 5.0 min and SFT 4.5 min are time budgets" in capsys.readouterr().out


def test_icl_world_share_sets_the_worlds_text_in_the_phases_world_designs(tmp_path, monkeypatch, capsys):
    import acorn.data.prepare
    import acorn.train.pretrain

    class Trained(Exception):
        pass

    def pretrain(cfg):
        raise Trained

    monkeypatch.setattr(acorn.data.prepare, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(acorn.train.pretrain, "pretrain", pretrain)
    sr.stage_world(tmp_path / "w", "tiny", 0)
    p = sr.resolve_preset("tiny", icl_phase="world+formats@2", icl_docs=600, icl_world_share=0.1)
    with pytest.raises(Trained):  # the documents are written before the design trains
        sr.stage_icl(p, tmp_path / "w", tmp_path / "tok", tmp_path / "pre", tmp_path / "run" / "pretrain-icl", 512, 0)
    world = {json.loads(line)["text"] for line in (tmp_path / "w" / "pretrain.jsonl").read_text().splitlines()}
    docs = [json.loads(line)["text"] for line in (tmp_path / "run" / "data-icl" / "docs.jsonl").read_text().splitlines()]
    assert 30 <= sum(d in world for d in docs) <= 95  # a tenth of 600, not the default third (200)
    assert sr.PRESETS["cpu"].icl_world_share == 1 / 3
    for bad, why in (({"icl_world_share": 0.2}, "the phase is off"),
                     ({"icl_world_share": 0.2, "icl_phase": "copy@9"}, "its chain has none"),
                     ({"icl_world_share": 1.0, "icl_phase": "world+copy@9"}, "a number between 0 and 1")):
        with pytest.raises(AcornError, match=why):
            sr.resolve_preset("cpu", **bad)
    assert main(["speedrun", "--estimate", "--icl-world-share", "0.2"]) == 2  # the flag reaches it: one line
    assert "icl_world_share mixes the world's text into the in-context phase's world+ designs" in \
        capsys.readouterr().err


def test_the_world_stage_mixes_qa_into_pretraining_when_the_recipe_asks(tmp_path):
    sr.stage_world(tmp_path / "w", "tiny", 0, mixed_qa=1)
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "w" / "pretrain.jsonl").read_text().splitlines()]
    assert "qa" in kinds
    run = sr.Run(tmp_path, "tiny", sr.resolve_preset("tiny", mixed_qa=1), 0)
    text = "\n".join(sr.recipe_section(run))
    assert "1 QA pairs per fact of the SFT people mixed into pretraining" in text and "with changes" in text


def test_world_icl_docs_put_in_context_documents_into_the_pretraining_world(tmp_path, capsys):
    p = sr.resolve_preset("tiny", world_icl_docs=40, world_icl_style="copy+spaced+formats")
    sr.stage_world(tmp_path / "w", "tiny", 0, icl_docs=p.world_icl_docs, icl_style=p.world_icl_style)
    icl = [r["text"] for r in map(json.loads, (tmp_path / "w" / "pretrain.jsonl").read_text().splitlines())
           if r["kind"] == "icl"]
    assert len(icl) == 40 and any(len(set(t.split("\n"))) == 1 for t in icl)  # copy runs among them: no episodes
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["icl_style"] == "copy+spaced+formats"
    text = "\n".join(sr.recipe_section(sr.Run(tmp_path, "tiny", p, 0)))
    assert "40 in-context documents of style copy+spaced+formats in pretraining" in text
    with pytest.raises(AcornError, match="world_icl_style spaced styles the world_icl_docs"):
        sr.resolve_preset("cpu", world_icl_style="spaced")
    with pytest.raises(AcornError, match="world_icl_style must be one of repeats"):
        sr.resolve_preset("cpu", world_icl_docs=5, world_icl_style="chat")
    with pytest.raises(AcornError, match="world_icl_docs must be a non-negative integer"):
        sr.resolve_preset("cpu", world_icl_docs=-1)
    assert main(["speedrun", "--estimate", "--world-icl-style", "spaced"]) == 2  # the flags reach it: one line
    assert "world_icl_style spaced styles the world_icl_docs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own check, one line
        main(["speedrun", "--estimate", "--world-icl-style", "chat"])
    assert e.value.code == 2 and "--world-icl-style: invalid choice" in capsys.readouterr().err


def test_mixed_qa_format_chat_reaches_the_world_and_the_recipe(tmp_path, monkeypatch, capsys):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # the world stage is what this checks; the rest is the tiny run's to test
        raise Stop

    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 0.0))
    monkeypatch.setattr(sr, "stage_tokenizer", stop)
    with pytest.raises(Stop):
        main(["speedrun", "--out", str(tmp_path / "run"), "--preset", "tiny", "--mixed-qa", "1",
              "--mixed-qa-format", "chat"])
    world = tmp_path / "run" / "world"
    qa = [r for r in map(json.loads, (world / "pretrain.jsonl").read_text().splitlines()) if r["kind"] == "qa"]
    assert qa and all("messages" in r and "text" not in r for r in qa)
    assert json.loads((world / "manifest.json").read_text())["mixed_qa_format"] == "chat"
    run = sr.Run(tmp_path, "tiny", sr.resolve_preset("tiny", mixed_qa=1, mixed_qa_format="chat"), 0)
    assert "in the chat template (--mixed-qa-format chat)" in "\n".join(sr.recipe_section(run))
    run = sr.Run(tmp_path, "tiny", sr.resolve_preset("tiny", mixed_qa=1), 0)
    assert "as plain text" in "\n".join(sr.recipe_section(run))
    with pytest.raises(AcornError, match="mixed_qa_format must be one of plain, chat"):
        sr.resolve_preset("cpu", mixed_qa_format="html")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # argparse's own check, one line
        main(["speedrun", "--estimate", "--mixed-qa-format", "html"])
    assert e.value.code == 2 and "--mixed-qa-format: invalid choice" in capsys.readouterr().err


def test_fact_answers_and_tool_sft_reach_the_world_and_the_recipe(tmp_path, capsys, monkeypatch):
    for name in ("cpu", "tiny"):
        assert (sr.PRESETS[name].fact_answers, sr.PRESETS[name].tool_sft) == ("sentence", True)
    sr.stage_world(tmp_path / "w", "tiny", 0, fact_answers="sentence", tool_sft=True)
    rows = [json.loads(line) for line in (tmp_path / "w" / "sft.jsonl").read_text().splitlines()]
    facts = [r["messages"][-1]["content"] for r in rows if r["kind"] == "fact"]
    assert facts and all(f.startswith("As far as I know, ") for f in facts)
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["tool_sft"] is True
    text = "\n".join(sr.recipe_section(sr.Run(tmp_path, "tiny", sr.resolve_preset("tiny"), 0)))
    assert "fact questions answered in a sentence" in text and "with changes" not in text
    assert "calculator calls at every size (--tool-sft)" in text
    p = sr.resolve_preset("tiny", fact_answers="value", tool_sft=False)
    text = "\n".join(sr.recipe_section(sr.Run(tmp_path, "tiny", p, 0)))
    assert "with the bare value (--fact-answers value)" in text and "with changes" in text
    assert "calculator calls only for large problems" in text
    seen = []
    monkeypatch.setattr(sr, "estimate", lambda preset, vocab_size=None, **recipe: seen.append(recipe) or {})
    monkeypatch.setattr(sr, "format_estimate", lambda guess: "estimate")
    assert main(["speedrun", "--estimate", "--no-tool-sft", "--fact-answers", "value"]) == 0
    assert seen[-1]["tool_sft"] is False and seen[-1]["fact_answers"] == "value"
    # A run saved before the knobs existed was made without them, whatever its preset says today.
    old = {"preset": "cpu", "seed": 0, "preset_settings": {k: v for k, v in dataclasses.asdict(sr.PRESETS["cpu"]).items()
                                                          if k not in ("fact_answers", "tool_sft")}}
    p = sr.saved_preset(old)
    assert (p.fact_answers, p.tool_sft, p.sft_replay) == ("value", False, sr.PRESETS["cpu"].sft_replay)
    assert sr.saved_preset({"preset": "cpu", "seed": 0, "preset_settings": dataclasses.asdict(sr.PRESETS["cpu"])}) \
        == sr.PRESETS["cpu"]
    with pytest.raises(AcornError, match="fact_answers must be one of value, sentence"):
        sr.resolve_preset("cpu", fact_answers="essay")
    with pytest.raises(SystemExit) as e:
        main(["speedrun", "--estimate", "--fact-answers", "essay"])
    assert e.value.code == 2 and "--fact-answers: invalid choice" in capsys.readouterr().err


def test_the_vlm_stage_joins_clip_to_the_chat_model_and_scores_image_questions(tiny_run):
    """Over the finished tiny run: the run's world's pictures (the same people), CLIP, LLaVA's two
    stages from the SFT model (the tiny preset's few steps), the image questions per kind."""
    from acorn.vision.llava import IMAGE_TOKEN, load_llava

    out, report = tiny_run
    assert main(["speedrun", "--out", str(out), "--stages", "vlm"]) == 0
    stages = json.loads((out / "speedrun.json").read_text())["stages"]
    vlm = next(s for s in stages if s["name"] == "vlm")["summary"]
    column = vlm["card"]["vlm"]
    assert {"vlm_count", "vlm_colour", "vlm_shape", "vlm_number"} <= set(column)
    assert all(0.0 <= r["acc"] <= 1.0 and 0.0 < r["chance"] < 1.0 for r in column.values())
    world = json.loads((out / "world" / "world.json").read_text())
    assert json.loads((out / "vlm" / "world" / "world.json").read_text()) == world
    badges = [json.loads(line)["spec"] for line in (out / "vlm" / "world" / "images" / "metadata.jsonl")
              .read_text().splitlines() if '"badge"' in line]
    assert badges and {b["person"] for b in badges} <= {p["name"] for p in world["people"]}
    model, tok = load_llava(out / "vlm" / "stage2" / "model")
    assert model.config.image_token_id == tok.special_tokens[IMAGE_TOKEN] == tok.vocab_size - 1
    assert len(vlm["commands"]) == 3 and "--init_from" in vlm["commands"][2]
    assert "| vlm_count | acc |" in report.read_text(encoding="utf-8")


def test_a_compile_that_fails_falls_back_to_eager_training(monkeypatch, capsys):
    """Where torch.compile cannot work (no C++ compiler), the probe says so in one line and
    the stage's config trains eagerly, instead of the main job dying."""
    import torch

    from acorn.train.pretrain import PretrainConfig

    def broken(model, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    cfg = PretrainConfig()
    cfg.model.vocab_size, cfg.train.micro_batch, cfg.train.seq_len, cfg.train.compile = 64, 1, 8, True
    per_micro, compile_s = sr.probe(cfg, steps=6)
    assert cfg.train.compile is False and compile_s == 0.0 and per_micro > 0
    out = capsys.readouterr().out
    assert "torch.compile failed here (RuntimeError: InductorError: no working C++ compiler found); training eagerly" in out


def test_the_probe_times_the_stage_s_own_step(monkeypatch, tmp_path):
    """The probe's step is the one the stage compiles and runs: the model in training mode
    (a loaded checkpoint comes in eval mode) and, for SFT, batches with document ids and
    contiguous inputs as SFT's collate makes them; each difference was another compilation
    the budget did not plan for."""
    import torch

    from acorn.model.checkpoint import save
    from acorn.model.transformer import Transformer
    from acorn.train import loop
    from acorn.train.pretrain import PretrainConfig
    from acorn.train.sft import SFTConfig
    from acorn.train.sft_data import to_batch

    seen, micro = [], []

    def record(model, batches, *a, **k):
        seen.append((model.training, batches[0].document_ids))
        micro.append(len(batches))

    monkeypatch.setattr(loop, "train_step", record)
    pre, sft_cfg = PretrainConfig(), SFTConfig()
    for cfg in (pre, sft_cfg):
        cfg.train.micro_batch, cfg.train.seq_len = 2, 8
    pre.model.vocab_size = 64
    save(Transformer(pre.model), tmp_path / "base")
    sr.probe(pre, steps=6)
    sr.probe(sft_cfg, tmp_path / "base", steps=6, accum=3)  # SFT's model is a checkpoint, which loads in eval mode
    assert micro == [1] * 6 + [3] * 6  # the stage's accumulation: micro-batches per timed step
    (pre_mode, pre_docs), (sft_mode, sft_docs) = seen[0], seen[-1]
    assert pre_mode and sft_mode and pre_docs is None
    assert sft_docs is not None and sft_docs.shape == (2, 8) and sft_docs.is_contiguous()
    batch = to_batch([([1, 2, 3, 4, 5], [1] * 5, [0, 0, 1, 1, 1], None)] * 2)
    assert batch.x.is_contiguous() and batch.document_ids.is_contiguous() and batch.x.shape == (2, 4)
    assert torch.equal(batch.document_ids, torch.tensor([[0, 0, 1, 1]] * 2))


def test_sft_replay_mixes_pretraining_biographies_into_sft(tmp_path, monkeypatch, capsys):
    """--sft-replay N: N of the world's biographies, as text rows, beside its conversations in SFT's data."""
    import acorn.train.sft as sft_module

    class Stop(Exception):
        pass

    seen = []

    def sft(cfg):  # records the config SFT would train with, and stops there
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(sr, "probe", lambda cfg, init_from=None, steps=10, accum=1: (0.1, 0.0))
    monkeypatch.setattr(sft_module, "sft", sft)
    world = tmp_path / "world"
    sr.stage_world(world, "tiny", 0)
    p = sr.resolve_preset("tiny", sft_replay=5)
    with pytest.raises(Stop):
        sr.stage_sft(p, world, tmp_path / "pretrain" / "model", tmp_path / "sft", 0)
    replay = tmp_path / "sft_replay.jsonl"
    assert seen[0].data == f"{world / 'sft.jsonl'},{replay}"
    bios = {r["text"] for r in map(json.loads, (world / "pretrain.jsonl").read_text().splitlines())
            if r["kind"] == "biography"}
    rows = [json.loads(line) for line in replay.read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) == {"text"} and r["text"] in bios for r in rows)
    with pytest.raises(Stop):  # without replay: the conversations alone
        sr.stage_sft(sr.resolve_preset("tiny"), world, tmp_path / "pretrain" / "model", tmp_path / "sft", 0)
    assert seen[1].data == str(world / "sft.jsonl")
    assert "5 of its pretraining biographies as text rows" in "\n".join(sr.recipe_section(sr.Run(tmp_path, "tiny", p, 0)))
    with pytest.raises(AcornError, match="sft_replay must be a non-negative integer"):
        sr.resolve_preset("cpu", sft_replay=-1)
    assert main(["speedrun", "--estimate", "--sft-replay", "3"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["speedrun", "--estimate", "--sft-replay", "-1"])
    assert e.value.code == 2 and "--sft-replay: must be >= 0" in capsys.readouterr().err
