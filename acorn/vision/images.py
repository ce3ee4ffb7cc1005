"""Images in: reading a file or bytes with Pillow, refusing what is not an image, and
preprocessing as CLIP does (transformers' CLIPImageProcessor): resize the shorter side
to the encoder's size (bicubic), crop the centre square, scale to [0, 1].

Bad input is one AcornError each, saying what and what to do: a missing file, bytes
that are no image or are cut short (corrupt), a format outside FORMATS, an image
larger than MAX_PIXELS (a decompression bomb would otherwise fill the memory), a
file or bytes over MAX_BYTES.
Transparency is flattened onto white, a palette or greyscale image becomes RGB, an
animation gives its first frame.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from acorn.errors import AcornError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # what Pillow decodes and the chat APIs send
MAX_PIXELS = 4096 * 4096  # width x height at most (16.8M): larger images are refused before decoding
MAX_BYTES = 20 * 1024 * 1024  # an encoded image's size at most (20 MiB, OpenAI's limit per image)


def open_image(source: str | Path | bytes, name: str | None = None):
    """A file path or the bytes of an image -> a PIL RGB image, or an AcornError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        where, data = name or "image", bytes(source)
    else:
        where = str(source)
        path = Path(source)
        if not path.is_file():
            why = "; it is a directory" if path.is_dir() else "; check the path"
            raise AcornError(f"{where}: no such image file{why}")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise AcornError(f"{where}: {size:,} bytes is more than the {MAX_BYTES:,} allowed per image; "
                             "scale it down or re-encode it first")
        data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise AcornError(f"{where}: {len(data):,} bytes is more than the {MAX_BYTES:,} allowed per image; "
                         "scale it down or re-encode it first")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise AcornError(f"{where}: not an image ({len(data):,} bytes in no format Pillow knows, or cut short before "
                         f"the pixels); give a {_formats()} file") from None
    if img.format not in FORMATS:
        raise AcornError(f"{where}: {img.format} images are not supported; convert it to {_formats()}")
    if img.width * img.height > MAX_PIXELS:
        raise AcornError(f"{where}: {img.width}x{img.height} pixels is more than the {MAX_PIXELS:,} allowed; "
                         "scale it down first")
    try:
        img.load()  # decoding happens here: a file cut short or damaged fails now, not later
    except (OSError, SyntaxError, ValueError) as e:
        raise AcornError(f"{where}: a corrupt {img.format} image ({e}); re-save or re-export it") from None
    return to_rgb(img)


def _formats() -> str:
    return ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]


def to_rgb(img):
    """RGB, with any transparency composited onto white (not black, as a plain convert would)."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img, size: int):
    """CLIP's preprocessing: the shorter side to `size` (bicubic), then the centre size x size square.
    An image already size x size is returned as it is."""
    from PIL import Image

    if img.size == (size, size):
        return img
    w, h = img.size
    # The longer side rounds down, as transformers' get_resize_output_image_size does.
    w2, h2 = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((w2, h2), Image.BICUBIC)
    left, top = (w2 - size) // 2, (h2 - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img) -> Tensor:
    """An RGB image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_pixels(sources: list, size: int) -> Tensor:
    """Image files, bytes or PIL images -> uint8 (N, 3, size, size), preprocessed as CLIP does."""
    from PIL import Image

    return torch.stack([to_tensor(resize_and_crop(to_rgb(s) if isinstance(s, Image.Image) else open_image(s), size))
                        for s in sources])


def to_unit(pixels: Tensor) -> Tensor:
    """uint8 pixels -> float in [0, 1] (the encoder normalises them further)."""
    return pixels.float() / 255.0
