"""Chunking: boundaries, overlap, offsets back into the text, bad documents."""

import json

import pytest

from acorn.errors import AcornError
from acorn.rag.chunking import Document, _windows, chunk_document, read_documents


def test_windows_cover_everything_with_the_overlap():
    assert _windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert _windows(4, 4, 2) == [(0, 4)]  # one window when it all fits
    assert _windows(5, 4, 0) == [(0, 4), (4, 5)]


def test_token_chunks_are_exact_slices_and_share_the_overlap(tok):
    text = "Ünïcode crosses token boundaries: café, naïve. " * 6
    doc = Document(text, "a.txt", "a", "a")
    chunks = chunk_document(doc, "tokens", size=12, overlap=3, tokenizer=tok)
    assert len(chunks) > 3
    for c in chunks:
        assert text[c.start:c.end] == c.text  # offsets point back into the document
    ids = tok.encode(text)
    assert len(tok.encode(chunks[0].text)) <= 12
    # consecutive windows overlap by 3 tokens' worth of text (boundaries snap to characters)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert sum(1 for _ in ids) > 12


def test_paragraphs_and_sentences():
    text = "First para one. Still one.\n\n  Second para!\n\n\n\nThird? Yes."
    doc = Document(text, "d.md", "d", "d")
    paras = chunk_document(doc, "paragraphs")
    assert [c.text for c in paras] == ["First para one. Still one.", "Second para!", "Third? Yes."]
    assert all(text[c.start:c.end] == c.text for c in paras)
    sents = chunk_document(doc, "sentences", size=2, overlap=1)
    assert sents[0].text == "First para one. Still one."
    assert sents[1].text.startswith("Still one.") and sents[1].text.endswith("Second para!")
    assert [c.id for c in sents][:2] == ["d#0", "d#1"]


def test_bad_settings_are_refused(tok):
    doc = Document("x y z", "s", "t", "i")
    with pytest.raises(AcornError, match="overlap"):
        chunk_document(doc, "tokens", size=4, overlap=4, tokenizer=tok)
    with pytest.raises(AcornError, match="unknown chunking"):
        chunk_document(doc, "pages")


def test_empty_and_unreadable_documents_are_named_skipped_and_counted(tmp_path):
    (tmp_path / "good.md").write_text("# Title here\n\nSome text.")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r1", "text": "row text", "title": "R"}) + "\n"
                                         + json.dumps({"text": ""}) + "\nnot json\n")
    docs, skipped = read_documents([tmp_path])
    assert sorted(d.title for d in docs) == ["R", "Title here"]
    assert {d.id for d in docs} >= {"r1"}
    reasons = {s.source.split("/")[-1]: s.reason for s in skipped}
    assert reasons["empty.txt"] == "empty" and reasons["bad.txt"].startswith("unreadable")
    assert len(skipped) == 4  # empty, unreadable, an empty row, a row that is not JSON
    (tmp_path / "good.md").unlink()
    (tmp_path / "rows.jsonl").unlink()
    with pytest.raises(AcornError, match="no readable documents"):
        read_documents([tmp_path])
