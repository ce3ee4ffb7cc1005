"""The speedrun's recipe, one change at a time: kept or dropped on the numbers (issue 19).

Two kinds of change, two measurements, both written to the section
`speedrun-ablations` of docs/BENCHMARKS.md (negative results included):

  throughput   changes that should only make a step faster (torch.compile of
               the model, fused AdamW, float32 attention under bf16 autocast):
               tokens/s of the speedrun's own pretraining step (the cpu
               preset's model, micro-batch, sequence length and accumulation;
               the loop's train_step) for each variant, taking turns A B C A B C
               (median of --rounds rounds of --steps steps each), so a load
               that drifts is spread over all of them. Compilation time is
               measured on its own. MFU against this CPU's bf16 (AMX) and fp32
               (AVX-512) peaks (acorn.hardware.cpu_peak_flops).

  transfer     a change of the data (mixed training: --mixed-qa) measured on
               the report card's fact questions at equal steps (equal wall time:
               the data change leaves the step's cost as it was): a control and a
               mixed world, the same tokenizer, model, steps and seed; then SFT
               as the speedrun does it (and shorter, to see whether SFT loses what
               pretraining gained); then the world's fact and "I don't know"
               tasks (chat template) and the same fact questions as plain text
               ("Question: ...\\nAnswer:", the mixed documents' format) on the base
               and the SFT models.

    python benchmarks/speedrun_ablations.py throughput            # ~5 min on 2 idle cores
    python benchmarks/speedrun_ablations.py transfer              # small world: ~15 min on 2 idle cores
    python benchmarks/speedrun_ablations.py transfer --size default --steps 667 --batch-tokens 16384
                                                                  # the speedrun's own size (~40 min idle)
    python benchmarks/speedrun_ablations.py write                 # the section from the cached results

Results are cached in benchmarks/.cache/speedrun_ablations/*.json; every
command rewrites the section from all cached results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

OUT = CACHE / "speedrun_ablations"
SECTION = "speedrun-ablations"


# ------------------------------------------------------------------ throughput
def _fp32_attention():
    """scaled_dot_product_attention in float32 under bf16 autocast (q, k, v cast up, the output back)."""
    import torch

    from acorn.model import transformer

    original = transformer.sdpa

    def sdpa32(q, k, v, mask=None, is_causal=False, dropout=0.0):
        with torch.autocast("cpu", enabled=False):
            out = original(q.float(), k.float(), v.float(), None if mask is None else mask, is_causal, dropout)
        return out.to(q.dtype)

    @contextlib.contextmanager
    def patched():
        transformer.sdpa = sdpa32
        try:
            yield
        finally:
            transformer.sdpa = original

    return patched


def throughput(args) -> dict:
    import torch

    from acorn import hardware, speedrun
    from acorn.data.loader import Batch
    from acorn.model.transformer import Transformer
    from acorn.train.loop import accumulation, train_step
    from acorn.train.optim import build_optimizers
    from acorn.train.pretrain import next_token_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    p = speedrun.PRESETS["cpu"]
    cfg = speedrun.pretrain_config(p, OUT, OUT, p.vocab_size, 0)
    device = torch.device("cpu")
    dtype = hardware.resolve_dtype("auto", device)
    hardware.flush_denormals(device)
    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len)
    tokens = accum * cfg.train.micro_batch * cfg.train.seq_len
    g = torch.Generator().manual_seed(0)
    batches = [Batch(x, x) for x in torch.randint(0, p.vocab_size, (accum, cfg.train.micro_batch, cfg.train.seq_len),
                                                   generator=g)]
    fp32_attention = _fp32_attention()

    def variant(name, *, compile=False, fused=False, attn32=False, dt=dtype):
        torch.manual_seed(0)
        model = Transformer(cfg.model)
        cfg.optim.fused = fused
        optimizers = build_optimizers(model, cfg.optim)
        stepped = torch.compile(model) if compile else model
        autocast = functools.partial(hardware.autocast, device, dt)
        context = fp32_attention if attn32 else contextlib.nullcontext

        def step():
            with context():
                train_step(stepped, batches, next_token_loss, optimizers, device=device, autocast=autocast,
                           grad_clip=cfg.optim.grad_clip)

        t0 = time.perf_counter()
        step()  # the first step: compilation (compiled), allocation and kernel warm-up (all)
        first = time.perf_counter() - t0
        return name, step, first

    if args.what == "compile":  # only what a compiled run's first step costs, with the cache as it is
        firsts = {name: variant(name, compile=c)[2] for name, c in (("eager", False), ("torch.compile", True))}
        return {"command": command_line(), "date": today(), "load": os.getloadavg(), "first_step_s": firsts,
                "cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"), "note": args.note}
    variants = [variant("eager (the default)"), variant("torch.compile", compile=True),
                variant("fused AdamW", fused=True), variant("float32 attention", attn32=True),
                variant("float32 everywhere (no autocast)", dt=torch.float32)]
    firsts = {name: first for name, _, first in variants}
    log(f"first steps (compilation, warm-up): {firsts}")
    times = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        for name, step, _ in variants:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {tokens / times[n][-1]:,.0f}" for n in times))
    flops = cfg.model.flops_per_token(cfg.train.seq_len)
    peaks = {"bf16": hardware.cpu_peak_flops(torch.bfloat16), "fp32": hardware.cpu_peak_flops(torch.float32)}
    # Compilation's one-off cost, beyond an eager first step: what a budget pays for it.
    compile_s = firsts["torch.compile"] - firsts["eager (the default)"]
    rows = []
    base = tokens / statistics.median(times["eager (the default)"])
    for name in times:
        tok_s = tokens / statistics.median(times[name])
        rows.append({"variant": name, "tok_s": tok_s, "ratio": tok_s / base,
                     "tok_s_all": [tokens / t for t in times[name]],
                     "mfu_bf16": flops * tok_s / peaks["bf16"] if peaks["bf16"] else None,
                     "mfu_fp32": flops * tok_s / peaks["fp32"] if peaks["fp32"] else None})
    gained = next(r for r in rows if r["variant"] == "torch.compile")["ratio"]
    budget = p.pretrain_minutes * 60
    # Tokens in the pretraining budget compiled vs eager: (budget - compile) * gained vs budget.
    # (The speedrun's stages plan steps for 92% of a budget and pay the probe's compilation out of it.)
    budget_ratio = max(0.0, 0.92 * budget - compile_s) * gained / (0.92 * budget)
    return {"command": command_line(), "machine": machine_description(), "date": today(),
            "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "load": os.getloadavg(), "rounds": args.rounds, "steps": args.steps, "tokens_per_step": tokens,
            "dtype": str(dtype), "flops_per_token": flops, "peaks": peaks, "first_step_s": firsts,
            "compile_s": compile_s, "compile_budget_ratio": budget_ratio, "rows": rows, "note": args.note}


# ------------------------------------------------------------------ transfer
PLAIN_QA_TASK = """task: fact_qa_plain
output_type: generate_until
data: eval/fact_qa.jsonl
doc_to_text: "Question: {{ question }}\\nAnswer:"
doc_to_target: answer
add_bos: true
truncation: skip
generation_kwargs: {until: ["\\n"], max_gen_toks: 24, stop_at: engine}
metrics: [answer_match]
subsets: ["{{ 'in_sft' if in_sft else 'pretrain_only' }}"]
"""


def transfer(args) -> dict:
    from acorn import speedrun
    from acorn.config import load
    from acorn.data.prepare import prepare
    from acorn.eval.harness import evaluate
    from acorn.fileio import write_text
    from acorn.train.pretrain import PretrainConfig, pretrain
    from acorn.train.sft import SFTConfig, sft

    root = OUT / f"transfer-{args.size}-{args.steps}x{args.batch_tokens}-qa{args.mixed_qa}"
    root.mkdir(parents=True, exist_ok=True)
    p = speedrun.PRESETS["cpu"]
    arms = {"control": 0, "mixed": args.mixed_qa}
    worlds = {}
    for arm, n in arms.items():
        worlds[arm] = root / arm / "world"
        if not (worlds[arm] / "manifest.json").exists():
            speedrun.stage_world(worlds[arm], args.size, args.seed, n)
    tok = root / "tokenizer"
    if not (tok / "tokenizer.json").exists():  # one tokenizer for both arms, from the control world (as the speedrun)
        speedrun.stage_tokenizer(worlds["control"], tok, p.vocab_size)
    task = root / "fact_qa_plain.yaml"
    write_text(task, PLAIN_QA_TASK)
    results = {}
    for arm in arms:
        data, base = root / arm / "data", root / arm / "pretrain"
        if not (data / "meta.json").exists():
            prepare([worlds[arm] / "pretrain.jsonl"], tok, data, val_fraction=0.01, quiet=True)
        if not (base / "model" / "config.json").exists():
            log(f"{arm}: pretraining {args.steps} steps of {args.batch_tokens:,} tokens")
            cli = ["--data", str(data), "--out", str(base), "--seed", str(args.seed), "--model.preset", p.model,
                   "--model.vocab_size", "2048", "--model.max_seq_len", str(p.sft_seq_len),
                   "--train.seq_len", str(p.seq_len), "--train.micro_batch", str(p.micro_batch),
                   "--train.batch_tokens", str(args.batch_tokens), "--optim.lr", str(p.lr),
                   "--train.max_steps", str(args.steps), "--optim.warmup_steps", str(max(10, args.steps // 20)),
                   "--eval.every", str(max(1, args.steps // 4)), "--eval.batches", "10", "--eval.checkpoint_every", "0"]
            pretrain(load(PretrainConfig, None, cli))
        columns = {"base": base / "model"}
        for epochs, lr in args.sft:
            default_lr = lr == p.sft_lr
            out = root / arm / (f"sft-{epochs:g}" + ("" if default_lr else f"-lr{lr:g}"))
            if not (out / "model" / "config.json").exists():
                log(f"{arm}: SFT for {epochs:g} epochs at lr {lr:g}")
                cli = ["--data", str(worlds[arm] / "sft.jsonl"), "--init_from", str(base / "model"), "--out", str(out),
                       "--seed", str(args.seed), "--epochs", str(epochs), "--train.max_steps", "0",
                       "--train.seq_len", str(p.sft_seq_len), "--train.micro_batch",
                       str(max(1, p.micro_batch * p.seq_len // p.sft_seq_len)),
                       "--train.batch_tokens", str(args.batch_tokens // 2), "--optim.lr", str(lr),
                       "--eval.every", "0", "--eval.checkpoint_every", "0"]
                sft(load(SFTConfig, None, cli))
            columns[f"sft {epochs:g} epochs" + ("" if default_lr else f", lr {lr:g}")] = out / "model"
        for column, model in columns.items():
            key = f"{arm} / {column}"
            log(f"evaluating {key}")
            chat = evaluate(model, ["world_fact_qa", "world_unknown_qa"], data_dir=worlds[arm], progress=False)
            plain = evaluate(model, [str(task)], data_dir=worlds[arm], progress=False)
            r, q = chat["results"], plain["results"]
            results[key] = {
                "chat_pretrain_only": r["world_fact_qa:pretrain_only"]["answer_match"],
                "chat_in_sft": r["world_fact_qa:in_sft"]["answer_match"],
                "idk": r["world_unknown_qa"]["idk_rate"],
                "plain_pretrain_only": q["fact_qa_plain:pretrain_only"]["answer_match"],
                "plain_in_sft": q["fact_qa_plain:in_sft"]["answer_match"],
                "n_pretrain_only": r["world_fact_qa:pretrain_only"]["n"], "n_in_sft": r["world_fact_qa:in_sft"]["n"],
            }
            log(f"  {key}: {results[key]}")
    people = json.loads((worlds["control"] / "world.json").read_text())["people"]
    manifest = {arm: json.loads((worlds[arm] / "manifest.json").read_text()) for arm in arms}
    return {"command": command_line(), "machine": machine_description(), "date": today(), "size": args.size,
            "steps": args.steps, "batch_tokens": args.batch_tokens, "mixed_qa": args.mixed_qa, "seed": args.seed,
            "sft": args.sft, "load": os.getloadavg(), "note": args.note,
            "people": {s: sum(q["split"] == s for q in people) for s in ("sft", "heldout")},
            "pretrain_tokens": {arm: manifest[arm]["files"]["pretrain.jsonl"]["tokens"] for arm in arms},
            "results": results}


# ------------------------------------------------------------------ the section
# What the figures above meant when they were measured (2026-12-04), and what was decided: the
# ablation log. Rewrite it when a rerun changes the figures.
NOTES = """
### Ablation log (kept or dropped on the numbers)

All figures above were measured with other jobs running on the 2 cores (load average 4-10), with one
thread (OMP_NUM_THREADS=1; under such load torch's two OpenMP threads spin at barriers and run ~5x
slower). Ratios come from runs taking turns in one process; absolute tokens/s are not the idle
machine's (~20,000 tokens/s for the speedrun's step).

| change | measured | decision |
|---|---|---|
| torch.compile of the model (pretraining step) | 1.57x tokens/s once compiled; the first compilation with an empty inductor cache took ~190 s under this load (~5 s more than eager with the cache filled, in a new process). A compiled speedrun stage pays its probe's cold compilation out of its budget, so the 9-minute pretraining budget trains (0.92 x 540 - 189) x 1.57 / (0.92 x 540) = 0.98x the tokens under this load; on an idle machine, with the issue's ~30 s of compilation, ~1.47x (an estimate from these two figures, not measured); SFT's 3.5-minute budget compiles again (rows of 512) and would lose under load. The issue's earlier figure: +23% for ~30 s, idle | **the default since** (section speedrun-compile: measured on the report card on the idle machine, 1.46x tokens/s after 19 s of compiling, 890 vs ~700 pretraining steps, every figure at or above the eager range; `--no-compile` for eager). Before that measurement: not the default, not measured on the report card at equal wall time, its gain depends on the load and the cache, and a fresh clone without a C++ compiler cannot compile at all. Available: `acorn speedrun --compile` (compilation paid out of the budgets); the first thing to measure on an idle machine |
| fused AdamW (`--optim.fused true`) | 1.00x (the earlier attempt: 0.98x): a 1M-parameter model's optimizer step is not where the time goes | dropped; the option stays |
| float32 attention under bf16 autocast | 1.13x in eager (bf16 scaled_dot_product_attention is slower on this CPU than float32 at head_dim 32) | a lead for acorn/model/transformer.py's `sdpa` (not this lane); not measured on the card |
| float32 everywhere (no autocast) | 0.81x | bf16 autocast stays (`dtype auto`) |
| mixed training, `--mixed-qa 4` | on the base model, held-out people's facts asked as plain text: 26.4% vs 1.9% (control), the SFT people's 52.7% vs 0.0%; after SFT (chat template, the report card's question) held-out facts 4.7% vs 5.7% at the speedrun's lr 1e-3, 6.6% vs 4.7% at 3e-4, 3.8% vs 1.9% at 1e-4 (106 questions each: +-2-3 points standard error) | **not the default**: the gain of the base model does not survive SFT; `--mixed-qa` stays an option |
| mixed training in the chat template, `--mixed-qa 4 --mixed-qa-format chat` (default world, section speedrun-mixed-chat) | base model, the report card's chat questions: held-out facts 20.2% vs 0.0% (control), SFT people 35.8% vs 0.0%; after the speedrun's SFT (707 / 540 steps) held-out 10.1% vs 9.0%, SFT people 100% vs 99.8%; at 135 SFT steps held-out 19.1% vs 9.9% but SFT people 69.4% and arithmetic 0% (535 held-out questions: +-1.3 points) | **not the default**: twice the held-out facts only where SFT is too short for the rest of the card; `--mixed-qa-format chat` stays an option |
| replay: pretraining biographies mixed into SFT as text rows, `--sft-replay N` (default world, seed 0's base model, section speedrun-replay) | held-out facts after SFT (516 steps): 12.0% (none) -> 23.7% (250) -> 29.5% (750), 26-29% up to all 12,000; SFT-asked 98-99%, "I don't know" 98-99% throughout to 1,500; arithmetic 43.1% -> 40.0% (250) -> 29.2% (750) -> 8.6% (12,000), 43.3% at 750 with 700 SFT steps (535 held-out questions: +-1.5-2 points) | **the default since** (250: the gain without the arithmetic cost); three seeds of the new default in section speedrun-seeds |
| sentence answers: SFT answers a fact question with "As far as I know, NAME was born in 1959." instead of "1959", `--fact-answers sentence` (default world, seed 0's base model of the new seeds, section speedrun-answers) | the base model completes 96.3% of held-out facts in a biography's words; after SFT (547 steps) held-out facts 13.1% (values) / 21.1% (values, replay 250) -> 49.0% (sentences) / 90.5% (sentences, replay 250); 52.5% without the lead-in (a reply that starts with the name miscopies it); SFT-asked 99.6-100%, "I don't know" 99-100% throughout; arithmetic 51.9% -> 46.7% against the previous default; multiple choice on bare values 81.7% -> 41.9%, on answer sentences 84.4% -> 99.6% | **the default since**, with replay 250 (three seeds, section speedrun-seeds' earlier version: held-out facts 88.4%, "I don't know" 99.9%, arithmetic 44.3%); `--fact-answers value` for the earlier recipe |
| tool SFT: `--tool-sft`'s rows (the calculator called at every size, 1-6 digits, never an eval problem) added to SFT (section speedrun-answers, the same base model and 547 SFT steps) | arithmetic 46.7% -> 95.6% (the default rows call it only for 4-6 digits, and the model miscopied the call's numbers or operator on small problems), held-out facts 90.5% -> 87.9%, the rest unchanged | **the default since** (three seeds in section speedrun-seeds: arithmetic 98.6% / 99.4% / 33.3%, the last a model that calls with a random operator; held-out facts 84.8%, "I don't know" 100%, 12.8-13.1 min); `--no-tool-sft` for the earlier recipe |
| in-context phase after pretraining, `--icl-phase 'copy@200>formats@200>world+formats@200'` (sections icl-phase, icl-phase-bases) | base model world_icl 86.7-88.7% after each of four speedruns' base models (45.0-51.3% before; chance ~41%) where one mixture (`world+copy+formats@400`) crossed after one of them; 87.7% by the harness in a full speedrun of seed 3; 600 more steps, 6.0 min (that run: 18.5 min), facts only in pretraining 74.8% on that seed (the default's three seeds: 81.0-87.2%); with pretraining cut to 5 min to fit: 14.0 min, world_icl 88.3%, facts only in pretraining 44.1% | opt-in: not the default until a version that fits the 15 minutes and keeps the held-out facts is measured over three seeds |
| in-context phase within 15 minutes, and a more robust chain (sections icl-phase-bases, its later paragraphs, and icl-phase-spaced) | pretraining cut to 6.5 min with copy@200>formats@150>world+formats@100: 17.2 min on a slower machine, world_icl 45.3%, facts only in pretraining 42.1%; after that base model the 600-step chain 48.3% (its first failure; after a second 6.5-min base model 47.0%), at half the batch 48.7%, and formats longer, at 1e-3 or 6e-3, mixed with copying or as a curriculum of distances 45.7-52.7%: the formats taught copying only at the one-token distance (`icl.py --probe-formats`); copy@200>spaced@200>formats@200>world+formats@200 (spaced: copying runs with the formats' separators) 84.7% after the first, 46.3% after the second; spaced without the plain copying first 47.0% | no phase fits 15 minutes with the held-out facts kept: the default stays without one; the spaced chain is the lead for a robust opt-in phase (800 steps) |
| in-context patterns in pretraining itself, `--world-icl-docs N --world-icl-style copy+spaced+formats`; the spaced chain at a quarter of the batch; its copying for 400 steps (section icl-phase-spaced, its later paragraph) | 10,000 documents (a third of the pretraining tokens): base world_icl 40.0%, copying at no distance, facts only in pretraining 75.5%; 40,000 (two thirds): 53.7%, copying begun at every distance, facts only in pretraining 11.4%; the spaced chain at 4,096 tokens a step (2.8 min) 50.7% where 16,384 gave 84.7%; copy@400>spaced@200>formats@200>world+formats@200 80.0% / 80.3% by the first token (harness 79.3% / 77.0%) after the two base models the 200-step version split 84.7% / 46.3%; that version end to end in a speedrun (`--icl-phase`, 22.4 min) 74.7% by the harness, facts only in pretraining 39.1%; every stage with the world's text at a sixth (a scratch patch of phase_doc; world+copy@200>world+spaced@200>world+formats@200>world+formats@200 after c1/seed0) 80.7% by the harness with facts as sentences 94.8% (97.4% before) | the option stays, off; no route fits 15 minutes; the 1,000-step chain is the steadiest opt-in phase measured, at the line, not above it |
| the world's text at a sixth of every in-context phase stage, `--icl-world-share 0.1667` (section icl-phase-spaced, its last paragraph) | world+copy@200>world+spaced@200>world+formats@600 in whole speedruns: seed 0 23.4 min, base world_icl 81.0% (harness), facts only in pretraining 89.2%, SFT-asked 100%, "I don't know" 100%, arithmetic 95.8%; seed 1 23.0 min, 79.7%, 95.2%, 99.3%, 99.6%, 83.3%; with world+formats@400 (seed 0): 20.0 min, 76.7%, facts 81.5%; the 600-step version after 3 min of pretraining: 47.7%, facts 12.1%; the 1,000-step chain after c1/seed1 (440 pretraining steps): 52.3%; `--pretrain-minutes 5` with world+copy@200>world+formats@200>world+formats@200 at a sixth: seed 0 14.9 min, 81.0%, facts 66.2%, SFT-asked 78.3% (295 SFT steps); seed 1 16.7 min, 51.3%, facts 79.0%, SFT-asked 99.8%; `--pretrain-minutes 5` with world+copy@150>world+spaced@150>world+formats@300 at a sixth, seed 1: 15.4 min, 81.3%, facts 82.2%, SFT-asked 100%, "I don't know" 100%, arithmetic 96.4%; seed 0: 15.3 min, 38.3%, facts 70.5%; seed 0 with `--pretrain-minutes 6.5 --sft-minutes 2.5`: 16.8 min, 45.3%; seed 2 (steps fitted to the budgets): 14.3 min, 47.0%, facts 74.4%; the 1,000-step chain on seed 2: 24.8 min, 81.3%, facts 91.4%, SFT-asked 100%, "I don't know" 100%, arithmetic 99.4% | the option stays, a third by default; the 1,000-step chain at a sixth is the opt-in `--help` and the README name (at the line on three seeds, 79.7-81.3%, the facts kept, ~23 min); no 15-minute version crossed on more than one seed of those tried (the spaced one: one of three), so the default keeps no phase |
| the training stages' steps fitted to their time budgets as they run, `--train.fit_minutes` (section speedrun-budget), and SFT's budget 3.5 -> 4.5 min | the probe alone: 408 pretraining steps in 4.6 of 5 min; 681 planned, cut at 610 before the schedule decayed; SFT 526 planned, cut at 477; fitted: pretraining 514 planned, 577 run, 4.9 of 5 min; the default with SFT at 3.5 fitted, seed 0: 435 SFT steps, SFT-asked 84.2%; at 4.5, three seeds: 12.4-13.7 min, 525-683 SFT steps, SFT-asked 100%, only in pretraining 76.3-86.4%, "I don't know" 99.6-100%, arithmetic 90.8-99.4% | kept: the default (a stage that runs short of its budget when the pace rises after its first half is left: pretraining 7.9 and 8.1 of 9 min on two seeds) |

Why mixed training's gain is lost after SFT (what was looked at): the SFT models' answers about held-out
people have the right form (a year, a city, a person's name) but the wrong value ("1997" for 1996), so
it is not a format the SFT model cannot produce. Every SFT tried, down to lr 1e-4 (which barely teaches
the chat format: 5.5% on the SFT people's own questions), also destroys the base's plain-text ability
(held out 26.4% -> 5.7 / 7.5 / 9.4%; SFT people 52.7% -> 3.6 / 2.7 / 15.5%): fine-tuning the whole 1M
model moves the weights that held the extraction. The chat template's special tokens are new to the model
(pretraining never sees them), so SFT must move the model some way in any case. What to try next, in that
order: (1) QA documents in the chat template itself in pretraining (special tokens as ids: built since,
`--mixed-qa-format chat`, rendered by `acorn data prepare` with the tokenizer's template; measured
in section speedrun-mixed-chat: the base model then answers 20.2% of held-out facts in the chat template,
SFT of the speedrun's length still takes it back to 10.1% against 9.0%), so SFT has nothing new to teach
about the format; (2) replay: pretraining documents mixed into SFT; (3) the speedrun's default world
(60 biographies per person instead of the small world's 12; the earlier attempt measured 43.9% vs 0.4% on
the base and ~12% after SFT there) with its full budget on an idle machine. These figures are on the small
world at equal steps (300 x 8,192 tokens, ~30 passes) because a full-size pair of runs did not fit the
loaded machine; the default speedrun's card (/tmp/sr/run, this session, also under load) read 3.4%
held-out facts, 77.1% SFT-asked, 100% "I don't know", arithmetic 1.7%.

Goals of issue 19 after this work (updated in section speedrun-compile: compiled, the default now, 1.46x on the idle machine, met there): throughput >= 1.3x **not met** at the default settings of the time (torch.compile's
1.57x steady state is spent on compilation within the budgets under this load; fused AdamW gives nothing);
held-out facts >= 50% **not met** (no recipe change here moved the SFT model's held-out facts beyond noise).
Done: the time estimate before the run, the Recipe section and MFU in report.md, CPU MFU (the nano model
reaches ~18% of one core's AVX-512 fp32 peak and ~1% of its AMX bf16 peak: at width 128 the matmuls are too
small to keep AMX busy).
"""

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def section() -> str:
    parts = ["## Speedrun ablations: the recipe, one change at a time (issue 19)", ""]
    tp_path, tr_paths = OUT / "throughput.json", sorted(OUT.glob("transfer-*.json"))
    if tp_path.exists():
        t = json.loads(tp_path.read_text())
        load = ", ".join(f"{x:.1f}" for x in t["load"])
        parts += ["### Throughput of the pretraining step", "",
                  f"Command: `{t['command']}`  ", f"Date: {t['date']}  ", f"Machine: {t['machine']}  ",
                  f"Threads: {t['threads']} (OMP_NUM_THREADS={t['omp']}); load average at the end {load}"
                  + (f"; {t['note']}" if t.get("note") else ""), "",
                  f"The cpu preset's optimizer step ({t['tokens_per_step']:,} tokens: the nano model, micro-batches "
                  f"of 16 x 256, {t['dtype']} autocast), each variant its own model and optimizer, taking turns "
                  f"round by round ({t['rounds']} rounds of {t['steps']} steps; median tokens/s). MFU: "
                  f"{t['flops_per_token'] / 1e6:.2f} MFLOP per token (6 per weight + attention) x tokens/s over this "
                  f"CPU's peak: bf16 (AMX) {t['peaks']['bf16'] / 1e12:.2f} TFLOP/s, fp32 (AVX-512) "
                  f"{t['peaks']['fp32'] / 1e9:.0f} GFLOP/s at {t['threads']} cores.", "",
                  markdown_table(["variant", "tokens/s (median)", "vs eager", "MFU of bf16 peak", "MFU of fp32 peak",
                                  "all rounds"],
                                 [[r["variant"], f"{r['tok_s']:,.0f}", f"{r['ratio']:.2f}x", _pct(r["mfu_bf16"]),
                                   _pct(r["mfu_fp32"]), " / ".join(f"{x:,.0f}" for x in r["tok_s_all"])]
                                  for r in t["rows"]]), "",
                  f"torch.compile's first step took {t['first_step_s']['torch.compile']:.1f} s against eager's "
                  f"{t['first_step_s']['eager (the default)']:.1f} s: compilation costs ~{t['compile_s']:.0f} s of the "
                  "9-minute pretraining budget (the stage plans steps for 92% of it and pays its probe's compilation "
                  f"out of that), so a compiled run trains {max(0.0, 0.92 * 540 - t['compile_s']) * next(r['ratio'] for r in t['rows'] if r['variant'] == 'torch.compile') / (0.92 * 540):.2f}x the eager run's tokens in the "
                  "same budget (before SFT compiles again).", ""]
    c_path = OUT / "compile.json"
    if c_path.exists():
        c = json.loads(c_path.read_text())
        parts += [f"Compilation again in a new process with the inductor cache the run above filled (as a speedrun's "
                  f"training stage finds it after its throughput probe compiled): first step "
                  f"{c['first_step_s']['torch.compile']:.1f} s compiled vs {c['first_step_s']['eager']:.1f} s eager "
                  f"(`{c['command']}`, {c['date']}, load average {c['load'][0]:.1f}"
                  + (f"; {c['note']}" if c.get("note") else "") + ").", ""]
    for path in tr_paths:
        t = json.loads(path.read_text())
        load = ", ".join(f"{x:.1f}" for x in t["load"])
        res = t["results"]
        parts += [f"### Mixed training (--mixed-qa {t['mixed_qa']}) and knowledge transfer, world `{t['size']}`", "",
                  f"Command: `{t['command']}`  ", f"Date: {t['date']}  ", f"Machine: {t['machine']}  ",
                  f"Load average at the end: {load}" + (f"; {t['note']}" if t.get("note") else ""), "",
                  f"World `{t['size']}` (seed {t['seed']}: {t['people']['sft']} people whose facts SFT asks, "
                  f"{t['people']['heldout']} held out), pretraining {t['steps']} steps of {t['batch_tokens']:,} tokens "
                  f"for both arms (control: {t['pretrain_tokens']['control']:,} world tokens; mixed: "
                  f"{t['pretrain_tokens']['mixed']:,}, the difference being {t['mixed_qa']} QA documents per fact of the "
                  "SFT people), the cpu preset's model and settings otherwise, one tokenizer; SFT as the speedrun "
                  "(rows of 512) for the epochs shown, at its lr 1e-3 unless the row says another. Fact questions exact match: `chat` is the report "
                  "card's world_fact_qa (the chat template), `plain` the same questions as \"Question: ...\\nAnswer:\" "
                  "text after BOS; `held out` = facts only biographies stated (pretrain_only), `SFT people` = in_sft "
                  f"({next(iter(res.values()))['n_pretrain_only']} and {next(iter(res.values()))['n_in_sft']} "
                  "questions).", "",
                  markdown_table(["model", "held out, chat", "held out, plain", "SFT people, chat", "SFT people, plain",
                                  "\"I don't know\""],
                                 [[k, _pct(v["chat_pretrain_only"]), _pct(v["plain_pretrain_only"]),
                                   _pct(v["chat_in_sft"]), _pct(v["plain_in_sft"]), _pct(v["idk"])]
                                  for k, v in res.items()]), ""]
    parts += [NOTES.strip(), ""]
    return "\n".join(parts)


def _sft_variants(text: str) -> list[tuple[float, float]]:
    return [(float(e), float(lr)) for e, lr in (v.split("@") for v in text.split(","))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("throughput", help="tokens/s of the pretraining step per variant, side by side")
    a.add_argument("--rounds", type=int, default=7, help="rounds of turns (default: 7)")
    a.add_argument("--steps", type=int, default=3, help="optimizer steps per variant per round (default: 3)")
    a.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    c = sub.add_parser("compile", help="the first step's time, compiled vs eager, with the inductor cache as it is "
                       "(TORCHINDUCTOR_CACHE_DIR)")
    c.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    b = sub.add_parser("transfer", help="mixed QA vs control at equal steps: fact questions, chat and plain")
    b.add_argument("--size", default="small", help="world size (default: small)")
    b.add_argument("--steps", type=int, default=250, help="pretraining steps (default: 250)")
    b.add_argument("--batch-tokens", type=int, default=8192, help="pretraining tokens per step (default: 8192)")
    b.add_argument("--mixed-qa", type=int, default=4, help="QA pairs per fact of the SFT people (default: 4)")
    b.add_argument("--sft", type=_sft_variants, default=_sft_variants("6.6@1e-3,1.5@1e-3"),
                   help="SFT variants to try, EPOCHS@LR comma-separated (default: 6.6@1e-3,1.5@1e-3; 6.6 epochs "
                   "at 1e-3 is the cpu speedrun's SFT)")
    b.add_argument("--seed", type=int, default=0)
    for s in (a, b, c):
        s.add_argument("--note", default="", help="a remark for the report (e.g. 'measured with other jobs running')")
    sub.add_parser("write", help="rewrite the section from the cached results")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "throughput":
        result = throughput(args)
        (OUT / "throughput.json").write_text(json.dumps(result, indent=1))
    elif args.what == "compile":
        (OUT / "compile.json").write_text(json.dumps(throughput(args), indent=1))
    elif args.what == "transfer":
        result = transfer(args)
        name = f"transfer-{args.size}-{args.steps}x{args.batch_tokens}-qa{args.mixed_qa}.json"
        (OUT / name).write_text(json.dumps(result, indent=1))
    write_section(SECTION, section())
    log(f"wrote section {SECTION} of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
