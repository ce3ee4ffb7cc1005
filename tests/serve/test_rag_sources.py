"""acorn serve --rag through the official SDKs: the sources a reply was given travel
with it, streamed or not, on both APIs.

The model is the serve tests' tiny random Llama, so what it writes is gibberish;
to make it cite a passage the reply is constrained to the JSON string
"Osk [1]" (response_format / output_config.format), which puts the citation
mark [1] in the text. The oracle for what is cited is acorn.chat.context's
parse_citations over the reply's own text.
"""

from __future__ import annotations

import json

import httpx
import pytest

from acorn.chat.context import parse_citations

from .conftest import sdk_clients

PASSAGE = "Kelvo Dranith was born in Osk."
QUESTION = [{"role": "user", "content": "Where was Kelvo Dranith born?"}]
CITING = {"type": "string", "enum": ["Osk [1]"]}  # a reply that cites passage 1


@pytest.fixture(scope="module")
def rag_server(start_server, checkpoint, tmp_path_factory):
    from acorn.rag.pipeline import RAG, build_index

    d = tmp_path_factory.mktemp("rag-docs")
    (d / "kb.txt").write_text(f"{PASSAGE}\n\nMira Dranith was born in Tal.\n\nA small acorn grows into a tall oak tree.\n")
    build_index([d / "kb.txt"], d / "index", str(checkpoint), chunk_by="paragraphs")
    return start_server(rag=RAG(d / "index", mode="bm25", k=2))


@pytest.fixture(scope="module")
def oai(rag_server):
    return sdk_clients(rag_server.url)[0]


@pytest.fixture(scope="module")
def claude(rag_server):
    return sdk_clients(rag_server.url)[1]


def _stream_openai(oai, **kw):
    chunks = list(oai.chat.completions.create(model="tiny", messages=QUESTION, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_openai_stream_carries_the_sources_on_its_last_chunk(oai):
    whole = oai.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=8)
    chunks, text = _stream_openai(oai, temperature=0, max_tokens=8)
    assert text == whole.choices[0].message.content  # greedy: the same reply both ways
    with_sources = [c for c in chunks if (c.model_extra or {}).get("sources") is not None]
    assert len(with_sources) == 1 and with_sources[0] is [c for c in chunks if c.choices][-1]
    assert with_sources[0].choices[0].finish_reason in ("stop", "length")
    sources = with_sources[0].model_extra["sources"]
    assert sources == whole.model_extra["sources"]
    assert [s["number"] for s in sources] == [1, 2] and sources[0]["text"] == PASSAGE  # BM25 ranks it first
    cited = parse_citations(text, 2)[1]
    assert [s["cited"] for s in sources] == [s["number"] in cited for s in sources]


def test_openai_stream_marks_the_cited_passage(oai):
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": CITING}}
    chunks, text = _stream_openai(oai, temperature=0, max_tokens=16, response_format=fmt)
    assert json.loads(text) == "Osk [1]"
    sources = [c for c in chunks if (c.model_extra or {}).get("sources")][-1].model_extra["sources"]
    assert [s["cited"] for s in sources] == [True, False]


def test_openai_stream_without_rag_has_no_sources(openai_client):
    chunks = list(openai_client.chat.completions.create(model="tiny", messages=QUESTION, stream=True,
                                                        max_tokens=3))
    assert all("sources" not in (c.model_extra or {}) for c in chunks)


def test_anthropic_route_answers_from_the_index_with_citations(claude):
    kw = dict(model="tiny", max_tokens=16, messages=QUESTION, extra_body={"temperature": 0},
              output_config={"format": {"type": "json_schema", "schema": CITING}})
    msg = claude.messages.create(**kw)
    (block,) = msg.content
    assert json.loads(block.text) == "Osk [1]"
    (citation,) = block.citations
    assert citation.type == "search_result_location" and citation.cited_text == PASSAGE
    assert citation.search_result_index == 0 and citation.title and citation.source.endswith("kb.txt")
    assert [s["cited"] for s in msg.model_extra["sources"]] == [True, False]

    # Streamed: the SDK's accumulator rebuilds the same message from the events.
    with claude.messages.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].text == block.text
    assert [c.model_dump() for c in final.content[0].citations] == [c.model_dump() for c in block.citations]
    kinds = [e.type for e in events]
    assert "citation" in kinds and kinds.index("citation") < kinds.index("content_block_stop")
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.model_extra["sources"] == msg.model_extra["sources"]


def test_anthropic_route_uncited_reply_has_sources_but_no_citations(claude, rag_server):
    msg = claude.messages.create(model="tiny", max_tokens=6, messages=QUESTION, extra_body={"temperature": 0})
    text = "".join(b.text for b in msg.content if b.type == "text")
    cited = parse_citations(text, 2)[1]
    assert [s["number"] for s in msg.model_extra["sources"]] == [1, 2]
    assert [s["cited"] for s in msg.model_extra["sources"]] == [n in cited for n in (1, 2)]
    if msg.content:
        assert len(msg.content[0].citations or []) == len(cited)
    # A question longer than the context: one clear 400 in Anthropic's error shape.
    r = httpx.post(rag_server.url + "/v1/messages", json={"model": "tiny", "max_tokens": 4, "messages": [
        {"role": "user", "content": "cat " * 2000}]}, timeout=60)
    assert r.status_code == 400 and "shorten the question" in r.json()["error"]["message"]
