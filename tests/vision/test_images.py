"""Images in (acorn.vision.images): CLIP's preprocessing, with transformers' CLIPImageProcessor as the
oracle, and one clear error for each kind of bad image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from acorn.errors import AcornError
from acorn.vision import images
from acorn.vision.clip import preprocessor_config
from acorn.vision.encoder import VisionConfig


@pytest.mark.parametrize("size", [(64, 64), (100, 80), (37, 90), (300, 17)])
def test_preprocessing_is_clip_image_processors(size):
    from transformers import CLIPImageProcessor

    cfg = VisionConfig(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    settings = {k: v for k, v in preprocessor_config(cfg).items() if k != "image_processor_type"}
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    theirs = CLIPImageProcessor(**settings)(images=img, return_tensors="pt")["pixel_values"][0]
    pixels = images.load_pixels([_png(img)], cfg.image_size)
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == torch.uint8
    mean, std = torch.tensor(cfg.image_mean).view(3, 1, 1), torch.tensor(cfg.image_std).view(3, 1, 1)
    torch.testing.assert_close((images.to_unit(pixels[0]) - mean) / std, theirs, atol=1e-5, rtol=0)


def _png(img, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_transparency_goes_onto_white_and_other_modes_become_rgb():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: shows the white behind it
    assert images.open_image(_png(clear)).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (4, 4), (0, 128))
    assert images.open_image(_png(half)).getpixel((0, 0)) == (127, 127, 127)
    assert images.open_image(_png(Image.new("L", (4, 4), 9), "JPEG")).mode == "RGB"


def test_bad_images_are_one_clear_error(tmp_path, monkeypatch):
    good = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)))
    with pytest.raises(AcornError, match="no such image file"):
        images.open_image(tmp_path / "missing.png")
    with pytest.raises(AcornError, match="it is a directory"):
        images.open_image(tmp_path)
    with pytest.raises(AcornError, match="not an image"):
        images.open_image(b"%PDF-1.4 not a picture", name="x.pdf")
    with pytest.raises(AcornError, match="corrupt PNG"):
        images.open_image(good[:len(good) // 2])  # the header is whole, the pixels cut short
    with pytest.raises(AcornError, match="TIFF images are not supported"):
        images.open_image(_png(Image.new("RGB", (4, 4)), "TIFF"))
    monkeypatch.setattr(images, "MAX_PIXELS", 199)
    with pytest.raises(AcornError, match="20x10 pixels is more than the 199 allowed"):
        images.open_image(good)
