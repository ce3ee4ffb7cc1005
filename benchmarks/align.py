"""Alignment benchmarks (issue 13): what preference optimisation changes, measured on the built-in world.

One script, one function per figure, each writing its own section of docs/BENCHMARKS.md:

  hallucination  (section align-hallucination)  the failure the seeds put first. A chat model is
           fine-tuned WITHOUT refusals (the world's sft.jsonl minus its "I don't know." rows, from a
           pretrained speedrun model given by --pretrained), so it makes up answers about people it
           never saw. From that same start, each of DPO, IPO, KTO, ORPO and SimPO (`acorn dpo`'s
           config and function, acorn.train.prefs) is trained on the world's preference pairs:
           "I don't know." chosen over a made-up answer for the unknown people of split unknown_sft,
           and (with --pairs unknown,fact, the default) the true answer over a wrong one for the
           known people SFT asked about, meant to keep "I don't know" from spreading to everyone.
           Measured greedily through the engine with the world evaluation (acorn.eval.world): the
           made-up-answer rate (unknown_qa's hallucination_rate) and the "I don't know" rate on
           OTHER unknown people (split unknown_eval: in no training data at all), and the fact
           accuracy kept on the known people (fact_qa: SFT-asked facts and pretraining-only
           facts). Beside them, each method's implicit-reward accuracy on held-out pairs
           (eval/preference.jsonl: other people) and a reward model's (`acorn reward train`,
           acorn.train.reward) trained on the same pairs from the same start.
           Each method is trained at three learning rates (--lrs), then shown at the rate that made up the
           fewest answers while keeping the SFT-asked fact accuracy within 5 points of the start
           (else the one that kept the most), and the whole sweep is listed.

    python benchmarks/align.py --figures hallucination --pretrained runs/speedrun/pretrain/model   # 15 runs + SFT
    python benchmarks/align.py --figures hallucination --pretrained P --lrs 1e-4     # one learning rate each
    python benchmarks/align.py --figures hallucination --pretrained P --world W --quick --no-write  # try it
    python benchmarks/align.py --figures dpo-margins --pretrained P   # reuses the hallucination figure's start

  dpo-margins  (section align-dpo-margins)  why DPO's pair accuracy does not move generation: the
           log-probabilities of "I don't know." and of the start's greedy made-up answer on held-out
           unknown people, and the margin, through DPO (beta 0.1 and 0.01) and IPO training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    REPO, command_line, load_note, log, machine_description, markdown_table, today, write_figures,
)

# name: (--loss, its beta, learning rates swept, extra overrides). The SFT that made the start ran
# at 1e-3; preference tuning moves a tuned model less, so the sweep is 30x to 3x below that.
LRS = (3e-5, 1e-4, 3e-4)
METHODS = {
    "DPO": ("dpo", 0.1, LRS, {}),
    "IPO": ("ipo", 0.5, LRS, {}),
    "KTO": ("kto", 0.1, LRS, {}),
    "ORPO": ("orpo", 0.1, LRS, {}),
    "SimPO": ("simpo", 2.0, LRS, {"simpo_gamma": 0.5}),
}


# ===================================================================== pieces
def _evaluate(model_dir: Path, world: Path, limit: int | None) -> dict:
    """The world's tasks world_unknown_qa (never-seen people) and world_fact_qa (the known
    ones) through the harness: greedy, the chat template, the one engine."""
    from acorn.eval.harness import evaluate

    out = evaluate(str(model_dir), ["world_unknown_qa", "world_fact_qa"], data_dir=world, limit=limit,
                   progress=False)
    r = out["results"]
    u, f = r["world_unknown_qa"], r["world_fact_qa"]
    made_up = [{"question": s["prompt"], "answer": s["output"]} for s in out["samples"]["world_unknown_qa"]
               if s["scores"].get("hallucination_rate")]
    return {"made_up": u["hallucination_rate"], "idk": u["idk_rate"], "facts": f["answer_match"],
            "facts_sft": r.get("world_fact_qa:in_sft", {}).get("answer_match", 0.0),
            "facts_pretrain": r.get("world_fact_qa:pretrain_only", {}).get("answer_match", 0.0),
            "n_unknown": u["n"], "n_facts": f["n"], "examples": made_up[:3]}


def _run(fn, cfg_cls, cli: list[str], out: Path) -> tuple[float, dict, str]:
    """One stage through its config and function, as the CLI builds them: (seconds, last metrics row, command)."""
    from acorn.config import load

    shutil.rmtree(out, ignore_errors=True)
    cfg = load(cfg_cls, None, cli)
    t0 = time.perf_counter()
    fn(cfg)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").exists() else [{}]
    return seconds, rows[-1], " ".join(cli)


def _filter(src: Path, dst: Path, keep) -> int:
    rows = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip() and keep(json.loads(line))]
    dst.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


def _sft_without_refusals(args, world: Path, work: Path) -> tuple[Path, dict]:
    from acorn.train.sft import SFTConfig, sft

    data = work / "sft_no_refusals.jsonl"
    n = _filter(world / "sft.jsonl", data, lambda r: r.get("kind") != "refusal")
    out = work / "sft-no-refusals"
    if args.resume and (out / "model" / "config.json").exists():
        log(f"sft: kept {out / 'model'}")
        return out / "model", {"rows": n, "cli": "(kept from an earlier run)"}
    context = json.loads((Path(args.pretrained) / "config.json").read_text()).get("max_position_embeddings")
    seq_len = min(args.sft_seq_len, context or args.sft_seq_len)
    cli = ["--data", str(data), "--init_from", str(args.pretrained), "--out", str(out), "--seed", "0",
           "--train.seq_len", str(seq_len), "--train.micro_batch", str(args.sft_micro_batch),
           "--train.batch_tokens", str(args.sft_micro_batch * seq_len), "--train.max_steps",
           str(args.sft_steps), "--optim.lr", str(args.sft_lr), "--eval.every", "0", "--eval.checkpoint_every", "0"]
    log(f"sft without refusals: {n} conversations, {args.sft_steps} steps")
    seconds, last, cmd = _run(sft, SFTConfig, cli, out)
    return out / "model", {"rows": n, "seconds": seconds, "loss": last.get("loss"), "cli": "acorn sft " + cmd}


def _pairs(args, world: Path, work: Path) -> tuple[Path, Path, dict]:
    kinds = set(args.pairs)
    train, held_out = work / "preference_train.jsonl", work / "preference_heldout.jsonl"
    n_train = _filter(world / "preference.jsonl", train, lambda r: r.get("kind") in kinds)
    n_held = _filter(world / "eval" / "preference.jsonl", held_out, lambda r: r.get("kind") in kinds)
    counts = {k: sum(json.loads(line).get("kind") == k for line in train.read_text().splitlines()) for k in kinds}
    return train, held_out, {"train": n_train, "held_out": n_held, "by_kind": counts}


def _prefs_cli(args, method: str, lr: float, start: Path, train: Path, held_out: Path, out: Path) -> list[str]:
    loss, beta, _, extra = METHODS[method]
    cli = ["--loss", loss, "--beta", str(beta), "--init_from", str(start), "--data", str(train), "--eval_data",
           str(held_out), "--out", str(out), "--seed", "0", "--epochs", str(args.epochs),
           "--train.seq_len", "128", "--train.micro_batch", str(args.micro_batch),
           "--train.batch_tokens", str(args.micro_batch * 128 * args.accumulation), "--optim.lr", str(lr),
           "--optim.warmup_steps", "5", "--eval.every", "0", "--eval.checkpoint_every", "0"]
    for k, v in extra.items():
        cli += [f"--{k}", str(v)]
    return cli


def _held_out_accuracy(model_dir: Path, method_loss: str, beta: float, start: Path, held_out: Path) -> float:
    """The share of held-out pairs the trained policy's implicit reward ranks right (TRL's
    rewards/accuracies), on every held-out pair: beta log(pi / pi_ref) with the start model as the
    reference for DPO, IPO and KTO (KTO's reward is the same log-ratio, scored on the pairs), beta
    times the average log-probability for ORPO and SimPO."""
    import functools

    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.prefs import REFERENCE_FREE, PrefsConfig, evaluate, fill_reference, preference_loss
    from acorn.train.prefs_data import load_pairs, pair_batch
    from acorn.train.sft_data import ItemLoader

    tok = Tokenizer.from_pretrained(model_dir)
    pad = next(i for i in (tok.pad_id, tok.eos_id, 0) if i is not None)
    items, _ = load_pairs([held_out], tok, max_len=128)
    collate = functools.partial(pair_batch, pad_id=pad)
    cfg = PrefsConfig(loss=method_loss if method_loss in REFERENCE_FREE else "dpo", beta=beta)
    if method_loss not in REFERENCE_FREE:
        fill_reference(load(start, dtype="float32", device="cpu"), items, collate, batch_size=16, device="cpu")
    model = load(model_dir, dtype="float32", device="cpu")
    r = evaluate(model, loader=ItemLoader(items, collate, batch_size=16), batches=None,
                 loss_fn=functools.partial(preference_loss, cfg=cfg))
    return r.get("val_rewards/accuracies", float("nan"))


def _reward_model(args, start: Path, train: Path, held_out: Path, work: Path) -> dict:
    from acorn.train.reward import RewardConfig, load_reward_model, reward_train
    from acorn.train.prefs_data import pair_parts, read_rows

    out = work / "reward"
    cli = ["--init_from", str(start), "--data", str(train), "--eval_data", str(held_out), "--out", str(out),
           "--seed", "0", "--epochs", str(args.epochs), "--train.seq_len", "128", "--train.micro_batch",
           str(args.micro_batch), "--train.batch_tokens", str(args.micro_batch * 128 * args.accumulation),
           "--optim.lr", str(args.rm_lr), "--optim.warmup_steps", "5", "--eval.every", "0",
           "--eval.checkpoint_every", "0"]
    log("reward model")
    seconds, last, cmd = _run(reward_train, RewardConfig, cli, out)
    rm = load_reward_model(out / "model", device="cpu")
    kinds, items = [], []
    for where, row in read_rows([held_out]):
        prompt, chosen, rejected, _ = pair_parts(row, where)  # the world's pairs: conversations
        kinds.append(row.get("kind", "all"))
        items += [prompt + chosen, prompt + rejected]
    scores = rm.score(items)
    by_kind: dict[str, list[bool]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(scores[2 * i] > scores[2 * i + 1])
    right = [x for v in by_kind.values() for x in v]
    return {"accuracy": sum(right) / len(right), "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
            "n": len(right), "seconds": seconds, "loss": last.get("loss"), "cli": "acorn reward train " + cmd}


# ==================================================================== figure
def figure_hallucination(args) -> str:
    from acorn.train.prefs import PrefsConfig, prefs

    pretrained = Path(args.pretrained)
    world = Path(args.world) if args.world else pretrained.parent.parent / "world"
    for p in (pretrained / "config.json", world / "sft.jsonl", world / "preference.jsonl"):
        if not p.exists():
            raise SystemExit(f"{p}: missing; give --pretrained RUN/pretrain/model of a finished `acorn speedrun` "
                             "(and --world RUN/world if it is elsewhere)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    done = json.loads(results_file.read_text()) if args.resume and results_file.exists() else {}

    def save():
        results_file.write_text(json.dumps(done, indent=1))

    start, sft_info = _sft_without_refusals(args, world, work)
    train, held_out, pair_info = _pairs(args, world, work)
    log(f"pairs: {pair_info}")
    if "start" not in done:
        done["start"] = {**_evaluate(start, world, args.eval_limit), "sft": sft_info}
        save()
    before = done["start"]
    log(f"start (SFT without refusals): made up {before['made_up']:.1%}, IDK {before['idk']:.1%}, "
        f"facts {before['facts']:.1%}")
    if "reward" not in done:
        done["reward"] = _reward_model(args, start, train, held_out, work)
        save()
    log(f"reward model: held-out accuracy {done['reward']['accuracy']:.1%}")

    sweep = done.setdefault("sweep", [])
    for method in [m for m in METHODS if not args.methods or m in args.methods]:
        loss, beta, lrs, _ = METHODS[method]
        for lr in (args.lrs or (lrs[1:2] if args.quick else lrs)):
            if any(s["method"] == method and s["lr"] == lr for s in sweep):
                log(f"{method} lr {lr:g}: kept from {results_file}")
                continue
            out = work / f"{method.lower()}-lr{lr:g}"
            cli = _prefs_cli(args, method, lr, start, train, held_out, out)
            log(f"{method} lr {lr:g}")
            seconds, last, cmd = _run(prefs, PrefsConfig, cli, out)
            res = _evaluate(out / "model", world, args.eval_limit)
            res["pair_accuracy"] = _held_out_accuracy(out / "model", loss, beta, start, held_out)
            sweep.append({"method": method, "lr": lr, "beta": beta, "seconds": seconds, "loss": last.get("loss"),
                          "steps": last.get("step"), "train_accuracy": last.get("rewards/accuracies"),
                          "cli": "acorn dpo " + cmd, **res})
            save()
            log(f"  made up {res['made_up']:.1%}, IDK {res['idk']:.1%}, facts {res['facts']:.1%} "
                f"(SFT-asked {res['facts_sft']:.1%}), held-out pairs {res['pair_accuracy']:.1%}, {seconds:.0f}s")
    return _section(args, before, done["reward"], sweep, pair_info, world, pretrained)


def _best(runs: list[dict], before: dict) -> dict:
    """The fewest made-up answers among runs that kept the SFT-asked facts within 5 points; else the most kept."""
    kept = [s for s in runs if s["facts_sft"] >= before["facts_sft"] - 0.05]
    if kept:
        return min(kept, key=lambda s: (s["made_up"], -s["facts_sft"]))
    return max(runs, key=lambda s: (s["facts_sft"], -s["made_up"]))


def _reading(before: dict, best: dict, rm: dict) -> list[str]:
    """What the numbers say, worded from them (a change under 2 points is called none: one question of
    the smaller eval set is ~0.4 points at the default world size, and each run has one seed)."""
    out = [f"Reading: the start model makes up an answer for {before['made_up']:.1%} of the questions about people it "
           f"never saw (\"I don't know\" {before['idk']:.1%}) and answers {before['facts_sft']:.1%} of the SFT-asked "
           "facts about known people."]
    for method, s in best.items():
        d_made, d_facts = s["made_up"] - before["made_up"], s["facts_sft"] - before["facts_sft"]
        effect = ("no measurable change in made-up answers" if abs(d_made) < 0.02 else
                  f"made-up answers {'down' if d_made < 0 else 'UP'} {abs(d_made):.1%} points to {s['made_up']:.1%}")
        facts = ("facts kept" if abs(d_facts) < 0.02 else
                 f"SFT-asked facts {'down' if d_facts < 0 else 'up'} {abs(d_facts):.1%} points to {s['facts_sft']:.1%}")
        out.append(f"- {method}: {effect} (\"I don't know\" {s['idk']:.1%}); {facts}; the implicit reward ranks "
                   f"{s['pair_accuracy']:.1%} of held-out pairs right.")
    out.append(f"- The reward model ranks {rm['accuracy']:.1%} of the held-out pairs right (" + ", ".join(
        f"{k}: {v:.1%}" for k, v in sorted(rm["by_kind"].items())) + "; chance 50%).")
    return out


def _section(args, before, rm, sweep, pair_info, world: Path, pretrained: Path) -> str:
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    methods = [m for m in METHODS if any(s["method"] == m for s in sweep)]
    best = {m: _best([s for s in sweep if s["method"] == m], before) for m in methods}
    header = ["model", "beta", "lr", "made-up answers (unknown people)", "\"I don't know\" (unknown people)",
              "facts: all known", "facts: SFT-asked", "facts: pretraining-only", "held-out pairs ranked right"]
    rows = [["start: SFT without refusals", "-", "-", pct(before["made_up"]), pct(before["idk"]), pct(before["facts"]),
             pct(before["facts_sft"]), pct(before["facts_pretrain"]), "-"]]
    for m, s in best.items():
        rows.append([m, f"{s['beta']:g}", f"{s['lr']:g}", pct(s["made_up"]), pct(s["idk"]), pct(s["facts"]),
                     pct(s["facts_sft"]), pct(s["facts_pretrain"]), pct(s["pair_accuracy"])])
    rows.append(["reward model (Bradley-Terry)", "-", f"{args.rm_lr:g}", "-", "-", "-", "-", "-", pct(rm["accuracy"])])
    sweep_rows = [[s["method"], f"{s['lr']:g}", str(s.get("steps", "-")),
                   f"{s['loss']:.4f}" if s.get("loss") is not None else "-", pct(s["made_up"]), pct(s["idk"]),
                   pct(s["facts_sft"]), pct(s["pair_accuracy"]), f"{s['seconds']:.0f}"] for s in sweep]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(pair_info["by_kind"].items()))
    example = next((s["cli"] for s in sweep if s["method"] == "DPO"), sweep[0]["cli"] if sweep else "")
    sft = before.get("sft", {})
    lines = [
        "## Alignment: \"I don't know\" instead of made-up answers (issue 13)", "",
        f"Start: the pretrained model `{pretrained}` fine-tuned on the world's sft.jsonl WITHOUT its \"I don't know.\" "
        f"rows ({sft.get('rows', '?')} conversations, {args.sft_steps} steps, lr {args.sft_lr:g}): a chat model that "
        "answers every question, so it makes up answers about people it never saw. From that same start, each method "
        f"trains on {pair_info['train']} preference pairs of the world ({kinds}; `preference.jsonl`: \"I don't know.\" "
        "chosen over a made-up answer for the unknown people of split unknown_sft, the true answer over a wrong one "
        f"for the known people SFT asked about), {args.epochs:g} epochs of {args.micro_batch * args.accumulation} "
        "pairs a step (KTO: as many examples, the pairs unpaired), warmup 5 steps then cosine to 0, AdamW without "
        "weight decay, reference log-probabilities from the start model computed once (none for ORPO and SimPO). "
        "Scored greedily through the engine (`acorn.eval.world`, exact match): made-up answers and \"I don't know\" "
        f"on the {before['n_unknown']} questions about the people of split unknown_eval, in no training data at all "
        f"(eval/unknown_qa.jsonl); facts on the {before['n_facts']} questions about known people (eval/fact_qa.jsonl). "
        f"Held-out pairs: the {pair_info['held_out']} pairs of eval/preference.jsonl of the same kinds (other people), "
        "ranked by each policy's implicit reward (TRL's rewards/accuracies) and by a reward model trained on the same "
        "pairs from the same start. Each method at the learning rate of its sweep that made up the fewest answers "
        "while keeping the SFT-asked facts within 5 points of the start:", "",
        markdown_table(header, rows), "",
        *_reading(before, best, rm), "",
        "Every run (the 'train s' column is wall time on a shared CPU, not a speed figure):", "",
        markdown_table(["method", "lr", "steps", "final train loss", "made up", "\"I don't know\"", "facts: SFT-asked",
                        "held-out pairs", "train s"], sweep_rows), "",
        f"Command: `{args.command}`; one run is, for example, `{example}`; the reward model: `{rm['cli']}`  ",
        f"Machine: {machine_description(('trl',))}  ",
        f"Date: {today()}",
    ]
    return "\n".join(lines)


# ============================================================ dpo margins
MARGIN_RUNS = {  # name: (--loss, beta, learning rate; None: --margins-lr)
    "DPO, beta 0.1": ("dpo", 0.1, None),
    "DPO, beta 0.1, lr 3e-5": ("dpo", 0.1, 3e-5),  # the rate the hallucination table shows DPO at
    "IPO, beta 0.5": ("ipo", 0.5, None),
    "DPO, beta 0.01": ("dpo", 0.01, None),
}


def _greedy_replies(model_dir: Path, prompts: list[list[dict]], max_new_tokens: int = 24) -> list[str]:
    from acorn.infer.engine import Engine

    engine = Engine.from_pretrained(model_dir, device="cpu")
    ids = [engine.chat_prompt(p) for p in prompts]
    return [c.text for c in engine.generate(ids, temperature=0.0, max_new_tokens=max_new_tokens)]


def _pair_logps(model_dir: Path, pairs_file: Path) -> dict:
    """Mean summed log-probability of the chosen and of the rejected replies of a pairs file (the
    start's values: step 0 of the trajectories; the runs log theirs as val_logps/*)."""
    import functools

    import torch

    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.prefs import completion_logps
    from acorn.train.prefs_data import load_pairs, pair_batch

    tok = Tokenizer.from_pretrained(model_dir)
    pad = next(i for i in (tok.pad_id, tok.eos_id, 0) if i is not None)
    items, _ = load_pairs([pairs_file], tok, max_len=128)
    model = load(model_dir, dtype="float32", device="cpu")
    collate = functools.partial(pair_batch, pad_id=pad)
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(items), 16):
            b = collate(items[i:i + 16])
            sums, _, _ = completion_logps(model, b.input_ids, b.attention_mask, b.completion_mask)
            chosen += sums[:len(sums) // 2].tolist()
            rejected += sums[len(sums) // 2:].tolist()
    return {"chosen": sum(chosen) / len(chosen), "rejected": sum(rejected) / len(rejected)}


def _reply_kinds(replies: list[str]) -> dict:
    """Greedy replies to questions about unknown people, sorted: "I don't know." exactly; only punctuation
    (".", "...", nothing); a piece of "I don't know." ("know."); anything else (a made-up answer)."""
    import re
    from collections import Counter

    from acorn.data.world import IDK_ANSWER

    norm = lambda t: " ".join(t.strip().lower().split())  # noqa: E731
    idk = norm(IDK_ANSWER)
    kinds = Counter("idk" if norm(r) == idk else "punct" if re.fullmatch(r"[\W_]*", r) else
                    "piece" if norm(r) in idk else "other" for r in replies)
    return {k: kinds[k] / len(replies) for k in ("idk", "punct", "piece", "other")} | {
        "common": Counter(r.strip() for r in replies).most_common(3)}


def figure_dpo_margins(args) -> str:
    """Chosen and rejected log-probabilities and the margin through DPO/IPO training, on held-out
    questions about unknown people whose rejected reply is the made-up answer the start gives greedily."""
    from acorn.train.prefs import PrefsConfig, prefs

    pretrained = Path(args.pretrained)
    world = Path(args.world) if args.world else pretrained.parent.parent / "world"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reuse_runs = args.resume  # --resume: keep the margins runs already in WORK
    args.resume = True  # the start model of the hallucination figure is reused when it is there
    start, sft_info = _sft_without_refusals(args, world, work)
    train, _, pair_info = _pairs(args, world, work)

    # The probe: held-out pairs about unknown people (eval/preference.jsonl, other people than training's):
    # chosen "I don't know.", rejected = what the start model actually says, greedily.
    rows = [json.loads(line) for line in (world / "eval" / "preference.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "unknown"][:args.probe_limit]
    start_replies = _greedy_replies(start, [r["prompt"] for r in rows])
    probe = work / "margins_probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["chosen"],
                                         "rejected": [{"role": "assistant", "content": g}]}) + "\n"
                             for r, g in zip(rows, start_replies)), encoding="utf-8")
    start_kinds = _reply_kinds(start_replies)
    at_start = _pair_logps(start, probe)
    log(f"probe: {len(rows)} held-out unknown questions; start replies {start_kinds}")

    runs = {}
    for name, (loss, beta, lr) in MARGIN_RUNS.items():
        lr = lr or args.margins_lr
        out = work / f"margins-{loss}-beta{beta:g}-lr{lr:g}"
        cli = ["--loss", loss, "--beta", str(beta), "--init_from", str(start), "--data", str(train), "--eval_data",
               str(probe), "--out", str(out), "--seed", "0", "--epochs", str(args.epochs), "--train.seq_len", "128",
               "--train.micro_batch", str(args.micro_batch),
               "--train.batch_tokens", str(args.micro_batch * 128 * args.accumulation),
               "--optim.lr", str(lr), "--optim.warmup_steps", "5", "--eval.every",
               str(args.margins_every), "--eval.batches", "0", "--eval.checkpoint_every", "0"]
        if reuse_runs and (out / "model" / "config.json").exists() and (out / "run.json").exists():
            log(f"margins: {name}: kept {out} (--resume)")
            seconds, cmd = json.loads((out / "run.json").read_text())
        else:
            log(f"margins: {name}")
            seconds, _, cmd = _run(prefs, PrefsConfig, cli, out)
            (out / "run.json").write_text(json.dumps([seconds, cmd]))
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        evals = [(0, at_start["chosen"], at_start["rejected"])] + [
            (m["step"], m["val_logps/chosen"], m["val_logps/rejected"]) for m in metrics if "val_logps/chosen" in m]
        replies = _greedy_replies(out / "model", [r["prompt"] for r in rows])
        # The trained model's own greedy replies as the rejected side: how far "I don't know." is from winning.
        own = out / "own_greedy.jsonl"
        own.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["chosen"],
                                           "rejected": [{"role": "assistant", "content": g}]}) + "\n"
                               for r, g in zip(rows, replies)), encoding="utf-8")
        runs[name] = {"evals": evals, "kinds": _reply_kinds(replies), "cli": "acorn dpo " + cmd, "seconds": seconds,
                      "own": _pair_logps(out / "model", own)["rejected"]}
    _plot_margins(runs, args.img / "align-dpo-margins.png")

    def traj(e):
        (_, c0, r0), (_, c1, r1) = e[0], e[-1]
        return f"{c0:.2f} -> {c1:.2f}", f"{r0:.2f} -> {r1:.2f}", f"{c0 - r0:+.2f} -> {c1 - r1:+.2f}"

    kind_cols = lambda k: [f"{k['idk']:.1%}", f"{k['punct']:.1%}", f"{k['piece']:.1%}", f"{k['other']:.1%}"]  # noqa: E731
    table = [["start (SFT without refusals)", f"{at_start['chosen']:.2f}", f"{at_start['rejected']:.2f}",
              f"{at_start['chosen'] - at_start['rejected']:+.2f}", "0.00", f"{at_start['rejected']:.2f}",
              *kind_cols(start_kinds)]]
    for name, r in runs.items():
        c, rej, gap = traj(r["evals"])
        _, c1, r1 = r["evals"][-1]
        margin = (c1 - at_start["chosen"]) - (r1 - at_start["rejected"])
        table.append([name, c, rej, gap, f"{margin:+.2f}", f"{r['own']:.2f}", *kind_cols(r["kinds"])])
    common = "; ".join(f"{name}: " + ", ".join(f"{t!r} x{n}" for t, n in r["kinds"]["common"]) for name, r in runs.items())
    reading = []
    for name, r in runs.items():
        _, c1, r1 = r["evals"][-1]
        dc, dr = c1 - at_start["chosen"], r1 - at_start["rejected"]
        k = r["kinds"]
        reading.append(
            f"{name}: the margin grew {dc - dr:+.1f} nats, \"I don't know.\" {'up' if dc > 0 else 'down'} "
            f"{abs(dc):.1f} and the start's greedy made-up answer {'up' if dr > 0 else 'down'} {abs(dr):.1f}; "
            f"\"I don't know.\" ends {'below' if c1 < r1 else 'above'} that answer ({c1:.1f} vs {r1:.1f}) and "
            f"{'below' if c1 < r['own'] else 'above'} the model's own greedy reply ({r['own']:.1f}), which is "
            f"\"I don't know\" {k['idk']:.0%}, punctuation {k['punct']:.0%}, a piece of \"I don't know.\" "
            f"{k['piece']:.0%}, made up {k['other']:.0%}")
    return "\n".join([
        "## DPO and IPO margins: why pair accuracy does not move generation (issue 13)", "",
        "The hallucination figure's DPO and IPO rank 73-76% of held-out pairs right yet make up as many answers as "
        "before. Here are the log-probabilities behind that, through training, from the same start (the pretrained "
        f"model fine-tuned without refusals) on the same {pair_info['train']} pairs, {args.epochs:g} epochs, lr "
        f"{args.margins_lr:g} unless named: on {len(rows)} held-out questions about unknown people (eval/preference.jsonl), the "
        "summed log-probability of the chosen reply (\"I don't know.\") and of the rejected one, which here is the "
        "made-up answer the START model gives greedily (what generation actually produces, not the pair's random "
        "wrong answer), logged every "
        f"{args.margins_every} steps (`val_logps/*`); the gap is their difference, and the DPO margin h its change "
        "from the start (the log-ratio difference the losses push up). Then what each trained model replies greedily "
        "to those questions, and that reply's own log-probability.", "",
        markdown_table(["model", "log p(\"I don't know.\")", "log p(start's greedy reply)", "gap (chosen - rejected)",
                        "DPO margin h (nats)", "log p(own greedy reply)", "greedy: \"I don't know.\"",
                        "greedy: punctuation only", "greedy: a piece of it", "greedy: made up"], table), "",
        f"Most common greedy replies after training: {common}.", "",
        "Reading: " + "; ".join(reading) + ". The losses see only the difference of the two log-ratios; greedy "
        "generation follows whole replies' absolute probabilities, token by token, and \"I don't know.\" must beat "
        "every other reply, not only the rejected one: where the margin is won, probability moves to replies that are "
        "neither (punctuation, a piece of the chosen reply) rather than to the chosen reply itself.", "",
        "![DPO margins](img/align-dpo-margins.png)", "",
        f"Command: `{args.command}`; one run: `{next(iter(runs.values()))['cli']}`  ",
        f"Machine: {machine_description(('trl',))} ({load_note()})  ",
        f"Date: {today()}",
    ])


def _plot_margins(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acorn.fileio import atomic_write

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (name, r) in enumerate(runs.items()):
        color = f"C{i}"
        steps = [e[0] for e in r["evals"]]
        left.plot(steps, [e[1] for e in r["evals"]], color=color, lw=1.2, label=f"{name}: \"I don't know.\"")
        left.plot(steps, [e[2] for e in r["evals"]], color=color, lw=1.2, ls="--", label=f"{name}: start's greedy reply")
        right.plot(steps, [e[1] - e[2] - (r["evals"][0][1] - r["evals"][0][2]) for e in r["evals"]], color=color,
                   lw=1.2, label=name)
    left.set_title("held-out unknown people: summed log-prob (nats)", fontsize=9)
    right.set_title("DPO margin h: change of log p(chosen) - log p(rejected)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ====================================================================== main
FIGURES = {"hallucination": ("align-hallucination", figure_hallucination),
           "dpo-margins": ("align-dpo-margins", figure_dpo_margins)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default="hallucination", help=f"comma-separated, of {', '.join(FIGURES)}")
    ap.add_argument("--no-write", action="store_true", help="print the sections instead of writing BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="a few steps and eval rows each, to try the script out")
    ap.add_argument("--pretrained", default="runs/speedrun/pretrain/model",
                    help="a pretrained speedrun model (RUN/pretrain/model of `acorn speedrun`)")
    ap.add_argument("--world", help="the world it was trained on (default: RUN/world beside RUN/pretrain/model)")
    ap.add_argument("--work", default="benchmarks/.cache/align-hallucination")
    ap.add_argument("--resume", action="store_true", help="keep what WORK/results.json already holds, run the rest")
    ap.add_argument("--sft-steps", type=int, default=357, help="SFT steps (default: the cpu speedrun's)")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-seq-len", type=int, default=512)
    ap.add_argument("--sft-micro-batch", type=int, default=8)
    ap.add_argument("--pairs", type=lambda s: [k.strip() for k in s.split(",") if k.strip()], default=["unknown", "fact"],
                    help="kinds of the world's preference pairs to train on: unknown, fact, arithmetic")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--micro-batch", type=int, default=16, help="pairs per forward pass")
    ap.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    ap.add_argument("--lrs", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="learning rates to sweep for every method (default: 3e-5,1e-4,3e-4)")
    ap.add_argument("--rm-lr", type=float, default=1e-4, help="the reward model's learning rate")
    ap.add_argument("--methods", type=lambda s: [m.strip() for m in s.split(",")], default=None,
                    help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--eval-limit", type=int, default=None, help="score only the first N rows of each eval file")
    ap.add_argument("--probe-limit", type=int, default=100,
                    help="dpo-margins: held-out questions about unknown people to follow")
    ap.add_argument("--margins-lr", type=float, default=1e-4, help="dpo-margins: the runs' learning rate")
    ap.add_argument("--margins-every", type=int, default=8, help="dpo-margins: evaluate the probe every N steps")
    args = ap.parse_args()
    if args.quick:
        args.sft_steps, args.epochs, args.eval_limit = min(args.sft_steps, 20), min(args.epochs, 1.0), 20
        args.sft_seq_len, args.micro_batch, args.accumulation = min(args.sft_seq_len, 256), 8, 1
    args.command = command_line()
    args.img = Path(args.work) if args.no_write else REPO / "docs" / "img"
    write_figures(args, FIGURES)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
