"""Reading documents (continued pretraining that teaches copying from context) and the
RAG SFT rows' options: every answer is stated by the passage it cites, nobody evaluated
appears, and the default world stays byte for byte what it was."""

import json
import re

import pytest

from acorn.chat.context import parse_citations


@pytest.fixture(scope="module")
def world():
    from acorn.data.world import build_world

    return build_world(0, "tiny")


def test_reading_people_are_invented_and_namesakes(world):
    from acorn.data.world import reading_people

    people = reading_people(world, 30)
    names = {p.name for p in world.people}
    surnames = {p.last_name for p in world.people}
    assert len({p.name for p in people}) == 30 and not names & {p.name for p in people}
    assert not surnames & {p.last_name for p in people}  # not even a namesake of an evaluated person
    assert len({p.last_name for p in people}) == 10  # about three per surname: namesakes to tell apart
    assert [p.name for p in reading_people(world, 30)] == [p.name for p in people]  # deterministic


def test_reading_docs_answer_from_the_passage_they_cite(world):
    from acorn.data.world import IDK_ANSWER, reading_documents, reading_people

    docs = reading_documents(world, 40, people=30)
    people = {p.name: p for p in reading_people(world, 30)}
    answered = idk = 0
    for d in docs:
        assert d["kind"] == "reading"
        head, _, qa = d["text"].partition("\n\n")
        passages = dict(re.findall(r"^\[(\d+)\] ([^:]+):", head, re.M))
        assert 1 <= len(passages) <= 3 and head.startswith("Passages:\n[1] ")
        pairs = re.findall(r"^Question: (.*)\nAnswer: (.*)$", qa, re.M)
        assert pairs and len(pairs) * 2 == len(qa.split("\n"))
        for question, answer in pairs:
            name = next(n for n in people if n in question)
            if answer == IDK_ANSWER:
                idk += 1
                assert name not in passages.values()  # nobody shown: nothing to copy
                continue
            answered += 1
            value, (n,) = parse_citations(answer)[0], parse_citations(answer)[1]
            assert passages[str(n)] == name  # the cited passage is about the person asked for
            line = next(line for line in head.split("\n") if line.startswith(f"[{n}] "))
            assert value in line and value in {people[name].value(a) for a in
                                               ("birth_year", "birth_city", "profession", "employer", "mentor")}
    assert answered > 3 * idk > 0


def test_rag_rows_options_keep_eval_people_out_and_add_namesake_refusals(world):
    from acorn.data.world import IDK_ANSWER, rag_sft_rows, reading_people
    from acorn.errors import AcornError

    base = rag_sft_rows(world)
    assert rag_sft_rows(world, idk_per_fact=1) == base  # the defaults are the --rag-sft rows
    more = rag_sft_rows(world, idk_per_fact=3)
    n_idk = lambda rows: sum(r["kind"] == "rag_idk" for r in rows)  # noqa: E731
    assert n_idk(more) == 3 * n_idk(base) and len(more) - n_idk(more) == len(base) - n_idk(base)
    for r in more:
        if r["kind"] == "rag_idk":
            assert r["messages"][1]["content"] == IDK_ANSWER and f"] {r['person']}:" not in r["messages"][0]["content"]
    invented = reading_people(world, 12)
    one = rag_sft_rows(world, passages=1, people=invented, component="drill")
    assert {r["person"] for r in one} == {p.name for p in invented}
    for r in one:
        user = r["messages"][0]["content"]
        assert user.count("\n[") == 1  # one passage
        if r["kind"] == "rag":
            assert parse_citations(r["messages"][1]["content"])[1] == [1] and f"[1] {r['person']}:" in user
    with pytest.raises(AcornError, match="unknown_eval"):
        rag_sft_rows(world, people=world.split("unknown_eval"))


def test_generate_world_adds_reading_docs_only_when_asked(tmp_path, tiny_world):
    from acorn.data.world import generate_world

    out = tmp_path / "w"
    summary = generate_world(out, seed=0, size="tiny", quiet=True, reading_docs=7, tokenizer=None)
    base = (tiny_world / "pretrain.jsonl").read_text().splitlines()
    more = (out / "pretrain.jsonl").read_text().splitlines()
    assert sorted(base) == sorted(line for line in more if '"kind": "reading"' not in line)
    assert len(more) == len(base) + 7 and summary["reading_docs"] == 7
    assert (out / "sft.jsonl").read_bytes() == (tiny_world / "sft.jsonl").read_bytes()
    assert "reading_docs" not in json.loads((tiny_world / "manifest.json").read_text())
