"""Many LoRA adapters behind one server: `model` picks the adapter, the official SDKs as clients.

The oracle is each adapter merged into the base (lora.merge_and_unload) run by its own
engine: the server's greedy reply for model=ADAPTER must be that model's.
"""

from __future__ import annotations

import pytest
import torch

import acorn
from acorn.cli import main
from acorn.infer import Engine
from acorn.model import lora
from tests.serve.conftest import run_server

NAMES = ("sql", "poet")
GREEDY = dict(max_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def adapters(checkpoint, tmp_path_factory):
    out = {}
    for i, name in enumerate(NAMES):
        m = acorn.load(checkpoint, device="cpu")
        lora.add_lora(m, r=4, alpha=8, targets="all-linear")
        g = torch.Generator().manual_seed(20 + i)
        with torch.no_grad():
            for layer in lora.lora_layers(m).values():
                b = layer.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
        out[name] = lora.save_adapter(m, tmp_path_factory.mktemp(f"serve-adapter-{name}"), base=checkpoint)
    return out


@pytest.fixture(scope="module")
def lora_server(checkpoint, adapters):
    from acorn.serve.app import create_app

    engine = Engine.from_pretrained(checkpoint, device="cpu", lora_adapters=adapters)
    srv = run_server(create_app(engine, model_name="tiny"), engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def merged(checkpoint, adapters):
    """name -> an engine on that adapter merged into the base (None: the base)."""
    out = {None: Engine.from_pretrained(checkpoint, device="cpu")}
    for name, directory in adapters.items():
        model = lora.merge_and_unload(acorn.load(checkpoint, device="cpu", adapter=directory))
        out[name] = Engine(model, out[None].tokenizer)
    return out


def _openai(srv):
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)


def test_model_selects_the_adapter_and_gives_the_merged_models_greedy_reply(lora_server, merged):
    client = _openai(lora_server)
    texts = {}
    for model in ("tiny", *NAMES):
        r = client.completions.create(model=model, prompt="The quick brown", **GREEDY)
        assert r.model == model
        texts[model] = r.choices[0].text
        assert texts[model] == merged[None if model == "tiny" else model].generate("The quick brown", **GREEDY)[0].text
    assert len(set(texts.values())) == 3  # the adapters change the reply
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    chat = client.chat.completions.create(model="poet", messages=messages, **GREEDY)
    assert chat.model == "poet" and chat.choices[0].message.content == merged["poet"].chat(messages, **GREEDY).text


def test_requests_for_different_adapters_share_the_engine_and_stream(lora_server, merged):
    """Concurrent streamed requests, one per model: each streams its own merged model's text."""
    from concurrent.futures import ThreadPoolExecutor

    client = _openai(lora_server)

    def stream(model):
        chunks = client.completions.create(model=model, prompt="A small acorn", stream=True, **GREEDY)
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(3) as pool:
        got = dict(zip(("tiny", *NAMES), pool.map(stream, ("tiny", *NAMES))))
    for model, text in got.items():
        assert text == merged[None if model == "tiny" else model].generate("A small acorn", **GREEDY)[0].text


def test_models_lists_the_base_and_its_adapters(lora_server):
    import openai

    client = _openai(lora_server)
    cards = client.models.list().data
    assert [c.id for c in cards] == ["tiny", *sorted(NAMES)]
    assert [c.model_extra["parent"] for c in cards] == [None, "tiny", "tiny"]
    assert client.models.retrieve("sql").model_extra["parent"] == "tiny"
    with pytest.raises(openai.NotFoundError, match="this server serves 'tiny', 'poet', 'sql'"):
        client.completions.create(model="sq1", prompt="x", max_tokens=1)


def test_anthropic_messages_select_the_adapter_by_model(lora_server, merged):
    import anthropic

    client = anthropic.Anthropic(base_url=lora_server.url, api_key="x", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # This SDK no longer names temperature: it travels in extra_body, as any client sends it.
    msg = client.messages.create(model="sql", messages=messages, max_tokens=10, extra_body={"temperature": 0})
    assert msg.model == "sql"
    assert msg.content[0].text == merged["sql"].chat(messages, **GREEDY).text
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", messages=messages, max_tokens=1)


@pytest.mark.parametrize("spec, error", [
    ("sql", "--lora 'sql': expected NAME=DIR"),
    ("=adapter", "expected NAME=DIR"),
    ("sql=/no/such/adapter", "/no/such/adapter: no such adapter directory"),
])
def test_bad_lora_flags_are_one_line_exit_2(checkpoint, spec, error, capsys):
    assert main(["serve", str(checkpoint), "--device", "cpu", "--lora", spec]) == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1


def test_an_adapter_name_taken_twice_is_refused(checkpoint, adapters, capsys):
    argv = ["serve", str(checkpoint), "--device", "cpu", "--model-name", "tiny"]
    assert main([*argv, "--lora", f"a={adapters['sql']}", "--lora", f"a={adapters['poet']}"]) == 2
    assert "the name 'a' is already another adapter's" in capsys.readouterr().err
    assert main([*argv, "--lora", f"tiny={adapters['sql']}"]) == 2
    assert "already the base model" in capsys.readouterr().err
