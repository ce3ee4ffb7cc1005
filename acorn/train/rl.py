"""Reinforcement learning from rewards: GRPO with verifiable rewards, and PPO with a value head and a KL penalty.

Both are one outer loop (acorn.train.rollouts: sample with the engine,
score, log-probs) around the one training loop (acorn.train.loop.fit), with
their own advantages and losses.

GRPO (Shao et al. 2024, DeepSeekMath). No value network: each prompt gets n
samples and a sample's advantage is its reward against its group's,

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)      (scale_rewards; Dr. GRPO, Liu et al. 2025,
                                                  drops the division: it weighs easy and hard prompts unequally)

shared by every token of the completion. The loss per token is PPO's clipped surrogate

    l_t = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps_high) A) + beta KL_t,    rho_t = pi(o_t) / pi_old(o_t)

with DAPO's clip-higher (eps_high > eps; Yu et al. 2025) and the k3 estimate of
KL(pi || pi_ref), exp(ref - logp) - (ref - logp) - 1 (Schulman 2020). How the
token losses add up (loss_type, TRL's names):
    grpo     mean over each completion's tokens, then over completions (the paper;
             it favours short right answers and long wrong ones)
    dapo     sum over every token of the step / their number (DAPO; TRL's default)
    dr_grpo  sum over tokens / (completions x max_new_tokens): a constant (Dr. GRPO)
With std scaling, clipping and KL off and one optimizer step per rollout batch,
the gradient is REINFORCE with the group mean as baseline, token-normalised:
nanochat's chat_rl.py (tests/train/test_rl.py holds it to that).

PPO (Schulman et al. 2017) as Ziegler et al. 2019, Stiennon et al. 2020 and
Ouyang et al. 2022 use it on language models:
  - a value head on the policy's final hidden states predicts, at each token,
    the return still to come (`PolicyWithValue`);
  - the reward is per token: -kl_coef KL_t to the frozen reference (k1 = logp -
    ref, or k3), plus the reward function's score on the completion's last
    token; kl_coef fixed or adaptive (`KLController`, Ziegler et al. 2019);
    the rewards optionally whitened;
  - GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lambda A_{t+1}, returns R_t = A_t + V_t; the
    advantages whitened over the batch;
  - loss per token: max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) +
    vf_coef 0.5 max((V - R)^2, (V_clip - R)^2), V_clip = V_old +
    clip(V - V_old, -eps_v, eps_v); mean over the step's tokens.

The reference model is the policy's base with its LoRA adapters switched off
when the policy is trained as adapters (no second copy), else a frozen copy of
the starting weights. The reward is any function of acorn.train.rewards's
signature; a learned reward model is one such function.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from acorn import hardware
from acorn.errors import AcornError
from acorn.model.lora import LoRAConfig
from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, fit
from acorn.train.optim import OptimConfig
from acorn.train.rollouts import (Prompt, RolloutBatch, RolloutConfig, RolloutLoader, RolloutWorker, load_prompts,
                                  nanmean, policy_forward, score_completions)
from acorn.train.run import build_model, lora_enabled, start


# ------------------------------------------------------------------ config
@dataclass
class GRPOSettings:
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    scale_rewards: bool = True  # divide by the group's std (GRPO); false: Dr. GRPO, nanochat
    epsilon: float | None = 0.2  # the ratio's clip range; none: no clipping
    epsilon_high: float | None = None  # DAPO's clip-higher upper bound (e.g. 0.28); none: epsilon
    beta: float = 0.0  # k3 KL to the reference per token; 0: no reference model is kept


@dataclass
class PPOSettings:
    epsilon: float = 0.2  # the ratio's clip range
    value_epsilon: float = 0.2  # how far a value may move from its old value before its loss is clipped
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's lambda
    kl_coef: float = 0.05  # the KL penalty's starting (or fixed) coefficient
    kl_estimator: Literal["k1", "k3"] = "k1"  # k1 = logp - ref (unbiased, noisy); k3 >= 0, lower variance
    kl_target: float | None = None  # adaptive coefficient toward this KL per completion (nats); none: fixed
    kl_horizon: int = 10000  # the adaptive controller's time constant, in completions
    whiten_rewards: bool = False  # scale the per-token rewards to unit variance over the batch


def _optim() -> OptimConfig:
    # RL moves a trained model by small steps: a low constant rate, no decay toward zero weights.
    return OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0)


def _train() -> LoopConfig:
    # seq_len and batch_tokens are derived from the rollout settings; max_steps 0: one pass over the prompts.
    return LoopConfig(max_steps=0, micro_batch=16)


@dataclass
class GRPOConfig:
    data: str = "runs/world/rl_arithmetic.jsonl"  # prompt-only JSONL (TRL's `prompt`, text or messages)
    eval_data: str = ""  # prompt-only JSONL scored greedily every eval.every steps (val_reward)
    out: str = "runs/grpo"
    init_from: str = ""  # the model to improve (an SFT checkpoint directory)
    seed: int = 0
    rewards: list[str] = field(default_factory=lambda: ["arithmetic"])  # built-in names or module:function
    reward_weights: list[float] = field(default_factory=list)  # one per reward; empty: all 1
    skip_reward_errors: bool = False  # a reward that raises: leave that prompt unscored instead of stopping
    model: ModelConfig | None = None  # taken from the checkpoint
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    optim: OptimConfig = field(default_factory=_optim)
    train: LoopConfig = field(default_factory=_train)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=25, batches=4, checkpoint_every=50))
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class PPOConfig:
    data: str = "runs/world/rl_arithmetic.jsonl"
    eval_data: str = ""
    out: str = "runs/ppo"
    init_from: str = ""
    seed: int = 0
    rewards: list[str] = field(default_factory=lambda: ["arithmetic"])  # the score; a reward model is one too
    reward_weights: list[float] = field(default_factory=list)
    skip_reward_errors: bool = False
    model: ModelConfig | None = None
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts=16, n=1, epochs=4, minibatches=1))
    ppo: PPOSettings = field(default_factory=PPOSettings)
    optim: OptimConfig = field(default_factory=_optim)
    train: LoopConfig = field(default_factory=_train)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=25, batches=4, checkpoint_every=50))
    lora: LoRAConfig = field(default_factory=LoRAConfig)


# ------------------------------------------------------------------ GRPO
def group_advantages(rewards: Tensor, scale: bool = True) -> Tensor:
    """(prompts, n) rewards -> (prompts, n) advantages: each minus its group's mean,
    divided by the group's (unbiased) std + 1e-4 when `scale`; as TRL, nan rewards
    (unscored) are left out of the statistics and get advantage 0."""
    valid = ~torch.isnan(rewards)
    count = valid.sum(1, keepdim=True)
    r = torch.where(valid, rewards, 0.0)
    mean = r.sum(1, keepdim=True) / count.clamp(min=1)
    adv = rewards - mean
    if scale:
        var = (torch.where(valid, adv, 0.0) ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
        adv = adv / (var.sqrt() + 1e-4)
    return torch.where(valid, adv, 0.0)


def k3(logp: Tensor, ref: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref - logp
    return torch.exp(d) - d - 1


def grpo_loss(model: nn.Module, batch: RolloutBatch, *, settings: GRPOSettings, temperature: float = 1.0,
              max_new_tokens: int = 1) -> LossOutput:
    """The GRPO loss of one micro-batch as the one loop wants it: a sum and how many items it is over
    (tokens for dapo, completions for grpo and dr_grpo), with metrics summed over the same items."""
    logp, entropy, _ = policy_forward(model, batch, temperature)
    mask = batch.mask
    logp = logp * mask  # padding as 0, like the stored log-probs: no exp() of a stray value can overflow there
    old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
    adv = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None]
    ratio = torch.exp(logp - old)
    if settings.epsilon is None:
        per_token = -ratio * adv
        clipped = torch.zeros_like(ratio)
    else:
        low, high = settings.epsilon, settings.epsilon if settings.epsilon_high is None else settings.epsilon_high
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - low, 1 + high) * adv)
        clipped = (((ratio < 1 - low) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))).float()
    metrics = {}
    if settings.beta:
        kl = k3(logp, batch.ref_logprobs)
        per_token = per_token + settings.beta * kl
        metrics["kl"] = kl.detach()
    if settings.loss_type == "dapo":
        loss, weight = (per_token * mask).sum(), mask.sum()
        reduce = lambda x: (x * mask).sum()  # noqa: E731 - the same items as the loss
    elif settings.loss_type in ("grpo", "dr_grpo"):
        lengths = mask.sum(1).clamp(min=1)
        if settings.loss_type == "grpo":
            loss = ((per_token * mask).sum(1) / lengths).sum()
        else:
            loss = (per_token * mask).sum() / max_new_tokens
        weight = mask.shape[0]
        reduce = lambda x: ((x * mask).sum(1) / lengths).sum()  # noqa: E731 - per-completion means
    else:
        raise AcornError(f"unknown GRPO loss_type {settings.loss_type!r}; choose grpo, dapo or dr_grpo")
    metrics |= {"entropy": entropy, "clip_fraction": clipped}
    return LossOutput(loss, weight, {k: reduce(v) for k, v in metrics.items()})


# ------------------------------------------------------------------ PPO
@dataclass
class PolicyValueOutput:
    logits: Tensor  # (B, T, V)
    values: Tensor  # (B, T): the value of the state each position's hidden state describes


class PolicyWithValue(nn.Module):
    """PPO's actor and critic in one module: the policy, and a linear value head
    d_model -> 1 on its final hidden states. Sharing the trunk (as TRL's
    AutoModelForCausalLMWithValueHead did) costs one forward for both; Stiennon
    et al. 2020 train a separate value network instead.

    The policy's own modules are registered under their own names (model.*,
    lm_head.*), so checkpoints, LoRA adapter files and optimizer groups see the
    policy's names plus value_head.*; `save` writes the policy alone."""

    def __init__(self, policy: Transformer):
        super().__init__()
        self.model, self.lm_head = policy.model, policy.lm_head
        object.__setattr__(self, "policy", policy)  # its forward; its parameters are the two above
        self.value_head = nn.Linear(policy.config.d_model, 1, device=policy.device)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no made-up estimates at step 0
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self) -> ModelConfig:
        return self.policy.config

    def num_params(self, **kwargs) -> int:
        return self.policy.num_params(**kwargs) + sum(p.numel() for p in self.value_head.parameters())

    def train(self, mode: bool = True):
        self.policy.train(mode)  # the policy's own flag decides its attention dropout
        return super().train(mode)

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> PolicyValueOutput:
        hidden = self.policy(input_ids, attention_mask=attention_mask, hidden_only=True).hidden
        return PolicyValueOutput(self.policy.logits(hidden), self.value_head(hidden).squeeze(-1).float())

    def save(self, directory, **kwargs):
        """The policy as a Hugging Face checkpoint; the value head is a training device (checkpoints keep it)."""
        return self.policy.save(directory, **kwargs)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum()


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); shift_mean=False keeps the mean."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return white if shift_mean else white + mean


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over right-padded
    (B, C) completions: past a completion's end the value is 0 (the episode is
    over). Returns (advantages, returns = advantages + values)."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


def kl_estimate(logp: Tensor, ref: Tensor, estimator: str) -> Tensor:
    """Per-token KL(pi || ref) from the sampled tokens: k1 = logp - ref, or k3."""
    if estimator == "k1":
        return logp - ref
    if estimator == "k3":
        return k3(logp, ref)
    raise AcornError(f"unknown kl_estimator {estimator!r}; choose k1 or k3")


class KLController:
    """The KL penalty's coefficient: fixed, or adaptive (Ziegler et al. 2019):
    coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon after each batch
    of n completions whose mean KL was KL, so the policy drifts from the
    reference at about the target rate."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.coef *= 1 + error * n / self.horizon

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = state["coef"]


def ppo_rewards(scores: Tensor, logp: Tensor, ref: Tensor, mask: Tensor, kl_coef: float,
                estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """Per-token rewards (B, C): -kl_coef * KL_t, plus each completion's score on
    its last token. Returns (rewards, per-token KL)."""
    kl = kl_estimate(logp, ref, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def ppo_loss(model: nn.Module, batch: RolloutBatch, *, settings: PPOSettings, temperature: float = 1.0) -> LossOutput:
    """The clipped policy loss plus vf_coef times the clipped value loss, summed over the
    micro-batch's completion tokens (weight: their number)."""
    logp, entropy, values = policy_forward(model, batch, temperature)
    mask, adv = batch.mask, batch.advantages
    log_ratio = (logp - batch.old_logprobs) * mask  # 0 on padding: no exp() of a stray value there
    ratio = torch.exp(log_ratio)
    eps = settings.epsilon
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    v_clipped = batch.old_values + torch.clamp(values - batch.old_values, -settings.value_epsilon,
                                               settings.value_epsilon)
    v_loss, v_loss_clipped = (values - batch.returns) ** 2, (v_clipped - batch.returns) ** 2
    vf = 0.5 * torch.max(v_loss, v_loss_clipped)
    per_token = pg + settings.vf_coef * vf
    sums = lambda x: (x.detach() * mask).sum()  # noqa: E731 - metrics over the same tokens as the loss
    metrics = {"policy_loss": sums(pg), "value_loss": sums(vf), "entropy": sums(entropy),
               "clip_fraction": sums(((ratio - 1).abs() > eps).float()),
               "value_clip_fraction": sums((v_loss_clipped > v_loss).float()),
               "approx_kl": sums(0.5 * log_ratio ** 2)}
    return LossOutput((per_token * mask).sum(), mask.sum(), metrics)


def ppo_advantages(rollout_batch: RolloutBatch, scores: Tensor, settings: PPOSettings,
                   kl_coef: float) -> tuple[Tensor, Tensor, dict]:
    """Scores -> per-token rewards with the KL penalty -> GAE advantages (whitened) and returns."""
    b = rollout_batch
    mask = b.mask
    rewards, kl = ppo_rewards(scores, b.old_logprobs, b.ref_logprobs, mask, kl_coef, settings.kl_estimator)
    if settings.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    advantages, returns = gae(rewards, b.old_values, mask, settings.gamma, settings.lam)
    advantages = masked_whiten(advantages, mask) * mask
    seq_kl = kl.sum(1)
    metrics = {"score": float(scores.mean()), "kl": float(seq_kl.mean()), "kl_coef": kl_coef,
               "non_score_reward": float((-kl_coef * seq_kl).mean()),
               "reward_total": float((scores - kl_coef * seq_kl).mean()),
               "value_mean": float(masked_mean(b.old_values, mask)), "return_mean": float(masked_mean(returns, mask))}
    return advantages, returns, metrics


# ------------------------------------------------------------------ the stages
@dataclass
class _Setup:
    device: torch.device
    dist: object
    tok: object
    model: Transformer  # the policy, LoRA applied when asked
    prompts: list[Prompt]
    engine: object
    rewards: list
    autocast: object
    evaluate: object


def _setup(cfg, stage: str, rewards) -> _Setup:
    """What GRPO and PPO share before the loop: rewards, device and processes,
    tokenizer, policy, the rollout geometry, prompts, the engine and the evaluation."""
    from acorn.fileio import expand_inputs
    from acorn.infer.engine import Engine
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.rewards import load_reward

    if not cfg.init_from:
        raise AcornError(f"{stage} improves a trained model: pass --init_from CHECKPOINT_DIR (e.g. an SFT model)")
    if cfg.train.fsdp:
        raise AcornError(f"{stage} generates with the whole policy on every process; run it without --train.fsdp")
    functions = [load_reward(r) for r in (rewards if rewards is not None else cfg.rewards)]
    if not functions:
        raise AcornError(f"{stage} needs a reward: --reward arithmetic (or json, format, module:function)")
    ro = cfg.rollout
    if ro.prompts < 1 or ro.n < 1 or ro.epochs < 1 or ro.minibatches < 1 or ro.max_new_tokens < 1:
        raise AcornError("--rollout.prompts, n, epochs, minibatches and max_new_tokens must be at least 1")
    if not ro.temperature > 0:
        raise AcornError(f"--rollout.temperature {ro.temperature}: RL samples, and its log-probs are of "
                         "logits / temperature; give a temperature above 0 (1 samples the model as it is)")
    device, dist = start(cfg)
    try:
        tok = Tokenizer.from_pretrained(cfg.init_from)
    except AcornError as e:
        raise AcornError(f"the checkpoint's tokenizer: {e}") from None
    cfg.train.seq_len = 1  # build_model checks it against the context; the real one follows from the rollouts
    model = build_model(cfg, device, tok.vocab_size)
    ctx = model.config.max_seq_len
    max_prompt = ro.max_prompt_tokens or ctx - ro.max_new_tokens
    if max_prompt < 1 or max_prompt + ro.max_new_tokens > ctx:
        raise AcornError(f"prompts of {max_prompt} tokens plus --rollout.max_new_tokens {ro.max_new_tokens} do not "
                         f"fit the model's context of {ctx}; lower --rollout.max_new_tokens or max_prompt_tokens")
    cfg.train.seq_len = max_prompt + ro.max_new_tokens  # the longest sequence a rollout makes

    paths = expand_inputs([p for p in cfg.data.split(",") if p], (".jsonl",), any_file=False)
    prompts, too_long = load_prompts(paths, tok, max_tokens=max_prompt)
    sequences, mb = ro.prompts * ro.n, cfg.train.micro_batch
    if sequences % (ro.minibatches * mb):
        raise AcornError(f"a rollout batch is {ro.prompts} prompts x {ro.n} samples = {sequences} sequences, which "
                         f"does not split into {ro.minibatches} minibatches of micro-batches of {mb}; change "
                         "--rollout.prompts, --rollout.n, --rollout.minibatches or --train.micro_batch")
    # fit derives its accumulation from batch_tokens: give it the count that makes one optimizer
    # step one minibatch of the rollout batch (tokens counted at the longest sequence).
    accum = sequences // (ro.minibatches * mb)
    cfg.train.batch_tokens = accum * mb * cfg.train.seq_len * dist.world
    if cfg.train.max_steps <= 0:  # one pass over the prompts
        cfg.train.max_steps = max(1, len(prompts) // (ro.prompts * dist.world)) * ro.epochs * ro.minibatches
    engine = Engine(model, tok, max_num_seqs=min(sequences, 256))
    autocast = functools.partial(hardware.autocast, device, hardware.resolve_dtype(cfg.train.dtype, device))
    evaluate = None
    if cfg.eval_data and cfg.eval.every:
        eval_paths = expand_inputs([p for p in cfg.eval_data.split(",") if p], (".jsonl",), any_file=False)
        eval_prompts, _ = load_prompts(eval_paths, tok, max_tokens=max_prompt)
        evaluate = functools.partial(evaluate_rewards, engine=engine,
                                     prompts=eval_prompts[:cfg.eval.batches * mb], rewards=functions,
                                     weights=cfg.reward_weights, max_new_tokens=ro.max_new_tokens,
                                     skip_errors=cfg.skip_reward_errors)
    if dist.main:
        print(f"{stage}: {len(prompts):,} prompts{f' ({too_long} longer than {max_prompt} tokens left out)' if too_long else ''}"
              f"; each rollout batch {ro.prompts} prompts x {ro.n} samples x {dist.world} processes, trained "
              f"{ro.epochs} epoch(s) x {ro.minibatches} minibatch(es); rewards: "
              f"{', '.join(name for name, _ in functions)}", flush=True)
    return _Setup(device, dist, tok, model, prompts, engine, functions, autocast, evaluate)


def _reference(cfg, policy: Transformer):
    """The KL term's reference: the base without its adapters, or a frozen copy of the starting weights."""
    if lora_enabled(cfg):
        return "adapters"
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def _worker(cfg, s: _Setup, policy: nn.Module, reference, needs_old_logprobs: bool) -> RolloutWorker:
    return RolloutWorker(engine=s.engine, policy=policy, reference=reference, rewards=s.rewards,
                         reward_weights=cfg.reward_weights, cfg=cfg.rollout, micro_batch=cfg.train.micro_batch,
                         device=s.device, autocast=s.autocast, seed=cfg.seed, rank=s.dist.rank,
                         skip_reward_errors=cfg.skip_reward_errors, needs_old_logprobs=needs_old_logprobs)


def _loader(cfg, s: _Setup, make_batch) -> RolloutLoader:
    return RolloutLoader(s.prompts, make_batch, prompts_per_batch=cfg.rollout.prompts,
                         micro_batch=cfg.train.micro_batch, epochs=cfg.rollout.epochs, seed=cfg.seed,
                         rank=s.dist.rank, world=s.dist.world)


@torch.no_grad()
def evaluate_rewards(model, *, engine, prompts: list[Prompt], rewards, weights, max_new_tokens: int,
                     skip_errors: bool = False) -> dict:
    """Greedy completions of held-out prompts, scored: val_reward and each function's mean (fit's evaluate)."""
    engine.reset_prefix_cache()
    with torch.autocast(engine.device.type, enabled=False):  # the engine runs in the model's own dtype
        completions = engine.generate([p.ids for p in prompts], temperature=0.0, max_new_tokens=max_new_tokens)
    scores = score_completions(prompts, completions, rewards, weights, skip_errors=skip_errors)
    return {"val_reward": nanmean(torch.tensor(scores.rewards)),
            **{f"val_reward/{k}": nanmean(torch.tensor(v)) for k, v in scores.per_function.items()}}


def grpo(cfg: GRPOConfig, *, resume: bool = False, rewards=None) -> Path:
    """Train cfg.init_from with GRPO on the prompts in cfg.data; returns the run directory.
    rewards: reward functions (or specs) in place of cfg.rewards, for the Python API."""
    g = cfg.grpo
    if cfg.rollout.n < 2:
        raise AcornError("GRPO compares the samples of a prompt with each other: --rollout.n must be at least 2")
    if g.loss_type not in ("grpo", "dapo", "dr_grpo"):
        raise AcornError(f"unknown GRPO loss_type {g.loss_type!r}; choose grpo, dapo or dr_grpo")
    s = _setup(cfg, "grpo", rewards)
    ro = cfg.rollout
    on_policy = ro.epochs == 1 and ro.minibatches == 1  # every sample trained once, by the weights that drew it
    worker = _worker(cfg, s, s.model, _reference(cfg, s.model) if g.beta else None, not on_policy)

    def make_batch(prompts: list[Prompt], iteration: int):
        r = worker(prompts, iteration)
        groups = r.rewards.view(-1, ro.n)
        r.batch.advantages = group_advantages(groups, g.scale_rewards).flatten()
        spread = torch.nan_to_num(groups, nan=0.0)
        zero_std = float((spread.max(1).values == spread.min(1).values).float().mean())
        return r.batch, r.metrics | {"zero_std_groups": zero_std}

    loss = functools.partial(grpo_loss, settings=g, temperature=ro.temperature, max_new_tokens=ro.max_new_tokens)
    out = fit(cfg, s.model, _loader(cfg, s, make_batch), loss, evaluate=s.evaluate, device=s.device, dist=s.dist,
              tokenizer=s.tok, resume=resume, stage="grpo")
    if s.dist.main:
        write_rl_report(out, "grpo")
    return out


class PPOBatches:
    """PPO's steps 1-5 for the loader: a rollout batch, its scores turned into per-token rewards
    with the KL penalty, GAE advantages and returns. Holds the KL controller, whose coefficient
    the loader saves with its own state."""

    def __init__(self, worker: RolloutWorker, settings: PPOSettings, world: int = 1):
        self.worker, self.settings, self.world = worker, settings, world
        self.controller = KLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)

    def __call__(self, prompts: list[Prompt], iteration: int):
        r = self.worker(prompts, iteration)
        scored = ~torch.isnan(r.rewards)
        r.batch.mask = r.batch.mask * scored[:, None]  # a prompt whose reward raised trains nothing
        scores = torch.nan_to_num(r.rewards, nan=0.0)
        kl_coef = self.controller.coef
        r.batch.advantages, r.batch.returns, metrics = ppo_advantages(r.batch, scores, self.settings, kl_coef)
        kl = metrics["kl"]
        if self.world > 1:  # one coefficient for every process: the KL of all their rollouts
            import torch.distributed as tdist

            total = torch.tensor([kl], dtype=torch.float64, device=self.worker.device)
            tdist.all_reduce(total)
            kl = float(total) / self.world
        self.controller.update(kl, len(scores) * self.world)
        return r.batch, r.metrics | metrics

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)


def ppo(cfg: PPOConfig, *, resume: bool = False, rewards=None) -> Path:
    """Train cfg.init_from with PPO against the reward function(s) on the prompts in cfg.data
    (a learned reward model is a reward function); returns the run directory."""
    p = cfg.ppo
    kl_estimate(torch.zeros(1), torch.zeros(1), p.kl_estimator)  # an unknown estimator fails before the model loads
    s = _setup(cfg, "ppo", rewards)
    # The reference is kept even at kl_coef 0: the KL is still measured (reward hacking shows in it).
    reference = _reference(cfg, s.model)
    model = PolicyWithValue(s.model)
    batches = PPOBatches(_worker(cfg, s, model, reference, True), p, s.dist.world)
    loss = functools.partial(ppo_loss, settings=p, temperature=cfg.rollout.temperature)
    out = fit(cfg, model, _loader(cfg, s, batches), loss, evaluate=s.evaluate, device=s.device, dist=s.dist,
              tokenizer=s.tok, resume=resume, stage="ppo")
    if s.dist.main:
        write_rl_report(out, "ppo")
    return out


# ------------------------------------------------------------------ outputs
PLOTTED = {"grpo": ("reward", "val_reward", "kl", "entropy", "clip_fraction", "completion_tokens"),
           "ppo": ("score", "val_reward", "kl", "kl_coef", "value_loss", "entropy")}


def time_split(rows: list[dict]) -> dict[str, float]:
    """Where the run's time went, in seconds: generating, scoring, the log-prob
    forwards, and training (each step's time, less the rollout it waited for)."""
    gen = sum(r.get("rollout_generate_s", 0.0) for r in rows)
    scoring = sum(r.get("rollout_score_s", 0.0) for r in rows)
    logprobs = sum(r.get("rollout_logprob_s", 0.0) for r in rows)
    total = sum(r["tokens"] / r["step"] / r["tok_s"] for r in rows if r.get("tok_s"))
    return {"generate": gen, "score": scoring, "logprobs": logprobs, "train": max(0.0, total - gen - scoring - logprobs)}


def write_rl_report(out: Path, stage: str) -> None:
    """rl.png (the curves RL is judged by) and a section of report.md: rewards first and last,
    KL, and where the time went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acorn.fileio import atomic_write, write_text

    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = [k for k in PLOTTED[stage] if any(k in r for r in rows)]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["step"], r[k]) for r in rows if k in r and r[k] is not None and not math.isnan(r[k])]
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-" if len(pts) < 30 else "-", ms=3, lw=1)
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_write(out / "rl.png", "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
    lines = ["", f"## {stage.upper()}", "", "![rl](rl.png)", "", "| metric | first | last |", "|---|---:|---:|"]
    for k in ("reward", "val_reward", "score", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss",
              "completion_tokens", "reward_errors"):
        vals = [r[k] for r in rows if k in r and r[k] is not None]
        if vals:
            lines.append(f"| {k} | {vals[0]:.4g} | {vals[-1]:.4g} |")
    split = time_split(rows)
    total = sum(split.values()) or 1.0
    gen_tokens = sum(r.get("rollout_tokens", 0.0) for r in rows)
    lines += ["", "Where the time went: " + ", ".join(f"{k} {v:.1f}s ({v / total:.0%})" for k, v in split.items())
              + (f"; the engine generated {gen_tokens / split['generate']:,.0f} tokens/s." if split["generate"] else "."),
              ""]
    report = out / "report.md"
    write_text(report, (report.read_text(encoding="utf-8") if report.exists() else "") + "\n".join(lines))
