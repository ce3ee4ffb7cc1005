"""Fixtures of the agent tests: a tiny random chat model in the acorn format
(its tool-call tokens included), its Engine, and a scripted model.

    agent_checkpoint  directory of the tiny random Llama with an acorn-format BPE
    engine            an Engine on it (real template, tokenizer, grammar)
    scripted          scripted(engine, [reply, ...]) -> a `generate` for Agent
                      that answers each turn with the next reply text, so a
                      test decides exactly what the model "writes"
"""

from __future__ import annotations

import pytest

from tests.conftest import tiny_chat_checkpoint

TEXT = (
    "The quick brown fox jumps over the lazy dog. What is 6 + 6? It is 12. "
    '{"name": "calculator", "arguments": {"expression": "6+6"}} 123*45 = 5535. '
) * 20
CONTEXT = 1024  # room for tool schemas in the system turn: the tiny BPE writes about one token per character


@pytest.fixture(scope="session")
def agent_checkpoint(tmp_path_factory):
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("agent-ckpt"), TEXT, CONTEXT)


@pytest.fixture(scope="session")
def engine(agent_checkpoint):
    from acorn.infer import Engine

    return Engine.from_pretrained(agent_checkpoint)


class Scripted:
    """A `generate` that writes the given replies in turn and records the prompts it saw."""

    def __init__(self, engine, replies):
        self.engine, self.replies, self.prompts = engine, list(replies), []

    def __call__(self, ids, params):
        from acorn.infer.sequence import Completion

        self.prompts.append(self.engine.tokenizer.decode(ids))
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        out = self.engine.tokenizer.encode(text, allowed_special="all")[: params.max_new_tokens]
        return Completion(len(ids), out, self.engine.tokenizer.decode(out), "stop")


@pytest.fixture
def scripted():
    return Scripted


def call_text(name, arguments) -> str:
    """A call as the acorn template writes it."""
    import json

    return "<|tool_call|>" + json.dumps({"name": name, "arguments": arguments}) + "<|/tool_call|>"
