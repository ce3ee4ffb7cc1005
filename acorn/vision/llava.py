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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, ModelOutput, Transformer, build
from acorn.vision.encoder import VisionConfig, VisionTransformer

IMAGE_TOKEN = "<image>"  # the placeholder special token: tokens_per_image of them stand for one image


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
