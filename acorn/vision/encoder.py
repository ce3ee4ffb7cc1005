"""The vision encoder: a Vision Transformer (Dosovitskiy et al. 2021) in CLIP's layout (Radford et al. 2021).

An image is cut into patch_size x patch_size patches; each is flattened and
projected to d_model (a convolution whose stride is its kernel, no bias). A
learned class token goes in front, a learned position vector is added to
every token, a LayerNorm follows (CLIP's pre-norm), then the transformer
blocks: the decoder's own Block (acorn.model.transformer: LayerNorm, attention
with biases, a GELU MLP, residuals), run without a causal mask, so every patch
sees every other. Two outputs:

  pooled   the class token's final state after a LayerNorm: one vector per
           image, what CLIP projects and compares with captions
  patches  every token's state after each block (hidden_states), from which a
           projector (LLaVA: the penultimate layer's patch tokens) makes the
           image tokens a decoder reads

Layer for layer this is transformers' CLIPVisionModel (hidden_act "gelu" or
OpenAI's "quick_gelu"): hf_state_dict / load_hf_state_dict map the weights to
its names, and tests/vision/test_clip.py holds the outputs equal to 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from acorn.config import check as check_config
from acorn.errors import AcornError
from acorn.model.transformer import Block, ModelConfig, sdpa


@dataclass
class VisionConfig:
    image_size: int = 64  # pixels per side: an image is resized and centre-cropped to it
    patch_size: int = 8  # pixels per side of a patch: (image_size / patch_size)^2 patch tokens, + 1 class token
    d_model: int = 64  # width of the residual stream
    n_layer: int = 3  # transformer blocks
    n_head: int = 4  # attention heads
    d_ff: int = 256  # MLP hidden width
    act: Literal["gelu", "quick_gelu"] = "gelu"  # MLP activation: exact GELU, or OpenAI CLIP's x * sigmoid(1.702 x)
    norm_eps: float = 1e-5  # LayerNorm epsilon
    dropout: float = 0.0  # dropout in training
    init_std: float = 0.02  # standard deviation of the initial weights
    # Pixels in [0, 1] are normalised per channel, (x - mean) / std, before the patch projection.
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # subtracted from pixels in [0, 1], RGB
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # then divided by, per channel (R, G, B)

    LIMITS: ClassVar[dict[str, str]] = {"image_size": ">= 1", "patch_size": ">= 1", "d_model": ">= 1",
                                        "n_layer": ">= 1", "n_head": ">= 1", "d_ff": ">= 1", "norm_eps": "> 0",
                                        "dropout": "[0, 1)", "init_std": "> 0"}

    def __post_init__(self):
        check_config(self)
        if self.image_size % self.patch_size:
            raise AcornError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.d_model % self.n_head:
            raise AcornError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise AcornError("image_mean and image_std take three numbers (R, G, B), the stds > 0")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self) -> ModelConfig:
        """The decoder's block settings that make it a CLIP encoder layer: LayerNorm, biases
        everywhere, a plain (not gated) MLP; positions are the encoder's own, added to the input."""
        return ModelConfig(vocab_size=1, n_layer=self.n_layer, d_model=self.d_model, n_head=self.n_head,
                           d_ff=self.d_ff, max_seq_len=self.n_patches + 1, positions="none", norm="layernorm",
                           norm_eps=self.norm_eps, mlp=self.act, qkv_bias=True, out_bias=True, mlp_bias=True,
                           dropout=self.dropout, init_std=self.init_std)

    def flops_per_image(self, *, training: bool = True) -> float:
        """Matmul FLOPs of one image: the blocks over n_patches + 1 tokens (ModelConfig's count, less
        its 1-token head) and the patch projection (Kaplan et al. 2020's 2 per weight, 6 with backward)."""
        t = self.n_patches + 1
        cfg = self.block_config()
        blocks = t * (cfg.flops_per_token(t, training=training) - (6 if training else 2) * self.d_model)
        patches = (6 if training else 2) * self.n_patches * 3 * self.patch_size ** 2 * self.d_model
        return blocks + patches


@dataclass
class VisionOutput:
    pooled: Tensor  # (B, d_model): the class token's final state after post_norm
    last_hidden: Tensor  # (B, 1 + n_patches, d_model): every token after the last block (no final norm, as CLIP)
    hidden_states: list[Tensor] | None = None  # the input of each block, then the last output (n_layer + 1)


def _bidirectional(dropout: float):
    """Attention with no mask: every token sees every token (a KVAttention that keeps nothing)."""
    def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return sdpa(q, k, v, dropout=dropout)
    return attend


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(d))
        self.position_embedding = nn.Embedding(cfg.n_patches + 1, d)
        self.pre_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        block = cfg.block_config()
        self.layers = nn.ModuleList(Block(block, i) for i in range(cfg.n_layer))
        self.post_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        if self.class_embedding.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for matrices, the patch projection and the embeddings; the
        projections into the residual stream scaled by 1/sqrt(2 n_layer) (GPT-2);
        biases 0, norm gains 1."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                p.normal_(0.0, std)

    def normalize(self, pixels: Tensor) -> Tensor:
        """Pixels in [0, 1] (B, 3, H, W) -> the encoder's input, (x - mean) / std per channel."""
        return (pixels - self.mean) / self.std

    def embed(self, pixel_values: Tensor) -> Tensor:
        """Normalised pixels (B, 3, S, S) -> tokens (B, 1 + n_patches, d): class token, then patches row by row."""
        cfg = self.config
        if pixel_values.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise AcornError(f"images of {tuple(pixel_values.shape[-2:])} pixels; this encoder takes "
                             f"{cfg.image_size}x{cfg.image_size} (preprocess them: acorn.vision.images)")
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)

    def forward(self, pixel_values: Tensor, *, hidden_states: bool = False) -> VisionOutput:
        """pixel_values: (B, 3, S, S), already normalised (normalize). hidden_states: also
        return every block's input and the last output, for a projector to pick a layer."""
        x = self.pre_norm(self.embed(pixel_values))
        attend = _bidirectional(self.config.dropout if self.training else 0.0)
        states = [x] if hidden_states else None
        for layer in self.layers:
            x, _ = layer(x, None, attend)
            if states is not None:
                states.append(x)
        return VisionOutput(self.post_norm(x[:, 0]), x, states)


# ------------------------------------------------ transformers' CLIPVisionConfig
def hf_vision_config(cfg: VisionConfig) -> dict:
    """transformers' CLIPVisionConfig fields for `cfg` (CLIPModel's and LLaVA's vision_config)."""
    return {"model_type": "clip_vision_model", "image_size": cfg.image_size, "patch_size": cfg.patch_size,
            "num_channels": 3, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "hidden_act": cfg.act,
            "layer_norm_eps": cfg.norm_eps}


def vision_config_from_hf(v: dict, where: str = "config.json vision_config", **normalisation) -> VisionConfig:
    """A CLIPVisionConfig (as a dict) -> VisionConfig; what this encoder cannot run is an AcornError
    naming the field. normalisation: image_mean / image_std (the image processor's, not in this config)."""
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise AcornError(f"{where}: model_type {v.get('model_type')!r} is not supported; Acorn's vision encoder is "
                         "CLIP's (clip_vision_model)")
    act = v.get("hidden_act", "quick_gelu")  # CLIPVisionConfig's default: OpenAI's
    if act not in ("gelu", "quick_gelu"):
        raise AcornError(f"{where}: hidden_act {act!r} is not supported (gelu or quick_gelu)")
    if v.get("num_channels", 3) != 3:
        raise AcornError(f"{where}: num_channels {v['num_channels']}: the encoder reads RGB images (3 channels)")
    try:
        size, patch = v["image_size"], v["patch_size"]
        if size % patch:
            raise AcornError(f"{where}: image_size {size} is not a multiple of patch_size {patch}; the encoder cuts "
                             "the image into whole patches")
        return VisionConfig(image_size=size, patch_size=patch, d_model=v["hidden_size"],
                            n_layer=v["num_hidden_layers"], n_head=v["num_attention_heads"],
                            d_ff=v["intermediate_size"], act=act, norm_eps=v.get("layer_norm_eps", 1e-5),
                            **normalisation)
    except KeyError as e:
        raise AcornError(f"{where}: lacks {e.args[0]!r}; it is not a complete CLIP vision config") from None


# ------------------------------------------------ transformers' CLIPVisionModel names
# (ours, theirs): a leading ^ renames a prefix, otherwise every occurrence; read both ways.
BLOCK_NAMES = [(".input_layernorm.", ".layer_norm1."), (".post_attention_layernorm.", ".layer_norm2."),
               (".self_attn.o_proj.", ".self_attn.out_proj."), (".mlp.up_proj.", ".mlp.fc1."),
               (".mlp.down_proj.", ".mlp.fc2.")]
VISION_NAMES = [("^patch_embedding.", "^embeddings.patch_embedding."),
                ("^class_embedding", "^embeddings.class_embedding"),
                ("^position_embedding.", "^embeddings.position_embedding."), ("^pre_norm.", "^pre_layrnorm."),
                ("^post_norm.", "^post_layernorm."), ("^layers.", "^encoder.layers."), *BLOCK_NAMES]


def rename(name: str, table: list[tuple[str, str]], *, reverse: bool = False) -> str:
    """A parameter's name in the other naming (reverse: theirs -> ours)."""
    for ours, theirs in table:
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if old.startswith("^"):
            if name.startswith(old[1:]):
                name = new[1:] + name[len(old) - 1:]
        else:
            name = name.replace(old, new)
    return name


def hf_state_dict(encoder: VisionTransformer, prefix: str = "vision_model.") -> dict[str, Tensor]:
    """The encoder's weights under CLIPVisionModel's names (CLIPModel and LLaVA put them under a prefix)."""
    return {prefix + rename(k, VISION_NAMES): v for k, v in encoder.state_dict().items()}


def load_hf_state_dict(encoder: VisionTransformer, tensors: dict[str, Tensor], prefix: str = "vision_model.") -> None:
    """Load CLIPVisionModel-named weights (those under `prefix`); a missing or unexpected one is an AcornError."""
    ours = {rename(k[len(prefix):], VISION_NAMES, reverse=True): v for k, v in tensors.items() if k.startswith(prefix)
            and not k.endswith("position_ids")}
    _load_exact(encoder, ours, "vision encoder")


def _load_exact(module: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AcornError(f"the {what}'s weights do not match its config: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}; the checkpoint is not a CLIP model of this shape")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise AcornError(f"the {what}'s weight {k} has shape {tuple(v.shape)}, the config says "
                             f"{tuple(expected[k].shape)}; the checkpoint's config.json and weights disagree")
    module.load_state_dict(tensors)
