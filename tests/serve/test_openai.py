"""The OpenAI API, driven by the official `openai` SDK (httpx where the SDK
hides what is under test: raw events, status codes, headers).

Oracles: Acorn's own Engine on the same checkpoint for the text (the server
must add nothing and lose nothing), transformers for log-probabilities and
hidden states, jsonschema for constrained outputs and tool arguments. The
model is tiny and random, so replies are bounded by max_tokens and, where
validity is the point, constrained."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import jsonschema
import openai
import pytest
import torch

from acorn.infer import Engine

from .conftest import run_server

USER = [{"role": "user", "content": "What is the weather in Paris?"}]

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 9}},
           "required": ["city", "days"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "boolean"}}, "required": ["a", "b"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The oracle: the same checkpoint in an Engine of its own (the server's is busy in its thread)."""
    return Engine.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def hf(checkpoint):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(checkpoint).eval()


def _events(url: str, path: str, body: dict) -> list:
    """The raw server-sent events of a streaming request: JSON objects, and '[DONE]'."""
    out = []
    with httpx.stream("POST", url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", line
    return out


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# ------------------------------------------------------------------ models
def test_models_list_and_retrieve(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "acorn"
    assert openai_client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("gpt-4o")


# ------------------------------------------------------------------ chat
def test_chat_is_the_engines_greedy_reply(openai_client, engine):
    r = openai_client.chat.completions.create(model="tiny", messages=USER, max_tokens=12, temperature=0)
    prompt = engine.chat_prompt(USER)
    (want,) = engine.generate([prompt], temperature=0, max_new_tokens=12)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == len(prompt) + len(want.token_ids)


def test_chat_content_parts_system_and_developer_roles(openai_client, engine):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is the weather "},
                                             {"type": "text", "text": "in Paris?"}]}]
    r = openai_client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    prompt = engine.chat_prompt([{"role": "system", "content": "Be brief."}] + USER)
    assert r.usage.prompt_tokens == len(prompt)


def test_chat_stream_matches_the_whole_reply(server, openai_client):
    body = {"model": "tiny", "messages": USER, "max_tokens": 12, "temperature": 0}
    whole = openai_client.chat.completions.create(**body)
    events = _events(server.url, "/v1/chat/completions", {**body, "stream": True,
                                                          "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole.usage.model_dump(exclude_none=True) | {
        "prompt_tokens_details": {"cached_tokens": usage["usage"]["prompt_tokens_details"]["cached_tokens"]}}
    finals = [c for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0] is chunks[-2]
    assert finals[0]["choices"][0]["finish_reason"] == whole.choices[0].finish_reason
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content
    # The SDK reads the same stream.
    sdk = openai_client.chat.completions.create(**body, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in sdk if c.choices) == text


def test_chat_n_samples_and_their_stream(server, openai_client, engine):
    body = {"model": "tiny", "messages": USER, "max_tokens": 8, "n": 3, "seed": 7}
    r = openai_client.chat.completions.create(**body)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    want = engine.generate([engine.chat_prompt(USER)], n=3, seed=7, max_new_tokens=8)  # sample j: seed 7 + j
    assert texts == [c.text for c in want] and len(set(texts)) > 1
    assert r.usage.completion_tokens == sum(len(c.token_ids) for c in want)
    events = _events(server.url, "/v1/chat/completions", {**body, "stream": True})
    streamed = {i: "" for i in range(3)}
    finished = set()
    for c in events[:-1]:
        (choice,) = c["choices"]
        streamed[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert finished == {0, 1, 2} and [streamed[i] for i in range(3)] == texts


def test_seed_reproduces_a_sample(openai_client):
    def sample(seed):
        return openai_client.chat.completions.create(model="tiny", messages=USER, max_tokens=16, temperature=1.0,
                                                      seed=seed).choices[0].message.content

    assert sample(123) == sample(123)
    assert len({sample(123), sample(124), sample(125)}) > 1


def test_stop_sequence_cuts_the_text_and_never_leaks(server, openai_client):
    body = {"model": "tiny", "messages": USER, "max_tokens": 24, "temperature": 0}
    full = openai_client.chat.completions.create(**body).choices[0].message.content
    assert len(full) > 6
    stop = full[4:6]
    cut = full[:full.index(stop)]
    r = openai_client.chat.completions.create(**body, stop=[stop, "never-there"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    events = _events(server.url, "/v1/chat/completions", {**body, "stop": stop, "stream": True})
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1]) == cut


def test_chat_logprobs_are_the_models(openai_client, engine, hf):
    r = openai_client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    prompt = engine.chat_prompt(USER)
    (want,) = engine.generate([prompt], temperature=0, max_new_tokens=6)
    ids = want.token_ids[:len(content)]
    assert len(content) == len(want.token_ids) - (want.finish_reason == "stop")
    assert b"".join(bytes(e.bytes) for e in content) == engine.tokenizer.decode_bytes(ids)
    assert r.choices[0].message.content == want.text
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    for e, i, row in zip(content, ids, logits):
        assert e.logprob == pytest.approx(float(row[i]), abs=1e-4)
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)  # greedy: the top token


# ------------------------------------------------------------------ completions
def test_completions_text_ids_n_and_logprobs(openai_client, engine, hf):
    ids = engine.encode("The cat sat")
    r = openai_client.completions.create(model="tiny", prompt=[ids, engine.encode("A small acorn")], max_tokens=5, temperature=0,
                                         logprobs=2, n=2)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2, 3]
    (want,) = engine.generate([ids], temperature=0, max_new_tokens=5)
    assert r.choices[0].text == r.choices[1].text == want.text
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == want.text and len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(5)]
    with torch.no_grad():
        logits = hf(torch.tensor([ids + want.token_ids])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
    assert lp.token_logprobs == pytest.approx([float(row[t]) for row, t in zip(logits, want.token_ids)], abs=1e-4)
    assert r.usage.prompt_tokens == len(ids) + len(engine.encode("A small acorn"))
    assert r.usage.completion_tokens == 20


def test_completions_stream_and_echo(server, openai_client):
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    whole = openai_client.completions.create(**body, echo=True)
    assert whole.choices[0].text.startswith("Once upon a time")
    events = _events(server.url, "/v1/completions", {**body, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["text"] for c in events[:-2])
    assert "Once upon a time" + text == whole.choices[0].text
    assert events[-3]["choices"][0]["finish_reason"] == "length"


def test_prefix_cache_shows_in_usage(openai_client):
    long = "A small acorn grows into a tall oak tree. " * 6 + "Tell me about the fox (openai usage test)."
    messages = [{"role": "user", "content": long}]
    first = openai_client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    second = openai_client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens and cached % 16 == 0  # whole KV blocks


# ------------------------------------------------------------------ tools
def _check_calls(message, names):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_tool_choice_required_and_named_always_give_valid_calls(openai_client):
    for seed in range(3):
        r = openai_client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=80, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        _check_calls(choice.message, {"get_weather", "add"})
        named = openai_client.chat.completions.create(
            model="tiny", messages=USER, tools=TOOLS, max_tokens=80, seed=seed,
            tool_choice={"type": "function", "function": {"name": "add"}})
        assert named.choices[0].finish_reason == "tool_calls"
        _check_calls(named.choices[0].message, {"add"})


def test_tool_calls_stream_as_tool_call_deltas(server):
    events = _events(server.url, "/v1/chat/completions", {
        "model": "tiny", "messages": USER, "tools": TOOLS, "max_tokens": 80, "seed": 1, "stream": True,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    deltas = [c["choices"][0] for c in events[:-1]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == ""  # the call's text is not content
    (calls,) = [d["delta"]["tool_calls"] for d in deltas if d["delta"].get("tool_calls")]
    assert [c["index"] for c in calls] == [0] and calls[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), WEATHER)
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_tools_auto_are_in_the_prompt_and_history_renders(openai_client, engine):
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = openai_client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=40, seed=0)
    tools = [{"type": "function", "function": t["function"]} for t in TOOLS]
    assert r.usage.prompt_tokens == len(engine.chat_prompt(history, tools=tools))
    message = r.choices[0].message
    if message.tool_calls:  # a random model rarely calls; when it does, the call is parsed out of the text
        assert r.choices[0].finish_reason in ("tool_calls", "length")
        assert "<|tool_call|>" not in (message.content or "")
    none = openai_client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, tool_choice="none",
                                                 max_tokens=1)
    assert none.usage.prompt_tokens == len(engine.chat_prompt(USER))


# ------------------------------------------------------------------ structured output
def test_response_format_json_schema_validates(openai_client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                             "maximum": 999}},
              "required": ["ok", "n"], "additionalProperties": False}
    for seed in range(3):
        r = openai_client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=40, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_response_format_json_object_parses(openai_client, engine):
    # A random model inside a JSON string rarely closes it: nudge the quote and the brace.
    bias = {str(engine.tokenizer.encode(c)[0]): 6 for c in ('"', "}")}
    r = openai_client.chat.completions.create(model="tiny", messages=USER, max_tokens=60, seed=0, logit_bias=bias,
                                              response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


# ------------------------------------------------------------------ embeddings
def test_embeddings_are_normalised_mean_hidden_states(openai_client, engine):
    # The vectors' math is held to transformers in tests/rag/test_embeddings.py; here, that the route serves them.
    from acorn.rag.embeddings import embed

    texts = ["The cat sat on the mat.", "A small acorn", "The cat sat on the mat."]
    r = openai_client.embeddings.create(model="tiny", input=texts)  # the SDK asks for base64 and decodes it
    vectors = torch.tensor([d.embedding for d in r.data])
    assert vectors.shape == (3, 32) and [d.index for d in r.data] == [0, 1, 2]
    assert vectors.norm(dim=1) == pytest.approx([1, 1, 1], abs=1e-5)
    assert torch.equal(vectors[0], vectors[2])  # deterministic, and padding in the batch changes nothing
    assert not torch.allclose(vectors[0], vectors[1])
    ids = [engine.encode(t) for t in texts]
    assert r.usage.prompt_tokens == sum(map(len, ids))
    torch.testing.assert_close(vectors, embed(engine.model, ids), atol=1e-6, rtol=0)
    floats = openai_client.embeddings.create(model="tiny", input=ids[1], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[1].tolist(), abs=1e-6)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("change, param", [
    ({"temperature": -1}, "temperature"),
    ({"n": 0}, "n"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_invalid_fields_are_400_naming_the_field(server, change, param):
    body = {"model": "tiny", "messages": USER, "max_tokens": 2, **change}
    error = _error(httpx.post(server.url + "/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_sdk_raises_status_errors(openai_client):
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="tiny", messages=USER, temperature=-1)
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-4o", messages=USER)
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"


def test_bad_json_unknown_route_and_engine_rejections(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    _error(r, 400)
    _error(httpx.get(server.url + "/v1/nothing"), 404)
    # logit_bias outside the vocabulary: the engine's check, as a 400
    body = {"model": "tiny", "messages": USER, "max_tokens": 2, "logit_bias": {"999999": 5}}
    assert "vocabulary" in _error(httpx.post(server.url + "/v1/chat/completions", json=body), 400)["message"]


def test_prompt_longer_than_the_context_is_400_with_both_numbers(server):
    body = {"model": "tiny", "prompt": "oak " * 1200, "max_tokens": 2}
    error = _error(httpx.post(server.url + "/v1/completions", json=body), 400)
    numbers = [int(n) for n in re.findall(r"\d+", error["message"])]
    assert 1024 in numbers and any(n > 1024 for n in numbers) and error["code"] == "context_length_exceeded"
    assert "max_tokens is 5000" in _error(httpx.post(server.url + "/v1/completions", json={
        "model": "tiny", "prompt": "oak", "max_tokens": 5000}), 400)["message"]  # over max_tokens_cap


def test_internal_errors_are_500_without_a_traceback(server, monkeypatch):
    import acorn.serve.openai_api as api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(api, "embed", broken)
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": "hi"})
    error = _error(r, 500)
    assert error["type"] == "server_error" and "secret" not in r.text and "Traceback" not in r.text


def test_oversized_body_is_413(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER,
                                                             "pad": "x" * (1 << 20)})
    _error(r, 413)

    def chunks():  # no Content-Length: the streamed body is counted
        for _ in range(20):
            yield b"x" * 100_000

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413)


# ------------------------------------------------------------------ operations
def test_api_keys_cors_and_open_health(start_server):
    srv = start_server(api_keys=["k1", "k2"], cors_origins=["http://page.example"])
    url = srv.url + "/v1/models"
    assert _error(httpx.get(url), 401)["code"] == "invalid_api_key"
    _error(httpx.get(url, headers={"Authorization": "Bearer nope"}), 401)
    assert httpx.get(url, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert httpx.get(url, headers={"x-api-key": "k1"}).status_code == 200
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=srv.url + "/v1", api_key="k1", max_retries=0).models.list().data[0].id == "tiny"
    pre = httpx.options(url, headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://page.example"
    other = httpx.get(url, headers={"Origin": "http://evil.example", "x-api-key": "k1"})
    assert "access-control-allow-origin" not in other.headers


def test_full_queue_is_429_with_retry_after(start_server):
    srv = start_server(max_pending=0)
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 2})
    _error(r, 429)
    assert r.headers["retry-after"] == "1"
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)


def test_503_until_the_model_is_loaded(checkpoint, tmp_path):
    from fastapi.testclient import TestClient

    from acorn.serve.app import create_app

    app = create_app(checkpoint)
    client = TestClient(app)  # no `with`: the lifespan never runs, so the model is never loaded
    assert client.get("/health").status_code == 503
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
    _error(r, 503)
    assert r.headers["retry-after"] == "1"
    # A checkpoint directory loads in the background once the server starts.
    srv = run_server(create_app(checkpoint, model_name="bg"))
    try:
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/health").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(srv.url + "/v1/completions", json={"model": "bg", "prompt": "The", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "bg"
    finally:
        srv.stop()
    broken = run_server(create_app(tmp_path))  # not a checkpoint: /health says why
    try:
        deadline = time.monotonic() + 10
        while (h := httpx.get(broken.url + "/health").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h["status"] == "error" and "config.json" in h["message"]
    finally:
        broken.stop()


def _metrics(url: str) -> dict:
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[re.sub(r"\{model=\"[^\"]*\"", "{", name).replace("{}", "").replace("{,", "{")] = float(value)
    return out


def test_disconnect_aborts_the_request_and_metrics_count(start_server):
    srv = start_server()
    body = {"model": "tiny", "messages": USER, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if '"content":' in line and '"role"' not in line)  # generating now
    deadline = time.monotonic() + 10
    while (m := _metrics(srv.url))["acorn_running_requests"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m["acorn_running_requests"] == 0 and m["acorn_kv_blocks_in_use"] == 0
    assert m["acorn_requests_total"] == 1 and 0 < m["acorn_generation_tokens_total"] < 900
    assert m["acorn_kv_blocks_total"] > 0 and m['acorn_time_to_first_token_seconds{quantile="0.5"}'] > 0
    engine = srv.engine
    assert not engine.has_unfinished() and not engine._groups  # the engine forgot it


def test_shutdown_lets_requests_in_flight_finish(start_server):
    srv = start_server(shutdown_grace=5.0)
    body = {"model": "tiny", "messages": USER, "max_tokens": 60, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if '"content":' in line and '"role"' not in line)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        rest = list(lines)
    stopper.join(30)
    assert rest[-2:] == ["data: [DONE]", ""] and '"finish_reason":"length"' in "".join(rest).replace(" ", "")
    assert not srv.thread.is_alive() and not srv.app.state.acorn.engine.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health")


# ------------------------------------------------------------------ acorn serve
def test_cli_serve_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    from acorn.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acorn: error:") and "missing" in err


def test_cli_serve_runs_a_server(checkpoint):
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACORN_API_KEY": "sekret"}
    proc = subprocess.Popen([sys.executable, "-m", "acorn", "serve", str(checkpoint), "--port", str(port),
                             "--model-name", "cli", "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert proc.stdout.readline().startswith(f"serving 'cli' at {url}/v1")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0)
        assert client.completions.create(model="cli", prompt="The", max_tokens=3).usage.completion_tokens == 3
        assert httpx.get(url + "/v1/models").status_code == 401  # $ACORN_API_KEY was picked up
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_a_vanishing_temperature_or_extreme_penalty_cannot_stop_the_engine(server):
    """Found by fuzzing: temperature 1e-50 rounded to 0 in float32, the sampler
    raised in the engine thread and every later request got 503."""
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4}
    r = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 1e-50})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    r = httpx.post(server.url + "/v1/completions", json={**body, "repetition_penalty": 1e-45})
    assert r.status_code == 400 and "repetition_penalty" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.post(server.url + "/v1/completions", json=body).status_code == 200
