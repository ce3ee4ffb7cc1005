"""The HTTP server: one Engine behind the OpenAI and Anthropic APIs.

create_app() builds a FastAPI application around an Engine (or a checkpoint
directory, loaded in the background so /health can answer 503 meanwhile):

  lifespan     the Engine is wrapped in an AsyncEngine (one thread steps it,
               every request awaits it; acorn.serve.async_engine) and started
               with the server; on shutdown requests in flight get
               `shutdown_grace` seconds to finish, then are aborted
  routes       /v1/chat/completions, /v1/completions, /v1/models,
               /v1/embeddings (acorn.serve.openai_api); /v1/messages
               (acorn.serve.anthropic_api); /v1/agent and /v1/agent/tools
               (acorn.serve.agent_api); GET /health; GET /metrics
               (Prometheus text); GET / and /static/* (the chat page)
  middleware   CORS for the configured origins; API keys (Authorization:
               Bearer KEY or x-api-key: KEY; /health and the page are open);
               a request body limit (413)
  errors       every failure is answered in the error shape of the API the
               request was made to (common.error_body): APIError as raised,
               invalid fields 400 naming the field (OpenAI answers 400, not
               FastAPI's 422), AcornError 400, a request the model
               failed (GenerationError: non-finite logits) 500 with the
               reason, the server going on, a full queue 429 with
               Retry-After, shutting down 503, anything else 500 without a
               traceback

    app = create_app("runs/sft", api_keys=["secret"])
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or: acorn serve runs/sft
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from acorn.errors import AcornError
from acorn.infer.sampling import GenerationError
from acorn.serve.async_engine import AsyncEngine, QueueFull, ShuttingDown
from acorn.serve.common import APIError, ServerState, error_body

log = logging.getLogger("acorn.serve")

STATIC = Path(__file__).parent / "static"
TEXT_BODY_BYTES = 1 << 20  # a request body's default limit
IMAGE_BODY_BYTES = 32 << 20  # ... for a model that reads images: a 20 MiB image is 26.7 MiB in base64
OPEN_PATHS = ("/health",)  # answered without an API key (load balancers probe it)
OPEN_PREFIXES = ("/static/",)  # the chat page; its requests to the API carry the key


def check_api_keys(api_keys: Sequence[str]) -> tuple[str, ...]:
    """The keys to require, refusing an empty one: `--api-key "$KEY"` with KEY unset
    asks for keys but gives none, and serving everyone then would be the opposite of
    what was asked."""
    if isinstance(api_keys, str):
        api_keys = [api_keys]
    keys = tuple(api_keys)
    for k in keys:
        if not isinstance(k, str) or not k.strip():
            raise AcornError(f"API key {k!r} is empty (was --api-key given an unset variable?); pass a non-empty "
                             "key, or no --api-key at all to serve without keys")
        if k != k.strip():
            raise AcornError("an API key starts or ends with whitespace, which no client can send in a header; "
                             "strip it")
    return keys


def create_app(engine_or_path, *, model_name: str | None = None, api_keys: Sequence[str] = (),
               cors_origins: Sequence[str] = (), max_body_bytes: int | None = None, max_tokens_cap: int = 4096,
               max_pending: int = 256, shutdown_grace: float = 5.0, engine_options: dict | None = None,
               rag=None, tools=None) -> FastAPI:
    """The server for an Engine, or for a checkpoint directory loaded with
    Engine.from_pretrained(path, **engine_options) once the server starts.

    model_name: what clients pass as `model` (default: the directory's name, or "acorn").
    api_keys: when given, every API request must carry one of them.
    max_body_bytes: the largest request body; default 1 MiB, or 32 MiB for a model that
        reads images (one image of acorn.vision.images.MAX_BYTES, base64-encoded, with its text).
    max_tokens_cap: the most tokens one request may ask for.
    max_pending: requests waiting beyond this are answered 429.
    shutdown_grace: seconds requests in flight get to finish when the server stops.
    rag: an acorn.rag.pipeline.RAG (index and embedder, no model): each chat request's last
        user turn is answered from the passages it retrieves, and the reply carries `sources`
        (streamed: on the chunk that ends it); on /v1/messages the cited passages are also the
        text block's `citations`. The chat page shows them under the answer.
    tools: an acorn.agent.tools.ToolRegistry: POST /v1/agent runs the agent loop with them
        (acorn.serve.agent_api), and the chat page shows its tools switch.
    """
    path = None if _is_engine(engine_or_path) else Path(engine_or_path)
    if model_name is None:
        model_name = path.name if path is not None else "acorn"
    api_keys = check_api_keys(api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.acorn = None
        app.state.load_error = None

        async def start(engine) -> None:
            engine_async = AsyncEngine(engine, max_pending=max_pending)
            engine_async.start()
            # A request that does not say max_tokens gets the default, never more than the
            # cap: it must not be refused for a number it did not send.
            app.state.acorn = ServerState(engine=engine_async, model_name=model_name, max_tokens_cap=max_tokens_cap,
                                          default_max_tokens=min(ServerState.default_max_tokens, max_tokens_cap),
                                          created=int(time.time()), api_keys=api_keys,
                                          extra=({"rag": rag} if rag is not None else {})
                                          | ({"tools": tools} if tools is not None else {}))

        async def load() -> None:
            from acorn.infer import Engine

            try:
                engine = await asyncio.to_thread(Engine.from_pretrained, path, **(engine_options or {}))
            except Exception as e:  # /health reports it; the API answers 503
                app.state.load_error = f"{e}"
                log.error("acorn: could not load %s: %s", path, e)
                return
            await start(engine)

        loading = None
        if path is None:
            await start(engine_or_path)
        else:
            loading = asyncio.create_task(load())
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            state = app.state.acorn
            if state is not None:
                await state.engine.stop(shutdown_grace)

    app = FastAPI(title="Acorn", summary="An OpenAI- and Anthropic-compatible server for one Acorn model",
                  lifespan=lifespan)
    _add_error_handlers(app)

    from acorn.serve.anthropic_api import router as anthropic_router
    from acorn.serve.openai_api import router as openai_router

    app.include_router(openai_router)
    app.include_router(anthropic_router)
    from acorn.serve.agent_api import router as agent_router

    app.include_router(agent_router)

    @app.get("/health")
    async def health(request: Request):
        state = request.app.state
        if getattr(state, "acorn", None) is not None and state.acorn.engine.running:
            return {"status": "ok"}
        error = getattr(state, "load_error", None)
        if getattr(state, "acorn", None) is not None and state.acorn.engine.error is not None:
            error = f"the engine stopped: {state.acorn.engine.error}"  # its thread died: not "loading"
        body = {"status": "error", "message": error} if error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics(request: Request):
        state = request.app.state.acorn
        if state is None:
            raise APIError(503, "the model is loading", headers={"Retry-After": "1"})
        return PlainTextResponse(prometheus_text(state.engine.metrics(), state.model_name),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if not page.is_file():
            raise APIError(404, "this server has no web page (acorn/serve/static/index.html is missing)")
        return FileResponse(page, media_type="text/html")

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Starlette wraps each added middleware around the ones before: CORS is
    # outermost, so preflight requests and 401/413 answers carry its headers.
    app.add_middleware(_Guard, api_keys=api_keys, max_body_bytes=max_body_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After"])
    return app


def _is_engine(obj) -> bool:
    return hasattr(obj, "step") and hasattr(obj, "tokenizer")


# ------------------------------------------------------------------ errors
def _error(request: Request, status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message, param, code), status_code=status,
                        headers=headers or None)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance", "literal", "function-after",
              "function-before", "function-wrap", "tagged-union", "union"}


def _field(loc: Sequence) -> list:
    """A pydantic error location without its 'body' root and the names
    pydantic gives the members of a union ('str', 'list[int]', ...)."""
    out = []
    for part in loc:
        if part in ("body", "query", "path"):
            continue
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.split("[")[0] in _TYPE_TAGS):
            continue
        out.append(part)
    return out


def _field_name(parts: list) -> str:
    """['messages', 0, 'role'] -> messages[0].role, the field as people write it."""
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return _error(request, e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if not errors:
            return _error(request, 400, "the request is not valid")
        first = errors[0]
        if first.get("type") == "json_invalid":
            return _error(request, 400, f"the request body is not valid JSON: {first.get('msg', '')}")
        # One field's value that fits no member of a union gives one error per
        # member: they share the field's location, which is the one to name.
        parts = _field(first.get("loc", ()))
        same = [e for e in errors if _field(e.get("loc", ()))[:1] == parts[:1]]
        for e in same[1:]:
            other = _field(e.get("loc", ()))
            k = 0
            while k < min(len(parts), len(other)) and parts[k] == other[k]:
                k += 1
            parts = parts[:k]
        field = _field_name(parts)
        message = first.get("msg", "invalid value")
        if len(same) > 1:
            message = f"not a valid value ({'; '.join(dict.fromkeys(e.get('msg', '') for e in same))})"
        if field:
            message = f"{field}: {message}"
        if len(errors) > len(same):
            more = len(errors) - len(same)
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        return _error(request, 400, message, param=field or None)

    @app.exception_handler(AcornError)
    async def acorn_error(request: Request, e: AcornError):
        return _error(request, 400, str(e))

    @app.exception_handler(GenerationError)  # a valid request the model failed (non-finite logits): ours, not theirs
    async def generation_error(request: Request, e: GenerationError):
        return _error(request, 500, str(e))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        return _error(request, 429, f"the server is busy: {e}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, e: ShuttingDown):
        return _error(request, 503, "the server is shutting down", headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return _error(request, e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("acorn: internal error on %s", request.url.path)
        return _error(request, 500, f"internal server error ({type(e).__name__})")


# -------------------------------------------------------------- middleware
class _Guard:
    """API keys and the request body limit, as plain ASGI middleware (a
    BaseHTTPMiddleware would buffer streamed responses and hide disconnects).

    The body is read here, up to the limit, and replayed to the app: a
    client that sends more (with or without a Content-Length) gets 413
    before any of it is parsed."""

    def __init__(self, app, *, api_keys: tuple[str, ...], max_body_bytes: int | None):
        self.app = app
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes

    def limit(self, scope) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        state = getattr(scope.get("app").state, "acorn", None) if scope.get("app") is not None else None
        reads_images = state is not None and getattr(state.engine.engine, "tokens_per_image", None) is not None
        return IMAGE_BODY_BYTES if reads_images else TEXT_BODY_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_keys and method != "OPTIONS" and not _open(path) and not self._authorized(headers):
            given = "authorization" in headers or "x-api-key" in headers
            message = ("the API key is not valid" if given else
                       "this server needs an API key: send Authorization: Bearer KEY or x-api-key: KEY")
            return await _send_error(send, path, 401, message, code="invalid_api_key")
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.limit(scope)
        declared = headers.get("content-length")
        too_large = f"the request body is larger than this server's limit of {limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, path, 413, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _send_error(send, path, 413, too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        # Compared in constant time, every key: the answer's timing says nothing about a key's prefix.
        return any([hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys])


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path == "/" or path.startswith(OPEN_PREFIXES)


async def _send_error(send, path: str, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(path, status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------- metrics
_METRICS = [  # (AsyncEngine.metrics() key, Prometheus name, type, help)
    ("queue_depth", "acorn_queue_depth", "gauge", "Requests accepted and waiting to run."),
    ("running_requests", "acorn_running_requests", "gauge", "Requests in the running batch."),
    ("kv_blocks_in_use", "acorn_kv_blocks_in_use", "gauge", "Paged KV-cache blocks in use."),
    ("kv_blocks_total", "acorn_kv_blocks_total", "gauge", "Paged KV-cache blocks in the pool."),
    ("tokens_per_second", "acorn_generation_tokens_per_second", "gauge",
     "Generated tokens per second over the last 10 seconds."),
    ("requests_total", "acorn_requests_total", "counter", "Requests accepted."),
    ("prompt_tokens_total", "acorn_prompt_tokens_total", "counter", "Prompt tokens of accepted requests."),
    ("generated_tokens_total", "acorn_generation_tokens_total", "counter", "Tokens generated."),
    ("prefix_cache_hit_tokens_total", "acorn_prefix_cache_hit_tokens_total", "counter",
     "Prompt tokens served from the prefix cache."),
]


def prometheus_text(m: dict, model_name: str) -> str:
    """AsyncEngine.metrics() in Prometheus' text exposition format (version 0.0.4)."""
    label = '{model="%s"}' % model_name.replace("\\", "\\\\").replace('"', '\\"')
    lines = []
    for key, name, kind, help in _METRICS:
        if key not in m:
            continue
        lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name}{label} {float(m[key]):g}"]
    lines += ["# HELP acorn_time_to_first_token_seconds Time to first token of recent requests.",
              "# TYPE acorn_time_to_first_token_seconds summary"]
    for q, key in (("0.5", "time_to_first_token_seconds_p50"), ("0.9", "time_to_first_token_seconds_p90")):
        lines.append(f'acorn_time_to_first_token_seconds{label[:-1]},quantile="{q}"}} {float(m.get(key, 0.0)):g}')
    return "\n".join(lines) + "\n"
