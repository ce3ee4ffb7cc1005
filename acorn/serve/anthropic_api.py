"""The Anthropic Messages API: POST /v1/messages (and /v1/messages/count_tokens).

Anthropic's clients (the official SDKs, Claude-style agents) speak this API;
this module answers it from the same engine as the OpenAI routes:

  request   pydantic models of the Messages API: messages whose content is a
            string or blocks (text, tool_use, tool_result), a top-level system
            prompt, max_tokens (required; 0 only fills the prefix cache, as
            Anthropic's pre-warming), stop_sequences, temperature, top_k, top_p,
            tools with a JSON Schema each, tool_choice, output_config.format (a
            JSON Schema the text is constrained to). Unknown fields are refused
            (400), so a feature this server lacks (extended thinking, images,
            server tools) is never silently dropped.
  prompt    the conversation becomes the engine's OpenAI-style messages (system
            first, tool_use -> assistant tool_calls, tool_result -> role "tool")
            rendered with the model's chat template; tools render as OpenAI
            function schemas, so both APIs give the same prompt (and share the
            prefix cache). A final assistant message is a prefill: the reply
            continues it, as Anthropic's API does.
  tools     tool_choice auto: the reply is parsed for calls in the chat format's
            syntax (acorn.chat.tools.parse_tool_calls). any / tool: generation is
            constrained by a grammar (acorn.chat.tools.tool_call_grammar, as for
            OpenAI's tool_choice "required"/named) whose every match is a call in
            that syntax with input valid against the tool's input_schema, so the
            answer is always a tool_use. none: the tools are not shown to the
            model and its text is not parsed.
  response  {"type": "message", "content": [text and/or tool_use blocks],
            "stop_reason": end_turn | max_tokens | stop_sequence | tool_use, ...}.
            usage follows Anthropic's accounting: input_tokens are the prompt
            tokens *not* read from the prefix cache, cache_read_input_tokens the
            ones that were; their sum is the prompt.
  stream    server-sent events in the order the SDK's accumulator expects:
            message_start, ping, content_block_start/delta/stop per block,
            message_delta (stop reason, usage), message_stop; `error` if the
            engine fails mid-way. Text is flushed as tokens come; once a tool
            call starts (the chat format's tool-call marker), the rest is held
            and sent after the whole reply is parsed, so a stream carries exactly
            the blocks the non-streaming answer would. A client that disconnects
            aborts its request (its KV blocks are freed before the next step).

Stop reason: the engine ends with finish_reason "stop" both at an end-of-turn
token and at a stop string (the text cut before it). Which one it was is read
from the generated ids: the full decoded output continues, after the returned
text, with the stop string that matched. Under a grammar (a forced tool call,
an output format) stop sequences do not apply: the grammar decides the end,
and a stop string inside the JSON would break it.

Retrieval (acorn serve --rag INDEX): a request that shows the model no tools
and prefills nothing has its last user turn answered from the passages
retrieved for it (acorn.rag.pipeline.RAG.augment, as the OpenAI route). The
text block cites the passages the answer names ([n]) in `citations`, one
search_result_location each (Anthropic's shape for cited search results; the
SDK accumulates them), streamed as citations_delta events before the block
stops; the message (non-streamed) or its message_delta event (streamed)
carries `sources`: every passage in the prompt, marked `cited` or not.

POST /v1/messages/count_tokens answers the prompt's length for the same fields
(without retrieval).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Annotated, Any, AsyncIterator, Literal, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.background import BackgroundTask

from acorn.chat.template import message_images
from acorn.chat.tools import TOOL_FORMATS, parse_tool_calls, streamable_content, tool_call_grammar
from acorn.errors import AcornError
from acorn.infer.sampling import GenerationError, SamplingParams
from acorn.serve.common import (ANTHROPIC_TYPES, NO_FETCH, APIError, ServerState, check_model, check_prompt,
                                get_state, image_from_base64, rag_sources)

router = APIRouter()
log = logging.getLogger("acorn.serve")


# ------------------------------------------------------------------ request
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Block(BaseModel):
    # Lenient: clients send back the blocks of earlier responses as they got
    # them, with fields (citations, cache_control, caller) that change nothing here.
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class MediaBlock(_Block):
    """Images (a base64 source: decoded; a url source: refused, no network) and
    documents (accepted by the schema so the refusal can say why)."""

    type: Literal["image", "document"]
    source: dict[str, Any] | None = None


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[Union[TextBlock, MediaBlock], Field(discriminator="type")]] | None = None
    is_error: bool = False


ContentBlock = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, MediaBlock], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Block):
    # Lenient too: the SDK's optional tool fields (input_examples, strict,
    # eager_input_streaming, ...) tune Anthropic's own serving. A server tool
    # (web_search_...) has another type and no input_schema, and is refused.
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    @field_validator("input_schema")
    @classmethod
    def _an_object(cls, v):
        if v.get("type") != "object":
            raise ValueError('a tool\'s input is a JSON object: its input_schema needs "type": "object"')
        return v


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class SystemBlock(_Block):
    type: Literal["text"]
    text: str


class _Prompt(_Strict):
    """The fields that make the prompt (all count_tokens reads)."""

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[SystemBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice_string(cls, v):
        return {"type": v} if isinstance(v, str) else v  # "none" as some clients write it


class Thinking(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    format: OutputFormat | None = None
    effort: str | None = None  # how hard a thinking model tries: this one has one effort


class MessagesRequest(_Prompt):
    max_tokens: int = Field(ge=0)  # 0: fill the prefix cache, generate nothing (Anthropic's pre-warming)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    output_config: OutputConfig | None = None  # format: structured output, constrained by its JSON Schema
    thinking: Thinking | None = None  # this model does not think: "enabled" is refused
    # Accepted and without effect here: prefix caching is automatic, there is one
    # service tier, and metadata.user_id is for Anthropic's abuse tracking.
    cache_control: dict[str, Any] | None = None
    service_tier: str | None = None
    metadata: dict[str, Any] | None = None


# ------------------------------------------------------------------ prompt
def _text(blocks: list, where: str) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, MediaBlock):
            raise APIError(400, f"{where}: {b.type} content is not supported here; send text (images go in "
                                "a user message's own content)")
        parts.append(b.text)
    return "\n".join(parts)


def _image(b: MediaBlock, where: str):
    """An image block's base64 source -> a PIL image (APIError 400 for anything else)."""
    source = b.source or {}
    kind = source.get("type")
    if kind == "url":
        raise APIError(400, f"{where}: url image sources are not fetched ({NO_FETCH})")
    if kind != "base64" or not isinstance(source.get("data"), str):
        raise APIError(400, f"{where}: an image needs a source {{\"type\": \"base64\", \"media_type\": "
                            "\"image/png\", \"data\": ...}")
    return image_from_base64(source["data"], where)


def _user_content(items: list):
    """A user turn's text (blocks joined by newlines) and images (image parts), in order:
    a string when there are no images, else the chat template's content parts."""
    if all(isinstance(x, str) for x in items):
        return "\n".join(items)
    parts: list[dict] = []
    for x in items:
        if isinstance(x, dict):
            parts.append(x)
        elif parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += "\n" + x
        else:
            parts.append({"type": "text", "text": x})
    return parts


def chat_messages(req) -> tuple[list[dict], str | None]:
    """The request as the engine's OpenAI-style messages, and the text of a
    final assistant message to continue (a prefill), if it ends with one."""
    out: list[dict] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        out.append({"role": "system", "content": system})
    seen_tool_ids: set[str] = set()
    prefill = None
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        blocks = [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        if m.role == "assistant":
            text, calls = [], []
            for b in blocks:
                if isinstance(b, ToolUseBlock):
                    seen_tool_ids.add(b.id)
                    calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}})
                elif isinstance(b, TextBlock):
                    text.append(b.text)
                else:
                    raise APIError(400, f"{where}: an assistant message cannot hold {b.type} blocks")
            msg: dict = {"role": "assistant"}
            if text or not calls:
                msg["content"] = "".join(text)
            if calls:
                msg["tool_calls"] = calls
            if i == len(req.messages) - 1 and not calls:
                prefill = msg["content"]
            else:
                out.append(msg)
            continue
        text = []
        for j, b in enumerate(blocks):
            if isinstance(b, ToolResultBlock):
                if b.tool_use_id not in seen_tool_ids:
                    raise APIError(400, f"{where}: tool_result for {b.tool_use_id!r}, which no earlier assistant "
                                        f"tool_use block has as its id")
                if text:  # text before a result stays before it
                    out.append({"role": "user", "content": _user_content(text)})
                    text = []
                content = b.content if isinstance(b.content, str) else _text(b.content or [], where)
                # The OpenAI-style tool message has no error flag; the model reads it in the text.
                out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                            "content": f"Error: {content}" if b.is_error else content})
            elif isinstance(b, ToolUseBlock):
                raise APIError(400, f"{where}: a user message cannot hold tool_use blocks; they are the assistant's")
            elif isinstance(b, MediaBlock) and b.type == "image":
                text.append({"type": "image", "image": _image(b, f"{where}.content[{j}]")})
            else:
                text.append(_text([b], where))
        if text or not blocks:
            out.append({"role": "user", "content": _user_content(text)})
    return out, prefill


def _openai_tools(tools: list[Tool]) -> list[dict]:
    """As OpenAI function schemas: the same prompt as the OpenAI route for the same tools."""
    fns = ({"name": t.name, "description": t.description, "parameters": t.input_schema} for t in tools)
    return [{"type": "function", "function": {k: v for k, v in fn.items() if v is not None}} for fn in fns]


def _prompt(state: ServerState, req, rag=None,
            max_tokens: int = 1) -> tuple[list[int], str | None, list[dict] | None, list]:
    """Prompt ids, the prefill text (already in the ids) if any, under acorn serve
    --rag (`rag`, when the model is shown no tools and nothing is prefilled) the
    passages retrieved for the last user turn and put into it (else None), and the
    images in the order of their placeholders."""
    messages, prefill = chat_messages(req)
    images = message_images(messages)
    choice = req.tool_choice.type if req.tool_choice else "auto"
    names = [t.name for t in req.tools or ()]
    if len(set(names)) < len(names):
        raise APIError(400, f"tools: two tools are named {next(n for n in names if names.count(n) > 1)!r}; "
                            "names must be unique")
    tools = _openai_tools(req.tools) if req.tools and choice != "none" else None
    if not messages:
        raise APIError(400, "messages: give at least one user message before a final assistant message")
    if rag is not None and tools is None and not prefill:
        if images:
            raise APIError(400, "messages: this server answers from its document index (acorn serve --rag), which "
                                "reads text only; send the question without images")
        try:
            ids, passages = rag.augment(messages, state.engine.engine, max_tokens)
        except AcornError as e:
            raise APIError(400, str(e)) from None
        return ids, None, passages, []
    ids = state.engine.engine.chat_prompt(messages, tools=tools)
    if prefill:
        ids = ids + state.tokenizer.encode(prefill)
    return ids, prefill, None, images


# ------------------------------------------------------------------ forced tool calls
def _forced_tools(state: ServerState, req) -> str | None:
    """The guided grammar for tool_choice any/tool, or None."""
    choice = req.tool_choice
    if choice is None or choice.type in ("auto", "none"):
        return None
    if not req.tools:
        raise APIError(400, f"tool_choice {choice.type} needs tools")
    tools = [(t.name, t.input_schema) for t in req.tools]
    if choice.type == "tool":
        if not choice.name:
            raise APIError(400, "tool_choice.name: required when tool_choice.type is 'tool'")
        tools = [t for t in tools if t[0] == choice.name]
        if not tools:
            raise APIError(400, f"tool_choice.name: no tool is named {choice.name!r}")
    elif choice.name is not None:
        raise APIError(400, f"tool_choice.name: only for tool_choice.type 'tool', not {choice.type!r}")
    engine = state.engine.engine
    if engine.chat_format not in TOOL_FORMATS:
        raise APIError(400, f"tool_choice {choice.type} needs a model whose chat format has a known tool-call "
                            f"syntax ({', '.join(TOOL_FORMATS)}); this model's is {engine.chat_format or 'unknown'}")
    # The grammar of OpenAI's tool_choice "required"/named: the same calls, the same syntax.
    return tool_call_grammar(engine.tokenizer, engine.chat_format, tools,
                             parallel=not choice.disable_parallel_tool_use)


# ------------------------------------------------------------------ the reply
class _Request:
    """One /v1/messages request: its prompt and sampling, and how to read its reply."""

    def __init__(self, state: ServerState, req: MessagesRequest):
        self.state, self.req = state, req
        self.id = "msg_" + uuid.uuid4().hex[:24]
        adapter = check_model(state, req.model)
        if req.thinking is not None and req.thinking.type == "enabled":
            raise APIError(400, "thinking: this model does not think; leave thinking out or set it to disabled")
        choice = req.tool_choice.type if req.tool_choice else "auto"
        self.fmt = state.engine.engine.chat_format
        self.parse = bool(req.tools) and choice != "none" and self.fmt is not None
        self.forced = choice in ("any", "tool")
        self.warm_only = req.max_tokens == 0  # fill the prefix cache: one token is generated, none returned
        grammar = _forced_tools(state, req)
        self.prompt_ids, prefill, self.passages, self.images = _prompt(state, req, state.extra.get("rag"),
                                                          min(max(req.max_tokens, 1), state.max_tokens_cap))
        guided = {"grammar": grammar} if grammar is not None else None
        fmt = req.output_config.format if req.output_config else None
        if fmt is not None:
            if guided is not None:
                raise APIError(400, "output_config.format cannot be combined with tool_choice any/tool: "
                                    "the reply is either a tool call or the formatted text")
            guided = {"json_schema": fmt.schema_}
        if guided is not None and prefill:
            raise APIError(400, "a final assistant message (prefill) cannot be combined with tool_choice any/tool "
                                "or output_config.format: the grammar decides the reply from its first token")
        self.params = SamplingParams(
            max_new_tokens=check_prompt(state, self.prompt_ids, max(req.max_tokens, 1)),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_k=req.top_k or 0,
            top_p=1.0 if req.top_p is None else req.top_p,
            # Stop sequences end free text. Under a grammar (a forced tool call, an
            # output format) the grammar decides the end: a stop string inside
            # the JSON would break the promise that it is valid.
            stop=[] if guided is not None else (req.stop_sequences or []),
            guided=guided,
            lora=adapter,
        )
        self.model = adapter or state.model_name  # the `model` the client asked for

    def finish(self, c) -> tuple[str, list[dict], str, str | None]:
        """(text, tool_use blocks, stop_reason, stop_sequence) of a finished completion."""
        if c.finish_reason == "abort":
            raise APIError(503, "the request was aborted: the server is shutting down", headers={"Retry-After": "1"})
        if self.warm_only:
            return "", [], "max_tokens", None
        text, calls = c.text, []
        if self.parse:
            text, found = parse_tool_calls(c.text, self.fmt)
            calls = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": f["function"]["name"],
                      "input": json.loads(f["function"]["arguments"])} for f in found]
        stop = None
        if c.finish_reason == "length":
            reason = "max_tokens"
        elif calls:
            reason = "tool_use"
        else:
            stop = self.matched_stop(c)
            reason = "stop_sequence" if stop is not None else "end_turn"
        return text, calls, reason, stop

    def matched_stop(self, c) -> str | None:
        """The stop sequence that ended `c`, or None (an end-of-turn token did).
        The engine cut its text before the first stop string; the whole decoded
        output goes on, after that text, with the string that matched."""
        stops = self.req.stop_sequences or []
        if c.finish_reason != "stop" or not stops:
            return None
        ids = list(c.token_ids)
        if ids and ids[-1] in self.state.engine.engine.stop_token_ids:
            ids = ids[:-1]
        full = self.state.tokenizer.decode(ids)
        return next((s for s in stops if full.startswith(s, len(c.text))), None)

    def split(self, unsent: str, sent: str) -> tuple[str, str, bool]:
        """Streaming: (text to send now, text to hold back, whether a tool call has begun)."""
        if not self.parse:
            return unsent, "", False
        # What was sent is content (none of it could open a call), so the cut falls in `unsent`.
        cut, calling = streamable_content(sent + unsent, self.fmt)
        cut -= len(sent)
        return unsent[:cut], unsent[cut:], calling

    def sources(self, text: str) -> tuple[list[dict], list[dict]]:
        """acorn serve --rag: (the passages in the prompt, each marked `cited`; the
        citations of the text block, one search_result_location per cited passage,
        as Anthropic's API cites search results)."""
        sources = rag_sources(self.passages, text)
        citations = [{"type": "search_result_location", "source": p["source"], "title": p["title"],
                      "cited_text": p["text"], "search_result_index": p["number"] - 1, "start_block_index": 0,
                      "end_block_index": 1} for p in sources if p["cited"]]
        return sources, citations

    def usage(self, stream, c) -> dict:
        cached = min(c.cached_tokens, stream.prompt_tokens)
        output = 0 if self.warm_only else len(c.token_ids)
        return {"input_tokens": stream.prompt_tokens - cached, "output_tokens": output,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request):
    state = get_state(request)
    # With --rag the prompt needs a retrieval (the question embedded): off the event loop.
    ctx = await asyncio.to_thread(_Request, state, body) if "rag" in state.extra else _Request(state, body)
    # QueueFull/ShuttingDown/AcornError: the app's handlers answer them
    stream = ctx.state.engine.submit(ctx.prompt_ids, ctx.params, images=ctx.images)
    headers = {"request-id": ctx.id}
    if body.stream:
        # The background task aborts too when the client left before the first
        # event (a generator never started never runs its finally).
        return StreamingResponse(_events(ctx, stream), media_type="text/event-stream",
                                 background=BackgroundTask(stream.abort),
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    c = await _collect(request, stream)
    text, calls, reason, stop = ctx.finish(c)
    content = ([{"type": "text", "text": text}] if text else []) + calls
    extra = {}
    if ctx.passages is not None:  # --rag: the cited passages as citations, all of them as sources
        extra["sources"], citations = ctx.sources(text)
        if text and citations:
            content[0]["citations"] = citations
    return JSONResponse({"id": ctx.id, "type": "message", "role": "assistant", "model": ctx.model,
                         "content": content, "stop_reason": reason, "stop_sequence": stop,
                         "usage": ctx.usage(stream, c), **extra}, headers=headers)


async def _collect(request: Request, stream):
    """The finished completion of a non-streaming request; a client that goes
    away meanwhile aborts it (nothing would notice otherwise until the end)."""
    task = asyncio.ensure_future(stream.collect())
    try:
        while not (await asyncio.wait({task}, timeout=0.1))[0]:
            if await request.is_disconnected():
                raise APIError(499, "the client closed the connection")  # nobody reads this answer
        completions = task.result()
    finally:
        task.cancel()
        stream.abort()
    if not completions:
        raise APIError(503, "the request was aborted: the server is shutting down", headers={"Retry-After": "1"})
    return completions[0]


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: _Prompt, request: Request):
    """The prompt's length in tokens, as POST /v1/messages would render it."""
    state = get_state(request)
    check_model(state, body.model)
    ids, _, _, _ = _prompt(state, body)
    return {"input_tokens": len(ids)}


# ------------------------------------------------------------------ streaming
def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(ctx: _Request, stream) -> AsyncIterator[str]:
    index = 0  # of the next content block
    text_open = False
    sent = ""  # text already streamed
    unsent = ""  # text held back: it may begin a tool call
    calling = ctx.forced or ctx.warm_only  # hold everything until the end (a tool call has begun)

    def send_text(piece: str):
        nonlocal text_open, sent
        if not piece:
            return
        if not text_open:
            text_open = True
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}})
        sent += piece
        yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": {"type": "text_delta", "text": piece}})

    try:
        yield _sse("message_start", {"type": "message_start", "message": {
            "id": ctx.id, "type": "message", "role": "assistant", "model": ctx.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": stream.prompt_tokens, "output_tokens": 0}}})
        yield _sse("ping", {"type": "ping"})
        async for delta in stream:
            unsent += delta.text
            if not calling and delta.text:
                piece, unsent, calling = ctx.split(unsent, sent)
                for event in send_text(piece):
                    yield event
        if not stream.completions:
            raise APIError(503, "the request was aborted: the server is shutting down")
        c = stream.completions[0]
        text, calls, reason, stop = ctx.finish(c)
        # The parsed text begins with what was streamed (nothing streamed can be part of a call).
        rest = text[len(sent):] if text.startswith(sent) else ""
        for event in send_text(rest):
            yield event
        extra = {}
        if ctx.passages is not None:  # --rag: citations close the text block, the sources ride on message_delta
            extra["sources"], citations = ctx.sources(text)
            for citation in citations if text_open else []:
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "citations_delta", "citation": citation}})
        if text_open:
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        for call in calls:
            yield _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}})
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(call["input"], ensure_ascii=False)}})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        yield _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop},
                                     "usage": ctx.usage(stream, c), **extra})
        yield _sse("message_stop", {"type": "message_stop"})
    except Exception as e:
        # The status line has gone out: the failure travels as an error event, as Anthropic's does.
        if isinstance(e, APIError):
            kind, message = ANTHROPIC_TYPES.get(e.status, "api_error"), e.message
        elif isinstance(e, GenerationError):  # the model failed this request: a server-side error
            kind, message = "api_error", str(e)
        elif isinstance(e, AcornError):
            kind, message = "invalid_request_error", str(e)
        else:
            log.exception("acorn: /v1/messages stream failed")
            kind, message = "api_error", f"internal server error ({type(e).__name__})"
        yield _sse("error", {"type": "error", "error": {"type": kind, "message": message}})
    finally:
        stream.abort()  # a client that went away: free the request's KV blocks now
