"""Sampling filters against transformers' logits processors, the penalties by hand, seeds."""

import itertools

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from acorn.errors import AcornError
from acorn.infer import sampling
from acorn.infer.sampling import SamplingParams, sample

V = 50



def _logits(seed: int, b: int = 4, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, V, generator=g) * 3
    if ties:
        # Round to a coarse grid so many logits are exactly equal, also at the cut-offs.
        x = (x * 2).round() / 2
    return x


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), "different tokens removed"
    assert torch.equal(ours, theirs)


SEEDS = [(s, t) for s in range(4) for t in (False, True)]


@pytest.mark.parametrize("seed,ties", SEEDS)
@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 1.7])
def test_temperature_equals_transformers(seed, ties, t):
    x = _logits(seed, ties=ties)
    _same(sampling.temperature(x, t), TemperatureLogitsWarper(t)(None, x))


@pytest.mark.parametrize("seed,ties", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 5, 17, V, V + 10])
def test_top_k_equals_transformers(seed, ties, k):
    x = _logits(seed, ties=ties)
    ours = sampling.top_k(x, k)
    _same(ours, TopKLogitsWarper(k)(None, x))
    assert ((~torch.isinf(ours)).sum(1) >= min(k, V)).all()


@pytest.mark.parametrize("seed,ties", SEEDS)
@pytest.mark.parametrize("p", [0.0001, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_top_p_equals_transformers(seed, ties, p):
    x = _logits(seed, ties=ties)
    ours = sampling.top_p(x, p)
    _same(ours, TopPLogitsWarper(p)(None, x))
    kept = (~torch.isinf(ours)).sum(1)
    assert (kept >= 1).all()
    if p == 1.0:
        assert (kept == V).all()


def test_top_p_edge_cases():
    # One dominant token (p tiny -> only it), a uniform row (all tokens tie),
    # and a row already cut by -inf.
    x = torch.tensor([[10.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, float("-inf"), 1.0, float("-inf")]])
    for p in (0.01, 0.25, 0.5, 0.75, 0.99):
        _same(sampling.top_p(x, p), TopPLogitsWarper(p)(None, x))
    assert (~torch.isinf(sampling.top_p(x, 0.01))).sum(1).tolist() == [1, 1, 1]


@pytest.mark.parametrize("seed,ties", SEEDS)
@pytest.mark.parametrize("m", [0.0, 0.01, 0.1, 0.3, 0.9, 1.0])
def test_min_p_equals_transformers(seed, ties, m):
    x = _logits(seed, ties=ties)
    _same(sampling.min_p(x, m), MinPLogitsWarper(m)(None, x))


@pytest.mark.parametrize("seed,ties", SEEDS)
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(seed, ties, penalty):
    x = _logits(seed, ties=ties)
    g = torch.Generator().manual_seed(seed + 100)
    history = torch.randint(0, V, (x.shape[0], 12), generator=g)
    seen = torch.zeros_like(x, dtype=torch.bool).scatter(1, history, True)
    _same(sampling.repetition_penalty(x, seen, penalty), RepetitionPenaltyLogitsProcessor(penalty)(history, x.clone()))


def test_per_row_parameters_equal_each_row_alone():
    """A batch whose rows have different settings filters each row as if it were alone."""
    x = _logits(7)
    ks, ps, ms, ts = [0, 3, 10, 1], [1.0, 0.5, 0.9, 0.2], [0.0, 0.05, 0.2, 0.5], [0.5, 1.0, 1.5, 0.8]
    batched = sampling.min_p(sampling.top_p(sampling.top_k(sampling.temperature(
        x, torch.tensor(ts)), torch.tensor(ks)), torch.tensor(ps, dtype=torch.float64)), torch.tensor(ms))
    for i in range(4):
        alone = sampling.min_p(sampling.top_p(sampling.top_k(sampling.temperature(x[i:i + 1], ts[i]), ks[i]),
                                              ps[i]), ms[i])
        _same(batched[i:i + 1], alone)


def test_the_whole_pipeline_equals_transformers_processors_in_generates_order():
    x = _logits(3)
    history = torch.randint(0, V, (4, 9), generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                              TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)])
    expected = hf(history, x.clone()).softmax(-1)
    # Draw many times from ours (each row repeated n times, one shared generator):
    # every drawn token must have nonzero probability under transformers, and
    # the empirical frequencies must match.
    n = 4000
    ids = sample(x.repeat_interleave(n, 0), params, None, torch.Generator().manual_seed(1),
                 prompts=history.repeat_interleave(n, 0).tolist())
    counts = torch.zeros(4, V).index_put_((torch.arange(4).repeat_interleave(n), ids), torch.ones(4 * n),
                                          accumulate=True)
    assert (expected[counts > 0] > 0).all()
    assert (counts / n - expected).abs().max() < 0.03


def test_frequency_and_presence_penalties_by_hand():
    x = torch.zeros(2, 6)
    counts = torch.tensor([[0, 1, 3, 0, 0, 0], [2, 0, 0, 0, 0, 1]], dtype=torch.float32)
    out = sampling.frequency_presence_penalty(x, counts, torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.25]))
    assert out.tolist() == [[0, -1.5, -2.5, 0, 0, 0], [-0.25, 0, 0, 0, 0, -0.25]]


def test_sample_applies_frequency_and_presence_to_generated_tokens_only():
    # Token 0 leads by 1.0; having generated it twice costs 2 * 0.3 + 0.5 = 1.1 > 1.0,
    # so greedy picks token 1 instead. The prompt does not count for these penalties.
    x = torch.tensor([[3.0, 2.0, 0.0]])
    greedy = SamplingParams(temperature=0, frequency_penalty=0.3, presence_penalty=0.5)
    assert sample(x, greedy, [[0, 0]]).tolist() == [1]
    assert sample(x, greedy, [[0]]).tolist() == [0]  # 0.3 + 0.5 = 0.8 < 1.0
    assert sample(x, greedy, [[]], prompts=[[0, 0, 0]]).tolist() == [0]
    # The repetition penalty does count the prompt (as transformers' input_ids include it).
    assert sample(x, SamplingParams(temperature=0, repetition_penalty=2.0), [[]], prompts=[[0]]).tolist() == [1]


def test_temperature_zero_is_argmax_and_seeds_are_deterministic():
    x = _logits(11, b=6)
    assert torch.equal(sample(x, SamplingParams(temperature=0)), x.argmax(-1))
    params = SamplingParams(temperature=1.0, top_p=0.95)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack([sample(x, params, None, g) for _ in range(20)])

    assert torch.equal(draws(5), draws(5))
    assert not torch.equal(draws(5), draws(6))


def test_each_row_draws_from_its_own_generator():
    """A row's draw depends on its generator only, not on its batch neighbours."""
    x = _logits(2, b=3)
    params = SamplingParams(temperature=1.5)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = torch.stack([sample(x, params, None, gens) for _ in range(10)])
    alone_gen = torch.Generator().manual_seed(2)
    alone = torch.stack([sample(x[1:2], params, None, [alone_gen]) for _ in range(10)])
    assert torch.equal(batch[:, 1], alone[:, 0])


def test_mixed_greedy_and_sampled_rows():
    x = _logits(4, b=4)
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1),
            SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)]
    # top_k=1 leaves a single token, so every row must give its argmax.
    assert torch.equal(sample(x, rows, None, torch.Generator().manual_seed(0)), x.argmax(-1))


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(min_p=2), dict(repetition_penalty=0), dict(max_new_tokens=0),
                                 dict(stop=[""])])
def test_bad_parameters_are_acorn_errors(bad):
    with pytest.raises(AcornError):
        SamplingParams(**bad)


def test_merge_overrides_and_rejects_unknown_names():
    p = SamplingParams.merge(SamplingParams(top_k=5), {"temperature": 0, "stop": "\n"})
    assert (p.top_k, p.temperature, p.stop) == (5, 0, ["\n"])
    with pytest.raises(AcornError, match="temprature"):
        SamplingParams.merge(None, {"temprature": 0.5})


def test_parameter_grid_of_the_whole_filter_chain_keeps_the_argmax():
    """Whatever the settings, the most likely token survives every filter."""
    x = _logits(9)
    for k, p, m in itertools.product([0, 1, 4], [0.05, 0.5, 1.0], [0.0, 0.5, 1.0]):
        y = sampling.min_p(sampling.top_p(sampling.top_k(x, k), p), m)
        assert torch.equal(y.argmax(-1), x.argmax(-1))
        assert torch.isfinite(y.gather(1, x.argmax(-1, keepdim=True))).all()
