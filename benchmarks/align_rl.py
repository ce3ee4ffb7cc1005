"""RL alignment benchmarks (issue 13, parts 3 and 4): what GRPO and PPO change on the built-in world.

One function per figure, each writing its own section of docs/BENCHMARKS.md (the lead merges
these into benchmarks/align.py beside the preference-optimisation figures):

  grpo  (section align-grpo)  GRPO on arithmetic without the calculator, from the speedrun's chat
        model: the world's rl_arithmetic prompts (1-4 digit operands, none of them an eval
        problem), reward = exact match with the answer. Three runs from the same start, same
        steps and seeds: std scaling on (GRPO), off (Dr. GRPO), on with a k3 KL term to the
        start (beta 0.04). Before and after each: exact match by number of digits on the held-out
        eval/arithmetic.jsonl, asked in a chat turn without tools, greedy, through the engine.
  grpo-diagnosis  (section align-grpo-diagnosis)  why GRPO lowered held-out arithmetic: GRPO
        with rollouts at temperature 1 and 0.7 against gradient ascent on the EXACT expected
        reward of the same training prompts (no sampling), each scored on held-out problems,
        on the training problems, and by sampled (T=1, T=0.7) against greedy reward.
  ppo   (section align-ppo)   PPO against a learned reward model (`--reward-model DIR`, made by
        `acorn reward train` on the world's preference.jsonl) on the prompts of preference.jsonl,
        each with the answer the world knows (the chosen reply). One run per --ppo-kl entry from
        the same start: fixed KL coefficients, the adaptive controller, none. Logged every rollout:
        the reward model's score and the true accuracy (exact match with the world's answer,
        weight 0 in the reward: measured, never trained on), and the KL to the start. Reward
        hacking is the score rising while the true accuracy falls. Plotted: docs/img/align-ppo.png.
  time  (section align-rl-time)  where an RL step's time goes: one GRPO run's seconds in
        generation (the engine), scoring, the log-prob forwards and training, with the engine's
        generated tokens/s against the training tokens/s (prompt + completion tokens through
        forward and backward, per second of training).

    python benchmarks/align_rl.py --figures grpo,time --run runs/speedrun
    python benchmarks/align_rl.py --figures grpo-diagnosis --run runs/speedrun --keep runs/rl-policies
    python benchmarks/align_rl.py --figures ppo --run runs/speedrun --reward-model runs/reward/model
    python benchmarks/align_rl.py --figures grpo,ppo,time --quick --no-write --ppo-reward format   # try it out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO, command_line, load_note, log, machine_description, markdown_table, today, write_figures,
)


# ================================================================== data
def rl_arithmetic_rows(world: Path) -> list[dict]:
    """The world's RL prompts: its rl_arithmetic.jsonl, or, for a world made before that file
    existed, the same rows regenerated from its world.json (acorn.data.world.rl_arithmetic)."""
    from acorn.data.world import SIZES, read_world, rl_arithmetic
    from acorn.fileio import read_jsonl

    if (world / "rl_arithmetic.jsonl").exists():
        return list(read_jsonl(world / "rl_arithmetic.jsonl"))
    size = json.loads((world / "manifest.json").read_text())["size"]
    held_out = {(r["a"], r["op"], r["b"]) for r in read_jsonl(world / "eval" / "arithmetic.jsonl")}
    return rl_arithmetic(read_world(world / "world.json"), SIZES[size], held_out)


def write_rows(path: Path, rows: list[dict]) -> str:
    from acorn.fileio import write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return str(path)


def _messages(row: dict) -> list[dict]:
    """A row's question as chat messages: rl_arithmetic's `prompt`, or an eval row's `question` as one user turn."""
    return row["prompt"] if "prompt" in row else [{"role": "user", "content": row["question"]}]


def arithmetic_by_digits(model_dir: Path, rows: list[dict], max_new_tokens: int = 16, temperature: float = 0.0,
                         n: int = 1, seed: int = 0) -> dict:
    """Exact match on arithmetic rows by number of digits: each question as one chat turn without
    tools, scored like the arithmetic reward (acorn.train.rewards). Greedy by default; with a
    temperature, the mean reward of n seeded samples of each (what a rollout batch sees)."""
    from acorn.infer.engine import Engine
    from acorn.infer.sampling import SamplingParams
    from acorn.train.rewards import arithmetic_reward

    engine = Engine.from_pretrained(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    prompts = [engine.chat_prompt(_messages(r)) for r in rows]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=n if temperature else 1,
                            seed=seed if temperature else None)
    texts = [c.text for c in engine.generate(prompts, params)]
    each = [r for r in rows for _ in range(params.n)]
    right = arithmetic_reward(None, texts, answer=[r["answer"] for r in each])
    by = defaultdict(list)
    for r, ok in zip(each, right):
        by[r["digits"]].append(ok)
        by["all"].append(ok)
    return {k: sum(v) / len(v) for k, v in by.items()} | {"n": len(rows)}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _keep(args, model_dir: Path, name: str) -> None:
    """--keep DIR: a copy of a trained policy as DIR/name (the work directory is cleared by the next run)."""
    if args.keep:
        dest = Path(args.keep) / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(model_dir, dest)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


# ================================================================== grpo
GRPO_RUNS = {  # name: (run directory, scale_rewards, beta)
    "GRPO (std scaling)": ("grpo", True, 0.0),
    "Dr. GRPO (no std scaling)": ("dr-grpo", False, 0.0),
    "GRPO + KL (beta 0.04)": ("grpo-kl", True, 0.04),
}


def grpo_config(args, data: str, out: Path, scale: bool, beta: float):
    from acorn.train.rl import GRPOConfig

    cfg = GRPOConfig(data=data, out=str(out), init_from=str(args.sft), seed=0,
                     rewards=["arithmetic"])
    cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens = args.grpo_prompts, args.grpo_n, 12
    cfg.rollout.temperature = 1.0
    cfg.grpo.scale_rewards, cfg.grpo.beta = scale, beta
    cfg.train.micro_batch = min(64, args.grpo_prompts * args.grpo_n)
    cfg.train.max_steps = args.grpo_steps
    cfg.optim.lr = args.grpo_lr
    cfg.eval.every, cfg.eval.checkpoint_every = 0, 0
    return cfg


def figure_grpo(args) -> str:
    from acorn.fileio import read_jsonl
    from acorn.train.rl import grpo

    work = Path(args.work)
    data = write_rows(work / "rl_arithmetic.jsonl", rl_arithmetic_rows(args.run / "world"))
    eval_rows = list(read_jsonl(args.run / "world" / "eval" / "arithmetic.jsonl"))[:args.eval_limit]
    log(f"grpo: scoring the start on {len(eval_rows)} held-out problems")
    before = arithmetic_by_digits(args.sft, eval_rows)
    results, curves = {}, {}
    for name, (slug, scale, beta) in GRPO_RUNS.items():
        out = _fresh(work / slug)
        log(f"grpo: {name}: {args.grpo_steps} steps")
        grpo(grpo_config(args, data, out, scale, beta))
        _keep(args, out / "model", slug)
        results[name] = arithmetic_by_digits(out / "model", eval_rows)
        curves[name] = [(r["step"], r["reward"]) for r in _metrics(out) if "reward" in r]
    args.grpo_last_run = work / "grpo"  # the time figure reads this run's metrics
    _plot({f"train reward: {k}": v for k, v in curves.items()}, args.img / "align-grpo.png",
          "GRPO on arithmetic: mean reward of each rollout batch", "step", "exact match")
    digits = sorted(k for k in before if isinstance(k, int))
    header = ["digits", "before (SFT)", *GRPO_RUNS]
    rows = [[d, f"{before[d]:.1%}", *[f"{results[n][d]:.1%}" for n in GRPO_RUNS]] for d in digits]
    rows.append(["all", f"{before['all']:.1%}", *[f"{results[n]['all']:.1%}" for n in GRPO_RUNS]])
    first_last = ", ".join(f"{n}: {c[0][1]:.2f} -> {c[-1][1]:.2f}" for n, c in curves.items() if c)
    return "\n".join([
        "## GRPO on arithmetic without the calculator (issue 13)", "",
        f"The chat model `{args.sft}`{args.start_note} trained with `acorn.train.rl.grpo` on the world's "
        "rl_arithmetic prompts (1-4 digit operands, + - *, none an eval problem; a chat turn without tools), reward "
        f"= exact match with the answer. Each run: {args.grpo_steps} steps, {args.grpo_prompts} prompts x "
        f"{args.grpo_n} samples per step (temperature 1, at most 12 new tokens), one optimizer step per rollout "
        f"batch (on-policy), loss `dapo`, clip 0.2, AdamW lr {args.grpo_lr:g} constant, seed 0. Scored before and "
        f"after on {len(eval_rows)} held-out eval/arithmetic.jsonl problems (both operands of `digits` digits), one "
        "chat turn without tools, greedy, exact match:", "",
        markdown_table(header, rows), "",
        f"Training reward, first rollout batch -> last: {first_last}.", "",
        "![GRPO reward curves](img/align-grpo.png)", "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_description()}, device: {'cuda' if torch.cuda.is_available() else 'cpu'}  ",
        f"Date: {today()}",
    ])


# ================================================================== grpo diagnosis
def exact_reward_ascent(args, data: str, out: Path) -> list[tuple[int, float]]:
    """Gradient ascent on the EXACT expected reward of the training problems, no sampling: for exact
    match, J = mean over a step's prompts of pi(the answer's reply | prompt), the probability of the
    one completion that earns the reward (the reply as SFT wrote it: the answer, then the end-of-turn
    token; other spellings the reward accepts, "42." or " 42", are left out, so J is a lower bound).
    The same prompts in the same order as the GRPO runs (their loader), the same optimizer, learning
    rate, autocast and steps, through the one train_step. GRPO's gradient is a sampled estimate of
    this one (tests/train/test_rl_exact.py): what this run does to held-out problems, GRPO would do
    with infinitely many samples. Returns (step, J of the step's batch) and saves the model in out/model."""
    from acorn import hardware
    from acorn.infer.engine import default_stop_ids
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.loop import LossOutput, train_step
    from acorn.train.optim import OptimConfig, build_optimizers
    from acorn.train.rollouts import RolloutLoader, load_prompts, pad_batch, policy_forward

    start = args.sft
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_pretrained(start)
    model = load(start, dtype="float32", device=device).train()
    stops = default_stop_ids(tok)
    prompts, _ = load_prompts([Path(data)], tok, max_tokens=model.config.max_seq_len - 16)
    loader = RolloutLoader(prompts, None, prompts_per_batch=args.grpo_prompts, micro_batch=args.grpo_prompts, seed=0)

    def reply(p) -> list[int]:
        full = tok.apply_chat_template(p.prompt + [{"role": "assistant", "content": p.columns["answer"]}])
        assert full[:len(p.ids)] == p.ids, "the chat template renders the prompt as a prefix of the conversation"
        ids = full[len(p.ids):]
        end = next(i for i, t in enumerate(ids) if t in stops)
        return ids[:end + 1]

    def loss_fn(model, batch):
        logp, _, _ = policy_forward(model, batch)
        prob = ((logp * batch.mask).sum(1)).exp()  # pi(reply | prompt), one per row
        return LossOutput(-prob.sum(), prob.shape[0], {"J": prob.detach().sum()})

    optim = OptimConfig(lr=args.grpo_lr, warmup_steps=0, schedule="constant", weight_decay=0.0)
    optimizers = build_optimizers(model, optim)
    autocast = lambda: hardware.autocast(device, hardware.resolve_dtype("auto", device))  # noqa: E731 - as fit
    curve = []
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    for step in range(1, args.grpo_steps + 1):
        batch_prompts = loader.next_prompts()
        batch = pad_batch([p.ids for p in batch_prompts], [reply(p) for p in batch_prompts], pad)
        result = train_step(model, [batch], loss_fn, optimizers, device=device, autocast=autocast,
                            grad_clip=optim.grad_clip)
        curve.append((step, result.metrics["J"]))
    model.eval().save(out / "model", tokenizer=tok)
    return curve


DIAGNOSIS_RUNS = {  # name: (slug, rollout temperature or None for exact ascent)
    "GRPO, rollouts at temperature 1": ("grpo-t1", 1.0),
    "GRPO, rollouts at temperature 0.7": ("grpo-t07", 0.7),
    "exact expected-reward ascent (no sampling)": ("exact", None),
}


def figure_grpo_diagnosis(args) -> str:
    """Why GRPO lowered held-out arithmetic: is the sampled gradient wrong, or the objective?"""
    from acorn.fileio import read_jsonl
    from acorn.train.rl import grpo

    work = Path(args.work) / "diagnosis"
    train_rows = rl_arithmetic_rows(args.run / "world")
    data = write_rows(work / "rl_arithmetic.jsonl", train_rows)
    eval_rows = list(read_jsonl(args.run / "world" / "eval" / "arithmetic.jsonl"))[:args.eval_limit]
    # The problems the runs train on: every prompt their loader serves (the same order for all of them).
    from acorn.train.rollouts import RolloutLoader

    loader = RolloutLoader(train_rows, None, prompts_per_batch=args.grpo_prompts, micro_batch=1, seed=0)
    served = {id(r): r for _ in range(args.grpo_steps) for r in loader.next_prompts()}
    train_eval = list(served.values())[:args.train_limit]
    sampled_rows = train_rows[:args.sample_limit]

    def measure(model_dir: Path) -> dict:
        return {"held": arithmetic_by_digits(model_dir, eval_rows),
                "train": arithmetic_by_digits(model_dir, train_eval),
                **{f"sampled_t{t:g}": arithmetic_by_digits(model_dir, sampled_rows, temperature=t, n=8)
                   for t in (1.0, 0.7)},
                "greedy_sampled_rows": arithmetic_by_digits(model_dir, sampled_rows)}

    log(f"grpo-diagnosis: the start on {len(eval_rows)} held-out and {len(train_eval)} training problems")
    results = {"start (SFT)": measure(args.sft)}
    curves = {}
    for name, (slug, temperature) in DIAGNOSIS_RUNS.items():
        out = work / slug
        curve_file = out / "curve.json"
        if args.resume and curve_file.exists() and (out / "model" / "config.json").exists():
            log(f"grpo-diagnosis: {name}: kept {out} (--resume)")
            curves[name] = [tuple(x) for x in json.loads(curve_file.read_text())]
        else:
            _fresh(out)
            log(f"grpo-diagnosis: {name}: {args.grpo_steps} steps")
            if temperature is None:
                curves[name] = exact_reward_ascent(args, data, out)
            else:
                cfg = grpo_config(args, data, out, True, 0.0)
                cfg.rollout.temperature = temperature
                grpo(cfg)
                curves[name] = [(r["step"], r["reward"]) for r in _metrics(out) if "reward" in r]
            curve_file.write_text(json.dumps(curves[name]))
        _keep(args, out / "model", slug)
        results[name] = measure(out / "model")
    _plot({f"{k} ({'exact J' if v is None else 'sampled reward'})": curves[k]
           for k, (_, v) in DIAGNOSIS_RUNS.items()}, args.img / "align-grpo-diagnosis.png",
          "GRPO diagnosis: training objective per step (mean of the last 10 steps)", "step",
          "mean sampled reward / exact J", smooth=10)

    def pct(x):
        return f"{x:.1%}"

    table = [[name, pct(r["held"]["all"]), pct(r["held"].get(1, 0.0)), pct(r["train"]["all"]),
              pct(r["train"].get(1, 0.0)), pct(r["train"].get(2, 0.0)), pct(r["greedy_sampled_rows"]["all"]),
              pct(r["sampled_t1"]["all"]), pct(r["sampled_t0.7"]["all"])] for name, r in results.items()]
    first_last = "; ".join(f"{n}: {c[0][1]:.3f} -> {c[-1][1]:.3f} (mean of the last 10: "
                           f"{sum(v for _, v in c[-10:]) / len(c[-10:]):.3f})" for n, c in curves.items() if c)
    start = results["start (SFT)"]
    return "\n".join([
        "## GRPO diagnosis: why arithmetic fell (issue 13)", "",
        "The GRPO runs of the section above lowered held-out arithmetic. Two questions: is GRPO's sampled gradient "
        "wrong (a bug: rollouts, ratio, temperature), or does the objective itself, maximised on these training "
        "problems, lower held-out accuracy at this scale? The first is tested exactly on small problems "
        "(`tests/train/test_rl_exact.py`: on every completion of a tiny vocabulary and length, and through the "
        "engine's rollouts at temperature 0.7 on the tiny checkpoint, GRPO's gradient has cosine 0.98-0.999 with "
        "the exact gradient of the expected reward). The second is measured here: "
        f"from the chat model `{args.sft}`{args.start_note}, "
        f"{args.grpo_steps} steps of {args.grpo_prompts} prompts of the world's rl_arithmetic.jsonl, the same "
        "prompts in the same order for every run, AdamW lr "
        f"{args.grpo_lr:g} constant ({len(served)} distinct problems trained on): GRPO (std scaling, "
        f"{args.grpo_n} samples, dapo) with rollouts at temperature 1 and at 0.7, and gradient ascent on the EXACT expected reward of each step's prompts (no sampling: the "
        "probability of the answer's reply, the completion exact match rewards; `exact_reward_ascent`). Scored "
        f"greedily on {len(eval_rows)} held-out problems (eval/arithmetic.jsonl) and on {len(train_eval)} of the "
        f"training problems, and by the mean reward of 8 samples per problem at temperature 1 and 0.7 on "
        f"{len(sampled_rows)} training problems (beside greedy on the same {len(sampled_rows)}):", "",
        markdown_table(["model", "held-out: all", "held-out: 1 digit", "trained problems: all", "trained: 1 digit",
                        "trained: 2 digits", "greedy (sampled rows)", "sampled T=1", "sampled T=0.7"], table), "",
        f"Training objective per step, first -> last: {first_last}.", "",
        "![GRPO diagnosis](img/align-grpo-diagnosis.png)", "",
        "Reading: " + diagnosis_reading(results, start), "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_description()}, device: {'cuda' if torch.cuda.is_available() else 'cpu'} "
        f"({load_note()})  ",
        f"Date: {today()}",
    ])


def diagnosis_reading(results: dict, start: dict) -> str:
    """What the table says, worded from its numbers: each run against the start, in problems as well as
    points, beside the binomial noise of the held-out 1-digit column (the only one off the floor)."""
    import math

    held_n = round(start["held"]["n"] / max(1, len([k for k in start["held"] if isinstance(k, int)])))
    p1 = start["held"].get(1, 0.0)
    se = math.sqrt(max(p1 * (1 - p1), 1e-9) / max(held_n, 1))
    parts = [f"one held-out 1-digit problem is {1 / max(held_n, 1):.1%} points and the binomial standard error of "
             f"the start's {p1:.1%} on {held_n} problems is {se:.1%} points"]
    for name, r in results.items():
        if name == "start (SFT)":
            continue
        d_held = r["held"].get(1, 0.0) - p1
        parts.append(
            f"{name}: held-out {start['held']['all']:.1%} -> {r['held']['all']:.1%} (1 digit {d_held:+.1%}, "
            f"{'within' if abs(d_held) <= 2 * se else 'beyond'} two standard errors), trained problems "
            f"{start['train']['all']:.1%} -> {r['train']['all']:.1%} (1 digit {start['train'].get(1, 0.0):.1%} -> "
            f"{r['train'].get(1, 0.0):.1%}), on the sampled rows greedy {start['greedy_sampled_rows']['all']:.1%} -> "
            f"{r['greedy_sampled_rows']['all']:.1%} and sampled at T=1 {start['sampled_t1']['all']:.1%} -> "
            f"{r['sampled_t1']['all']:.1%}")
    runs = {k: v for k, v in results.items() if k != "start (SFT)"}
    within = all(abs(r["held"].get(1, 0.0) - p1) <= 2 * se for r in runs.values())
    best = max(runs, key=lambda k: runs[k]["train"]["all"])
    parts.append(
        f"So: {'no run moved held-out accuracy beyond two standard errors' if within else 'held-out accuracy moved beyond the noise in some run'}; "
        f"the run that raised accuracy on the problems trained on the most is {best} "
        f"({start['train']['all']:.1%} -> {runs[best]['train']['all']:.1%}), and the GRPO runs raised the sampled "
        "reward they optimise more than the greedy accuracy they are scored by")
    return "; ".join(parts) + "."


# ================================================================== ppo
def reward_model_reward(path: str):
    """A learned reward model as a reward function: acorn.train.rewards's `model=DIR`."""
    from acorn.train.rewards import reward_model

    return reward_model(path)


def ppo_rows(world: Path, name: str) -> list[dict]:
    """preference.jsonl's prompts, each with the world's answer (the chosen reply), prompt-only."""
    from acorn.fileio import read_jsonl

    return [{"prompt": r["prompt"], "answer": r["chosen"][-1]["content"], "kind": r["kind"]}
            for r in read_jsonl(world / name)]


def parse_kl(spec: str) -> list[tuple[str, float, float | None]]:
    """--ppo-kl "0.05,0.5,adaptive:1,0" -> [(name, starting coefficient, target KL or None)]."""
    runs = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        if item.startswith("adaptive:"):
            target = float(item.split(":", 1)[1])
            runs.append((f"adaptive, target {target:g} nats", ADAPTIVE_START, target))
        elif float(item) == 0:
            runs.append(("no KL penalty", 0.0, None))
        else:
            runs.append((f"KL coef {float(item):g}", float(item), None))
    return runs


ADAPTIVE_START, ADAPTIVE_HORIZON = 0.1, 1000  # the controller's first coefficient and time constant (completions)


def figure_ppo(args) -> str:
    from acorn.train.rewards import load_reward
    from acorn.train.rl import PPOConfig, ppo

    work = Path(args.work)
    data = write_rows(work / "ppo_train.jsonl", ppo_rows(args.run / "world", "preference.jsonl"))
    held = write_rows(work / "ppo_eval.jsonl", ppo_rows(args.run / "world", "eval/preference.jsonl")[:args.eval_limit])
    if args.ppo_reward:
        score_name, score_fn = load_reward(args.ppo_reward)
    elif args.reward_model:
        score_name, score_fn = "reward_model", reward_model_reward(args.reward_model)
    else:
        raise SystemExit("the ppo figure needs --reward-model DIR (from `acorn reward train`), or --ppo-reward SPEC")
    # The true accuracy rides along with weight 0: logged for every rollout and evaluation, never trained on.
    rewards = [(score_name, score_fn), load_reward("arithmetic")]  # `arithmetic`: exact match with `answer`
    runs = {}
    for name, coef, target in parse_kl(args.ppo_kl):
        slug = name.replace(" ", "-").replace(",", "").replace(".", "")
        out = _fresh(work / "ppo" / slug)
        cfg = PPOConfig(data=data, eval_data=held, out=str(out), init_from=str(args.sft), seed=0,
                        reward_weights=[1.0, 0.0])
        cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens = args.ppo_prompts, 1, 16
        cfg.rollout.epochs = 4
        cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon = coef, target, ADAPTIVE_HORIZON
        cfg.train.micro_batch = min(32, args.ppo_prompts)
        cfg.train.max_steps = args.ppo_steps
        cfg.optim.lr = args.ppo_lr
        cfg.eval.every, cfg.eval.batches, cfg.eval.checkpoint_every = max(4, args.ppo_steps // 10), 8, 0
        log(f"ppo: {name}: {args.ppo_steps} steps")
        ppo(cfg, rewards=rewards)
        _keep(args, out / "model", f"ppo-{slug}")
        runs[name] = _metrics(out)
    curves = {name: {key: [(r["step"], r[key]) for r in rows if key in r]
                     for key in ("score", "reward/arithmetic", "kl", "kl_coef")} for name, rows in runs.items()}
    _plot_ppo(curves, args.img / "align-ppo.png")

    def first_last(rows, key, last=10):
        vals = [r[key] for r in rows if key in r]
        if not vals:
            return "-"
        tail = vals[-last:]
        return f"{vals[0]:.3f} -> {sum(tail) / len(tail):.3f}"

    def held_out(rows, key):
        vals = [r[key] for r in rows if key in r]
        return f"{vals[0]:.3f} -> {vals[-1]:.3f}" if vals else "-"

    table = [[name, first_last(rows, "kl_coef", 1), first_last(rows, "score"), first_last(rows, "reward/arithmetic"),
              first_last(rows, "kl"), held_out(rows, f"val_reward/{score_name}"),
              held_out(rows, "val_reward/arithmetic")] for name, rows in runs.items()]
    reading = []
    for name, rows in runs.items():
        score = [r["score"] for r in rows if "score" in r]
        acc = [r["reward/arithmetic"] for r in rows if "reward/arithmetic" in r]
        kl = [r["kl"] for r in rows if "kl" in r]
        mean = lambda v: sum(v[-10:]) / len(v[-10:])  # noqa: E731
        reading.append(f"{name}: score {score[0]:.2f} -> {mean(score):.2f}, true accuracy {acc[0]:.3f} -> "
                       f"{mean(acc):.3f}, KL {mean(kl):.2f} nats")
    return "\n".join([
        "## PPO against a learned reward model: the KL penalty against reward hacking (issue 13)", "",
        f"The chat model `{args.sft}`{args.start_note} trained with `acorn.train.rl.ppo` against `{score_name}` on the prompts of the "
        "world's preference.jsonl (facts, unknown people, arithmetic); the true accuracy is exact match with the "
        "answer the world knows (the pair's chosen reply), carried as a second reward of weight 0: logged, never "
        f"trained on. Each run: {args.ppo_steps} steps, {args.ppo_prompts} prompts per rollout, 4 PPO epochs, "
        f"value head on the policy, GAE (gamma 1, lambda 0.95), k1 KL, AdamW lr {args.ppo_lr:g}, seed 0; the KL "
        f"coefficient fixed, or adaptive (Ziegler et al. 2019's controller, starting at {ADAPTIVE_START:g}, horizon "
        f"{ADAPTIVE_HORIZON} completions). Rollout columns: the first rollout batch -> the mean of the last 10 "
        "(training prompts, sampled at temperature 1); held-out: greedy replies to eval/preference.jsonl's prompts, "
        "first -> last evaluation:", "",
        markdown_table(["run", "KL coefficient", "reward-model score", "true accuracy", "KL to the start (nats)",
                        "held-out score", "held-out true accuracy"], table), "",
        "Reading: " + "; ".join(reading) + ". Reward hacking is the score rising while the true accuracy falls; the "
        "penalty's strength sets how far the policy may drift to find it.", "",
        "![PPO curves](img/align-ppo.png)", "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_description()}, device: {'cuda' if torch.cuda.is_available() else 'cpu'} "
        f"({load_note()})  ",
        f"Date: {today()}",
    ])


# ================================================================== time
def figure_time(args) -> str:
    from acorn.train.rl import grpo, time_split

    out = getattr(args, "grpo_last_run", None)
    if out is None or not (out / "metrics.jsonl").exists():
        work = Path(args.work)
        data = write_rows(work / "rl_arithmetic.jsonl", rl_arithmetic_rows(args.run / "world"))
        out = _fresh(work / "time")
        log(f"time: one GRPO run of {args.grpo_steps} steps")
        grpo(grpo_config(args, data, out, True, 0.0))
    rows = _metrics(out)
    split = time_split(rows)
    total = sum(split.values())
    generated = sum(r.get("rollout_tokens", 0.0) for r in rows)
    trained = sum(r.get("batch_tokens", 0.0) for r in rows)  # one epoch per rollout batch in these runs
    table = [[k, f"{v:.1f}", f"{v / total:.0%}"] for k, v in split.items()]
    return "\n".join([
        "## Where an RL step's time goes (issue 13)", "",
        f"One GRPO run (`{out}`: {len(rows)} steps, {args.grpo_prompts} prompts x {args.grpo_n} samples per step, "
        "one optimizer step per rollout batch): seconds in each part, from its metrics.jsonl (generation, scoring "
        "and the log-prob forwards are timed by the rollout worker; training is each step's time less those).", "",
        markdown_table(["part", "seconds", "share"], table), "",
        f"The engine generated {generated / split['generate']:,.0f} tokens/s (completion tokens, continuous "
        f"batching, the policy's own weights); training processed {trained / max(split['train'], 1e-9):,.0f} "
        "tokens/s (prompt + completion tokens through forward and backward).", "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_description()}, device: {'cuda' if torch.cuda.is_available() else 'cpu'}  ",
        f"Date: {today()}",
    ])


# ================================================================== plots
def _plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, xlabel: str, ylabel: str,
          smooth: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in curves.items():
        ys = [y for _, y in pts]
        ys = [sum(ys[max(0, i - smooth + 1):i + 1]) / len(ys[max(0, i - smooth + 1):i + 1]) for i in range(len(ys))]
        ax.plot([x for x, _ in pts], ys, label=label, lw=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from acorn.fileio import atomic_write

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _plot_ppo(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """One panel each: reward-model score, true accuracy, KL to the start, KL coefficient; one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("score", "reward-model score"), ("reward/arithmetic", "true accuracy (exact match, not trained on)"),
              ("kl", "KL to the start (nats per completion)"), ("kl_coef", "KL coefficient")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.8))
    for ax, (key, title) in zip(axes, panels):
        for name, run in curves.items():
            pts = run.get(key, [])
            ax.plot([x for x, _ in pts], [y for _, y in pts], label=name, lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save_png(fig, path)


# ================================================================== main
FIGURES = {"grpo": ("align-grpo", figure_grpo), "grpo-diagnosis": ("align-grpo-diagnosis", figure_grpo_diagnosis),
           "ppo": ("align-ppo", figure_ppo), "time": ("align-rl-time", figure_time)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default="grpo,time", help=f"comma-separated, of {', '.join(FIGURES)}")
    ap.add_argument("--run", type=Path, default=Path("runs/speedrun"), help="a finished `acorn speedrun` directory")
    ap.add_argument("--sft", type=Path, help="the chat model to start from (default: RUN/sft/model)")
    ap.add_argument("--start-note", default="", help="how the start model was made, for the sections' prose")
    ap.add_argument("--work", default="benchmarks/.cache/align-rl", help="where runs are trained (cleared per run)")
    ap.add_argument("--no-write", action="store_true", help="print the sections instead of writing BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="a few steps and problems each, to try it out")
    ap.add_argument("--eval-limit", type=int, default=None, help="score only the first N held-out rows")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="grpo-diagnosis: score greedily only the first N training problems (default all)")
    ap.add_argument("--sample-limit", type=int, default=400,
                    help="grpo-diagnosis: training problems whose sampled reward (8 samples each) is measured")
    ap.add_argument("--resume", action="store_true",
                    help="grpo-diagnosis: keep runs already trained in WORK (their model and curve.json); measure again")
    ap.add_argument("--keep", help="copy each trained policy to DIR/<run> (the work directory is reused)")
    ap.add_argument("--grpo-steps", type=int, default=150)
    ap.add_argument("--grpo-prompts", type=int, default=16)
    ap.add_argument("--grpo-n", type=int, default=8)
    ap.add_argument("--grpo-lr", type=float, default=5e-5)
    ap.add_argument("--reward-model", help="a reward model directory (`acorn reward train`), for the ppo figure")
    ap.add_argument("--ppo-reward", help="a reward function spec in place of the reward model (smoke runs)")
    ap.add_argument("--ppo-kl", default="0.05,0.5,adaptive:1,0",
                    help="the ppo figure's runs: fixed KL coefficients, adaptive:TARGET (nats), 0 for none")
    ap.add_argument("--ppo-steps", type=int, default=200)
    ap.add_argument("--ppo-prompts", type=int, default=32)
    ap.add_argument("--ppo-lr", type=float, default=2e-5)
    args = ap.parse_args()
    if args.quick:
        args.grpo_steps, args.grpo_prompts, args.grpo_n = 3, 4, 4
        args.ppo_steps, args.ppo_prompts = 8, 8
        args.eval_limit = args.eval_limit or 24
        args.train_limit, args.sample_limit = args.train_limit or 24, min(args.sample_limit, 8)
    args.sft = args.sft or args.run / "sft" / "model"
    args.start_note = f" ({args.start_note})" if args.start_note else ""
    args.command = command_line()
    # The figures' images go beside BENCHMARKS.md; a trial run (--no-write) keeps them in the work directory.
    args.img = Path(args.work) if args.no_write else REPO / "docs" / "img"
    write_figures(args, FIGURES)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
