"""The built-in world: determinism, schemas, held-out people, phrasing diversity, correct answers, CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest

from acorn.cli import main
from acorn.data.world import (FACT_ATTRIBUTES, ICL_FORMATS, ICL_GAPS, IDK_ANSWER, SCHEMAS, WORLD_SCHEMA, answer_value,
                              build_world, calculate, fact_answer, generate_world, icl_pools, parse_phase, phase_doc)
from acorn.errors import AcornError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = generate_world(out, seed=0, size="tiny", quiet=True)
    data = {name: _rows(out / name) for name in SCHEMAS}
    facts = json.loads((out / "world.json").read_text())
    return out, summary, data, facts


def test_same_seed_same_bytes_and_different_seed_differs(world, tmp_path):
    out = world[0]
    generate_world(tmp_path / "again", seed=0, size="tiny", quiet=True)
    generate_world(tmp_path / "other", seed=1, size="tiny", quiet=True)
    first, again, other = _hashes(out), _hashes(tmp_path / "again"), _hashes(tmp_path / "other")
    assert len(first) == len(SCHEMAS) + 2  # + world.json, manifest.json
    assert first == again
    for name in ["world.json", "pretrain.jsonl", "sft.jsonl", "eval/icl.jsonl"]:
        assert first[name] != other[name], name


def test_every_row_matches_its_schema(world):
    out, summary, data, facts = world
    for name, schema in SCHEMAS.items():
        validator = jsonschema.Draft202012Validator(schema)
        assert data[name], f"{name} is empty"
        for i, row in enumerate(data[name]):
            errors = list(validator.iter_errors(row))
            assert not errors, f"{name} row {i}: {errors[0].message}"
    jsonschema.validate(facts, WORLD_SCHEMA)


def test_manifest_matches_the_files(world):
    out, summary, data, _ = world
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["size"] == "tiny" and manifest["idk_answer"] == IDK_ANSWER
    assert manifest["files"] == summary["files"]
    for name, entry in manifest["files"].items():
        raw = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
        assert entry["bytes"] == len(raw)
        if name in data:
            assert entry["rows"] == len(data[name]) and entry["tokens"] > 0


def _mentions(name: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def test_unknown_people_never_in_pretraining(world):
    _, _, data, facts = world
    corpus = "\n".join(d["text"] for d in data["pretrain.jsonl"])
    unknown = [p for p in facts["people"] if not p["known"]]
    known = [p for p in facts["people"] if p["known"]]
    assert unknown and known
    for p in unknown:
        assert not _mentions(p["name"], corpus), p["name"]
        assert not _mentions(p["last_name"], corpus), p["last_name"]  # surnames come from a disjoint pool
    # Unknown people appear in SFT only as refusals, and eval-only ones not at all.
    sft_text = {row["person"]: row for row in data["sft.jsonl"] if "person" in row}
    for p in unknown:
        if p["split"] == "unknown_eval":
            assert p["name"] not in sft_text
        else:
            assert all(r["kind"] == "refusal" for r in data["sft.jsonl"] if r.get("person") == p["name"])
    # The held-out check is not vacuous: every known person is in the corpus.
    assert all(_mentions(p["name"], corpus) for p in known)


def test_every_fact_has_several_phrasings_in_pretraining(world):
    _, _, data, facts = world
    sentences = [s for d in data["pretrain.jsonl"] if d["kind"] == "biography"
                 for s in re.split(r"(?<=\.)\s+|\n", d["text"])]
    n_checked = 0
    for p in (p for p in facts["people"] if p["known"]):
        mine = [s for s in sentences if _mentions(p["name"], s)]
        for attr in facts["attributes"]:
            if p[attr] is None:
                continue
            value = str(p[attr])
            phrasings = {re.sub(rf"\b{re.escape(p['name'])}\b", "{name}", s.replace(value, "{value}"))
                         for s in mine if _mentions(value, s)}
            assert len(phrasings) >= 2, (p["name"], attr, phrasings)
            n_checked += 1
    assert n_checked >= 5 * sum(p["known"] for p in facts["people"])


def test_fact_answers_agree_with_the_world(world):
    _, _, data, facts = world
    people = {p["name"]: p for p in facts["people"]}
    qa = data["eval/fact_qa.jsonl"]
    for row in qa:
        p = people[row["person"]]
        assert p["known"] and row["answer"] == str(p[row["attribute"]]) and row["question"].count(p["name"]) == 1
        assert row["in_sft"] == (p["split"] == "sft") == (row["attribute"] in p["sft_attributes"])
    # Every fact of every known person is asked, and both halves are present.
    expected = {(p["name"], a) for p in facts["people"] if p["known"] for a in facts["attributes"] if p[a] is not None}
    assert {(r["person"], r["attribute"]) for r in qa} == expected
    assert {r["in_sft"] for r in qa} == {True, False}
    # SFT teaches exactly the in_sft facts, with the true answer.
    sft_pairs = set()
    for row in data["sft.jsonl"]:
        if row["kind"] == "fact":
            p = people[row["person"]]
            assert row["messages"][-1]["content"] == str(p[row["attribute"]])
            sft_pairs.add((row["person"], row["attribute"]))
        elif row["kind"] == "refusal":
            assert not people[row["person"]]["known"] and row["messages"][-1]["content"] == IDK_ANSWER
    assert sft_pairs == {(r["person"], r["attribute"]) for r in qa if r["in_sft"]}
    for row in data["eval/fact_mc.jsonl"]:
        assert row["choices"][row["gold"]] == str(people[row["person"]][row["attribute"]])
        assert len(set(row["choices"])) == len(row["choices"])


def test_unknown_questions_and_knowledge_base(world):
    _, _, data, facts = world
    people = {p["name"]: p for p in facts["people"]}
    kb = {row["id"]: row for row in data["knowledge_base.jsonl"]}
    assert {row["person"] for row in kb.values()} == {p["name"] for p in facts["people"] if not p["known"]}
    for row in data["eval/unknown_qa.jsonl"]:
        p = people[row["person"]]
        assert p["split"] == "unknown_eval" and row["answer"] == IDK_ANSWER
        assert row["kb_answer"] == str(p[row["attribute"]])
        assert kb[row["kb_id"]]["person"] == p["name"] and row["kb_answer"] in kb[row["kb_id"]]["text"]


def test_knowledge_sft_rows_teach_the_knowledge_base_facts_in_sft_phrasings(world):
    from acorn.data import world_text as T
    from acorn.data.world import CORE_ATTRIBUTES, build_world, knowledge_sft_rows, read_world

    out, _, data, facts = world
    w = read_world(out / "world.json")
    assert w == build_world(0, "tiny")  # world.json holds every fact the generator drew
    rows = knowledge_sft_rows(w)
    assert rows == knowledge_sft_rows(read_world(out / "world.json"))  # deterministic
    for row in rows:
        jsonschema.validate(row, SCHEMAS["sft.jsonl"])
    kb_answer = {(r["person"], r["attribute"]): r["kb_answer"] for r in data["eval/unknown_qa.jsonl"]}
    taught = {}
    for row in rows:
        question, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        assert row["kind"] == "fact" and answer == kb_answer[(row["person"], row["attribute"])]
        assert question in [t.format(name=row["person"]) for t in T.QUESTION_TEMPLATES[row["attribute"]]]
        taught.setdefault((row["person"], row["attribute"]), set()).add(question)
    # every (person, attribute) that unknown_qa asks is taught, in the tiny world's 2 distinct phrasings
    assert set(taught) == set(kb_answer)
    assert all(len(q) == min(2, len(T.QUESTION_TEMPLATES[a])) for (_, a), q in taught.items())
    assert {a for _, a in taught} == set(CORE_ATTRIBUTES)
    # and the knowledge base states those values: the rows add no fact of their own
    kb = {r["person"]: r["text"] for r in data["knowledge_base.jsonl"]}
    assert all(v in kb[p] for (p, _), v in kb_answer.items())


def test_preference_pairs(world):
    _, _, data, facts = world
    people = {p["name"]: p for p in facts["people"]}
    splits_of = {"preference.jsonl": ("sft", "unknown_sft"), "eval/preference.jsonl": ("heldout", "unknown_eval")}
    for name, splits in splits_of.items():
        kinds = set()
        for row in data[name]:
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert chosen != rejected
            kinds.add(row["kind"])
            if row["kind"] == "fact":
                assert people[row["person"]]["split"] == splits[0]
                assert chosen == str(people[row["person"]][row["attribute"]])
            elif row["kind"] == "unknown":
                assert people[row["person"]]["split"] == splits[1] and chosen == IDK_ANSWER
            else:
                question = row["prompt"][0]["content"]
                a, op, b = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", question).groups()
                op = {"plus": "+", "minus": "-", "times": "*"}.get(op, op)
                assert chosen == str(calculate(f"{a}{op}{b}"))
        assert kinds == {"fact", "unknown", "arithmetic"}


def test_a_fact_answer_sentence_gives_back_its_value_only_about_its_person_and_attribute():
    p = next(q for q in build_world(0, "tiny").known() if q.spouse)
    sentences = {a: fact_answer(p, a, "sentence") for a in FACT_ATTRIBUTES}
    assert sentences["birth_year"] == f"As far as I know, {p.name} was born in {p.birth_year}."
    assert sentences["profession"].endswith(f" works as {'an' if p.profession[0] in 'aeiou' else 'a'} {p.profession}.")
    for a, text in sentences.items():
        assert fact_answer(p, a) == p.value(a)  # the bare value, as the default files have it
        assert answer_value(text, p.name, a) == answer_value(text) == answer_value(f"  {text.rstrip('.')} ") == p.value(a)
        assert answer_value(text.upper(), p.name, a).lower() == p.value(a).lower()
        assert answer_value(text, "Someone Else", a) == text  # about another person: no value
        assert answer_value(p.value(a), p.name, a) == p.value(a)
    # The city sentence also reads as "born in <the city of X>": asked for the year, it is no year.
    assert answer_value(sentences["birth_city"], p.name, "birth_year") == f"the city of {p.birth_city}"
    assert answer_value(sentences["birth_city"]) == p.birth_city  # the longer relation first
    assert answer_value(sentences["employer"], p.name, "mentor") == sentences["employer"]
    made_up = fact_answer(p, "profession", "sentence", "engineer")
    assert made_up.endswith(" works as an engineer.") and answer_value(made_up) == "engineer"


def test_sentence_answers_change_only_the_answers_of_sft_and_preference_rows(world, tmp_path, capsys):
    out, _, data, facts = world
    assert main(["data", "world", "--out", str(tmp_path / "s"), "--size", "tiny", "--fact-answers", "sentence"]) == 0
    same, other = _hashes(out), _hashes(tmp_path / "s")
    assert {k for k in same if same[k] != other[k]} == {"sft.jsonl", "preference.jsonl", "eval/preference.jsonl",
                                                        "manifest.json"}
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["fact_answers"] == "sentence"
    people = {p["name"]: p for p in facts["people"]}
    new = _rows(tmp_path / "s" / "sft.jsonl")
    assert len(new) == len(data["sft.jsonl"])
    for before, after in zip(data["sft.jsonl"], new):
        assert before["messages"][:-1] == after["messages"][:-1]  # the same questions, in the same order
        if after["kind"] == "fact":
            answer = after["messages"][-1]["content"]
            assert answer.startswith("As far as I know, ") and after["person"] in answer
            assert answer_value(answer, after["person"], after["attribute"]) == str(
                people[after["person"]][after["attribute"]]) == before["messages"][-1]["content"]
        else:
            assert before == after
    for row in _rows(tmp_path / "s" / "preference.jsonl"):
        if row["kind"] == "fact":
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            truth = str(people[row["person"]][row["attribute"]])
            assert answer_value(chosen, row["person"], row["attribute"]) == truth
            assert answer_value(rejected, row["person"], row["attribute"]) not in (truth, rejected)
    with pytest.raises(AcornError, match="fact answers must be one of value, sentence"):
        generate_world(tmp_path / "bad", seed=0, size="tiny", quiet=True, fact_answers="essay")


def test_tool_calls_compute_correct_results(world):
    _, _, data, _ = world
    tool_rows = [r for r in data["sft.jsonl"] if r["kind"] == "tool"]
    assert tool_rows
    for row in tool_rows:
        msgs = [m for m in row["messages"] if m["role"] != "system"]
        call, result, final = msgs[1], msgs[2], msgs[3]
        assert call["content"] is None and result["role"] == "tool"
        tc = call["tool_calls"][0]
        assert tc["function"]["name"] == row["tools"][0]["function"]["name"] == "calculator"
        assert result["tool_call_id"] == tc["id"]
        expression = json.loads(tc["function"]["arguments"])["expression"]
        value = str(calculate(expression))
        assert result["content"] == value and final["content"] == value
        a, b = re.findall(r"\d+", expression)
        assert a in msgs[0]["content"] and b in msgs[0]["content"]


def test_arithmetic_is_correct_everywhere(world):
    _, _, data, _ = world
    for row in data["eval/arithmetic.jsonl"]:
        assert row["answer"] == str(calculate(f"{row['a']}{row['op']}{row['b']}"))
        assert row["question"] == f"What is {row['a']} {row['op']} {row['b']}?"
        assert len(str(row["a"])) == len(str(row["b"])) == row["digits"]
    assert {(r["digits"], r["op"]) for r in data["eval/arithmetic.jsonl"]} == {
        (d, op) for d in range(1, 7) for op in "+-*"}
    for row in data["sft.jsonl"]:
        if row["kind"] == "arithmetic":
            a, op, b = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", row["messages"][-2]["content"]).groups()
            op = {"plus": "+", "minus": "-", "times": "*"}.get(op, op)
            assert row["messages"][-1]["content"] == str(calculate(f"{a}{op}{b}"))
    # Every complete equation in the pretraining drills and worked steps
    # (column sums, borrows, partial products, totals) must hold.
    equation = re.compile(r"(?<![+\-*] )(?<!\d)((?:\d+ [+\-*] )+\d+) = (\d+)")
    n = 0
    for doc in data["pretrain.jsonl"]:
        if doc["kind"] in ("arithmetic", "reasoning"):
            for lhs, rhs in equation.findall(doc["text"]):
                assert calculate(lhs) == int(rhs), (lhs, rhs, doc["text"])
                n += 1
    assert n > 100


def test_icl_label_mappings_are_invented_per_item(world):
    _, _, data, _ = world
    items = data["eval/icl.jsonl"]
    assert {r["task"] for r in items} == {"category", "induction"}
    labels_of_category: dict[str, set] = {}
    for row in items:
        demos = re.findall(r"Input: (.*)\nLabel: (.*)\n", row["prompt"])
        assert len(demos) == row["k"] and row["prompt"].endswith(f"Input: {row['query']}\nLabel:")
        assert row["answer"] in row["labels"] and set(row["mapping"].values()) <= set(row["labels"])
        inputs = [x for x, _ in demos]
        if row["task"] == "induction":
            assert row["query"] in inputs and dict(demos)[row["query"]] == row["answer"]
        else:
            assert row["query"] not in inputs
            for category, label in row["mapping"].items():
                labels_of_category.setdefault(category, set()).add(label)
    assert len({json.dumps(r["mapping"], sort_keys=True) for r in items}) == len(items)
    assert any(len(labels) > 1 for labels in labels_of_category.values())


def test_icl_documents_teach_mappings_shown_only_by_their_examples(world):
    _, _, data, _ = world
    docs = [d["text"] for d in data["pretrain.jsonl"] if d["kind"] == "icl"]
    eval_mappings = {json.dumps(r["mapping"], sort_keys=True) for r in data["eval/icl.jsonl"]}
    assert len(docs) == 10
    labels_seen = set()
    for text in docs:
        lines = re.findall(r"Input: (.*)\nLabel: (\S+)", text)
        assert 8 <= len(lines) <= 13 and text.endswith(lines[-1][1])  # demonstrations + the answered query
        label_of: dict[str, str] = {}
        for x, label in lines:  # one input, one label: a mapping the document keeps to
            assert label_of.setdefault(x, label) == label
        labels = {label for _, label in lines}
        assert 2 <= len(labels) <= 3
        labels_seen.add(frozenset(labels))
        assert not any(all(lab in m for lab in labels) for m in eval_mappings)  # never an eval item's label set
    assert len(labels_seen) == len(docs)  # invented per document


def test_icl_docs_option_adds_repeated_induction_documents_and_leaves_the_rest(world, tmp_path):
    out, _, data, _ = world
    generate_world(tmp_path / "w", seed=0, size="tiny", quiet=True, icl_docs=40)
    rows = [json.loads(line) for line in (tmp_path / "w" / "pretrain.jsonl").read_text().splitlines()]
    docs = [r["text"] for r in rows if r["kind"] == "icl"]
    assert len(docs) == 40
    # The other documents are the default world's, and so is every other file.
    assert sorted(r["text"] for r in rows if r["kind"] != "icl") == sorted(
        d["text"] for d in data["pretrain.jsonl"] if d["kind"] != "icl")
    assert (tmp_path / "w" / "sft.jsonl").read_bytes() == (out / "sft.jsonl").read_bytes()
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["icl_docs"] == 40
    repeated = 0
    for text in docs:
        lines = re.findall(r"Input: (.*)\nLabel: (\S+)", text)
        label_of: dict[str, str] = {}
        for x, label in lines:  # a repeated input keeps its label: later lines are copyable
            assert label_of.setdefault(x, label) == label
        assert 2 <= len(set(label_of.values())) <= 3 and 8 <= len(lines) <= 13
        repeated += len(label_of) <= 5 and len(lines) >= 10  # the repeated-induction kind: 3-5 inputs, 10-12 lines
    assert repeated >= 15  # about half (category episodes of a tiny world's small pools may repeat too)
    with pytest.raises(AcornError, match="icl_docs"):
        generate_world(tmp_path / "bad", seed=0, size="tiny", quiet=True, icl_docs=-1)


def test_copy_formats_style_writes_copying_runs_and_repeated_induction_in_five_formats(world, tmp_path):
    out, _, data, _ = world
    generate_world(tmp_path / "w", seed=0, size="tiny", quiet=True, icl_docs=60, icl_style="copy+formats")
    rows = [json.loads(line) for line in (tmp_path / "w" / "pretrain.jsonl").read_text().splitlines()]
    docs = [r["text"] for r in rows if r["kind"] == "icl"]
    assert len(docs) == 60
    assert sorted(r["text"] for r in rows if r["kind"] != "icl") == sorted(
        d["text"] for d in data["pretrain.jsonl"] if d["kind"] != "icl")
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["icl_style"] == "copy+formats"
    patterns = [re.escape(f).replace(r"\{x\}", "(.+?)").replace(r"\{y\}", r"(\S+)") for f in ICL_FORMATS]
    copies, forms = 0, set()
    for text in docs:
        lines = text.split("\n")
        if 2 <= len(lines) <= 3 and len(set(lines)) == 1 and 6 <= len(lines[0].split()) <= 32:
            copies += 1  # a run of words, then the run again: plain induction
            continue
        for i, pattern in reversed(list(enumerate(patterns))):  # the most specific first: "x y" matches them all
            pairs = re.findall(f"^{pattern}$", text, re.M)
            if pairs and len(pairs) == len(lines) / (2 if i == 4 else 1):
                break
        else:
            raise AssertionError(f"neither a copying run nor one of the formats: {text!r}")
        forms.add(i)
        label_of: dict[str, str] = {}
        for x, label in pairs:  # a repeated input keeps its label: later lines are copyable
            assert label_of.setdefault(x, label) == label
        assert 3 <= len(label_of) <= 5 and len(pairs) in (10, 12) and 2 <= len(set(label_of.values())) <= 3
    assert 15 <= copies <= 45 and len(forms) >= 4  # about half copying runs; the formats all used
    with pytest.raises(AcornError, match="icl-style copy"):
        generate_world(tmp_path / "bad", seed=0, size="tiny", quiet=True, icl_docs=5, icl_style="induction")
    with pytest.raises(AcornError, match="--icl-style copy styles the --icl-docs N documents"):
        generate_world(tmp_path / "bad", seed=0, size="tiny", quiet=True, icl_style="copy")



def test_an_in_context_phase_is_a_chain_of_designs_each_with_its_steps():
    assert parse_phase("copy@200>formats@100>world+formats@50") == [("copy", 200), ("formats", 100),
                                                                     ("world+formats", 50)]
    assert parse_phase("copy>formats@30") == [("copy", 30), ("formats", 30)]  # a last @STEPS alone: every design's
    assert parse_phase("copy@5>formats", steps=7) == [("copy", 5), ("formats", 7)]
    for bad, why in (("copy@5>formats", "positive number of steps"), ("copy@0", "positive number of steps"),
                     ("copy>>formats@2", "names no design"), ("", "names no design"), ("chat@3", "unknown")):
        with pytest.raises(AcornError, match=why):
            parse_phase(bad)
    import random

    rng, pools, texts = random.Random(0), icl_pools(build_world(0, "tiny")), ["Zerven is a city.", "Another text."]
    assert all(phase_doc("world", rng, pools, texts) in texts for _ in range(5))
    copies = [phase_doc("copy", rng, pools).split("\n") for _ in range(20)]
    assert all(len(set(lines)) == 1 and len(lines) in (2, 3) for lines in copies)  # a run, then the run again
    mixed = [phase_doc("world+formats", rng, pools, texts) for _ in range(300)]
    assert 60 <= sum(d in texts for d in mixed) <= 140  # a third the world's own text
    sixth = [phase_doc("world+formats", rng, pools, texts, world_share=1 / 6) for _ in range(300)]
    assert 25 <= sum(d in texts for d in sixth) <= 75  # or the share asked for
    for share in (0, 1, 1.5):
        with pytest.raises(AcornError, match="share of a world\\+ phase design must be between 0 and 1"):
            phase_doc("world+formats", rng, pools, texts, world_share=share)
    assert all(d in texts or "\n" in d for d in mixed)
    with pytest.raises(AcornError, match="unknown in-context phase design 'chat'"):
        phase_doc("chat", rng, pools)
    # spaced: a run of words with a formats' separator between them, the run again (copying across that gap)
    assert ICL_GAPS == (":", " ->", " Label:", "\nLabel:")
    gaps_seen = set()
    for _ in range(40):
        doc = phase_doc("spaced", rng, pools)
        k = next(k for k in (2, 3) if "\n".join([doc[:(len(doc) - k + 1) // k]] * k) == doc)
        line = doc[:(len(doc) - k + 1) // k]
        gap = next(g for g in ("\nLabel:", " Label:", " ->", ":") if g + " " in line)
        gaps_seen.add(gap)
        assert 4 <= len(line.split(gap + " ")) <= 10 and not line.startswith("Label")
    assert gaps_seen == set(ICL_GAPS)
    # copy+spaced+formats: a third each (a spaced run's lines repeat like a copy run's, with a gap in them)
    kinds = {"copy": 0, "spaced": 0, "formats": 0}
    for _ in range(300):
        doc = phase_doc("copy+spaced+formats", rng, pools)
        k = next((k for k in (2, 3) if "\n".join([doc[:(len(doc) - k + 1) // k]] * k) == doc), 0)
        gapped = k and any(g + " " in doc[:(len(doc) - k + 1) // k] for g in ICL_GAPS)
        kinds["formats" if not k else "spaced" if gapped else "copy"] += 1
    assert all(70 <= n <= 130 for n in kinds.values()), kinds

def test_cli_writes_the_world(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["data", "world", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "pretrain.jsonl" in printed and "tokens counted with" in printed
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert (out / "eval" / "fact_qa.jsonl").stat().st_size > 0
    # Regenerating into the same directory is refused, unless asked for.
    assert main(["data", "world", "--out", str(out), "--size", "tiny", "--seed", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert main(["data", "world", "--out", str(out), "--size", "tiny", "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--out-is-file"], ["--out-under-file"]])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = {"--out-is-file": blocker, "--out-under-file": blocker / "w"}.get(args[0], tmp_path / "w")
    argv = ["data", "world", "--out", str(out), "--size", "tiny"] + (args if args[0] == "--seed" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acorn: error:")
    assert blocker.read_text() == "x"


def test_bad_size_is_an_acorn_error(tmp_path):
    # The CLI's argparse choices already reject it; the API must too.
    with pytest.raises(AcornError, match="unknown world size"):
        generate_world(tmp_path / "w", size="huge", quiet=True)
    with pytest.raises(SystemExit) as e:
        main(["data", "world", "--out", str(tmp_path / "w"), "--size", "huge"])
    assert e.value.code == 2


def test_calculator_computes_and_refuses_code():
    assert calculate("123*45") == 5535 and calculate(" (2 - 7) * 3 ") == -15
    for bad in ["__import__('os').system('true')", "2 ** 10", "1 / 2", "x + 1", "2 +", "9" * 300]:
        with pytest.raises(ValueError):
            calculate(bad)


def test_reasoning_and_multistep_items_have_true_answers_and_chains():
    from acorn.data.world import build_world, multistep_arithmetic_items, reasoning_items

    w = build_world(0, "tiny")
    people = {p.name: p for p in w.people}
    cities = {c["name"]: c["country"] for c in w.cities}
    for r in reasoning_items(w, 40):
        assert r["reasoning"].rstrip(".").endswith(r["answer"])
        name = next(n for n in people if n in r["question"])
        if r["kind"] == "country":
            assert cities[people[name].birth_city] == r["answer"]
        elif r["kind"] == "mentor_chain":
            assert people[people[name].mentor].mentor == r["answer"]
    rows = multistep_arithmetic_items(w, 40)
    assert len({r["question"] for r in rows}) > 30
    for r in rows:
        assert str(calculate(r["expression"])) == r["answer"] and r["reasoning"].endswith(f"= {r['answer']}.")
    assert rows != multistep_arithmetic_items(w, 40, "other")  # a pool apart from the test items
