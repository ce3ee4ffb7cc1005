"""Code benchmarks by execution: the pass@k estimator against its closed form,
Acorn's code task (every reference solution passes its tests, a wrong one
fails them), and a whole pass@k run in which a stub generator returns known
correct and incorrect programs."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from math import comb
from types import SimpleNamespace

import pytest

from acorn import sandbox
from acorn.errors import AcornError
from acorn.eval import metrics

needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap (bwrap) is not installed or cannot "
                                 "create namespaces here; .ci/run installs it")


def _exact(n: int, c: int, k: int) -> Fraction:
    """pass@k = E[1 - C(n - c, k) / C(n, k)] in exact rational arithmetic (Chen et al. 2021, eq. 1)."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_pass_at_k_is_the_unbiased_estimator_s_closed_form():
    for n in range(1, 26):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert metrics.pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), abs=1e-12)
    # Known values: pass@1 is the fraction passed; none passing is 0, all passing 1.
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(200, 0, 100) == 0.0 and metrics.pass_at_k(200, 200, 1) == 1.0
    assert metrics.pass_at_k(5, 4, 2) == 1.0  # any 2 of 5 include a passing one
    # Where the binomials are ~1e58 the product form stays exact to rounding.
    for c in (1, 3, 50, 150):
        assert metrics.pass_at_k(200, c, 100) == pytest.approx(float(_exact(200, c, 100)), rel=1e-12)
    with pytest.raises(ValueError):
        metrics.pass_at_k(5, 1, 6)


@needs_bwrap
def test_every_reference_solution_passes_and_a_wrong_body_fails():
    from acorn.eval.tasks import data_dir, get_task, read_docs, render, resolve

    task = get_task("acorn_code")
    docs = read_docs(resolve(task, task.data, data_dir()))
    assert len(docs) >= 20 and len({d["entry_point"] for d in docs}) == len(docs)
    for doc in docs:
        good = sandbox.run_python(render(task.program, {**doc, "completion": doc["canonical_solution"]}))
        assert good.ok, (doc["task_id"], good.stderr)
        for wrong in ("    return None\n", "    pass\n"):
            bad = sandbox.run_python(render(task.program, {**doc, "completion": wrong}))
            assert not bad.ok and "AssertionError" in bad.stderr, doc["task_id"]


class StubEngine:
    """Stands in for the engine: returns, for each prompt, `n` completions of
    which the first `correct[entry_point]` are the reference body (with a
    stray next function the stop string must cut) and the rest wrong, one of
    them an endless loop; records what it was asked."""

    def __init__(self, tok, docs, correct):
        self.tokenizer, self.docs, self.correct = tok, {d["prompt"]: d for d in docs}, correct
        self.model = SimpleNamespace(config=SimpleNamespace(max_seq_len=4096))
        self.calls = []

    def generate(self, prompts, params=None, **overrides):
        self.calls.append((prompts, params, overrides))
        out = []
        for ids, p in zip(prompts, params):
            doc = self.docs[self.tokenizer.decode(ids)]
            for j in range(p.n):
                if j < self.correct[doc["entry_point"]]:
                    text = doc["canonical_solution"] + "\ndef helper():\n    return 1 / 0\n"
                elif j == p.n - 1:
                    text = "    while True:\n        pass\n"
                else:
                    text = "    return None\n"
                out.append(SimpleNamespace(token_ids=self.tokenizer.encode(text)))
        return out


@needs_bwrap
def test_a_pass_at_k_run_scores_known_correct_and_incorrect_programs(tok):
    from acorn.eval.harness import run_task
    from acorn.eval.tasks import get_task

    task = get_task("acorn_code")
    task = dataclasses.replace(task, repeats=5, metrics=["pass@1", "pass@3", "pass@5"],
                               execution={"seconds": 2, "workers": 2})
    from acorn.eval.tasks import data_dir, read_docs, resolve

    docs = read_docs(resolve(task, task.data, data_dir()))[:4]
    correct = dict(zip((d["entry_point"] for d in docs), (0, 1, 3, 5)))
    engine = StubEngine(tok, docs, correct)
    result, samples = run_task(engine, task, limit=4, progress=False)
    # The engine was asked once, for 5 samples per problem at the task's temperature,
    # sample j of problem i seeded seed + 5 i + j (generate adds the 5 q of the prompts before).
    (prompts, params, _), = engine.calls
    assert [tok.decode(p) for p in prompts] == [d["prompt"] for d in docs]
    assert [(p.n, p.temperature, p.top_p, p.seed + 5 * q) for q, p in enumerate(params)] == \
        [(5, 0.8, 0.95, 1234 + 5 * i) for i in range(4)]
    for s, doc in zip(samples, docs):
        c = correct[doc["entry_point"]]
        assert s["passed"] == [True] * c + [False] * (5 - c)
        assert not any("helper" in out for out in s["output"])  # cut at the stop string "\ndef"
        if c < 5:
            assert s["status"][-1] == "timed out"
        for k in (1, 3, 5):
            assert s["scores"][f"pass@{k}"] == pytest.approx(float(_exact(5, c, k)))
    for k in (1, 3, 5):
        assert result[f"pass@{k}"] == pytest.approx(sum(float(_exact(5, c, k)) for c in (0, 1, 3, 5)) / 4)
    assert result["pass@1"] == pytest.approx((0 + 1 + 3 + 5) / 20) and result["n"] == 4


def test_a_code_task_asks_for_pass_at_k_within_its_samples(tmp_path):
    from acorn.eval.tasks import load_task

    (tmp_path / "bad.yaml").write_text("task: t\noutput_type: code_exec\ndata: x.yaml\nrepeats: 5\n"
                                       "metrics: [pass@1, pass@10]\n")
    with pytest.raises(AcornError) as e:
        load_task(tmp_path / "bad.yaml")
    assert "bad.yaml:5: metrics: 'pass@10': code_exec reports pass@k with 1 <= k <= repeats (5)" in str(e.value)
    (tmp_path / "bad.yaml").write_text("task: t\noutput_type: code_exec\ndata: x.yaml\nexecution: {secs: 3}\n")
    with pytest.raises(AcornError, match="bad.yaml:4: execution: unknown key 'secs'"):
        load_task(tmp_path / "bad.yaml")


@needs_bwrap
def test_a_document_s_samples_do_not_depend_on_the_process_that_draws_them(checkpoint, monkeypatch):
    """Sample j of document i is drawn with seed + repeats * i + j: the
    second of two processes (documents 1 and 3) samples them exactly as one
    process does, through the real engine."""
    from acorn.eval import harness
    from acorn.eval.tasks import get_task
    from acorn.infer.engine import Engine

    task = get_task("acorn_code")
    task = dataclasses.replace(task, repeats=3, metrics=["pass@1"], execution={"seconds": 5},
                               generation_kwargs={**task.generation_kwargs, "max_gen_toks": 16})
    engine = Engine.from_pretrained(checkpoint[0])
    _, one = harness.run_task(engine, task, limit=4, progress=False)
    monkeypatch.setattr(harness, "gather", lambda samples, world: samples)  # this process's share only
    _, second = harness.run_task(engine, task, limit=4, progress=False, processes=(1, 2))
    assert [s["doc_id"] for s in second] == [1, 3]
    assert [s["output"] for s in second] == [one[1]["output"], one[3]["output"]]
    assert len(set(one[1]["output"])) == 3  # three different samples, not one repeated
