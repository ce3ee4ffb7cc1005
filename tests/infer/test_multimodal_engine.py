"""Images through the engine (acorn.infer.multimodal): a tiny random LLaVA.

Oracle: Llava.forward on the whole sequence (no cache, the image rows written
by the plain forward), greedy, one token at a time. The engine's paged loop,
with chunked prefill splitting the image's placeholders across steps, must
produce the same tokens; different images must give their own outputs in one
batch and never share KV blocks; the same image sent again must."""

from __future__ import annotations

import io

import pytest
import torch

from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.infer.llm import LLM
from acorn.vision.images import load_pixels, to_unit
from tests.conftest import png, tiny_llava

SYSTEM = {"role": "system", "content": "You are a small model that looks at pictures."}
GREEDY = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)


def conversation(image) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": [{"type": "text", "text": "What is in "},
                                                 {"type": "image", "image": image},
                                                 {"type": "text", "text": "? Tell me."}]}]


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def engine_of(llava, **options) -> Engine:
    model, tok = llava
    options.setdefault("block_size", 4)
    return Engine(model, tok, device="cpu", **options)


def reference(llava, ids: list[int], images: list[bytes], n: int) -> list[int]:
    """Greedy decoding with Llava.forward over the whole sequence at every step."""
    model, tok = llava
    pixels = model.vision.normalize(to_unit(load_pixels(images, model.config.vision.image_size)))
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out]), pixel_values=pixels).logits[0, -1, :tok.vocab_size]
            out.append(int(logits.argmax()))
    return out


def test_greedy_with_an_image_matches_the_full_forward_across_prefill_chunks(llava):
    engine = engine_of(llava, max_num_batched_tokens=6)  # the prompt, placeholders included, in chunks of 6
    msgs = conversation(png(1))
    ids = engine.chat_prompt(msgs)
    t = engine.tokens_per_image
    first = ids.index(llava[0].config.image_token_id)
    assert t == 4 and ids[first:first + t] == [llava[0].config.image_token_id] * t
    assert any(first < m < first + t for m in range(0, len(ids), 6))  # a chunk boundary splits the image
    c = engine.chat(msgs, GREEDY)
    assert c.token_ids == reference(llava, ids, [png(1)], 8)
    assert engine.stats()["images_encoded"] == 1  # once per request, whatever the chunks
    assert engine.stats()["blocks_in_use"] == 0


def test_different_images_keep_their_own_outputs_and_blocks_and_the_same_image_hits_the_cache(llava):
    a, b = png(1), png(2)
    alone = []
    for image in (a, b):
        e = engine_of(llava)
        alone.append(e.chat(conversation(image), GREEDY).token_ids)
    assert alone[0] != alone[1]  # the picture changes the reply: the rows reach the decoder

    engine = engine_of(llava)
    ids = engine.chat_prompt(conversation(a))
    assert ids == engine.chat_prompt(conversation(b))  # same ids: only the images differ
    together = engine.generate([ids, ids], GREEDY, images=[[a], [b]])
    assert [c.token_ids for c in together] == alone  # batch invariance
    assert engine.stats()["blocks_in_use"] == 0

    first = ids.index(llava[0].config.image_token_id)
    engine.reset_prefix_cache()
    engine.chat(conversation(a), GREEDY)
    other = engine.chat(conversation(b), GREEDY)
    assert other.token_ids == alone[1]
    # Only the text before the image is shared (whole blocks of it), never a block holding an image row.
    assert 0 < other.cached_tokens <= first
    encoded = engine.stats()["images_encoded"]
    again = engine.chat(conversation(a), GREEDY)
    assert again.token_ids == alone[0]
    assert again.cached_tokens >= first + engine.tokens_per_image  # the image's blocks came from the cache
    assert engine.stats()["images_encoded"] == encoded  # ... so the encoder did not run again
    assert engine.stats()["blocks_in_use"] == 0


def test_preempted_image_requests_recompute_to_the_same_tokens(llava):
    a, b = png(1), png(2)
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    alone = [engine_of(llava).chat(conversation(image), params).token_ids for image in (a, b)]
    small = engine_of(llava, kv_cache_memory=24 * 4 * 256)  # 24 blocks of 4: one request fits, two do not
    assert small.stats()["kv_bytes_per_token"] == 256
    ids = small.chat_prompt(conversation(a))
    together = small.generate([ids, ids], params, images=[[a], [b]])
    assert small.stats()["preemptions"] > 0
    assert [c.token_ids for c in together] == alone
    assert small.stats()["images_encoded"] == 2  # the features outlive the preemption: not encoded again
    assert small.stats()["blocks_in_use"] == 0


def test_raw_ids_stream_and_llm_take_images(llava):
    engine = engine_of(llava)
    ids = engine.chat_prompt(conversation(png(3)))
    want = reference(llava, ids, [png(3)], 8)
    gen = engine.stream(ids, GREEDY, images=[png(3)])
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as stop:
        assert stop.value.token_ids == want
    (out,) = LLM(engine).chat(conversation(png(3)), GREEDY)
    assert out.outputs[0].token_ids == want


def test_image_mistakes_are_one_clear_error(llava):
    model, tok = llava
    engine = engine_of(llava)
    ids = engine.chat_prompt(conversation(png(1)))
    with pytest.raises(AcornError, match="4 placeholder|4 per image"):
        engine.generate(ids, GREEDY, images=[png(1), png(2)])  # two images, placeholders for one
    with pytest.raises(AcornError, match="4 per image"):
        engine.generate(ids, GREEDY)  # placeholders without their image
    with pytest.raises(AcornError, match="not an image"):
        engine.chat(conversation(b"\x89PNG\r\n\x1a\n cut short"), GREEDY)
    with pytest.raises(AcornError, match="paged"):
        engine_of(llava, paged=False).chat(conversation(png(1)), GREEDY)
    text_only = Engine(model.language, tok, device="cpu")  # the decoder alone reads no images
    with pytest.raises(AcornError, match="text-only model"):
        text_only.chat(conversation(png(1)), GREEDY)
    with pytest.raises(AcornError, match="text-only model"):
        text_only.generate([1, 2, 3], GREEDY, images=[png(1)])
    assert engine.stats()["blocks_in_use"] == 0


def test_from_pretrained_loads_a_llava_directory(llava, tmp_path):
    from acorn.vision.llava import is_llava_dir, save_llava

    model, tok = llava
    save_llava(model, tok, tmp_path)
    assert is_llava_dir(tmp_path)
    loaded = Engine.from_pretrained(tmp_path, device="cpu", block_size=4)
    assert loaded.tokens_per_image == 4
    want = engine_of(llava).chat(conversation(png(1)), GREEDY).token_ids
    assert loaded.chat(conversation(png(1)), GREEDY).token_ids == want


def test_acorn_chat_image_goes_with_the_first_turn(llava, tmp_path, monkeypatch, capsys):
    from acorn.cli import main

    picture = tmp_path / "p.png"
    picture.write_bytes(png(4))
    monkeypatch.setattr("acorn.cli._engine", lambda args: engine_of(llava))  # as from_pretrained would load it
    flags = ["--temperature", "0", "--max-new-tokens", "8"]
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", "tiny-llava", "--image", str(picture), *flags]) == 0
    want = engine_of(llava).chat([{"role": "user", "content": [{"type": "image", "image": png(4)},
                                                               {"type": "text", "text": "hello"}]}],
                                 max_new_tokens=8, temperature=0)
    assert f"assistant> {want.text}\n" in capsys.readouterr().out

    (tmp_path / "bad.png").write_bytes(b"not a picture")
    assert main(["chat", "tiny-llava", "--image", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.png: not an image" in err
    monkeypatch.setattr("acorn.cli._engine", lambda args: Engine(llava[0].language, llava[1], device="cpu"))
    assert main(["chat", "text-model", "--image", str(picture)]) == 2
    assert "text-only model" in capsys.readouterr().err
