"""RAG end to end on tiny models: citations, prompts that fit, the world's RAG
conversations, the CLI's refusals."""

import json

import pytest

from acorn.chat.context import cite, context_message, parse_citations
from acorn.cli import main
from acorn.errors import AcornError


def test_parse_citations():
    assert parse_citations("1957 [2].") == ("1957.", [2])
    assert parse_citations("Osk [3] and Vel [1][3]", 3) == ("Osk and Vel", [3, 1])
    assert parse_citations("made up [7]", 3) == ("made up", [])  # no passage 7: cites nothing
    assert parse_citations("I don't know.") == ("I don't know.", [])
    text, cited = parse_citations(cite("Grivex Systems", 1))
    assert (text, cited) == ("Grivex Systems", [1])


def test_context_message_numbers_passages_from_one():
    m = context_message("Q?", [{"title": "A", "text": "a."}, {"text": "b."}])
    assert "[1] A: a.\n[2] b." in m and "Question: Q?" in m


def test_world_rag_rows_answer_from_the_passage_they_cite():
    from acorn.data.world import IDK_ANSWER, build_world, knowledge_base, rag_sft_rows

    world = build_world(0, "tiny")
    kb = {r["person"]: r["text"] for r in knowledge_base(world)}
    rows = rag_sft_rows(world)
    eval_people = {p.name for p in world.split("unknown_eval")}
    kinds = {r["kind"] for r in rows}
    assert kinds == {"rag", "rag_idk"}
    for r in rows:
        user, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        assert not any(name in user for name in eval_people)  # held out of training entirely
        passages = [line for line in user.split("\n") if line.startswith("[")]
        assert len(passages) == 3
        if r["kind"] == "rag":
            answer, (n,) = parse_citations(reply)[0], parse_citations(reply)[1]
            assert passages[n - 1] == f"[{n}] {r['person']}: {kb[r['person']]}"  # cites the person's own passage
            assert answer in kb[r["person"]]
        else:
            assert reply == IDK_ANSWER and kb[r["person"]] not in user


def test_default_world_is_unchanged_and_the_option_adds_rows(tmp_path, tiny_world):
    from acorn.data.world import generate_world

    out = tmp_path / "w"
    generate_world(out, seed=0, size="tiny", quiet=True, rag_sft=True)
    base = (tiny_world / "sft.jsonl").read_text().splitlines()
    more = (out / "sft.jsonl").read_text().splitlines()
    assert sorted(base) == sorted(line for line in more if '"kind": "rag' not in line)
    assert len(more) > len(base)
    assert json.loads((out / "manifest.json").read_text())["rag_sft"] is True
    assert "rag_sft" not in json.loads((tiny_world / "manifest.json").read_text())


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "fox.md").write_text("# Foxes\n\nThe quick brown fox jumps over the lazy dog.\n\nThe fox is quick.")
    (d / "oak.txt").write_text("A small acorn grows into a tall oak tree.")
    (d / "empty.txt").write_text("")
    return d


def test_build_ask_add_and_refuse(tmp_path, docs, checkpoint, capsys):
    from acorn.rag.embeddings import AcornEmbedder
    from acorn.rag.index import Index
    from acorn.rag.pipeline import RAG, build_index

    path, _ = checkpoint
    out = tmp_path / "idx"
    s = build_index([docs], out, str(path), chunk_by="paragraphs")
    assert s["documents"] == 2 and s["chunks"] == 4 and len(s["skipped"]) == 1  # the heading is a paragraph
    index = Index.load(out)
    emb = AcornEmbedder(path)
    assert index.embedder == emb.identity
    # the index's vectors are embed() of the chunk texts, as the embedder gives them
    import numpy as np

    assert np.allclose(index.vectors, emb.encode([c.text for c in index.chunks]), atol=1e-5)
    rag = RAG(out, model=str(path), k=2, max_new_tokens=4)
    (hits,) = rag.retrieve(["acorn oak"])
    assert len(hits) == 2 and all(set(h.chunk.to_json()) >= {"id", "title", "source", "start", "end"} for h in hits)
    a = rag.ask("acorn oak")
    # the passages that fit the context (128 tokens, 4 kept for the answer), lowest-ranked dropped first
    size = lambda ps: len(rag.engine.chat_prompt([{"role": "user", "content": context_message("acorn oak", ps)}]))
    given = [{"title": h.chunk.title, "text": h.chunk.text} for h in hits]
    assert size(a.passages) <= 124 and [p["id"] for p in a.passages] == [h.chunk.id for h in hits][:len(a.passages)]
    if len(a.passages) < 2:
        assert size(given[:len(a.passages) + 1]) > 124
    with pytest.raises(AcornError, match="shorten the question"):
        rag.ask("fox " * 200)
    # added documents are found; the chunking and embedder are the index's
    (tmp_path / "new.txt").write_text("Cats sit on mats.")
    s = build_index([tmp_path / "new.txt"], out, str(path), add=True)
    assert s["chunks"] == 5
    assert Index.load(out).chunks[-1].text == "Cats sit on mats."
    # the CLI: another embedder is refused with one line and exit 2
    other = tmp_path / "other"
    import shutil

    shutil.copytree(path, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(cfg, rms_norm_eps=1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6)))
    capsys.readouterr()
    assert main(["rag", "ask", str(out), "--embedder", str(other), "cats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was built with the acorn embedder" in err
    assert main(["rag", "index", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "i2"),
                 "--embedder", str(path)]) == 2
    assert main(["rag", "ask", str(tmp_path), "q"]) == 2  # not an index directory


def test_ask_can_spotlight_and_separate_the_passages(tmp_path, docs, checkpoint):
    """RAG(spotlight=..., layout=...) builds its prompt with acorn.chat.context's
    defences; the default prompt is the plain one."""
    from acorn.rag.pipeline import RAG, build_index

    path, _ = checkpoint
    build_index([docs], tmp_path / "idx", str(path), chunk_by="paragraphs")
    plain = RAG(tmp_path / "idx", model=str(path), k=1, max_new_tokens=4)
    (hits,) = plain.retrieve(["acorn oak"])
    plain.engine.model.config.max_seq_len = 1024  # this engine only builds prompts here; the tiny model has 128
    text = lambda rag: rag.engine.tokenizer.decode(rag.prompt("acorn oak", hits)[0])
    assert "<<" not in text(plain) and "<|tool_output|>" not in text(plain)
    marked = RAG(tmp_path / "idx", model=plain.engine, k=1, max_new_tokens=4, spotlight="delimit", layout="tool")
    t = text(marked)
    assert f"<|tool_output|>Passages:\n[1] {hits[0].chunk.title}: <<{hits[0].chunk.text}>>" in t
    assert t.index("Question: acorn oak") < t.index("<|tool_output|>")
    with pytest.raises(AcornError, match="unknown spotlight mode"):
        RAG(tmp_path / "idx", spotlight="loud")


def test_answer_metrics_read_the_value_of_a_world_answer_sentence():
    from acorn.rag.pipeline import RagAnswer, answer_metrics

    passage = {"number": 1, "text": "Ana Vell works for Trilon Press."}
    doc = {"person": "Ana Vell", "attribute": "employer"}
    said = ["As far as I know, Ana Vell works for Trilon Press.", "As far as I know, Ana Bell works for Trilon Press.",
            "Trilon Press", "As far as I know, Ana Vell works for Braxora Works."]
    answers = [RagAnswer("Who employs Ana Vell?", t + " [1]", t, [1], [passage]) for t in said]
    m = answer_metrics(answers, ["Trilon Press"] * 4, [doc] * 4)
    assert m["exact_match"] == 2 / 4  # the sentence about her and the bare value; not another person's
    assert m["faithfulness"] == 2 / 4  # the value in the cited passage: hers and the bare one
    assert answer_metrics(answers, ["Trilon Press"] * 4)["exact_match"] == 1 / 4  # no rows: whole answers
