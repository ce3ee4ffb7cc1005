"""What every part of the server shares: its state, its errors, prompt checks.

The OpenAI and Anthropic routes (openai_api.py, anthropic_api.py) are
APIRouters over one ServerState (request.app.state.acorn): the AsyncEngine,
the model's name, the limits. A route raises APIError; the app renders it
in the error shape of the API the request was made to:

  OpenAI     {"error": {"message", "type", "param", "code"}}
  Anthropic  {"type": "error", "error": {"type", "message"}}
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from fastapi import Request

from acorn.errors import AcornError
from acorn.serve.async_engine import AsyncEngine

# HTTP status -> the error types each API names it with.
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error"}
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                   413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
                   500: "api_error", 503: "overloaded_error"}


class APIError(Exception):
    """An error answered to the client: HTTP status, one clear message, and
    optionally the request field it is about (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    if is_anthropic(path):
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


@dataclass
class ServerState:
    engine: AsyncEngine
    model_name: str
    max_tokens_cap: int = 4096  # the most tokens one request may ask for
    default_max_tokens: int = 256  # when a request does not say
    created: int = 0  # unix time the model was loaded (OpenAI's `created`)
    api_keys: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.engine.engine.tokenizer

    @property
    def context(self) -> int:
        return self.engine.engine.model.config.max_seq_len

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters served beside the base (acorn serve --lora NAME=DIR): each is a `model`."""
        return list(getattr(self.engine.engine, "adapters", []))


def get_state(request: Request) -> ServerState:
    state = getattr(request.app.state, "acorn", None)
    if state is not None and state.engine.error is not None:
        raise APIError(503, f"the engine stopped: {state.engine.error}; restart the server")
    if state is None or not state.engine.running:
        raise APIError(503, "the model is loading or the server is shutting down; retry shortly",
                       headers={"Retry-After": "1"})
    return state


def check_model(state: ServerState, model: str | None) -> str | None:
    """Which LoRA adapter the `model` field selects (as vLLM serves adapters): None for the
    base model's name (or no name), the adapter's name for an adapter. An unknown name is a
    404, as the official APIs answer."""
    if model is None or model == state.model_name:
        return None
    if model in state.adapters:
        return model
    served = ", ".join(repr(n) for n in [state.model_name, *state.adapters])
    raise APIError(404, f"the model {model!r} does not exist; this server serves {served}",
                   param="model", code="model_not_found")


def check_prompt(state: ServerState, prompt_ids: list[int], max_tokens: int) -> int:
    """The prompt must fit the context with room for at least one token; returns
    max_tokens cut to the context that is left (as vLLM does)."""
    context = state.context
    if len(prompt_ids) >= context:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens but the model's context window is {context} "
                       f"tokens; shorten the prompt", param="messages", code="context_length_exceeded")
    if max_tokens > state.max_tokens_cap:
        raise APIError(400, f"max_tokens is {max_tokens} but this server allows at most {state.max_tokens_cap}",
                       param="max_tokens")
    return min(max_tokens, context - len(prompt_ids))


# ------------------------------------------------------------------ images
# Images arrive inline: an OpenAI image_url part holding a data: URL, an Anthropic
# image block with a base64 source. The server never fetches a URL (no network at
# run time); it decodes the bytes here, in the request's own handler, so every
# problem is that request's 400: a remote URL, bad base64, too many bytes, bytes
# that are no image or are cut short, too many pixels (acorn.vision.images).
NO_FETCH = "no network at run time; send the image inline as a data: URL (data:image/png;base64,...) or base64"


def image_from_data_url(url: str, where: str):
    """An OpenAI image_url's url (data:image/...;base64,...) -> a PIL image, or APIError 400."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", url, re.IGNORECASE):
        raise APIError(400, f"{where}: {url.split(':', 1)[0]} image URLs are not fetched ({NO_FETCH})", param=where)
    header, comma, data = url.partition(",")
    if not header.lower().startswith("data:") or not comma or not header.lower().endswith(";base64"):
        raise APIError(400, f"{where}: not a base64 data: URL; write data:image/png;base64,<the file's bytes in "
                            "base64>", param=where)
    return image_from_base64(data, where)


def image_from_base64(data: str, where: str):
    """The base64 text of an image file -> a PIL image, or APIError 400 naming the problem."""
    from acorn.vision import images

    if len(data) // 4 * 3 > images.MAX_BYTES:  # refused before decoding
        raise APIError(400, f"{where}: the image is about {len(data) // 4 * 3:,} bytes, more than the "
                            f"{images.MAX_BYTES:,} allowed per image; scale it down or re-encode it", param=where)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the image data is not valid base64; send the file's bytes base64-encoded "
                            "(RFC 4648, no line breaks)", param=where) from None
    try:
        return images.open_image(raw, name=where)
    except AcornError as e:
        raise APIError(400, str(e), param=where) from None


def rag_sources(passages: list[dict], text: str) -> list[dict]:
    """acorn serve --rag: the passages a reply was given, each marked `cited` when
    the reply's text cites it ([n], acorn.chat.context)."""
    from acorn.chat.context import parse_citations

    cited = parse_citations(text, len(passages))[1]
    return [dict(p, cited=p["number"] in cited) for p in passages]
