"""Mixed training (`acorn data world --mixed-qa N`): QA pairs of the SFT people among the pretraining documents."""

import json

import pytest

from acorn.data.world import MIXED_QA_FORMAT, SCHEMAS, build_world, generate_world, mixed_qa_docs
from acorn.errors import AcornError


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mixed_qa_docs_ask_only_the_sft_people_in_the_sft_phrasings():
    world = build_world(0, "tiny")
    docs = mixed_qa_docs(world, 2)
    sft, held = {p.name for p in world.split("sft")}, {p.name for p in world.split("heldout")}
    assert docs and {d["person"] for d in docs} == sft and not held & {d["person"] for d in docs}
    by_name = {p.name: p for p in world.people}
    for d in docs:
        question, answer = d["text"].removeprefix("Question: ").split("\nAnswer: ")
        assert answer == by_name[d["person"]].value(d["attribute"])
        assert d["person"] in question and d["kind"] == "qa"
    # two phrasings per fact, each a different question
    assert len(docs) == 2 * sum(len(p.attributes()) for p in world.split("sft"))
    assert len({d["text"] for d in docs}) == len(docs)
    assert mixed_qa_docs(world, 0) == []
    assert MIXED_QA_FORMAT.format(question="Q?", answer="A") == "Question: Q?\nAnswer: A"


def test_generate_world_mixes_qa_only_when_asked(tmp_path, tiny_world):
    import jsonschema

    out = tmp_path / "mixed"
    summary = generate_world(out, seed=0, size="tiny", quiet=True, mixed_qa=1)
    plain, mixed = _rows(tiny_world / "pretrain.jsonl"), _rows(out / "pretrain.jsonl")
    qa = [r for r in mixed if r["kind"] == "qa"]
    assert len(mixed) == len(plain) + len(qa) and qa
    assert sorted(r["text"] for r in mixed if r["kind"] != "qa") == sorted(r["text"] for r in plain)
    for r in mixed:
        jsonschema.validate(r, SCHEMAS["pretrain.jsonl"])
    assert summary["mixed_qa"] == 1 and "mixed_qa" not in json.loads((tiny_world / "manifest.json").read_text())
    # everything but pretraining is the default world's, byte for byte
    for name in ("sft.jsonl", "eval/fact_qa.jsonl", "world.json"):
        assert (out / name).read_bytes() == (tiny_world / name).read_bytes()


def test_mixed_qa_refuses_a_negative_count(tmp_path):
    with pytest.raises(AcornError, match="mixed_qa"):
        generate_world(tmp_path / "w", size="tiny", quiet=True, mixed_qa=-1)
