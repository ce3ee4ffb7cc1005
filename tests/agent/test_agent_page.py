"""The chat page's tools switch, in Debian's Chromium against a live server
(as tests/serve/test_browser.py): the switch appears only on a server with
tools, a message then goes to POST v1/agent, and each call with its result is
shown before the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from tests.serve.conftest import run_server  # noqa: E402
from tests.serve.test_browser import browser, page  # noqa: E402,F401 (the same Chromium fixtures)


@pytest.fixture(scope="module")
def servers(agent_checkpoint):
    from acorn.agent.builtins import make_tools
    from acorn.infer import Engine
    from acorn.serve.app import create_app

    with_tools = run_server(create_app(Engine.from_pretrained(agent_checkpoint, device="cpu"), model_name="tiny",
                                       tools=make_tools("calculator")))
    without = run_server(create_app(Engine.from_pretrained(agent_checkpoint, device="cpu"), model_name="tiny"))
    yield with_tools, without
    with_tools.stop()
    without.stop()


def _open(page, url):
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#model option[value]:not([value=\"\"])').length > 0")


def test_the_tools_switch_sends_to_the_agent_and_shows_calls_and_results(page, servers):
    with_tools, without = servers
    _open(page, without.url)
    page.wait_for_timeout(300)  # loadTools has answered (404 -> no switch)
    assert page.is_hidden("#tools-field")

    _open(page, with_tools.url)
    page.wait_for_selector("#tools-field:not([hidden])")
    assert page.text_content("#tools-names") == "(calculator)"
    page.check("#use-tools")
    # The agent's reply, as the server would give it for a model that calls the calculator.
    canned = {"answer": "5535", "stopped": "answer", "steps": [
        {"text": "", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "calculator", "arguments": json.dumps({"expression": "123*45"})}}],
         "results": [{"name": "calculator", "content": "5535", "error": None}]},
        {"text": "5535", "tool_calls": [], "results": []}]}
    sent = []

    def fulfil(route):
        sent.append(json.loads(route.request.post_data))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(canned))

    page.route("**/v1/agent", fulfil)
    page.fill("#prompt", "What is 123 * 45?")
    page.click("#send")
    page.wait_for_selector(".msg-assistant")
    assert sent[0]["messages"] == [{"role": "user", "content": "What is 123 * 45?"}]
    assert page.text_content(".msg-tool .body") == 'calculator({"expression": "123*45"}) \u2192 5535'
    assert page.text_content(".msg-assistant .body").strip() == "5535"

    # Unrouted: the real server runs the loop with the tiny random model and the page shows its outcome.
    page.unroute("**/v1/agent")
    page.fill("#prompt", "And 6 + 6?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg-assistant').length === 2")
    page.wait_for_selector("body[data-state=idle]", state="attached")
    assert not page.query_selector(".msg-error")
