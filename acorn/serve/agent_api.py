"""The agent route: the ReAct loop (acorn.agent.loop) over the served model and tools.

`acorn serve CKPT --tools calculator,python` (create_app(tools=registry))
adds two routes, answered in the OpenAI error shape:

  GET  /v1/agent/tools   the tools this server runs (their specs); the chat
                         page shows its tools switch only when there are some
  POST /v1/agent         {"messages": [...]} or {"task": "..."}, and optionally
                         "tools" (names: this request's allowlist, a subset
                         of the server's), "max_steps", "max_tokens" (the token
                         budget over all turns), "temperature", "constrained"
                         -> the AgentResult as JSON: "answer", "stopped",
                         "steps" (each turn's text, calls and results),
                         "messages", and "transcript" (printable)

The loop runs in a worker thread; each of its model turns is one request to
the shared AsyncEngine, so agent turns batch with every other request.
Routes only: the loop, the tools and the call syntax live in acorn.agent and
acorn.chat.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from acorn.errors import AcornError
from acorn.serve.common import APIError, get_state

router = APIRouter()


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[str] | None = None
    max_steps: int = Field(6, ge=1, le=32)
    max_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    constrained: bool = True


def _registry(request: Request):
    tools = get_state(request).extra.get("tools")
    if tools is None or not len(tools):
        raise APIError(404, "this server runs no tools; start it with acorn serve CKPT --tools calculator,...")
    return tools


@router.get("/v1/agent/tools")
async def agent_tools(request: Request):
    state = get_state(request)
    tools = state.extra.get("tools")
    return {"object": "list", "data": tools.specs() if tools is not None else []}


@router.post("/v1/agent")
async def agent(body: AgentRequest, request: Request):
    from acorn.agent.loop import Agent, format_transcript

    state = get_state(request)
    registry = _registry(request)
    if (body.task is None) == (body.messages is None):
        raise APIError(400, "give either task (a string) or messages (a conversation), not both", param="task")
    if body.max_tokens > state.max_tokens_cap * 4:
        raise APIError(400, f"max_tokens (the budget over all turns) is {body.max_tokens}; this server allows at "
                       f"most {state.max_tokens_cap * 4}", param="max_tokens")
    unknown = [n for n in body.tools or [] if n not in registry]
    if unknown:
        raise APIError(400, f"tools names {unknown[0]!r}, which this server does not run "
                       f"({', '.join(registry.names)})", param="tools")
    loop = asyncio.get_running_loop()

    def generate(ids, params):
        async def one():
            return (await state.engine.submit(ids, params).collect())[0]

        return asyncio.run_coroutine_threadsafe(one(), loop).result()

    try:
        runner = Agent(state.engine.engine, registry, allow=body.tools, max_steps=body.max_steps,
                       token_budget=body.max_tokens, max_new_tokens=min(body.max_new_tokens, state.max_tokens_cap),
                       constrained=body.constrained, temperature=body.temperature, generate=generate)
        result = await asyncio.to_thread(runner.run, body.task if body.task is not None else body.messages)
    except AcornError as e:
        raise APIError(400, str(e)) from None
    return result.to_json() | {"transcript": format_transcript(result)}
