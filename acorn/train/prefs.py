"""Direct preference optimisation and its relatives: one loss function per method, on the one loop.

RLHF fits a reward model to preference pairs, then optimises the policy against it with PPO and
a KL penalty to the SFT model. Rafailov et al. 2023 ("Direct Preference Optimization") showed the
KL-constrained optimum is pi*(y|x) ~ pi_ref(y|x) exp(r(x, y) / beta), so the reward is implied by
the policy itself, r = beta log(pi / pi_ref) + const, and the Bradley-Terry likelihood of the
pairs becomes a loss on the policy directly, with no reward model and no sampling. Each method
below is a function from per-sequence log-probabilities to per-item losses; h is the difference
of log-ratios  h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]:

  dpo    Rafailov et al. 2023: -log sigmoid(beta h). With label_smoothing e > 0, conservative
         DPO (cDPO, Mitchell 2023): the labels are taken as flipped with probability e,
         -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h).
  ipo    Azar et al. 2023 (IPO): (h' - 1 / (2 beta))^2, a squared loss that keeps the margin from
         growing without bound; h' is h with each log-ratio averaged over its completion's tokens
         (TRL's normalisation, confirmed with the authors).
  kto    Ethayarajh et al. 2024 (KTO): unpaired examples, each desirable or not; with r the
         log-ratio and z0 a detached estimate of KL(pi || pi_ref) over the batch (mismatched
         prompt/completion pairs, clamped at 0), desirable: w_d (1 - sigmoid(beta (r - z0))),
         undesirable: w_u (1 - sigmoid(beta (z0 - r))).
  orpo   Hong et al. 2024 (ORPO): no reference. The SFT loss plus beta times -log sigmoid of the
         log odds ratio, odds(y) = p / (1 - p) with p the per-token average probability; the NLL
         is over the whole chosen sequence, prompt included, as TRL 1.16 computes it.
  simpo  Meng et al. 2024 (SimPO): no reference. -log sigmoid(beta (avg log pi(y_w) - avg log
         pi(y_l)) - gamma): the length-normalised log-probability is the reward, gamma a margin.

Every loss equals TRL 1.16's on the same inputs, gradients included (tests/train/test_prefs.py:
DPOTrainer's sigmoid and ipo, KTOTrainer, ORPOTrainer, CPOTrainer with loss_type="simpo"; cDPO
equals TRL's label-smoothed 'aot' loss on one pair, where its sorting does nothing).

The reference's log-probabilities are computed once, before training (`fill_reference`): the
starting model itself (with LoRA: the base with the adapters switched off, as TRL uses a PEFT
model's base), or --reference CHECKPOINT. ORPO and SimPO need none. Logged as TRL logs them:
rewards/chosen, rewards/rejected (beta times the log-ratio; ORPO and SimPO: beta times the
average log-probability), rewards/margins, rewards/accuracies, logps/chosen, logps/rejected.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from acorn.errors import AcornError
from acorn.model.lora import LoRAConfig
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, accumulation, fit
from acorn.train.optim import OptimConfig
from acorn.train.prefs_data import KTOBatch

METHODS = ("dpo", "ipo", "kto", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")
# Each method's usual beta: DPO/IPO/KTO/ORPO as TRL's defaults, SimPO as its paper (2.0-2.5).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}


# ------------------------------------------------------------------ losses
def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Per-pair DPO loss from summed log-probabilities; label_smoothing > 0 is cDPO."""
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             chosen_tokens: Tensor, rejected_tokens: Tensor, *, beta: float) -> Tensor:
    """Per-pair IPO loss; each log-ratio is averaged over its completion's tokens."""
    h = ((chosen_logps - ref_chosen_logps) / chosen_tokens.clamp(min=1)
         - (rejected_logps - ref_rejected_logps) / rejected_tokens.clamp(min=1))
    return (h - 1 / (2 * beta)) ** 2


def kto_loss(logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """Per-example KTO loss; kl is the batch's detached KL estimate (z0)."""
    r = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable, good, bad)


def log_odds_ratio(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor) -> Tensor:
    """log(odds(y_w) / odds(y_l)), odds = p / (1 - p), from average log-probabilities; log(1 - p)
    as log1mexp, split at -log 2 so neither branch cancels (Maechler 2012)."""
    def log1mexp(x):
        return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))

    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    return (c - r) - (log1mexp(c) - log1mexp(r))


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, *, beta: float) -> Tensor:
    """Per-pair odds-ratio term of ORPO (the NLL is added by `preference_loss`)."""
    return -beta * F.logsigmoid(log_odds_ratio(chosen_avg_logps, rejected_avg_logps))


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, *, beta: float, gamma: float,
               label_smoothing: float = 0.0) -> Tensor:
    """Per-pair SimPO loss from average log-probabilities."""
    z = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


# ------------------------------------------------------------------ config
@dataclass
class PrefsConfig:
    data: str = "runs/world/preference.jsonl"  # JSONL(.gz) files, directories or globs, comma-separated
    eval_data: str = ""  # held-out pairs (e.g. runs/world/eval/preference.jsonl); "": val_fraction of data
    out: str = "runs/dpo"
    init_from: str = ""  # the SFT checkpoint directory (required)
    reference: str = ""  # the reference model (default: init_from as it starts; with LoRA, the base without adapters)
    loss: Literal["dpo", "ipo", "kto", "orpo", "simpo"] = "dpo"
    beta: float = 0.0  # 0: the method's default (DEFAULT_BETA); IPO's tau, ORPO's lambda
    label_smoothing: float = 0.0  # dpo: cDPO's flip probability in [0, 0.5); simpo: the same smoothing
    simpo_gamma: float = 0.5  # SimPO's target margin (TRL's simpo_gamma)
    desirable_weight: float = 1.0  # KTO's w_d
    undesirable_weight: float = 1.0  # KTO's w_u
    seed: int = 0
    epochs: float = 1.0  # used when train.max_steps is 0
    val_fraction: float = 0.05
    model: ModelConfig | None = None  # taken from the checkpoint
    # Preference tuning moves a tuned model a little: a low peak rate, no weight decay.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10, min_lr_ratio=0.0,
                                                                   weight_decay=0.0))
    # micro_batch counts pairs (KTO: examples); seq_len is the longest prompt + completion kept.
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=0, micro_batch=8, seq_len=256,
                                                                 batch_tokens=4096))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=50, batches=10, checkpoint_every=200))
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # --lora.r 16: the policy as an adapter

    # eval.batches 0: every held-out pair (the accuracy is over all of them)
    LIMITS: ClassVar[dict[str, str]] = {"seed": ">= 0", "epochs": "> 0", "val_fraction": "[0, 1)", "beta": ">= 0",
                                        "label_smoothing": "[0, 0.5)", "desirable_weight": "> 0",
                                        "undesirable_weight": "> 0", "eval.batches": ">= 0"}

    @property
    def method_beta(self) -> float:
        return self.beta or DEFAULT_BETA[self.loss]


def check(cfg: PrefsConfig) -> None:
    if not cfg.init_from:
        raise AcornError(f"{cfg.loss} starts from a fine-tuned model: pass --init_from CHECKPOINT_DIR")
    if cfg.beta < 0:
        raise AcornError(f"--beta must be positive (0 = the method's default), not {cfg.beta}")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise AcornError(f"--label_smoothing is the probability a label is flipped, in [0, 0.5); not {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss not in ("dpo", "simpo"):
        raise AcornError(f"--label_smoothing applies to dpo (cDPO) and simpo, not {cfg.loss}")
    if cfg.desirable_weight <= 0 or cfg.undesirable_weight <= 0:
        raise AcornError("--desirable_weight and --undesirable_weight must be positive")
    if cfg.reference and cfg.loss in REFERENCE_FREE:
        raise AcornError(f"{cfg.loss} uses no reference model; drop --reference")


# ------------------------------------------------------------ log-probs
def token_logps(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(N, T-1): log pi(token t+1 | tokens <= t) of every next token, in float32."""
    logits = model(input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    # gather - logsumexp instead of log_softmax: no second (N, T, vocab) tensor.
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


def completion_logps(model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(summed log-probability of each row's completion, its number of tokens, the per-token log-probs)."""
    logp = token_logps(model, input_ids, attention_mask)
    mask = completion_mask[:, 1:].to(logp.dtype)
    return (logp * mask).sum(-1), mask.sum(-1), logp


# ---------------------------------------------------------- loss for fit
def preference_loss(model, batch, *, cfg: PrefsConfig) -> LossOutput:
    """The loop's loss function (acorn.train.loop): the method's per-item losses summed, weight =
    pairs (KTO: examples), TRL's metrics as sums over the same items."""
    if isinstance(batch, KTOBatch):
        return _kto(model, batch, cfg)
    beta = cfg.method_beta
    sums, counts, logp = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    b = len(sums) // 2
    chosen, rejected = sums[:b], sums[b:]
    metrics = {}
    if cfg.loss in ("dpo", "ipo"):
        if batch.ref_logps is None:
            raise RuntimeError("the reference log-probabilities were not computed")  # a bug: fill_reference
        ref_c, ref_r = batch.ref_logps[:b], batch.ref_logps[b:]
        if cfg.loss == "dpo":
            losses = dpo_loss(chosen, rejected, ref_c, ref_r, beta=beta, label_smoothing=cfg.label_smoothing)
        else:
            losses = ipo_loss(chosen, rejected, ref_c, ref_r, counts[:b], counts[b:], beta=beta)
        reward_c, reward_r = beta * (chosen - ref_c).detach(), beta * (rejected - ref_r).detach()
        loss = losses.sum()
    else:
        avg_c, avg_r = chosen / counts[:b].clamp(min=1), rejected / counts[b:].clamp(min=1)
        reward_c, reward_r = beta * avg_c.detach(), beta * avg_r.detach()
        if cfg.loss == "simpo":
            loss = simpo_loss(avg_c, avg_r, beta=beta, gamma=cfg.simpo_gamma, label_smoothing=cfg.label_smoothing).sum()
        else:  # orpo
            # TRL's NLL: the mean over the micro-batch's chosen tokens (the prompt's too), so each pair
            # carries that mean: b times it in the sum over pairs.
            real = batch.attention_mask[:b, 1:].to(logp.dtype)
            nll = -(logp[:b] * real).sum() / real.sum().clamp(min=1)
            log_odds = log_odds_ratio(avg_c, avg_r)
            loss = b * nll + orpo_loss(avg_c, avg_r, beta=beta).sum()
            metrics.update({"nll_loss": b * nll.detach(), "log_odds_ratio": F.logsigmoid(log_odds).detach().sum(),
                            "log_odds_chosen": log_odds.detach().sum()})
    metrics.update({"rewards/chosen": reward_c.sum(), "rewards/rejected": reward_r.sum(),
                    "rewards/margins": (reward_c - reward_r).sum(),
                    "rewards/accuracies": (reward_c > reward_r).sum(),
                    "logps/chosen": chosen.detach().sum(), "logps/rejected": rejected.detach().sum()})
    return LossOutput(loss, b, metrics)


def _kto(model, batch: KTOBatch, cfg: PrefsConfig) -> LossOutput:
    beta = cfg.method_beta
    if batch.ref_logps is None:
        raise RuntimeError("the reference log-probabilities were not computed")  # a bug: fill_reference
    with torch.no_grad():  # z0: the policy's KL to the reference on mismatched pairs, no gradient (as TRL)
        kl_sums, _, _ = completion_logps(model, batch.kl_input_ids, batch.kl_attention_mask, batch.kl_completion_mask)
        kl = (kl_sums - batch.ref_kl_logps).mean().clamp(min=0)
    sums, _, _ = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    losses = kto_loss(sums, batch.ref_logps, batch.label, kl, beta=beta, desirable_weight=cfg.desirable_weight,
                      undesirable_weight=cfg.undesirable_weight)
    rewards = beta * (sums - batch.ref_logps).detach()
    good, bad = batch.label, ~batch.label
    metrics = {"rewards/chosen": rewards[good].sum(), "rewards/rejected": rewards[bad].sum(),
               "logps/chosen": sums.detach()[good].sum(), "logps/rejected": sums.detach()[bad].sum(),
               "kl": kl * len(sums)}
    counts = {"rewards/chosen": good.sum(), "rewards/rejected": bad.sum(), "logps/chosen": good.sum(),
              "logps/rejected": bad.sum()}
    return LossOutput(losses.sum(), len(sums), metrics, counts)


# ------------------------------------------------------------- reference
@contextlib.contextmanager
def adapters_off(model):
    """The base model: a policy trained as a LoRA adapter uses its base as the reference (TRL's way)."""
    from acorn.model import lora

    active = lora.active_adapter(model)
    lora.set_active(model, None)
    try:
        yield model
    finally:
        if active is not None:
            lora.set_active(model, active)


@torch.no_grad()
def fill_reference(reference, items: list, collate, *, batch_size: int, device, autocast=contextlib.nullcontext) -> None:
    """Set each item's reference log-probabilities (pairs: ref_chosen / ref_rejected; KTO examples:
    ref / ref_kl) with `reference`, in eval mode; once, before training."""
    from acorn.train.loop import to_device

    was_training = reference.training
    reference.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = to_device(collate(chunk), device)
            with autocast():
                if isinstance(batch, KTOBatch):
                    sums = completion_logps(reference, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
                    kl = completion_logps(reference, batch.kl_input_ids, batch.kl_attention_mask,
                                          batch.kl_completion_mask)[0]
                    for ex, s, k in zip(chunk, sums.tolist(), kl.tolist()):
                        ex.ref, ex.ref_kl = s, k
                else:
                    sums = completion_logps(reference, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
                    n = len(chunk)
                    for p, c, r in zip(chunk, sums[:n].tolist(), sums[n:].tolist()):
                        p.ref_chosen, p.ref_rejected = c, r
    finally:
        reference.train(was_training)


# ------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model, *, loader, loss_fn, batches: int | None) -> dict:
    """The loss and every metric of `loss_fn` over held-out batches (every held-out item when batches
    is 0), as val_loss, val_rewards/accuracies, ... (called by fit in eval mode under autocast)."""
    loss = weight = 0.0
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for batch in loader.iter_eval(batches or None):
        out = loss_fn(model, _to(batch, model))
        loss += float(out.loss)
        weight += float(out.weight)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0.0) + float(out.metric_weights.get(k, out.weight))
    if not weight:
        return {}
    return {"val_loss": loss / weight, **{f"val_{k}": v / counts[k] for k, v in sums.items() if counts[k]}}


def _to(batch, model):
    from acorn.train.loop import to_device

    return to_device(batch, next(model.parameters()).device)


# ----------------------------------------------------------------- stage
def prefs(cfg: PrefsConfig, *, resume: bool = False) -> Path:
    """Train cfg.init_from on preference data with cfg.loss; returns the run directory."""
    from acorn import hardware
    from acorn.fileio import expand_inputs
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.prefs_data import (SUFFIXES, kto_batch, load_pairs, load_unpaired, pair_batch,
                                        pair_for_kl)
    from acorn.train.run import build_model, lora_enabled, start
    from acorn.train.sft_data import ItemLoader, split_examples

    check(cfg)
    device, dist = start(cfg)
    try:
        tok = Tokenizer.from_pretrained(cfg.init_from)
    except AcornError as e:
        raise AcornError(f"the checkpoint's tokenizer: {e}") from None
    model = build_model(cfg, device, tok.vocab_size)
    max_len = cfg.train.seq_len
    pad = next(i for i in (tok.pad_id, tok.eos_id, 0) if i is not None)

    def read(spec: str):
        paths = expand_inputs([p for p in spec.split(",") if p], SUFFIXES, any_file=False)
        if cfg.loss == "kto":
            return load_unpaired(paths, tok, max_len=max_len)
        return load_pairs(paths, tok, max_len=max_len)

    items, stats = read(cfg.data)
    if cfg.eval_data:
        train_items, (val_items, _) = items, read(cfg.eval_data)
    else:
        train_items, val_items = split_examples(items, cfg.val_fraction, cfg.seed)
    collate = functools.partial(kto_batch if cfg.loss == "kto" else pair_batch, pad_id=pad)
    if cfg.loss == "kto":  # the KL pairs are fixed now, so their reference log-probs are computed once too
        pair_for_kl(train_items, cfg.train.micro_batch, cfg.seed, max_len)
        pair_for_kl(val_items, cfg.train.micro_batch, cfg.seed, max_len)

    dtype = hardware.resolve_dtype(cfg.train.dtype, device)
    autocast = functools.partial(hardware.autocast, device, dtype)
    if cfg.loss not in REFERENCE_FREE:
        if cfg.reference:
            from acorn.model.checkpoint import load

            reference = load(cfg.reference, dtype="float32", device=str(device))
            if reference.config.vocab_size != model.config.vocab_size:
                raise AcornError(f"--reference {cfg.reference}: its vocabulary ({reference.config.vocab_size}) is not "
                                 f"the policy's ({model.config.vocab_size}); use a reference with the same tokenizer")
            context = contextlib.nullcontext(reference)
        else:
            context = adapters_off(model) if lora_enabled(cfg) else contextlib.nullcontext(model)
        with context as ref:
            for part in (train_items, val_items):
                fill_reference(ref, part, collate, batch_size=cfg.train.micro_batch, device=device, autocast=autocast)
        if cfg.reference:
            del reference

    loader = ItemLoader(train_items, collate, batch_size=cfg.train.micro_batch, seed=cfg.seed, rank=dist.rank,
                        world_size=dist.world)
    val_loader = ItemLoader(val_items, collate, batch_size=cfg.train.micro_batch, seed=cfg.seed)
    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len, dist.world)
    steps_per_epoch = max(1, len(train_items) // (cfg.train.micro_batch * dist.world * accum))
    if cfg.train.max_steps <= 0:
        cfg.train.max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if dist.main:
        what = "examples" if cfg.loss == "kto" else "pairs"
        extra = stats.describe()
        print(f"{cfg.loss}: {len(train_items):,} {what} ({len(val_items):,} held out{'; ' + extra if extra else ''}); "
              f"beta {cfg.method_beta:g}; "
              f"{'no reference' if cfg.loss in REFERENCE_FREE else 'reference log-probs computed'}; "
              f"{cfg.train.micro_batch * accum * dist.world} {what} per step, {cfg.train.max_steps} steps", flush=True)
    loss_fn = functools.partial(preference_loss, cfg=cfg)
    validate = functools.partial(evaluate, loader=val_loader, loss_fn=loss_fn, batches=cfg.eval.batches) \
        if val_items else None
    return fit(cfg, model, loader, loss_fn, evaluate=validate, device=device, dist=dist, tokenizer=tok,
               resume=resume, stage=cfg.loss)
