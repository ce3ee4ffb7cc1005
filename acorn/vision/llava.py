"""LLaVA: a decoder that reads images (Liu et al. 2023, "Visual Instruction Tuning").

Three parts, each an Acorn module used as it is elsewhere:

  vision     the CLIP-trained vision transformer (acorn.vision.encoder); its
             penultimate block's output (vision_feature_layer -2) at the patch
             tokens, the class token dropped ("default" feature selection):
             n_patches vectors per image
  projector  a two-layer MLP (linear, GELU, linear) from the encoder's width
             to the decoder's: the image's n_patches "image tokens"
  language   the decoder (acorn.model.transformer.Transformer), unchanged: the
             prompt holds one placeholder token (IMAGE_TOKEN) per image token,
             and the one forward writes the projected rows in their place
             (Transformer.embed's image_features / image_mask) before the blocks

So an image costs tokens_per_image positions of context and the decoder reads
them like any other tokens: training (acorn.train.loop), generation (the
engine) and serving run the language model's own forward.

The checkpoint is a transformers LlavaForConditionalGeneration directory:
config.json (model_type "llava": the decoder's own config as text_config, the
encoder's CLIPVisionConfig as vision_config), model.safetensors under the names
transformers writes (language_model.model.*, language_model.lm_head.weight,
vision_tower.vision_model.*, multi_modal_projector.*), the tokenizer's files,
preprocessor_config.json (a CLIPImageProcessor that preprocesses as
acorn.vision.images does) and processor_config.json (a LlavaProcessor, which
expands "<image>" to tokens_per_image placeholders). save_llava writes it,
load_llava reads it back -- and LLaVA checkpoints transformers wrote, in each
layout it has used (LAYOUTS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.fileio import atomic_directory, read_json, write_json
from acorn.hardware import DTYPE_NAMES, DTYPES, resolve_device, resolve_dtype
from acorn.model import checkpoint, quant
from acorn.model.transformer import ModelConfig, ModelOutput, Transformer, build
from acorn.vision.encoder import (VisionConfig, VisionTransformer, hf_state_dict, hf_vision_config, load_hf_state_dict,
                                  vision_config_from_hf)

IMAGE_TOKEN = "<image>"  # the placeholder special token: tokens_per_image of them stand for one image
# What transformers' CLIPImageProcessor normalises with when a checkpoint has no preprocessor_config.json (OpenAI's).
CLIP_PROCESSOR_DEFAULTS = {"image_mean": [0.48145466, 0.4578275, 0.40821073],
                           "image_std": [0.26862954, 0.26130258, 0.27577711]}


@dataclass
class LlavaConfig:
    vision: VisionConfig
    text: ModelConfig
    image_token_id: int  # the placeholder's id in the decoder's vocabulary
    vision_feature_layer: int = -2  # which hidden state of the encoder (-2: the penultimate block's output)
    projector_hidden_act: str = "gelu"  # the projector's activation (transformers' LLaVA default)

    def __post_init__(self):
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise AcornError(f"image_token_id {self.image_token_id} is outside the decoder's vocabulary of "
                             f"{self.text.vocab_size}; add {IMAGE_TOKEN} to the tokenizer and resize the embeddings")
        if not -(self.vision.n_layer + 1) <= self.vision_feature_layer <= self.vision.n_layer:
            raise AcornError(f"vision_feature_layer {self.vision_feature_layer} is not one of the encoder's "
                             f"{self.vision.n_layer + 1} hidden states")
        if self.projector_hidden_act != "gelu":
            raise AcornError(f"projector_hidden_act {self.projector_hidden_act!r}: only 'gelu' is supported")

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens per image: the encoder's patches (the class token is dropped)."""
        return self.vision.n_patches

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = True) -> float:
        """The decoder's FLOPs per token plus the encoder's for one image per seq_len tokens (a
        training row holds about one picture); the projector's two matmuls per image token."""
        t = seq_len or self.text.max_seq_len
        projector = (6 if training else 2) * self.tokens_per_image * (self.vision.d_model + self.text.d_model) * self.text.d_model
        return self.text.flops_per_token(seq_len, training=training) + (
            self.vision.flops_per_image(training=training) + projector) / t

    # ---- transformers' config.json
    def hf_config(self, *, dtype: torch.dtype = torch.float32, bos_id=None, eos_id=None, pad_id=None) -> dict:
        """transformers' LlavaConfig: the decoder's config (acorn.model.checkpoint.hf_config) and the
        encoder's CLIPVisionConfig, with the fields that join them."""
        text = checkpoint.hf_config(self.text, dtype=dtype, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
        if text["model_type"] not in TEXT_FAMILIES:
            raise AcornError(f"a LLaVA checkpoint's decoder here is one of {', '.join(TEXT_FAMILIES)} (RoPE), not "
                             f"{text['model_type']}; build the decoder with RoPE, RMSNorm and SwiGLU")
        return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "text_config": text,
                "vision_config": hf_vision_config(self.vision), "image_token_index": self.image_token_id,
                "image_seq_length": self.tokens_per_image, "vision_feature_layer": self.vision_feature_layer,
                "vision_feature_select_strategy": "default", "projector_hidden_act": self.projector_hidden_act,
                "multimodal_projector_bias": True, "tie_word_embeddings": self.text.tie_embeddings,
                "dtype": DTYPE_NAMES[dtype]}

    @classmethod
    def from_hf(cls, data: dict, where: str = "config.json", preprocessor: dict | None = None) -> "LlavaConfig":
        """transformers' LlavaConfig (a dict; transformers' defaults where a field is absent) -> LlavaConfig.
        preprocessor: preprocessor_config.json, whose image_mean / image_std the encoder normalises with.
        What Acorn's LLaVA cannot run is an AcornError naming the field and what is supported."""
        if not isinstance(data, dict) or data.get("model_type") != "llava":
            got = data.get("model_type") if isinstance(data, dict) else type(data).__name__
            raise AcornError(f"{where}: model_type {got!r}, not 'llava'; give a LLaVA checkpoint "
                             "(LlavaForConditionalGeneration's directory)")
        layer = data.get("vision_feature_layer", -2)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise AcornError(f"{where}: vision_feature_layer {layer!r}: several layers' features concatenated are not "
                             "supported; one layer (an int, e.g. -2)")
        strategy = data.get("vision_feature_select_strategy", "default")
        if strategy != "default":
            raise AcornError(f"{where}: vision_feature_select_strategy {strategy!r} is not supported; 'default' (the "
                             "patch tokens, the class token dropped)")
        act = data.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise AcornError(f"{where}: projector_hidden_act {act!r} is not supported; 'gelu'")
        if data.get("multimodal_projector_bias", True) is not True:
            raise AcornError(f"{where}: multimodal_projector_bias {data['multimodal_projector_bias']!r} is not "
                             "supported; the projector has biases (true)")
        family, text = checkpoint.config_from_hf(hf_text_config(data, where), f"{where} text_config")
        if family not in TEXT_FAMILIES:
            raise AcornError(f"{where}: text_config is {family}; Acorn's LLaVA decoder is one of "
                             f"{', '.join(TEXT_FAMILIES)}")
        vision = data.get("vision_config")
        if not isinstance(vision, dict):
            raise AcornError(f"{where}: lacks 'vision_config'; it is not a complete LLaVA config")
        vision = {**SUBCONFIG_DEFAULTS["clip_vision_model"], **vision}
        pre = preprocessor or CLIP_PROCESSOR_DEFAULTS  # a number is every channel's, as CLIPImageProcessor takes it
        vision = vision_config_from_hf(vision, f"{where} vision_config",
                                       **{k: list(v) if isinstance(v, (list, tuple)) else [v] * 3
                                          for k, v in pre.items() if k in ("image_mean", "image_std")})
        seq = data.get("image_seq_length")
        if seq is not None and seq != vision.n_patches:
            raise AcornError(f"{where}: image_seq_length {seq} is not the encoder's {vision.n_patches} patches "
                             f"((image_size / patch_size)^2, the class token dropped); fix one of them")
        return cls(vision, text, data.get("image_token_index", 32000), layer, act)


# transformers' config classes' defaults for the fields a LLaVA config may leave out: llava-hf's llava-1.5
# text_config names only what differs from LlamaConfig's (not even hidden_size); transformers fills the rest.
SUBCONFIG_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=32),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8),
}


def hf_text_config(data: dict, where: str = "config.json") -> dict:
    """A LLaVA config's text_config as a standalone decoder's config.json: transformers' defaults where
    it leaves a field out, and the head tied when the LLaVA config ties it (as LlavaConfig does)."""
    text = data.get("text_config")
    if not isinstance(text, dict):
        raise AcornError(f"{where}: lacks 'text_config'; it is not a complete LLaVA config")
    kind = text.get("model_type", "llama")  # LlavaConfig's default decoder
    text = {"model_type": kind, **SUBCONFIG_DEFAULTS.get(kind, {}), **text}
    return {**text, "tie_word_embeddings": bool(data.get("tie_word_embeddings") or text.get("tie_word_embeddings"))}


class Projector(nn.Module):
    """Encoder width -> decoder width: linear_1, GELU, linear_2 (transformers' LlavaMultiModalProjector names)."""

    def __init__(self, d_vision: int, d_text: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_vision, d_text)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_text, d_text)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class Llava(nn.Module):
    def __init__(self, cfg: LlavaConfig, *, vision: VisionTransformer | None = None,
                 language: Transformer | None = None):
        super().__init__()
        self.config = cfg
        self.vision = vision if vision is not None else VisionTransformer(cfg.vision)
        self.projector = Projector(cfg.vision.d_model, cfg.text.d_model)
        self.language = language if language is not None else build(cfg.text)

    def save(self, directory, tokenizer=None, *, dtype=None) -> Path:
        """A transformers LlavaForConditionalGeneration directory (save_llava)."""
        return save_llava(self, tokenizer, directory, dtype=dtype)

    save_pretrained = save

    @classmethod
    def from_pretrained(cls, directory, *, device="cpu", dtype=None) -> "Llava":
        """The model of a LLaVA checkpoint directory (load_llava, without the tokenizer)."""
        return load_llava(directory, device=device, dtype=dtype)[0]

    @property
    def device(self) -> torch.device:
        return self.language.device

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """Normalised pixels (N, 3, S, S) (VisionTransformer.normalize of [0, 1] pixels)
        -> (N, tokens_per_image, text d_model): what the placeholders' embeddings become."""
        out = self.vision(pixel_values.to(self.device), hidden_states=True)
        patches = out.hidden_states[self.config.vision_feature_layer][:, 1:]  # drop the class token
        return self.projector(patches)

    def image_mask(self, input_ids: Tensor) -> Tensor:
        return input_ids == self.config.image_token_id

    def forward(self, input_ids: Tensor, pixel_values: Tensor | None = None, **kwargs) -> ModelOutput:
        """The decoder's forward (Transformer.forward's keywords) with the images of
        pixel_values (N, 3, S, S, normalised) in place of the placeholders, in order."""
        if pixel_values is None:
            if bool(self.image_mask(input_ids).any()):
                raise AcornError(f"the prompt has {IMAGE_TOKEN} placeholders but no image was given")
            return self.language(input_ids, **kwargs)
        feats = self.image_features(pixel_values)
        return self.language(input_ids, image_features=feats, image_mask=self.image_mask(input_ids), **kwargs)


# ------------------------------------------------------------------ checkpoints
TEXT_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "mixtral")  # decoders whose tensors are model.* / lm_head.*
# Every layout transformers has written -> the one save_llava writes, the llava-hf checkpoints' (4.x before
# 4.52), which every version reads: (pattern, replacement). 4.52-4.5x wrote LlavaForConditionalGeneration's
# module names (model.language_model.*, lm_head.*); 5.x writes the vision tower without vision_model.
LAYOUTS = [(r"^model\.language_model\.", "language_model.model."), (r"^lm_head\.", "language_model.lm_head."),
           (r"^model\.(vision_tower|multi_modal_projector)\.", r"\1."),
           (r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.")]
VISION, PROJECTOR, TEXT = "vision_tower.vision_model.", "multi_modal_projector.", "language_model."


def hf_name(name: str) -> str:
    """A LLaVA checkpoint's tensor name, in any layout -> the layout save_llava writes."""
    for pattern, replacement in LAYOUTS:
        name = re.sub(pattern, replacement, name)
    return name


def save_llava(model: Llava, tokenizer, directory, *, dtype=None) -> Path:
    """Write `model` (and `tokenizer`, unless None) as a directory transformers' LlavaForConditionalGeneration
    and AutoProcessor load: config.json, model.safetensors, generation_config.json, preprocessor_config.json,
    processor_config.json and the tokenizer's files. dtype: the weights' on disk (default: the decoder's).
    Written into a temporary directory and moved into place (config.json last): an interrupted save leaves
    the previous checkpoint whole."""
    from acorn.vision.clip import preprocessor_config

    cfg = model.config
    if quant.quantization_of(model.language) is not None:
        raise AcornError("a LLaVA checkpoint holds a float decoder; save the model before quantizing it")
    ids = {}
    if tokenizer is not None:
        if tokenizer.special_tokens.get(IMAGE_TOKEN) != cfg.image_token_id:
            raise AcornError(f"the tokenizer's {IMAGE_TOKEN} is id {tokenizer.special_tokens.get(IMAGE_TOKEN)}, "
                             f"the model's image_token_id {cfg.image_token_id}; save with the tokenizer the model "
                             "was trained with")
        if tokenizer.vocab_size > cfg.text.vocab_size:
            raise AcornError(f"the tokenizer has {tokenizer.vocab_size} tokens but the decoder's vocab_size is "
                             f"{cfg.text.vocab_size}; save with the tokenizer the model was trained with")
        ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    text = checkpoint.hf_tensors(model.language, dtype)  # the decoder's standalone checkpoint: model.*, lm_head.*
    dtype = resolve_dtype(dtype) if dtype is not None else model.language.dtype
    config = cfg.hf_config(dtype=dtype, **ids)
    tensors = {TEXT + k: v for k, v in text.items()}
    tensors |= hf_state_dict(model.vision, VISION) | {PROJECTOR + k: v for k, v in model.projector.state_dict().items()}
    tensors = {k: v if k.startswith(TEXT) else v.detach().to("cpu", dtype).contiguous().clone()
               for k, v in tensors.items()}
    processor = {"processor_class": "LlavaProcessor", "patch_size": cfg.vision.patch_size,
                 "vision_feature_select_strategy": "default", "image_token": IMAGE_TOKEN,
                 "num_additional_image_tokens": 1}  # the class token, which "default" drops again
    with atomic_directory(directory) as tmp:
        checkpoint.write_safetensors(tensors, tmp / "model.safetensors", Path(directory))
        write_json(tmp / "preprocessor_config.json", preprocessor_config(cfg.vision))
        write_json(tmp / "processor_config.json", processor)
        write_json(tmp / "generation_config.json", {k.replace("_id", "_token_id"): v for k, v in ids.items()
                                                    if v is not None})
        if tokenizer is not None:
            tokenizer.save(tmp)
        write_json(tmp / "config.json", config)
    return Path(directory)


def is_llava_dir(path) -> bool:
    """Whether `path` is a LLaVA checkpoint directory (its config.json's model_type is "llava")."""
    try:
        data = read_json(Path(path) / "config.json")
    except (AcornError, OSError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "llava"


def load_llava(directory, *, device="cpu", dtype=None):
    """(Llava in eval mode, its Tokenizer or None when the directory has no tokenizer files) from a LLaVA
    checkpoint directory: one save_llava wrote, or one transformers wrote (any of its weight LAYOUTS).
    dtype: None (config.json's when float32/bfloat16/float16, else float32) or a name / torch dtype.
    Missing or corrupt files, and configs Acorn cannot run, are one AcornError each."""
    from acorn.tokenizer.bpe import Tokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        why = "no such directory" if not directory.exists() else "no config.json"
        raise AcornError(f"{directory}: {why}; give a LLaVA checkpoint directory (save_llava's, or "
                         "LlavaForConditionalGeneration.save_pretrained's)")
    data = read_json(directory / "config.json")
    pre = directory / "preprocessor_config.json"
    processor = read_json(pre) if pre.is_file() else None
    if processor is not None and not isinstance(processor, dict):
        raise AcornError(f"{pre}: not a JSON object; it is not an image processor's config (delete it to use "
                         "CLIPImageProcessor's defaults)")
    cfg = LlavaConfig.from_hf(data, str(directory / "config.json"), processor)
    if dtype is None:
        saved = data.get("dtype") or data.get("torch_dtype")
        dtype = saved if isinstance(saved, str) and saved in DTYPES else "float32"
    dtype, device = resolve_dtype(dtype), resolve_device(device)

    def text_name(name: str) -> str | None:
        name = hf_name(name)
        return name[len(TEXT):] if name.startswith(TEXT) else None

    language, others = checkpoint.load_decoder(directory, hf_text_config(data), text_name, dtype=dtype,
                                               device=device, where=f"{directory / 'config.json'} text_config")
    others = {hf_name(k): v for k, v in others.items() if not k.endswith("position_ids")}
    unknown = sorted(k for k in others if not k.startswith((VISION, PROJECTOR)))
    if unknown:
        raise AcornError(f"{directory}: unexpected tensors {', '.join(unknown[:3])}; it is not a LLaVA checkpoint "
                         "with a CLIP vision tower")
    vision = VisionTransformer(cfg.vision)
    load_hf_state_dict(vision, others, VISION)
    model = Llava(cfg, vision=vision, language=language)
    projector = {k[len(PROJECTOR):]: v for k, v in others.items() if k.startswith(PROJECTOR)}
    try:
        model.projector.load_state_dict(projector)
    except RuntimeError as e:
        raise AcornError(f"{directory}: the projector's weights do not fit config.json "
                         f"({str(e).splitlines()[0]}); the checkpoint is incomplete or not this model's") from None
    model.vision.to(device=device, dtype=dtype)
    model.projector.to(device=device, dtype=dtype)
    tok = Tokenizer.from_pretrained(directory) if (directory / "tokenizer.json").is_file() else None
    return model.eval(), tok


def add_image_token(tok, language: Transformer):
    """(tokenizer, image_token_id): a text model's tokenizer with IMAGE_TOKEN appended as a special token
    (every other id unchanged) and the decoder's vocabulary grown to hold it, in place (the new row starts
    at the mean embedding: acorn.model.transformer.resize_vocab). A tokenizer that has it already is kept."""
    from acorn.model.transformer import resize_vocab

    if IMAGE_TOKEN in tok.special_tokens:
        return tok, tok.special_tokens[IMAGE_TOKEN]
    tok = tok.add_special_tokens([IMAGE_TOKEN])
    image_id = tok.special_tokens[IMAGE_TOKEN]
    if image_id < language.config.vocab_size:  # a vocabulary padded past the tokenizer's: the row exists, untrained
        with torch.no_grad():
            for w in {id(w): w for w in (language.model.embed_tokens.weight, language.lm_head.weight)}.values():
                w[image_id] = w[:image_id].float().mean(0).to(w.dtype)
    resize_vocab(language, max(language.config.vocab_size, image_id + 1))
    return tok, image_id
