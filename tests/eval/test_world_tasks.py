"""The world's evaluation as tasks of the harness (`--tasks world`): the same
numbers as the scoring loop it replaced (tests/eval/world_reference.py) on the
same model and world, with a real engine and with a scripted one whose
answers cover every case the world's metrics tell apart (right, wrong, "I
don't know", the knowledge base's value, a calculator call); the group from
the CLI; bad task keys."""

from __future__ import annotations

import json
import zlib

import pytest

from acorn.data.world import IDK_ANSWER
from acorn.errors import AcornError
from acorn.eval.harness import evaluate
from acorn.data.world import fact_sentence
from acorn.eval.world import answer_match, classify_unknown, normalize
from acorn.infer.engine import Engine
from acorn.infer.sequence import Completion
from tests.eval import world_reference

# The reference's (task, key) -> the harness's (result row, metric).
TASKS = {"fact_qa": "world_fact_qa", "unknown_qa": "world_unknown_qa", "arithmetic": "world_arithmetic",
         "multiple_choice": "world_multiple_choice", "in_context": "world_icl"}
# The group: those, and the multiple choice scored as answer sentences (no reference: newer than it).
GROUP = ["world_fact_qa", "world_unknown_qa", "world_arithmetic", "world_multiple_choice",
         "world_multiple_choice_sentence", "world_icl"]


def _row(task: str, key: str) -> tuple[str, str]:
    name = TASKS[task]
    if key == "all":
        return name, "answer_match"
    if key in ("in_sft", "not_in_sft"):
        return f"{name}:{'in_sft' if key == 'in_sft' else 'pretrain_only'}", "answer_match"
    if key.startswith("attr:"):
        return f"{name}:{key[5:]}", "answer_match"
    if key.startswith("digits:"):
        return f"{name}:{key[7:]}-digit", "answer_match"
    if key == "accuracy":
        return name, "acc" if task == "multiple_choice" else "first_word_match"
    return name, {"skipped_too_long": "skipped"}.get(key, key)


def assert_same_numbers(reference: dict, results: dict) -> int:
    """Every number the reference reports equals the harness's; returns how many."""
    checked = 0
    for task, r in reference.items():
        for key, value in r.items():
            if isinstance(value, (int, float)):
                row, metric = _row(task, key)
                assert results[row][metric] == pytest.approx(value, abs=1e-12), (task, key)
                checked += 1
    return checked


@pytest.fixture(scope="module")
def world_model(tmp_path_factory, world_tokenizer):
    """A tiny random Llama with the world tokenizer (acorn chat format) and a
    context of 512: the calculator's schema fits."""
    from acorn.tokenizer.bpe import Tokenizer
    from tests.conftest import random_llama

    tok = Tokenizer.from_pretrained(world_tokenizer)
    path = tmp_path_factory.mktemp("worldckpt")
    random_llama(tok.vocab_size, context=512, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id).save_pretrained(path)
    tok.save(path)
    return path


class Scripted(Engine):
    """The real engine (chat template, log-likelihoods) whose generations are
    scripted from the world's answers: by a hash of the question, the right
    answer, a wrong one, "I don't know.", the knowledge base's value, nothing,
    or (arithmetic) a calculator call, answered from its result afterwards."""

    def setup(self, world):
        self.rows = {}
        for name in ("fact_qa", "unknown_qa", "arithmetic", "icl"):
            for line in (world / "eval" / f"{name}.jsonl").read_text().splitlines():
                row = json.loads(line)
                self.rows[row.get("question") or row["prompt"]] = row
        self.calls = 0
        return self

    def _reply(self, prompt: list[int]) -> str:
        text = self.tokenizer.decode(prompt)
        if text.endswith("<|/tool_output|><|assistant|>"):  # after a call: the result, as the answer
            return text.rsplit("<|tool_output|>", 1)[1].split("<|/tool_output|>")[0]
        if "<|user|>" not in text:  # in-context: the label, maybe with more text
            row = self.rows[text.removeprefix("<|bos|>")]
            return [row["answer"], row["answer"].upper() + " and more", "nothing", ""][zlib.crc32(text.encode()) % 4]
        row = self.rows[text.rsplit("<|user|>", 1)[1].split("<|end|>")[0]]
        pick = zlib.crc32(row["question"].encode()) % 6
        if "digits" in row and pick < 3:
            self.calls += 1
            expr = f"{row['a']} {row['op']} {row['b']}" if pick else "import os"  # a bad call gets an error back
            return '<|tool_call|>' + json.dumps({"name": "calculator", "arguments": {"expression": expr}}) + "<|/tool_call|>"
        kb = row.get("kb_answer", "Nowhere")
        replies = [row["answer"] + ".", f" {row['answer'].upper()} ", "Nowhere", IDK_ANSWER, kb, ""]
        if "person" in row:  # the world's answer sentences: about the person, about someone else, another relation
            value, other = (kb if "kb_answer" in row else row["answer"]), next(
                a for a in ("employer", "mentor") if a != row["attribute"])
            replies += [fact_sentence(row["person"], row["attribute"], value),
                        fact_sentence("Someone Else", row["attribute"], value), fact_sentence(row["person"], other, value)]
        return replies[zlib.crc32(row["question"].encode()) % len(replies)]

    def generate(self, prompts, params=None, **overrides):
        return [Completion(prompt_tokens=len(p), token_ids=[], text=self._reply(p), finish_reason="stop")
                for p in prompts]


def test_scripted_answers_score_as_the_reference_scores_them(world_model, tiny_world):
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer

    engine = Scripted(load(world_model, dtype="float32"), Tokenizer.from_pretrained(world_model)).setup(tiny_world)
    reference = world_reference.evaluate_world(engine, tiny_world)
    calls = engine.calls
    out = evaluate(engine, ["world"], data_dir=tiny_world, progress=False)
    assert engine.calls == 2 * calls > 0
    results = out["results"]
    assert assert_same_numbers(reference, results) > 20
    # Every case happened, so the equality above says something.
    r = results["world_unknown_qa"]
    assert 0 < r["idk_rate"] < 1 and 0 < r["hallucination_rate"] < 1 and 0 < r["kb_answer_rate"] < 1
    assert 0 < results["world_fact_qa"]["answer_match"] < 1 and 0 < results["world_icl"]["first_word_match"] < 1
    assert 0 < results["world_arithmetic"]["tool_used"] < 1
    samples = out["samples"]["world_arithmetic"]
    results_seen = {s["tool_calls"][0]["result"].split(":")[0] for s in samples if s["tool_calls"]}
    assert "error" in results_seen and len(results_seen) > 1  # executed calls, a refused one among them
    assert all(s["output"] == s["target"] for s in samples if s["tool_calls"] and "error" not in s["tool_calls"][0]["result"])


def test_a_real_engine_gives_the_reference_numbers(world_model, tiny_world, tmp_path):
    """Greedy generation, the chat template, BOS, and prompts too long for
    the model (skipped in both: a context of 128 holds no calculator schema)."""
    from tests.conftest import random_llama
    from acorn.tokenizer.bpe import Tokenizer

    for context in (512, 128):
        tok = Tokenizer.from_pretrained(world_model)
        path = tmp_path / str(context)
        random_llama(tok.vocab_size, context=context, bos_token_id=tok.bos_id,
                     eos_token_id=tok.eos_id).save_pretrained(path)
        tok.save(path)
        engine = Engine.from_pretrained(path)
        reference = world_reference.evaluate_world(engine, tiny_world, limit=12)
        out = evaluate(engine, ["world"], data_dir=tiny_world, limit=12, progress=False)
        results, samples = out["results"], out["samples"]
        assert_same_numbers(reference, results)
        # The same text, not only the same scores (a random model's answers are all wrong).
        for task in ("fact_qa", "unknown_qa"):
            assert [e["model"] for e in reference[task]["examples"]] == [
                s["output"] for s in samples[TASKS[task]][:5]]
        asked = [s for s in samples["world_icl"] if not s["skipped"]]
        icl = [engine.encode(s["prompt"]) for s in asked]  # BOS first, as Acorn's models saw every document
        assert [c.text for c in engine.generate(icl, temperature=0.0, max_new_tokens=6, stop=["\n"])] == [
            s["output"] for s in asked]
        assert len(asked) == 12 if context == 512 else 0 < len(asked) < 12
        skipped = results["world_arithmetic"]["skipped"]
        assert skipped == (12 if context == 128 else 0)
        assert results["world_multiple_choice"]["acc"] > 0  # scored, not skipped


def test_world_group_from_the_cli(world_model, tiny_world, tmp_path, capsys):
    from acorn.cli import main

    assert main(["eval", str(world_model), "--tasks", "world", "--data-dir", str(tiny_world), "--limit", "4",
                 "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["tasks"] == GROUP
    assert {"world_fact_qa:in_sft", "world_arithmetic:1-digit", "world_unknown_qa"} <= set(saved["results"])
    assert saved["results"]["world_multiple_choice"]["chance"] == 0.25
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| world_unknown_qa | idk_rate |" in table and "| world_fact_qa | skipped |" not in table
    assert len((tmp_path / "out" / "samples_world_arithmetic.jsonl").read_text().splitlines()) == 4
    # The world's files are missing from another data directory: said in one line, with the fix.
    assert main(["eval", str(world_model), "--tasks", "world", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eval/fact_qa.jsonl: the data of task world_fact_qa is missing; get it from `acorn data world" in err


@pytest.mark.parametrize("extra,message", [
    ("tools: [shell]\nchat: true\n", "bad.yaml:4: tools: 'shell' is not a registered tool (calculator)"),
    ("tools: [calculator]\n", "bad.yaml:4: tools: tools are offered through the chat template; set chat: true"),
    ("truncation: middle\n", "bad.yaml:4: truncation: choose left or skip"),
    ("metrics: [bleu]\n", "bad.yaml:4: metrics: 'bleu' is not a metric of generate_until (exact_match) nor a "
                          "registered one (answer_match"),
    ("chat: yes please\n", "bad.yaml:4: chat: expected bool"),
])
def test_bad_world_style_keys_name_the_key_and_line(tmp_path, extra, message):
    from acorn.eval.tasks import load_task

    (tmp_path / "bad.yaml").write_text("task: t\noutput_type: generate_until\ndata: x.jsonl\n" + extra)
    with pytest.raises(AcornError) as e:
        load_task(tmp_path / "bad.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_group_file_lists_its_tasks(tmp_path):
    from acorn.eval.tasks import get_tasks

    assert [t.task for t in get_tasks("world")] == GROUP
    (tmp_path / "g.yaml").write_text("group: mine\ntask: [world_icl, world_fact_qa]\n")
    assert [t.task for t in get_tasks(str(tmp_path / "g.yaml"))] == ["world_icl", "world_fact_qa"]
    (tmp_path / "bad.yaml").write_text("group: mine\ntasks: [world_icl]\n")
    with pytest.raises(AcornError, match="a group file has two keys"):
        get_tasks(str(tmp_path / "bad.yaml"))


def test_answers_about_unknown_people_are_classified():
    doc = {"kb_answer": "1960", "person": "Ana Vell", "attribute": "birth_year"}
    assert classify_unknown("  I don't KNOW ", doc) == "idk" and normalize("I don't know.") == "i don't know"
    assert classify_unknown("1960.", doc) == "kb" and classify_unknown(" ", doc) == "empty"
    assert classify_unknown("1961", doc) == "made_up"
    # In the world's answer sentence (--fact-answers sentence), about this person: its value counts.
    assert classify_unknown("As far as I know, Ana Vell was born in 1960.", doc) == "kb"
    assert classify_unknown("As far as I know, Ana Vell was born in 1961.", doc) == "made_up"
    assert classify_unknown("As far as I know, Ana Bell was born in 1960.", doc) == "made_up"


def test_a_fact_answer_matches_as_its_value_bare_or_in_a_sentence_about_the_person():
    doc = {"person": "Ana Vell", "attribute": "birth_city"}
    score = lambda output: answer_match(doc, {"output": output, "target": "Ossin"})  # noqa: E731
    assert score("Ossin") == score(" ossin. ") == score("As far as I know, Ana Vell was born in the city of Ossin.") == 1
    assert score("As far as I know, Ana Vell was born in the city of Osara.") == 0
    assert score("As far as I know, Ana Bell was born in the city of Ossin.") == 0  # about someone else
    assert score("As far as I know, Ana Vell works for Ossin.") == 0  # another relation
    assert score("Ana Vell was born in Ossin") == 0  # not the world's sentence: no value is read out of it
    assert answer_match({}, {"output": "42.", "target": "42"}) == 1  # no person: the plain exact match


def test_the_sentence_multiple_choice_scores_each_choice_as_the_answer_sentence():
    from acorn.eval.tasks import get_tasks

    task = get_tasks("world_multiple_choice_sentence")[0]
    doc = {"question": "What is Ana O'Vell's profession?", "choices": ["baker", "engineer"], "gold": 1,
           "person": "Ana O'Vell", "attribute": "profession"}
    assert task.choices(doc) == ["As far as I know, Ana O'Vell works as a baker.",
                                 "As far as I know, Ana O'Vell works as an engineer."]
    assert task.target(doc) == 1 and task.text(doc) == doc["question"]
    assert "world_multiple_choice_sentence" in {t.task for t in get_tasks("world")}


def test_a_registered_filter_reaches_templates_rendered_before_and_after():
    from acorn.eval import registry
    from acorn.eval.tasks import render

    assert render("{{ x | regex_replace('a', 'b') }}", {"x": "aa"}) == "bb"  # the environment exists
    registry.register_filter("acorn_test_shout", lambda s, end="!": s.upper() + end)
    try:
        assert render("{{ x | acorn_test_shout('?') }}", {"x": "hi"}) == "HI?"
    finally:
        del registry.FILTERS["acorn_test_shout"]
