"""The chat page (acorn/serve/static/) in a real browser against a live server.

Playwright drives Debian's Chromium (/usr/bin/chromium; `.ci/run` installs it
and the dev extra installs playwright; Playwright's own browser download is
not used, nothing is fetched). The server is a real uvicorn server on
loopback; its engine is slowed to 20 ms a step so that a reply takes long
enough to watch it stream and to stop it halfway.

The oracle for the reply is the engine itself: with temperature 0 the text the
page assembled from the streamed deltas must equal Engine.chat's greedy text.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

# The flags this machine needs offline: without the background-networking ones
# Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_DELAY = 0.02  # seconds added to each engine step
STORE = "acorn.chat.v1"  # the page's localStorage key


def _slow(srv):
    """Add STEP_DELAY to every engine step of this server (its own Engine)."""
    step = srv.engine.step

    def slow_step():
        time.sleep(STEP_DELAY)
        return step()

    srv.engine.step = slow_step
    return srv


@pytest.fixture(scope="module")
def slow_server(start_server):
    return _slow(start_server())


@pytest.fixture(scope="module")
def reference(checkpoint):
    """A second Engine on the same checkpoint (the server's is busy in its own thread)."""
    from acorn.infer import Engine

    return Engine.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # a fresh localStorage per test
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def _open(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#model option[value]:not([value=\"\"])').length > 0")


def _set(page, selector: str, value: str) -> None:
    """Set a control as a user would (fill() refuses range inputs); the page saves on `input`."""
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }",
                          value)


def _stored(page) -> dict:
    return page.evaluate(f"JSON.parse(localStorage.getItem('{STORE}'))")


def _shown(page) -> str:
    """The last reply's HTML as rendered, without the Copy buttons the page adds to code blocks."""
    return page.evaluate("""() => {
        const body = [...document.querySelectorAll('.msg-assistant .body')].at(-1).cloneNode(true);
        body.querySelectorAll('button.copy').forEach(b => b.remove());
        return body.innerHTML;
    }""")


def _idle(page) -> None:
    page.wait_for_selector("body[data-state=idle]", state="attached")


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\{[^}]*\} (\S+)$", text, re.M)}


def _greedy(reference, prompt: str, max_tokens: int):
    """The engine's own greedy reply (a Completion) to one user message."""
    from acorn.infer import SamplingParams

    return reference.chat([{"role": "user", "content": prompt}], SamplingParams(max_tokens=max_tokens, temperature=0))


# ------------------------------------------------------------------ Markdown
def test_markdown_renders_formatting_and_escapes_html(page, slow_server):
    _open(page, slow_server.url)
    render = lambda text: page.evaluate("t => Acorn.renderMarkdown(t)", text)  # noqa: E731

    assert render("**x** and *y*") == "<p><strong>x</strong> and <em>y</em></p>"
    assert render("<script>alert(1)</script>") == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert render("```python\nif a < b:\n    print('**no**')\n```") == (
        '<pre><code class="language-python">if a &lt; b:\n    print(&#39;**no**&#39;)</code></pre>')
    assert render("use `<b>` here") == "<p>use <code>&lt;b&gt;</code> here</p>"
    assert render("- one\n- two\n\n1. a\n2. b") == "<ul><li>one</li><li>two</li></ul><ol><li>a</li><li>b</li></ol>"
    assert 'href="https://example.com/a?b=1&amp;c=2"' in render("[site](https://example.com/a?b=1&c=2)")
    for hostile in ("[x](javascript:alert(1))", "[x](data:text/html,<b>)", "[x](vbscript:x)"):
        assert "<a" not in render(hostile), hostile
    # Rendered into the page, hostile input makes no element that could run code.
    made = page.evaluate("""() => {
        const div = document.createElement('div');
        div.innerHTML = Acorn.renderMarkdown('<img src=x onerror="window.pwned=1"> [a](https://x.org" onclick="y) '
                                              + '<a href="javascript:1">z</a> **<svg onload=1>**');
        return {tags: [...div.querySelectorAll('*')].map(e => e.tagName),
                handlers: [...div.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))
                          .filter(n => n.startsWith('on'))};
    }""")
    assert set(made["tags"]) <= {"P", "A", "STRONG"} and made["handlers"] == []


# ------------------------------------------------------------------ streaming
def test_reply_streams_in_and_the_conversation_survives_a_reload(page, slow_server, reference):
    prompt, max_tokens = "Tell me about the acorn.", 40
    _open(page, slow_server.url)
    assert page.input_value("#model") == "tiny"
    _set(page, "#temperature", "0")
    _set(page, "#max_tokens", str(max_tokens))
    # Record every length the reply's text passes through.
    # Record every length the reply's text passes through, and whether the
    # controls showed a reply in progress meanwhile.
    page.evaluate("""() => {
        window.lengths = [];
        window.busyControls = false;
        new MutationObserver(() => {
            const body = document.querySelector('.msg-assistant:last-of-type .body');
            if (body && window.lengths.at(-1) !== body.textContent.length) window.lengths.push(body.textContent.length);
            if (document.body.dataset.state === 'streaming' && !document.getElementById('stop').hidden
                && document.getElementById('send').disabled) window.busyControls = true;
        }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#prompt", prompt)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
        page.press("#prompt", "Enter")
    assert answer.value.status == 200
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    _idle(page)
    assert page.evaluate("window.busyControls"), "Stop was not offered while the reply streamed"

    request = json.loads(answer.value.request.post_data)
    assert request["stream"] is True and request["model"] == "tiny" and request["max_tokens"] == max_tokens
    assert request["messages"] == [{"role": "user", "content": prompt}]  # no system prompt was set
    lengths = page.evaluate("window.lengths")
    assert len([n for n in lengths if n > 0]) >= 3, f"the reply did not grow in steps: {lengths}"
    messages = _stored(page)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    reply = messages[1]["content"]
    assert reply and reply == _greedy(reference, prompt, max_tokens).text
    assert _shown(page) == page.evaluate("t => Acorn.renderMarkdown(t)", reply)
    assert page.is_hidden("#stop") and page.is_enabled("#regenerate")

    page.reload()
    _open(page, slow_server.url)
    assert page.inner_text(".msg-user .body") == prompt
    assert _shown(page) == page.evaluate("t => Acorn.renderMarkdown(t)", reply)
    assert page.input_value("#max_tokens") == str(max_tokens) and page.input_value("#temperature") == "0"

    # Regenerate replaces the last reply (greedy: with the same text); New chat clears everything.
    page.click("#regenerate")
    _idle(page)
    assert [m["content"] for m in _stored(page)["messages"]] == [prompt, reply]
    assert page.locator(".msg").count() == 2
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and _stored(page)["messages"] == []


def test_stop_ends_the_reply_and_the_server_stops_generating(page, slow_server, reference):
    prompt, max_tokens = "Write a long story.", 900
    full = len(_greedy(reference, prompt, max_tokens).token_ids)
    assert full > 100  # long enough at 20 ms a step that Stop lands well before the end
    _open(page, slow_server.url)
    _set(page, "#temperature", "0")
    _set(page, "#max_tokens", str(max_tokens))
    before = _metrics(slow_server.url)["acorn_generation_tokens_total"]

    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg-assistant .body').textContent.length > 0")
    page.click("#stop")
    _idle(page)
    assert page.is_hidden("#stop") and page.is_enabled("#send")
    assert page.inner_text(".msg-assistant .note") == "Stopped."
    assert page.locator(".msg-error").count() == 0  # an abort is not an error

    # The server saw the disconnect and aborted the request: nothing running, and
    # far fewer tokens generated than the full reply has.
    deadline = time.monotonic() + 5
    while (m := _metrics(slow_server.url))["acorn_running_requests"] or m["acorn_queue_depth"]:
        assert time.monotonic() < deadline, f"the server still runs the request after Stop: {m}"
        time.sleep(0.05)
    generated = m["acorn_generation_tokens_total"] - before
    assert 0 < generated < full / 2, (generated, full)
    kept = _stored(page)["messages"][1]
    assert kept["note"] == "Stopped." and 0 < len(kept["content"])

    # Stopped replies stay in the conversation and the next question goes out normally.
    _set(page, "#max_tokens", "5")
    page.fill("#prompt", "And then?")
    page.click("#send")
    _idle(page)
    assert [m["role"] for m in _stored(page)["messages"]] == ["user", "assistant", "user", "assistant"]


# ------------------------------------------------------------------ keys and errors
def test_api_key_is_sent_and_server_errors_show_inline(page, start_server):
    srv = start_server(api_keys=["sesame"], max_tokens_cap=64)
    page.goto(srv.url + "/")
    # Without a key, listing models fails with the server's own message, shown in the conversation.
    page.wait_for_selector(".msg-error")
    assert "API key" in page.inner_text(".msg-error .body")

    page.fill("#api-key", "sesame")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model').value === 'tiny'")
    assert page.locator(".msg-error").count() == 0  # the models error went away once the key worked
    _set(page, "#max_tokens", "100")  # over the server's cap of 64
    page.fill("#prompt", "Hello")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        page.click("#send")
    assert sent.value.headers["authorization"] == "Bearer sesame"
    _idle(page)
    errors = page.locator(".msg-error .body")
    assert errors.count() == 1 and "at most 64" in errors.inner_text()
    assert page.locator(".msg-assistant").count() == 0  # the failed reply leaves no empty bubble

    _set(page, "#max_tokens", "5")
    page.click("#regenerate")  # re-asks the last question; the error goes away
    _idle(page)
    roles = [m["role"] for m in _stored(page)["messages"]]
    assert roles == ["user", "assistant"], roles


# ------------------------------------------------------------------ images
def test_an_attached_image_is_sent_as_an_image_url_part_and_shown_as_a_thumbnail(page):
    import base64

    from acorn.infer import Engine
    from acorn.serve.app import create_app
    from tests.conftest import png, tiny_llava

    from .conftest import run_server

    model, tok = tiny_llava()
    srv = run_server(create_app(Engine(model, tok, device="cpu"), model_name="tiny-llava"))
    try:
        _open(page, srv.url)
        _set(page, "#temperature", "0")
        _set(page, "#max_tokens", "8")
        page.set_input_files("#image-input", files=[{"name": "p.png", "mimeType": "image/png", "buffer": png(1)}])
        page.wait_for_selector("#attachments .thumb")
        page.fill("#prompt", "What is this?")
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
            page.press("#prompt", "Enter")
        assert answer.value.status == 200
        _idle(page)
        url = "data:image/png;base64," + base64.b64encode(png(1)).decode()
        sent = json.loads(answer.value.request.post_data)["messages"]
        assert sent == [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What is this?"}]}]
        assert page.locator(".msg-user img.thumb").count() == 1 and page.is_hidden("#attachments")
        messages = _stored(page)["messages"]
        assert messages[0]["images"] == [url]
        oracle = tiny_llava()  # seed 0: the served weights
        turn = [{"type": "image", "image": png(1)}, {"type": "text", "text": "What is this?"}]
        want = Engine(*oracle, device="cpu").chat([{"role": "user", "content": turn}], max_new_tokens=8, temperature=0)
        assert messages[1]["content"] == want.text
    finally:
        srv.stop()
