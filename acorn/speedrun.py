"""`acorn speedrun`: the whole pipeline on the built-in world, one command.

In the spirit of nanochat's speedrun: every stage runs in order on data that
exists on every machine, says what it does and how long it will take, and the
run directory ends with a report.md a person can read:

  world -> tokenizer -> token shards -> pretrain -> SFT -> evaluation -> samples -> report

Presets size the run to the hardware. The default, `cpu`, is tuned to finish
within 15 minutes on a 2-core CPU: pretraining and SFT get fixed time budgets,
and their step counts are derived from a measured throughput, so a faster
machine trains more steps rather than finishing early with a worse model.

The report ends with a report card (as nanochat's): the eval harness's
numbers (acorn.eval, the built-in world's tasks) for each model the run
made, a column per model: base (after pretraining), sft, and each later
stage's. The stages after training are a registry (STAGES: name -> a
function of the finished run returning its summary and its card columns,
{column: {task: metrics}}); `acorn speedrun --out RUN --stages NAME,...`
runs the named ones over an existing run directory, reusing its world and
models, and adds their columns to the same card. A later capability
(alignment, retrieval, agents) adds its before/after numbers by registering
a stage here with register_stage (this module is the layer above them all).
Two such stages, off by default, train from the run's SFT model:

  align  ORPO (Hong et al. 2024) on the world's preference pairs, the method
         and settings that measured an effect here (docs/BENCHMARKS.md,
         align-hallucination); column "align": the world's tasks
  grpo   GRPO (Shao et al. 2024) on the world's arithmetic prompts with the
         exact-match reward; column "grpo": world_arithmetic

and three more run the synthetic-data experiments of acorn.synth on the run's
own world, tokenizer and models (docs/BENCHMARKS.md, speedrun-synth):

  synth-qa  question-answer pairs from the knowledge base, answered by the world's
            values and by the SFT model, filtered, checked for contamination against
            the eval sets; columns "synth-qa-world", "synth-qa-sft": pairs kept,
            share correct, pairs overlapping an eval set, contaminated fraction per task
  collapse  model collapse (Shumailov et al. 2024): generations trained on their
            predecessor's samples, replace vs mix with real text; columns
            "collapse-replace", "collapse-mix": loss on real held-out text and on its
            tail, distinct-2, at generation 0 and the last; the plot in the report
  distill   a small student from scratch vs distilled (Hinton et al. 2015; JS) from
            the pretrained model, the same steps; columns "distill-scratch",
            "distill-js" (and the teacher's in "base"): val loss, fact multiple choice

(also `injection`: the prompt-injection suite on the chat models, `benchmarks`:
the lm-eval tasks of ../shared/data/eval on base and SFT, and `vlm`: pictures of
the run's world, CLIP, LLaVA's two stages over the SFT model; column "vlm":
image question accuracy per kind, vlm_count ... vlm_fact_held).

Before the first stage the run prints a time estimate (`estimate`): the
training stages are time budgets, and the rest is scaled from a reference
machine by a throughput probe of a few real training steps; the probe also
says how many tokens pretraining will see here. The report says which recipe
made it (a "Recipe" section: world, tokenizer, model shape, batch, optimizer,
schedule, precision, compile, fused AdamW, mixed QA) and the pretraining MFU
against this machine's peak (acorn.hardware.peak_flops; on a CPU its AMX/AVX-512
peak). The recipe's knobs are preset fields; benchmarks/speedrun_ablations.py
measures each change on the report card and keeps the default only where the
numbers say so.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from acorn.errors import AcornError
from acorn.fileio import write_json, write_text


@dataclass(frozen=True)
class SpeedrunPreset:
    world: str
    vocab_size: int
    model: str  # a ModelConfig preset
    seq_len: int
    sft_seq_len: int  # conversations with a tool schema in the system prompt need ~300 tokens
    micro_batch: int
    batch_tokens: int
    pretrain_minutes: float
    sft_minutes: float
    lr: float
    sft_lr: float
    eval_limit: int | None
    note: str
    # The optional stages over a finished run (`--stages align,grpo`), sized to the preset:
    align_steps: int = 0  # ORPO steps of the align stage; 0: 3 epochs of the world's pairs (~100 on cpu)
    grpo_steps: int = 100  # GRPO steps of the grpo stage (16 prompts x 8 samples each)
    synth_qa_docs: int = 0  # knowledge-base documents the synth-qa stage asks 5 questions each about; 0: all
    collapse_docs: int = 1200  # real pretraining documents of the collapse stage (a tenth held out); 0: all
    collapse_generations: int = 2  # generations after generation 0 in each collapse mode (replace, mix)
    collapse_steps: int = 100  # steps of 4,096 tokens each collapse generation's fresh model trains
    collapse_sample_tokens: int = 128  # most tokens of each document a collapse generation samples
    distill_steps: int = 120  # steps of each distill student (from scratch, distilled), one micro-batch each
    distill_seq_len: int = 256  # the distill stage's rows, trained on and in its val loss (<= the val split's tokens)
    vlm_clip_steps: int = 3000  # CLIP steps of the vlm stage (`acorn clip train`'s default: 4-8 min on 2 busy cores)
    vlm_stage1_steps: int = 0  # LLaVA stage 1 (projector) steps of the vlm stage; 0: `acorn vlm train`'s (3 epochs)
    vlm_stage2_steps: int = 0  # LLaVA stage 2 (projector + decoder) steps; 0: `acorn vlm train`'s (4 epochs)
    # Recipe knobs (docs/BENCHMARKS.md, speedrun-ablations: measured before any became a default):
    mixed_qa: int = 0  # world --mixed-qa: QA pairs per fact of the SFT people among the pretraining documents
    mixed_qa_format: str = "plain"  # world --mixed-qa-format: those pairs as plain text or in the chat template
    compile: bool = False  # torch.compile the model for pretraining and SFT (the probe pays and counts the compile)
    sft_replay: int = 0  # replay: this many pretraining biographies (at random) mixed into SFT as text rows
    fact_answers: str = "value"  # world --fact-answers: SFT answers a fact question with the bare value or a sentence
    tool_sft: bool = False  # world --tool-sft: SFT also calls the calculator at every size (1-6 digits)
    fused_adamw: bool = False  # AdamW as one fused kernel
    # The in-context phase (docs/BENCHMARKS.md, icl-phase and icl-phase-bases): after pretraining,
    # a chain of designs of in-context documents (acorn.data.world.parse_phase, phase_doc), each
    # trained from the model the one before left for its @STEPS, on icl_docs documents of its own,
    # so the base model learns to follow a label mapping shown in its prompt:
    # "copy@200>formats@200>world+formats@200" copies plain runs of the world's words first, then
    # reads repeated-induction lines in five formats, then those with the world's text again: it
    # took five base models of seven to 86.7-88.7% on world_icl (chance ~41%; single mixtures crossed
    # after some and not others). After the other two (6.5-minute pretrainings) it stayed at 47-48%:
    # after one its formats stage taught copying only at the one-token distance, and "spaced" copying
    # runs (the formats' separators between the words) before the formats made it cross (84.7%);
    # after the other its copying runs left plain induction unformed (57%) and neither crossed;
    # copy@400>spaced@200>formats@200>world+formats@200 put both at the line (80.0%, 80.3%)
    # (docs/BENCHMARKS.md, icl-phase-bases, icl-phase-spaced). The world's text at a sixth of every
    # stage (icl_world_share) keeps the world's facts: world+copy@200>world+spaced@200>world+formats@600
    # with icl_world_share=1/6 took whole speedruns' base models to 81.0%, 79.7% and 81.3% (seeds 0-2)
    # with facts only in pretraining at 89.2-95.2% (~23 min; the world-free spaced chain: 74.7%, 39.1%).
    # Off ("") in the cpu preset: a phase's 600-1,000 steps cost 6-10 minutes, which take the run past
    # its 15, and no 15-minute version was robust: with pretrain_minutes=5 and a 600-step chain at a
    # sixth, world+copy@200>world+formats@200>world+formats@200 crossed on seed 0 and not seed 1
    # (51.3%); world+copy@150>world+spaced@150>world+formats@300 on seed 1 (81.3%, 15.4 min) and not
    # seeds 0 and 2 (38.3%, 47.0%) (icl-phase-spaced).
    icl_phase: str = ""
    icl_docs: int = 80_000
    # The world's text in each world+STYLE design of the phase (phase_doc's world_share): a third
    # by default (the share the measured chains with world+formats last were made with).
    icl_world_share: float = 1 / 3
    # In-context documents in the pretraining world itself (world --icl-docs/--icl-style): N documents
    # of a style instead of the world's own episodes (1,500 by default), no phase. Off (0): 10,000 of
    # copy+spaced+formats (a third of the pretraining tokens) left the base model copying at no
    # distance (world_icl 40.0%); 40,000 (two thirds) began copying at every distance but did not
    # transfer (53.7%) and lost the world (facts only in pretraining 11.4%); docs/BENCHMARKS.md,
    # icl-phase-spaced.
    world_icl_docs: int = 0
    world_icl_style: str = "repeats"


PRESETS = {
    # Facts are learned by seeing them many times: on a CPU the 1M-parameter model,
    # three times faster than the 5M one, gets ~10 passes over the world in the
    # budget and has capacity to spare for its ~1,200 facts.
    # Compiled (docs/BENCHMARKS.md, speedrun-compile): on the idle 2-core machine the compiled step
    # ran at 1.46x the eager probe's tokens/s after ~20 s of compilation (890 pretraining steps in
    # the budget against ~700 eager) and every figure of the report card rose; under heavy load a
    # cold compile costs ~3 minutes and the budget trains about what eager would (0.98x).
    # Where compiling fails (no C++ compiler), the stage says so and trains eagerly.
    # Replay (docs/BENCHMARKS.md, speedrun-replay): 250 of the world's biographies mixed into SFT
    # doubled the facts only biographies state (12.0% -> 23.7% at the run's 516 SFT steps) with the
    # rest of the card within its noise; more replay lifted them a little more (29.5% at 750) but
    # took SFT's passes from arithmetic (43% -> 29%) unless SFT ran longer.
    # Sentence answers (docs/BENCHMARKS.md, speedrun-answers): SFT answering "As far as I know,
    # NAME was born in 1959." instead of "1959" lets the chat model use the lookup the
    # biographies taught ("NAME was born in" -> the year) for people SFT never asked about.
    # Tool SFT (speedrun-answers): SFT rows that call the calculator at every size, not only for
    # large problems, took arithmetic from 47% to 96% at the same SFT steps.
    # SFT's 4.5 minutes: with its steps fitted to the budget (LoopConfig.fit_minutes) instead of
    # overrunning it by up to a tenth, 3.5 gave 435 steps on a slower 2-core machine and the asked
    # facts fell to 84.2% (seed 0); every run with 477 or more SFT steps had them at 92-100%
    # (docs/BENCHMARKS.md, speedrun-budget).
    "cpu": SpeedrunPreset("default", 2048, "nano", 256, 512, 16, 16384, 9.0, 4.5, 3e-3, 1e-3, None,
                          "~15 min on a 2-core CPU, ~1 GB of memory", compile=True, sft_replay=250,
                          fact_answers="sentence", tool_sft=True),
    "tiny": SpeedrunPreset("tiny", 512, "nano", 128, 128, 8, 2048, 0.1, 0.05, 3e-3, 1e-3, 20,
                           "under a minute; checks the pipeline end to end, not for results",
                           align_steps=2, grpo_steps=2, synth_qa_docs=3, collapse_docs=0, collapse_generations=1,
                           collapse_steps=2, collapse_sample_tokens=64, distill_steps=2, distill_seq_len=64,
                           vlm_clip_steps=20, vlm_stage1_steps=2, vlm_stage2_steps=2, fact_answers="sentence",
                           tool_sft=True, icl_phase="copy@2>world+formats@2", icl_docs=60),
    # Measured on one H200 (docs/BENCHMARKS.md, speedrun-gpu): pretraining at 388K tokens/s eager
    # (24% MFU, 17.2 GiB) and 635K compiled (39% MFU, 12.6 GiB) after ~32 s of compilation, which
    # a 30-minute stage repays many times over: compiled by default here (not on the CPU, where
    # compilation under load costs minutes; speedrun-ablations).
    "gpu": SpeedrunPreset("large", 8192, "d12", 1024, 1024, 32, 262144, 30.0, 10.0, 1e-3, 3e-4, None,
                          "an 82M-parameter model on one GPU; ~45 min estimated (its budgets), ~13 GB measured",
                          compile=True),
}


# The stages around training (world, tokenizer, data, the throughput probes, eval, samples, saving)
# on a reference machine, at the pretraining throughput its probe measured there: (seconds,
# tokens/s). cpu: the idle 2-core Xeon of docs/BENCHMARKS.md (speedrun section): 11.7-12.4 min in
# all, of which ~20 s outside the two training budgets, at ~20,000 tokens/s. The estimate scales
# them by the probe's tokens/s here; presets without a measured reference leave them out (and say so).
REFERENCE_OTHER_STAGES = {"cpu": (20.0, 20000.0)}


@dataclass
class StageResult:
    name: str
    seconds: float
    summary: dict = field(default_factory=dict)


def _stage(title: str, estimate: str, results: list[StageResult], fn, *args, name: str | None = None, **kwargs):
    """Run one stage with a header line, what it will take, and its wall time."""
    print(f"\n== [{len(results) + 1}] {title} ({estimate})", flush=True)
    t0 = time.perf_counter()
    summary = fn(*args, **kwargs) or {}
    dt = time.perf_counter() - t0
    results.append(StageResult(name or title.split(":")[0], dt, summary))
    print(f"   done in {_fmt_time(dt)}", flush=True)
    return summary


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------ stages
def stage_world(out: Path, size: str, seed: int, mixed_qa: int = 0, mixed_qa_format: str = "plain",
                fact_answers: str = "value", tool_sft: bool = False, icl_docs: int = 0,
                icl_style: str = "repeats") -> dict:
    from acorn.data.world import generate_world

    # overwrite: a rerun of a stopped speedrun redoes it
    return generate_world(out, seed=seed, size=size, overwrite=True, mixed_qa=mixed_qa,
                          mixed_qa_format=mixed_qa_format, fact_answers=fact_answers, tool_sft=tool_sft,
                          icl_docs=icl_docs, icl_style=icl_style)


def stage_tokenizer(world_dir: Path, out: Path, vocab_size: int) -> dict:
    import warnings

    from acorn.tokenizer.bpe import Tokenizer

    # The tokenizer sees the pretraining documents and the conversations, so
    # the world's names and numbers are single tokens where frequent.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small world supports fewer merges; the size is reported
        tok = Tokenizer.train([world_dir / "pretrain.jsonl", world_dir / "sft.jsonl"], vocab_size)
    tok.save(out)
    print(f"   {tok.vocab_size} tokens ({len(tok.special_tokens)} special) -> {out}")
    return {"vocab_size": tok.vocab_size, "special_tokens": len(tok.special_tokens), "path": str(out)}


def stage_tokenizer_eval(world_dir: Path, tok_dir: Path, out: Path) -> dict:
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.tokenizer.counting import compare_bytes_per_token, format_table

    # Held-out prose: knowledge-base documents about people who never appear in
    # pretraining, as plain text (not JSONL, whose quotes and keys the
    # tokenizer never trained on).
    held_out = out / "heldout.txt"
    write_text(held_out, "\n\n".join(_jsonl_texts([world_dir / "knowledge_base.jsonl"])) + "\n")
    toks = {"acorn (this run)": Tokenizer.from_pretrained(tok_dir), "gpt2": Tokenizer.from_pretrained("gpt2")}
    rows = compare_bytes_per_token(toks, [held_out])
    print("\n".join("   " + line for line in format_table(rows).splitlines()))
    return {"rows": rows, "command": f"acorn tokenizer eval {tok_dir} {held_out} --compare gpt2"}


def stage_prepare(world_dir: Path, tok_dir: Path, out: Path) -> dict:
    from acorn.data.prepare import prepare

    return prepare([world_dir / "pretrain.jsonl"], tok_dir, out, val_fraction=0.01, quiet=True)


def _recipe_args(p: SpeedrunPreset) -> list[str]:
    """The training settings every stage's command line shares: compile and the fused optimizer."""
    return ["--train.compile", str(p.compile).lower(), "--optim.fused", str(p.fused_adamw).lower()]


def for_steps(cfg, steps: int, init_from: Path | None = None, time_limit: bool = False):
    """A pretraining config set to `steps` steps (warmup a twentieth of them, at least 10), from
    the model at `init_from` if given, without its time limit unless `time_limit`: the
    pretraining stage's schedule, also the in-context phase's and benchmarks/icl.py's."""
    cfg.train.max_steps = steps
    cfg.train.max_minutes = cfg.train.max_minutes if time_limit else None
    cfg.optim.warmup_steps = max(10, steps // 20)
    if init_from is not None:
        cfg.init_from = str(init_from)
    return cfg


def pretrain_config(p: SpeedrunPreset, data: Path, out: Path, vocab_size: int, seed: int):
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig

    args = ["--data", str(data), "--out", str(out), "--seed", str(seed), "--model.preset", p.model,
            "--model.vocab_size", str(vocab_size), "--model.max_seq_len", str(max(p.seq_len, p.sft_seq_len)),
            "--train.seq_len", str(p.seq_len), "--train.micro_batch", str(p.micro_batch),
            "--train.batch_tokens", str(p.batch_tokens), "--optim.lr", str(p.lr),
            "--train.max_minutes", str(p.pretrain_minutes * 1.1), "--eval.every", "100", "--eval.batches", "10",
            "--eval.checkpoint_every", "0", *_recipe_args(p)]
    return load(PretrainConfig, None, args)


def _fresh_compiler(p: SpeedrunPreset) -> None:
    """Before a compiled training stage: forget the graphs of the models of earlier stages.
    dynamo keeps them on Transformer.forward's code object, shared by every model of the
    process, and stops compiling a function after config.recompile_limit (8) variants: the
    pretraining stage's probe, training and evaluation models filled that, so SFT's training
    model used to run eagerly at a compiled probe's step count (its stage overran)."""
    if not p.compile:
        return
    import torch

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)


def stage_pretrain(p: SpeedrunPreset, data: Path, out: Path, vocab_size: int, seed: int) -> dict:
    from acorn.train.pretrain import pretrain

    _fresh_compiler(p)
    cfg = pretrain_config(p, data, out, vocab_size, seed)
    steps = _steps_for(cfg, p.pretrain_minutes)  # a first plan; the loop fits it to the budget as it runs
    cfg = for_steps(cfg, steps, time_limit=True)
    cfg.train.fit_minutes = p.pretrain_minutes * STEP_SHARE
    pretrain(cfg)
    return _last_metrics(out)


def icl_dirs(run: Path, chain: list[tuple[str, int]]) -> list[tuple[Path, Path]]:
    """(model folder, data folder) of each design of an in-context phase's chain in run folder
    `run`: RUN/pretrain-icl-N-DESIGN and RUN/data-icl-N-DESIGN, the last RUN/pretrain-icl and
    RUN/data-icl (the base model's)."""
    last = len(chain)
    return [(run / ("pretrain-icl" if i == last else f"pretrain-icl-{i}-{d}"),
             run / ("data-icl" if i == last else f"data-icl-{i}-{d}")) for i, (d, _) in enumerate(chain, 1)]


def stage_icl(p: SpeedrunPreset, world_dir: Path, tok_dir: Path, pretrained: Path, out: Path, vocab_size: int,
              seed: int) -> dict:
    """The in-context phase (SpeedrunPreset.icl_phase): from the pretrained model, each design of
    the chain in turn, p.icl_docs documents of it (phase_doc) and its steps of pretraining on them
    from the model the one before left, at pretraining's settings (a fresh warmup and cosine decay
    each). The last design's model is `out` (RUN/pretrain-icl), the others RUN/pretrain-icl-N-DESIGN."""
    import random

    from acorn.data.prepare import prepare
    from acorn.data.world import build_world, icl_pools, parse_phase, phase_doc
    from acorn.fileio import read_jsonl, write_jsonl
    from acorn.train.pretrain import pretrain

    chain = parse_phase(p.icl_phase)
    rng, pools = random.Random(f"{seed}-icl"), icl_pools(build_world(seed, p.world))
    texts = [r["text"] for r in read_jsonl(world_dir / "pretrain.jsonl")] if any(
        d.startswith("world") for d, _ in chain) else []
    for (design, steps), (model, data) in zip(chain, icl_dirs(out.parent, chain)):
        write_jsonl(data / "docs.jsonl", [{"text": phase_doc(design, rng, pools, texts, p.icl_world_share)}
                                          for _ in range(p.icl_docs)])
        prepare([data / "docs.jsonl"], tok_dir, data, val_fraction=0.01, quiet=True)
        _fresh_compiler(p)
        pretrain(for_steps(pretrain_config(p, data, model, vocab_size, seed), steps, pretrained))
        pretrained = model / "model"
    tokens = sum(_metric_rows(model)[-1]["tokens"] for model, _ in icl_dirs(out.parent, chain))  # every design's
    return _last_metrics(out) | {"phase": p.icl_phase, "steps": sum(n for _, n in chain), "docs": p.icl_docs,
                                 "tokens": tokens}


def base_model(out: Path) -> Path:
    """A speedrun's base model: the in-context phase's where it had one, else pretraining's."""
    out = Path(out)
    return out / "pretrain-icl" / "model" if (out / "pretrain-icl" / "model").is_dir() else out / "pretrain" / "model"


def replay_docs(world_dir: Path, n: int, out: Path, seed: int = 0) -> Path:
    """`n` of the world's pretraining biographies, drawn at random (seeded), as SFT text rows in
    `out` (replay: the fine-tune keeps reading what pretraining taught, so it does not unlearn
    the facts of the people SFT never asks about; docs/BENCHMARKS.md, speedrun-replay)."""
    import random

    from acorn.fileio import read_jsonl, write_jsonl

    bios = [r["text"] for r in read_jsonl(world_dir / "pretrain.jsonl") if r.get("kind") == "biography"]
    if not bios:
        raise AcornError(f"{world_dir / 'pretrain.jsonl'} holds no biographies to replay")
    random.Random(seed).shuffle(bios)
    write_jsonl(out, [{"text": t} for t in bios[:n]])
    return out


def stage_sft(p: SpeedrunPreset, world_dir: Path, base: Path, out: Path, seed: int, steps: int | None = None) -> dict:
    """SFT of the base model on the world's conversations (and replayed biographies: p.sft_replay),
    for the steps the preset's budget fits here (a throughput probe), or exactly `steps`."""
    from acorn.config import load
    from acorn.train.sft import SFTConfig, sft

    data = [world_dir / "sft.jsonl"]
    if p.sft_replay:
        data.append(replay_docs(world_dir, p.sft_replay, out.parent / "sft_replay.jsonl", seed))
    args = ["--data", ",".join(map(str, data)), "--init_from", str(base), "--out", str(out), "--seed", str(seed),
            "--train.seq_len", str(p.sft_seq_len), "--train.micro_batch", str(max(1, p.micro_batch * p.seq_len // p.sft_seq_len)),
            "--train.batch_tokens", str(p.batch_tokens // 2), "--optim.lr", str(p.sft_lr),
            "--train.max_minutes", str(p.sft_minutes * 1.1), "--eval.every", "50", "--eval.batches", "10",
            "--eval.checkpoint_every", "0", *_recipe_args(p)]
    cfg = load(SFTConfig, None, args)
    _fresh_compiler(p)
    if steps is None:  # a first plan; the loop fits it to the budget as it runs
        steps = _steps_for(cfg, p.sft_minutes, init_from=base, share=SFT_STEP_SHARE)
        cfg.train.fit_minutes = p.sft_minutes * SFT_STEP_SHARE
    else:
        cfg.train.max_minutes = None  # the steps alone end it
    cfg.train.max_steps = steps
    sft(cfg)
    return _last_metrics(out)


# ------------------------------------------------------------------ stages over a finished run
@dataclass
class Run:
    """A run directory and the settings that made it: what a registered stage reads."""
    out: Path
    preset_name: str
    preset: SpeedrunPreset
    seed: int

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def base(self) -> Path:  # the base model: after the in-context phase where the run had one
        return base_model(self.out)

    @property
    def sft(self) -> Path:  # the chat model
        return self.out / "sft" / "model"

    @property
    def data(self) -> Path:  # the pretraining token shards
        return self.out / "data"

    def need(self, *paths: Path) -> None:
        for path in paths:
            if not path.exists():
                raise AcornError(f"{path}: missing; this stage reuses a finished run (`acorn speedrun --out {self.out}`)")


@dataclass(frozen=True)
class Stage:
    name: str
    title: str  # what it does, printed in its header
    estimate: str  # how long it takes on the default preset
    fn: Callable[[Run], dict]  # -> its summary; "card": {column: {task: metrics}} goes on the report card
    default: bool  # part of `acorn speedrun`; otherwise only by --stages


STAGES: dict[str, Stage] = {}


def register_stage(name: str, fn: Callable[[Run], dict], *, title: str, estimate: str,
                   default: bool = False) -> None:
    STAGES[name] = Stage(name, title, estimate, fn, default)


def _evaluate(run: Run, column: str, model: Path, tasks: list[str], stage: str, **options) -> dict:
    """The harness on one model of the run; its files in RUN/STAGE/COLUMN
    (results.json, results.md, samples_TASK.jsonl)."""
    from acorn.eval.harness import evaluate
    from acorn.eval.results import save

    out = evaluate(model, tasks, progress=False, **options)
    save(out, run.out / stage / column)
    return out["results"]


def stage_eval(run: Run) -> dict:
    run.need(run.world, run.base, run.sft)
    card = {}
    for column, model in (("base", run.base), ("sft", run.sft)):
        card[column] = r = _evaluate(run, column, model, ["world"], "eval", data_dir=run.world,
                                     limit=run.preset.eval_limit)
        print(f"   {column}: fact QA {r['world_fact_qa']['answer_match']:.1%} (asked in SFT "
              f"{_get(r, 'world_fact_qa:in_sft', 'answer_match'):.1%}, only in pretraining "
              f"{_get(r, 'world_fact_qa:pretrain_only', 'answer_match'):.1%}); \"I don't know\" for unknown people "
              f"{r['world_unknown_qa']['idk_rate']:.1%}; arithmetic {r['world_arithmetic']['answer_match']:.1%}; "
              f"multiple choice {r['world_multiple_choice']['acc']:.1%} (choices as answer sentences "
              f"{_get(r, 'world_multiple_choice_sentence', 'acc'):.1%})", flush=True)
    return {"card": card, "results": [str(run.out / "eval" / c / "results.json") for c in card]}


# The lm-eval-style tasks whose data is in ../shared/data/eval (gsm8k's 256
# generated tokens per question are left out: minutes, and a world model
# cannot do it). Near chance for a model that only read the world: they show
# what the world does not teach.
BENCHMARK_TASKS = ["arc_easy", "arc_challenge", "piqa", "lambada_openai"]
BENCHMARK_LIMIT = 200


def stage_benchmarks(run: Run) -> dict:
    run.need(run.base, run.sft)
    card = {}
    for column, model in (("base", run.base), ("sft", run.sft)):
        card[column] = r = _evaluate(run, column, model, BENCHMARK_TASKS, "benchmarks", limit=BENCHMARK_LIMIT)
        print("   " + column + ": " + ", ".join(f"{t} {r[t].get('acc', 0):.1%}" for t in BENCHMARK_TASKS), flush=True)
    return {"card": card, "limit": BENCHMARK_LIMIT}


def stage_samples(run: Run) -> dict:
    from acorn.infer.engine import Engine

    run.need(run.sft)
    engine = Engine.from_pretrained(run.sft)
    out = []
    for q in _sample_questions(run.world):
        c = engine.chat([{"role": "user", "content": q}], temperature=0.0, max_new_tokens=32)
        out.append({"question": q, "answer": c.text})
        print(f"   Q: {q}\n   A: {c.text}")
    return {"samples": out}


register_stage("eval", stage_eval, default=True, estimate="about half a minute",
               title="eval: the world's tasks (facts, unknowns, arithmetic, multiple choice, in-context) on base and SFT")
register_stage("samples", stage_samples, default=True, estimate="seconds",
               title="samples: a few answers from the chat model")
register_stage("benchmarks", stage_benchmarks, estimate="a minute",
               title=f"benchmarks: {', '.join(BENCHMARK_TASKS)} (first {BENCHMARK_LIMIT}) on base and SFT")


# Preference optimisation as docs/BENCHMARKS.md (align-hallucination) measured it on this world:
# of DPO, IPO, KTO, ORPO and SimPO from one chat model, only ORPO (lr 3e-4, beta 0.1, 3 epochs of
# 32 pairs a step, sequences of 128 tokens) turned made-up answers about never-seen people into
# "I don't know" and kept most facts. Its pairs: the unknown and fact kinds (arithmetic left out, as there).
ALIGN_PAIRS = ("unknown", "fact")


def stage_align(run: Run) -> dict:
    import shutil

    from acorn.config import load
    from acorn.fileio import read_jsonl, write_jsonl
    from acorn.train.prefs import PrefsConfig, prefs

    train, held_out = run.world / "preference.jsonl", run.world / "eval" / "preference.jsonl"
    run.need(train, held_out, run.sft)
    out = run.out / "align"
    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces the stage's model and numbers
    out.mkdir(parents=True)
    files = {}
    for name, src in (("train", train), ("held_out", held_out)):
        files[name] = out / f"pairs_{name}.jsonl"
        write_jsonl(files[name], (r for r in read_jsonl(src) if r.get("kind") in ALIGN_PAIRS))
    micro_batch, accumulation, seq_len = 16, 2, 128
    cli = ["--loss", "orpo", "--beta", "0.1", "--init_from", str(run.sft), "--data", str(files["train"]),
           "--eval_data", str(files["held_out"]), "--out", str(out), "--seed", str(run.seed), "--epochs", "3",
           "--train.max_steps", str(run.preset.align_steps), "--train.seq_len", str(seq_len),
           "--train.micro_batch", str(micro_batch), "--train.batch_tokens", str(micro_batch * accumulation * seq_len),
           "--optim.lr", "3e-4", "--optim.warmup_steps", "5",
           # held-out pairs scored once, at the last step (the loop always evaluates there), all of them
           "--eval.every", "1000000", "--eval.batches", "0", "--eval.checkpoint_every", "0"]
    prefs(load(PrefsConfig, None, cli))
    last = _metric_rows(out)[-1]  # the last step's row, with the held-out pairs' numbers
    card = {"align": _evaluate(run, "align", out / "model", ["world"], "align", data_dir=run.world,
                               limit=run.preset.eval_limit)}
    r = card["align"]
    print(f"   align: \"I don't know\" for unknown people {r['world_unknown_qa']['idk_rate']:.1%} (made up "
          f"{r['world_unknown_qa']['hallucination_rate']:.1%}); fact QA {r['world_fact_qa']['answer_match']:.1%}",
          flush=True)
    return {"card": card, "command": "acorn dpo " + " ".join(cli), "steps": last["step"],
            "train_loss": last["loss"], "held_out_accuracy": last.get("val_rewards/accuracies"),
            "model": str(out / "model")}


# GRPO on the world's arithmetic prompts (no tool offered; reward: exact match with the answer), with the
# settings of benchmarks/align_rl.py: 16 prompts x 8 samples a step, temperature 1, 12 new tokens,
# one optimizer step per rollout batch, lr 5e-5 constant. Scored with the harness's world_arithmetic.
def stage_grpo(run: Run) -> dict:
    import shutil

    from acorn.config import load
    from acorn.train.rl import GRPOConfig, grpo

    data = run.world / "rl_arithmetic.jsonl"
    run.need(data, run.sft)
    out = run.out / "grpo"
    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces the stage's model and numbers
    cli = ["--data", str(data), "--init_from", str(run.sft), "--out", str(out), "--seed", str(run.seed),
           "--rollout.prompts", "16", "--rollout.n", "8", "--rollout.max_new_tokens", "12",
           "--rollout.temperature", "1.0", "--train.micro_batch", "64", "--train.max_steps", str(run.preset.grpo_steps),
           "--optim.lr", "5e-5", "--eval.every", "0", "--eval.checkpoint_every", "0"]
    grpo(load(GRPOConfig, None, cli))
    rewards = [r["reward"] for r in _metric_rows(out) if "reward" in r]
    card = {"grpo": _evaluate(run, "grpo", out / "model", ["world_arithmetic"], "grpo", data_dir=run.world,
                              limit=run.preset.eval_limit)}
    print(f"   grpo: training reward {rewards[0]:.2f} -> {rewards[-1]:.2f}; world_arithmetic "
          f"{card['grpo']['world_arithmetic']['answer_match']:.1%}", flush=True)
    return {"card": card, "command": "acorn grpo " + " ".join(cli), "steps": len(rewards),
            "reward_first": rewards[0], "reward_last": rewards[-1], "model": str(out / "model")}


# The prompt-injection suite (acorn.eval.injection: instructions planted in retrieved passages, scored by
# string match) on the chat models the run has, undefended (the passages in the user turn) and with the
# prompt-level defences (delimited passages in a tool-role message). The trained defences (StruQ,
# SecAlign) need a model that follows instructions first: benchmarks/injection.py measures those.
INJECTION_SETTINGS = {"injection": ("user", "off"), "injection:defended": ("tool", "delimit")}


def stage_injection(run: Run) -> dict:
    from acorn.eval.injection import METRICS, evaluate_injection, load_items, save

    run.need(run.world, run.sft)
    models = {"sft": run.sft}
    if (run.out / "align" / "model").exists():
        models["align"] = run.out / "align" / "model"
    items = load_items(run.world, run.preset.eval_limit)
    card, skipped = {}, {}
    for column, model in models.items():
        card[column] = {}
        for task, (layout, spotlight) in INJECTION_SETTINGS.items():
            try:
                r = evaluate_injection(model, items=items, layout=layout, spotlight=spotlight, progress=False)
            except AcornError as e:  # a context too short for passages (the tiny preset): said, not fatal
                skipped[f"{column} {task}"] = str(e)
                print(f"   {column}, {task}: skipped: {e}", flush=True)
                continue
            save(r, run.out / "injection" / column / f"{layout}-{spotlight}")
            card[column][task] = {m: r[m] for m in METRICS}
            print(f"   {column}, passages in the {layout} turn, spotlight {spotlight}: attack success "
                  f"{r['attack_success']:.1%}, hijacked {r['hijacked']:.1%} (clean {r['abandoned_clean']:.1%}), "
                  f"utility {r['utility_clean']:.1%} clean / {r['utility_attacked']:.1%} attacked", flush=True)
    return {"card": {c: t for c, t in card.items() if t}, "items": len(items), "skipped": skipped}


register_stage("align", stage_align, estimate="about a minute",
               title="align: ORPO on the world's preference pairs from the SFT model, then the world's tasks on it")
register_stage("grpo", stage_grpo, estimate="a minute or two",
               title="grpo: GRPO on the world's arithmetic prompts from the SFT model, then world_arithmetic on it")
register_stage("injection", stage_injection, estimate="about a minute",
               title="injection: the prompt-injection suite on the chat models, undefended and spotlighted")


# ------------------------------------------------------------------ synthetic data (issue 18)
# The three experiments of docs/BENCHMARKS.md (synth-qa, synth-collapse, synth-distill) over the run's
# own world, tokenizer and models, each through its library function (acorn.synth), sized by the preset.
def stage_synth_qa(run: Run) -> dict:
    """`acorn synth qa` over the run's knowledge base, answered by the world's values (the upper
    bound) and by the run's chat model reading each document; the kept pairs checked against the
    world's eval sets. Columns synth-qa-world, synth-qa-sft."""
    import shutil

    from acorn.synth.qa import synth_qa

    run.need(run.world / "knowledge_base.jsonl", run.sft)
    out = run.out / "synth-qa"
    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces the stage's files and numbers
    limit = run.preset.synth_qa_docs or None
    card, filters, commands, skipped = {}, {}, [], {}
    for source, model in (("world", None), ("sft", run.sft)):
        try:
            s = synth_qa(run.world, out / source, model=model, limit=limit, seed=run.seed)
        except AcornError as e:  # a context too short for a document (the tiny preset): said, not fatal
            skipped[source] = str(e)
            print(f"   answers by the {source}: skipped: {e}", flush=True)
            continue
        f = filters[source] = s["filters"]
        card[f"synth-qa-{source}"] = {
            "synth_qa": {"candidates": f["candidates"], "kept": f["kept"],
                         "correct": f["correct"] / f["kept"] if f["kept"] else None,  # of the kept pairs
                         "overlapping_pairs": f["contaminated"]},
            **{f"synth_qa:{task}": {"contaminated": r["fraction"]} for task, r in s["contamination"]["tasks"].items()}}
        commands.append(f"acorn synth qa --world {run.world} --out {out / source} --seed {run.seed}"
                        + (f" --model {model}" if model else "") + (f" --limit {limit}" if limit else ""))
        print(f"   answers by the {source}: {f['kept']} of {f['candidates']} pairs kept, {f['correct']} correct; "
              f"{f['contaminated']} overlap an eval set (" + ", ".join(
                  f"{t} {r['fraction']:.1%}" for t, r in s["contamination"]["tasks"].items()) + ")", flush=True)
    return {"card": card, "filters": filters, "commands": commands, "skipped": skipped}


COLLAPSE_MODES = ("replace", "mix")  # Shumailov et al.'s, and half real data kept (accumulate: the benchmark)


def stage_collapse(run: Run) -> dict:
    """`acorn synth collapse` on the run's pretraining text and tokenizer, replace vs mix; the
    plot of both in RUN/collapse/collapse.png. Columns collapse-replace, collapse-mix."""
    import shutil

    from acorn.config import load
    from acorn.synth.collapse import CollapseConfig, collapse, plot
    from acorn.tokenizer.bpe import Tokenizer

    data, tok_dir, p = run.world / "pretrain.jsonl", run.out / "tokenizer", run.preset
    run.need(data, tok_dir)
    out = run.out / "collapse"
    shutil.rmtree(out, ignore_errors=True)
    vocab = Tokenizer.from_pretrained(tok_dir).vocab_size
    card, runs, commands = {}, [], []
    for mode in COLLAPSE_MODES:
        cli = ["--data", str(data), "--tokenizer", str(tok_dir), "--out", str(out / mode), "--mode", mode,
               "--generations", str(p.collapse_generations), "--max_docs", str(p.collapse_docs),
               "--train.max_steps", str(p.collapse_steps), "--sample_tokens", str(p.collapse_sample_tokens),
               "--model.vocab_size", str(vocab), "--seed", str(run.seed)]
        rows = collapse(load(CollapseConfig, None, cli), quiet=True)
        runs.append(rows)
        commands.append("acorn synth collapse " + " ".join(cli))
        card[f"collapse-{mode}"] = {"collapse": {f"{m}@gen{r['generation']}": r[m]
                                                 for m in ("val_loss", "tail_loss", "distinct_2")
                                                 for r in (rows[0], rows[-1])}}
        print(f"   {mode}: loss on real held-out text " + " -> ".join(f"{r['val_loss']:.3f}" for r in rows)
              + f" (tail {rows[0]['tail_loss']:.3f} -> {rows[-1]['tail_loss']:.3f}), distinct-2 "
              f"{rows[0]['distinct_2']:.3f} -> {rows[-1]['distinct_2']:.3f}", flush=True)
    plot(runs, out / "collapse.png")
    return {"card": card, "commands": commands, "steps": p.collapse_steps,
            "generations": [[{k: v for k, v in r.items() if k != "example"} for r in rows] for rows in runs],
            "figures": {"model collapse: replace vs mix (acorn synth collapse)": "collapse/collapse.png"}}


# Token-level distillation as docs/BENCHMARKS.md (synth-distill) measured it: of forward KL, reverse KL
# and JS (T 2, alpha 0.5) only JS came out ahead of the scratch student (by 0.03 nats, one seed). The
# student: 2 layers x width 64 (its embeddings are most of it), lr 3e-3, one micro-batch of the
# preset's rows a step; the same initial weights and data order for both students.
DISTILL_VARIANTS = {"distill-scratch": ["--alpha", "0"],
                    "distill-js": ["--kind", "js", "--temperature", "2", "--alpha", "0.5", "--beta", "0.5"]}
DISTILL_STUDENT = ["--model.n_layer", "2", "--model.d_model", "64", "--model.n_head", "2", "--model.n_kv_head", "1"]


def stage_distill(run: Run) -> dict:
    """A small student trained from scratch vs distilled (JS) from the run's pretrained model,
    the same steps on the run's shards; the val loss of each and the teacher's on the same val
    rows (the teacher's in the base column), and fact multiple choice. Columns distill-scratch,
    distill-js."""
    import shutil

    from acorn.config import load
    from acorn.synth.distill import DistillConfig, distill, val_loss

    p = run.preset
    run.need(run.data / "meta.json", run.base)
    out = run.out / "distill"
    shutil.rmtree(out, ignore_errors=True)
    vocab = json.loads((run.data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    seq_len = p.distill_seq_len
    cli = ["--teacher", str(run.base), "--data", str(run.data), "--model.vocab_size", str(vocab), *DISTILL_STUDENT,
           "--model.max_seq_len", str(seq_len), "--train.seq_len", str(seq_len),
           "--train.micro_batch", str(p.micro_batch), "--train.batch_tokens", str(p.micro_batch * seq_len),
           "--train.max_steps", str(p.distill_steps), "--optim.lr", "3e-3",
           "--optim.warmup_steps", str(min(20, p.distill_steps)), "--eval.every", "0", "--eval.checkpoint_every", "0",
           "--seed", str(run.seed)]
    models, commands = {"base": run.base}, []
    for column, extra in DISTILL_VARIANTS.items():
        student = out / column.removeprefix("distill-")
        args = [*cli, "--out", str(student), *extra]
        distill(load(DistillConfig, None, args))
        models[column] = student / "model"
        commands.append("acorn synth distill " + " ".join(args))
    card = {}
    for column, model in models.items():
        card[column] = {"distill": {"val_loss": val_loss(model, run.data, seq_len=seq_len,
                                                         batch_size=p.micro_batch, seed=run.seed)}}
        if column != "base":  # the base's is on the card already (the eval stage)
            card[column] |= _evaluate(run, column, model, ["world_multiple_choice"], "distill/eval",
                                      data_dir=run.world, limit=p.eval_limit)
    print("   val loss on the run's val rows: " + ", ".join(f"{'teacher (base)' if c == 'base' else c} "
                                                       f"{r['distill']['val_loss']:.3f}" for c, r in card.items()),
          flush=True)
    return {"card": card, "commands": commands, "steps": p.distill_steps}


# Estimates: the cpu preset's sizes as measured twice on the 2-core machine while other jobs used it (load
# 3.4 to 6; docs/BENCHMARKS.md, speedrun-synth): an idle machine is faster, by how much was not measured.
register_stage("synth-qa", stage_synth_qa, estimate="half a minute to 2 min on 2 busy cores",
               title="synth-qa: question-answer pairs from the knowledge base (world's values, SFT model), "
                     "filtered and checked for contamination")
register_stage("collapse", stage_collapse, estimate="~25 min on 2 busy cores: 6 small models trained and sampled",
               title="collapse: generations trained on their predecessor's samples, replace vs mix")
register_stage("distill", stage_distill, estimate="10-15 min on 2 busy cores: 2 students, one with the teacher",
               title="distill: a 2 x 64 student from scratch vs distilled (JS) from the pretrained model")


def stage_vlm(run: Run) -> dict:
    """Pictures of the run's world (its world.json, so the badges show the people the chat model
    knows), `acorn clip train`, then LLaVA's two stages over the run's chat model (acorn.train.vlm),
    and the image questions of the eval pictures (acorn.eval.vlm). Column vlm: accuracy per kind."""
    import shutil

    from acorn.config import load
    from acorn.data.world import SIZES, read_world, write_images
    from acorn.eval.vlm import evaluate_vlm
    from acorn.train.clip import ClipConfig, train_clip
    from acorn.train.vlm import VLMConfig, train_vlm

    p = run.preset
    run.need(run.world / "world.json", run.sft)
    out = run.out / "vlm"
    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces the stage's models and numbers
    world = read_world(run.world / "world.json")
    (out / "world").mkdir(parents=True)
    shutil.copy(run.world / "world.json", out / "world" / "world.json")
    write_images(out / "world", world, SIZES[world.size].n_images)
    common = ["--world", str(out / "world"), "--seed", str(run.seed)]
    # The chat model's context holds the rows: 256 tokens (2-3 conversations of 64 image tokens), less on tiny.
    rows = ["--train.seq_len", str(min(256, max(p.seq_len, p.sft_seq_len)))]
    steps = lambda n: ["--train.max_steps", str(n)] if n else []  # noqa: E731
    commands = []
    for command, config, fn, args in (
            ("acorn clip train", ClipConfig, train_clip, ["--out", str(out / "clip"), *steps(p.vlm_clip_steps)]),
            ("acorn vlm train", VLMConfig, train_vlm, ["--out", str(out / "stage1"), "--stage", "1", "--clip",
                                                       str(out / "clip" / "model"), "--model", str(run.sft),
                                                       *rows, *steps(p.vlm_stage1_steps)]),
            ("acorn vlm train", VLMConfig, train_vlm, ["--out", str(out / "stage2"), "--stage", "2", "--init_from",
                                                       str(out / "stage1" / "model"), *rows,
                                                       *steps(p.vlm_stage2_steps)])):
        fn(load(config, None, [*common, *args]))
        commands.append(f"{command} {' '.join([*common, *args])}")
    r = evaluate_vlm(out / "stage2" / "model", out / "world", limit=p.eval_limit, prefill_runs=0)
    write_json(out / "eval.json", r)
    print("   vlm: " + ", ".join(f"{k} {v['accuracy']:.1%} (chance {v['chance']:.1%})"
                                  for k, v in r["accuracy"].items()), flush=True)
    return {"card": {"vlm": {f"vlm_{k}": {"acc": v["accuracy"], "chance": v["chance"]}
                             for k, v in r["accuracy"].items()}},
            "commands": commands, "tokens_per_image": r["tokens_per_image"]}


register_stage("vlm", stage_vlm, estimate="15-20 min on 2 busy cores: CLIP, the two LLaVA stages, the eval",
               title="vlm: a vision encoder (CLIP) and a projector joined to the chat model (LLaVA), "
                     "image questions per kind")


def _sample_questions(world: Path) -> list[str]:
    qs = []
    for name, n in (("fact_qa", 3), ("unknown_qa", 2), ("arithmetic", 2)):
        path = world / "eval" / f"{name}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            qs += [r["question"] for r in rows[:: max(1, len(rows) // n)][:n]]
    return qs


# ----------------------------------------------------------------- helpers
# The share of a training stage's budget its optimizer steps (and compilation) get. What the
# stage spends around them (the probe's own steps, evaluation, data, logging, saving) was 1-3%
# of the budget in the compiled cpu runs once training compiled only the probe's graph
# (docs/BENCHMARKS.md, speedrun-compile); 4% is kept for it (8% were, while the stage's
# uncounted recompilations ate into it). SFT keeps 8%: at 96% its stage ran 218 s of 210
# (its probe, then one micro-batch a step, measured 5% faster than it trained); with the
# probe accumulating as the stage does, SFT's probe measured 3% slower than its training and
# pretraining's within 0.2% (seed 0: 194 s of 210, 529 s of 540). The training stages end at
# these shares of their budgets by LoopConfig.fit_minutes, the probe's step count a first plan.
STEP_SHARE = 0.96
SFT_STEP_SHARE = 0.92
# The compiled step's speed over the eager probe's, and the seconds one design of the in-context
# phase spends writing and tokenizing 80,000 documents (and compiling its model), as measured in
# a compiled cpu run with a three-design phase (copy@200>formats@150>world+formats@100: 0.72-0.80
# s a step, compilation included, against the eager probe's 1.04; 4 s of documents a design):
# the estimate prices the phase's steps by them (it used to price them eagerly: 9.8 min for 5.8).
COMPILED_SPEEDUP = 1.4
ICL_DOC_SECONDS = 5.0


def _steps_for(cfg, minutes: float, init_from: Path | None = None, share: float = STEP_SHARE) -> int:
    """Optimizer steps that fit in `minutes`, from the timing of a few real steps
    (the loop's own train_step with the stage's accumulation, on random tokens); a
    compiled run's compilation is paid out of the same minutes. The training stages
    take it as a first plan that the loop refits as it runs (LoopConfig.fit_minutes):
    a few seconds of probe misjudged the pace by up to a fifth on a 2-core machine
    whose speed swings within seconds (docs/BENCHMARKS.md, speedrun-budget)."""
    from acorn.train.loop import accumulation

    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len)
    per_micro, compile_s = probe(cfg, init_from, accum=accum)
    steps = int(max(0.0, minutes * 60 * share - compile_s) / (per_micro * accum))
    tok_s = cfg.train.micro_batch * cfg.train.seq_len / per_micro
    print(f"   measured {tok_s:,.0f} tokens/s" + (f" (compiled in {compile_s:.0f}s)" if cfg.train.compile else "")
          + f" -> {steps} steps of {accum * cfg.train.micro_batch * cfg.train.seq_len:,} tokens in {minutes:g} min",
          flush=True)
    return max(steps, 10)


def probe(cfg, init_from: Path | None = None, steps: int = 10, accum: int = 1) -> tuple[float, float]:
    """(seconds per micro-batch, seconds of compilation) of the loop's own train_step on
    random tokens, for a training config (the model as cfg.train.compile makes it); the
    median of the steps after warm-up. accum: micro-batches per timed step, as the stage
    accumulates them (the optimizer step, gradient clipping and zeroing are then shared by
    that many micro-batches, as in training: one each made a compiled pretraining step look
    ~10% slower than it ran)."""
    import functools

    import torch

    from acorn import hardware
    from acorn.data.loader import Batch
    from acorn.model.transformer import Transformer
    from acorn.train.loop import train_step
    from acorn.train.optim import build_optimizers
    from acorn.train.pretrain import next_token_loss
    from acorn.train.run import compile_for_training
    from acorn.train.sft import SFTConfig

    device = hardware.resolve_device()
    if init_from is not None:
        from acorn.model.checkpoint import load as load_checkpoint

        model = load_checkpoint(init_from, dtype="float32", device=str(device))
    else:
        model = Transformer(cfg.model).to(device)
    model.train()  # as the loop trains it (a loaded checkpoint comes in eval mode: another graph)
    dtype = hardware.resolve_dtype(cfg.train.dtype, device)
    autocast = functools.partial(hardware.autocast, device, dtype)
    optimizers = build_optimizers(model, cfg.optim)
    stepped = compile_for_training(model) if cfg.train.compile else model
    x = torch.randint(0, model.config.vocab_size, (cfg.train.micro_batch, cfg.train.seq_len), device=device)
    y = torch.roll(x, -1, dims=1)  # its own tensor: dynamo guards on whether inputs and targets alias
    # Batches shaped as the stage's own: SFT's packed rows (and pretraining's with
    # pack_documents) carry document ids, which a compiled model takes as another graph.
    docs = None
    if isinstance(cfg, SFTConfig) or cfg.train.pack_documents:
        docs = (torch.arange(cfg.train.seq_len, device=device) * 4 // cfg.train.seq_len).expand_as(x).contiguous()
    hardware.flush_denormals(device)
    times = []
    for _ in range(max(steps, 6)):
        t0 = time.perf_counter()
        try:
            train_step(stepped, [Batch(x, y, docs)] * accum, next_token_loss, optimizers, device=device,
                       autocast=autocast, grad_clip=cfg.optim.grad_clip)
        except Exception as e:  # noqa: BLE001 -- compiling failed (no C++ compiler, an unsupported op)
            if not cfg.train.compile or times:
                raise
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            print(f"   torch.compile failed here ({type(e).__name__}: {reason}); training eagerly", flush=True)
            cfg.train.compile = False  # the stage then trains with this config, eagerly
            del model, optimizers, stepped
            return probe(cfg, init_from, steps, accum)
        times.append((time.perf_counter() - t0) / accum)
    # The first steps are slow while kernels and memory warm up: the median of the later ones.
    later = sorted(times[4:])
    per_micro = later[len(later) // 2]
    compile_s = max(0.0, (times[0] - per_micro) * accum) if cfg.train.compile else 0.0
    del model, optimizers, stepped
    return per_micro, compile_s


def estimate(preset: str = "cpu", vocab_size: int | None = None, **recipe) -> dict:
    """What a run of the preset will take here, before it starts: the training stages are
    time budgets (pretraining and SFT stop at them), and the stages around them are the
    reference machine's seconds (REFERENCE_OTHER_STAGES) scaled by a throughput probe of
    pretraining's own step here (a second or two). Returns {"seconds", "stages" (name ->
    seconds), "tok_s", "pretrain_steps", "pretrain_tokens", "reference" (False where the
    other stages' time is unknown)}."""
    import tempfile

    from acorn.train.loop import accumulation

    p = resolve_preset(preset, vocab_size=vocab_size, **recipe)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pretrain_config(p, Path(tmp), Path(tmp), p.vocab_size, 0)
    # An eager probe, also for a compiled recipe: compiling only to estimate would cost minutes under
    # load. A compiled run's stages measure their own compiled speed and pay compilation out of the budgets.
    cfg.train.compile = False
    per_micro, compile_s = probe(cfg, steps=8)
    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len)
    tok_s = cfg.train.micro_batch * cfg.train.seq_len / per_micro
    steps = max(10, int(max(0.0, p.pretrain_minutes * 60 * STEP_SHARE - compile_s) / (per_micro * accum)))
    ref = REFERENCE_OTHER_STAGES.get(preset)
    other = ref[0] * ref[1] / tok_s if ref else 0.0
    stages = {"pretrain": p.pretrain_minutes * 60, "sft": p.sft_minutes * 60, "other stages": other}
    if p.icl_phase:  # its steps (at the compiled speed where the recipe compiles), and each design's documents
        from acorn.data.world import parse_phase

        chain = parse_phase(p.icl_phase)
        steps_icl, docs_icl = sum(n for _, n in chain), len(chain) * p.icl_docs
        step_s = per_micro * accum / (COMPILED_SPEEDUP if p.compile else 1.0)
        stages["in-context phase"] = steps_icl * step_s + ICL_DOC_SECONDS * docs_icl / 80_000
    return {"seconds": sum(stages.values()), "stages": stages, "tok_s": tok_s, "pretrain_steps": steps,
            "pretrain_tokens": steps * accum * cfg.train.micro_batch * cfg.train.seq_len, "reference": ref is not None,
            "slower": ref[1] / tok_s if ref else None, "compiled": p.compile}


def format_estimate(e: dict) -> str:
    other = (f"the other stages ~{_fmt_time(e['stages']['other stages'])}" if e["reference"]
             else "plus the other stages (not yet measured for this preset)")
    icl = e["stages"].get("in-context phase")
    other += f", the in-context phase's steps ~{_fmt_time(icl)}" if icl else ""
    return (f"estimate: ~{_fmt_time(e['seconds'])} here (pretraining {_fmt_time(e['stages']['pretrain'])} and SFT "
            f"{_fmt_time(e['stages']['sft'])} are time budgets; {other}); the probe measured "
            f"{e['tok_s']:,.0f} training tokens/s, so pretraining will see ~{e['pretrain_tokens'] / 1e6:.1f}M tokens "
            f"({e['pretrain_steps']} steps" + (", eager: compiled steps are faster once compiled, and compilation "
                                              "is paid out of the budgets" if e.get("compiled") else "") + ")"
            + (f"; that is {e['slower']:.1f}x slower than the reference machine (other programs using the CPU?): "
               "the budgets stay the same, so the model sees fewer tokens and scores lower"
               if e.get("slower") and e["slower"] > 1.5 else ""))


def _metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _last_metrics(out: Path) -> dict:
    rows = _metric_rows(out)
    val = [r for r in rows if "val_loss" in r]
    tok_s = sorted(r["tok_s"] for r in rows)[len(rows) // 2]
    mfu = sorted(r["mfu"] for r in rows if r.get("mfu"))
    return {"steps": rows[-1]["step"], "train_loss": rows[-1]["loss"], "val_loss": val[-1]["val_loss"] if val else None,
            "val_bpb": val[-1].get("val_bpb") if val else None, "tokens": rows[-1]["tokens"], "tok_s": tok_s,
            "mfu": mfu[len(mfu) // 2] if mfu else None, "loss_plot": str(out / "loss.png")}


def _jsonl_texts(paths: list[Path]):
    """The text of world files: 'text' fields, or the contents of 'messages'."""
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "text" in row:
                    yield row["text"]
                for m in row.get("messages", ()):
                    if isinstance(m.get("content"), str):
                        yield m["content"]


# ----------------------------------------------------------------- the run
# Recipe knobs a run saved before they existed was made without (not with the preset's value today).
_OFF_BEFORE_THEY_EXISTED = {"fact_answers": "value", "tool_sft": False, "icl_phase": ""}


def saved_preset(state: dict) -> SpeedrunPreset:
    """The preset a finished run was made with, from its speedrun.json: the settings it saved; the
    ones it predates from its named preset (the later stages' step counts), recipe knobs off."""
    named = asdict(PRESETS[state["preset"]]) if state["preset"] in PRESETS else {}
    saved = dict(state.get("preset_settings", {}))
    steps = saved.pop("icl_steps", 0)  # the first in-context phase: that many steps of one mixture
    if steps:
        saved["icl_phase"] = f"world+copy+formats@{steps}"
    return SpeedrunPreset(**{**named, **_OFF_BEFORE_THEY_EXISTED, **saved})


def resolve_preset(preset: str = "cpu", *, size: str | None = None, vocab_size: int | None = None,
                   **recipe) -> SpeedrunPreset:
    """A named preset with some of its fields changed (the world size, the vocabulary, recipe knobs)."""
    if preset not in PRESETS:
        raise AcornError(f"unknown speedrun preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = SpeedrunPreset.__dataclass_fields__
    unknown = sorted(set(recipe) - set(fields))
    if unknown:
        raise AcornError(f"unknown speedrun setting {', '.join(unknown)}; settable: {', '.join(fields)}")
    for name, least in (("mixed_qa", 0), ("sft_replay", 0), ("icl_docs", 1), ("world_icl_docs", 0)):
        value = recipe.get(name, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise AcornError(f"{name} must be a {'non-negative' if least == 0 else 'positive'} integer, got {value!r}")
    from acorn.data.world import FACT_ANSWER_STYLES, ICL_STYLES, MIXED_QA_FORMATS, parse_phase

    phase = recipe.get("icl_phase", PRESETS[preset].icl_phase)
    if not isinstance(phase, str):
        raise AcornError(f"icl_phase must be a chain of designs like 'copy@200>formats@200', got {phase!r}")
    if phase:
        parse_phase(phase)  # unknown designs or steps: one line naming them
    elif recipe.get("icl_docs", PRESETS[preset].icl_docs) != PRESETS[preset].icl_docs:
        # (the preset's own value passes: speedrun() hands the estimate every field of the resolved preset)
        raise AcornError("icl_docs sizes the in-context phase, which is off; give icl_phase too (--icl-phase CHAIN)")

    for name in ("pretrain_minutes", "sft_minutes"):
        value = recipe.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise AcornError(f"{name} is a time budget in minutes, a number above 0, got {value!r}")
    share = recipe.get("icl_world_share", PRESETS[preset].icl_world_share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise AcornError(f"icl_world_share is the world's share of the phase's world+ designs, a number between 0 "
                         f"and 1 (1/6: 0.1667), got {share!r}")
    if share != PRESETS[preset].icl_world_share and not any(d.startswith("world+") for d, _ in
                                                            (parse_phase(phase) if phase else [])):
        raise AcornError("icl_world_share mixes the world's text into the in-context phase's world+ designs, and "
                         f"{'its chain has none' if phase else 'the phase is off'}; give --icl-phase with a world+ "
                         "design (world+formats@200)")

    style = recipe.get("world_icl_style", "repeats")
    if style not in ICL_STYLES:
        raise AcornError(f"world_icl_style must be one of {', '.join(ICL_STYLES)}, got {style!r}")
    if style != "repeats" and not recipe.get("world_icl_docs"):
        raise AcornError(f"world_icl_style {style} styles the world_icl_docs in-context pretraining documents, and "
                         "there are none; give their number too (--world-icl-docs N)")
    if recipe.get("mixed_qa_format", "plain") not in MIXED_QA_FORMATS:
        raise AcornError(f"mixed_qa_format must be one of {', '.join(MIXED_QA_FORMATS)}, "
                         f"got {recipe['mixed_qa_format']!r}")
    if recipe.get("fact_answers", "value") not in FACT_ANSWER_STYLES:
        raise AcornError(f"fact_answers must be one of {', '.join(FACT_ANSWER_STYLES)}, "
                         f"got {recipe['fact_answers']!r}")
    changes = {k: v for k, v in (("world", size), ("vocab_size", vocab_size)) if v} | recipe
    return SpeedrunPreset(**{**asdict(PRESETS[preset]), **changes})


def speedrun(out: str | Path = "runs/speedrun", *, preset: str = "cpu", seed: int = 0,
             size: str | None = None, vocab_size: int | None = None, stages: list[str] | None = None,
             **recipe) -> Path:
    """The whole pipeline into `out`; with stages, only those registered
    stages over the finished run in `out` (its preset and seed). `recipe`:
    preset fields to change for this run (mixed_qa=4, compile=True, ...)."""
    if stages is not None:
        if recipe:
            raise AcornError(f"{', '.join(recipe)}: recipe settings make a new run; --stages adds to a finished "
                             "one with its own recipe (drop them, or start a new run in another --out)")
        return run_stages(out, stages)
    if preset not in PRESETS:
        raise AcornError(f"unknown speedrun preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = resolve_preset(preset, size=size, vocab_size=vocab_size, **recipe)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"{out} is a file; give --out a directory")
    if (out / "pretrain" / "metrics.jsonl").exists():
        raise AcornError(f"{out} already holds a speedrun; choose another --out or delete it "
                         f"(or add stages to it: --stages {','.join(STAGES)})")
    out.mkdir(parents=True, exist_ok=True)
    print(f"acorn speedrun -> {out}: preset {preset} ({p.note}), world {p.world}, seed {seed}")
    guess = estimate(preset, **{k: v for k, v in asdict(p).items() if k != "world"})
    print(format_estimate(guess), flush=True)
    t0 = time.perf_counter()
    results: list[StageResult] = []
    world, tok, data = out / "world", out / "tokenizer", out / "data"
    _stage("world: generate the built-in synthetic world", "seconds", results, stage_world, world, p.world, seed,
           p.mixed_qa, p.mixed_qa_format, p.fact_answers, p.tool_sft, p.world_icl_docs, p.world_icl_style)
    tok_summary = _stage(f"tokenizer: train byte-level BPE, vocab {p.vocab_size}", "seconds", results,
                         stage_tokenizer, world, tok, p.vocab_size)
    _stage("tokenizer eval: bytes per token against GPT-2", "seconds", results, stage_tokenizer_eval, world, tok,
           out / "tokenizer_eval")
    _stage("data: tokenize the pretraining documents into shards", "seconds", results, stage_prepare, world, tok, data)
    _stage(f"pretrain: {p.model} model, next-token prediction", f"{p.pretrain_minutes:g} min", results,
           stage_pretrain, p, data, out / "pretrain", tok_summary["vocab_size"], seed)
    base = out / "pretrain" / "model"
    if p.icl_phase:
        base = out / "pretrain-icl" / "model"
        _stage(f"in-context phase: {p.icl_phase} (designs of in-context documents, steps each)",
               _fmt_time(guess["stages"]["in-context phase"]) + " estimated", results, stage_icl, p, world, tok,
               out / "pretrain" / "model", base.parent, tok_summary["vocab_size"], seed, name="icl")
    _stage("sft: fine-tune on the world's conversations", f"{p.sft_minutes:g} min", results, stage_sft, p, world,
           base, out / "sft", seed)
    run = Run(out, preset, p, seed)
    for stage in STAGES.values():
        if stage.default:
            _stage(stage.title, stage.estimate, results, stage.fn, run, name=stage.name)
    total = time.perf_counter() - t0
    report = _write(run, results, total, estimated=guess["seconds"])
    print(f"\nfinished in {_fmt_time(total)}; report: {report}; chat with it: acorn chat {run.sft}")
    return report


def run_stages(out: str | Path, names: list[str]) -> Path:
    """Registered stages over a finished run: each replaces its earlier
    result (if any) in speedrun.json, and report.md is written again."""
    out = Path(out)
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise AcornError(f"unknown speedrun stage {', '.join(unknown) or '(none given)'}; "
                         f"available: {', '.join(STAGES)}")
    saved = out / "speedrun.json"
    if not saved.is_file():
        raise AcornError(f"{saved}: missing; --stages adds to a finished run: first `acorn speedrun --out {out}`")
    state = json.loads(saved.read_text())
    preset = state["preset"]
    run = Run(out, preset, saved_preset(state), state["seed"])
    results = [StageResult(s["name"], s["seconds"], s["summary"]) for s in state["stages"]]
    print(f"acorn speedrun -> {out}: stages {', '.join(names)} over the finished run (preset {preset}, seed {run.seed})")
    done: list[StageResult] = []
    for name in names:
        _stage(STAGES[name].title, STAGES[name].estimate, done, STAGES[name].fn, run, name=name)
        at = next((i for i, r in enumerate(results) if r.name == name), None)
        if at is None:
            results.append(done[-1])
        else:
            results[at] = done[-1]
    report = _write(run, results, sum(r.seconds for r in results))
    print(f"\nreport: {report}")
    return report


def _write(run: Run, results: list[StageResult], total: float, estimated: float | None = None) -> Path:
    """speedrun.json, the report card's chart, and report.md."""
    saved = run.out / "speedrun.json"
    if estimated is None and saved.is_file():  # --stages over a finished run: keep the run's own estimate
        estimated = json.loads(saved.read_text()).get("estimated_seconds")
    card = report_card(results)
    if card:
        from acorn.eval.results import bar_chart

        keys = _card_keys(card)  # columns with no rate (a stage's losses or counts) stay in the table only
        bar_chart({c: r for c, r in card.items() if any(m in r.get(t, {}) for t, m in keys)}, run.out / "card.png",
                  keys=keys, title="report card: the eval harness's numbers per model (acorn eval)")
    report = run.out / "report.md"
    write_text(report, _report(results, total, run, card, estimated))
    write_json(run.out / "speedrun.json", {"preset": run.preset_name, "preset_settings": asdict(run.preset),
                                           "seed": run.seed, "seconds": total, "estimated_seconds": estimated,
                                           "stages": [{"name": r.name, "seconds": r.seconds, "summary": r.summary}
                                                      for r in results]})
    return report


def report_card(results: list[StageResult]) -> dict[str, dict]:
    """{column (a model): {task: metrics}}, the stages' cards merged in order."""
    card: dict[str, dict] = {}
    for r in results:
        for column, tasks in (r.summary.get("card") or {}).items():
            card.setdefault(column, {}).update(tasks)
    return card


def _card_keys(card: dict) -> list[tuple[str, str]]:
    """The chart's bars: every task's rates, and of the subsets only fact QA's
    split by where a fact was learned (the attribute and digit rows are in
    the table)."""
    from acorn.eval.results import is_rate

    keys = []
    for results in card.values():
        for task, metrics in results.items():
            if ":" in task and task.split(":")[1] not in ("in_sft", "pretrain_only"):
                continue
            keys += [(task, m) for m in metrics if is_rate(m) and (task, m) not in keys]
    return keys


def _get(results: dict, task: str, metric: str) -> float:
    return results.get(task, {}).get(metric, float("nan"))


def _report(results: list[StageResult], total: float, run: Run, card: dict, estimated: float | None = None) -> str:
    from acorn.eval.results import table
    from acorn.tokenizer.counting import format_table

    p = run.preset
    by = {r.name: r for r in results}
    lines = [
        "# Acorn speedrun report", "",
        f"Preset `{run.preset_name}` ({p.note}): world `{p.world}`, model preset `{p.model}`, seed {run.seed}; "
        f"{platform.machine()}, Python {platform.python_version()}; total {_fmt_time(total)}"
        + (f" (estimated {_fmt_time(estimated)} before it started)" if estimated else "") + ".", "",
        "| stage | time |", "|---|---:|", *[f"| {r.name} | {_fmt_time(r.seconds)} |" for r in results], "",
    ]
    sft = card.get("sft", {})
    if "world_fact_qa" in sft:
        lines += ["## Results", "",
                  f"- Fact questions answered exactly: **{_get(sft, 'world_fact_qa', 'answer_match'):.1%}** "
                  f"(questions SFT asked: {_get(sft, 'world_fact_qa:in_sft', 'answer_match'):.1%}; "
                  f"facts only in pretraining documents: {_get(sft, 'world_fact_qa:pretrain_only', 'answer_match'):.1%})",
                  f"- \"I don't know\" for people never seen: **{_get(sft, 'world_unknown_qa', 'idk_rate'):.1%}** "
                  f"(made-up answers: {_get(sft, 'world_unknown_qa', 'hallucination_rate'):.1%})",
                  f"- Arithmetic with the calculator: **{_get(sft, 'world_arithmetic', 'answer_match'):.1%}** "
                  f"(the tool called for {_get(sft, 'world_arithmetic', 'tool_used'):.1%} of the questions)", ""]
    if card:
        limit = f" --limit {p.eval_limit}" if p.eval_limit else ""
        lines += ["## Report card", "",
                  "The eval harness's numbers for each model of the run (columns: base = after pretraining, "
                  "sft = after supervised fine-tuning, then each later stage's), mean ± standard error; "
                  "task:label rows are a task's documents with that label. Each stage's files (results.json, "
                  "samples) are in RUN/STAGE/COLUMN. Reproduce the world's with "
                  f"`acorn eval {run.sft}{limit} --tasks world --data-dir {run.world}`; compare columns with "
                  f"`acorn eval compare {run.out / 'eval' / 'base'} {run.out / 'eval' / 'sft'}`.", "",
                  "![report card](card.png)", "", table(card), ""]
    lines += recipe_section(run)
    for name, title, folder in (("pretrain", "Pretraining", "pretrain"), ("icl", "In-context phase", "pretrain-icl"),
                                ("sft", "Supervised fine-tuning", "sft")):
        if name in by:
            s = by[name].summary
            mfu = (f" (MFU {s['mfu']:.2%} of this machine's peak for its precision, acorn.hardware.peak_flops)"
                   if s.get("mfu") else "")
            lines += [f"## {title}", "", f"![{name} loss]({folder}/loss.png)", "",
                      f"{s['steps']} steps, {s['tokens']:,} tokens at {s['tok_s']:,.0f} tokens/s{mfu}; final train loss "
                      f"{s['train_loss']:.3f}" + (f", validation loss {s['val_loss']:.3f}" if s.get("val_loss") else "")
                      + (f", {s['val_bpb']:.3f} bits per byte" if s.get("val_bpb") else "") + ".", ""]
    over = [r for r in results if r.name in STAGES and ("command" in r.summary or "commands" in r.summary)]
    if over:
        lines += ["## Stages over the run", "", "Each later stage's commands, to rerun it alone.", "",
                  *[_stage_line(r.name, r.summary) for r in over], ""]
    figures = [(title, path) for r in results for title, path in (r.summary.get("figures") or {}).items()]
    if figures:
        lines += ["## Figures of the stages", ""]
        for title, path in figures:
            lines += [f"![{title}]({path})", ""]
    if "tokenizer eval" in by:
        lines += ["## Tokenizer: bytes per token on held-out world prose", "",
                  f"Reproduce with `{by['tokenizer eval'].summary['command']}`.", "", "```",
                  format_table(by["tokenizer eval"].summary["rows"]), "```", ""]
    if "samples" in by:
        lines += ["## Samples (greedy)", ""]
        lines += [f"- **Q:** {s['question']}  \n  **A:** {s['answer']}" for s in by["samples"].summary["samples"]]
        lines.append("")
    return "\n".join(lines)


def _stage_line(name: str, s: dict) -> str:
    model = f", model `{s['model']}`" if "model" in s else ""
    trained = f"{s['steps']} steps{model}; " if "steps" in s else ""
    return f"- {name}: {trained}" + "; ".join(f"`{c}`" for c in s.get("commands") or [s["command"]])


def recipe_section(run: Run) -> list[str]:
    """The "Recipe" section: what made this run, from the preset and the stages' own
    config.yaml (the settings the loop actually used)."""
    import yaml

    p = run.preset

    def config(stage: str) -> dict:
        path = run.out / stage / "config.yaml"
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}

    pre, icl, sft = config("pretrain"), config("pretrain-icl"), config("sft")
    qa = (f", {p.mixed_qa} QA pairs per fact of the SFT people mixed into pretraining (--mixed-qa)"
          + (", in the chat template (--mixed-qa-format chat)" if p.mixed_qa_format == "chat" else ", as plain text")
          if p.mixed_qa else ", no QA in pretraining")
    if p.world_icl_docs:
        qa += (f", {p.world_icl_docs:,} in-context documents of style {p.world_icl_style} in pretraining instead of "
               "the world's episodes (--world-icl-docs)")
    rows = [("world", f"`{p.world}`, seed {run.seed}" + qa)]
    rows.append(("tokenizer", f"byte-level BPE, vocabulary {p.vocab_size:,}"))
    m = pre.get("model") or {}
    if m:
        rows.append(("model", f"preset `{p.model}`: {m['n_layer']} layers, width {m['d_model']}, {m['n_head']} heads "
                              f"({m['n_kv_head']} KV), MLP {m['d_ff']} ({m['mlp']}), {m['positions']} positions, "
                              f"vocabulary {m['vocab_size']:,}"))
    parts = []
    if icl and p.icl_phase:
        from acorn.data.world import parse_phase

        chain = parse_phase(p.icl_phase)
        parts = [(f"in-context phase {i}: {d}", model.name)
                 for i, ((d, _), (model, _)) in enumerate(zip(chain, icl_dirs(run.out, chain)), 1)]
    for name, stage in (("pretraining", "pretrain"), *parts, ("SFT", "sft")):
        c = config(stage)
        if not c:
            continue
        o, t = c["optim"], c["train"]
        opt = (f"Muon (lr {o['muon_lr']:g}) + AdamW" if o["optimizer"] == "muon" else "AdamW") + \
            (" (fused)" if o.get("fused") else "")
        done = _metric_rows(run.out / stage)[-1]["step"] if (run.out / stage / "metrics.jsonl").is_file() else None
        if t.get("fit_minutes") and done:
            steps = f"{done} steps (their number fitted to {t['fit_minutes']:.3g} min as it ran)"
        elif done and done < t["max_steps"]:
            steps = f"{done} of {t['max_steps']} steps (stopped at --train.max_minutes {t['max_minutes']:.3g})"
        else:
            steps = f"{t['max_steps']} steps"
        rows.append((name, f"{steps} of {t['batch_tokens']:,} tokens (rows of {t['seq_len']}, "
                           f"micro-batch {t['micro_batch']}); {opt} lr {o['lr']:g}, betas {o['beta1']:g}/{o['beta2']:g}, "
                           f"weight decay {o['weight_decay']:g}; {o['schedule']} schedule, {o['warmup_steps']} warmup "
                           f"steps, to {o['min_lr_ratio']:g} x lr; dtype {t['dtype']}, "
                           f"{'torch.compile' if t.get('compile') else 'eager'}"))
    if parts:
        share = (f"; the world's text {p.icl_world_share:.3g} of each world+ design (--icl-world-share)"
                 if any(d.startswith("world+") for d, _ in chain) else "")
        rows.append(("in-context phase data", f"{p.icl_docs:,} documents of each design, from the pretrained model "
                     f"(--icl-phase {p.icl_phase}{share}; acorn.data.world.phase_doc; the designs: "
                     "docs/BENCHMARKS.md, icl-formation)"))
    rows.append(("SFT data", "the world's conversations, fact questions answered " + (
        "in a sentence (\"As far as I know, NAME was born in 1959.\", --fact-answers sentence)"
        if p.fact_answers == "sentence" else "with the bare value (--fact-answers value)") + (
        ", calculator calls at every size (--tool-sft)" if p.tool_sft else ", calculator calls only for large problems") + (
        f" and {p.sft_replay:,} of its pretraining biographies as text rows (replay, --sft-replay)"
        if p.sft_replay else ", no pretraining documents replayed")))
    return ["## Recipe", "", f"Preset `{run.preset_name}`" + (" with changes" if p != PRESETS.get(run.preset_name)
                                                             else "") + "; every setting in RUN/STAGE/config.yaml.", "",
            "| part | setting |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
