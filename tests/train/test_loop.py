"""The one training loop on its own: the step weighs every item the same however
micro-batches split them, and fit runs a loss that is not next-token prediction
(a pairwise loss on a batch type of its own, as a reward model's or DPO's)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from acorn.data.loader import Batch
from acorn.model.checkpoint import load as load_checkpoint
from acorn.model.transformer import ModelConfig, Transformer
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, accumulation, fit, train_step
from acorn.train.optim import OptimConfig
from acorn.train.pretrain import next_token_loss
from acorn.train.run import Dist

TINY = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, n_kv_head=1, max_seq_len=16)


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TINY)


def sgd_step(micro_batches):
    """One train_step with plain SGD at lr 1, so the update is minus the gradient."""
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s = train_step(m, micro_batches, next_token_loss, [torch.optim.SGD(m.parameters(), lr=1.0)],
                   device=torch.device("cpu"))
    return s, {k: before[k] - v for k, v in m.state_dict().items()}


def test_every_trained_token_weighs_the_same_however_micro_batches_split_them():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (4, 12), generator=g)
    y = torch.randint(0, 64, (4, 12), generator=g)
    y[0, 2:] = -100  # row 0 trains 2 tokens, the others 12: unequal counts, as SFT masks make them
    nothing = Batch(x[:1], torch.full_like(y[:1], -100))  # a micro-batch with no trained token
    whole, d_whole = sgd_step([Batch(x, y)])
    split, d_split = sgd_step([Batch(x[:1], y[:1]), nothing, Batch(x[1:], y[1:])])
    assert split.weight == whole.weight == 2 + 3 * 12
    assert split.loss == pytest.approx(whole.loss, abs=1e-6) and not split.skipped
    assert all(torch.isfinite(d_split[k]).all() and torch.allclose(d_split[k], d_whole[k], atol=1e-6) for k in d_whole)
    # The mean of the micro-batches' means would weigh row 0's two tokens like 36 others: a different loss.
    with torch.no_grad():
        m = model()
        naive = (m(x[:1], targets=y[:1]).loss + m(x[1:], targets=y[1:]).loss) / 2
    assert abs(naive.item() - whole.loss) > 1e-3


def test_accumulation_is_the_step_over_what_every_process_holds():
    assert accumulation(16384, 16, 256) == 4
    assert accumulation(16384, 16, 256, world=2) == 2
    assert accumulation(1000, 16, 256, world=8) == 1  # never less than one micro-batch


@dataclass
class Pairs:
    chosen: torch.Tensor  # (P, T) token ids
    rejected: torch.Tensor  # (P, T)
    source: str = "toy"  # not a tensor: to_device leaves it alone


class PairLoader:
    """Pairs in micro-batches of 1, 3, 2, 2, 1, 3, ... pairs: the items per micro-batch differ."""

    def __init__(self, pairs: Pairs):
        self.pairs, self.cursor = pairs, 0

    def __next__(self) -> Pairs:
        n = (1, 3, 2, 2)[self.cursor % 4]
        start = (0, 1, 4, 6)[self.cursor % 4]
        self.cursor += 1
        return Pairs(self.pairs.chosen[start:start + n], self.pairs.rejected[start:start + n])

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]


def score(model, ids: torch.Tensor) -> torch.Tensor:
    """A reward model's score: the last position's logit of token 0."""
    return model(ids).logits[:, -1, 0].float()


def pairwise_loss(model, batch: Pairs) -> LossOutput:
    margin = score(model, batch.chosen) - score(model, batch.rejected)
    return LossOutput(-F.logsigmoid(margin).sum(), len(margin), {"accuracy": (margin > 0).sum()})


@dataclass
class ToyConfig:  # what fit reads of a stage's config
    out: str
    optim: OptimConfig
    train: LoopConfig
    eval: EvalConfig
    model: ModelConfig = field(default_factory=lambda: TINY)


def test_fit_runs_a_pairwise_loss_with_its_own_batches_weights_and_metrics(tmp_path):
    g = torch.Generator().manual_seed(2)
    pairs = Pairs(torch.randint(0, 64, (8, 8), generator=g), torch.randint(0, 64, (8, 8), generator=g))
    # batch_tokens / (micro_batch x seq_len) = 2 micro-batches a step: 1 + 3 pairs, then 2 + 2.
    cfg = ToyConfig(out=str(tmp_path / "run"),
                    optim=OptimConfig(lr=3e-2, warmup_steps=0, schedule="constant", weight_decay=0.0),
                    train=LoopConfig(seq_len=8, micro_batch=2, batch_tokens=32, max_steps=6, dtype="float32"),
                    eval=EvalConfig(every=3, checkpoint_every=0))
    m = model()
    initial = copy.deepcopy(m)
    held_out = Pairs(pairs.chosen[:2].flip(1), pairs.rejected[:2].flip(1))
    validate = lambda mod: {"val_loss": (pairwise_loss(mod, held_out).loss / 2).item()}  # noqa: E731
    out = fit(cfg, m, PairLoader(pairs), pairwise_loss, evaluate=validate, device=torch.device("cpu"), dist=Dist(),
              stage="reward")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]

    # Step 1's logged loss and accuracy are means over its 4 pairs, each weighing the same
    # although one micro-batch held 1 and the other 3, computed with the initial weights.
    with torch.no_grad():
        margin = score(initial, pairs.chosen[:4]) - score(initial, pairs.rejected[:4])
    assert rows[0]["loss"] == pytest.approx(-F.logsigmoid(margin).mean().item(), abs=1e-6)
    assert rows[0]["accuracy"] == pytest.approx((margin > 0).float().mean().item(), abs=1e-6)
    # Minimising it ranks the training pairs better: the loss on the step-1 pairs went down.
    trained = load_checkpoint(out / "model", dtype="float32", device="cpu")
    with torch.no_grad():
        after = score(trained, pairs.chosen[:4]) - score(trained, pairs.rejected[:4])
    assert -F.logsigmoid(after).mean() < -F.logsigmoid(margin).mean()
    assert "# Training report: reward" in (out / "report.md").read_text()


def test_a_metric_over_its_own_items_is_averaged_over_them():
    """KTO logs the reward of its desirable examples over those alone: metric_weights."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 64, (4, 8), generator=g)

    def loss_fn(m, batch):
        good = batch.y[:, 0] % 2 == 0  # which rows count for the metric
        per_row = m(batch.x).logits[:, -1, 0]
        return LossOutput(per_row.sum(), len(per_row), {"good": per_row.detach()[good].sum(), "all": per_row.detach().sum()},
                          {"good": good.sum()})

    y = torch.tensor([[0], [1], [2], [1]]).expand(4, 8)
    m = model()
    with torch.no_grad():
        rows = m(x).logits[:, -1, 0]
    s = train_step(m, [Batch(x[:2], y[:2]), Batch(x[2:], y[2:])], loss_fn, [torch.optim.SGD(m.parameters(), lr=0.0)],
                   device=torch.device("cpu"))
    assert s.metrics["good"] == pytest.approx(rows[[0, 2]].mean().item(), abs=1e-6)
    assert s.metrics["all"] == pytest.approx(rows.mean().item(), abs=1e-6)
    # a step where no item counts leaves the metric out rather than logging 0
    s = train_step(m, [Batch(x[1:2], y[1:2])], loss_fn, [torch.optim.SGD(m.parameters(), lr=0.0)],
                   device=torch.device("cpu"))
    assert "good" not in s.metrics and "all" in s.metrics


class StepClock:
    """time as the loop reads it: each micro-batch's loss takes 1 s, the first one 30 s more (a compilation)."""

    def __init__(self):
        self.now, self.calls = 0.0, 0

    def perf_counter(self) -> float:
        return self.now

    def loss(self, model, batch):
        self.now += 1.0 + 30.0 * (self.calls == 0)
        self.calls += 1
        return pairwise_loss(model, batch)


@pytest.mark.parametrize("planned, minutes", [(200, 2.0), (60, 3.0)])
def test_fit_minutes_re_sets_the_steps_and_the_schedule_to_end_on_time(tmp_path, monkeypatch, planned, minutes):
    """A first guess of the step count, too long (200) or too short (60): from the pace after the
    warm-up (2 s a step of two micro-batches; the first step's 30 s of compilation spent, not the
    pace) the run ends at its minutes, and the cosine schedule decays over the steps it took."""
    from acorn.train import loop
    from acorn.train.optim import lr_multiplier

    clock = StepClock()
    monkeypatch.setattr(loop, "time", clock)
    g = torch.Generator().manual_seed(2)
    pairs = Pairs(torch.randint(0, 64, (8, 8), generator=g), torch.randint(0, 64, (8, 8), generator=g))
    cfg = ToyConfig(out=str(tmp_path / "run"), optim=OptimConfig(lr=1e-2, warmup_steps=0, schedule="cosine"),
                    train=LoopConfig(seq_len=8, micro_batch=2, batch_tokens=32, max_steps=planned, dtype="float32",
                                     fit_minutes=minutes),
                    eval=EvalConfig(every=0, checkpoint_every=0))
    out = fit(cfg, model(), PairLoader(pairs), clock.loss, device=torch.device("cpu"), dist=Dist(), stage="reward")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = int((60 * minutes - 30) / 2)  # 45 in 2 min, 75 in 3
    assert len(rows) == rows[-1]["step"] == steps
    assert clock.now == 60 * minutes
    assert rows[-1]["lr"] == pytest.approx(1e-2 * lr_multiplier(steps - 1, steps, cfg.optim))
    assert loop.refit_steps(25, 80.0, 2.0, (3, 36.0)) == 45  # the re-plan at step 25 of the first case
    assert loop.refit_steps(25, 130.0, 2.0, (3, 36.0)) == 26  # past the time: one more step


def test_a_fit_without_fit_minutes_keeps_its_steps(tmp_path, monkeypatch):
    from acorn.train import loop

    clock = StepClock()
    monkeypatch.setattr(loop, "time", clock)
    g = torch.Generator().manual_seed(2)
    pairs = Pairs(torch.randint(0, 64, (8, 8), generator=g), torch.randint(0, 64, (8, 8), generator=g))
    cfg = ToyConfig(out=str(tmp_path / "run"), optim=OptimConfig(lr=1e-2, warmup_steps=0),
                    train=LoopConfig(seq_len=8, micro_batch=2, batch_tokens=32, max_steps=60, dtype="float32"),
                    eval=EvalConfig(every=0, checkpoint_every=0))
    out = fit(cfg, model(), PairLoader(pairs), clock.loss, device=torch.device("cpu"), dist=Dist(), stage="reward")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 60
