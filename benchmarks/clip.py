"""CLIP on the world's pictures (issue 20): zero-shot accuracy per question kind against chance (section clip).

A world with pictures (`acorn data world --size SIZE --images`: shapes, numbers,
badges of the world's people) -> `acorn clip train` (acorn.train.clip.train_clip,
the one loop) on its train split -> zero-shot classification by caption
similarity (acorn.vision.zero_shot) on the held-out eval pictures, per kind:
count, colour, shape (the picture's own caption against the ones that differ
in that one thing), the whole shapes caption, the number (0-99), and the badge's
name among every person of the world, for names seen on training badges and
names never seen. The same on the training pictures shows what was learnt
against what generalises. Training time and pairs per second on this machine.

    python benchmarks/clip.py                              # the small world, the default recipe
    python benchmarks/clip.py --steps 20 --no-write        # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (CACHE, command_line, load_note, log, machine_description, markdown_table,  # noqa: E402
                    run_options, today, torch_threads, write_section)

FINDINGS = (
    "Counting, colours and shapes are learnt and hold on pictures never trained on (eval within a few points of "
    "train): the encoder generalises over positions, sizes and combinations. Reading is barely learnt at this "
    "scale: numbers and badge names stay within a few points of chance (1-4% against 0.3-1%), on the training "
    "pictures as well, so it is not a matter of held-out data. A glyph of the bitmap font is 5-6 pixels wide "
    "(numbers are drawn 2-3x larger), an 8x8 patch holds parts of one or two, and each number is seen about 6 "
    "times, each name about 5; the captions' bytes give the caption encoder the digits and letters, but the vision "
    "side has not learnt to read them in 3,000 steps. The chain picture -> person -> fact of issue 20 needs badge "
    "names read, so the LLaVA stage will need more: bigger or more legible text, more badge pictures, a wider "
    "encoder or more steps."
)
KINDS = {"count": "count (1-5)", "colour": "colour (6)", "shape": "shape (3)", "caption": "whole shapes caption (90)",
         "number": "number (0-99)", "name_seen": "badge name, seen on training badges",
         "name_held": "badge name, never on a training badge"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def train_and_eval(world: Path, out: Path, seed: int, extra: list[str]) -> dict:
    """`acorn clip train` (the one loop) with these overrides, timed; then zero-shot on both splits."""
    from acorn.config import load
    from acorn.train.clip import ClipConfig, train_clip
    from acorn.vision.zero_shot import evaluate_world

    cfg = load(ClipConfig, None, ["--world", str(world), "--out", str(out), "--seed", str(seed), *extra])
    cfg.eval.every = cfg.train.max_steps  # evaluate once, at the end: the figures below are measured apart
    t0 = time.perf_counter()
    run = train_clip(cfg)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    log(f"trained {len(rows)} steps in {seconds:.0f}s ({' '.join(extra) or 'defaults'})")
    return {"cfg": cfg, "run": run, "seconds": seconds, "rows": rows,
            "pairs_s": statistics.median(r["tok_s"] for r in rows) / cfg.train.seq_len,
            "eval": evaluate_world(run / "model", world, "eval"),
            "train": evaluate_world(run / "model", world, "train")}


# Recipe choices measured side by side with --ablations: (label, overrides).
ABLATIONS = [("bytes, 1,200 steps", ["--train.max_steps", "1200"]),
             ("BPE with 500 merges, 1,200 steps", ["--train.max_steps", "1200", "--merges", "500"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default", choices=["tiny", "small", "default"],
                    help="world size (default: default, 4,000 pictures)")
    ap.add_argument("--images", type=int, default=None, help="pictures to draw (default: the size's)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: `acorn clip train`'s)")
    ap.add_argument("--seed", type=int, default=0, help="the world's and the run's seed (default: 0)")
    ap.add_argument("--ablations", action="store_true", help="also train the recipe's alternatives (caption "
                    "tokens as bytes or BPE, fewer steps) and tabulate them")
    ap.add_argument("--out", type=Path, default=CACHE / "clip", help="work directory (replaced)")
    run_options(ap)
    args = ap.parse_args()
    torch_threads(args)

    import torch

    from acorn.data.world import generate_world
    from acorn.vision.clip import load_clip

    shutil.rmtree(args.out, ignore_errors=True)
    world = args.out / "world"
    summary = generate_world(world, seed=args.seed, size=args.size, quiet=True,
                             images=args.images if args.images is not None else "default")
    images = summary["images"]
    log(f"world {args.size}: {images['count']} pictures ({images['splits']['train']} train, "
        f"{images['splits']['eval']} eval)")
    main_run = train_and_eval(world, args.out / "run", args.seed,
                              ["--train.max_steps", str(args.steps)] if args.steps is not None else [])
    cfg, rows, held, seen = main_run["cfg"], main_run["rows"], main_run["eval"], main_run["train"]
    run = main_run["run"]
    table = [[KINDS[k], _pct(held[k]["accuracy"]) if k in held else "-",
              _pct(seen[k]["accuracy"]) if k in seen else "-", _pct(r["chance"]),
              f"{held[k]['n'] if k in held else 0} / {seen[k]['n'] if k in seen else 0}"]
             for k, r in {**seen, **held}.items()]
    n_params = load_clip(run / "model")[0].num_params()
    v, t = cfg.model.vision, cfg.model.text
    tokens = (f"a BPE of the training captions ({t.vocab_size} tokens, {cfg.merges} merges asked)" if cfg.merges
              else "bytes") if not cfg.tokenizer else f"the tokenizer {cfg.tokenizer}"
    body = [
        "## CLIP on the world's pictures: zero-shot accuracy per question kind (issue 20)", "",
        f"`{command_line()}` on {machine_description(('pillow',))}, {today()}; {load_note()}; "
        f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}. The 2 cores are shared "
        "with other sessions' work, which can start at any time (with it running, two torch threads ran several "
        "times slower than one): the minutes are this run's.", "",
        f"World `{args.size}` (seed {args.seed}) with {images['count']:,} pictures (`acorn data world --images`, "
        f"64x64 PNG): {images['kinds']['shapes']} shapes, {images['kinds']['number']} numbers, "
        f"{images['kinds']['badge']} badges; {images['splits']['train']:,} train, {images['splits']['eval']} eval. "
        f"`acorn clip train` with its defaults{f' but {args.steps} steps' if args.steps is not None else ''}: a ViT "
        f"({v.n_layer} layers, width {v.d_model}, {v.patch_size}x{v.patch_size} patches of {v.image_size}x"
        f"{v.image_size} pictures: {v.n_patches} patch tokens + 1) and a causal caption encoder ({t.n_layer} layers, "
        f"width {t.d_model}) over {tokens}, {n_params / 1e6:.2f}M parameters in all; "
        f"{cfg.train.max_steps} steps of {cfg.train.micro_batch} pairs (symmetric InfoNCE, learned "
        f"temperature; {cfg.train.max_steps * cfg.train.micro_batch / images['splits']['train']:.1f} epochs).", "",
        f"Training: {main_run['seconds'] / 60:.1f} min ({main_run['pairs_s']:.0f} image-caption pairs/s, median step; "
        f"{rows[-1]['scale']:.1f} final logit scale); final train loss {rows[-1]['loss']:.3f} "
        f"(chance: ln {cfg.train.micro_batch} = {math.log(cfg.train.micro_batch):.3f}).", "",
        "Zero-shot classification by caption similarity (`acorn clip eval`): for each picture, its caption against "
        "the captions that differ in one thing only; chance is one over their number.", "",
        markdown_table(["question kind (candidates)", "held-out eval pictures", "training pictures", "chance",
                        "pictures (eval / train)"], table),
    ]
    body += ["", FINDINGS]
    if args.ablations:
        kinds = ["count", "colour", "shape", "caption"]
        ablation_rows = [["the recipe above", *[_pct(held[k]["accuracy"]) for k in kinds],
                          f"{main_run['seconds'] / 60:.1f}"]]
        for i, (label, extra) in enumerate(ABLATIONS):
            r = train_and_eval(world, args.out / f"ablation{i}", args.seed, extra)
            ablation_rows.append([label, *[_pct(r["eval"][k]["accuracy"]) for k in kinds], f"{r['seconds'] / 60:.1f}"])
        body += ["", "Recipe choices, each trained from scratch in the same run; zero-shot on the held-out eval "
                 "pictures:", "", markdown_table(["caption tokens, steps", "count", "colour", "shape",
                                                  "whole caption", "minutes"], ablation_rows)]
    if args.note:
        body += ["", args.note]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("clip", text)
        log("wrote section clip of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
