"""Reward model training: a scalar head on the transformer fitted to preference pairs (Bradley-Terry).

RLHF's first step (Stiennon et al. 2020; Ouyang et al. 2022): people prefer y_w to y_l for
prompt x; the Bradley-Terry model (1952) says P(y_w > y_l) = sigmoid(r(x, y_w) - r(x, y_l)), so
the reward model r (acorn.model.heads.RewardModel: the language model's final hidden state at the
last token, through a linear d_model -> 1) maximises that likelihood:

    loss = -log sigmoid(r_w - r_l - m)

with m = 0, or a per-pair margin from the data (a "margin" field: Llama 2's margin loss, Touvron
et al. 2023, for pairs rated far apart), plus optionally center_rewards_coefficient x
(r_w + r_l)^2, which keeps rewards centred on 0 (Eisenstein et al. 2023); equal to TRL 1.16's
RewardTrainer loss on the same batch. The held-out pair accuracy (how often r_w > r_l on pairs
never trained on) is what a reward model is judged by; it is logged as val_accuracy and reported.

Data: the preference formats of acorn.train.prefs_data; each side is scored whole (prompt +
completion, rendered as acorn.model.heads.sequence_ids renders it), so scoring a conversation
later (RewardModel.score, `acorn reward score`) reads exactly what training read.

Saved as transformers' sequence classifier (LlamaForSequenceClassification, ... with num_labels
1 and pad_token_id set), which AutoModelForSequenceClassification loads with the same scores.
`load_reward_model(path)` is the API RL uses: `.score(texts or conversations or ids) -> [float]`,
`.check_tokenizer(policy_tokenizer)`.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from acorn.errors import AcornError
from acorn.model.heads import RewardModel
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, accumulation, fit
from acorn.train.optim import OptimConfig


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-pair -log sigmoid(r_w - r_l - margin)."""
    diff = chosen_rewards - rejected_rewards
    return -F.logsigmoid(diff if margin is None else diff - margin)


@dataclass
class RewardConfig:
    data: str = "runs/world/preference.jsonl"  # preference JSONL(.gz) files, directories or globs, comma-separated
    eval_data: str = ""  # held-out pairs for the accuracy; "": val_fraction of data
    out: str = "runs/reward"
    init_from: str = ""  # the (SFT) checkpoint whose backbone the reward model starts from (required)
    margin: bool = True  # use a row's "margin" field when every pair of a batch has one
    center_rewards_coefficient: float = 0.0  # > 0: add coef x (r_w + r_l)^2 (rewards centred on 0)
    seed: int = 0
    epochs: float = 1.0  # used when train.max_steps is 0
    val_fraction: float = 0.05
    model: ModelConfig | None = None  # taken from the checkpoint
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=10, min_lr_ratio=0.0,
                                                                   weight_decay=0.0))
    # micro_batch counts pairs; seq_len is the longest sequence kept.
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=0, micro_batch=8, seq_len=256,
                                                                 batch_tokens=4096))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=50, batches=0, checkpoint_every=200))

    # eval.batches 0: every held-out pair (the accuracy is over all of them)
    LIMITS: ClassVar[dict[str, str]] = {"seed": ">= 0", "epochs": "> 0", "val_fraction": "[0, 1)",
                                        "center_rewards_coefficient": ">= 0", "eval.batches": ">= 0"}


def reward_loss(model, batch, *, margin: bool = True, center: float = 0.0) -> LossOutput:
    """The loop's loss: Bradley-Terry summed over the batch's pairs, weight = pairs; the accuracy
    and margin as sums. The batch is a PairBatch (chosen rows, then rejected rows)."""
    rewards = model(batch.input_ids, batch.attention_mask)
    b = len(rewards) // 2
    chosen, rejected = rewards[:b], rewards[b:]
    losses = bradley_terry_loss(chosen, rejected, batch.margin if margin else None)
    if center:
        losses = losses + center * (chosen + rejected) ** 2
    diff = (chosen - rejected).detach()
    return LossOutput(losses.sum(), b, {"accuracy": (diff > 0).sum(), "margin": diff.sum(),
                                        "reward": (chosen + rejected).detach().sum() / 2})


@torch.no_grad()
def evaluate(model, *, loader, batches: int | None, margin: bool, center: float) -> dict:
    """Held-out pairs: val_loss and val_accuracy (the share ranked right), over every pair when batches is 0."""
    from acorn.train.loop import to_device

    loss = n = right = 0.0
    device = next(model.parameters()).device
    for batch in loader.iter_eval(batches or None):
        out = reward_loss(model, to_device(batch, device), margin=margin, center=center)
        loss, n, right = loss + float(out.loss), n + out.weight, right + float(out.metrics["accuracy"])
    return {"val_loss": loss / n, "val_accuracy": right / n} if n else {}


def reward_train(cfg: RewardConfig, *, resume: bool = False) -> Path:
    """Fit a reward model from cfg.init_from on the pairs in cfg.data; returns the run directory
    (RUN/model: the sequence classifier, with its tokenizer)."""
    from acorn.fileio import expand_inputs
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.prefs_data import SUFFIXES, load_pairs, pair_batch
    from acorn.train.sft_data import ItemLoader
    from acorn.train.run import build_model, start
    from acorn.train.sft_data import split_examples

    if not cfg.init_from:
        raise AcornError("a reward model starts from a language model: pass --init_from CHECKPOINT_DIR")
    if cfg.center_rewards_coefficient < 0:
        raise AcornError("--center_rewards_coefficient must be 0 (off) or positive")
    device, dist = start(cfg)
    try:
        tok = Tokenizer.from_pretrained(cfg.init_from)
    except AcornError as e:
        raise AcornError(f"the checkpoint's tokenizer: {e}") from None
    model = RewardModel.from_causal_lm(build_model(cfg, device, tok.vocab_size), tok)

    def read(spec: str):
        return load_pairs(expand_inputs([p for p in spec.split(",") if p], SUFFIXES, any_file=False), tok,
                          max_len=cfg.train.seq_len)

    pairs, stats = read(cfg.data)
    if cfg.eval_data:
        train_pairs, val_pairs = pairs, read(cfg.eval_data)[0]
    else:
        train_pairs, val_pairs = split_examples(pairs, cfg.val_fraction, cfg.seed)
    collate = functools.partial(pair_batch, pad_id=model.pad_id if model.pad_id is not None else 0)
    loader = ItemLoader(train_pairs, collate, batch_size=cfg.train.micro_batch, seed=cfg.seed, rank=dist.rank,
                        world_size=dist.world)
    val_loader = ItemLoader(val_pairs, collate, batch_size=cfg.train.micro_batch, seed=cfg.seed)
    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len, dist.world)
    if cfg.train.max_steps <= 0:
        per_epoch = max(1, len(train_pairs) // (cfg.train.micro_batch * dist.world * accum))
        cfg.train.max_steps = max(1, math.ceil(cfg.epochs * per_epoch))
    if dist.main:
        extra = stats.describe()
        print(f"reward: {len(train_pairs):,} pairs ({len(val_pairs):,} held out{'; ' + extra if extra else ''}); "
              f"{cfg.train.micro_batch * accum * dist.world} pairs per step, {cfg.train.max_steps} steps", flush=True)
    loss_fn = functools.partial(reward_loss, margin=cfg.margin, center=cfg.center_rewards_coefficient)
    validate = functools.partial(evaluate, loader=val_loader, batches=cfg.eval.batches, margin=cfg.margin,
                                 center=cfg.center_rewards_coefficient) if val_pairs else None
    out = fit(cfg, model, loader, loss_fn, evaluate=validate, device=device, dist=dist, tokenizer=tok, resume=resume,
              stage="reward")
    if dist.main and val_pairs:
        _report_accuracy(out, model, val_loader, cfg)
    return out


def _report_accuracy(out: Path, model: RewardModel, val_loader, cfg: RewardConfig) -> None:
    """The held-out pair accuracy of the finished model, on every held-out pair, in report.md."""
    from acorn.fileio import write_text

    model.eval()
    r = evaluate(model, loader=val_loader, batches=None, margin=cfg.margin, center=cfg.center_rewards_coefficient)
    report = out / "report.md"
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    line = (f"\n## Held-out pairs\n\nAccuracy (r(chosen) > r(rejected)) on {len(val_loader.items):,} pairs never "
            f"trained on: **{r['val_accuracy']:.1%}** (loss {r['val_loss']:.4f}; chance 50%).\n")
    marker = "\n## Configuration"
    text = text.replace(marker, line + marker, 1) if marker in text else text + line
    write_text(report, text)
    print(f"held-out pair accuracy: {r['val_accuracy']:.1%} on {len(val_loader.items):,} pairs", flush=True)


def load_reward_model(path, *, dtype=None, device="auto") -> RewardModel:
    """A reward model directory (`acorn reward train`'s RUN/model, or a transformers
    XForSequenceClassification with one label) with its tokenizer: `.score(items) -> [float]`,
    `.check_tokenizer(tok)`."""
    return RewardModel.from_pretrained(path, dtype=dtype, device=device)


def score_file(model_path, data, *, out=None, batch_size: int = 16, tokenizer=None) -> dict:
    """Score every row of preference or text files: pairs get both sides scored and counted as ranked
    right or not; {"text": ...}, {"messages": [...]} and {"prompt", "completion"} rows get one score.
    Writes the rows with their scores to `out` (JSONL) when given; returns a summary. tokenizer: a
    path whose tokenizer (a policy's) must be the reward model's, checked before anything is scored."""
    from acorn.fileio import write_jsonl
    from acorn.train.prefs_data import is_conversation, pair_parts, read_rows

    rm = load_reward_model(model_path, device="auto")
    if tokenizer is not None:
        from acorn.tokenizer.bpe import Tokenizer

        rm.check_tokenizer(Tokenizer.from_pretrained(tokenizer))
    rows, items, kinds = [], [], []
    for where, row in read_rows([data] if isinstance(data, (str, Path)) else data):
        if isinstance(row, dict) and "chosen" in row and "rejected" in row:
            prompt, chosen, rejected, _ = pair_parts(row, where)
            join = (lambda a, b: list(a or []) + list(b)) if is_conversation(chosen) else (lambda a, b: (a or "") + b)
            items += [join(prompt, chosen), join(prompt, rejected)]
            kinds.append("pair")
        elif isinstance(row, dict) and ("text" in row or "messages" in row or {"prompt", "completion"} <= set(row)):
            if "text" in row:
                items.append(row["text"])
            elif "messages" in row:
                items.append(row["messages"])
            else:
                p, c = row["prompt"], row["completion"]
                items.append(list(p) + list(c) if is_conversation(p) else p + c)
            kinds.append("one")
        else:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise AcornError(f"{where}: a row to score needs 'chosen' and 'rejected', 'text', 'messages', or 'prompt' "
                             f"and 'completion'; it has {keys or 'no fields'}")
        rows.append(row)
    scores = rm.score(items, batch_size=batch_size)
    out_rows, k, right, pairs = [], 0, 0, 0
    for row, kind in zip(rows, kinds):
        if kind == "pair":
            c, r = scores[k], scores[k + 1]
            k += 2
            pairs += 1
            right += c > r
            out_rows.append({**row, "score_chosen": c, "score_rejected": r})
        else:
            out_rows.append({**row, "score": scores[k]})
            k += 1
    if out is not None:
        write_jsonl(out, out_rows)
    return {"rows": len(rows), "pairs": pairs, "accuracy": right / pairs if pairs else None,
            "mean_score": sum(scores) / len(scores) if scores else None, "rows_out": out_rows}
