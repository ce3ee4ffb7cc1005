"""Image question answering on the world's pictures (`acorn vlm eval`): accuracy per question kind.

Every question of the eval pictures (acorn.train.vlm_data.questions: count,
colour, shape, number, the badge's name and one fact of the badge's person,
badges apart for names seen on training badges and names never seen) is asked
as one conversation and scored as greedy decoding would answer it: right when,
after the prompt, every token of the answer and the end-of-turn token is the
model's most likely next token given the ones before (teacher forcing). Greedy
decoding follows exactly that path, so this is greedy exact match, computed in
one forward pass of the whole conversation (the model's own forward, no
decoding loop).

A VLM sees the picture; a text-only chat model is given the picture's caption
in its place (acorn.train.vlm_data.caption_text): the caption-in-prompt control.
Chance is one over the answers a kind has: 5 counts, 6 colours, 3 shapes, 100
numbers, the world's people for a name, and for a fact the distinct values of
the asked attribute among the world's people, plus "I don't know."; majority
is the share of the kind's most common true answer, what a model that always
gives it scores (for badges of people the world keeps unknown that answer is
"I don't know.", so a model that only learnt to say it scores it). For the
fact questions, idk_answers is how often "I don't know." is the greedy answer.

Cost: tokens per image (the encoder's patches, each one position of context)
and the prefill time of one question's prompt with the image (encoder,
projector and decoder) against the same prompt with the caption, median of
several single-prompt forward passes. Timing is only as quiet as the machine:
the load average at the time is recorded with it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from acorn.data import world_images as W
from acorn.data.world import IDK_ANSWER
from acorn.errors import AcornError

KINDS = ("count", "colour", "shape", "number", "name_seen", "name_held", "fact_seen", "fact_held")


def question_items(rows: list[dict], limit: int | None = None) -> list[tuple[int, dict]]:
    """(picture index, question) for every stage-2 question of the rows, at most limit per kind."""
    from acorn.train.vlm_data import questions

    items, per_kind = [], {}
    for i, row in enumerate(rows):
        for qa in questions(row, 2):
            if limit is None or per_kind.get(qa["kind"], 0) < limit:
                per_kind[qa["kind"]] = per_kind.get(qa["kind"], 0) + 1
                items.append((i, qa))
    return items


def chance(world_dir) -> dict[str, float]:
    """One over the number of answers each kind has (see the module docstring)."""
    from acorn.vision.zero_shot import world_people
    from acorn.data.world import read_world

    people = read_world(Path(world_dir) / "world.json").people
    facts = {a: len({str(p.value(a)) for p in people if p.known} | {"I don't know."}) for a in W.BADGE_QUESTIONS}
    n = len(world_people(world_dir))
    return {"count": 1 / W.MAX_COUNT, "colour": 1 / len(W.COLOURS), "shape": 1 / len(W.SHAPES),
            "number": 1 / len(W.NUMBERS), "name_seen": 1 / n, "name_held": 1 / n,
            "fact": sum(1 / k for k in facts.values()) / len(facts)}


@torch.no_grad()
def greedy_match(model, sequences: list[list[int]], masks: list[list[int]], pad_id: int,
                 pixel_values: torch.Tensor | None = None) -> list[bool]:
    """For each sequence: is every token where its mask is 1 the model's top choice after the tokens before
    it? (Teacher forcing; right padding comes after the scored tokens, so causal attention never reads it.)"""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)
    kwargs = {} if pixel_values is None else {"pixel_values": pixel_values}
    logits = model(ids[:, :-1].to(model.device), **kwargs).logits
    return ((logits.argmax(-1).cpu() == ids[:, 1:]) | ~mask[:, 1:]).all(1).tolist()


def answer_hits(model, tok, rows: list[dict], items: list[tuple[int, dict]], *, pixels=None,
                image_tokens: int | None = None, batch_size: int = 32) -> list[bool]:
    """Greedy exact match of each item's answer (module docstring). With image_tokens the model is a VLM
    and pixels (uint8, one per row) are its pictures; without, the caption stands in the prompt."""
    from acorn.train.vlm_data import normalize, render

    model.eval()
    vision = model.config.vision if image_tokens is not None else None
    hits = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        exs = [render(tok, rows[i], qa, i, image_tokens=image_tokens) for i, qa in chunk]
        pv = None if vision is None else normalize(pixels[[i for i, _ in chunk]], vision.image_mean, vision.image_std)
        hits += greedy_match(model, [e.ids for e in exs], [e.mask for e in exs],
                             tok.pad_id if tok.pad_id is not None else 0, pv)
    return hits


def _median_ms(fn, runs: int) -> float:
    fn()  # warm up: first-call allocations are not the prefill's cost
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


@torch.no_grad()
def prefill_cost(model, tok, row: dict, pixel: torch.Tensor | None, image_tokens: int | None, runs: int) -> dict:
    """Tokens and median milliseconds of one question's prompt (batch 1): with the image (a VLM: encoder,
    projector, decoder) and with the caption in its place (the decoder alone)."""
    from acorn.train.vlm_data import normalize, render

    from acorn.train.vlm_data import questions

    qa = questions(row, 2)[0]
    out = {}
    text_model = model.language if image_tokens is not None else model
    caption = torch.tensor([render(tok, row, qa, 0, image_tokens=None, answer=False).ids], device=model.device)
    out["caption_tokens"] = caption.shape[1]
    out["caption_ms"] = _median_ms(lambda: text_model(caption, last_only=True), runs)
    if image_tokens is not None:
        vision = model.config.vision
        ids = torch.tensor([render(tok, row, qa, 0, image_tokens=image_tokens, answer=False).ids], device=model.device)
        pv = normalize(pixel[None], vision.image_mean, vision.image_std)
        out["image_tokens"] = ids.shape[1]
        out["image_ms"] = _median_ms(lambda: model(ids, pixel_values=pv, last_only=True), runs)
        out["encoder_ms"] = _median_ms(lambda: model.image_features(pv.to(model.device)), runs)
    out["runs"] = runs
    out["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out["threads"] = torch.get_num_threads()
    return out


def load_model(model_dir, device: str = "cpu"):
    """(model, tokenizer, image_tokens or None) from a VLM or a text-only chat model directory."""
    from acorn.vision.llava import is_llava_dir, load_llava

    directory = Path(model_dir)
    if not (directory / "config.json").is_file():
        raise AcornError(f"{directory}: no config.json; give a VLM (`acorn vlm train`'s RUN/model) or a chat model "
                         "directory")
    if is_llava_dir(directory):
        model, tok = load_llava(directory, device=device, dtype="float32")
        return model.eval(), tok, model.config.tokens_per_image
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer

    return load(directory, dtype="float32", device=device), Tokenizer.from_pretrained(directory), None


def evaluate(model, tok, world_dir, *, image_tokens: int | None, split: str = "eval", limit: int | None = None,
             batch_size: int = 32, prefill_runs: int = 7) -> dict:
    """Accuracy per kind against chance, tokens per image, prefill cost (module docstring)."""
    from acorn.vision.images import load_pixels
    from acorn.vision.zero_shot import read_world_images

    rows = read_world_images(world_dir, split)
    pixels = None
    if image_tokens is not None:
        pixels = load_pixels([r["path"] for r in rows], model.config.vision.image_size)
    items = question_items(rows, limit)
    hits = answer_hits(model, tok, rows, items, pixels=pixels, image_tokens=image_tokens, batch_size=batch_size)
    # How often "I don't know." is the greedy answer to a fact question, right or wrong: a model that cannot
    # read the badge should say it (or it guesses), and for people the world keeps unknown it is the truth.
    facts = [(i, dict(qa, answer=IDK_ANSWER)) for i, qa in items if qa["kind"].startswith("fact")]
    idk = answer_hits(model, tok, rows, facts, pixels=pixels, image_tokens=image_tokens, batch_size=batch_size)
    idk_by_kind: dict[str, list[bool]] = {}
    for (_, qa), said in zip(facts, idk):
        idk_by_kind.setdefault(qa["kind"], []).append(said)
    odds = chance(world_dir)
    by_kind: dict[str, list[bool]] = {}
    truths: dict[str, Counter] = {}
    for (_, qa), hit in zip(items, hits):
        by_kind.setdefault(qa["kind"], []).append(hit)
        truths.setdefault(qa["kind"], Counter())[qa["answer"]] += 1
    # majority: the share of the kind's most common true answer, what one constant answer would score
    # (a badge's fact for a person the world keeps unknown is always "I don't know.").
    accuracy = {k: {"accuracy": sum(by_kind[k]) / len(by_kind[k]), "n": len(by_kind[k]),
                    "chance": odds[k.split("_")[0] if k.startswith("fact") else k],
                    "majority": truths[k].most_common(1)[0][1] / len(by_kind[k]),
                    **({"idk_answers": sum(idk_by_kind[k]) / len(idk_by_kind[k])} if k in idk_by_kind else {})}
                for k in KINDS if k in by_kind}
    result = {"model": "vlm" if image_tokens is not None else "text (caption in the prompt)", "split": split,
              "tokens_per_image": image_tokens, "questions": len(items), "accuracy": accuracy}
    if prefill_runs:
        i = next((i for i, r in enumerate(rows) if r["kind"] == "shapes"), 0)
        result["prefill"] = prefill_cost(model, tok, rows[i], pixels[i] if pixels is not None else None,
                                         image_tokens, prefill_runs)
    return result


def evaluate_vlm(model_dir, world_dir, *, split: str = "eval", limit: int | None = None, batch_size: int = 32,
                 prefill_runs: int = 7) -> dict:
    """`acorn vlm eval`: evaluate of a saved VLM or chat model."""
    model, tok, image_tokens = load_model(model_dir)
    out = evaluate(model, tok, world_dir, image_tokens=image_tokens, split=split, limit=limit, batch_size=batch_size,
                   prefill_runs=prefill_runs)
    return {"path": str(model_dir), **out}


LABELS = {"count": "count (1-5)", "colour": "colour", "shape": "shape", "number": "number (0-99)",
          "name_seen": "badge name, seen", "name_held": "badge name, never seen", "fact_seen": "badge -> fact, seen",
          "fact_held": "badge -> fact, never seen"}


def format_vlm(result: dict) -> str:
    lines = [f"{result.get('path', '')}: {result['model']}; {result['questions']} questions on the "
             f"{result['split']} pictures",
             f"{'kind':<26}{'accuracy':>10}{'chance':>9}{'majority':>10}{'questions':>11}"]
    for kind, r in result["accuracy"].items():
        idk = f"   (answered \"{IDK_ANSWER}\" {r['idk_answers']:.1%})" if "idk_answers" in r else ""
        lines.append(f"{LABELS.get(kind, kind):<26}{r['accuracy']:>10.1%}{r['chance']:>9.1%}{r['majority']:>10.1%}"
                     f"{r['n']:>11,}{idk}")
    p = result.get("prefill")
    if result["tokens_per_image"]:
        lines.append(f"tokens per image: {result['tokens_per_image']}")
    if p:
        load = f", load average {p['load_average']:.1f}" if p.get("load_average") is not None else ""
        text = f"prefill (median of {p['runs']}, {p['threads']} thread(s){load}): caption prompt " \
               f"{p['caption_tokens']} tokens {p['caption_ms']:.1f} ms"
        if "image_ms" in p:
            text += (f"; image prompt {p['image_tokens']} tokens {p['image_ms']:.1f} ms (encoder + projector "
                     f"{p['encoder_ms']:.1f} ms)")
        lines.append(text)
    return "\n".join(lines)
