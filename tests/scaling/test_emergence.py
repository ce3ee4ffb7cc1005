"""Emergence items and metrics: the world's facts and sums as its documents write them, scored
through the engine, the log-probabilities checked against transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from acorn.scaling import emergence as M


def test_items_are_the_worlds_truth_in_its_documents_words(tiny_world):
    from acorn.data.world import read_world

    items = M.world_items(tiny_world)
    world = read_world(tiny_world / "world.json")
    truth = {(p.name, a): p.value(a) for p in world.known() for a in p.attributes()}
    facts = items["facts"]
    assert len(facts) == len(truth)
    born = [f for f in facts if f["group"] == "birth_year"]
    assert all(f["prompt"].endswith(" was born in") for f in born)
    assert all(truth[(f["prompt"].removesuffix(" was born in"), "birth_year")] == f["answer"].strip() for f in born)
    for item in items["arithmetic"]:
        a, op, b, eq = item["prompt"].split(" ")
        assert eq == "=" and int(item["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert all(i["answer"].strip() in i["labels"] for i in items["icl"])
    some = M.world_items(tiny_world, limit=6)
    assert [len(v) for v in some.values()] == [6, 6, 6]
    assert len({i["group"] for i in some["arithmetic"]}) > 1  # spread over the digits, not the first six


def test_edit_distance_and_brier():
    assert M.edit_distance(list("kitten"), list("sitting")) == 3
    assert M.edit_distance([], [1, 2]) == 2 and M.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert M.edit_distance([1, 2, 3], [3, 1, 2]) == 2  # not a shift: a deletion and an insertion
    assert M.brier([0.0, -1e9], gold=0) == pytest.approx(0.0)  # certain and right
    assert M.brier([0.0, -1e9], gold=1) == pytest.approx(2.0)  # certain and wrong
    assert M.brier([math.log(0.25), math.log(0.75)], gold=1) == pytest.approx(0.125)


def test_scores_agree_with_transformers_and_with_generation(whole, tiny_world):
    from transformers import AutoModelForCausalLM

    from acorn.infer.engine import Engine
    from acorn.infer.sampling import SamplingParams

    model_dir = whole / "runs" / "c3e08-d1" / "model"
    engine = Engine.from_pretrained(model_dir, device="cpu", dtype="float32")
    rows = [r for rs in M.world_items(tiny_world, limit=3).values() for r in rs]
    scores = M.score(engine, rows)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for row, s in zip(rows, scores):
        ctx, cont = engine.encode(row["prompt"]), engine.encode(row["prompt"] + row["answer"])
        cont = cont[len(ctx):]
        ctx = ctx[-(engine.model.config.max_seq_len - len(cont)):]  # the tiny model's context is 32 tokens
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        lp = sum(logits[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert s["logprob"] == pytest.approx(lp, abs=1e-3)
        out = engine.generate([ctx], SamplingParams(temperature=0.0, max_new_tokens=len(cont), ignore_eos=True))[0]
        assert s["exact_match"] == float(out.token_ids[:len(cont)] == cont)
        assert s["edit_distance"] == M.edit_distance(out.token_ids[:len(cont)], cont)


def test_cli_emergence_over_a_sweep(whole, capsys):
    from acorn.cli import main

    assert main(["scaling", "emergence", str(whole), "--limit", "3"]) == 0
    doc = json.loads((whole / "emergence.json").read_text())
    assert len(doc["runs"]) == 4 and doc["items"] == {"arithmetic": 3, "facts": 3, "icl": 3}
    assert set(doc["runs"][0]["tasks"]["icl"]["overall"]) == set(M.METRICS)
    assert (whole / "scaling-emergence.png").exists() and "exact match" in capsys.readouterr().out
