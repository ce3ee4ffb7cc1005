"""LLaVA at laptop scale (issue 20): image question accuracy per kind against a caption-in-prompt control and chance
(section vlm).

A chat model (a speedrun's SFT model: it knows the world's people) and a world
with pictures of the same seed and size (so the badges show the people the chat
model knows) -> `acorn clip train` (unless --clip is given) -> `acorn vlm train
--stage 1` (the projector on captions) -> `--stage 2` (projector and decoder on
the pictures' questions) -> `acorn vlm eval` on the eval pictures: count,
colour, shape, number, badge name, badge -> person -> fact. The controls: the
same chat model trained the same way with each picture's caption as text in
place of the image (perfect perception), the chat model as it is given the
caption (no training on pictures' questions), chance and the majority answer.
With --encoder, stage 2 again with the vision encoder trained too (the lever
for reading). Tokens per image and the prefill time they add.

    python benchmarks/vlm.py --chat /tmp/vlm/sr/sft/model --world /tmp/vlm/world --clip /tmp/vlm/clip/model --threads 1
    python benchmarks/vlm.py --chat CHAT --size tiny --stage1-steps 5 --stage2-steps 5 --no-write   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (CACHE, command_line, load_note, log, machine_description, markdown_table,  # noqa: E402
                    run_options, today, torch_threads, write_section)

KINDS = {"count": "count (1-5)", "colour": "colour (6)", "shape": "shape (3)", "number": "number (0-99)",
         "name_seen": "badge name, seen on training badges", "name_held": "badge name, never on a training badge",
         "fact_seen": "badge -> person -> fact, seen", "fact_held": "badge -> person -> fact, never seen"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def train(label: str, out: Path, args: list[str]) -> Path:
    """`acorn vlm train` with these settings (the one loop), timed; the run directory."""
    from acorn.config import load
    from acorn.train.vlm import VLMConfig, train_vlm

    cfg = load(VLMConfig, None, ["--out", str(out), *args])
    t0 = time.perf_counter()
    run = train_vlm(cfg)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    log(f"{label}: {len(rows)} steps in {seconds / 60:.1f} min, final train loss {rows[-1]['loss']:.3f}"
        f"{f', val loss {val[-1]:.3f}' if val else ''}")
    return run


def evaluate(label: str, model_dir: Path, world: Path, limit: int | None, prefill_runs: int) -> dict:
    from acorn.eval.vlm import evaluate_vlm, format_vlm

    t0 = time.perf_counter()
    r = evaluate_vlm(model_dir, world, limit=limit, prefill_runs=prefill_runs)
    log(f"{label} evaluated in {time.perf_counter() - t0:.0f}s\n{format_vlm(r)}")
    return r


RUNS = {"s1": "stage 1", "s2": "stage 2", "control": "caption control", "s2e": "stage 2 with the encoder"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chat", required=True, type=Path, help="the chat model (a speedrun's sft/model)")
    ap.add_argument("--world", type=Path, default=None, help="a world with pictures of the chat model's seed and "
                    "size (default: drawn here with --size and --seed)")
    ap.add_argument("--size", default="default", choices=["tiny", "small", "default"], help="world size when drawn here")
    ap.add_argument("--seed", type=int, default=0, help="the world's seed when drawn here (default: 0)")
    ap.add_argument("--clip", type=Path, default=None, help="a CLIP model (default: `acorn clip train` here)")
    ap.add_argument("--stage1-epochs", type=float, default=None, help="stage 1 epochs (default: acorn vlm train's)")
    ap.add_argument("--stage2-epochs", type=float, default=None, help="stage 2 epochs (default: acorn vlm train's)")
    ap.add_argument("--stage1-steps", type=int, default=None, help="stage 1 steps (overrides the epochs)")
    ap.add_argument("--stage2-steps", type=int, default=None, help="stage 2 steps (overrides the epochs)")
    ap.add_argument("--encoder", action="store_true", help="also stage 2 with the vision encoder trained")
    ap.add_argument("--limit", type=int, default=None, help="at most this many eval questions per kind")
    ap.add_argument("--prefill-runs", type=int, default=15, help="timed prefills per prompt (median)")
    ap.add_argument("--out", type=Path, default=CACHE / "vlm", help="work directory (replaced)")
    ap.add_argument("--report-only", action="store_true", help="write the section from the runs already in --out "
                    "(a finished run's results.json and run directories), training nothing")
    run_options(ap)
    args = ap.parse_args()
    torch_threads(args)
    if not args.report_only:
        train_and_evaluate(args)
    text = report(args)
    print(text)
    if not args.no_write:
        write_section("vlm", text)
        log("wrote section vlm of docs/BENCHMARKS.md")


def train_and_evaluate(args) -> None:
    """World (unless given), CLIP (unless given), the stages and the control, their evaluations: all in --out."""
    import torch

    from acorn.fileio import write_json

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    world = args.world
    if world is None:
        from acorn.data.world import generate_world

        world = args.out / "world"
        generate_world(world, seed=args.seed, size=args.size, quiet=True, images="default")
    if args.clip is None:
        from acorn.config import load
        from acorn.train.clip import ClipConfig, train_clip

        train_clip(load(ClipConfig, None, ["--world", str(world), "--out", str(args.out / "clip")]))
        args.clip = args.out / "clip" / "model"

    def length(stage: int) -> list[str]:
        steps, epochs = (args.stage1_steps, args.stage1_epochs) if stage == 1 else (args.stage2_steps,
                                                                                   args.stage2_epochs)
        return (["--train.max_steps", str(steps)] if steps is not None else
                ["--epochs", str(epochs)] if epochs is not None else [])

    common = ["--world", str(world)]
    s1 = train("stage 1", args.out / "s1", [*common, "--stage", "1", "--clip", str(args.clip), "--model",
                                            str(args.chat), *length(1)])
    train("stage 2", args.out / "s2", [*common, "--stage", "2", "--init_from", str(s1 / "model"), *length(2)])
    train("caption control", args.out / "control", [*common, "--stage", "2", "--images", "caption", "--model",
                                                    str(args.chat), *length(2)])
    if args.encoder:
        train("stage 2, encoder trained", args.out / "s2e", [*common, "--stage", "2", "--init_from",
                                                             str(s1 / "model"), "--train_encoder", "true",
                                                             *length(2)])
    results = {"vlm": evaluate("VLM (stage 1 + 2)", args.out / "s2" / "model", world, args.limit, args.prefill_runs),
               "control": evaluate("caption control", args.out / "control" / "model", world, args.limit, 0),
               "chat": evaluate("chat model given the caption", args.chat, world, args.limit, 0)}
    if args.encoder:
        results["s2e"] = evaluate("VLM, encoder trained", args.out / "s2e" / "model", world, args.limit, 0)
    results["command"] = command_line(("--note",)).replace(" --no-write", "")
    results["conditions"] = f"{load_note()}; {torch.get_num_threads()} torch thread" + \
        ("s" if torch.get_num_threads() > 1 else "")  # the run's, not a later --report-only's
    write_json(args.out / "results.json", results)


def _minutes(run: Path) -> float:
    """The run's training minutes, as its report.md states them."""
    import re

    return float(re.search(r"tokens in ([0-9.]+) min", (run / "report.md").read_text()).group(1))


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def report(args) -> str:
    """The section, from what --out holds: results.json, each run's config.yaml, report.md, and the models."""
    import torch

    from acorn.errors import AcornError
    from acorn.vision.llava import load_llava
    from acorn.vision.zero_shot import evaluate_world

    out = args.out
    if not (out / "results.json").is_file():
        raise SystemExit(f"{out / 'results.json'}: missing; run without --report-only first")
    results = json.loads((out / "results.json").read_text())
    runs = {k: out / k for k in RUNS if (out / k / "report.md").is_file()}
    s1, s2 = _config(runs["s1"]), _config(runs["s2"])
    world = Path(s2["world"])
    clip = Path(_config(runs["s1"])["clip"])
    manifest = json.loads((world / "manifest.json").read_text())
    images = manifest.get("images") or {}
    try:  # CLIP's own reading of the same pictures, by caption similarity
        zero_shot = evaluate_world(clip, world, "eval")
    except AcornError as e:  # a CLIP saved without its caption tokenizer
        log(f"no CLIP zero-shot column: {e}")
        zero_shot = {}
    vlm_model = load_llava(out / "s2" / "model")[0]
    v, n_params = vlm_model.config.vision, vlm_model.num_params()
    n_img = results["vlm"]["tokens_per_image"]

    columns = [("vlm", "VLM: picture"), *([("s2e", "VLM, encoder trained too")] if "s2e" in results else []),
               ("control", "text model trained with the caption"), ("chat", "chat model given the caption")]
    vlm = results["vlm"]["accuracy"]
    table = [[KINDS[k], *[_pct(results[c]["accuracy"].get(k, {}).get("accuracy")) for c, _ in columns],
              _pct(zero_shot[k]["accuracy"]) if k in zero_shot else "-", _pct(vlm[k]["chance"]),
              _pct(vlm[k]["majority"]), str(vlm[k]["n"])] for k in KINDS if k in vlm]
    idk = "; ".join(f"{label} {_pct(results[c]['accuracy']['fact_seen']['idk_answers'])}" for c, label in columns
                    if "fact_seen" in results[c]["accuracy"])
    p = results["vlm"]["prefill"]
    minutes = ", ".join(f"{RUNS[k]} {_minutes(run):.1f}" for k, run in runs.items())
    steps = {k: len((run / "metrics.jsonl").read_text().splitlines()) for k, run in runs.items()}
    val = {k: [(r["step"], r["val_loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "val_loss" in r] for k, run in runs.items()}
    command = results.get("command") or command_line(("--note",)).replace(" --report-only", "").replace(" --no-write", "")
    conditions = results.get("conditions") or (f"{load_note()}; {torch.get_num_threads()} torch thread"
                                                + ("s" if torch.get_num_threads() > 1 else ""))

    def epochs(stage: int) -> str:
        from acorn.train.vlm import STAGE_EPOCHS

        steps_given, given = ((args.stage1_steps, args.stage1_epochs) if stage == 1 else
                              (args.stage2_steps, args.stage2_epochs))
        return "as asked" if steps_given is not None else f"{given or STAGE_EPOCHS[stage]:g} epochs"

    body = [
        "## LLaVA at laptop scale: image questions against a caption-in-prompt control (issue 20)", "",
        f"`{command}` on {machine_description(('pillow',))}, {today()}; {conditions}. The 2 cores are shared "
        "with other sessions' work: the minutes are this run's.", "",
        f"World `{manifest['size']}` (seed {manifest['seed']}, the chat model's: the badges show the people it knows) "
        f"with {images.get('count', 0):,} pictures ({images.get('splits', {}).get('train', 0):,} train, "
        f"{images.get('splits', {}).get('eval', 0)} eval). Chat model `{args.chat}`; "
        f"vision encoder from `{clip}`; a new projector (linear, GELU, "
        f"linear); {n_params / 1e6:.2f}M parameters in all. {n_img} tokens per image ({v.patch_size}x{v.patch_size} "
        f"patches of {v.image_size}x{v.image_size} pictures, the class token dropped, the encoder's penultimate "
        f"layer). Stage 1 (`acorn vlm train --stage 1`): the projector alone on \"Describe the picture.\" -> the "
        f"caption, {steps['s1']} steps ({epochs(1)}), validation loss on the eval "
        f"pictures' captions {val['s1'][0][1]:.2f} nats per token after {val['s1'][0][0]} steps, "
        f"{val['s1'][-1][1]:.2f} at the end; stage 2 (`--stage 2 "
        f"--init_from RUN1/model`): projector and decoder on the pictures' questions, {steps['s2']} steps "
        f"({epochs(2)}), "
        f"validation loss {val['s2'][-1][1]:.2f}; learning rate {s2['optim']['lr']:g}, rows of {s2['train']['seq_len']} "
        f"tokens, {s2['train']['batch_tokens']:,} tokens a step. Minutes: {minutes}.", "",
        "Accuracy on the eval pictures (`acorn vlm eval`): greedy exact match, every answer token and the end of the "
        "turn the model's top choice (teacher-forced, one forward per batch; tests/train/test_vlm.py holds it to the "
        "engine's greedy generation). The caption-in-prompt control is the same chat model trained the same way "
        "(stage 2's conversations, as many epochs; its rows hold more of them, so it takes fewer steps) with each "
        "picture's caption as text in place of the image: what the decoder answers with perfect perception. CLIP: "
        "the encoder's own zero-shot reading of the same pictures (`acorn clip eval`). Majority: the most common "
        "true answer's share (for the badges' facts \"I don't know.\", the answer for the people the world keeps "
        "unknown).", "",
        markdown_table(["question kind", *[label for _, label in columns], "CLIP zero-shot", "chance", "majority",
                        "questions"], table),
        "", f"How often \"I don't know.\" is the greedy answer to a seen badge's fact question: {idk}.", "",
        f"Cost: an image is {n_img} positions of context. Prefill of one question's prompt, batch 1, median of "
        f"{p['runs']} ({p['threads']} thread(s), load average {p['load_average']:.1f} at the time"
        f"{': other jobs were running, so the milliseconds are high and noisy' if p['load_average'] > 1 else ''}): "
        f"with the image {p['image_tokens']} tokens in {p['image_ms']:.1f} ms (of which the encoder and projector "
        f"{p['encoder_ms']:.1f} ms), with the caption in its place {p['caption_tokens']} tokens in "
        f"{p['caption_ms']:.1f} ms.",
    ]
    body += ["", findings(results, zero_shot, reading_on_training_pictures(out, world, results))]
    if args.note:
        body += ["", args.note]
    return "\n".join(body)


def reading_on_training_pictures(out: Path, world: Path, results: dict) -> dict:
    """Numbers and badge names read on the pictures the VLMs trained on: memorised, at least?"""
    from acorn.eval.vlm import evaluate_vlm

    return {c: evaluate_vlm(out / d / "model", world, split="train", limit=200, prefill_runs=0)["accuracy"]
            for c, d in (("vlm", "s2"), ("s2e", "s2e")) if c in results}


def findings(results: dict, zero_shot: dict, train: dict) -> str:
    """What the table shows, its numbers taken from it."""
    r = {c: {k: v["accuracy"] for k, v in res["accuracy"].items()} for c, res in results.items()
         if c not in ("command", "conditions")}
    v, ctrl, a = r["vlm"], r["control"], results["vlm"]["accuracy"]
    clip = ", ".join(_pct(zero_shot[k]["accuracy"]) for k in ("count", "colour", "shape") if k in zero_shot)
    text = (
        f"What it shows. The VLM reads counts, colours and shapes from the picture: {_pct(v['count'])}, "
        f"{_pct(v['colour'])} and {_pct(v['shape'])} on pictures it never trained on (chance 20%, 17%, 33%), as well "
        f"as the encoder itself tells them apart{f' (CLIP zero-shot {clip})' if clip else ''} and close to the "
        f"decoder given the caption ({_pct(ctrl['count'])}, {_pct(ctrl['colour'])}, {_pct(ctrl['shape'])}). Reading "
        f"is not learnt: numbers and badge names stay at chance and the majority answer's share ({_pct(v['number'])}"
        f" and {_pct(v['name_seen'])}), on the 200 first training pictures of each kind as well ("
        f"{_pct(train['vlm']['number']['accuracy'])} and {_pct(train['vlm']['name_seen']['accuracy'])}: not even "
        "memorised)")
    if "s2e" in r:
        e = r["s2e"]
        text += (f"; training the encoder in stage 2, the lever tried for reading, leaves them there "
                 f"({_pct(e['number'])} and {_pct(e['name_seen'])}; on training pictures "
                 f"{_pct(train['s2e']['number']['accuracy'])} and {_pct(train['s2e']['name_seen']['accuracy'])}) and "
                 f"moves shapes to {_pct(e['shape'])}")
    text += (
        f". So the chain badge -> person -> fact breaks at its first link: the VLM answers \"I don't know.\" to "
        f"{_pct(a['fact_seen']['idk_answers'])} of the seen badges' fact questions, which scores exactly the share of "
        f"badges whose person the world keeps unknown ({_pct(a['fact_seen']['majority'])}, the majority). Given the "
        f"caption, the same decoder trained the same way answers {_pct(ctrl['name_seen'])} of the seen badges' "
        f"names and {_pct(ctrl['fact_seen'])} of their facts ({_pct(ctrl['fact_held'])} for people never on a "
        "training badge, whose facts SFT never asked): the decoder's half of the chain works, the encoder's reading "
        "is what is missing (section clip: reading is not learnt at this scale). The chat model as it is, given the "
        f"caption, answers \"I don't know.\" to every question ({_pct(max(r['chat'].values()))} at best, the "
        "unknown people's share): these questions are new to it, which is why the control is trained. Stage 1, the "
        "projector alone into the frozen 1M-parameter decoder, lowers the caption loss only to about 5 nats per "
        "token: a projector steers a decoder this small only so far. It still pays in stage 2: with one epoch of "
        "stage 1 instead of three, shapes came out at 65% instead of 89%, and one epoch of stage 2 instead of four "
        "left colours at 39% (earlier runs of this recipe; acorn/train/vlm.py STAGE_EPOCHS).")
    return text


if __name__ == "__main__":
    main()
