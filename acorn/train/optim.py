"""Optimizers and learning-rate schedules for pretraining and fine-tuning.

AdamW (Loshchilov & Hutter 2019) with decoupled weight decay applied only to
the matrices of the network: decaying norm gains, biases or embedding rows
pulls them toward zero for no benefit (norm gains toward 0 shrink the
residual stream; rare tokens' embeddings would decay between their updates).

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises the momentum of
each 2-D weight matrix with a few Newton-Schulz steps, so every direction of
the update moves at the same rate; it is defined for matrices only, so
embeddings, the head, norms, biases and stacked expert tensors stay on AdamW.

Schedules, as a multiplier of the peak learning rate:
  cosine  linear warmup, then cosine decay to min_lr_ratio (GPT-3, Chinchilla)
  wsd     warmup-stable-decay (Hu et al. 2024, MiniCPM): warmup, a long
          constant stretch, then a linear decay over the last decay_fraction;
          a run can be extended from any stable-phase checkpoint.
Warmup matters because Adam's second-moment estimates are noise for the first
steps; full-size updates on them can throw the model into a bad region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from acorn.errors import AcornError


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon on the matrices, AdamW on the rest
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # the schedule decays to lr x this
    weight_decay: float = 0.1  # decoupled weight decay, on matrices only
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.95  # Adam's second-moment decay
    eps: float = 1e-8  # Adam's denominator epsilon
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # learning-rate shape after warmup
    warmup_steps: int = 50  # steps of linear warmup from 0 to lr
    decay_fraction: float = 0.2  # wsd: share of the run spent decaying
    muon_lr: float = 0.02  # Muon's own learning rate for the matrices
    fused: bool = False  # AdamW as one fused kernel over all parameters (torch's fused=True; CPU and CUDA)

    LIMITS: ClassVar[dict[str, str]] = {
        "lr": "> 0", "min_lr_ratio": "[0, 1]", "weight_decay": ">= 0", "beta1": "[0, 1)", "beta2": "[0, 1)",
        "eps": "> 0", "grad_clip": ">= 0", "warmup_steps": ">= 0", "decay_fraction": "[0, 1]", "muon_lr": "> 0",
    }


def is_decayed(name: str, p: torch.Tensor) -> bool:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    return p.dim() >= 2 and "embed" not in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        (decay if is_decayed(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """One optimizer (AdamW), or two (Muon for hidden 2-D matrices + AdamW for the rest)."""
    adamw_kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.fused:  # same update, one kernel instead of a loop over tensors (speedrun ablations measure it)
        adamw_kw["fused"] = True
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, cfg.weight_decay), **adamw_kw)]
    if cfg.optimizer != "muon":
        raise AcornError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or muon")
    matrices, rest, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        hidden_matrix = p.dim() == 2 and "embed" not in name and "lm_head" not in name
        (matrices if hidden_matrix else rest).append((name, p))
    muon = torch.optim.Muon([p for _, p in matrices], lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    groups = [
        {"params": [p for n, p in rest if is_decayed(n, p)], "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": [p for n, p in rest if not is_decayed(n, p)], "weight_decay": 0.0, "name": "no_decay"},
    ]
    for group in (*muon.param_groups, *groups):
        group.setdefault("name", "muon")
    return [muon, torch.optim.AdamW([g for g in groups if g["params"]], **adamw_kw)]


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The schedule's multiplier of the peak learning rate at `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(round(cfg.decay_fraction * total_steps)))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * min(1.0, (step - decay_start + 1) / decay_steps)
    raise AcornError(f"unknown schedule {cfg.schedule!r}; choose cosine, wsd or constant")


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float, cfg: OptimConfig) -> None:
    for opt in optimizers:
        base = cfg.muon_lr if isinstance(opt, torch.optim.Muon) else cfg.lr
        for group in opt.param_groups:
            group["lr"] = base * multiplier
