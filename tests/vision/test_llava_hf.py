"""LLaVA checkpoints (acorn.vision.llava: save_llava / load_llava) with transformers as the oracle:
LlavaForConditionalGeneration and AutoProcessor read what Acorn writes, and Acorn reads what
transformers writes (in either weight layout), each with the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig
from acorn.vision import images
from acorn.vision.encoder import VisionConfig
from acorn.vision.llava import IMAGE_TOKEN, Llava, LlavaConfig, is_llava_dir, load_llava, save_llava
from tests.conftest import TEXT

TINY_VISION = dict(image_size=32, patch_size=8, d_model=32, n_layer=2, n_head=2, d_ff=64)  # 16 image tokens
N_IMAGE = 16


@pytest.fixture(scope="module")
def tok():
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.train([TEXT], 300, special_tokens=[IMAGE_TOKEN])


def _ours(tok, *, tie: bool = True, act: str = "gelu") -> Llava:
    torch.manual_seed(0)
    text = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64,
                       max_seq_len=128, tie_embeddings=tie)
    cfg = LlavaConfig(VisionConfig(**TINY_VISION, act=act, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]),
                      text, tok.special_tokens[IMAGE_TOKEN])
    model = Llava(cfg)
    with torch.no_grad():  # away from the initial values (zero biases, unit gains) so that every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _image(w: int = 50, h: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _our_pixels(model: Llava, img: Image.Image) -> torch.Tensor:
    """acorn.vision.images' CLIP preprocessing, then the encoder's normalisation: (1, 3, S, S)."""
    size = model.config.vision.image_size
    return model.vision.normalize(images.to_unit(images.to_tensor(images.resize_and_crop(img, size)))[None])


def _prompt(tok) -> torch.Tensor:
    from acorn.chat.template import apply_chat_template

    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is in"},
                                         {"type": "image", "image": "picture.png"},
                                         {"type": "text", "text": "this picture? The cat sat on the mat."}]}]
    ids = apply_chat_template(tok, msgs, add_generation_prompt=True, image_tokens=N_IMAGE)
    assert sum(i == tok.special_tokens[IMAGE_TOKEN] for i in ids) == N_IMAGE
    return torch.tensor([ids])


@pytest.mark.parametrize("tie", [True, False])
def test_our_checkpoint_is_a_transformers_llava_with_the_same_logits(tmp_path, tok, tie):
    from transformers import AutoProcessor, CLIPImageProcessor, LlavaForConditionalGeneration

    model = _ours(tok, tie=tie)
    save_llava(model, tok, tmp_path / "llava")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    img = _image()
    theirs = CLIPImageProcessor.from_pretrained(tmp_path / "llava")(images=img, return_tensors="pt")["pixel_values"]
    ours = _our_pixels(model, img)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    ids = _prompt(tok)
    with torch.no_grad():
        a = model(ids, ours).logits
        b = hf(input_ids=ids, pixel_values=theirs).logits
        other = model(ids, _our_pixels(model, _image(seed=1))).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a[0, -1] - other[0, -1]).abs().max() > 1e-3  # the image is read: another one changes the next token
    # The processor (LlavaProcessor) expands one "<image>" to tokens_per_image placeholders, as the template does.
    proc = AutoProcessor.from_pretrained(tmp_path / "llava")
    out = proc(images=img, text=f"look {IMAGE_TOKEN} here", return_tensors="pt")
    assert out["input_ids"][0].tolist() == tok.encode("look ") + [model.config.image_token_id] * N_IMAGE + \
        tok.encode(" here")
    torch.testing.assert_close(out["pixel_values"], ours, atol=1e-5, rtol=0)


def _hf_llava(act: str = "quick_gelu"):
    """A tiny random LLaVA made by transformers: a Llama decoder, a CLIP vision tower."""
    import transformers

    torch.manual_seed(1)
    cfg = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, hidden_act=act),
        text_config=dict(model_type="llama", vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3),
        image_token_index=299, image_seq_length=N_IMAGE)
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf


def _classic(k: str) -> str:  # 4.x before 4.52 (the llava-hf checkpoints): CLIPVisionModel's vision_model level
    return k.replace("vision_tower.", "vision_tower.vision_model.", 1)


# The weight names each transformers version wrote, from the names 5.x writes.
LAYOUTS = {
    "5.x": lambda k: k,
    "4.x (llava-hf)": _classic,
    "4.52-4.5x": lambda k: ("lm_head." + k[len("language_model.lm_head."):] if k.startswith("language_model.lm_head.")
                            else "model.language_model." + k[len("language_model.model."):]
                            if k.startswith("language_model.model.") else "model." + _classic(k)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_llava_made_by_transformers_loads_with_the_same_logits(tmp_path, layout):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor

    hf = _hf_llava()
    hf.save_pretrained(tmp_path / "hf")
    if layout == "5.x":  # no preprocessor_config.json: CLIPImageProcessor's defaults, as transformers would use
        defaults = CLIPImageProcessor()
        cfg = load_llava(tmp_path / "hf")[0].config.vision
        assert (cfg.image_mean, cfg.image_std) == (list(defaults.image_mean), list(defaults.image_std))
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]  # OpenAI CLIP's, not VisionConfig's defaults
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32, image_mean=mean, image_std=std).save_pretrained(
        tmp_path / "hf")
    file = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(file)
    assert "language_model.model.embed_tokens.weight" in tensors and "vision_tower.pre_layrnorm.weight" in tensors
    save_file({LAYOUTS[layout](k): v for k, v in tensors.items()}, file, metadata={"format": "pt"})

    model, tok = load_llava(tmp_path / "hf")
    assert tok is None and model.config.vision.act == "quick_gelu" and model.config.image_token_id == 299
    assert model.config.vision.image_mean == mean and model.config.vision.image_std == std
    ids = torch.tensor([[1, 5, 9] + [299] * N_IMAGE + [17, 3, 250, 8]])
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = model(ids, model.vision.normalize(pixels)).logits
        b = hf(input_ids=ids, pixel_values=model.vision.normalize(pixels)).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_save_then_load_gives_the_same_model_and_tokenizer(tmp_path, tok):
    model = _ours(tok, tie=False, act="quick_gelu")
    model.save(tmp_path / "m", tokenizer=tok)
    assert is_llava_dir(tmp_path / "m") and not is_llava_dir(tmp_path) and not is_llava_dir(tmp_path / "none")
    again, tok2 = load_llava(tmp_path / "m")
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    text = "The cat sat on the mat."
    assert tok2.encode(text) == tok.encode(text) and tok2.special_tokens == tok.special_tokens
    half = Llava.from_pretrained(tmp_path / "m", dtype="bfloat16")  # every part in the dtype asked for
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    # Saving again over it leaves one complete checkpoint, no temporaries beside it.
    model.save(tmp_path / "m", tokenizer=tok)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("llava") / "m"
    save_llava(_ours(tok), tok, path)
    return path


@pytest.mark.parametrize("field, value, message", [
    ("vision_feature_layer", [-2, -1], "vision_feature_layer [-2, -1]: several layers' features"),
    ("vision_feature_select_strategy", "full", "vision_feature_select_strategy 'full' is not supported; 'default'"),
    ("projector_hidden_act", "relu", "projector_hidden_act 'relu' is not supported; 'gelu'"),
    ("multimodal_projector_bias", False, "multimodal_projector_bias False is not supported"),
    ("image_seq_length", 17, "image_seq_length 17 is not the encoder's 16 patches"),
    ("vision_config.hidden_act", "relu", "vision_config: hidden_act 'relu' is not supported (gelu or quick_gelu)"),
    ("vision_config.image_size", 30, "image_size 30 is not a multiple of patch_size 8"),
    ("vision_config.model_type", "siglip_vision_model", "model_type 'siglip_vision_model' is not supported"),
    ("text_config.hidden_act", "gelu", "hidden_act 'gelu' is not supported for llama"),
    ("model_type", "llama", "model_type 'llama', not 'llava'"),
])
def test_configs_acorn_cannot_run_are_one_clear_error(tmp_path, saved, field, value, message):
    import shutil

    path = shutil.copytree(saved, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    *parents, key = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[key] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AcornError, match="^" + str(path / "config.json")) as e:
        load_llava(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_or_corrupt_files_are_one_clear_error(tmp_path, saved, tok):
    import shutil

    from acorn.model import checkpoint

    # The text-only loader names what the directory is and what loads it.
    with pytest.raises(AcornError, match="LLaVA checkpoint .*acorn.vision.llava.load_llava"):
        checkpoint.load(saved, device="cpu")
    with pytest.raises(AcornError, match="no such directory; give a LLaVA checkpoint directory"):
        load_llava(tmp_path / "nowhere")
    path = shutil.copytree(saved, tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AcornError, match="model.safetensors: the file is .* truncated"):
        load_llava(path)
    weights.unlink()
    with pytest.raises(AcornError, match="no weights found"):
        load_llava(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(AcornError, match="config.json: not valid JSON"):
        load_llava(path)
    assert not is_llava_dir(path)
    # A tokenizer whose <image> is not the model's placeholder is refused before anything is written.
    from acorn.tokenizer.bpe import Tokenizer

    other = Tokenizer.train([TEXT], 300, special_tokens=[IMAGE_TOKEN, "<x>"])
    assert other.special_tokens[IMAGE_TOKEN] != tok.special_tokens[IMAGE_TOKEN]
    with pytest.raises(AcornError, match="the tokenizer's <image> is id"):
        save_llava(_ours(tok), other, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# llava-hf/llava-1.5-7b-hf's config.json as published: its text_config names only what differs from
# LlamaConfig's defaults (no hidden_size, no layer count), which transformers fills in.
LLAVA_15 = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}


def test_a_published_config_that_leaves_fields_to_transformers_defaults_reads_as_transformers_reads_it():
    import transformers

    theirs = transformers.LlavaConfig.from_dict(LLAVA_15)
    ours = LlavaConfig.from_hf(LLAVA_15)
    t, v = theirs.text_config, theirs.vision_config
    assert (ours.text.d_model, ours.text.d_ff, ours.text.n_layer, ours.text.n_head, ours.text.n_kv_head,
            ours.text.vocab_size, ours.text.max_seq_len, ours.text.norm_eps, ours.text.tie_embeddings) == \
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
         t.vocab_size, t.max_position_embeddings, t.rms_norm_eps, theirs.tie_word_embeddings)
    assert (ours.vision.d_model, ours.vision.image_size, ours.vision.patch_size, ours.vision.n_layer,
            ours.vision.n_head, ours.vision.d_ff, ours.vision.act) == \
        (v.hidden_size, v.image_size, v.patch_size, v.num_hidden_layers, v.num_attention_heads,
         v.intermediate_size, v.hidden_act)
    assert ours.tokens_per_image == 576 and ours.image_token_id == theirs.image_token_id == 32000
