"""The server under load: many clients at once, clients that leave, a full
queue, fuzzed requests, shutdown with requests in flight, a broken engine.

What must hold, whatever the load:
  - every stream is well formed (server-sent events, `data: <json>` and a
    blank line each, the role first, one finish_reason per choice and nothing
    of that choice after it, `data: [DONE]` last) and says what the same
    request made alone says (the seed fixes the sample);
  - a client that goes away costs nothing afterwards: once everyone has gone,
    no KV block is in use, nothing runs, nothing waits (/metrics and the
    engine agree), and the server answers as before;
  - a full queue is answered 429 with Retry-After in the OpenAI error shape,
    never a timeout; exactly max_pending requests are taken, and succeed;
  - no request the OpenAPI schema describes (or one that breaks it) is
    answered 5xx (schemathesis);
  - stopping the server ends every request in flight (cut, when it outlasts
    the grace) and its threads; an engine that dies fails its requests and
    /health says why.

Clients are httpx on one event loop; the server is uvicorn in a thread of
this process (conftest), so its state is at hand to check, and StepGate can
hold the engine's steps back: requests then pile up exactly as behind a slow
engine, without depending on how fast this machine is. The model is tiny and
random: replies are bounded by max_tokens, and `ignore_eos` makes a request
as long as asked."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PROMPTS = ["Tell me about the acorn.", "What is the weather in Paris?", "Once upon a time",
           "The cat sat on the mat.", "Why does the oak grow tall?", "A small model learned to speak."]


def chat_body(seed: int, *, stream: bool, max_tokens: int = 16, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[seed % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "stream": stream, **extra}


# ------------------------------------------------------------------ checks
def sse_events(raw: str) -> list:
    """The events of a whole server-sent-event body: parsed JSON chunks, then
    '[DONE]' last. Fails on anything that is not `data: ...` + blank line."""
    assert raw.endswith("\n\n"), f"the stream does not end with a blank line: {raw[-200:]!r}"
    events = []
    for event in raw[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, f"not a one-line data event: {event!r}"
        data = event[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, events[-3:]
    return events


def chat_stream_text(raw: str, *, max_tokens: int, n: int = 1) -> tuple[list[str], dict | None]:
    """The texts of a well-formed chat completion stream (one per choice) and its usage chunk, if any."""
    events = sse_events(raw)
    chunks = events[:-1]
    assert chunks, "no chunk before [DONE]"
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-"), ids
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    usage = None
    if chunks[-1]["choices"] == [] and "usage" in chunks[-1]:  # stream_options.include_usage: last, no choices
        usage = chunks.pop()["usage"]
    texts, finished, first = [""] * n, [None] * n, [True] * n
    for c in chunks:
        assert len(c["choices"]) == 1, c
        choice = c["choices"][0]
        i = choice["index"]
        assert finished[i] is None, f"choice {i} has a chunk after its finish_reason: {c}"
        delta = choice["delta"]
        if first[i]:  # the first chunk of a choice names the role
            assert delta.get("role") == "assistant", c
            first[i] = False
        else:
            assert "role" not in delta, c
        texts[i] += delta.get("content") or ""
        finished[i] = choice["finish_reason"]
    for i in range(n):
        assert finished[i] in ("stop", "length"), f"choice {i} ended without a finish_reason ({finished[i]!r})"
    if usage is not None:
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] <= max_tokens * n, usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
        if all(f == "length" for f in finished):  # cut by max_tokens: every token it allowed
            assert usage["completion_tokens"] == max_tokens * n, (usage, finished)
    return texts, usage


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def metrics(url: str) -> dict:
    """GET /metrics as {name: value}, the model label dropped (quantiles keep theirs)."""
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[re.sub(r"\{model=\"[^\"]*\",?", "{", name).replace("{}", "")] = float(value)
    return out


def settle(srv, seconds: float = 10.0) -> dict:
    """Wait (up to `seconds`) for the server to be idle: nothing queued or running, no KV block
    in use; returns the last /metrics. Idle is asserted by the caller, so a leak fails there."""
    deadline = time.monotonic() + seconds
    while True:
        m = metrics(srv.url)
        idle = m["acorn_queue_depth"] == 0 and m["acorn_running_requests"] == 0 and m["acorn_kv_blocks_in_use"] == 0
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def assert_idle(srv) -> None:
    m = settle(srv)
    assert m["acorn_queue_depth"] == 0 and m["acorn_running_requests"] == 0, m
    assert m["acorn_kv_blocks_in_use"] == 0, m
    engine = srv.engine  # the same figures from the engine itself, and nothing remembered
    stats = engine.stats()
    assert stats["blocks_in_use"] == 0 and stats["running"] == 0 and stats["waiting"] == 0, stats
    assert not engine.has_unfinished() and not engine._groups
    async_engine = srv.app.state.acorn.engine
    assert async_engine.pending == 0 and not async_engine._streams
    assert async_engine.error is None, async_engine.error


def assert_answers(srv) -> None:
    """A normal request after the load: a whole, sensible reply."""
    assert httpx.get(srv.url + "/health", timeout=30).status_code == 200
    r = httpx.post(srv.url + CHAT, json=chat_body(7, stream=False, max_tokens=5, ignore_eos=True), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5


class StepGate:
    """The engine takes no step until `ready()` (then every step, as usual):
    requests pile up meanwhile, as behind an engine too slow to take them, but
    deterministically. `unfinished`: the requests in the engine when the
    first step went through. hold() closes the gate again."""

    def __init__(self, engine, ready):
        self.engine, self.step = engine, engine.step
        self.hold(ready)
        engine.step = self

    def hold(self, ready) -> None:
        self.ready, self.unfinished = ready, None
        self.deadline = time.monotonic() + 60  # a test that never opens it fails, rather than hangs

    def __call__(self):
        if self.unfinished is None:
            if not self.ready() and time.monotonic() < self.deadline:
                time.sleep(0.002)  # the engine thread would otherwise spin on the GIL
                return []
            self.unfinished = self.engine.scheduler.num_unfinished
        return self.step()


# ------------------------------------------------------------- 64 streams at once
def test_64_concurrent_streams_are_well_formed_and_say_what_a_lone_request_says(start_server):
    srv = start_server()
    clients = 64  # the engine's default max_num_seqs: one running batch
    gate = StepGate(srv.engine, lambda: srv.engine.scheduler.num_unfinished >= clients)

    async def one(client, seed):
        body = chat_body(seed, stream=True, stream_options={"include_usage": seed % 2 == 0})
        async with client.stream("POST", srv.url + CHAT, json=body) as r:
            raw = "".join([t async for t in r.aiter_text()])
            return r.status_code, r.headers.get("content-type", ""), raw

    async def main():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
            return await asyncio.gather(*(one(client, seed) for seed in range(clients)))

    results = asyncio.run(main())
    assert gate.unfinished == clients  # all of them were in the engine at once
    texts = {}
    for seed, (status, content_type, raw) in enumerate(results):
        assert status == 200, raw
        assert content_type.startswith("text/event-stream")
        (texts[seed],), usage = chat_stream_text(raw, max_tokens=16)
        assert (usage is not None) == (seed % 2 == 0)
    assert len(set(texts.values())) > clients // 2  # the seeds made different samples
    # The same seed alone, not streamed: the same text (batching and streaming change nothing).
    for seed in (0, 1, 17, 63):
        r = httpx.post(srv.url + CHAT, json=chat_body(seed, stream=False), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == texts[seed], seed
    assert_idle(srv)


# ------------------------------------------------------------- clients that leave
def test_1000_requests_with_random_disconnects_leave_nothing_behind(start_server):
    srv = start_server()
    total, concurrency = 1000, 32
    long = {"max_tokens": 900, "ignore_eos": True}  # far longer than any client here waits for
    outcomes: dict[str, int] = {}
    budget = 0  # tokens all requests together asked for

    def count(kind: str) -> None:
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async def whole_stream(client, seed):
        rng = random.Random(seed)  # each request's choices, whatever order they run in
        max_tokens = rng.randint(1, 24)
        if rng.random() < 0.5:
            body = chat_body(seed, stream=True, max_tokens=max_tokens)
            async with client.stream("POST", srv.url + CHAT, json=body) as r:
                assert r.status_code == 200
                chat_stream_text("".join([t async for t in r.aiter_text()]), max_tokens=max_tokens)
        else:
            body = {"model": "tiny", "prompt": PROMPTS[seed % len(PROMPTS)], "max_tokens": max_tokens,
                    "seed": seed, "stream": True}
            async with client.stream("POST", srv.url + COMPLETIONS, json=body) as r:
                assert r.status_code == 200
                events = sse_events("".join([t async for t in r.aiter_text()]))
                finishes = [c["choices"][0]["finish_reason"] for c in events[:-1]]
                assert all(c["object"] == "text_completion" for c in events[:-1])
                assert finishes[-1] in ("stop", "length") and not any(finishes[:-1]), finishes
        count("stream read to the end")
        return max_tokens

    async def cut_stream(client, seed):
        """Read a few events of a long stream, then close it."""
        rng = random.Random(seed)
        path, body = ((CHAT, chat_body(seed, stream=True, **long)) if rng.random() < 0.7 else
                      (COMPLETIONS, {"model": "tiny", "prompt": PROMPTS[seed % len(PROMPTS)], "stream": True, **long}))
        keep = rng.randint(0, 6)  # events; 0: leave as soon as the headers are in
        async with client.stream("POST", srv.url + path, json=body) as r:
            assert r.status_code == 200
            if keep:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    assert line != "data: [DONE]"
                    if seen == keep:
                        break
        count("stream closed early")  # leaving `async with` closes the connection
        return long["max_tokens"]

    async def whole_post(client, seed):
        rng = random.Random(seed)
        max_tokens = rng.randint(1, 24)
        r = await client.post(srv.url + CHAT, json=chat_body(seed, stream=False, max_tokens=max_tokens))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] <= max_tokens
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        count("whole reply")
        return max_tokens

    async def timed_out_post(client, seed):
        """A non-streaming request whose client gives up (a short read timeout)."""
        rng = random.Random(seed)
        timeout = httpx.Timeout(60, read=rng.uniform(0.01, 0.3))
        body = chat_body(seed, stream=False, **long)
        try:
            r = await client.post(srv.url + CHAT, json=body, timeout=timeout)
        except httpx.ReadTimeout:
            count("client timeout")
        else:  # only if 900 tokens came sooner than the timeout: then whole
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == long["max_tokens"], r.text
            count("client timeout that came too late")
        return long["max_tokens"]

    async def cancelled(client, seed):
        """The client's task is cancelled mid-request (streaming or not)."""
        rng = random.Random(seed)
        stream = rng.random() < 0.5
        body = chat_body(seed, stream=stream, **long)

        async def go():
            if stream:
                async with client.stream("POST", srv.url + CHAT, json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
            else:
                await client.post(srv.url + CHAT, json=body)

        try:
            await asyncio.wait_for(go(), timeout=rng.uniform(0.01, 0.3))
        except asyncio.TimeoutError:
            count("task cancelled")
        else:
            count("task finished before its cancel")
        return long["max_tokens"]

    kinds = [whole_stream] * 25 + [cut_stream] * 30 + [whole_post] * 20 + [timed_out_post] * 13 + [cancelled] * 12
    plan = random.Random(1234).choices(kinds, k=total)
    semaphore = asyncio.Semaphore(concurrency)

    async def run(client, kind, seed):
        nonlocal budget
        async with semaphore:
            asked = await kind(client, seed)
        budget += asked

    async def main():
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            await asyncio.gather(*(run(client, kind, seed) for seed, kind in enumerate(plan)))

    asyncio.run(main())
    assert sum(outcomes.values()) == total, outcomes
    assert outcomes.get("stream closed early", 0) > 200 and outcomes.get("client timeout", 0) > 50, outcomes
    assert outcomes.get("task cancelled", 0) > 50, outcomes
    assert_idle(srv)
    m = metrics(srv.url)
    # Requests whose clients left were aborted, not run to their 900 tokens.
    assert m["acorn_requests_total"] <= total and m["acorn_generation_tokens_total"] < budget / 4, (m, budget)
    assert_answers(srv)


# ------------------------------------------------------------- a full queue
def test_full_queue_answers_429_with_retry_after_and_the_rest_succeed(start_server):
    srv = start_server(max_pending=2)
    async_engine = srv.app.state.acorn.engine
    all_answered = threading.Event()
    # Nothing runs until every client has its status: the two requests the queue
    # takes wait, and every one after them finds it full.
    gate = StepGate(srv.engine, all_answered.is_set)
    clients, max_tokens = 24, 200
    long = {"max_tokens": max_tokens, "ignore_eos": True}

    def assert_429(r: httpx.Response) -> None:
        error = openai_error(r, 429)
        assert error["type"] == "rate_limit_error" and "busy" in error["message"], error
        assert r.headers["retry-after"] == "1"

    async def streaming(client, seed, answered):
        async with client.stream("POST", srv.url + CHAT, json=chat_body(seed, stream=True, **long)) as r:
            answered.append(r.status_code)
            if len(answered) == clients:
                all_answered.set()
            raw = (await r.aread()).decode()  # a 429's body is JSON; a 200's, events once the gate opens
            return r, raw

    async def pending(n: int) -> None:
        deadline = time.monotonic() + 30
        while async_engine.pending != n:  # until the engine thread has taken the request in (or let it go)
            assert time.monotonic() < deadline, f"{async_engine.pending} requests wait, not {n}"
            await asyncio.sleep(0.005)

    async def main():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients + 4)) as client:
            # 1. A burst of streaming requests.
            answered: list[int] = []
            burst = await asyncio.gather(*(streaming(client, seed, answered) for seed in range(clients)))
            # 2. Non-streaming ones, the queue held full again step by step.
            gate.hold(all_answered.is_set)
            all_answered.clear()
            first = asyncio.ensure_future(client.post(srv.url + CHAT, json=chat_body(100, stream=False, **long)))
            await pending(1)
            two_prompts = {"model": "tiny", "prompt": ["Once upon", "a time"], **long}  # the second does not fit
            refused_completions = await client.post(srv.url + COMPLETIONS, json=two_prompts)
            await pending(1)  # the first prompt of the refused request was withdrawn
            second = asyncio.ensure_future(client.post(srv.url + CHAT, json=chat_body(101, stream=False, **long)))
            await pending(2)
            depth = metrics(srv.url)["acorn_queue_depth"]
            refused_chat = await client.post(srv.url + CHAT, json=chat_body(102, stream=False, **long))
            health = await client.get(srv.url + "/health")  # a full server still answers its probe
            all_answered.set()
            return burst, await first, await second, refused_completions, refused_chat, depth, health

    burst, first, second, refused_completions, refused_chat, depth, health = asyncio.run(main())
    statuses = [r.status_code for r, _ in burst]
    assert statuses.count(200) == 2 and statuses.count(429) == clients - 2, statuses
    for r, raw in burst:
        if r.status_code == 429:
            assert_429(r)
        else:
            (text,), usage = chat_stream_text(raw, max_tokens=max_tokens)
            assert text
    assert depth == 2 and health.status_code == 200
    assert_429(refused_completions)
    assert_429(refused_chat)
    for r in (first, second):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == max_tokens and body["choices"][0]["finish_reason"] == "length"
    assert_idle(srv)
    assert_answers(srv)


# ------------------------------------------------------------- shutdown
def test_stop_cuts_streams_that_outlast_the_grace_and_the_threads_exit(start_server):
    srv = start_server(shutdown_grace=0.5)
    engine = srv.engine
    step = engine.step

    def slow_step():  # at least 10 ms a token: 1,000 tokens outlast uvicorn's 5 s of grace (conftest)
        time.sleep(0.01)
        return step()

    engine.step = slow_step
    async_engine = srv.app.state.acorn.engine
    body = chat_body(3, stream=True, max_tokens=1000, ignore_eos=True)
    text_chunk = '"delta": {"content": '  # a chunk with text (the first chunk has the role too)
    results: list = [None] * 4
    generating = threading.Barrier(len(results) + 1, timeout=60)

    def client(i):
        raw, waited = "", False
        try:
            with httpx.stream("POST", srv.url + CHAT, json=body, timeout=60) as r:
                for text in r.iter_text():
                    raw += text
                    if not waited and text_chunk in raw:
                        waited = True
                        generating.wait()  # this request has its first token
            results[i] = ("ended", raw)
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:  # cut: the connection closed mid-stream
            results[i] = ("cut", raw, e)
        except BaseException as e:  # noqa: BLE001 - a timeout, or anything else, fails below
            results[i] = ("failed", raw, e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    generating.wait()
    srv.stop()  # joins the server thread, for up to 30 s
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not srv.thread.is_alive() and not async_engine._thread.is_alive() and not async_engine.running
    for result in results:
        assert result[0] == "cut", result[:1] + result[2:]
        assert text_chunk in result[1] and "[DONE]" not in result[1]  # it was cut mid-reply
    assert not engine._groups and engine.stats()["blocks_in_use"] == 0  # the engine let go of them all
    assert async_engine.generated_tokens < len(results) * 1000
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health")


# ------------------------------------------------------------- a broken engine
def test_an_engine_that_dies_fails_its_requests_and_health_says_why(start_server):
    srv = start_server()

    def broken_step():
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    srv.engine.step = broken_step
    streamed = httpx.post(srv.url + CHAT, json=chat_body(1, stream=True), timeout=60)
    assert streamed.status_code == 200  # the headers were out: the error comes in-band, and no [DONE]
    raw = streamed.text
    assert raw.endswith("\n\n") and "[DONE]" not in raw
    last = raw[:-2].split("\n\n")[-1]
    assert last.startswith("data: ") and json.loads(last[len("data: "):])["error"]["type"] == "server_error"
    assert "nan" in last
    srv.app.state.acorn.engine._thread.join(10)  # the engine thread has ended
    later = httpx.post(srv.url + CHAT, json=chat_body(2, stream=False), timeout=60)
    assert openai_error(later, 503)
    health = httpx.get(srv.url + "/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "error", health.text  # not "loading"
    assert "the engine stopped" in health.json()["message"] and "nan" in health.json()["message"]


# ------------------------------------------------------------- max_tokens_cap
def test_a_low_max_tokens_cap_bounds_requests_that_do_not_say(start_server):
    """A cap below the default max_tokens: a request that sends none gets the cap (it must not
    be refused for a number it did not send); one that asks for more is a 400."""
    srv = start_server(max_tokens_cap=8)
    body = chat_body(5, stream=False, ignore_eos=True)
    del body["max_tokens"]
    r = httpx.post(srv.url + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8 and r.json()["choices"][0]["finish_reason"] == "length"
    error = openai_error(httpx.post(srv.url + CHAT, json={**body, "max_tokens": 9}, timeout=60), 400)
    assert error["param"] == "max_tokens" and "8" in error["message"]


# ------------------------------------------------------------- fuzzing
def test_fuzzed_requests_are_never_answered_5xx(start_server):
    """Every operation of /openapi.json, with requests that fit the schema and
    requests that break it (schemathesis): 4xx or 2xx, never 5xx."""
    import requests
    import schemathesis
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    # max_tokens_cap keeps generation short: a fuzzed max_tokens above it must be a quick 400.
    srv = start_server(max_tokens_cap=16)
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    session = requests.Session()
    failures, seen = {}, {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {CHAT, COMPLETIONS, "/v1/embeddings", "/v1/models", "/metrics"}

    # Valid fields that most generated bodies get wrong (the schema cannot say a conversation needs a
    # user turn, or that prompt ids are in the vocabulary): half the positive cases get these, so the
    # fuzzed sampling fields, tools and formats reach the engine.
    steered = {CHAT: {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]},
               COMPLETIONS: {"model": "tiny", "prompt": "Once upon a time"},
               "/v1/embeddings": {"model": "tiny", "input": "an acorn"},
               "/v1/messages": {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}}

    def fuzz(op, mode, statuses: list) -> None:
        @settings(max_examples=30, deadline=None, derandomize=True, database=None, print_blob=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode), steer=st.booleans())
        def check(case, steer):
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
                if "model" in case.body:
                    case.body["model"] = "tiny"  # the served model's name: otherwise nearly all are a 404
                if steer:
                    case.body.update(steered.get(op.path, {}))
            response = case.call(base_url=srv.url, session=session, timeout=60)
            statuses.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        check()

    # The Engine made in this thread set flush-to-zero (torch.set_flush_denormal), and Hypothesis
    # will not generate floats where subnormals cannot exist. The server's threads keep theirs.
    torch.set_flush_denormal(False)
    try:
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{op.method.upper()} {op.path} {mode.value}"
                try:
                    fuzz(op, mode, seen.setdefault(label, []))
                except Unsatisfiable:  # nothing to break: no parameters, or a path string any value fits
                    assert mode is GenerationMode.NEGATIVE, label
                except Exception as e:  # noqa: BLE001 - every operation is fuzzed; all failures are reported
                    failures[label] = str(e)[:3000]
    finally:
        torch.set_flush_denormal(True)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # The fuzzer reached the engine: some generated requests were answered 200.
    for path in (CHAT, COMPLETIONS):
        assert 200 in seen[f"POST {path} positive"], seen
    assert_idle(srv)
    assert_answers(srv)
