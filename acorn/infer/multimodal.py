"""Images in a request: which prompt positions they fill, and what the prefix cache keys them by.

A LLaVA prompt holds tokens_per_image placeholder ids (acorn.vision.llava.IMAGE_TOKEN)
per image; the decoder's embedding of each is replaced by a row of the image's
features (Transformer.embed's image_features / image_mask). The engine runs
images through the same loop as text:

  pixels     decoded and preprocessed once, when the request is added (bad bytes
             are the caller's error then, not a failure inside a step)
  features   the vision encoder + projector run once per request, at the first
             prefill chunk that covers a placeholder, and kept on the request:
             a later chunk (chunked prefill) or a recomputation after
             preemption takes its rows from there. A prompt whose image blocks
             all come from the prefix cache never runs the encoder
  rows       each prefill chunk gets the feature rows of the placeholders it
             covers (span); decode steps have none
  hashing    the prefix cache names a block by its tokens, and every
             placeholder has the same id whatever the image, so in the block
             hash a placeholder is (digest of the image's pixels, index within
             the image) instead (hash_keys): two different images never share
             KV blocks, the same image sent again does
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass

from torch import Tensor

from acorn.errors import AcornError

TEXT_ONLY = "this is a text-only model and cannot read images; send text only, or serve a model that reads images"


@dataclass(eq=False)
class RequestImages:
    """The images of one request: shared by its n samples (and their recomputations)."""

    pixels: Tensor  # uint8 (N, 3, S, S), preprocessed as the encoder expects
    digests: list[str]  # per image: sha256 of its preprocessed pixels
    positions: list[int]  # the placeholders' indices in the prompt, ascending; image i's are [i*T, (i+1)*T)
    tokens_per_image: int
    features: Tensor | None = None  # (N * T, d_model) once the encoder has run

    def hash_keys(self, prompt: list[int]) -> list:
        """The prompt as the prefix cache hashes it: each placeholder as (image digest, index within the image)."""
        keys: list = list(prompt)
        t = self.tokens_per_image
        for k, p in enumerate(self.positions):
            keys[p] = (self.digests[k // t], k % t)
        return keys

    def span(self, start: int, end: int) -> tuple[int, int]:
        """[lo, hi): which placeholders (and feature rows) lie in prompt positions [start, end)."""
        return bisect_left(self.positions, start), bisect_left(self.positions, end)


def request_images(prompt: list[int], images, *, image_token_id: int | None, tokens_per_image: int | None,
                   image_size: int | None) -> RequestImages | None:
    """Check a prompt's placeholders against its images and decode them (file paths,
    bytes or PIL images); None for a request without images. One AcornError per
    problem: images for a text-only model, a placeholder count that is not
    tokens_per_image per image, bytes that are no image (acorn.vision.images)."""
    images = list(images or [])
    if tokens_per_image is None:
        if images:
            raise AcornError(f"the request holds {len(images)} image(s) but {TEXT_ONLY}")
        return None
    positions = [i for i, t in enumerate(prompt) if t == image_token_id]
    if not images and not positions:
        return None
    if len(positions) != len(images) * tokens_per_image:
        raise AcornError(f"the prompt has {len(positions)} image placeholder tokens for {len(images)} image(s); "
                         f"this model needs {tokens_per_image} per image (apply_chat_template(image_tokens="
                         f"{tokens_per_image}) writes them, or send the images as message parts)")
    from acorn.vision.images import load_pixels

    pixels = load_pixels(images, image_size)
    digests = [hashlib.sha256(p.numpy().tobytes()).hexdigest() for p in pixels]
    return RequestImages(pixels, digests, positions, tokens_per_image)
