"""CLIP: images and captions in one space (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision").

Two encoders and two projections:

  image    the vision transformer (acorn.vision.encoder), its pooled class token,
           a linear projection (no bias) to projection_dim, L2-normalised
  caption  a causal transformer over the caption's tokens, the decoder's own
           (acorn.model.transformer.Transformer in CLIP's text layout: learned
           positions, LayerNorm, GELU, biases); its final state at the caption's
           last token, EOS, is the caption's vector (causal: EOS has read the
           whole caption), projected likewise and normalised
  scale    a learned temperature, stored as log(1 / T) (logit_scale) and
           clipped at 100 as the paper does; similarity logits = scale * cos

Training (acorn.train.clip) pulls each image towards its own caption and away
from the batch's other captions, in both directions (symmetric InfoNCE).
Zero-shot classification (zero_shot) is the same similarity: the image is
given the label whose caption ("a picture of three red circles") is nearest.

The text encoder's tokens: captions are [BOS] + the tokenizer's ids + [EOS]
(acorn.train.clip trains a BPE on the training captions, or takes a tokenizer).

The checkpoint is a transformers CLIPModel directory (config.json with
model_type "clip", model.safetensors under CLIPModel's names, the tokenizer's
files, a CLIPImageProcessor preprocessor_config.json): transformers loads it
with the same outputs (tests/vision/test_clip.py), and its vision tower is the
CLIPVisionModel a LLaVA checkpoint holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acorn.config import check as check_config
from acorn.errors import AcornError
from acorn.fileio import atomic_directory, atomic_path, read_json, write_json
from acorn.model.transformer import ModelConfig, Transformer
from acorn.vision.encoder import (BLOCK_NAMES, VisionConfig, VisionTransformer, hf_state_dict, hf_vision_config,
                                  load_hf_state_dict, rename, vision_config_from_hf)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned scale at 100 "to prevent training instability"


@dataclass
class TextConfig:
    vocab_size: int = 0  # caption token ids; 0: the tokenizer's, set when training starts
    max_len: int = 48  # tokens per caption, BOS and EOS included: the learned positions
    d_model: int = 64  # width of the residual stream
    n_layer: int = 2  # transformer blocks (causal)
    n_head: int = 4  # attention heads
    d_ff: int = 256  # MLP hidden width
    act: Literal["gelu", "quick_gelu"] = "gelu"  # MLP activation
    norm_eps: float = 1e-5  # LayerNorm epsilon
    bos_id: int | None = None  # the tokenizer's BOS, starting each caption (set from the tokenizer)
    eos_id: int | None = None  # the tokenizer's EOS, ending each caption, read as its vector (set from the tokenizer)
    pad_id: int | None = None  # fills captions shorter than the batch's longest (set from the tokenizer)

    LIMITS: ClassVar[dict[str, str]] = {"vocab_size": ">= 0", "max_len": ">= 2", "d_model": ">= 1", "n_layer": ">= 1",
                                        "n_head": ">= 1", "d_ff": ">= 1", "norm_eps": "> 0"}

    def __post_init__(self):
        check_config(self)

    def model_config(self) -> ModelConfig:
        """The decoder's settings that make it CLIP's text encoder."""
        if not self.vocab_size:
            raise AcornError("the text encoder's vocab_size is unset; take it from the tokenizer")
        return ModelConfig(vocab_size=self.vocab_size, n_layer=self.n_layer, d_model=self.d_model, n_head=self.n_head,
                           d_ff=self.d_ff, max_seq_len=self.max_len, positions="learned", norm="layernorm",
                           norm_eps=self.norm_eps, mlp=self.act, qkv_bias=True, out_bias=True, mlp_bias=True)


@dataclass
class CLIPConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 64  # the shared space image and caption vectors meet in
    logit_scale_init: float = 2.6592  # log(1 / 0.07): CLIP's initial temperature, 0.07

    LIMITS: ClassVar[dict[str, str]] = {"projection_dim": ">= 1", "logit_scale_init": "[0, 4.6052]"}

    def __post_init__(self):
        check_config(self)

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = True) -> float:
        """For the training loop's MFU, which counts a pair as seq_len "tokens": the FLOPs of one
        image and one caption of seq_len tokens, divided by seq_len."""
        t = seq_len or self.text.max_len
        text = t * self.text.model_config().flops_per_token(t, training=training) if self.text.vocab_size else 0.0
        return (self.vision.flops_per_image(training=training) + text) / t

    # ---- transformers' config.json
    def hf_config(self) -> dict:
        v, t = self.vision, self.text
        return {
            "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init, "dtype": "float32",
            "text_config": {"model_type": "clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.d_model,
                            "intermediate_size": t.d_ff, "num_hidden_layers": t.n_layer,
                            "num_attention_heads": t.n_head, "max_position_embeddings": t.max_len,
                            "hidden_act": t.act, "layer_norm_eps": t.norm_eps, "projection_dim": self.projection_dim,
                            "bos_token_id": t.bos_id, "eos_token_id": t.eos_id, "pad_token_id": t.pad_id},
            "vision_config": {**hf_vision_config(v), "projection_dim": self.projection_dim},
            # Read back by Acorn only (transformers keeps unknown keys as attributes).
            "acorn": {"image_mean": v.image_mean, "image_std": v.image_std},
        }

    @classmethod
    def from_hf(cls, data: dict, where: str = "config.json") -> "CLIPConfig":
        if data.get("model_type") != "clip":
            raise AcornError(f"{where}: model_type {data.get('model_type')!r}, not 'clip'; give a CLIP checkpoint "
                             "(`acorn clip train`'s RUN/model, or a transformers CLIPModel directory)")
        try:
            v, t, extra = data["vision_config"], data["text_config"], data.get("acorn", {})
            if t.get("hidden_act", "quick_gelu") not in ("gelu", "quick_gelu"):
                raise AcornError(f"{where}: text_config.hidden_act {t['hidden_act']!r} is not supported "
                                 "(gelu or quick_gelu)")
            vision = vision_config_from_hf(v, f"{where} vision_config",
                                           **{k: extra[k] for k in ("image_mean", "image_std") if k in extra})
            text = TextConfig(vocab_size=t["vocab_size"], max_len=t["max_position_embeddings"],
                              d_model=t["hidden_size"], n_layer=t["num_hidden_layers"],
                              n_head=t["num_attention_heads"], d_ff=t["intermediate_size"],
                              act=t.get("hidden_act", "quick_gelu"), norm_eps=t.get("layer_norm_eps", 1e-5),
                              bos_id=t.get("bos_token_id"), eos_id=t.get("eos_token_id"), pad_id=t.get("pad_token_id"))
            return cls(vision, text, data.get("projection_dim", 512), data.get("logit_scale_init_value", 2.6592))
        except KeyError as e:
            raise AcornError(f"{where}: lacks {e.args[0]!r}; it is not a complete CLIP config") from None


# transformers' CLIPTextModel names for the decoder's (the head is tied to the embedding: not saved)
TEXT_NAMES = [("^model.embed_tokens.", "^embeddings.token_embedding."),
              ("^model.embed_positions.", "^embeddings.position_embedding."),
              ("^model.norm.", "^final_layer_norm."), ("^model.layers.", "^encoder.layers."), *BLOCK_NAMES]


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = VisionTransformer(cfg.vision)
        self.text_model = Transformer(cfg.text.model_config())
        self.visual_projection = nn.Linear(cfg.vision.d_model, cfg.projection_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text.d_model, cfg.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        if self.logit_scale.device.type != "meta":
            for proj, width in ((self.visual_projection, cfg.vision.d_model), (self.text_projection, cfg.text.d_model)):
                nn.init.normal_(proj.weight, 0.0, width ** -0.5)  # CLIP's: unit-variance outputs

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> Tensor:
        """exp(logit_scale), clipped at 100: what cosine similarities are multiplied by."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def encode_image(self, pixels: Tensor) -> Tensor:
        """Pixels in [0, 1] (B, 3, S, S) -> unit vectors (B, projection_dim)."""
        vision = self.vision_model
        out = vision(vision.normalize(pixels.to(self.device, torch.float32)))
        return F.normalize(self.visual_projection(out.pooled).float(), dim=-1)

    def encode_text(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Right-padded caption ids (B, T), each ending in EOS at lengths - 1 -> unit vectors (B, projection_dim)."""
        hidden = self.text_model(ids.to(self.device), hidden_only=True).hidden
        eos = hidden[torch.arange(len(ids), device=hidden.device), lengths.to(hidden.device) - 1]
        return F.normalize(self.text_projection(eos).float(), dim=-1)

    def forward(self, pixels: Tensor, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(image vectors, caption vectors, scale): logits_per_image = scale * images @ captions.T."""
        return self.encode_image(pixels), self.encode_text(ids, lengths), self.scale()

    # ---- checkpoints
    def hf_state_dict(self) -> dict[str, Tensor]:
        """The weights under transformers CLIPModel's names; logit_scale as used (clipped)."""
        out = hf_state_dict(self.vision_model, "vision_model.")
        out |= {"text_model." + rename(k, TEXT_NAMES): v for k, v in self.text_model.state_dict().items()
                if k != "lm_head.weight"}
        out["visual_projection.weight"] = self.visual_projection.weight
        out["text_projection.weight"] = self.text_projection.weight
        out["logit_scale"] = self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE)
        return out

    def save(self, directory, tokenizer=None) -> Path:
        """A transformers CLIPModel directory: model.safetensors, config.json, preprocessor_config.json and
        the tokenizer's files, written into a temporary directory beside it and moved into place (config.json
        last: it marks a complete save), so an interrupted save leaves the previous checkpoint whole."""
        from safetensors.torch import save_file

        with atomic_directory(directory) as tmp:
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
                       for k, v in self.hf_state_dict().items()}
            with atomic_path(tmp / "model.safetensors") as f:
                save_file(tensors, f, metadata={"format": "pt"})
            write_json(tmp / "preprocessor_config.json", preprocessor_config(self.config.vision))
            if tokenizer is not None:
                tokenizer.save(tmp)
            write_json(tmp / "config.json", self.config.hf_config())
        return Path(directory)

    save_pretrained = save


def preprocessor_config(cfg: VisionConfig) -> dict:
    """transformers' CLIPImageProcessor settings that preprocess as acorn.vision.images does."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": cfg.image_size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(cfg.image_mean),
            "image_std": list(cfg.image_std), "do_convert_rgb": True}


def load_clip(directory, *, device: str = "cpu"):
    """(CLIP model, its tokenizer) from a CLIPModel directory; an AcornError says what is missing or wrong."""
    from safetensors.torch import load_file

    from acorn.model.checkpoint import read_safetensors_header
    from acorn.tokenizer.bpe import Tokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise AcornError(f"{directory}: no config.json; give a CLIP checkpoint directory (`acorn clip train`'s "
                         "RUN/model)")
    cfg = CLIPConfig.from_hf(read_json(directory / "config.json"), str(directory / "config.json"))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise AcornError(f"{directory}: no model.safetensors; the checkpoint is incomplete")
    read_safetensors_header(weights)  # a truncated file is named as such
    tensors = load_file(weights)
    model = CLIP(cfg)  # small: initialised, then overwritten (no meta-device dance that would untie the head)
    load_hf_state_dict(model.vision_model, tensors, "vision_model.")
    text = {rename(k[len("text_model."):], TEXT_NAMES, reverse=True): v for k, v in tensors.items()
            if k.startswith("text_model.") and not k.endswith("position_ids")}
    if "model.embed_tokens.weight" not in text:
        raise AcornError(f"{weights}: lacks text_model.embeddings.token_embedding.weight; it is not a CLIP checkpoint")
    text["lm_head.weight"] = text["model.embed_tokens.weight"]  # tied: the head is never used, never saved
    heads = ("visual_projection.weight", "text_projection.weight", "logit_scale")
    rest = {k: tensors[k] for k in heads if k in tensors}
    try:
        model.text_model.load_state_dict(text)
        model.load_state_dict(rest, strict=False)
    except (RuntimeError, KeyError) as e:
        raise AcornError(f"{weights}: the weights do not fit config.json ({str(e).splitlines()[0]})") from None
    if len(rest) < 3:
        raise AcornError(f"{weights}: lacks {', '.join(k for k in heads if k not in rest)}; it is not a CLIPModel")
    tok = Tokenizer.from_pretrained(directory) if (directory / "tokenizer.json").is_file() else None
    return model.to(device).eval(), tok


# ------------------------------------------------------------------ use
def caption_ids(tok, text: str, max_len: int) -> list[int]:
    """[BOS] + the caption's ids + [EOS], cut to max_len (EOS kept: it is where the caption is read)."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    if tok.eos_id is None:
        raise AcornError("the caption tokenizer has no EOS token; CLIP reads a caption at its EOS")
    return (bos + tok.encode(text))[:max_len - 1] + [tok.eos_id]


def pad_captions(rows: list[list[int]], pad_id: int | None) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, T) and lengths (B,)."""
    t = max(map(len, rows))
    pad = pad_id if pad_id is not None else 0
    return torch.tensor([r + [pad] * (t - len(r)) for r in rows]), torch.tensor([len(r) for r in rows])


@torch.no_grad()
def encode_texts(model: CLIP, tok, texts: list[str], batch_size: int = 256) -> Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        ids, lengths = pad_captions([caption_ids(tok, t, model.config.text.max_len) for t in texts[i:i + batch_size]],
                                    tok.pad_id)
        out.append(model.encode_text(ids, lengths))
    return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)


@torch.no_grad()
def encode_images(model: CLIP, pixels: Tensor, batch_size: int = 256) -> Tensor:
    """uint8 (N, 3, S, S) or floats in [0, 1] -> unit vectors (N, projection_dim)."""
    from acorn.vision.images import to_unit

    out = [model.encode_image(to_unit(pixels[i:i + batch_size]) if pixels.dtype == torch.uint8
                              else pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)


@torch.no_grad()
def zero_shot(model: CLIP, tok, pixels: Tensor, labels: list[str]) -> Tensor:
    """Zero-shot classification: (N images, L labels) probabilities, the softmax over the labels of
    scale * cos(image, label caption). A label is a caption, e.g. "a picture of three red circles"."""
    if not labels:
        raise AcornError("zero-shot classification needs at least one label")
    return (model.scale() * encode_images(model, pixels) @ encode_texts(model, tok, labels).T).softmax(-1)


def classify(model_dir, images: list, labels: list[str], *, top: int = 1) -> list[list[tuple[str, float]]]:
    """For each image file (or bytes): the `top` labels and their probabilities, best first."""
    model, tok = load_clip(model_dir)
    if tok is None:
        raise AcornError(f"{model_dir}: no tokenizer files; save the model with its tokenizer")
    from acorn.vision.images import load_pixels

    probs = zero_shot(model, tok, load_pixels(images, model.config.vision.image_size), labels)
    k = min(top, len(labels))
    best = probs.topk(k, dim=-1)
    return [[(labels[int(i)], float(p)) for p, i in zip(ps, ix)] for ps, ix in zip(best.values, best.indices)]
