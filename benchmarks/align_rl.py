"""RL alignment benchmarks (issue 13, parts 3 and 4): what GRPO and PPO change on the built-in world.

One function per figure, each writing its own section of docs/BENCHMARKS.md (the lead merges
these into benchmarks/align.py beside the preference-optimisation figures):

  grpo  (section align-grpo)  GRPO on arithmetic without the calculator, from the speedrun's chat
        model: the world's rl_arithmetic prompts (1-4 digit operands, none of them an eval
        problem), reward = exact match with the answer. Three runs from the same start, same
        steps and seeds: std scaling on (GRPO), off (Dr. GRPO), on with a k3 KL term to the
        start (beta 0.04). Before and after each: exact match by number of digits on the held-out
        eval/arithmetic.jsonl, asked in a chat turn without tools, greedy, through the engine.
  ppo   (section align-ppo)   PPO against a learned reward model (`--reward-model DIR`, made by
        `acorn reward train` on the world's preference.jsonl) on the prompts of preference.jsonl,
        each with the answer the world knows (the chosen reply). Two runs from the same start:
        with the KL penalty (kl_coef 0.05) and without it (0). Logged every rollout: the reward
        model's score and the true accuracy (exact match with the world's answer, weight 0 in
        the reward: measured, never trained on), and the KL to the start. Reward hacking is the
        KL-0 run's score rising while its true accuracy falls. Plotted: docs/img/align-ppo.png.
  time  (section align-rl-time)  where an RL step's time goes: one GRPO run's seconds in
        generation (the engine), scoring, the log-prob forwards and training, with the engine's
        generated tokens/s against the training tokens/s (prompt + completion tokens through
        forward and backward, per second of training).

    python benchmarks/align_rl.py --figures grpo,time --run runs/speedrun
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
from common import REPO, command_line, log, machine_description, markdown_table, today, write_figures  # noqa: E402


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


def arithmetic_by_digits(model_dir: Path, rows: list[dict], max_new_tokens: int = 16) -> dict:
    """Exact match on eval/arithmetic.jsonl rows by number of digits: each question as one chat
    turn without tools, greedy, scored like the arithmetic reward (acorn.train.rewards)."""
    from acorn.infer.engine import Engine
    from acorn.train.rewards import arithmetic_reward

    engine = Engine.from_pretrained(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    prompts = [engine.chat_prompt([{"role": "user", "content": r["question"]}]) for r in rows]
    texts = [c.text for c in engine.generate(prompts, temperature=0.0, max_new_tokens=max_new_tokens)]
    right = arithmetic_reward(None, texts, answer=[r["answer"] for r in rows])
    by = defaultdict(list)
    for r, ok in zip(rows, right):
        by[r["digits"]].append(ok)
        by["all"].append(ok)
    return {k: sum(v) / len(v) for k, v in by.items()} | {"n": len(rows)}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


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

    cfg = GRPOConfig(data=data, out=str(out), init_from=str(args.run / "sft" / "model"), seed=0,
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
    before = arithmetic_by_digits(args.run / "sft" / "model", eval_rows)
    results, curves = {}, {}
    for name, (slug, scale, beta) in GRPO_RUNS.items():
        out = _fresh(work / slug)
        log(f"grpo: {name}: {args.grpo_steps} steps")
        grpo(grpo_config(args, data, out, scale, beta))
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
        f"The speedrun's chat model (`{args.run}/sft/model`) trained with `acorn.train.rl.grpo` on the world's "
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
    runs, curves = {}, {}
    for name, kl in (("KL penalty 0.05", 0.05), ("no KL penalty", 0.0)):
        out = _fresh(work / "ppo" / ("kl" if kl else "nokl"))
        cfg = PPOConfig(data=data, eval_data=held, out=str(out), init_from=str(args.run / "sft" / "model"), seed=0,
                        reward_weights=[1.0, 0.0])
        cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens = args.ppo_prompts, 1, 16
        cfg.rollout.epochs = 4
        cfg.ppo.kl_coef = kl
        cfg.train.micro_batch = min(32, args.ppo_prompts)
        cfg.train.max_steps = args.ppo_steps
        cfg.optim.lr = args.ppo_lr
        cfg.eval.every, cfg.eval.batches, cfg.eval.checkpoint_every = max(4, args.ppo_steps // 10), 8, 0
        log(f"ppo: {name}: {args.ppo_steps} steps")
        ppo(cfg, rewards=rewards)
        rows = _metrics(out)
        runs[name] = rows
        curves[f"{name}: reward-model score"] = [(r["step"], r["score"]) for r in rows if "score" in r]
        curves[f"{name}: true accuracy"] = [(r["step"], r["reward/arithmetic"]) for r in rows
                                            if "reward/arithmetic" in r]
        curves[f"{name}: KL to the start"] = [(r["step"], r["kl"]) for r in rows if "kl" in r]
    _plot_ppo(curves, args.img / "align-ppo.png")

    def first_last(rows, key):
        vals = [r[key] for r in rows if key in r]
        return f"{vals[0]:.3f} -> {vals[-1]:.3f}" if vals else "-"

    table = [[name, first_last(rows, "score"), first_last(rows, "reward/arithmetic"), first_last(rows, "kl"),
              first_last(rows, f"val_reward/{score_name}"), first_last(rows, "val_reward/arithmetic")]
             for name, rows in runs.items()]
    return "\n".join([
        "## PPO against a learned reward model, and reward hacking without the KL penalty (issue 13)", "",
        f"The speedrun's chat model trained with `acorn.train.rl.ppo` against `{score_name}` on the prompts of the "
        "world's preference.jsonl (facts, unknown people, arithmetic); the true accuracy is exact match with the "
        "answer the world knows (the pair's chosen reply), carried as a second reward of weight 0: logged, never "
        f"trained on. Each run: {args.ppo_steps} steps, {args.ppo_prompts} prompts per rollout, 4 PPO epochs, "
        f"value head on the policy, GAE (gamma 1, lambda 0.95), k1 KL, AdamW lr {args.ppo_lr:g}; held-out: greedy "
        "replies to eval/preference.jsonl's prompts. First -> last:", "",
        markdown_table(["run", "reward-model score", "true accuracy", "KL to the start (nats)",
                        "held-out score", "held-out true accuracy"], table), "",
        "![PPO curves](img/align-ppo.png)", "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_description()}, device: {'cuda' if torch.cuda.is_available() else 'cpu'}  ",
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
def _plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, xlabel: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in curves.items():
        ax.plot([x for x, _ in pts], [y for _, y in pts], label=label, lw=1)
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


def _plot_ppo(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Score and true accuracy (left), KL (right), both runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, pts in curves.items():
        ax = right if "KL to" in label else left
        ax.plot([x for x, _ in pts], [y for _, y in pts], label=label, lw=1,
                ls="--" if "true accuracy" in label else "-")
    left.set_title("reward-model score and true accuracy")
    right.set_title("KL to the start (nats per completion)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)


# ================================================================== main
FIGURES = {"grpo": ("align-grpo", figure_grpo), "ppo": ("align-ppo", figure_ppo), "time": ("align-rl-time", figure_time)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default="grpo,time", help=f"comma-separated, of {', '.join(FIGURES)}")
    ap.add_argument("--run", type=Path, default=Path("runs/speedrun"), help="a finished `acorn speedrun` directory")
    ap.add_argument("--work", default="benchmarks/.cache/align-rl")
    ap.add_argument("--no-write", action="store_true", help="print the sections instead of writing BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="a few steps and problems each, to try it out")
    ap.add_argument("--eval-limit", type=int, default=None, help="score only the first N held-out rows")
    ap.add_argument("--grpo-steps", type=int, default=150)
    ap.add_argument("--grpo-prompts", type=int, default=16)
    ap.add_argument("--grpo-n", type=int, default=8)
    ap.add_argument("--grpo-lr", type=float, default=5e-5)
    ap.add_argument("--reward-model", help="a reward model directory (`acorn reward train`), for the ppo figure")
    ap.add_argument("--ppo-reward", help="a reward function spec in place of the reward model (smoke runs)")
    ap.add_argument("--ppo-steps", type=int, default=200)
    ap.add_argument("--ppo-prompts", type=int, default=32)
    ap.add_argument("--ppo-lr", type=float, default=2e-5)
    args = ap.parse_args()
    if args.quick:
        args.grpo_steps, args.grpo_prompts, args.grpo_n = 3, 4, 4
        args.ppo_steps, args.ppo_prompts = 8, 8
        args.eval_limit = args.eval_limit or 24
    args.command = command_line()
    # The figures' images go beside BENCHMARKS.md; a trial run (--no-write) keeps them in the work directory.
    args.img = Path(args.work) if args.no_write else REPO / "docs" / "img"
    write_figures(args, FIGURES)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
