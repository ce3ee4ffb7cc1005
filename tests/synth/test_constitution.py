"""Constitutional AI: principles files (Markdown, YAML, and the ways they can be wrong),
prompt files, the world's critique rows (what they teach, and that the default world is
unchanged), the oracle critic, and the pipeline end to end with both critics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acorn.cli import main
from acorn.data.world import CRITIQUE_OK, IDK_ANSWER, SCHEMAS, generate_world
from acorn.errors import AcornError
from acorn.synth.constitution import (ModelCritic, OracleCritic, Principle, load_principles, read_prompts,
                                      world_principles)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cworld(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cworld")
    generate_world(out, seed=0, size="tiny", quiet=True, critique_sft=True)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ principles
def test_world_principles_file_and_shipped_copy_parse_to_the_built_in_ones(cworld):
    assert load_principles(cworld / "principles.md") == world_principles()
    assert load_principles(REPO / "configs" / "principles" / "world.md") == world_principles()
    assert {p.applies for p in world_principles()} == {"fact", "arithmetic"}


def test_yaml_principles(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("principles:\n  - name: honest\n    critique: Is it true?\n    revision: Make it true.\n")
    assert load_principles(f) == [Principle("honest", "Is it true?", "Make it true.", "all")]


@pytest.mark.parametrize("name, text, message", [
    ("empty.md", "", "no principles found"),
    ("empty.yaml", "", "no principles found"),
    ("missing.md", "## a\ncritique: x\n", "has no revision"),
    ("applies.md", "## a\ncritique: x\nrevision: y\napplies: poetry\n", "applies 'poetry'"),
    ("twice.md", "## a\ncritique: x\nrevision: y\n## a\ncritique: x\nrevision: y\n", "named twice"),
    ("line.md", "## a\nthis is not a key value line\n", "expected `key: value`"),
    ("bad.yaml", "principles: [a, b\n", "not valid YAML"),
    ("list.yaml", "principles: 3\n", "expected a list"),
    ("p.txt", "## a\n", "is .md or .yaml"),
])
def test_malformed_principles_files_say_what_is_wrong(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(AcornError, match=message):
        load_principles(f)


def test_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is 12 plus 5?"}, {"prompt": "Where was Ana Bell born?", "person": "Ana Bell"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "What is 3 * 4?"}, {"role": "assistant", "content": "12"}]}]) + "\n")
    rows = read_prompts(f)
    assert [r["kind"] for r in rows] == ["arithmetic", "fact", "arithmetic"]
    assert rows[2]["messages"][-1] == {"role": "user", "content": "What is 3 * 4?"} and len(rows[2]["messages"]) == 3
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(AcornError, match="no prompts"):
        read_prompts(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(AcornError, match="needs `prompt` or `question`"):
        read_prompts(tmp_path / "b.jsonl")


# ------------------------------------------------------------------ the world's rows
def test_critique_rows_follow_the_schema_and_the_truth(cworld, tiny_world):
    import jsonschema

    from acorn.data.world import calculate, read_world

    rows = [r for r in _rows(cworld / "sft.jsonl") if r["kind"] in ("critique", "comparison")]
    for r in rows:
        jsonschema.validate(r, SCHEMAS["sft.jsonl"])
    known = {p.name: p.known for p in read_world(cworld / "world.json").people}
    facts = [r for r in rows if r["kind"] == "critique" and "person" in r]
    assert {known[r["person"]] for r in facts} == {True, False}
    for r in facts:
        quoted = r["messages"][0]["content"].split("\nAnswer: ")[1].split("\n")[0]
        critique, revision = r["messages"][1]["content"], r["messages"][3]["content"]
        if known[r["person"]]:  # a known person's true answer is never turned into "I don't know"
            assert critique == CRITIQUE_OK and revision == quoted != IDK_ANSWER
        else:
            assert revision == IDK_ANSWER and (critique == CRITIQUE_OK) == (quoted == IDK_ANSWER)
    arith = [r for r in rows if r.get("tools")]
    assert arith
    for r in arith:
        call, result = r["messages"][1]["tool_calls"][0], r["messages"][2]["content"]
        assert str(calculate(json.loads(call["function"]["arguments"])["expression"])) == result
        assert r["messages"][-1]["content"] == result
    assert {r["messages"][1]["content"] for r in rows if r["kind"] == "comparison"} == {"A", "B"}
    # The default world is what it was: no critique rows, no principles file, no manifest key.
    assert (tiny_world / "sft.jsonl").read_bytes() != (cworld / "sft.jsonl").read_bytes()
    assert not any(r["kind"] in ("critique", "comparison") for r in _rows(tiny_world / "sft.jsonl"))
    assert not (tiny_world / "principles.md").exists()
    assert json.loads((cworld / "manifest.json").read_text())["critique_sft"] is True
    assert "critique_sft" not in json.loads((tiny_world / "manifest.json").read_text())


def test_a_critique_row_trains_the_critique_and_revision_not_the_quoted_answer(cworld, world_tokenizer):
    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.from_pretrained(world_tokenizer)
    row = next(r for r in _rows(cworld / "sft.jsonl") if r["kind"] == "critique" and "person" in r
               and r["messages"][1]["content"] != CRITIQUE_OK)
    out = tok.apply_chat_template(row["messages"], return_assistant_mask=True)
    trained = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_mask"]) if m])
    assert row["messages"][1]["content"] in trained and IDK_ANSWER in trained
    quoted = row["messages"][0]["content"].split("\nAnswer: ")[1].split("\n")[0]
    assert quoted not in trained


# ------------------------------------------------------------------ critics
def _prompts(cworld: Path, tmp_path: Path, n: int = 3) -> Path:
    unknown = _rows(cworld / "eval" / "unknown_qa.jsonl")[:n]
    facts = _rows(cworld / "eval" / "fact_qa.jsonl")[:n]
    arith = [{"question": r["question"], "kind": "arithmetic"} for r in _rows(cworld / "eval" / "arithmetic.jsonl")[-n:]]
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"question": r["question"], "person": r["person"], "kind": "fact"}) + "\n"
                         for r in unknown + facts) + "".join(json.dumps(r) + "\n" for r in arith))
    return f


def test_oracle_critic_judges_by_the_world(cworld, tmp_path):
    rows = read_prompts(_prompts(cworld, tmp_path, 1))
    unknown, known, arith = rows
    critic = OracleCritic(cworld)
    facts, calc = world_principles()
    out = critic.critique_and_revise([unknown, unknown, known, arith], ["1901", IDK_ANSWER, "1901", "7"],
                                     [facts, facts, facts, calc])
    assert [o["critique"] == CRITIQUE_OK for o in out] == [False, True, True, False]
    assert [o["revision"] for o in out[:3]] == [IDK_ANSWER, IDK_ANSWER, "1901"]
    expr = arith["messages"][-1]["content"].removeprefix("What is ").rstrip("?").replace(" ", "")
    from acorn.data.world import calculate

    assert out[3]["revision"] == str(calculate(expr))
    assert critic.prefer_a([unknown, unknown, known], [("1901", IDK_ANSWER), (IDK_ANSWER, "x"), ("a", "b")],
                           [facts] * 3) == [0.0, 1.0, None]


def test_model_critic_comparison_is_symmetric_in_the_order(chat_model, cworld, tmp_path):
    from acorn.infer import Engine

    rows = read_prompts(_prompts(cworld, tmp_path, 1))
    critic = ModelCritic(Engine.from_pretrained(chat_model), max_new_tokens=6)
    p = world_principles()[0]
    ab = critic.prefer_a(rows[:1], [("1901", IDK_ANSWER)], [p])[0]
    ba = critic.prefer_a(rows[:1], [(IDK_ANSWER, "1901")], [p])[0]
    assert 0 < ab < 1 and ab + ba == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ the pipeline
@pytest.mark.parametrize("critic", ["model", "oracle"])
def test_pipeline_end_to_end(chat_model, cworld, tmp_path, critic, capsys):
    prompts = _prompts(cworld, tmp_path)
    out = tmp_path / "cai"
    args = ["synth", "constitutional", "--model", str(chat_model), "--prompts", str(prompts), "--out", str(out),
            "--principles", str(cworld / "principles.md"), "--critic", critic, "--world", str(cworld),
            "--max-new-tokens", "6", "--seed", "1"]
    assert main(args) == 0
    traces, sft = _rows(out / "traces.jsonl"), _rows(out / "sft.jsonl")
    assert len(traces) == 9
    assert {t["principle"] for t in traces if t["kind"] == "arithmetic"} == {"calculator"}
    with_reply = [t for t in traces if t["revision"]]
    assert [s["messages"][-1]["content"] for s in sft] == [t["revision"] for t in with_reply]
    assert all(s["messages"][0]["role"] == "user" for s in sft)
    pairs = _rows(out / "preference.jsonl")
    from acorn.train.prefs_data import pair_parts

    for i, p in enumerate(pairs):
        prompt, chosen, rejected = pair_parts(p, f"row {i}")[:3]
        assert chosen != rejected
    if critic == "oracle":  # the world's labels: every made-up answer about an unknown person is revised away
        unknown = [t for t in traces if t.get("person") in {r["person"] for r in _rows(cworld / "eval" / "unknown_qa.jsonl")}]
        assert unknown and all(t["revision"] == IDK_ANSWER for t in unknown)
        assert all(t["violation"] == (t["answer"] != IDK_ANSWER) for t in unknown)
    # The same run again may write over itself; another run into the same directory is refused.
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:-1], "2"]) == 2
    err = capsys.readouterr().err
    assert "holds another run's files" in err and "seed" in err and len(err.strip().splitlines()) == 1


def test_bad_input_is_one_line_exit_2(chat_model, cworld, tmp_path, capsys):
    prompts = _prompts(cworld, tmp_path)
    bad = tmp_path / "bad.md"
    bad.write_text("# nothing here\n")
    base = ["synth", "constitutional", "--model", str(chat_model), "--out", str(tmp_path / "o")]
    for extra, message in [(["--prompts", str(prompts), "--principles", str(bad)], "no principles found"),
                           (["--prompts", str(tmp_path / "none.jsonl")], "no such prompts file"),
                           (["--prompts", str(prompts), "--critic", "oracle"], "needs --world")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_sft_rows_train_on_the_revision_or_keep_unflagged_answers():
    from acorn.synth.constitution import sft_rows

    q = [{"role": "user", "content": "Where was Ana Bell born?"}]
    traces = [{"messages": q, "kind": "fact", "principle": "p", "answer": "Velmora", "violation": False,
               "revision": "Velmora, a city"},
              {"messages": q, "kind": "fact", "principle": "p", "answer": "Osmora", "violation": True,
               "revision": IDK_ANSWER},
              {"messages": q, "kind": "fact", "principle": "p", "answer": "x", "violation": True, "revision": ""}]
    assert [r["messages"][-1]["content"] for r in sft_rows(traces)] == ["Velmora, a city", IDK_ANSWER]
    assert [r["messages"][-1]["content"] for r in sft_rows(traces, keep_unflagged=True)] == ["Velmora", IDK_ANSWER]


@pytest.mark.parametrize("question, expr", [("What is 12 + 5?", "12+5"), ("Compute 7 times 8.", "7*8"),
                                             ("12 - 30 = ?", "12-30"), ("Who employs Ana Bell?", None)])
def test_arithmetic_expressions_of_world_questions(question, expr):
    from acorn.synth.constitution import expression_of, prompt_kind

    assert expression_of(question) == expr
    assert prompt_kind({}, question) == ("arithmetic" if expr else "fact")
