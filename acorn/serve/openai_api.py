"""The OpenAI API: chat completions, completions, models and embeddings.

The routes follow the official API's request and response shapes, so the
official `openai` SDK (and anything written for it) works against Acorn
unchanged:

  POST /v1/chat/completions  a conversation -> the assistant's reply (or n
                             replies); tools, tool_choice, response_format,
                             logprobs/top_logprobs, streaming
  POST /v1/completions       raw text (or token ids) -> its continuation
  GET  /v1/models            the base model and its LoRA adapters (`parent`: the base, as vLLM lists them)
  POST /v1/embeddings        a vector per input (acorn.rag.embeddings says what it is)

A request's `model` is the base model's name or a LoRA adapter's (acorn serve
--lora NAME=DIR): requests for different adapters run in the same batch.

Beyond OpenAI's sampling fields, vLLM's extras: top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids.

Streaming answers with server-sent events, `data: {chunk}\\n\\n`: for chat a
first chunk with the role, then the text as the engine produces it (never a
stop string: the engine holds back any text that might start one), a chunk
with each choice's finish_reason (under acorn serve --rag the last of them
also carries `sources`, as the non-streamed reply does), a usage chunk with no choices when
stream_options.include_usage, and `data: [DONE]`. A client that goes away
aborts its request, which frees its KV blocks before the next engine step.

Tool calling: tools are written into the prompt by the chat template
(engine.chat_prompt(messages, tools=...)) and the reply's tool calls parsed
back in the chat format's own syntax (engine.parse_tools). With tool_choice
"required" or a named function the reply is constrained by a grammar
(acorn.chat.tools.tool_call_grammar: the format's call syntax around each
tool's JSON Schema, llguidance's Lark with %json), so it is always a call
that parses, with arguments valid against the schema. response_format
json_object/json_schema constrain the reply the same way
(acorn.infer.structured).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any, Literal, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from acorn.chat.template import message_images
from acorn.chat.tools import TOOL_FORMATS, streamable_content, tool_call_grammar
from acorn.errors import AcornError
from acorn.infer.sampling import SamplingParams
from acorn.model import lora
from acorn.rag.embeddings import embed
from acorn.serve.common import (APIError, ServerState, check_model, check_prompt, get_state, image_from_data_url,
                                rag_sources)

router = APIRouter()


# =================================================================== requests
class _Request(BaseModel):
    # Fields this server does not know (user, store, metadata, service_tier, ...) are accepted and ignored.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ImageURL(_Request):
    url: str
    detail: str | None = None  # "auto" | "low" | "high": one resolution here, the encoder's


class ContentPart(_Request):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Request):
    name: str
    arguments: str = "{}"


class ToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class JSONSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """The sampling fields both completion endpoints take."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-2 ** 63, le=2 ** 63 - 1)  # 64 bits, as OpenAI's
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extras
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(default=None, ge=1)  # None: the official API's 16 (at most the server's cap)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


class EmbeddingRequest(_Request):
    model: str | None = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


# ================================================================== responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict
    logprobs: dict | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: str


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# ===================================================================== routes
@router.get("/v1/models")
async def list_models(request: Request):
    state = get_state(request)
    return {"object": "list", "data": [_model_card(state, None)] + [_model_card(state, a) for a in state.adapters]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request):
    state = get_state(request)
    return _model_card(state, check_model(state, model_id))


def _model_card(state: ServerState, adapter: str | None) -> dict:
    return {"id": adapter or state.model_name, "object": "model", "created": state.created, "owned_by": "acorn",
            "parent": state.model_name if adapter else None, "max_model_len": state.context}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = get_state(request)
    adapter = check_model(state, body.model)
    engine = state.engine.engine
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = _messages(body.messages)
    tools, guided = _tools_and_guide(engine, body)
    max_tokens = body.max_completion_tokens or body.max_tokens or state.default_max_tokens
    rag, passages = state.extra.get("rag"), None
    images = message_images(messages)
    if rag is not None and images:
        raise APIError(400, "this server answers from its document index (acorn serve --rag), which reads text "
                       "only; send the question without images", param="messages")
    try:
        if rag is not None and tools is None:  # acorn serve --rag: the last user turn answered from the index
            prompt, passages = await asyncio.to_thread(rag.augment, messages, engine,
                                                       min(max_tokens, state.max_tokens_cap))
        else:
            prompt = engine.chat_prompt(messages, tools=tools)
    except AcornError as e:
        raise APIError(400, str(e), param="messages") from None
    max_tokens = check_prompt(state, prompt, max_tokens)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling(body, max_tokens, logprobs=logprobs, guided=guided, lora=adapter)
    stream = state.engine.submit(prompt, params, images=images)
    reply = _Reply(state, "chatcmpl-", engine, params, parse_tools=tools is not None)
    reply.passages = passages
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _event_stream(reply.chat_events(request, stream, include_usage), [stream])
    (completions,) = await _collect(request, [stream])
    if completions is None:
        return Response(status_code=499)
    if passages is None:
        return reply.chat(stream, completions)
    # --rag: the passages the answer was given, each marked when the (first) answer cites it ([n]).
    out = reply.chat(stream, completions).model_dump()
    out["sources"] = rag_sources(passages, completions[0].text)
    return JSONResponse(out)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = get_state(request)
    adapter = check_model(state, body.model)
    engine = state.engine.engine
    if body.suffix:
        raise APIError(400, "suffix (fill in the middle) is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (it must equal n); use n and choose yourself", param="best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs (the prompt's log-probabilities) is not supported", param="echo")
    prompts = _prompts(body.prompt, "prompt")
    try:
        encoded = [engine.encode(p) for p in prompts]
    except AcornError as e:
        raise APIError(400, str(e), param="prompt") from None
    requested = body.max_tokens or min(16, state.max_tokens_cap)
    max_tokens = [check_prompt(state, ids, requested) for ids in encoded]
    params = [_sampling(body, m, logprobs=body.logprobs, lora=adapter) for m in max_tokens]
    streams = []
    try:
        for ids, p in zip(encoded, params):
            streams.append(state.engine.submit(ids, p))
    except BaseException:
        for s in streams:
            s.abort()
        raise
    reply = _Reply(state, "cmpl-", engine, params[0])
    echo = [p if isinstance(p, str) else engine.tokenizer.decode(p) for p in prompts] if body.echo else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _event_stream(reply.completion_events(request, streams, include_usage, echo), streams)
    results = await _collect(request, streams)
    if results[0] is None:
        return Response(status_code=499)
    return reply.completion(streams, results, echo)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    state = get_state(request)
    adapter = check_model(state, body.model)
    engine = state.engine.engine
    inputs = _prompts(body.input, "input")
    try:
        encoded = [engine.encode(x) for x in inputs]
    except AcornError as e:
        raise APIError(400, str(e), param="input") from None
    for i, ids in enumerate(encoded):
        if not ids:
            raise APIError(400, f"input[{i}] is empty", param="input")
        if len(ids) > state.context:
            raise APIError(400, f"input[{i}] has {len(ids)} tokens but the model's context window is "
                           f"{state.context} tokens; shorten it", param="input", code="context_length_exceeded")
    width = engine.model.config.d_model
    if body.dimensions is not None and body.dimensions != width:
        raise APIError(400, f"this model's embeddings have {width} dimensions, not {body.dimensions}",
                       param="dimensions")
    vectors = await asyncio.to_thread(_embed, engine.model, encoded, adapter)
    data = []
    for i, v in enumerate(vectors):
        value = (base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                 else v.tolist())
        data.append(Embedding(index=i, embedding=value))
    n = sum(map(len, encoded))
    return EmbeddingList(data=data, model=adapter or state.model_name, usage=Usage(prompt_tokens=n, total_tokens=n))


def _embed(model, encoded: list[list[int]], adapter: str | None):
    """The embeddings with the adapter applied to every token (in this thread only: the
    engine's thread keeps routing its own batches meanwhile)."""
    with lora.use_adapter(model, adapter):
        return embed(model, encoded)


# ============================================================ request helpers
def _messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages -> the dicts the chat template renders."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if part.type == "text" and part.text is not None:
                    parts.append({"type": "text", "text": part.text})
                elif part.type == "image_url" and part.image_url is not None:
                    parts.append({"type": "image", "image": image_from_data_url(part.image_url.url, where)})
                else:
                    raise APIError(400, f"{where} is a {part.type!r} part; send text parts and image_url parts "
                                   "(a data: URL)", param=f"messages[{i}].content")
            images = any(p["type"] == "image" for p in parts)
            content = parts if images else "".join(p["text"] for p in parts)
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                 for c in m.tool_calls]
            if content is None:
                del msg["content"]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.role == "tool" and content is None:
            raise APIError(400, f"messages[{i}] (tool) has no content", param=f"messages[{i}].content")
        out.append(msg)
    return out


def _prompts(value, field: str) -> list:
    """A prompt/input field (a string, strings, token ids, lists of ids) as a list of prompts."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise APIError(400, f"{field} is empty", param=field)
    if isinstance(value[0], int):
        return [value]
    return list(value)


def _tools_and_guide(engine, body: ChatCompletionRequest) -> tuple[list[dict] | None, dict | None]:
    """(tools for the template, or None when none may be called; the guided constraint, if any)."""
    guided = None
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        guided = {"json_object": True}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        guided = {"json_schema": fmt.json_schema.schema_}
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, f"tool_choice {_choice_name(choice)} needs tools", param="tool_choice")
        return None, guided
    if choice == "none":
        return None, guided
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in body.tools]
    if choice is None or choice == "auto":
        return tools, guided
    names = [t.function.name for t in body.tools]
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools "
                           f"({', '.join(names)})", param="tool_choice")
        chosen, parallel = [t for t in body.tools if t.function.name == choice.function.name], False
    else:  # required
        chosen, parallel = body.tools, body.parallel_tool_calls
    if engine.chat_format not in TOOL_FORMATS:
        raise APIError(400, "this model's tokenizer has no known chat format with a tool-call syntax, so "
                       "tool_choice 'required' or a named function cannot be enforced", param="tool_choice")
    grammar = tool_call_grammar(engine.tokenizer, engine.chat_format,
                                [(t.function.name, t.function.parameters) for t in chosen], parallel=parallel)
    return tools, {"grammar": grammar}


def _choice_name(choice) -> str:
    return repr(choice) if isinstance(choice, str) else repr(choice.function.name)


def _sampling(body: _Sampling, max_tokens: int, *, logprobs: int | None, guided: dict | None = None,
              lora: str | None = None) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # some clients ask for greedy decoding this way
        temperature, top_p = 0.0, 1.0
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return SamplingParams(
            max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, n=body.n, stop=stop, seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=body.logit_bias or None, logprobs=logprobs, guided=guided,
            top_k=max(body.top_k or 0, 0), min_p=body.min_p or 0.0,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            min_new_tokens=body.min_tokens, ignore_eos=body.ignore_eos, stop_token_ids=body.stop_token_ids or (),
            lora=lora,
        )
    except AcornError as e:
        raise APIError(400, str(e)) from None


async def _collect(request: Request, streams: list) -> list:
    """Every stream's completions (non-streaming requests), or [None] if the
    client went away first (its requests are aborted: their blocks are freed)."""
    task = asyncio.ensure_future(asyncio.gather(*(s.collect() for s in streams)))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # retrieve the cancellation
                return [None]
    finally:
        for s in streams:
            s.abort()


def _event_stream(events, streams: list) -> StreamingResponse:
    def abort():  # also runs when the client left before the first event
        for s in streams:
            s.abort()

    return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(abort),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ================================================================== replies
class _Reply:
    """Turns a request's completions (or its stream of deltas) into the API's responses."""

    def __init__(self, state: ServerState, prefix: str, engine, params: SamplingParams, parse_tools: bool = False):
        self.state, self.engine, self.params = state, engine, params
        self.model = params.lora or state.model_name  # the `model` the client asked for
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.parse_tools = parse_tools and engine.chat_format is not None
        self.passages: list[dict] | None = None  # acorn serve --rag: the passages in the prompt
        stops = set(params.stop_token_ids)
        if not params.ignore_eos:
            stops |= set(engine.stop_token_ids)
        self.stop_ids = stops

    # ---------------------------------------------------------- pieces
    def _token(self, token_id: int) -> tuple[str, list[int]]:
        try:
            raw = self.engine.tokenizer.token_bytes(token_id)
        except AcornError:
            raw = b""
        return raw.decode("utf-8", errors="replace"), list(raw)

    def _shown(self, entries: list[dict] | None, finish_reason: str | None, last: bool) -> list[dict]:
        """Log-probability entries without the stop token that ended the text (it is not part of it)."""
        entries = list(entries or [])
        if last and finish_reason == "stop" and entries and entries[-1]["token_id"] in self.stop_ids:
            entries.pop()
        return entries

    def _chat_logprobs(self, entries: list[dict]) -> dict:
        content = []
        for e in entries:
            token, raw = self._token(e["token_id"])
            top = []
            for tid, lp in e["top_logprobs"]:
                t, b = self._token(tid)
                top.append({"token": t, "logprob": lp, "bytes": b})
            content.append({"token": token, "logprob": e["logprob"], "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _completion_logprobs(self, entries: list[dict], offset: int = 0) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        for e in entries:
            token, _ = self._token(e["token_id"])
            tokens.append(token)
            lps.append(e["logprob"])
            tops.append({self._token(t)[0]: lp for t, lp in e["top_logprobs"]})
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def _usage(self, streams: list, completions: list) -> Usage:
        prompt = sum(s.prompt_tokens for s in streams)
        generated = sum(len(c.token_ids) for c in completions)
        cached = sum(s.cached_tokens for s in streams)
        return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated,
                     prompt_tokens_details={"cached_tokens": cached})

    def _finish(self, completion) -> str:
        if completion.finish_reason == "length":  # even after some whole calls: the reply was cut
            return "length"
        return "tool_calls" if completion.tool_calls else "stop"

    def _message(self, completion) -> dict:
        if self.parse_tools:
            self.engine.parse_tools(completion)
        message = {"role": "assistant", "content": completion.text, "refusal": None}
        if completion.tool_calls:
            message["tool_calls"] = completion.tool_calls
            if not completion.text.strip():
                message["content"] = None
        return message

    # ---------------------------------------------------------- whole replies
    def chat(self, stream, completions: list) -> ChatCompletion:
        choices = []
        for c in completions:
            message = self._message(c)
            logprobs = None
            if c.logprobs is not None:
                logprobs = self._chat_logprobs(self._shown(c.logprobs, c.finish_reason, True))
            choices.append(ChatChoice(index=c.index, message=message, logprobs=logprobs, finish_reason=self._finish(c)))
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=choices,
                              usage=self._usage([stream], completions))

    def completion(self, streams: list, results: list, echo: list[str] | None) -> TextCompletion:
        choices, all_completions = [], []
        n = self.params.n
        for p, completions in enumerate(results):
            for c in completions:
                logprobs = None
                if c.logprobs is not None:
                    logprobs = self._completion_logprobs(self._shown(c.logprobs, c.finish_reason, True))
                text = (echo[p] if echo else "") + c.text
                choices.append(CompletionChoice(index=p * n + c.index, text=text, logprobs=logprobs,
                                                finish_reason=self._finish(c)))
                all_completions.append(c)
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=choices,
                              usage=self._usage(streams, all_completions))

    # ---------------------------------------------------------- streams
    def _chunk(self, obj: str, choices: list, usage: Usage | None = None, include_usage: bool = False,
               extra: dict | None = None) -> str:
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                 "system_fingerprint": None, "choices": choices}
        if include_usage:
            chunk["usage"] = usage.model_dump() if usage is not None else None
        return _sse(chunk | (extra or {}))

    async def chat_events(self, request: Request, stream, include_usage: bool):
        obj = "chat.completion.chunk"
        n = self.params.n
        holds = [_ToolHold(self.engine.chat_format) if self.parse_tools else None for _ in range(n)]
        texts, finished = [""] * n, 0  # --rag: the sources ride on the chunk that ends the last choice
        try:
            for i in range(n):
                yield self._chunk(obj, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                         "finish_reason": None}], include_usage=include_usage)
            async for delta in _until_disconnected(request, stream):
                i, hold = delta.index, holds[delta.index]
                last = delta.finish_reason is not None
                text = hold.push(delta.text) if hold is not None else delta.text
                texts[i] += delta.text
                logprobs = None
                if delta.logprobs is not None:
                    entries = self._shown(delta.logprobs, delta.finish_reason, last)
                    logprobs = self._chat_logprobs(entries) if entries else None
                if text or logprobs:
                    yield self._chunk(obj, [{"index": i, "delta": {"content": text}, "logprobs": logprobs,
                                             "finish_reason": None}], include_usage=include_usage)
                if not last:
                    continue
                finish = "length" if delta.finish_reason == "length" else "stop"
                if hold is not None:
                    rest, calls = hold.end(self.engine)
                    if rest:
                        yield self._chunk(obj, [{"index": i, "delta": {"content": rest}, "logprobs": None,
                                                 "finish_reason": None}], include_usage=include_usage)
                    if calls:
                        finish = "tool_calls" if finish == "stop" else finish
                        tool_calls = [{"index": k, **call} for k, call in enumerate(calls)]
                        yield self._chunk(obj, [{"index": i, "delta": {"tool_calls": tool_calls}, "logprobs": None,
                                                 "finish_reason": None}], include_usage=include_usage)
                finished += 1
                extra = None
                if self.passages is not None and finished == n:  # the first choice's citations mark them
                    extra = {"sources": rag_sources(self.passages, texts[0])}
                yield self._chunk(obj, [{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}],
                                  include_usage=include_usage, extra=extra)
            if include_usage:
                yield self._chunk(obj, [], self._usage([stream], stream.completions), include_usage=True)
            yield "data: [DONE]\n\n"
        except (AcornError, RuntimeError) as e:  # the engine failed mid-stream: headers are out, say it in-band
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            stream.abort()

    async def completion_events(self, request: Request, streams: list, include_usage: bool,
                                echo: list[str] | None):
        obj, n = "text_completion", self.params.n
        offsets: dict[int, int] = {}
        try:
            if echo:
                for p, text in enumerate(echo):
                    for j in range(n):
                        yield self._chunk(obj, [{"index": p * n + j, "text": text, "logprobs": None,
                                                 "finish_reason": None}], include_usage=include_usage)
            async for p, delta in _merged(request, streams):
                index = p * n + delta.index
                last = delta.finish_reason is not None
                logprobs = None
                if delta.logprobs is not None:
                    entries = self._shown(delta.logprobs, delta.finish_reason, last)
                    logprobs = self._completion_logprobs(entries, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in logprobs["tokens"])
                finish = None if not last else ("length" if delta.finish_reason == "length" else "stop")
                if delta.text or logprobs or finish:
                    yield self._chunk(obj, [{"index": index, "text": delta.text, "logprobs": logprobs,
                                             "finish_reason": finish}], include_usage=include_usage)
            if include_usage:
                everything = [c for s in streams for c in s.completions]
                yield self._chunk(obj, [], self._usage(streams, everything), include_usage=True)
            yield "data: [DONE]\n\n"
        except (AcornError, RuntimeError) as e:
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            for s in streams:
                s.abort()


async def _until_disconnected(request: Request, stream):
    """The stream's deltas until it ends or the client goes away."""
    async for delta in stream:
        yield delta
        if await request.is_disconnected():
            stream.abort()
            return


async def _merged(request: Request, streams: list):
    """(which stream, delta) from several streams as they come (several prompts of one request)."""
    if len(streams) == 1:
        async for delta in _until_disconnected(request, streams[0]):
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p, stream):
        try:
            async for delta in stream:
                await queue.put((p, delta))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((p, e))
        finally:
            await queue.put((p, None))

    tasks = [asyncio.ensure_future(pump(p, s)) for p, s in enumerate(streams)]
    open_ = len(streams)
    try:
        while open_:
            p, item = await queue.get()
            if item is None:
                open_ -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield p, item
            if await request.is_disconnected():
                return
    finally:
        for t in tasks:
            t.cancel()


class _ToolHold:
    """Streaming a reply that may call tools: text is shown as it comes, up to
    the start of a tool call, which is held back until the end and then sent
    as tool_calls (a call's JSON in pieces would be of no use to anyone).
    acorn.chat.tools.streamable_content says how much is surely content."""

    def __init__(self, chat_format: str):
        self.chat_format = chat_format
        self.text = ""
        self.shown = 0

    def push(self, text: str) -> str:
        self.text += text
        cut, _ = streamable_content(self.text, self.chat_format)
        if cut <= self.shown:
            return ""
        out, self.shown = self.text[self.shown:cut], cut
        return out

    def end(self, engine) -> tuple[str, list[dict]]:
        """(the content not yet shown, the tool calls) once the reply is complete."""
        from acorn.infer.sequence import Completion

        c = engine.parse_tools(Completion(prompt_tokens=0, token_ids=[], text=self.text, finish_reason="stop"))
        shown = self.text[:self.shown]
        rest = c.text[len(shown):] if c.text.startswith(shown) else ""
        return rest, c.tool_calls
