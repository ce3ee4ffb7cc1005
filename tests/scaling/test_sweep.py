"""The IsoFLOP sweep: the plan from the dial, resuming, sharding, and refusing bad grids."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from acorn.errors import AcornError
from acorn.scaling import sweep as S

# Two budgets x two depths of a few steps each on the tiny world.
TINY = S.PRESETS["tiny"]


def _losses(out) -> dict[str, float]:
    return {r["name"]: r["val_loss"] for r in S.load_results(out)}


def test_plan_derives_shapes_from_depth_and_counts_compute_both_ways():
    runs, left_out = S.plan(S.PRESETS["cpu"], 2048, 1_600_000)
    by = {r.name: r for r in runs}
    r = by["c2.5e12-d3"]
    assert (r.d_model, r.n_head) == (96, 3)  # width = 32 x depth, heads of 32
    assert r.n_total - r.n_nonembedding == 2048 * 96  # the tied embedding, counted once
    assert r.compute_total == pytest.approx(6 * r.n_total * r.tokens)
    assert r.compute_nonembedding == pytest.approx(6 * r.n_nonembedding * r.tokens)
    assert abs(r.compute_total / 2.5e12 - 1) < 0.01  # the budget, to a step's rounding
    assert by["c1e12-d2"].lr > by["c1e12-d3"].lr  # wider models get smaller rates
    assert by["c1e12-d2"].warmup_steps == round(0.05 * by["c1e12-d2"].steps)
    assert any(s.startswith("c2.5e12-d1") and "tokens per parameter" in s for s in left_out)
    # A run too short for the preset's batch gets smaller batches, down to 4 rows, so it still has its steps.
    assert (by["c4e11-d3"].batch_tokens, by["c4e11-d3"].steps) == (512, 246)
    assert all(r.steps >= 250 or r.batch_tokens == 512 for r in runs)
    assert {r.batch_tokens for r in runs if r.steps >= 500} == {2048}
    tight = S.plan(S.PRESETS["cpu"], 2048, 1_600_000, budgets=[1e11], depths=[1, 5])[1]
    assert any(s.startswith("c1e11-d5") and "fewer than 50" in s for s in tight)  # even at 4 rows a step
    wide = S.plan(S.with_overrides(S.PRESETS["cpu"], tokens_per_param=(0.01, 1e4)), 2048, 1_600_000)[1]
    assert any(s.startswith("c4e12-d1") and "passes over the data" in s for s in wide)
    assert len({r.budget for r in runs}) == 4 and all(sum(q.budget == b for q in runs) >= 3 for b in {r.budget for r in runs})


def test_shards_partition_the_runs_and_balance_compute():
    runs, _ = S.plan(S.PRESETS["cpu"], 2048, 1_600_000)
    parts = [S.shard_of(runs, i, 3) for i in range(3)]
    names = [r.name for part in parts for r in part]
    assert sorted(names) == sorted(r.name for r in runs)
    loads = [sum(r.compute_total for r in part) for part in parts]
    assert max(loads) < 1.6 * min(loads)


def test_runs_are_ordinary_pretraining_runs(whole):
    results = S.load_results(whole)
    assert len(results) == len(json.loads((whole / "sweep.json").read_text())["runs"]) == 4
    for r in results:
        run = whole / "runs" / r["name"]
        assert (run / "model" / "config.json").exists() and (run / "report.md").exists()
        assert r["val_loss"] > 0 and r["steps"] == sum(1 for _ in open(run / "metrics.jsonl"))
        assert not list((run / "checkpoints").glob("*.pt"))  # only needed to resume


def test_a_resumed_sweep_equals_an_uninterrupted_one(tmp_path, shards, whole, monkeypatch):
    import acorn.train.loop as loop

    real, calls = loop.train_step, {"n": 0}

    def dies_at_step_11(*a, **kw):  # after the checkpoint of step 8 of the first run with >= 11 steps
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*a, **kw)

    first = min((r for r in S.load_results(whole) if r["steps"] >= 11), key=lambda r: r["steps"])
    monkeypatch.setattr(loop, "train_step", dies_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        S.sweep(tmp_path, TINY, data=str(shards), budgets=[first["budget"]], depths=[first["depth"]], quiet=True)
    assert list((tmp_path / "runs" / first["name"] / "checkpoints").glob("step_*.pt"))
    monkeypatch.setattr(loop, "train_step", real)
    S.sweep(tmp_path, TINY, data=str(shards), budgets=[first["budget"]], depths=[first["depth"]], quiet=True)
    assert _losses(tmp_path)[first["name"]] == _losses(whole)[first["name"]]


def test_a_sharded_sweep_equals_an_unsharded_one(tmp_path, shards, whole):
    done = [S.sweep(tmp_path, TINY, data=str(shards), shard=(i, 2), quiet=True).ran for i in range(2)]
    assert done[0] and done[1] and not set(done[0]) & set(done[1])
    assert _losses(tmp_path) == _losses(whole)
    again = S.sweep(tmp_path, TINY, data=str(shards), quiet=True)  # everything finished: nothing reruns
    assert again.ran == [] and len(again.skipped_done) == 4


@pytest.mark.parametrize("budgets,depths,words", [
    ([1e3], None, "no size in --sizes"),  # too small for any model: not one step
    ([1e30], None, "no size in --sizes"),  # too large for the world: hundreds of passes over its data
    (None, [0], "depth 0"),
    (None, [4000], "GiB"),  # larger than memory
])
def test_bad_budgets_and_sizes_are_one_line_errors(shards, tmp_path, budgets, depths, words):
    with pytest.raises(AcornError, match=words) as e:
        S.sweep(tmp_path, TINY, data=str(shards), budgets=budgets, depths=depths, quiet=True)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_bad_shard_and_another_sweeps_settings(shards, whole, capsys):
    from acorn.cli import main

    assert main(["scaling", "sweep", "--out", str(whole), "--preset", "tiny", "--data", str(shards),
                 "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["scaling", "sweep", "--out", str(whole), "--preset", "tiny", "--data", str(shards),
                 "--budgets", "1e8"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and err.count("\n") == 1
