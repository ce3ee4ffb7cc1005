"""Fixtures shared by the whole suite: tiny, made inside the session (nothing
is fetched), and deterministic (fixed seeds). Session-scoped, so each is
built once per test process; none may be changed by a test.

    tok              a byte-level BPE (vocabulary 300) trained on TEXT
    checkpoint       (directory, transformers model): a tiny random Llama
                     saved with `tok` as a Hugging Face checkpoint (context
                     128); tests/serve overrides it with a chat checkpoint
    tiny_world       directory of the built-in world, size "tiny", seed 0
    world_tokenizer  directory of a BPE (vocabulary 400) trained on the
                     tiny world's pretraining text
    random_llama()   the tiny random Llama itself, for fixtures that need
                     another vocabulary, context or special ids
    tiny_llava()     (Llava, Tokenizer): a tiny random LLaVA (16x16 images,
                     4 tokens each) with an acorn-format BPE that has <image>
    png()            the PNG bytes of a small random picture (by seed)

Every test runs with one intra-op thread (see _one_thread).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Offline, and quiet: read by huggingface_hub and transformers when first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

TEXT = (
    "The quick brown fox jumps over the lazy dog. A small acorn grows into a tall oak tree. "
    "Once upon a time there was a little model that learned to speak. The cat sat on the mat. "
) * 20


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: intra-op threads only cost synchronisation (tens of times
    slower on a shared 2-core machine). Child processes (`python -m acorn ...`)
    get one thread too, so a run split between a child and this process (kill
    and resume) computes with the same reduction order. Restored at the end."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(n)


def random_llama(vocab_size: int, *, context: int = 128, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None):
    """A tiny random Llama made by transformers (2 layers, width 32, 4 query and
    2 key/value heads), seed 0. The init std is 0.3, not 0.02, so the logits
    are far apart and greedy text varies instead of repeating one token."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=context, initializer_range=0.3,
                                   bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_llava(text: str = TEXT, *, context: int = 256):
    """A tiny random LLaVA (acorn.vision.llava, seed 0: a ViT of 16x16 images in 8x8
    patches, so 4 tokens per image; a 2-layer decoder, init std 0.3 so greedy text
    varies) and its BPE (vocabulary 300, acorn chat format, <image> special)."""
    from acorn.model.transformer import ModelConfig
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.vision.encoder import VisionConfig
    from acorn.vision.llava import IMAGE_TOKEN, Llava, LlavaConfig

    tok = Tokenizer.train([text], 300, chat_format="acorn", special_tokens=[IMAGE_TOKEN])
    torch.manual_seed(0)
    cfg = LlavaConfig(vision=VisionConfig(image_size=16, patch_size=8, d_model=16, n_layer=2, n_head=2, d_ff=32),
                      text=ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, n_kv_head=2,
                                       d_ff=64, max_seq_len=context, init_std=0.3),
                      image_token_id=tok.special_tokens[IMAGE_TOKEN])
    return Llava(cfg).eval(), tok


def png(seed: int, size: int = 20) -> bytes:
    """The PNG bytes of a size x size picture of random colours (seed)."""
    import io

    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def tiny_chat_checkpoint(path: Path, text: str, context: int) -> Path:
    """Save at path a tiny random Llama (random_llama) with a 400-token Acorn BPE
    trained on text, in the acorn chat format: the serving and agent tests' model."""
    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.train([text], 400, chat_format="acorn")
    hf = random_llama(tok.vocab_size, context=context, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
    hf.save_pretrained(path)
    tok.save(path)
    return path


@pytest.fixture(scope="session")
def tok():
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.train([TEXT], 300)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tok):
    """(directory, transformers model) of a tiny random Llama with an Acorn tokenizer."""
    hf = random_llama(tok.vocab_size)
    with torch.no_grad():  # norm weights away from 1, so a dropped norm would show
        g = torch.Generator().manual_seed(1)
        for p in hf.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + 1.0)
    path = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(path)
    tok.save(path)
    return path, hf


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from acorn.data.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=0, size="tiny", quiet=True)
    return out


@pytest.fixture(scope="session")
def world_tokenizer(tmp_path_factory, tiny_world) -> Path:
    from acorn.tokenizer.bpe import Tokenizer

    texts = [json.loads(line)["text"] for line in (tiny_world / "pretrain.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("world-tok")
    Tokenizer.train(texts, 400).save(path)
    return path
