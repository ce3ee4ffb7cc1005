"""Synthetic-data benchmarks (issue 18): constitutional AI, distillation, model collapse, synthetic Q-A.

One script, one function per figure, each writing its own section of docs/BENCHMARKS.md. All
start from a finished cpu speedrun (--run RUN: RUN/pretrain/model, RUN/world, RUN/data).

  constitutional (synth-constitutional)  a chat model that makes answers up: SFT from the
        pretrained model on the world's sft.jsonl WITHOUT its "I don't know." rows, plus the
        rows that teach the critique/revision format (`acorn data world --critique-sft`, the
        same world otherwise). Then `acorn synth constitutional` on prompts about the
        unknown_sft people, the SFT people and arithmetic: the supervised phase (SFT on the
        revisions) and the AI-feedback phase (DPO on the model's own preference pairs), with
        the model as its own critic and with the world's labels as the critic (oracle), and
        a variant meant to fix the side effect (original answers kept where the critic found
        nothing, plus a replay of the start's SFT rows). Measured greedily through the world
        evaluation: made-up answers about never-seen people (world_unknown_qa), fact accuracy
        (world_fact_qa), arithmetic accuracy (world_arithmetic), and the critic's flag rates.
  collapse (synth-collapse)  `acorn synth collapse` in each mode (replace, mix, accumulate)
        on the world's pretraining text: loss on real held-out text and on its rarest
        tokens, distinct-2 and vocabulary of the samples, per generation; a plot.
  distill (synth-distill)  a student a fifth of the teacher's size trained from scratch on the
        speedrun's shards vs distilled from the pretrained speedrun model (forward KL,
        reverse KL, JS) at the same steps: validation loss, and fact multiple choice.
  seqdistill (synth-seqdistill)  the same student trained on the teacher's generations
        (`acorn synth generate --samples`) vs on real text, same steps; loss on real text.
  qa (synth-qa)  `acorn synth qa` from the knowledge base, answers by the world and by the
        chat model; filter counts, contamination against the world's eval sets.
  speedrun (speedrun-synth)  the same experiments as stages of the speedrun (`acorn speedrun
        --out RUN --stages synth-qa,collapse,distill`; run here unless --resume finds them):
        their report-card figures.

    python benchmarks/synth.py --run /tmp/sr/run --figures constitutional,collapse,distill,seqdistill,qa
    python benchmarks/synth.py --run /tmp/sr/run --figures collapse --quick --no-write   # try it
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    REPO, command_line, load_note, log, machine_description, markdown_table, today, write_figures,
)

LOAD_NOTE = (load_note()[0].upper() + load_note()[1:] + ": times are not comparable between sections run at "
             "different loads, the quality figures are.")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    from acorn.fileio import write_jsonl

    write_jsonl(path, rows)


def _run(fn, cfg_cls, cli: list[str], out: Path) -> tuple[float, dict, str]:
    """One stage through its config and function, as the CLI builds them."""
    from acorn.config import load

    shutil.rmtree(out, ignore_errors=True)
    cfg = load(cfg_cls, None, cli)
    t0 = time.perf_counter()
    fn(cfg)
    rows = _rows(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else [{}]
    return time.perf_counter() - t0, rows[-1], " ".join(cli)


def _header(args, what: str) -> str:
    return (f"{what}\n\nCommand: `{args.command}`  \nMachine: {machine_description()}  \nDate: {today()}  \n"
            f"{LOAD_NOTE}\n")


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


# ======================================================================= constitutional
def _world_eval(model_dir: Path, world: Path, limit: int | None) -> dict:
    from acorn.eval.harness import evaluate

    out = evaluate(str(model_dir), ["world_unknown_qa", "world_fact_qa", "world_arithmetic"], data_dir=world,
                   limit=limit, progress=False)
    r = out["results"]
    return {"made_up": r["world_unknown_qa"]["hallucination_rate"], "idk": r["world_unknown_qa"]["idk_rate"],
            "facts": r["world_fact_qa"]["answer_match"], "arithmetic": r["world_arithmetic"]["answer_match"],
            "facts_idk": _idk_share(out["samples"]["world_fact_qa"]),
            "n": {t: r[t]["n"] for t in ("world_unknown_qa", "world_fact_qa", "world_arithmetic")}}


def _idk_share(samples: list[dict]) -> float:
    """How many fact questions about KNOWN people the model refused: "I don't know." spreading."""
    from acorn.data.world import IDK_ANSWER
    from acorn.eval.world import normalize

    return sum(normalize(s["output"]) == normalize(IDK_ANSWER) for s in samples) / max(1, len(samples))


def _backfill_facts_idk(done: dict, work: Path, world: Path, limit: int | None) -> None:
    """Results saved before the known-people refusal rate was measured: measure it now."""
    from acorn.eval.harness import evaluate

    dirs = {"start": "start", "sl-model": "sl-model", "ai-model": "ai-model", "sl-oracle": "sl-oracle",
            "ai-oracle": "ai-oracle", "sl-fix": "sl-fix"}
    for key, d in dirs.items():
        r = done.get(key)
        if r is None or "facts_idk" in r or "skipped" in r:
            continue
        out = evaluate(str(work / d / "model"), ["world_fact_qa"], data_dir=world, limit=limit, progress=False)
        r["facts_idk"] = _idk_share(out["samples"]["world_fact_qa"])
    for key in ("ai-model", "ai-oracle"):
        if key in done and "skipped" in done[key]:
            done[key]["facts_idk"] = done[key.replace("ai-", "sl-")].get("facts_idk")


def _sft(args, data: list[Path], init: Path, out: Path, steps: int, lr: float, seq_len: int = 512,
         batch_tokens: int | None = None) -> dict:
    from acorn.train.sft import SFTConfig, sft

    if args.resume and (out / "model" / "config.json").exists():
        return {"cli": "(kept)"}
    cli = ["--data", ",".join(map(str, data)), "--init_from", str(init), "--out", str(out), "--seed", "0",
           "--train.seq_len", str(seq_len), "--train.micro_batch", "4", "--train.batch_tokens", str(batch_tokens or 4 * seq_len * 2),
           "--train.max_steps", str(steps), "--optim.lr", str(lr), "--eval.every", "0", "--eval.checkpoint_every", "0"]
    seconds, last, cmd = _run(sft, SFTConfig, cli, out)
    return {"seconds": round(seconds), "loss": last.get("loss"), "cli": "acorn sft " + cmd}


def _dpo(args, pairs: Path, init: Path, out: Path) -> dict:
    from acorn.train.prefs import PrefsConfig, prefs

    if args.resume and (out / "model" / "config.json").exists():
        return {"cli": "(kept)"}
    cli = ["--data", str(pairs), "--init_from", str(init), "--out", str(out), "--loss", "dpo", "--beta", "0.1",
           "--optim.lr", str(args.dpo_lr), "--epochs", str(args.dpo_epochs), "--train.micro_batch", "8",
           "--train.seq_len", "256", "--train.batch_tokens", str(8 * 256 * 2), "--eval.every", "0",
           "--eval.checkpoint_every", "0", "--val_fraction", "0.0"]
    seconds, last, cmd = _run(prefs, PrefsConfig, cli, out)
    return {"seconds": round(seconds), "loss": last.get("loss"), "accuracy": last.get("rewards/accuracies"),
            "cli": "acorn dpo " + cmd}


def _prompts(world: Path, out: Path, n_unknown: int, n_known: int, n_arith: int, seed: int) -> dict:
    """Questions about unknown_sft people (their honest answer is "I don't know."), SFT people
    (known) and arithmetic (rl_arithmetic), in the world's phrasings."""
    from acorn.data import world_text as T
    from acorn.data.world import CORE_ATTRIBUTES, read_world

    rng = random.Random(seed)
    people = read_world(world / "world.json").people
    rows = []
    for split, n, kind in (("unknown_sft", n_unknown, "unknown"), ("sft", n_known, "fact")):
        pool = [p for p in people if p.split == split]
        for _ in range(n):
            p, attr = rng.choice(pool), rng.choice(list(CORE_ATTRIBUTES))
            rows.append({"question": rng.choice(T.QUESTION_TEMPLATES[attr]).format(name=p.name), "person": p.name,
                         "attribute": attr, "kind": kind})
    arith = _rows(world / "rl_arithmetic.jsonl")
    rows += [{"prompt": r["prompt"], "kind": "arithmetic"} for r in rng.sample(arith, n_arith)]
    rng.shuffle(rows)
    _write_rows(out, rows)
    return {"unknown": n_unknown, "known": n_known, "arithmetic": n_arith}


def _critic_rates(traces: list[dict], world: Path) -> dict:
    """How often the critic flagged an answer, by what the world says it was."""
    from acorn.data.world import IDK_ANSWER, read_world
    from acorn.synth.constitution import expression_of
    from acorn.data.world import calculate

    known = {p.name: p.known for p in read_world(world / "world.json").people}
    groups = {"unknown person, made-up answer": [], "unknown person, IDK": [], "known person": [],
              "arithmetic, wrong": [], "arithmetic, right": []}
    for t in traces:
        if t["kind"] == "arithmetic":
            expr = expression_of(t["messages"][-1]["content"])
            right = expr is not None and t["answer"].strip() == str(calculate(expr))
            result = str(calculate(expr)) if expr is not None else None
            groups["arithmetic, right" if right else "arithmetic, wrong"].append(
                (t["violation"], t["revision"].strip() == result))
        elif known.get(t.get("person")):
            groups["known person"].append((t["violation"], t["revision"].strip() == IDK_ANSWER))
        else:
            groups["unknown person, IDK" if t["answer"].strip() == IDK_ANSWER
                   else "unknown person, made-up answer"].append((t["violation"], t["revision"].strip() == IDK_ANSWER))
    return {k: (sum(f for f, _ in v) / len(v) if v else None, sum(r for _, r in v) / len(v) if v else None, len(v))
            for k, v in groups.items()}


def figure_constitutional(args) -> str:
    from acorn.data.world import generate_world
    from acorn.synth.constitution import constitutional

    run, work = Path(args.run), Path(args.work) / "constitutional"
    work.mkdir(parents=True, exist_ok=True)
    pretrained = run / "pretrain" / "model"
    base_world = run / "world"
    size = json.loads((base_world / "manifest.json").read_text())
    world = work / "world"
    if not (world / "principles.md").exists():
        generate_world(world, seed=size["seed"], size=size["size"], tokenizer=pretrained, quiet=True,
                       overwrite=True, critique_sft=True)
    same = (world / "pretrain.jsonl").read_bytes() == (base_world / "pretrain.jsonl").read_bytes()
    results_file = work / "results.json"
    done = json.loads(results_file.read_text()) if args.resume and results_file.exists() else {}

    def save():
        results_file.write_text(json.dumps(done, indent=1))

    sft_rows = _rows(world / "sft.jsonl")
    start_data = work / "sft_start.jsonl"
    _write_rows(start_data, [r for r in sft_rows if r["kind"] != "refusal"])
    counts = {k: sum(r["kind"] == k for r in sft_rows) for k in ("critique", "comparison", "refusal")}
    log(f"start SFT: {len(sft_rows) - counts['refusal']} rows ({counts})")
    start = work / "start"
    done.setdefault("start_sft", _sft(args, [start_data], pretrained, start, args.sft_steps, 1e-3,
                                      batch_tokens=args.sft_batch_tokens))
    save()
    prompts = work / "prompts.jsonl"
    prompt_counts = _prompts(world, prompts, args.n_unknown, args.n_known, args.n_arith, 0)
    limit = args.eval_limit
    if "start" not in done:
        done["start"] = _world_eval(start / "model", world, limit)
        save()
    log(f"start: {done['start']}")

    for critic in ("model", "oracle"):
        cai = work / f"cai-{critic}"
        if f"cai-{critic}" not in done:
            t0 = time.perf_counter()
            summary = constitutional(start / "model", prompts, cai, principles=world / "principles.md",
                                     critic=critic, world=world, seed=0, max_new_tokens=32, overwrite=True)
            done[f"cai-{critic}"] = {"summary": {k: v for k, v in summary.items() if k != "run"},
                                     "seconds": round(time.perf_counter() - t0),
                                     "rates": _critic_rates(_rows(cai / "traces.jsonl"), world)}
            save()
        log(f"cai {critic}: {done[f'cai-{critic}']}")
        sl = work / f"sl-{critic}"
        if f"sl-{critic}" not in done:
            info = _sft(args, [cai / "sft.jsonl"], start / "model", sl, args.cai_steps, args.cai_lr, 256)
            done[f"sl-{critic}"] = {**_world_eval(sl / "model", world, limit), "train": info}
            save()
        log(f"SL {critic}: {done[f'sl-{critic}']}")
        ai = work / f"ai-{critic}"
        if f"ai-{critic}" not in done:
            n_pairs = len(_rows(cai / "preference.jsonl"))
            if n_pairs < 16:  # fewer than one step's pairs: no AI-feedback phase to run
                done[f"ai-{critic}"] = {**done[f"sl-{critic}"], "skipped": n_pairs,
                                        "train": {"cli": f"{n_pairs} preference pairs: not run"}}
            else:
                info = _dpo(args, cai / "preference.jsonl", sl / "model", ai)
                done[f"ai-{critic}"] = {**_world_eval(ai / "model", world, limit), "train": info}
            save()
        log(f"AI {critic}: {done[f'ai-{critic}']}")

    # The fix tried: original answers where the critic found nothing, and the start's SFT rows replayed.
    if "sl-fix" not in done:
        fix = work / "cai-fix"
        constitutional(start / "model", prompts, fix, principles=world / "principles.md", critic="model",
                       world=world, seed=0, max_new_tokens=32, phases="supervised", keep_unflagged=True,
                       overwrite=True)
        cai_rows = _rows(fix / "sft.jsonl")
        replay = random.Random(0).sample(_rows(start_data), min(len(_rows(start_data)), args.replay * len(cai_rows)))
        _write_rows(work / "sft_fix.jsonl", cai_rows + replay)
        info = _sft(args, [work / "sft_fix.jsonl"], start / "model", work / "sl-fix",
                    args.cai_steps * (1 + args.replay), args.cai_lr, 512)
        done["sl-fix"] = {**_world_eval(work / "sl-fix" / "model", world, limit), "train": info,
                          "rows": {"constitutional": len(cai_rows), "replay": len(replay)}}
        save()
    log(f"SL fix: {done['sl-fix']}")
    _backfill_facts_idk(done, work, world, limit)
    save()
    return _constitutional_section(args, done, counts, prompt_counts, same)


def _constitutional_section(args, done: dict, counts: dict, prompt_counts: dict, same: bool) -> str:
    rows = [["start: SFT without refusals + critique rows", *_cells(done["start"])]]
    for critic in ("model", "oracle"):
        rows.append([f"{critic} critic: after the supervised phase (SFT on revisions)", *_cells(done[f"sl-{critic}"])])
        ai = done[f"ai-{critic}"]
        if "skipped" in ai:
            rows.append([f"{critic} critic: AI-feedback phase not run ({ai['skipped']} preference pairs)",
                         "", "", "", "", ""])
        else:
            rows.append([f"{critic} critic: after the AI-feedback phase (DPO on its pairs)", *_cells(ai)])
    rows.append(["model critic, fix: unflagged answers kept + start's SFT rows replayed", *_cells(done["sl-fix"])])
    table = markdown_table(["model", "made-up answers (unknown people)", "I don't know (unknown people)",
                            "fact accuracy (known people)", "I don't know (known people)", "arithmetic accuracy"],
                           rows)
    rate_rows = []
    work = Path(args.work) / "constitutional"
    for critic in ("model", "oracle"):  # the fix run samples and judges exactly as the model run
        traces = work / f"cai-{critic}" / "traces.jsonl"
        if not traces.exists():
            continue
        for k, (rate, revised, n) in _critic_rates(_rows(traces), work / "world").items():
            rate_rows.append([critic if critic != "fix" else "model (fix run)", k, n, _pct(rate), _pct(revised)])
    rates = markdown_table(["critic", "sampled answer (by the world's truth)", "answers", "flagged as a violation",
                            "revision = I don't know (facts) / the true result (arithmetic)"], rate_rows, "llrrr")
    s_model, s_oracle = done["cai-model"]["summary"], done["cai-oracle"]["summary"]
    n = done["start"]["n"]
    return _header(args, "### Constitutional AI on the world (Bai et al. 2022)") + f"""
The start is a chat model that makes answers up: SFT from the pretrained speedrun model on the world's
`sft.jsonl` without its "I don't know." rows, plus the rows of `acorn data world --critique-sft`
({counts['critique']} critiques with revisions, {counts['comparison']} A/B comparisons; the world is otherwise the
same: pretraining text identical = {same}), {args.sft_steps} steps of {args.sft_batch_tokens} tokens. `acorn synth constitutional` then ran on
{sum(prompt_counts.values())} prompts ({prompt_counts['unknown']} about unknown_sft people, {prompt_counts['known']} about
SFT people, {prompt_counts['arithmetic']} arithmetic) with the world's two principles (no made-up facts about people
you were not told about; check arithmetic with the calculator): supervised phase = SFT on the revisions
({args.cai_steps} steps, lr {args.cai_lr:g}); AI-feedback phase = DPO (beta 0.1, lr {args.dpo_lr:g},
{args.dpo_epochs:g} epochs) on the critic's preference pairs ({s_model['feedback']['pairs']} pairs from the model
critic, {s_oracle['feedback']['pairs']} from the oracle). The oracle is the same pipeline with the world's labels
as the critic. Evaluated greedily (the first {args.eval_limit} rows of each eval file): world_unknown_qa
({n['world_unknown_qa']} questions about never-seen people, in no training data), world_fact_qa
({n['world_fact_qa']} questions about known people, SFT-asked and pretraining-only facts), world_arithmetic
({n['world_arithmetic']} problems of 1-4 digits, calculator available).

{table}

What the critic flagged in the supervised phase (sampled answers, grouped by the world's truth):

{rates}

{_constitutional_reading(done, args)}
Per-run details (commands, seconds, summaries): benchmarks/.cache/synth/constitutional/results.json.
"""


def _constitutional_reading(done: dict, args) -> str:
    st, slm, aim, slo, fix = (done[k] for k in ("start", "sl-model", "ai-model", "sl-oracle", "sl-fix"))
    aio = done["ai-oracle"]
    work = Path(args.work) / "constitutional"
    mr = _critic_rates(_rows(work / "cai-model" / "traces.jsonl"), work / "world")
    pretrain = Path(args.run) / "pretrain" / "metrics.jsonl"
    steps = _rows(pretrain)[-1]["step"] if pretrain.exists() else "?"
    oracle_ai = (f"The oracle's AI-feedback phase had only {aio['skipped']} pair(s) and was not run: the start model "
                 "never answers \"I don't know.\", so both of its two samples break the principle and the world "
                 "prefers neither; RLAIF needs samples that differ on the principle."
                 if "skipped" in aio else
                 f"The oracle's AI-feedback phase moved made-up answers {_pct(slo['made_up'])} -> {_pct(aio['made_up'])}.")
    known = {p.name: p.known for p in __import__("acorn.data.world", fromlist=["read_world"]).read_world(
        work / "world" / "world.json").people}
    kt = [t for t in _rows(work / "cai-model" / "traces.jsonl") if t["kind"] == "fact" and known.get(t.get("person"))]
    unflagged = [t for t in kt if not t["violation"]]
    kept = sum(t["revision"].strip() == t["answer"].strip() for t in unflagged)
    return f"""Reading. The base is weak: the shared speedrun's pretraining stopped at step {steps} of 667 (the machine
was loaded), so the start answers {_pct(st['facts'])} of the fact questions (the earlier session's start had 81%; the
speedrun's own SFT of this base, with refusals and 4x the SFT tokens, 41% on all 1,080 questions) and, with the calculator in the prompt, calls it with one
expression for every problem (arithmetic {_pct(st['arithmetic'])}): the arithmetic principle has nothing to work with.

- Model critic, supervised phase: made-up answers {_pct(st['made_up'])} -> {_pct(slm['made_up'])}, but facts
  {_pct(st['facts'])} -> {_pct(slm['facts'])} (the earlier session's 81% -> 12.8%, reproduced in direction). The
  critic is poor (it flagged {_pct(mr['unknown person, made-up answer'][0])} of the made-up answers and
  {_pct(mr['known person'][0])} of the known-person ones), but the larger cause is the revision step: of the
  {len(unflagged)} known-person answers the critic found nothing wrong with, the revision repeated the answer only
  {kept} times; it wrote "I don't know." or another value instead, and SFT on the revisions teaches those. So
  the side effect is only partly "I don't know." spreading (known people refused {_pct(st.get('facts_idk'))} ->
  {_pct(slm.get('facts_idk'))}); mostly the revisions re-draw the facts.
- AI-feedback phase: DPO on the model's own {done['cai-model']['summary']['feedback']['pairs']} pairs (P(A) vs P(B)
  mostly near 0.5) made it worse: made-up {_pct(slm['made_up'])} -> {_pct(aim['made_up'])}, facts
  {_pct(aim['facts'])}, as in the earlier session (it never helped).
- Oracle critic (the world's labels): made-up {_pct(st['made_up'])} -> {_pct(slo['made_up'])} ("I don't know." to
  {_pct(slo['idk'])} of the never-seen people, as the principle asks), facts {_pct(st['facts'])} ->
  {_pct(slo['facts'])}, known people refused {_pct(slo.get('facts_idk'))}: facts fall here too because the
  rows for known people repeat the model's own answers sampled at temperature 1, mostly wrong. {oracle_ai}
- The fix (measured): keep the original answer wherever the critic found nothing, and replay as many of the
  start's own SFT rows: made-up {_pct(fix['made_up'])}, facts {_pct(fix['facts'])}, known people refused
  {_pct(fix.get('facts_idk'))}: it keeps most of the gain on made-up answers and most of the facts; the rest
  of the loss is the known-person answers the critic flagged (revised to "I don't know.") and the sampled answers.
"""


def _cells(r: dict) -> list[str]:
    return [_pct(r["made_up"]), _pct(r["idk"]), _pct(r["facts"]), _pct(r.get("facts_idk")), _pct(r["arithmetic"])]


# ======================================================================= collapse
def figure_collapse(args) -> str:
    from acorn.config import load
    from acorn.synth.collapse import CollapseConfig, collapse, plot

    run, work = Path(args.run), Path(args.work) / "collapse"
    runs = []
    for mode in ("replace", "mix", "accumulate"):
        out = work / mode
        if args.resume and (out / "generations.jsonl").exists() and \
                len(_rows(out / "generations.jsonl")) == args.generations + 1:
            runs.append(_rows(out / "generations.jsonl"))
            continue
        shutil.rmtree(out, ignore_errors=True)
        cli = ["--data", str(run / "world" / "pretrain.jsonl"), "--tokenizer", str(run / "pretrain" / "model"),
               "--out", str(out), "--mode", mode, "--generations", str(args.generations), "--max_docs",
               str(args.collapse_docs), "--train.max_steps", str(args.collapse_steps)]
        log(f"collapse {mode}")
        runs.append(collapse(load(CollapseConfig, None, cli), quiet=True))
        for r in runs[-1]:
            log(f"  gen {r['generation']}: val {r['val_loss']:.3f} tail {r['tail_loss']:.3f} "
                f"d2 {r['distinct_2']:.3f} vocab {r['vocab_used']:.2f}")
    img = REPO / "docs" / "img" / "synth_collapse.png"
    plot(runs, img)
    cfg = load(CollapseConfig, None, [])
    m = cfg.model
    return _header(args, "### Model collapse (Shumailov et al. 2024 vs Gerstgrasser et al. 2024)") + f"""
`acorn synth collapse` on {args.collapse_docs} documents of the world's pretraining text (a tenth held out as the
real validation text), tokenizer of the speedrun; every generation a fresh {m.n_layer}-layer, width-{m.d_model}
model trained {args.collapse_steps} steps of {cfg.train.batch_tokens} tokens (equal compute), then sampled at
temperature 1 from BOS (as many documents as the real training set, at most {cfg.sample_tokens} tokens each).
replace = generation k trains only on generation k-1's samples; mix = those samples plus real documents making
{cfg.real_fraction:.0%} of the data; accumulate = the real documents plus all samples so far. The tail = the rarest
token ids that make {cfg.rare_share:.0%} of the real training tokens.

Change of the loss on real held-out text from generation 0 to {args.generations}: {_collapse_deltas(runs)}.

{_collapse_table(runs)}

![model collapse](img/synth_collapse.png)

{_collapse_reading(runs)}
"""


def _collapse_deltas(runs: list[list[dict]]) -> str:
    return ", ".join(f"{rows[0]['mode']} {rows[-1]['val_loss'] - rows[0]['val_loss']:+.2f} "
                     f"(tail {rows[-1]['tail_loss'] - rows[0]['tail_loss']:+.2f})" for rows in runs)


def _collapse_table(runs: list[list[dict]]) -> str:
    rows = [[r["mode"], r["generation"], f"{r['train_docs']:,}", f"{r['val_loss']:.3f}", f"{r['tail_loss']:.3f}",
             f"{r['distinct_2']:.3f}", _pct(r["tail_share"]), f"{r['mean_length']:.0f}"] for gens in runs for r in gens]
    return markdown_table(["mode", "generation", "training documents", "val loss (real)", "tail loss (real)",
                           "distinct-2 of samples", "tail ids' share of the samples", "sample length (tokens)"], rows)


def _collapse_reading(runs: list[list[dict]]) -> str:
    by = {rows[0]["mode"]: rows for rows in runs}
    rep, mix, acc = by["replace"], by["mix"], by["accumulate"]
    g0 = rep[0]
    return f"""Reading. Replacing the data with the previous generation's samples degrades every generation on real
text (loss {g0['val_loss']:.2f} -> {' -> '.join(f"{r['val_loss']:.2f}" for r in rep[1:])}); keeping real data slows
it (mix: {' -> '.join(f"{r['val_loss']:.2f}" for r in mix[1:])}, nearly flat by the last generation; accumulate:
{' -> '.join(f"{r['val_loss']:.2f}" for r in acc[1:])}). At equal compute, accumulate did worse than mix here: its real
share falls to 1/(k+1) of the data while mix keeps half, so at a fixed number of steps the real documents are
seen less and less often. The tail loss rises in every mode, faster with
replace. What this small setting does not show is the narrowing Shumailov et al. describe: generation 0 is a
weak model (2 x 64, loss {g0['val_loss']:.2f} on real text; the speedrun's base has 1.34 on its own val split), so its
samples are noisy, and the errors compound as noise: distinct-2 rises ({g0['distinct_2']:.2f} ->
{rep[-1]['distinct_2']:.2f} with replace), the rare ids' share of the samples rises ({_pct(g0['tail_share'])} ->
{_pct(rep[-1]['tail_share'])}), and the documents stop ending (EOS lost: {g0['mean_length']:.0f} -> {rep[-1]['mean_length']:.0f}
tokens, the cap is 128). The earlier session measured +2.16 / +1.83 / +0.91 (replace / mix / accumulate);
here {rep[-1]['val_loss'] - g0['val_loss']:+.2f} / {mix[-1]['val_loss'] - g0['val_loss']:+.2f} /
{acc[-1]['val_loss'] - g0['val_loss']:+.2f} after {len(rep) - 1} generations."""


# ======================================================================= distillation
STUDENT = ["--model.vocab_size", "2048", "--model.n_layer", "2", "--model.d_model", "64", "--model.n_head", "2",
           "--model.n_kv_head", "1", "--model.max_seq_len", "256"]


def _student_cli(args, data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), *STUDENT, "--train.seq_len", "256", "--train.micro_batch", "16",
            "--train.batch_tokens", "4096", "--train.max_steps", str(args.distill_steps), "--optim.lr", "3e-3",
            "--optim.warmup_steps", "20", "--eval.every", str(args.distill_steps), "--eval.batches", "40",
            "--eval.checkpoint_every", "0", "--seed", "0"]


def _fact_mc(model_dir: Path, world: Path, limit: int | None) -> float:
    from acorn.eval.harness import evaluate

    out = evaluate(str(model_dir), ["world_multiple_choice"], data_dir=world, limit=limit, progress=False)
    r = out["results"]["world_multiple_choice"]
    return r.get("acc", next(v for k, v in r.items() if k not in ("n",) and isinstance(v, float)))


def _real_val(model_dir: Path, data: Path) -> float:
    """Validation loss of a checkpoint on the real shards' val split."""
    from acorn.synth.distill import val_loss

    return val_loss(model_dir, data, seq_len=256, batch_size=16, batches=40)


def figure_distill(args) -> str:
    from acorn.synth.distill import DistillConfig, distill

    run, work = Path(args.run), Path(args.work) / "distill"
    teacher, data, world = run / "pretrain" / "model", run / "data", run / "world"
    results_file = work / "results.json"
    work.mkdir(parents=True, exist_ok=True)
    done = json.loads(results_file.read_text()) if args.resume and results_file.exists() else {}
    if "teacher" not in done:
        done["teacher"] = {"val_loss": _real_val(teacher, data), "fact_mc": _fact_mc(teacher, world, args.eval_limit)}
    variants = {"scratch (hard labels only)": ["--alpha", "0"],
                "forward KL, T=2, alpha 0.5": ["--kind", "forward", "--temperature", "2", "--alpha", "0.5"],
                "reverse KL, T=2, alpha 0.5": ["--kind", "reverse", "--temperature", "2", "--alpha", "0.5"],
                "JS (beta 0.5), T=2, alpha 0.5": ["--kind", "js", "--temperature", "2", "--alpha", "0.5"]}
    for name, extra in variants.items():
        if name in done:
            continue
        out = work / f"{name.split(',')[0].split(' ')[0].lower()}-{len(done)}"
        cli = ["--teacher", str(teacher), *_student_cli(args, data, out), *extra]
        log(f"distill: {name}")
        seconds, last, cmd = _run(distill, DistillConfig, cli, out)
        done[name] = {"val_loss": last.get("val_loss"), "seconds": round(seconds),
                      "fact_mc": _fact_mc(out / "model", world, args.eval_limit), "cli": "acorn synth distill " + cmd}
        results_file.write_text(json.dumps(done, indent=1))
        log(f"  {done[name]}")
    results_file.write_text(json.dumps(done, indent=1))
    rows = [["teacher (the speedrun's pretrained model, 4 layers x 128)", f"{done['teacher']['val_loss']:.3f}",
             _pct(done["teacher"]["fact_mc"]), ""]]
    for name in variants:
        r = done[name]
        rows.append([f"student 2 x 64: {name}", f"{r['val_loss']:.3f}", _pct(r["fact_mc"]), r["seconds"]])
    return _header(args, "### Token-level distillation (Hinton et al. 2015)") + f"""
`acorn synth distill`: a student of 2 layers x width 64 (its embeddings are most of it) trained
{args.distill_steps} steps of 4,096 tokens on the speedrun's token shards, from the same initial weights and in the
same data order, with the loss alpha T^2 D(teacher, student) + (1 - alpha) CE; the teacher is the speedrun's
pretrained model. Validation loss on the shards' val split; fact multiple choice = world_multiple_choice
(log-likelihood of each of 4 answers, chance 25%){f', first {args.eval_limit} questions' if args.eval_limit else ''}.
Equal student compute: the teacher's forward passes are extra (seconds include them).

{markdown_table(["model", "val loss", "fact multiple choice", "seconds"], rows)}

{_distill_reading(done, variants)}
Per-run commands: benchmarks/.cache/synth/distill/results.json.
"""


def _distill_reading(done: dict, variants: dict) -> str:
    names = list(variants)
    scratch = done[names[0]]["val_loss"]
    diffs = ", ".join(f"{n.split(',')[0]} {done[n]['val_loss'] - scratch:+.3f}" for n in names[1:])
    best = min(names[1:], key=lambda n: done[n]["val_loss"])
    return f"""Reading: against the scratch student at the same steps, the validation loss moved {diffs}. The best,
{best.split(',')[0]}, is {scratch - done[best]['val_loss']:.3f} nats better in one seed each: too small to claim an
effect without more seeds; the KL variants are worse (reverse KL most; it is mode-seeking, a plausible reason,
not tested). Fact multiple choice is near chance for every model, the teacher included
({_pct(done['teacher']['fact_mc'])}): this base has little factual knowledge to pass on. The earlier session also
found no effect of token-level distillation at equal compute; T and alpha were not tuned (one setting each).
"""


def figure_seqdistill(args) -> str:
    from acorn.data.prepare import prepare
    from acorn.synth.distill import generate
    from acorn.train.pretrain import PretrainConfig, pretrain

    run, work = Path(args.run), Path(args.work) / "seqdistill"
    teacher, data, world = run / "pretrain" / "model", run / "data", run / "world"
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.json"
    done = json.loads(results_file.read_text()) if args.resume and results_file.exists() else {}
    text = work / "teacher.jsonl"
    if not (work / "data" / "meta.json").exists():
        t0 = time.perf_counter()
        if text.exists():
            text.unlink()
        g = generate(teacher, text, samples=args.seq_samples, temperature=1.0, max_new_tokens=256, seed=0)
        done["generate"] = {**g, "seconds": round(time.perf_counter() - t0)}
        prepare([text], teacher, work / "data", val_fraction=0.01, workers=1, quiet=True)
        results_file.write_text(json.dumps(done, indent=1))
    for name, d in (("real text (scratch)", data), ("teacher's generations (sequence-level distillation)",
                                                    work / "data")):
        if name in done:
            continue
        out = work / ("real" if d == data else "teacher")
        log(f"seqdistill: {name}")
        cli = _student_cli(args, d, out)
        seconds, last, cmd = _run(pretrain, PretrainConfig, cli, out)
        done[name] = {"val_loss_real": _real_val(out / "model", data), "seconds": round(seconds),
                      "fact_mc": _fact_mc(out / "model", world, args.eval_limit), "cli": "acorn pretrain " + cmd}
        results_file.write_text(json.dumps(done, indent=1))
        log(f"  {done[name]}")
    tokens = sum(len(r["text"]) for r in _rows(text)) if text.exists() else 0
    rows = [[f"student 2 x 64 on {name}", f"{done[name]['val_loss_real']:.3f}", _pct(done[name]["fact_mc"])]
            for name in ("real text (scratch)", "teacher's generations (sequence-level distillation)")]
    return _header(args, "### Sequence-level distillation (Kim & Rush 2016)") + f"""
The teacher (the speedrun's pretrained model) wrote {done['generate']['written']:,} documents from BOS at
temperature 1 (`acorn synth generate --samples {args.seq_samples} --max-new-tokens 256`, {tokens:,} characters,
{done['generate']['seconds']} s); `acorn data prepare` made shards of them and the same student as in
synth-distill was pretrained {args.distill_steps} steps of 4,096 tokens on them, against the student trained the same
steps on the real shards. Both measured on the real validation split.

{markdown_table(["model", "val loss on real text", "fact multiple choice"], rows)}

Reading: training on the teacher's text instead of the real text costs
{done["teacher's generations (sequence-level distillation)"]['val_loss_real'] - done['real text (scratch)']['val_loss_real']:+.3f}
nats on real text at the same steps: no gain (the earlier session found none either). The teacher's samples are a
noisier copy of the same distribution (it is itself at 1.34 nats), and the student is far from fitting either.
"""


# ======================================================================= synthetic Q-A
def figure_qa(args) -> str:
    from acorn.synth.qa import synth_qa

    run, work = Path(args.run), Path(args.work) / "qa"
    world = run / "world"
    chat = Path(args.chat) if args.chat else Path(args.work) / "constitutional" / "start" / "model"
    results = {}
    for name, model in (("world's values", None), (f"chat model ({chat.parent.name}/{chat.name})", chat)):
        out = work / ("world" if model is None else "model")
        if model is not None and not (model / "config.json").exists():
            continue
        t0 = time.perf_counter()
        s = synth_qa(world, out, model=model, overwrite=True)
        results[name] = {**s, "seconds": round(time.perf_counter() - t0)}
        log(f"qa {name}: {s['filters']}")
    return _header(args, "### Synthetic question-answer pairs and contamination") + f"""
`acorn synth qa --world RUN/world [--model CHAT]`: 5 questions per knowledge-base document (the world's own
phrasings), answered with the world's value or by the chat model reading the document; then filtered
(empty or "I don't know." answers, duplicate questions, answers not found in the document) and checked for
5-gram overlap against the world's eval sets. The chat model: {chat} (never trained on answering from a
passage: the world's `--rag-sft` rows teach that).

{_qa_tables(results)}

{_qa_reading(results)}
"""


def _qa_tables(results: dict) -> str:
    """The filter counts per answer source, then the eval documents the kept pairs would contaminate."""
    rows, crows = [], []
    for name, s in results.items():
        f = s["filters"]
        rows.append([name, f["candidates"], f["no_answer"], f["duplicate"], f["unverifiable"], f["kept"],
                     _pct(f["correct"] / f["kept"]) if f["kept"] else "", f["contaminated"]])
        for task, r in s["contamination"]["tasks"].items():
            crows.append([name, task, r["documents"], r["contaminated"], _pct(r["fraction"]),
                          "; ".join(r["examples"][:2])])
    return f"""{markdown_table(["answers by", "candidates", "no answer", "duplicate", "unverifiable", "kept",
                          "kept and correct", "kept pairs overlapping an eval set"], rows)}

Eval documents a training run on the kept pairs would contaminate:

{markdown_table(["answers by", "eval task", "documents", "contaminated", "fraction", "examples"], crows, "llrrrl")}"""


def _qa_reading(results: dict) -> str:
    w = results.get("world's values")
    m = next((v for k, v in results.items() if k.startswith("chat model")), None)
    lines = []
    if w:
        u, f = w["contamination"]["tasks"]["world_unknown_qa"], w["contamination"]["tasks"]["world_fact_qa"]
        lines.append(f"""Reading. The pairs from the knowledge base are all kept (the world's answers are in their
documents by construction), and {w['filters']['contaminated']} of them overlap an eval set: the knowledge base
holds the people world_unknown_qa asks about, so {u['contaminated']} of its {u['documents']} questions
({_pct(u['fraction'])}) would be in the training data although no eval text was copied (same phrasing, same name;
at 5 words a question is nearly all name and phrasing). The {f['contaminated']} world_fact_qa hits are false
positives of a short n-gram: a company name shared by many people ("{f['examples'][0] if f['examples'] else ''}").
`--decontaminate` drops the overlapping pairs (tests/synth/test_collapse_qa.py).""")
    if m:
        mf = m["filters"]
        lines.append(f"""The chat model's answers: {mf['kept']} of {mf['candidates']} kept ({mf['unverifiable']}
not found in the document, {mf['no_answer']} "I don't know." or empty), {mf['correct']} of the kept equal to the
world's value: a model not taught to read passages gives no usable synthetic data, and the filter is what says so.""")
    return "\n\n".join(lines)


# ======================================================================= the speedrun's stages
SPEEDRUN_STAGES = ["synth-qa", "collapse", "distill"]


def figure_speedrun(args) -> str:
    """The synthetic-data stages of `acorn speedrun` over a finished run: run them (unless --resume
    finds them in RUN/speedrun.json), then their report-card figures as tables."""
    from acorn.speedrun import StageResult, report_card, run_stages

    run = Path(args.run)
    state = json.loads((run / "speedrun.json").read_text())
    ran_here = not args.resume or not set(SPEEDRUN_STAGES) <= {st["name"] for st in state["stages"]}
    if ran_here:
        run_stages(run, SPEEDRUN_STAGES)
        state = json.loads((run / "speedrun.json").read_text())
    by = {st["name"]: st for st in state["stages"]}
    settings = state["preset_settings"]
    qa = {("world's values" if d == "world" else f"the run's SFT model ({run.name}/sft/model)"):
          json.loads((run / "synth-qa" / d / "summary.json").read_text())
          for d in ("world", "sft") if (run / "synth-qa" / d / "summary.json").exists()}
    gens = by["collapse"]["summary"]["generations"]
    card = report_card([StageResult(st["name"], st["seconds"], st["summary"]) for st in state["stages"]])
    distill_rows = [[name, f"{card[c]['distill']['val_loss']:.3f}", _pct(card[c]["world_multiple_choice"]["acc"])]
                    for name, c in (("teacher: the run's pretrained model (base), 4 x 128", "base"),
                                    ("student 2 x 64 from scratch (hard labels only)", "distill-scratch"),
                                    ("student 2 x 64 distilled: JS (beta 0.5), T=2, alpha 0.5", "distill-js"))]
    times = markdown_table(["stage", "seconds"], [[n, round(by[n]["seconds"])] for n in SPEEDRUN_STAGES])
    ran = "the stages ran in this script" if ran_here else "the stages ran before this script (--resume)"
    note = f"{LOAD_NOTE[:-1]} ({ran}).{' ' + args.note if args.note else ''}"
    return f"""### The synthetic-data experiments as speedrun stages (the report card)

Command: `acorn speedrun --out {run} --stages {','.join(SPEEDRUN_STAGES)}` over a finished cpu speedrun (preset
`{state['preset']}`, seed {state['seed']}); this section: `{args.command}`  
Machine: {machine_description()}  
Date: {today()}  
{note}

The three stages put their numbers on the run's report card (RUN/report.md, one column per model or
source) and their files in RUN/synth-qa, RUN/collapse (with collapse.png, linked from the report), RUN/distill.
Sizes are the cpu preset's: synth-qa on {settings.get('synth_qa_docs') or 'all'} knowledge-base documents x 5
questions; collapse on {settings['collapse_docs']:,} pretraining documents, {settings['collapse_generations']}
generations after generation 0 in each of replace and mix, {settings['collapse_steps']} steps of 4,096 tokens per
generation; distill {settings['distill_steps']} steps of {settings['micro_batch'] * settings['distill_seq_len']:,}
tokens per student.

{times}

Collapse is the longest stage: six small models trained, each then sampled 1,080 times. Its size is synth-collapse's,
so that its figures can be checked against that section; the preset fields collapse_docs,
collapse_sample_tokens and collapse_steps make it smaller. No idle machine was available to time the stages
alone: with other jobs on the 2 cores they took far longer than the issue's "minutes".

**Synthetic Q-A** (as synth-qa: the world's phrasings over the knowledge base, filtered, 5-gram contamination):

{_qa_tables(qa)}

**Model collapse** (as synth-collapse, without accumulate): loss on real held-out text from generation 0 to
{len(gens[0]) - 1}: {_collapse_deltas(gens)}.

{_collapse_table(gens)}

**Token-level distillation** (as synth-distill, JS only): val loss on the first 40 rows of {settings['distill_seq_len']}
tokens of the run's val split, all three models measured alike (float32); fact multiple choice =
world_multiple_choice (all {card['base']['world_multiple_choice']['n']:,} questions, chance 25%).

{markdown_table(["model", "val loss", "fact multiple choice"], distill_rows)}

{_speedrun_reading(run, qa, gens, card)}
"""


def _speedrun_reading(run: Path, qa: dict, gens: list[list[dict]], card: dict) -> str:
    from collections import Counter

    w = qa.get("world's values")
    m = next((v for k, v in qa.items() if k != "world's values"), None)
    rep, mix = gens
    scratch, js, teacher = (card[c]["distill"]["val_loss"] for c in ("distill-scratch", "distill-js", "base"))
    lines = ["Reading, against the synth-* sections. Their run was another cpu speedrun of the same world (seed 0, "
             "default size): the same pretraining text, knowledge base, tokenizer and token shards, but other "
             "models (its pretraining was cut short under load: base val loss 1.338 there).", ""]
    if w:
        u = w["contamination"]["tasks"]["world_unknown_qa"]
        lines.append(f"- Synthetic Q-A from the world's values: {w['filters']['kept']} of "
                     f"{w['filters']['candidates']} kept, {w['filters']['contaminated']} overlapping an eval set, "
                     f"{_pct(u['fraction'])} of world_unknown_qa contaminated: synth-qa's numbers, as they must be "
                     "(the same documents, phrasings and seed; no model involved).")
    if m:
        f = m["filters"]
        kept = [json.loads(line)["messages"][1]["content"]
                for line in (run / "synth-qa" / "sft" / "qa.jsonl").read_text().splitlines() if line.strip()]
        common, n = Counter(kept).most_common(1)[0] if kept else ("", 0)
        lines.append(f"- The run's SFT model reading each document: {f['kept']} of {f['candidates']} pairs kept "
                     f"({f['unverifiable']} answers not in the document), {f['correct']} of the kept right "
                     f"(synth-qa's chat model: 0 kept). The kept ones are not a better reader: "
                     f"{'all' if n == len(kept) else n} {len(kept) if n == len(kept) else 'of them'} answer "
                     f"\"{common}\" (to questions of every kind), kept where the document happens to contain the "
                     "word. The filter checks that the answer is in the document, not that it answers the "
                     "question: it stops almost all of a model that cannot read, but what it lets through is "
                     "mostly wrong. A chat model taught to read passages (the world's --rag-sft rows) is what "
                     "this stage needs to give usable pairs.")
    lines.append("- Model collapse: replace " + " -> ".join(f"{r['val_loss']:.3f}" for r in rep) + ", mix "
                 + " -> ".join(f"{r['val_loss']:.3f}" for r in mix) + " on real held-out text: synth-collapse's "
                 "first generations again (the experiment uses only the world's text and the tokenizer, both the "
                 "same: generation 0 equal to the third decimal, the later ones within 0.002). Keeping half real data holds the loss "
                 f"{rep[-1]['val_loss'] - mix[-1]['val_loss']:.2f} nats lower after {len(rep) - 1} generations; "
                 "the tail loss rises in both modes and faster with replace, distinct-2 rises ("
                 f"{rep[0]['distinct_2']:.2f} -> {rep[-1]['distinct_2']:.2f} with replace) and the samples stop "
                 f"ending ({rep[0]['mean_length']:.0f} -> {rep[-1]['mean_length']:.0f} tokens): errors compounding "
                 "as noise from a weak generation 0, not the narrowing of Shumailov et al. (synth-collapse's "
                 "reading holds).")
    lines.append(f"- Distillation: the scratch student is synth-distill's to the third decimal ({scratch:.3f}: the "
                 f"same shards, initial weights and data order); the teacher is better here ({teacher:.3f} on these "
                 f"rows against 1.338), and JS moved the student by {js - scratch:+.3f} nats (synth-distill: "
                 "-0.030 with the weaker teacher). One seed each: a few hundredths is not an effect. Fact multiple "
                 f"choice: the students {_pct(card['distill-scratch']['world_multiple_choice']['acc'])} (scratch) "
                 f"and {_pct(card['distill-js']['world_multiple_choice']['acc'])} (JS; a standard error is ~1.4 "
                 f"points), near chance (25%) and below the teacher "
                 f"({_pct(card['base']['world_multiple_choice']['acc'])}): at equal steps the teacher's distribution is worth little to a 2 x 64 student that is far from "
                 "fitting the data, as synth-distill found.")
    return "\n".join(lines)


FIGURES = {"constitutional": ("synth-constitutional", figure_constitutional),
           "collapse": ("synth-collapse", figure_collapse),
           "distill": ("synth-distill", figure_distill),
           "seqdistill": ("synth-seqdistill", figure_seqdistill),
           "qa": ("synth-qa", figure_qa),
           "speedrun": ("speedrun-synth", figure_speedrun)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default="constitutional,collapse,distill,seqdistill,qa",
                    help=f"comma-separated, of {', '.join(FIGURES)}")
    ap.add_argument("--run", default="runs/speedrun", help="a finished cpu speedrun (pretrain/model, world, data)")
    ap.add_argument("--work", default="benchmarks/.cache/synth")
    ap.add_argument("--no-write", action="store_true", help="print the sections instead of writing BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="a few steps and rows each, to try the script out")
    ap.add_argument("--resume", action="store_true", help="keep results already in WORK, run the rest")
    ap.add_argument("--sft-steps", type=int, default=250, help="the start model's SFT steps")
    ap.add_argument("--sft-batch-tokens", type=int, default=8192, help="the start model's SFT tokens per step "
                    "(the cpu speedrun's)")
    ap.add_argument("--cai-steps", type=int, default=30, help="SFT steps on the constitutional data")
    ap.add_argument("--cai-lr", type=float, default=3e-4)
    ap.add_argument("--dpo-lr", type=float, default=1e-4)
    ap.add_argument("--dpo-epochs", type=float, default=2.0)
    ap.add_argument("--replay", type=int, default=1, help="the fix: replayed start SFT rows per constitutional row")
    ap.add_argument("--n-unknown", type=int, default=150)
    ap.add_argument("--n-known", type=int, default=150)
    ap.add_argument("--n-arith", type=int, default=100)
    ap.add_argument("--eval-limit", type=int, default=200, help="score the first N rows of each eval file")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--collapse-docs", type=int, default=1200)
    ap.add_argument("--collapse-steps", type=int, default=100)
    ap.add_argument("--distill-steps", type=int, default=120)
    ap.add_argument("--seq-samples", type=int, default=2000)
    ap.add_argument("--chat", help="the chat model for synth-qa (default: the constitutional start model)")
    ap.add_argument("--note", default="", help="speedrun: a sentence added to the load line (e.g. an earlier "
                    "run's times)")
    args = ap.parse_args()
    if args.quick:
        args.sft_steps, args.cai_steps, args.dpo_epochs, args.eval_limit = 3, 2, 0.2, 10
        args.n_unknown = args.n_known = args.n_arith = 24
        args.generations, args.collapse_docs, args.collapse_steps = 1, 100, 3
        args.distill_steps, args.seq_samples = 3, 150
        args.work = args.work + "-quick"
    args.command = command_line()
    write_figures(args, FIGURES)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
