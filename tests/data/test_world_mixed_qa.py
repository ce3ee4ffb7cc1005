"""Mixed training (`acorn data world --mixed-qa N`): QA pairs of the SFT people among the pretraining documents."""

import json

import jsonschema
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


def test_chat_format_docs_are_the_plain_pairs_as_sft_fact_conversations(world_tokenizer):
    world = build_world(0, "tiny")
    plain, chat = mixed_qa_docs(world, 2), mixed_qa_docs(world, 2, format="chat")
    assert len(plain) == len(chat)
    for p, c in zip(plain, chat):  # the same random stream: the same question and answer, in another form
        assert "text" not in c and (c["kind"], c["person"], c["attribute"]) == (p["kind"], p["person"], p["attribute"])
        user, assistant = c["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert MIXED_QA_FORMAT.format(question=user["content"], answer=assistant["content"]) == p["text"]
        jsonschema.validate(c, SCHEMAS["pretrain.jsonl"])
    # The answer is what SFT teaches for that fact, and a pair renders to exactly the ids of SFT's
    # row asking that question (one without a system prompt) through the one chat template.
    from acorn.data.world import SIZES, sft_rows
    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.from_pretrained(world_tokenizer)
    sft = {(r["person"], r["messages"][0]["content"]): r for r in sft_rows(world, SIZES["tiny"], set())
           if r["kind"] == "fact" and r["messages"][0]["role"] == "user"}
    matched = 0
    for c in chat:
        row = sft.get((c["person"], c["messages"][0]["content"]))
        if row is not None:
            assert row["messages"] == c["messages"]
            assert tok.apply_chat_template(c["messages"]) == tok.apply_chat_template(row["messages"])
            matched += 1
    assert matched >= 10
    with pytest.raises(AcornError, match="mixed QA format must be one of plain, chat"):
        mixed_qa_docs(world, 1, format="html")


def test_generate_world_writes_chat_pairs_and_records_the_format(tmp_path, tiny_world, capsys):
    from acorn.cli import main

    plain_out, chat_out = tmp_path / "plain", tmp_path / "chat"
    generate_world(plain_out, seed=0, size="tiny", quiet=True, mixed_qa=1)
    assert main(["data", "world", "--out", str(chat_out), "--size", "tiny", "--mixed-qa", "1",
                 "--mixed-qa-format", "chat"]) == 0
    plain, chat = _rows(plain_out / "pretrain.jsonl"), _rows(chat_out / "pretrain.jsonl")
    assert [r["kind"] for r in plain] == [r["kind"] for r in chat]  # the same shuffle
    for p, c in zip(plain, chat):
        jsonschema.validate(c, SCHEMAS["pretrain.jsonl"])
        if p["kind"] == "qa":  # plain keeps the line it always wrote; chat swaps text for messages
            assert list(p) == ["text", "kind", "person", "attribute"] and list(c)[1:] == list(p)[1:]
            q, a = (m["content"] for m in c["messages"])
            assert p["text"] == MIXED_QA_FORMAT.format(question=q, answer=a)
        else:
            assert p == c
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (plain_out, chat_out, tiny_world)]
    assert [m.get("mixed_qa_format") for m in manifests] == ["plain", "chat", None]
    assert (chat_out / "sft.jsonl").read_bytes() == (tiny_world / "sft.jsonl").read_bytes()
    with pytest.raises(AcornError, match="mixed QA format"):
        generate_world(tmp_path / "bad", size="tiny", quiet=True, mixed_qa=1, mixed_qa_format="html")


def test_prepared_chat_pairs_are_the_template_ids_of_their_conversations(tmp_path, world_tokenizer):
    import numpy as np

    from acorn.data.prepare import prepare
    from acorn.tokenizer.bpe import Tokenizer

    generate_world(tmp_path / "w", seed=0, size="tiny", quiet=True, mixed_qa=1, mixed_qa_format="chat")
    prepare([tmp_path / "w" / "pretrain.jsonl"], world_tokenizer, tmp_path / "data", val_fraction=0, workers=1,
            quiet=True)
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    ids = np.concatenate([np.fromfile(tmp_path / "data" / r["file"], dtype=meta["dtype"])
                          for r in meta["shards"]["train"]]).tolist()
    tok = Tokenizer.from_pretrained(world_tokenizer)
    starts = [i for i, t in enumerate(ids) if t == tok.bos_id]
    docs = {tuple(ids[a:b]) for a, b in zip(starts, [*starts[1:], len(ids)])}
    qa = [r for r in _rows(tmp_path / "w" / "pretrain.jsonl") if r["kind"] == "qa"]
    assert qa and all((*tok.apply_chat_template(r["messages"]), tok.eos_id) in docs for r in qa)
