"""Images through the server, driven by the official `openai` and `anthropic` SDKs.

A tiny random LLaVA is served (tests.conftest.tiny_llava); the oracle is the
same model in an Engine of its own, given the same picture as bytes. Every way
an image can be wrong is one HTTP 400 in the API's own error shape, naming the
problem: a remote URL (never fetched), bad base64, bytes that are no image, a
format outside the supported ones, too many bytes or pixels, an image for a
text-only model."""

from __future__ import annotations

import base64
import io

import anthropic
import openai
import pytest

from acorn.infer import Engine
from tests.conftest import png, tiny_llava

from .conftest import run_server, sdk_clients


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(raw).decode()


def tiff() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="TIFF")
    return out.getvalue()


@pytest.fixture(scope="module")
def llava_server():
    model, tok = tiny_llava()
    from acorn.serve.app import create_app

    engine = Engine(model, tok, device="cpu")
    srv = run_server(create_app(engine, model_name="tiny-llava"), engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oracle():
    model, tok = tiny_llava()  # seed 0: the served model's weights
    return Engine(model, tok, device="cpu")


@pytest.fixture(scope="module")
def clients(llava_server):
    """(openai.OpenAI, anthropic.Anthropic) on the LLaVA server."""
    return sdk_clients(llava_server.url)


def user(image: bytes) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                         {"type": "image", "image": image}]}]


def openai_parts(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def anthropic_parts(source: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                         {"type": "image", "source": source}]}]


def b64_source(raw: bytes) -> dict:
    return {"type": "base64", "media_type": "image/png", "data": base64.b64encode(raw).decode()}


def test_openai_image_url_reply_is_the_engine_s(clients, oracle):
    oai, _ = clients
    replies = []
    for seed in (1, 2):
        r = oai.chat.completions.create(model="tiny-llava", messages=openai_parts(data_url(png(seed))),
                                        max_tokens=8, temperature=0)
        want = oracle.chat(user(png(seed)), max_new_tokens=8, temperature=0)
        assert r.choices[0].message.content == want.text
        assert r.usage.prompt_tokens == len(oracle.chat_prompt(user(png(seed))))  # 4 placeholders counted
        replies.append(want.token_ids)
    assert replies[0] != replies[1]  # the picture reaches the model


def test_anthropic_base64_image_reply_is_the_engine_s(clients, oracle):
    _, claude = clients
    r = claude.messages.create(model="tiny-llava", max_tokens=8, extra_body={"temperature": 0},  # not an SDK field now
                               messages=anthropic_parts(b64_source(png(3))))
    want = oracle.chat(user(png(3)), max_new_tokens=8, temperature=0)
    assert "".join(b.text for b in r.content if b.type == "text") == want.text


@pytest.mark.parametrize("url, message", [
    ("https://example.com/cat.png", "https image URLs are not fetched (no network at run time"),
    ("data:image/png;base64,not*base64!", "not valid base64"),
    ("data:image/png,rawbytes", "not a base64 data: URL"),
    (data_url(b"\x89PNG\r\n\x1a\n cut short"), "not an image"),
    (data_url(tiff(), "image/tiff"), "TIFF images are not supported"),
])
def test_openai_bad_images_are_400(clients, url, message):
    oai, _ = clients
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="tiny-llava", messages=openai_parts(url), max_tokens=4)
    assert message in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"
    assert e.value.body["message"].startswith("messages[0].content[1]: ")  # where, then what


def test_images_over_the_limits_are_400(clients, monkeypatch):
    oai, claude = clients
    from acorn.vision import images

    monkeypatch.setattr(images, "MAX_BYTES", 100)
    with pytest.raises(openai.BadRequestError, match="more than the 100 allowed"):
        oai.chat.completions.create(model="tiny-llava", messages=openai_parts(data_url(png(1))), max_tokens=4)
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_PIXELS", 100)  # png() is 20x20
    with pytest.raises(anthropic.BadRequestError, match="20x20 pixels is more than the 100 allowed"):
        claude.messages.create(model="tiny-llava", max_tokens=4, messages=anthropic_parts(b64_source(png(1))))


@pytest.mark.parametrize("source, message", [
    ({"type": "url", "url": "https://example.com/cat.png"}, "url image sources are not fetched (no network"),
    ({"type": "base64", "media_type": "image/png", "data": "%%%"}, "not valid base64"),
    ({"type": "file", "file_id": "file_1"}, 'needs a source {"type": "base64"'),
])
def test_anthropic_bad_images_are_400(clients, source, message):
    _, claude = clients
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="tiny-llava", max_tokens=4, messages=anthropic_parts(source))
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert message in e.value.body["error"]["message"]


def test_an_image_for_a_text_only_model_is_400(server):
    oai, claude = sdk_clients(server.url)
    with pytest.raises(openai.BadRequestError, match="text-only model"):
        oai.chat.completions.create(model="tiny", messages=openai_parts(data_url(png(1))), max_tokens=4)
    with pytest.raises(anthropic.BadRequestError, match="text-only model"):
        claude.messages.create(model="tiny", max_tokens=4, messages=anthropic_parts(b64_source(png(1))))
    assert server.engine.stats()["blocks_in_use"] == 0
