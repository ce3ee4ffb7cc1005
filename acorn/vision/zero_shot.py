"""Zero-shot classification of the world's pictures (acorn data world --images), per question kind.

CLIP is never trained to classify: it is asked which caption is nearest. For
each picture the candidates are captions that differ from the picture's own in
one thing only, so each kind is a classification with a known chance:

  count    "a picture of N red circles", N = 1..MAX_COUNT (colour, shape as drawn)   1 / 5
  colour   every colour (count, shape as drawn)                                       1 / 6
  shape    every shape (count, colour as drawn)                                       1 / 3
  caption  every shapes caption (count x colour x shape)                              1 / 90
  number   "a picture of the number N", N = 0..99                                     1 / 100
  name     "the badge of NAME" for every person of the world, reported apart for
           names seen on training badges (name_seen) and never seen (name_held)       1 / people

The truth is the picture's spec (what the generator drew), not its caption.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from acorn.data import world_images as W
from acorn.errors import AcornError
from acorn.fileio import read_jsonl


def read_world_images(world_dir, split: str | None = None) -> list[dict]:
    """The rows of WORLD/images/metadata.jsonl (of one split, if given), each with its "path"."""
    world_dir = Path(world_dir)
    index = world_dir / "images" / "metadata.jsonl"
    if not index.is_file():
        raise AcornError(f"{world_dir}: no pictures (images/metadata.jsonl is missing); draw them with "
                         f"`acorn data world --out {world_dir} --images` (add --overwrite for an existing world)")
    rows = [dict(r, path=world_dir / "images" / r["file_name"]) for r in read_jsonl(index)
            if split is None or r.get("split") == split]
    if not rows:
        raise AcornError(f"{index}: no pictures{f' in the {split} split' if split else ''}; draw more with "
                         "`acorn data world --images N`")
    return rows


def world_people(world_dir) -> list[str]:
    from acorn.data.world import read_world

    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise AcornError(f"{world_dir}: no world.json; give a directory made by `acorn data world`")
    return [p.name for p in read_world(path).people]


def world_zero_shot(model, tok, rows: list[dict], pixels: Tensor, people: list[str]) -> dict[str, dict]:
    """{kind: {"accuracy", "n", "chance"}} over the rows (and their pixels, uint8 (N, 3, S, S))."""
    from acorn.vision.clip import encode_images, encode_texts

    model = getattr(model, "module", model)  # the loop may hand over a DDP-wrapped model
    images = encode_images(model, pixels)
    keys = [(n, c, s) for n in range(1, W.MAX_COUNT + 1) for c in W.COLOURS for s in W.SHAPES]
    at = {k: i for i, k in enumerate(keys)}
    numbers = list(W.NUMBERS)
    texts = {"shapes": encode_texts(model, tok, [W.shapes_caption(*k) for k in keys]),
             "number": encode_texts(model, tok, [W.number_caption(n) for n in numbers]),
             "badge": encode_texts(model, tok, [W.badge_caption(p) for p in people])}
    hits: dict[str, list[bool]] = {k: [] for k in ("count", "colour", "shape", "caption", "number", "name_seen",
                                                   "name_held")}
    for row, image in zip(rows, images):
        spec = row["spec"]
        sims = texts[row["kind"]] @ image
        if row["kind"] == "shapes":
            truth = (spec["count"], spec["colour"], spec["shape"])
            hits["caption"].append(int(sims.argmax()) == at[truth])
            for i, (kind, values) in enumerate((("count", range(1, W.MAX_COUNT + 1)), ("colour", W.COLOURS),
                                                 ("shape", W.SHAPES))):
                options = [at[truth[:i] + (v,) + truth[i + 1:]] for v in values]
                hits[kind].append(options[int(sims[options].argmax())] == at[truth])
        elif row["kind"] == "number":
            hits["number"].append(numbers[int(sims.argmax())] == spec["number"])
        else:
            hits["name_seen" if spec["seen"] else "name_held"].append(people[int(sims.argmax())] == spec["person"])
    chance = {"count": 1 / W.MAX_COUNT, "colour": 1 / len(W.COLOURS), "shape": 1 / len(W.SHAPES),
              "caption": 1 / len(keys), "number": 1 / len(numbers), "name_seen": 1 / len(people),
              "name_held": 1 / len(people)}
    return {k: {"accuracy": sum(v) / len(v), "n": len(v), "chance": chance[k]} for k, v in hits.items() if v}


def evaluate_world(model_dir, world_dir, split: str = "eval") -> dict[str, dict]:
    """world_zero_shot of a saved CLIP model on a world's pictures (`acorn clip eval`)."""
    from acorn.vision.clip import load_clip
    from acorn.vision.images import load_pixels

    model, tok = load_clip(model_dir)
    if tok is None:
        raise AcornError(f"{model_dir}: no tokenizer files; save the model with its tokenizer")
    rows = read_world_images(world_dir, split)
    with torch.no_grad():
        return world_zero_shot(model, tok, rows, load_pixels([r["path"] for r in rows], model.config.vision.image_size),
                               world_people(world_dir))


def format_zero_shot(results: dict[str, dict]) -> str:
    lines = [f"{'kind':<12}{'accuracy':>10}{'chance':>9}{'pictures':>10}"]
    for kind, r in results.items():
        lines.append(f"{kind:<12}{r['accuracy']:>10.1%}{r['chance']:>9.1%}{r['n']:>10,}")
    return "\n".join(lines)
