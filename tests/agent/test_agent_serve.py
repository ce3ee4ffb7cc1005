"""POST /v1/agent and GET /v1/agent/tools: the agent loop behind the server."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from acorn.agent.builtins import make_tools
    from acorn.serve.app import create_app

    with TestClient(create_app(engine, tools=make_tools("calculator"))) as c:
        yield c


def test_the_agent_route_runs_the_loop_and_returns_steps_and_transcript(client):
    assert [t["function"]["name"] for t in client.get("/v1/agent/tools").json()["data"]] == ["calculator"]
    r = client.post("/v1/agent", json={"task": "What is 6 + 6?", "max_steps": 2, "max_new_tokens": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stopped"] in ("answer", "step_limit", "invalid_calls", "token_budget")
    assert 1 <= len(body["steps"]) <= 2 and body["messages"][0] == {"role": "user", "content": "What is 6 + 6?"}
    assert body["transcript"].startswith("user: What is 6 + 6?")
    for step in body["steps"]:  # constrained by default: every call was well formed
        assert all(res["error"] in (None, "raised") for res in step["results"])


@pytest.mark.parametrize("body,status,message", [
    ({"task": "x", "tools": ["python"]}, 400, "tools names 'python', which this server does not run"),
    ({}, 400, "give either task"),
    ({"task": "x", "messages": []}, 400, "give either task"),
    ({"task": "x", "max_steps": 0}, 400, "max_steps"),
    ({"task": "  "}, 400, "the task is empty"),
])
def test_bad_agent_requests_are_400_with_the_reason(client, body, status, message):
    r = client.post("/v1/agent", json=body)
    assert r.status_code == status and message in r.json()["error"]["message"], r.text


def test_a_server_without_tools_has_no_agent(engine):
    from fastapi.testclient import TestClient

    from acorn.serve.app import create_app

    with TestClient(create_app(engine)) as c:
        assert c.get("/v1/agent/tools").json()["data"] == []
        r = c.post("/v1/agent", json={"task": "x"})
        assert r.status_code == 404 and "--tools" in r.json()["error"]["message"]
