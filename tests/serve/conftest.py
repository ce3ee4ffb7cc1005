"""Shared fixtures of the server tests: a tiny checkpoint with the acorn chat
format (its tool-call tokens included) and real servers on 127.0.0.1.

    server            one server for the whole session: .url, .app, .engine
    start_server      factory: start_server(api_keys=["k"], max_pending=1, ...)
                      -> a RunningServer on its own port and its own Engine,
                      stopped at the end of the session (or by .stop())
    checkpoint        the checkpoint directory (this overrides the root
                      conftest's `checkpoint` for the server tests)
    openai_client     openai.OpenAI on the session server, no retries
    sdk_clients(url)  (openai.OpenAI, anthropic.Anthropic) on any server, no retries

Servers run uvicorn in a background thread (uvicorn.Server; should_exit
stops it), bound to port 0 so the OS picks a free port.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from tests.conftest import tiny_chat_checkpoint

TEXT = (
    "The quick brown fox jumps over the lazy dog. A small acorn grows into a tall oak tree. "
    "Once upon a time there was a little model that learned to speak. The cat sat on the mat. "
    'What is the weather in Paris? {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} '
) * 20

CONTEXT = 1024  # room for a tool schema in the system turn: this tiny BPE writes about one token per character


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny random Llama made by transformers, saved with an Acorn BPE in the acorn chat format."""
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("serve-ckpt"), TEXT, CONTEXT)


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    app: object  # the FastAPI app
    engine: object  # the acorn Engine behind it
    server: object  # the uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_server(app, engine=None) -> RunningServer:
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a background thread."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", app, engine, server, thread)


@pytest.fixture(scope="session")
def start_server(checkpoint):
    """start_server(**create_app options) -> a RunningServer with its own Engine."""
    from acorn.infer import Engine
    from acorn.serve.app import create_app

    running = []

    def start(**options) -> RunningServer:
        options.setdefault("model_name", "tiny")
        engine = Engine.from_pretrained(checkpoint, device="cpu")
        srv = run_server(create_app(engine, **options), engine)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


@pytest.fixture(scope="session")
def server(start_server):
    return start_server()


def sdk_clients(url: str):
    """The official SDKs on the server at url: (openai.OpenAI, anthropic.Anthropic), no retries."""
    import anthropic
    import openai

    return (openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60),
            anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=60))


@pytest.fixture(scope="session")
def openai_client(server):
    return sdk_clients(server.url)[0]
