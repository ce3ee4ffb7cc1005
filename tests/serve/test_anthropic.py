"""POST /v1/messages against a live server, through the official anthropic SDK.

The server is the session's (tests/serve/conftest.py): a tiny random Llama in
the acorn chat format, so replies are gibberish; the tests check the API's
shapes and the properties that hold for any model (greedy replies agree across
paths, stop sequences cut, forced tool calls validate against their schemas).
max_tokens stays small: the model rambles until it runs out.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import jsonschema
import pytest

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ADD = {
    "name": "add",
    "description": "Add two small numbers.",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                       "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
SCHEMAS = {t["name"]: t["input_schema"] for t in (WEATHER, ADD)}
HELLO = [{"role": "user", "content": "Once upon a time there was a little model."}]


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=60)


def sampling(kw: dict) -> dict:
    """This SDK no longer names temperature, top_k and top_p: they travel in extra_body, as any client sends them."""
    extra = {k: kw.pop(k) for k in ("temperature", "top_k", "top_p") if k in kw}
    return {**kw, "extra_body": {**kw.pop("extra_body", {}), **extra}} if extra else kw


def create(client, **kw):
    kw.setdefault("model", "tiny")
    kw.setdefault("messages", HELLO)
    return client.messages.create(**sampling(kw))


def stream(client, **kw):
    kw.setdefault("model", "tiny")
    kw.setdefault("messages", HELLO)
    return client.messages.stream(**sampling(kw))


def greedy(client, messages=HELLO, **kw):
    kw.setdefault("max_tokens", 12)
    return create(client, messages=messages, temperature=0, **kw)


def text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def prompt_len(server, messages, tools=None) -> int:
    """The prompt the engine renders for these OpenAI-style messages (reads only the tokenizer)."""
    return len(server.engine.chat_prompt(messages, tools=tools))


def openai_tools(*tools):
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["input_schema"]}} for t in tools]


# ------------------------------------------------------------------ plain messages
def test_message_shape_and_usage(client, server):
    m = greedy(client, max_tokens=6)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "tiny"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.output_tokens == 6
    # Anthropic's accounting: input_tokens are the prompt tokens not read from the cache.
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == prompt_len(server, HELLO)
    assert m._request_id == m.id


def test_max_tokens_zero_warms_the_cache(client):
    m = create(client, max_tokens=0)
    assert m.content == [] and m.stop_reason == "max_tokens" and m.usage.output_tokens == 0


def test_prefix_cache_is_reported(client, server):
    messages = [{"role": "user", "content": "A small acorn grows into a tall oak tree. The cat sat on the mat. " * 3}]
    n = prompt_len(server, messages)
    assert n > 40  # more than two KV blocks of 16
    greedy(client, messages, max_tokens=2)
    again = greedy(client, messages, max_tokens=2)
    assert again.usage.cache_read_input_tokens >= 32
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == n


def test_system_prompt_is_rendered(client, server):
    system = "You are a tall oak tree."
    with_system = greedy(client, system=system, max_tokens=2)
    as_blocks = greedy(client, system=[{"type": "text", "text": system}], max_tokens=2)
    expected = prompt_len(server, [{"role": "system", "content": system}, *HELLO])
    for m in (with_system, as_blocks):
        assert m.usage.input_tokens + m.usage.cache_read_input_tokens == expected
    assert client.messages.count_tokens(model="tiny", messages=HELLO, system=system).input_tokens == expected


def test_sampling_parameters(client):
    reference = text_of(greedy(client))
    # top_k=1 and a tiny top_p leave only the most likely token: greedy at any temperature.
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        m = create(client, max_tokens=12, temperature=1.0, **kw)
        assert text_of(m) == reference
    m = create(client, max_tokens=4, temperature=0.7, top_k=20, top_p=0.9, metadata={"user_id": "someone"})
    assert m.usage.output_tokens <= 4


def test_stop_sequences(client):
    full = text_of(greedy(client, max_tokens=20))
    assert len(full) >= 8
    stop = full[4:7]
    cut = full[:full.find(stop)]
    m = greedy(client, max_tokens=20, stop_sequences=["\u2603 never", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert text_of(m) == cut and stop not in text_of(m)
    with stream(client, max_tokens=20, temperature=0, stop_sequences=[stop]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == cut and final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_structured_output_ends_its_turn(client):
    """output_config.format: the text is JSON valid against the schema, and it ends at the
    end-of-turn token: end_turn, even with a stop sequence (which a grammar's output ignores)."""
    for temperature in (0.0, 1.0):
        m = create(client, max_tokens=60, temperature=temperature, stop_sequences=["}"],
                   output_config={"format": {"type": "json_schema", "schema": ADD["input_schema"]}})
        jsonschema.validate(json.loads(text_of(m)), ADD["input_schema"])
        assert m.stop_reason == "end_turn" and m.stop_sequence is None


# ------------------------------------------------------------------ streaming
def test_stream_helper_matches_the_message(client):
    reference = greedy(client, max_tokens=16)
    with stream(client, max_tokens=16, temperature=0) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 1  # flushed as tokens come, not in one piece at the end
    assert "".join(pieces) == text_of(final) == text_of(reference)
    assert final.stop_reason == reference.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 16
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == (
        reference.usage.input_tokens + reference.usage.cache_read_input_tokens)


def test_raw_event_sequence(client):
    events = list(create(client, max_tokens=8, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert events[1].index == 0 and events[1].content_block.type == "text"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == text_of(greedy(client, max_tokens=8))
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 8


def test_sse_wire_format(server):
    """event:/data: pairs, a ping after message_start, as Anthropic sends them."""
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    for f in frames:
        event, data = f.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
    assert [f.split("\n")[0][7:] for f in frames][:2] == ["message_start", "ping"]


# A JSON string of at least 20,000 characters cannot end before max_tokens: without
# an abort, a request for 900 tokens runs on to all 900 (about a second here).
ENDLESS = {"format": {"type": "json_schema", "schema": {"type": "string", "minLength": 20000}}}


def wait_idle(acorn):
    """Until no request runs, seen in several polls in a row (one read can fall between steps)."""
    deadline, idle = time.monotonic() + 10, 0
    while idle < 5 and time.monotonic() < deadline:
        idle = idle + 1 if acorn.metrics()["running_requests"] == 0 else 0
        time.sleep(0.02)
    assert idle == 5


def test_disconnect_aborts_the_stream(client, server):
    acorn = server.app.state.acorn.engine
    before = acorn.generated_tokens
    with stream(client, max_tokens=900, output_config=ENDLESS) as s:
        next(iter(s.text_stream))
    wait_idle(acorn)
    assert acorn.generated_tokens - before < 900


def test_disconnect_aborts_a_non_streaming_request(server):
    acorn = server.app.state.acorn.engine
    before = acorn.generated_tokens
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 900, "output_config": ENDLESS}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/messages", json=body, timeout=httpx.Timeout(60, read=0.3))
    wait_idle(acorn)
    assert acorn.generated_tokens - before < 900


# ------------------------------------------------------------------ tools
def check_tool_use(message):
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls and message.stop_reason == "tool_use"
    for b in calls:
        assert b.id.startswith("toolu_") and b.name in SCHEMAS
        jsonschema.validate(b.input, SCHEMAS[b.name])
    return calls


@pytest.mark.parametrize("seed_temperature", [0.0, 1.0])
def test_tool_choice_any(client, seed_temperature):
    m = create(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}], max_tokens=200,
               temperature=seed_temperature, tools=[WEATHER, ADD], tool_choice={"type": "any"})
    check_tool_use(m)
    assert not text_of(m)  # forced: the reply is the call


def test_tool_choice_tool_streamed(client):
    kw = dict(messages=[{"role": "user", "content": "Add 2 and 3."}], max_tokens=200, tools=[WEATHER, ADD],
              tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True})
    events = list(create(client, stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    block = events[1].content_block
    assert block.type == "tool_use" and block.name == "add" and block.id.startswith("toolu_")
    partial = "".join(e.delta.partial_json for e in events[2:-3])
    jsonschema.validate(json.loads(partial), ADD["input_schema"])
    assert events[-2].delta.stop_reason == "tool_use"
    with stream(client, **kw) as s:
        final = s.get_final_message()
    (call,) = check_tool_use(final)  # one call: parallel use is off
    assert call.name == "add" and not text_of(final)


def test_tool_choice_auto_and_none(client, server):
    """auto shows the tools to the model; none does not (and parses nothing)."""
    for choice, tools in (({"type": "auto"}, openai_tools(WEATHER)), ({"type": "none"}, None)):
        m = create(client, max_tokens=8, temperature=0, tools=[WEATHER], tool_choice=choice)
        assert m.usage.input_tokens + m.usage.cache_read_input_tokens == prompt_len(server, HELLO, tools)
        assert m.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_prefill_is_continued(client, server):
    prefill = "Once upon a time"
    m = greedy(client, messages=[*HELLO, {"role": "assistant", "content": prefill}], max_tokens=5)
    tok = server.engine.tokenizer
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == prompt_len(server, HELLO) + len(tok.encode(prefill))
    assert m.usage.output_tokens == 5 and not text_of(m).startswith(prefill)


def test_tool_result_round_trip(client, server):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 degrees, sunny"},
            {"type": "text", "text": "Thanks!"}]},
    ]
    m = client.messages.create(model="tiny", messages=messages, max_tokens=4, tools=[WEATHER])
    assert m.type == "message"
    expected = prompt_len(server, [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_01", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18 degrees, sunny"},
        {"role": "user", "content": "Thanks!"},
    ], tools=openai_tools(WEATHER))
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == expected
    # The same with the result's content as blocks.
    messages[2]["content"][0]["content"] = [{"type": "text", "text": "18 degrees, sunny"}]
    assert client.messages.count_tokens(model="tiny", messages=messages, tools=[WEATHER]).input_tokens == expected


def test_stream_holds_back_a_tool_call():
    """Streaming with tools: text that may open a tool call is held back until it cannot."""
    from acorn.serve.anthropic_api import _Request

    ctx = _Request.__new__(_Request)
    ctx.parse, ctx.fmt = True, "acorn"
    assert ctx.split("Hello <|tool", "") == ("Hello ", "<|tool", False)
    assert ctx.split("Hello <|toolbox", "") == ("Hello <|toolbox", "", False)
    assert ctx.split('Sure.<|tool_call|>{"na', "") == ("Sure.", '<|tool_call|>{"na', True)
    ctx.fmt = "chatml"
    assert ctx.split("Sure.\n", "") == ("Sure.", "\n", False)
    assert ctx.split("Sure.\n<tool_call>", "") == ("Sure.", "\n<tool_call>", True)
    ctx.fmt = "llama3"  # which may also answer with a bare JSON call
    assert ctx.split("  ", "") == ("", "  ", False)
    assert ctx.split(' {"name"', "") == ("", ' {"name"', True)
    assert ctx.split("Hi <|python", "") == ("Hi ", "<|python", False)
    assert ctx.split("{braces} later", "Text before. ") == ("{braces} later", "", False)


# ------------------------------------------------------------------ errors
def expect_error(status: int, kind: str, call):
    with pytest.raises(anthropic.APIStatusError) as info:
        call()
    e = info.value
    assert e.status_code == status
    assert e.body["type"] == "error" and e.body["error"]["type"] == kind and e.body["error"]["message"]
    return e.body["error"]["message"]


def test_errors(client):
    message = expect_error(400, "invalid_request_error", lambda: client.messages.create(
        model="tiny", messages=HELLO, max_tokens=anthropic.omit))
    assert "max_tokens" in message
    message = expect_error(400, "invalid_request_error", lambda: client.messages.create(
        model="tiny", messages=[{"role": "system", "content": "hi"}], max_tokens=4))
    assert "role" in message
    message = expect_error(404, "not_found_error", lambda: client.messages.create(
        model="claude-nonexistent", messages=HELLO, max_tokens=4))
    assert "claude-nonexistent" in message
    expect_error(404, "not_found_error", lambda: client.messages.create(
        model="claude-nonexistent", messages=HELLO, max_tokens=4, stream=True))
    expect_error(400, "invalid_request_error", lambda: create(client, max_tokens=4, temperature=1.5))
    for tools, choice in (([WEATHER], {"type": "tool", "name": "nope"}), ([], {"type": "any"}),
                          ([WEATHER, WEATHER], {"type": "auto"}),
                          ([{**ADD, "input_schema": {"type": "string"}}], {"type": "auto"})):
        expect_error(400, "invalid_request_error", lambda: client.messages.create(
            model="tiny", messages=HELLO, max_tokens=4, tools=tools, tool_choice=choice))
    message = expect_error(400, "invalid_request_error", lambda: client.messages.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "x"}]}]))
    assert "toolu_unknown" in message
    message = expect_error(400, "invalid_request_error", lambda: client.messages.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]))
    assert "image" in message
    expect_error(400, "invalid_request_error", lambda: client.messages.create(
        model="tiny", messages=HELLO, max_tokens=4, extra_body={"thinking": {"type": "enabled"}}))
