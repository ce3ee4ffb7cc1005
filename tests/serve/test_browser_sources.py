"""The chat page under acorn serve --rag, in a real browser (as test_browser.py): the
passages a reply was given are shown under it, as text, the cited ones marked, and
they stay with the reply across a reload."""

from __future__ import annotations

import json

import pytest

from acorn.chat.context import parse_citations
from tests.serve.test_browser import _idle, _open, _set, _stored, browser, page  # noqa: F401 (fixtures)

HOSTILE = 'Mira Dranith was born in <img src=x onerror="window.pwned=1">Tal.'


@pytest.fixture(scope="module")
def rag_page_server(start_server, checkpoint, tmp_path_factory):
    from acorn.rag.pipeline import RAG, build_index

    d = tmp_path_factory.mktemp("rag-page")
    (d / "kb.txt").write_text(f"Kelvo Dranith was born in Osk.\n\n{HOSTILE}\n\nA small acorn grows into an oak.\n")
    build_index([d / "kb.txt"], d / "index", str(checkpoint), chunk_by="paragraphs")
    return start_server(rag=RAG(d / "index", mode="bm25", k=2))


def test_sources_show_under_the_answer_and_survive_a_reload(page, rag_page_server):  # noqa: F811
    _open(page, rag_page_server.url)
    _set(page, "#temperature", "0")
    _set(page, "#max_tokens", "6")
    page.fill("#prompt", "Where was Kelvo Dranith born?")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
        page.click("#send")
    _idle(page)
    body = answer.value.text()
    last = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data: {")][-1]
    sources = last["sources"]  # what the server sent on the stream's last chunk
    assert [s["number"] for s in sources] == [1, 2]

    def shown():
        return page.evaluate("""() => [...document.querySelectorAll('.msg-assistant .sources li')].map(li => ({
            number: li.value, title: li.querySelector('strong').textContent,
            text: li.querySelector('.passage').textContent, cited: li.classList.contains('cited')}))""")

    expected = [{"number": s["number"], "title": s["title"], "text": s["text"], "cited": s["cited"]} for s in sources]
    assert shown() == expected
    reply = _stored(page)["messages"][1]
    assert reply["sources"] == sources
    cited = parse_citations(reply["content"], 2)[1]
    assert [s["cited"] for s in sources] == [s["number"] in cited for s in sources]
    # A passage is text: its markup is shown, never run.
    assert HOSTILE in [s["text"] for s in shown()]
    assert page.locator(".sources img").count() == 0 and page.evaluate("window.pwned === undefined")
    # Kept with the reply; not sent back to the server as part of the conversation.
    page.reload()
    _open(page, rag_page_server.url)
    assert shown() == expected
    page.fill("#prompt", "And Mira?")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        page.click("#send")
    _idle(page)
    assert all(set(m) == {"role", "content"} for m in json.loads(sent.value.post_data)["messages"])
    assert page.locator(".msg-assistant").count() == 2 and page.locator(".msg-assistant .sources").count() == 2


