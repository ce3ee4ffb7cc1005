"""In-context learning from pretraining documents, section `icl-pretraining` (issue 16, item 3).

The world's in-context items (world_icl: "Input: x / Label: y" lines of a label mapping
invented per item, then a query) are solved only by following the examples. The default
world puts 1,500 in-context documents among its pretraining text; the speedrun's base model
still scores at chance. This pretrains the speedrun's model (cpu preset: the same tokenizer
size, model, batch and learning rate, a fixed number of steps, by default the 707 steps an
idle 2-core run of `acorn speedrun` takes) on worlds that differ only in those documents:

  default         the world as `acorn speedrun` makes it
  repeats-1500    `acorn data world --icl-docs 1500`: as many documents, half of them
                  repeating their inputs so each later label can only be copied from an
                  earlier line (induction, Olsson et al. 2022)
  repeats-6000    `--icl-docs 6000`: four times as many (a third of the pretraining tokens)
  icl-only        only the in-context documents of repeats-6000 (no biographies, stories,
                  arithmetic): whether the model learns the behaviour at all when it is all
                  there is to learn (a capacity check, not a recipe)

and scores each base model on world_icl (split by item kind: induction = copy the label of a
repeated input; category = a new member of a category shown) and on a copying probe: over the
repeated-induction documents of a fixed world, is the greedy first token of each label right,
on an input's first line (a guess among 2-3 labels) and on its later lines (copyable)?

    python benchmarks/icl.py --work /tmp/icl --variants default,repeats-1500,repeats-6000,icl-only
    python benchmarks/icl.py --work /tmp/icl --reuse default=/tmp/sr3/seed0 ...   # a run made already

--reuse NAME=DIR scores a run directory already made (DIR/world, DIR/pretrain/model) instead of
training it again; a finished `acorn speedrun --out DIR` is the default variant's run.

--formation DESIGNS (section `icl-formation`) asks whether the behaviour forms at all when the
model is trained on nothing but in-context documents, and when: the speedrun's model and batch,
fed only documents of one design, scored on world_icl every 100 steps while it trains (the
first token of the answer, greedy; by item kind, and on the induction items whose answer is not
the label shown most often, where answering with the prompt's most frequent label scores 0):

  episodes      the default world's in-context documents (icl_episode, 8-12 examples)
  repeats       repeated-induction documents only (icl_doc's second kind: 3-5 inputs shown
                10-12 times, each later label copyable from an earlier line)
  copy          a run of 6-16 of the world's words (names, invented label words) on 2-3
                lines, each the run again (the plain induction of Olsson et al.: copy what
                followed the same token last time; acorn.data.world.copy_doc)
  copy+repeats  half of them copy's, half repeats'
  formats       repeated-induction documents written in one of five formats whose label
                comes 1 to 4 tokens after its input ("x y", "x: y", "x -> y",
                "Input: x Label: y", the eval's "Input: x\\nLabel: y"): a curriculum of
                distances, the shortest the one plain induction learns
  names+repeats half of them lines naming each input's category in the eval's format
                ("Input: Zerven\\nLabel: city"): a fixed mapping, so the position before the
                label must gather its input (what the copy needs on both sides: the query's
                input, and, one token later, the earlier line's) and what kind of thing it is
                (what the category items need)
  copy+formats  half copy's, half formats': what `acorn data world --icl-style copy+formats`
                writes
  world+copy+formats  a third the world's own pretraining documents (the speedrun's
                text), two thirds copy+formats' (acorn.data.world.phase_doc)
  world+copy    a third the world's own, two thirds copy's
  world+formats a third the world's own, two thirds formats'
  world         the world's own pretraining documents only (after in-context designs: does
                the model get the world back, and keep what it learned in context?)
  spaced        copying across a gap: a run of 4-10 of the world's words with one of the
                formats' separators between them ("w1: w2: w3", "w1\\nLabel: w2"), the run
                again (acorn.data.world.spaced_copy_doc): what follows a word 2 to 4 tokens
                later, the distances the formats' labels sit at
  copy+spaced+formats  a third each of copy's, spaced's and formats' (`acorn speedrun
                --world-icl-docs N --world-icl-style copy+spaced+formats` puts N of them into the
                pretraining world itself)
  world+spaced  a third the world's own, two thirds spaced's

    python benchmarks/icl.py --formation repeats,copy+repeats,formats,names+repeats --work /tmp/iclf --steps 600

A design followed by :PRESET trains that model preset instead (repeats:micro: the 5M model of
acorn.model.transformer.PRESETS, the speedrun's other settings unchanged). Designs joined by >
are a curriculum: each trains from the model the one before it left (copy>formats); @STEPS at
the end sets every design's steps (default --steps), @STEPS after a design of the chain that
design's own (copy@100>formats@300). With --init RUN (a finished speedrun: its world and tokenizer
are linked into --work), a chain starting with base> starts from that run's base model
(RUN/pretrain/model) instead of from scratch, each model is also scored on the world's fact
multiple choice, and the section is `icl-phase` (how the speedrun's in-context phase was chosen):

    python benchmarks/icl.py --formation "copy>copy>formats,copy>formats,copy>copy>repeats" --work /tmp/iclf --steps 500
    python benchmarks/icl.py --init /tmp/sr9/seed0 --work /tmp/iclg2 \\
        --formation "base>formats@200,base>copy>formats@200,base>world+copy+formats@400,world+copy+formats@970"

--init given more than once runs every chain after each run's base model (in WORK/<the run's last
two folders>) and writes section `icl-phase-bases`: the chains' final figures side by side, what
says whether a phase is a recipe or the luck of one base model:

    python benchmarks/icl.py --init /tmp/sr9/seed0 --init /tmp/sr9/seed1 --init /tmp/sr9/seed2 \\
        --init /tmp/sr10/seed0 --work /tmp/iclp --formation "base>copy@200>formats@200>world+formats@200"

--probe-formats MODEL... prints, for saved models, copying at each distance (format_probe: the
label's first token on repeated lines of repeated-induction documents written in each of the five
formats), which tells a formats stage that transferred plain induction to the eval's format from
one that taught only the one-token distance:

    python benchmarks/icl.py --probe-formats /tmp/iclc1/formats/pretrain-200steps-*/model
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (command_line, load_note, log, machine_description, markdown_table, publish, today,  # noqa: E402
                    write_section)

VARIANTS = {"default": 0, "repeats-1500": 1500, "repeats-6000": 6000, "icl-only": 6000}
PROBE_DOCS = 300
from acorn.data.world import PHASE_DESIGNS as DESIGNS  # noqa: E402


def make_run(name: str, out: Path, steps: int, seed: int = 0) -> float:
    """World, tokenizer, shards and pretraining as the speedrun's stages make them, at a fixed step count."""
    from acorn import speedrun as sr
    from acorn.data.world import generate_world
    from acorn.fileio import read_jsonl, write_jsonl
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.pretrain import pretrain

    p = sr.resolve_preset("cpu")
    t0 = time.perf_counter()
    if not (out / "data").exists():
        generate_world(out / "world", seed=seed, size=p.world, overwrite=True, icl_docs=VARIANTS[name], quiet=True)
        text = out / "world" / "pretrain.jsonl"
        if name == "icl-only":
            text = out / "icl-only.jsonl"
            write_jsonl(text, [r for r in read_jsonl(out / "world" / "pretrain.jsonl") if r["kind"] == "icl"])
        sr.stage_tokenizer(out / "world", out / "tokenizer", p.vocab_size)
        from acorn.data.prepare import prepare

        prepare([text], out / "tokenizer", out / "data", val_fraction=0.01, quiet=True)
    vocab = Tokenizer.from_pretrained(out / "tokenizer").vocab_size
    cfg = sr.pretrain_config(p, out / "data", out / "pretrain", vocab, seed)
    pretrain(sr.for_steps(cfg, steps))
    return time.perf_counter() - t0


def probe_docs(work: Path) -> list[str]:
    """Repeated-induction documents of a fixed world (seed 1: never a trained world's own)."""
    from acorn.data.world import generate_world
    from acorn.fileio import read_jsonl

    world = work / "probe-world"
    if not (world / "pretrain.jsonl").exists():
        generate_world(world, seed=1, size="default", overwrite=True, icl_docs=2 * PROBE_DOCS, quiet=True)
    docs = []
    for r in read_jsonl(world / "pretrain.jsonl"):
        inputs = re.findall(r"Input: (.*)\n", r["text"]) if r["kind"] == "icl" else []
        if inputs and len(set(inputs)) <= len(inputs) - 3:  # inputs that come back: the repeated kind
            docs.append(r["text"])
    return docs[:PROBE_DOCS]


def load_model(model_dir: Path):
    """A saved model (float32, eval mode) and its tokenizer."""
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer

    return load(model_dir, dtype="float32", device="cpu").eval(), Tokenizer.from_pretrained(model_dir)


def first_token_right(model, tok, prompt: str, answer: str) -> bool:
    """Is the model's greedy next token after the prompt the first token of " answer"?"""
    import torch

    ids = [tok.bos_id] + tok.encode(prompt)
    device = next(model.parameters()).device
    with torch.no_grad():
        pred = model(torch.tensor([ids[-model.config.max_seq_len:]], device=device)).logits[0, -1].argmax().item()
    return pred == tok.encode(" " + answer)[0]


def copy_probe(model_dir: Path, docs: list[str]) -> dict:
    """Greedy first token of each label right, on an input's first and later lines."""
    model, tok = load_model(model_dir)
    right = {"first": [0, 0], "repeat": [0, 0]}
    for text in docs:
        prefix, seen = "", set()
        for x, label in re.findall(r"Input: (.*)\nLabel: (\S+)", text):
            prefix += f"Input: {x}\nLabel:"
            kind = "repeat" if x in seen else "first"
            right[kind][0] += first_token_right(model, tok, prefix, label)
            right[kind][1] += 1
            seen.add(x)
            prefix += f" {label}\n"
    return {k: a / max(1, n) for k, (a, n) in right.items()}


def score(name: str, run: Path, docs: list[str]) -> dict:
    from acorn.eval.harness import evaluate
    from acorn.fileio import read_jsonl

    model = run / "pretrain" / "model"
    out = evaluate(model, ["world_icl", "world_multiple_choice"], data_dir=run / "world", progress=False)
    items = list(read_jsonl(run / "world" / "eval" / "icl.jsonl"))
    by_kind: dict[str, list[int]] = {}
    in_labels = 0
    for s in out["samples"]["world_icl"]:
        doc = items[s["doc_id"]]
        word = (s["output"].strip().split(" ") or [""])[0].lower()
        by_kind.setdefault(doc["task"], []).append(word == doc["answer"].lower())
        in_labels += word in [x.lower() for x in doc["labels"]]
    r = out["results"]
    metrics = json.loads((run / "pretrain" / "metrics.jsonl").read_text().splitlines()[-1])
    return {"icl": r["world_icl"]["first_word_match"], "chance": r["world_icl"]["chance"],
            "kinds": {k: sum(v) / len(v) for k, v in by_kind.items()}, "in_labels": in_labels / len(items),
            "mc": r["world_multiple_choice"]["acc"], "val_loss": metrics.get("val_loss"),
            "steps": metrics.get("step"), "icl_docs": VARIANTS[name], "probe": copy_probe(model, docs)}


def plain_probe(model, tok, docs: int = 100, world_seed: int = 0) -> float:
    """Plain induction: a run of the trained world's words (world_seed's), then the same run
    again; the share of the second run's tokens (after its first) predicted right, greedy.
    Copying: ~100%. (Another world's words split into tokens the model has hardly seen,
    whose embeddings it never learned to copy: 21% where its own words score 99.8%.)"""
    import random

    import torch

    from acorn.data.world import build_world, copy_doc, icl_pools

    rng, pools = random.Random("plain-probe"), icl_pools(build_world(world_seed, "default"))
    device = next(model.parameters()).device
    right = total = 0
    for _ in range(docs):
        run = tok.encode(copy_doc(rng, pools).split("\n")[0])
        ids = [tok.bos_id] + run + tok.encode("\n") + run
        with torch.no_grad():
            pred = model(torch.tensor([ids], device=device)).logits[0].argmax(-1).tolist()
        second = len(ids) - len(run)  # where the second run starts
        right += sum(pred[i - 1] == ids[i] for i in range(second + 1, len(ids)))
        total += len(run) - 1
    return right / total


def format_probe(model, tok, docs: int = 40, world_seed: int = 0) -> dict[str, float]:
    """Copying at each distance: repeated-induction lines (icl_repeats, of the trained world's
    words) written in each of ICL_FORMATS, the label 1 to 4 tokens after its input; the greedy
    first token of the label right on an input's repeated lines (copyable; a guess among the
    2-3 labels: 33-50%). Where the formats stage transferred plain induction to the eval's
    format, every distance scores high; where it did not, only the one-token distance does."""
    import random

    from acorn.data.world import ICL_FORMATS, build_world, icl_format_parts, icl_pools, icl_repeats

    pools, out = icl_pools(build_world(world_seed, "default")), {}
    for form in ICL_FORMATS:
        rng = random.Random("format-probe")
        lead, between = icl_format_parts(form)
        right = total = 0
        for _ in range(docs):
            prefix, seen = "", set()
            for x, y in icl_repeats(rng, pools):
                if x in seen:
                    right += first_token_right(model, tok, prefix + lead + x + between, y)
                    total += 1
                seen.add(x)
                prefix += form.format(x=x, y=y) + "\n"
        out[form] = right / total
    return out


def minority(item: dict) -> bool:
    """An induction item whose answer is not the label its prompt shows most often."""
    import collections

    shown = collections.Counter(re.findall(r"Label: (\S+)", item["prompt"])).most_common(1)[0][0]
    return item["task"] == "induction" and shown != item["answer"]


def icl_probe(items: list[dict], tok, world_seed: int = 0):
    """Greedy first token of world_icl's answers right: by item kind, and on the induction
    items whose answer is not the prompt's most frequent label (copying, not the majority)."""
    kinds = [[it["task"], "all"] + (["minority"] if minority(it) else []) for it in items]

    def probe(model) -> dict:
        right: dict[str, list[bool]] = {}
        for it, ks in zip(items, kinds):
            ok = first_token_right(model, tok, it["prompt"], it["answer"])
            for k in ks:
                right.setdefault(k, []).append(ok)
        scores = {f"icl_{k}": sum(v) / len(v) for k, v in right.items()}
        return scores | {"plain": plain_probe(model, tok, world_seed=world_seed)}
    return probe


def formation(chain: list[str], work: Path, steps: int | list[int], docs: int, seed: int = 0, model: str = "",
              init: Path | None = None, preset=None, world_share: float = 1 / 3) -> list[dict]:
    """Train the speedrun's model (or preset `model`; or the saved model `init`, e.g. a speedrun's
    base model) on `docs` documents of one design only, `steps` steps (or a list: each design's),
    world_icl scored every 100 steps; a chain of designs trains each from the model the one before
    it left (a curriculum). The curve runs over the whole chain. `world_share`: the world's text in
    each world+ design (phase_doc's)."""
    import dataclasses
    import hashlib
    import random

    from acorn import speedrun as sr
    from acorn.data.prepare import prepare
    from acorn.data.world import build_world, generate_world, icl_pools, phase_doc
    from acorn.fileio import read_jsonl, write_jsonl
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.pretrain import pretrain

    p = preset or sr.resolve_preset("cpu")  # an --init run's own preset (sr.saved_preset)
    p = dataclasses.replace(p, model=model) if model else p
    world = work / "world"
    if not (work / "tokenizer" / "tokenizer.json").exists():  # the default world's, shared by every design
        generate_world(world, seed=seed, size=p.world, overwrite=True, quiet=True)
        sr.stage_tokenizer(world, work / "tokenizer", p.vocab_size)
    tok = Tokenizer.from_pretrained(work / "tokenizer")
    curve: list[dict] = []
    start, out = init, (init.parent if init else None)
    each = steps if isinstance(steps, list) else [steps] * len(chain)
    for i, (design, steps) in enumerate(zip(chain, each)):
        shared = design.startswith("world+") and world_share != 1 / 3
        run = work / (f"{design}-share{world_share:.3g}" if shared else design)
        if not (run / "data" / "meta.json").exists():
            rng, pools = random.Random(f"{seed}-{design}"), icl_pools(build_world(seed, p.world))
            texts = [r["text"] for r in read_jsonl(world / "pretrain.jsonl")] if design.startswith("world") else []
            write_jsonl(run / "docs.jsonl", [{"text": phase_doc(design, rng, pools, texts, world_share)}
                                             for _ in range(docs)])
            prepare([run / "docs.jsonl"], work / "tokenizer", run / "data", val_fraction=0.01, quiet=True)
        # Named by everything that made it, so no other spec reads it back: the model preset, the steps of
        # each design, the run it started from (a hash of its path) and the designs before it.
        first = [f"init-{hashlib.sha1(str(start.resolve()).encode()).hexdigest()[:8]}"] if start else []
        before = "_".join(first + [d if n == steps else f"{d}@{n}" for d, n in zip(chain[:i], each)])
        init, out = out, run / (f"pretrain-{steps}steps" + (f"-{model}" if model else "")
                                + (f"-after-{before}" if before else ""))
        cfg = sr.for_steps(sr.pretrain_config(p, run / "data", out, tok.vocab_size, seed), steps,
                           init / "model" if init else None)
        cfg.eval.every, cfg.eval.batches = 100, 2
        if not (out / "model").is_dir():
            pretrain(cfg, probe=icl_probe(list(read_jsonl(world / "eval" / "icl.jsonl")), tok, seed))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        before_steps = sum(each[:i])
        curve += [{"design": design, "step": r["step"] + before_steps} | {k: r[k] for k in ("loss", "val_loss", "plain")
                  if k in r} | {k: v for k, v in r.items() if k.startswith("icl_")} for r in rows if "icl_all" in r]
    plain = plain_probe(*load_model(out / "model"), world_seed=seed)
    curve[-1]["probe"] = copy_probe(out / "model", probe_docs(work)) | {"plain": plain}
    curve[-1]["model"] = str(out / "model")
    return curve


def parse_spec(spec: str, steps: int) -> tuple[list[str], str, bool, list[int]]:
    """[base>]DESIGN[@STEPS][>DESIGN[@STEPS]...][:PRESET][@STEPS] -> (the chain, the preset,
    whether it starts from the --init run's base model, the steps of each design); the chain as
    acorn.data.world.parse_phase reads it (a last @STEPS alone sets every design's; `steps` the
    rest's), which refuses unknown designs and steps."""
    from acorn.data.world import parse_phase

    body, at = spec, ""
    if "@" in spec.rpartition(">")[2]:
        body, _, at = spec.rpartition("@")
    body, _, model = body.partition(":") if ":" in body.rpartition(">")[2] else (body, "", "")
    from_base = body.split(">")[0] == "base"
    body = body.split(">", 1)[1] if from_base and ">" in body else ("" if from_base else body)
    chain = parse_phase(body + (f"@{at}" if at else ""), steps)
    return [d for d, _ in chain], model, from_base, [n for _, n in chain]


def design_notes() -> str:
    """The designs as the module's docstring describes them, as a Markdown list."""
    block = (__doc__ or "").split("--formation DESIGNS")[1].split("\n\n")[1]
    items = re.split(r"\n  (?=\S)", "\n" + block)[1:]
    return "\n".join("- " + re.sub(r"\s+", " ", re.sub(r"^(\S+)", r"**\1**:", it.strip())) for it in items)


def world_facts(model_dir: Path, world: Path) -> dict:
    """The fact multiple choice of the world's eval (both forms of choices): what a phase on other
    text may cost the model's knowledge of the world."""
    from acorn.eval.harness import evaluate

    r = evaluate(model_dir, ["world_multiple_choice", "world_multiple_choice_sentence"], progress=False,
                 data_dir=world)["results"]
    return {"mc": r["world_multiple_choice"]["acc"], "mc_sentence": r["world_multiple_choice_sentence"]["acc"]}


def formation_section(curves: dict[str, list[dict]], docs: int, items: list[dict], base: dict | None = None) -> str:
    """Section icl-formation (from scratch), or with `base` (the --init run: its path and its
    model's scores) section icl-phase."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    induction = [it for it in items if it["task"] == "induction"]
    few = sum(map(minority, induction))
    rows = [[d, r["step"], f"{r['loss']:.3f}", pct(r["icl_all"]), pct(r["icl_induction"]), pct(r["icl_category"]),
             pct(r["icl_minority"])] for d, curve in curves.items() for r in curve]
    probes = [[d, pct(c[-1]["probe"]["first"]), pct(c[-1]["probe"]["repeat"]), pct(c[-1]["probe"]["plain"])]
              + ([pct(c[-1]["facts"]["mc"]), pct(c[-1]["facts"]["mc_sentence"])] if base else [])
              for d, c in curves.items()]
    scoring = ("scored on the world's 300 world_icl items every 100 steps: the greedy first token of the answer "
               "(the label's first letter) by item kind, and on the induction items whose answer is not the label the "
               f"prompt shows most often (minority; {few} of {len(induction)}). Answering with the prompt's most "
               f"frequent label scores {pct(1 - few / len(induction))} on the induction items and 0% on the minority "
               "ones; a guess among the item's labels ~40% on both; a model that copies from the matching line ~100% "
               "on both.")
    if base:
        head = [
            "## The in-context phase: the speedrun's base model trained on in-context documents",
            f"`{command_line()}` on {machine_description()}, {today()}; {load_note()}. Single runs (the base model "
            f"of seed {base['seed']}); quality figures (a fixed number of steps).",
            f"The speedrun's pretrained model ({base['run']}/pretrain/model: `acorn speedrun --seed {base['seed']}`, "
            f"{base['preset']} preset, "
            f"{base['steps']} steps on the default world; world_icl {pct(base['icl_all'])}, minority answers "
            f"{pct(base['icl_minority'])}, plain induction {pct(base['plain'])}) trained on further, {docs:,} "
            "documents of one design per row (a chain: one after the other), at the speedrun's settings (learning "
            "rate 3e-3, a fresh warmup and cosine decay over each design's steps), " + scoring + " A row without "
            "base> trains from scratch instead (the same documents from the first step on).",
        ]
    else:
        head = [
            "## When in-context learning forms: the speedrun's model on in-context documents alone",
            f"`{command_line()}` on {machine_description()}, {today()}; {load_note()}. Single runs (seed 0); quality "
            "figures (a fixed number of steps).",
            "The speedrun's model (cpu preset: nano, 1.05M parameters; batch of 16,384 tokens; learning rate 3e-3, "
            f"warmup and cosine decay over each design's steps) trained on {docs:,} documents of one design and "
            "nothing else (a chain: one design after the other, each from the model the one before left), "
            + scoring + " A design marked with a preset trains that model instead, the rest unchanged.",
        ]
    return "\n\n".join([
        *head,
        design_notes(),
        markdown_table(["design", "step", "train loss", "world_icl (first token)", "induction items",
                        "category items", "induction, minority answer"], rows),
        f"Each run's last model on the copying probe of section icl-pretraining ({PROBE_DOCS} repeated-induction "
        "documents of a world of seed 1, in the eval's format: the label's first token, greedy, on an input's first "
        "line and on its later lines, where it can be copied from the earlier one) and on plain induction (100 runs "
        "of 6-16 of the trained world's own words, each followed by itself: the second run's tokens after its "
        "first, greedy; a model that copies what followed the same token last time: ~100%; another world's words "
        "score far lower, split into tokens the model hardly saw)"
        + (", and the world's fact multiple choice (its four choices as single values, and as answer sentences), "
           f"the base model's {pct(base['facts']['mc'])} and {pct(base['facts']['mc_sentence'])}:" if base else ":"),
        markdown_table(["design", "probe: first line", "probe: repeated line", "plain induction: second run"]
                       + (["fact multiple choice", "as sentences"] if base else []), probes),
    ])


def init_base(ap, run: Path, work: Path):
    """--init RUN: the run's base model, world seed and scores, and its preset; its world and
    tokenizer linked into `work` (one run's to a work folder)."""
    from acorn import speedrun as sr
    from acorn.fileio import read_jsonl

    init = run / "pretrain" / "model"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("world", "tokenizer"):
        if not (work / name).exists():
            (work / name).symlink_to((run / name).resolve())
        elif (work / name).resolve() != (run / name).resolve():
            ap.error(f"--work {work} holds another run's {name} ({(work / name).resolve()}); give --init RUN "
                     "a --work of its own")
    state = json.loads((run / "speedrun.json").read_text())
    seed = json.loads((run / "world" / "manifest.json").read_text())["seed"]
    items = list(read_jsonl(work / "world" / "eval" / "icl.jsonl"))
    base = {"run": str(run), "facts": world_facts(init, work / "world"), "seed": seed, "preset": state["preset"],
            "steps": json.loads((run / "pretrain" / "metrics.jsonl").read_text().splitlines()[-1])["step"]}
    model, tok = load_model(init)
    return init, seed, base | icl_probe(items, tok, seed)(model), sr.saved_preset(state)


def bases_section(done: list[tuple[dict, dict[str, list[dict]]]], docs: int, title: str = "") -> str:
    """Section icl-phase-bases (or --section's): each chain's last model after each --init run's base model."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    bases = [b for b, _ in done]
    specs = list(done[0][1])
    head = ["phase"] + [f"{Path(b['run']).parent.name}/{Path(b['run']).name} ({b['steps']} steps)" for b in bases]
    first = [["base model (no phase)"] + [f"{pct(b['icl_all'])} ({pct(b['icl_minority'])})" for b in bases]]
    icl = first + [[s] + [f"{pct(c[s][-1]['icl_all'])} ({pct(c[s][-1]['icl_minority'])})" for _, c in done]
                   for s in specs]
    facts = [["base model (no phase)"] + [pct(b["facts"]["mc_sentence"]) for b in bases]] + [
        [s] + [pct(c[s][-1]["facts"]["mc_sentence"]) for _, c in done] for s in specs]
    return "\n\n".join([
        "## The in-context phase over several base models" + (f": {title}" if title else ""),
        f"`{command_line()}` on {machine_description()}, {today()}; {load_note()}. Quality figures (a fixed number "
        "of steps); one run of each phase after each base model.",
        "Each column a finished `acorn speedrun`'s pretrained model (its world, tokenizer and preset); each row a "
        "phase trained from it: a chain of the designs of section icl-formation, each for its @STEPS from the model "
        f"the one before left, {docs:,} documents of each, at the speedrun's settings (a fresh warmup and cosine decay "
        "per design); e.g. copy@200>formats@200>world+formats@200: 200 steps of plain copying runs of the world's "
        "words, 200 of repeated-induction lines in five formats, 200 of those as two thirds and the world's own "
        "text as one third (`acorn speedrun --icl-phase` runs such a chain). world_icl: the greedy first token of "
        "the answer on the world's 300 in-context "
        "items (goal 80%; chance ~41%), after the phase's last step, in parentheses the induction items whose answer "
        "is not the prompt's most frequent label (a guess: ~40%; copying from the matching line: ~100%):",
        markdown_table(head, icl),
        "What the phase costs the model's knowledge of the world: the fact multiple choice with each choice "
        "scored as the answer sentence (world_multiple_choice_sentence):",
        markdown_table(head, facts),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/icl", help="where the runs go (a directory per variant)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=707, help="pretraining steps of 16,384 tokens (default: 707)")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR",
                    help="score a run already made (DIR/world, DIR/pretrain/model) for variant NAME")
    ap.add_argument("--note", default="", help="a paragraph added at the end of the section (the reading)")
    ap.add_argument("--report-only", action="store_true", help="write the section from WORK/results.json")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/BENCHMARKS.md alone")
    ap.add_argument("--formation", metavar="DESIGNS", default="",
                    help=f"comma-separated, of {', '.join(DESIGNS)}, each optionally :PRESET for another model "
                    "than the speedrun's (repeats:micro) and @STEPS; A>B trains B from A's model; base>A (with "
                    "--init) starts from a speedrun's base model: the formation study (section icl-formation, "
                    "with --init icl-phase)")
    ap.add_argument("--world-share", type=float, default=1 / 3, help="--formation: the world's text in each world+ "
                    "design (default: a third; the speedrun's --icl-world-share)")
    ap.add_argument("--docs", type=int, default=80_000, help="--formation: documents per design (default: 80,000)")
    ap.add_argument("--init", metavar="RUN", action="append", default=[],
                    help="--formation: base> chains start from this finished speedrun's pretrained model "
                    "(RUN/pretrain/model, before any in-context phase), with its world, tokenizer and preset; "
                    "given more than once, each chain runs after each run's model (in WORK/<the run's last two "
                    "folders>) and the section is icl-phase-bases: the final figures side by side")
    ap.add_argument("--section", default="icl-phase-bases", help="--init given more than once: the section of "
                    "docs/BENCHMARKS.md to write (default: icl-phase-bases; another name keeps that one)")
    ap.add_argument("--probe-formats", metavar="MODEL", nargs="+", default=[],
                    help="print each model's copying at each distance (format_probe: repeated-induction lines in "
                    "each of the five formats, the label's first token right on repeated lines) and exit; "
                    "--seed: the world whose words it uses (the model's own)")
    ap.add_argument("--seed", type=int, default=0, help="--probe-formats: the trained world's seed (default: 0)")
    args = ap.parse_args()
    work = Path(args.work)
    if not 0 < args.world_share < 1:
        ap.error(f"--world-share is a share of each world+ design's documents, between 0 and 1; got {args.world_share}")
    if args.probe_formats:
        from acorn.data.world import ICL_FORMATS

        missing = [m for m in args.probe_formats if not (Path(m) / "config.json").exists()]
        if missing:
            ap.error(f"--probe-formats: {', '.join(missing)} is not a saved model (no config.json)")
        rows = [[m] + [f"{100 * v:.1f}%" for v in format_probe(*load_model(Path(m)), world_seed=args.seed).values()]
                for m in args.probe_formats]
        print(markdown_table(["model"] + ["`" + f.replace("\n", "\\n") + "`" for f in ICL_FORMATS], rows))
        return
    if args.init and not args.formation:
        ap.error("--init RUN starts --formation's base> chains; give --formation DESIGNS too")
    if args.formation:
        from acorn.errors import AcornError
        from acorn.fileio import read_jsonl, write_text
        from acorn.model.transformer import PRESETS

        if args.docs < 1 or args.steps < 1:
            ap.error(f"--docs and --steps must be at least 1 (got {args.docs}, {args.steps})")
        try:  # unknown designs, steps below 1, a chain naming no design: one line each
            specs = [parse_spec(spec, args.steps) for spec in args.formation.split(",")]
        except AcornError as e:
            ap.error(str(e))
        if any(m not in ("", *PRESETS) for _, m, _, _ in specs):
            ap.error(f"unknown model preset in {args.formation!r}; choose from {', '.join(PRESETS)}")
        if any(from_base for _, _, from_base, _ in specs) and not args.init:
            ap.error("a design chain starting with base> needs --init RUN (the speedrun whose model it starts from)")
        if any(from_base and m for _, m, from_base, _ in specs):
            ap.error("base>...:PRESET: a chain from the --init run's model trains that model; leave out :PRESET")
        runs = [Path(r) for r in args.init]
        slug = lambda r: "-".join(r.resolve().parts[-2:])  # noqa: E731  (/tmp/sr9/seed1 -> sr9-seed1)
        if len({slug(r) for r in runs}) < len(runs):
            ap.error(f"--init {' '.join(args.init)}: two runs end in the same two folders; give each a path of its own")
        for run in runs:  # every run checked before any trains
            needed = ("pretrain/model", "pretrain/metrics.jsonl", "world/eval", "world/manifest.json", "tokenizer",
                      "speedrun.json")
            if not all((run / n).exists() for n in needed):
                ap.error(f"--init {run}: not a finished speedrun (pretrain/model, world, tokenizer or speedrun.json "
                         "missing); make one with `acorn speedrun --out RUN`")
        done = []
        for run in runs or [None]:
            here = work / slug(run) if len(runs) > 1 else work
            init, seed, base, preset = None, 0, None, None
            if run:
                init, seed, base, preset = init_base(ap, run, here)
            curves = {}
            for spec, (chain, m, from_base, steps) in zip(args.formation.split(","), specs):
                after = f", after {run}" if run else ""
                log(f"{spec}: steps {steps} (each design) on {args.docs:,} documents{after}")
                curves[spec] = formation(chain, here, steps, args.docs, model=m, init=init if from_base else None,
                                         seed=seed, preset=preset, world_share=args.world_share)
                if base:
                    curves[spec][-1]["facts"] = world_facts(Path(curves[spec][-1]["model"]), here / "world")
                log(f"{spec}: {json.dumps(curves[spec][-1])}")
            write_text(here / "formation.json", json.dumps(curves, indent=2))
            done.append((base, curves))
        if len(runs) > 1:
            publish(args.section, bases_section(done, args.docs, "" if args.section == "icl-phase-bases"
                                                else args.section), args.note, args.no_write)
            return
        base, curves = done[0]
        items = list(read_jsonl(work / "world" / "eval" / "icl.jsonl"))
        publish("icl-phase" if base else "icl-formation", formation_section(curves, args.docs, items, base), args.note,
                args.no_write)
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    reuse = dict(r.split("=", 1) for r in args.reuse)
    docs = probe_docs(work)
    results, seconds = {}, {}
    if args.report_only:
        results, names = json.loads((work / "results.json").read_text()), []
    for name in names:
        run = Path(reuse[name]) if name in reuse else work / name
        if name not in reuse and not (run / "pretrain" / "model").is_dir():
            log(f"{name}: pretraining {args.steps} steps")
            seconds[name] = make_run(name, run, args.steps)
        results[name] = score(name, run, docs) | {"run": str(run)}
        log(f"{name}: {json.dumps(results[name])}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    from acorn.data.world import SIZES

    rows = [[n, f"{r['icl_docs'] or SIZES['default'].n_icl_docs:,}" + (" (only these)" if n == "icl-only" else ""),
             r["steps"],
             pct(r["icl"]), pct(r["kinds"].get("induction", 0)), pct(r["kinds"].get("category", 0)),
             pct(r["in_labels"]), pct(r["probe"]["first"]), pct(r["probe"]["repeat"]), pct(r["mc"]),
             f"{r['val_loss']:.3f}" if r["val_loss"] else ""] for n, r in results.items()]
    chance = next(iter(results.values()))["chance"]
    body = "\n\n".join([
        "## In-context learning from pretraining documents",
        f"`{command_line()}` on {machine_description()}, {today()}; {load_note()}. Single runs (seed 0); "
        "quality figures (training is a fixed number of steps, so load changes only the time).",
        (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        markdown_table(["variant", "in-context documents", "steps", "world_icl", "induction items", "category items",
                        "answer is one of the item's labels", "probe: first line", "probe: repeated line",
                        "fact multiple choice", "val loss (own text)"], rows),
        f"world_icl chance (one of the item's 2-3 labels at random): {pct(chance)}. Goal (issue 16): >= 80%. "
        f"Probe: {len(docs)} repeated-induction documents of a world of seed 1 (never trained on); on an input's "
        "first line the label cannot be known (on the document's first lines not even the label words are), on a "
        "repeated line it is one of the 2-3 labels already shown (33-50% by guessing among them) and can be copied "
        "from the earlier line (a model that copies: near 100%).",
        *([args.note] if args.note else []),
    ])
    if args.no_write:
        print(body)
    else:
        write_section("icl-pretraining", body)
        print(body)


if __name__ == "__main__":
    main()
