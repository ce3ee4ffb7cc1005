"""Pictures for the built-in world: countable shapes, numbers and name badges, drawn with Pillow.

Concept: images whose content is known exactly, so a small vision model
trained on them (acorn.vision, CLIP-style) and later an image-reading chat
model can be measured by counting, naming colours and shapes, and reading.
Three kinds, each IMAGE_SIZE x IMAGE_SIZE RGB on white:

  shapes  1 to MAX_COUNT circles, squares or triangles of one colour, each in
          its own cell of a 4 x 4 grid (so they never touch: counting them is
          counting connected regions)      "a picture of three red circles"
  number  a number 0-99 in Pillow's built-in bitmap font, scaled 2x or 3x
                                           "a picture of the number 42"
  badge   a name badge: a coloured stripe over a world person's first and
          last name                        "the badge of Elin Holnard"
          A badge leads from an image to a fact: "Where was the person on
          this badge born?" (acorn.data.world.image_rows writes those pairs).

Each picture is drawn from a spec (a dict: what is in it and where), and its
caption and question/answer pairs are written from the same spec. Drawing is a
pure function of the spec (draw), the random choices are made only when the
spec is made (*_spec), so a test can redraw a picture and check its pixels.

Determinism: shapes are filled without antialiasing, and the font is Pillow's
built-in 1-bit bitmap font (ImageFont.load_default_imagefont: no font file, no
FreeType rendering that differs between machines), so every pixel is one of a
few exact colours. PNG files carry no time stamp: the same spec gives the same
bytes with the same Pillow and zlib.
"""

from __future__ import annotations

import io
import random
from functools import lru_cache

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)  # badge text
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 190, 20),
           "purple": (140, 60, 190), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
MAX_COUNT = 5
NUMBERS = range(100)  # "short numbers": one or two digits
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
KINDS = ("shapes", "number", "badge")
GRID = 4  # shapes sit one per cell of a GRID x GRID grid
SHAPE_SIZES = (8, 10, 12)  # pixels per side; a cell is IMAGE_SIZE / GRID = 16
STRIPE = 12  # rows of colour at the top of a badge
# The question/answer kinds each picture kind is asked about ("fact": a badge's person's fact).
QA_KINDS = {"shapes": ("count", "colour", "shape"), "number": ("number",), "badge": ("name", "fact")}
BADGE_QUESTIONS = {
    "birth_city": "Where was the person on this badge born?",
    "birth_year": "In which year was the person on this badge born?",
    "profession": "What does the person on this badge do for a living?",
    "employer": "Which company does the person on this badge work for?",
    "mentor": "Who was the mentor of the person on this badge?",
}


# ---------------------------------------------------------------- captions
def shapes_caption(count: int, colour: str, shape: str) -> str:
    return f"a picture of {COUNT_WORDS[count]} {colour} {shape}{'s' if count > 1 else ''}"


def number_caption(number: int) -> str:
    return f"a picture of the number {number}"


def badge_caption(name: str) -> str:
    return f"the badge of {name}"


def caption(spec: dict) -> str:
    if spec["kind"] == "shapes":
        return shapes_caption(spec["count"], spec["colour"], spec["shape"])
    if spec["kind"] == "number":
        return number_caption(spec["number"])
    return badge_caption(f"{spec['first']} {spec['last']}")


def questions(spec: dict) -> list[dict]:
    """The question/answer pairs a picture answers by itself (a badge's fact question is the world's)."""
    if spec["kind"] == "shapes":
        one = spec["count"] == 1
        return [{"question": "How many shapes are in the picture?", "answer": str(spec["count"]), "kind": "count"},
                {"question": f"What colour {'is the shape' if one else 'are the shapes'}?", "answer": spec["colour"],
                 "kind": "colour"},
                {"question": f"What shape {'is it' if one else 'are they'}?", "answer": spec["shape"], "kind": "shape"}]
    if spec["kind"] == "number":
        return [{"question": "What number is written in the picture?", "answer": str(spec["number"]),
                 "kind": "number"}]
    return [{"question": "Whose badge is this?", "answer": f"{spec['first']} {spec['last']}", "kind": "name"}]


# ------------------------------------------------------------------- specs
def shapes_spec(rng: random.Random) -> dict:
    count, colour, shape = rng.randint(1, MAX_COUNT), rng.choice(list(COLOURS)), rng.choice(SHAPES)
    size, cell = rng.choice(SHAPE_SIZES), IMAGE_SIZE // GRID
    # A 1-pixel margin inside each cell: shapes in neighbouring cells are >= 2 pixels apart.
    cells = sorted(rng.sample(range(GRID * GRID), count))
    boxes = [[(c % GRID) * cell + rng.randint(1, cell - size - 1), (c // GRID) * cell + rng.randint(1, cell - size - 1)]
             for c in cells]
    return {"kind": "shapes", "count": count, "colour": colour, "shape": shape, "size": size, "boxes": boxes}


def number_spec(rng: random.Random, number: int | None = None) -> dict:
    number = rng.choice(NUMBERS) if number is None else number
    scale = rng.choice((2, 3))
    w, h = glyphs(str(number)).size
    return {"kind": "number", "number": number, "colour": rng.choice(list(COLOURS)), "scale": scale,
            "x": rng.randint(2, IMAGE_SIZE - 2 - w * scale), "y": rng.randint(2, IMAGE_SIZE - 2 - h * scale)}


def badge_spec(rng: random.Random, first: str, last: str) -> dict:
    widths = [glyphs(t).size[0] for t in (first, last)]
    if max(widths) > IMAGE_SIZE - 2:
        raise ValueError(f"the name {first} {last} is too wide for a {IMAGE_SIZE}-pixel badge")
    return {"kind": "badge", "first": first, "last": last, "colour": rng.choice(list(COLOURS)),
            "dx": rng.randint(-2, 2), "dy": rng.randint(0, 4)}


# ----------------------------------------------------------------- drawing
@lru_cache(maxsize=1)
def font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


@lru_cache(maxsize=4096)
def glyphs(text: str):
    """The text's ink in the bitmap font as a 1-bit mask ("L", 0 or 255), cropped to the ink."""
    from PIL import Image, ImageDraw

    f = font()
    left, top, right, bottom = f.getbbox(text)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, font=f, fill=255)
    return mask.crop(mask.getbbox())


def draw(spec: dict):
    """The picture a spec describes, as a PIL RGB image."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    d = ImageDraw.Draw(img)
    if spec["kind"] == "shapes":
        s, fill = spec["size"], COLOURS[spec["colour"]]
        for x, y in spec["boxes"]:
            if spec["shape"] == "circle":
                d.ellipse([x, y, x + s - 1, y + s - 1], fill=fill)
            elif spec["shape"] == "square":
                d.rectangle([x, y, x + s - 1, y + s - 1], fill=fill)
            else:
                d.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=fill)
    elif spec["kind"] == "number":
        mask = glyphs(str(spec["number"]))
        k = spec["scale"]
        mask = mask.resize((mask.size[0] * k, mask.size[1] * k), Image.NEAREST)
        img.paste(COLOURS[spec["colour"]], (spec["x"], spec["y"]), mask)
    else:
        d.rectangle([0, 0, IMAGE_SIZE - 1, STRIPE - 1], fill=COLOURS[spec["colour"]])
        for row, text in enumerate((spec["first"], spec["last"])):
            mask = glyphs(text)
            x = min(max(1, (IMAGE_SIZE - mask.size[0]) // 2 + spec["dx"]), IMAGE_SIZE - 1 - mask.size[0])
            img.paste(INK, (x, STRIPE + 5 + spec["dy"] + 16 * row), mask)
    return img


def png(img) -> bytes:
    """PNG bytes with nothing but the pixels (no time stamp or other text chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
