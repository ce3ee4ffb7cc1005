"""The world's pictures (acorn data world --images): deterministic, and they show what their captions say.

The checks read the pixels and the caption's words, never the generator's spec:
shapes are counted as connected regions of the caption's colour and told apart
by how much of their bounding box they fill; numbers and names are compared,
glyph for glyph, with the bitmap font's rendering of the caption's text.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from acorn.data import world_images as W
from acorn.data.world import IDK_ANSWER, IMAGE_SCHEMA, generate_world
from acorn.errors import AcornError


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pictured(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pictured")
    generate_world(out, seed=0, size="tiny", quiet=True, images=90)
    return out


def _rows(world: Path) -> list[dict]:
    return [json.loads(line) for line in (world / "images" / "metadata.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes_and_the_other_files_do_not_change(pictured, tmp_path):
    generate_world(tmp_path / "again", seed=0, size="tiny", quiet=True, images=90)
    generate_world(tmp_path / "other", seed=1, size="tiny", quiet=True, images=90)
    generate_world(tmp_path / "plain", seed=0, size="tiny", quiet=True)
    first, again = _hashes(pictured), _hashes(tmp_path / "again")
    assert first == again and len([k for k in first if k.endswith(".png")]) == 90
    other = _hashes(tmp_path / "other")
    assert sum(first[k] != other[k] for k in first if k.startswith("images/")) > 80
    plain = _hashes(tmp_path / "plain")  # without --images every other file is byte for byte the same
    assert {k: v for k, v in first.items() if not k.startswith("images/") and k != "manifest.json"} == \
        {k: v for k, v in plain.items() if k != "manifest.json"}
    manifest = json.loads((pictured / "manifest.json").read_text())
    assert "images" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    digest = hashlib.sha256()
    for row in _rows(pictured):
        digest.update(hashlib.sha256((pictured / "images" / row["file_name"]).read_bytes()).digest())
    assert manifest["images"]["sha256"] == digest.hexdigest() and manifest["images"]["count"] == 90


def test_rows_match_the_schema_and_badge_splits_hold_names_out(pictured):
    rows = _rows(pictured)
    world = json.loads((pictured / "world.json").read_text())
    split_of = {p["name"]: p["split"] for p in world["people"]}
    for row in rows:
        jsonschema.validate(row, IMAGE_SCHEMA)
        with Image.open(pictured / "images" / row["file_name"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (W.IMAGE_SIZE, W.IMAGE_SIZE)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in W.KINDS}
    assert kinds == {"shapes": 45, "number": 18, "badge": 27}
    badges = [r for r in rows if r["kind"] == "badge"]
    trained = {r["spec"]["person"] for r in badges if r["split"] == "train"}
    assert trained and all(split_of[p] in ("sft", "unknown_sft") for p in trained)
    held = [r for r in badges if r["split"] == "eval" and not r["spec"]["seen"]]
    again = [r for r in badges if r["split"] == "eval" and r["spec"]["seen"]]
    assert held and again
    assert all(r["spec"]["person"] not in trained for r in held)  # never on a training badge
    assert all(r["spec"]["person"] in trained for r in again)  # a new drawing of a name trained on
    assert 0.15 < sum(r["split"] == "eval" for r in rows) / len(rows) < 0.25


def _pixels(world: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO((world / "images" / row["file_name"]).read_bytes())).convert("RGB"))


def _ink(pixels: np.ndarray, colour) -> np.ndarray:
    return (pixels == np.array(colour)).all(-1)


def _glyph_mask(text: str) -> np.ndarray:
    return np.asarray(W.glyphs(text)) > 0


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _shape_of(region: np.ndarray) -> str:
    fill = region.sum() / region.size  # of its bounding box
    return "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"


def test_captions_and_answers_say_what_was_drawn(pictured):
    words = {w: i for i, w in enumerate(W.COUNT_WORDS)}
    people = {p["name"]: p for p in json.loads((pictured / "world.json").read_text())["people"]}
    for row in _rows(pictured):
        px, answers = _pixels(pictured, row), {q["kind"]: q["answer"] for q in row["qa"]}
        not_white = ~_ink(px, W.BACKGROUND)
        if row["kind"] == "shapes":
            count, colour, shape = re.fullmatch(r"a picture of (\w+) (\w+) (\w+?)s?", row["caption"]).groups()
            colour_ink = _ink(px, W.COLOURS[colour])
            assert (colour_ink == not_white).all()  # nothing else is drawn
            labels, n = ndimage.label(colour_ink)
            assert n == words[count] == int(answers["count"])
            assert {_shape_of(_crop(labels == i)) for i in range(1, n + 1)} == {shape}
            assert (answers["colour"], answers["shape"]) == (colour, shape)
        elif row["kind"] == "number":
            number = re.fullmatch(r"a picture of the number (\d+)", row["caption"]).group(1)
            assert answers["number"] == number
            colours = {tuple(c) for c in px[not_white]}
            assert len(colours) == 1 and colours.pop() in W.COLOURS.values()
            ink, glyph = _crop(not_white), _glyph_mask(number)
            scale = ink.shape[0] // glyph.shape[0]
            assert scale in (2, 3) and (ink[::scale, ::scale] == glyph).all()
        else:
            name = re.fullmatch(r"the badge of (.+)", row["caption"]).group(1)
            assert answers["name"] == name
            assert tuple(px[0, 0]) in W.COLOURS.values() and (px[:W.STRIPE] == px[0, 0]).all()
            text = _ink(px, W.INK)
            assert (text == not_white)[W.STRIPE:].all()  # below the stripe: only the name's ink
            rows_with_ink = np.nonzero(text.any(1))[0]
            gap = np.nonzero(np.diff(rows_with_ink) > 1)[0][0]  # the two lines
            top, bottom = text[:rows_with_ink[gap] + 1], text[rows_with_ink[gap] + 1:]
            first, last = name.split(" ")
            assert (_crop(top) == _glyph_mask(first)).all() and (_crop(bottom) == _glyph_mask(last)).all()
            fact = next(q for q in row["qa"] if q["kind"] == "fact")
            person = people[name]
            assert fact["answer"] == (str(person[fact["attribute"]]) if person["known"] else IDK_ANSWER)


def test_the_cli_draws_the_sizes_number_and_refuses_bad_counts(tmp_path, capsys):
    from acorn.cli import main

    assert main(["data", "world", "--out", str(tmp_path / "w"), "--size", "tiny", "--images"]) == 0
    assert len(_rows(tmp_path / "w")) == 60
    assert "images/ (PNG)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "world", "--out", str(tmp_path / "x"), "--size", "tiny", "--images", "-3"])
    assert e.value.code == 2 and "--images" in capsys.readouterr().err
    with pytest.raises(AcornError, match="images must be"):
        generate_world(tmp_path / "y", size="tiny", quiet=True, images=-1)
