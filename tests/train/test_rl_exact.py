"""GRPO's gradient against the exact gradient of the expected reward.

On a problem small enough to enumerate every completion, J(theta) = sum_y
pi(y) r(y) and its gradient are computed exactly; GRPO's loss over sampled
groups must point the same way (group-mean advantages are REINFORCE with a
baseline: an unbiased estimate of (1 - 1/n) grad J; std scaling reweighs
groups but keeps the direction close). Held for the loss alone on a table
policy over every sequence of three tokens, and for the whole rollout path
(the engine sampling at a temperature, the batch layout, the trainer's
log-probs) on the tiny checkpoint: rewards paired with the wrong samples, or
log-probs of other tokens than those sampled, would break it.
(benchmarks/align_rl.py's grpo-diagnosis figure asks the same of the speedrun
model at scale.)"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from acorn.train.rl import GRPOSettings, group_advantages, grpo_loss
from acorn.train.rollouts import RolloutBatch


def _flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


class TablePolicy(nn.Module):
    """pi(y_t | y_{t-1}, t) = softmax(W[t, y_{t-1}]): every probability of a completion is exact to compute."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(length + 1, vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(input_ids.shape[1])
        return SimpleNamespace(logits=self.table[positions[None, :], input_ids])


@pytest.mark.parametrize("scale", [False, True])
def test_grpo_gradient_points_along_the_exact_expected_reward_gradient(scale):
    vocab, length, temperature, groups, n = 3, 3, 0.7, 400, 8
    policy = TablePolicy(vocab, length)
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # all 27 completions
    reward = lambda y: (y == 2).float().mean(-1) + 0.5 * (y[..., 0] == y[..., -1]).float()  # noqa: E731
    prompt = torch.zeros(len(every), 1, dtype=torch.long)

    def logp_all():
        logits = policy(torch.cat([prompt, every], 1)).logits[:, :-1] / temperature
        return logits.log_softmax(-1).gather(-1, every[..., None]).squeeze(-1).sum(1)

    exact = -_flat_grad(policy, -(logp_all().exp() * reward(every)).sum())  # grad of J

    with torch.no_grad():
        probs = logp_all().exp()
    picks = torch.multinomial(probs, groups * n, replacement=True, generator=torch.Generator().manual_seed(1))
    y = every[picks]
    batch = RolloutBatch(torch.cat([prompt[:1].expand(len(y), 1), y], 1), torch.ones(len(y), length + 1),
                         torch.ones(len(y), length))
    batch.advantages = group_advantages(reward(y).view(groups, n), scale).flatten()
    out = grpo_loss(policy, batch, settings=GRPOSettings(loss_type="dapo", scale_rewards=scale),
                    temperature=temperature, max_new_tokens=length)
    estimate = -_flat_grad(policy, out.loss / out.weight)
    assert _cosine(estimate, exact) > 0.9
    # The same samples with their advantages shuffled among them carry no signal: the check can fail.
    batch.advantages = batch.advantages[torch.randperm(len(y), generator=torch.Generator().manual_seed(2))]
    noise = grpo_loss(policy, batch, settings=GRPOSettings(loss_type="dapo", scale_rewards=scale),
                      temperature=temperature, max_new_tokens=length)
    assert _cosine(-_flat_grad(policy, noise.loss / noise.weight), exact) < 0.5

def test_grpo_through_the_engine_follows_the_exact_gradient(checkpoint, tok):
    """Rollouts from the engine at temperature 0.7 (two new tokens at most), trained on by grpo_loss: the
    gradient against the exact one, enumerated over every first token and every second token after it."""
    from acorn.infer.engine import Engine
    from acorn.model.checkpoint import load
    from acorn.train.rollouts import Prompt, RolloutConfig, RolloutWorker

    temperature, groups, n = 0.7, 32, 32
    model = load(checkpoint[0], dtype="float32", device="cpu")
    engine = Engine(model, tok, max_num_seqs=256)

    def low_ids(prompts, completions, completion_ids, **_):
        return [sum(i < 150 for i in ids) / len(ids) for ids in completion_ids]

    worker = RolloutWorker(engine=engine, policy=model, reference=None, rewards=[("low", low_ids)],
                           reward_weights=None, micro_batch=256, device=torch.device("cpu"),
                           cfg=RolloutConfig(n=n, max_new_tokens=2, temperature=temperature),
                           needs_old_logprobs=False)
    ids = [tok.bos_id] + tok.encode("The cat")
    r = worker([Prompt(ids, "The cat", {})] * groups, 0)
    r.batch.advantages = group_advantages(r.rewards.view(groups, n), scale=False).flatten()
    out = grpo_loss(model, r.batch, settings=GRPOSettings(loss_type="dr_grpo", scale_rewards=False),
                    temperature=temperature, max_new_tokens=2)
    estimate = -_flat_grad(model, out.loss / out.weight)

    # Exact: J = sum_a p(a) [a stops ? r(a) : sum_b p(b | a) r(a, b)], at the same temperature.
    vocab = model.config.vocab_size
    stops = torch.zeros(vocab, dtype=torch.bool)
    stops[list(engine.stop_token_ids)] = True
    small = (torch.arange(vocab) < 150).float()
    seqs = torch.cat([torch.tensor(ids).expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
    logits = model(seqs).logits.float() / temperature
    first = logits[0, -2].log_softmax(-1).exp()  # every row shares the prompt: row 0's prediction of token 1
    second = logits[:, -1].log_softmax(-1).exp()  # (a, b)
    after = (second * (small[:, None] + small[None, :]) / 2).sum(1)  # E[r | a], a not a stop token
    expected = (first * torch.where(stops, small, after)).sum()
    exact = _flat_grad(model, expected)
    assert _cosine(estimate, exact) > 0.9  # 0.98 here; a random direction among ~30k gives ~0
