"""The server against hostile or broken inputs: a model whose logits are not
finite fails only the request that meets them (500 with the reason; the engine
thread goes on), a seed outside 64 bits is a 400 naming it, and an empty API
key is refused when the app is made."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from acorn.errors import AcornError

from .conftest import run_server

POISON = 1  # the byte \x01: its embedding is NaN in the poisoned server; no ordinary text holds it
BAD = [{"role": "user", "content": "hello \x01"}]  # the poison token in the prompt: NaN from the prefill on
GOOD = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def poisoned(checkpoint):
    from acorn.infer import Engine
    from acorn.serve.app import create_app

    engine = Engine.from_pretrained(checkpoint, device="cpu")
    with torch.no_grad():
        engine.model.model.embed_tokens.weight[POISON] = float("nan")
    srv = run_server(create_app(engine, model_name="tiny"), engine)
    yield srv
    srv.stop()


def _sse(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        assert r.status_code == 200  # the status line goes out before the first token
        return [line for line in r.iter_lines() if line.startswith("data: ")]


def test_non_finite_logits_fail_that_request_alone_and_the_server_goes_on(poisoned):
    url = poisoned.url
    healthy = {"model": "tiny", "messages": GOOD, "max_tokens": 4, "logit_bias": {str(POISON): -100}}
    for _ in range(2):  # the second round proves the first did not stop the engine thread
        # The repro: sampling at temperature 0.8 (torch.multinomial of NaN used to kill the thread).
        r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": BAD, "max_tokens": 4,
                                                           "temperature": 0.8}, timeout=60)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["type"] == "server_error" and "not finite" in r.json()["error"]["message"]
        # Generating the poison token mid-reply fails at the next step, after text went out.
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": [389, 104, 105], "max_tokens": 4,
                                                      "temperature": 0, "logit_bias": {str(POISON): 100}}, timeout=60)
        assert r.status_code == 500 and "not finite" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/messages", json={"model": "tiny", "messages": BAD, "max_tokens": 4}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
        assert "not finite" in r.json()["error"]["message"]
        # Streaming: the headers are out, the error comes as an event.
        events = _sse(url + "/v1/chat/completions", {"model": "tiny", "messages": BAD, "max_tokens": 4,
                                                      "stream": True})
        assert "not finite" in json.loads(events[-1][len("data: "):])["error"]["message"]
        events = _sse(url + "/v1/messages", {"model": "tiny", "messages": BAD, "max_tokens": 4, "stream": True})
        assert json.loads(events[-1][len("data: "):])["error"]["type"] == "api_error"

        r = httpx.post(url + "/v1/chat/completions", json=healthy, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
        assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert poisoned.engine.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 63, -2 ** 63 - 1, 10 ** 30])
def test_a_seed_outside_64_bits_is_a_400_naming_it(server, path, seed):
    body = {"model": "tiny", "max_tokens": 2, "seed": seed,
            **({"messages": GOOD} if "chat" in path else {"prompt": "hello"})}
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "seed"
    # The largest 64-bit seed is a seed like any other, and the server still serves.
    r = httpx.post(server.url + path, json={**body, "seed": 2 ** 63 - 1}, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("keys", [[""], ["  "], ["good", ""], [" padded "]])
def test_an_empty_api_key_is_refused_when_the_app_is_made(checkpoint, keys):
    from acorn.serve.app import create_app

    with pytest.raises(AcornError, match="API key"):
        create_app(checkpoint, api_keys=keys)
