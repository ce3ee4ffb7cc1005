"""Sampling filters against transformers' logits processors, the penalties by hand, seeds."""

import itertools
import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from acorn.errors import AcornError
from acorn.infer import sampling
from acorn.infer.sampling import SamplingParams, process_logits, sample, token_logprobs

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



# ------------------------------------------------------------- logit bias
def test_logit_bias_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    out = sampling.logit_bias(x, [{1: 2.5, 3: -100.0}, None])
    assert out.tolist() == [[0.0, 3.5, 2.0, -97.0], [1.0, 1.0, 1.0, 1.0]]
    assert x.tolist()[0] == [0.0, 1.0, 2.0, 3.0]  # the input is left alone
    with pytest.raises(AcornError, match="logit_bias.*4"):
        sampling.logit_bias(x, [{4: 1.0}, None])  # id 4 is past a vocabulary of 4


def test_logit_bias_takes_the_openai_apis_string_keys_and_steers_greedy():
    p = SamplingParams(temperature=0, logit_bias={"2": 1.5, 0: -1})
    assert p.logit_bias == {2: 1.5, 0: -1.0}
    assert all(type(k) is int and type(v) is float for k, v in p.logit_bias.items())
    x = torch.tensor([[1.0, 0.0, 0.0]])
    assert sample(x, SamplingParams(temperature=0)).tolist() == [0]
    assert sample(x, p).tolist() == [2]  # 0 + 1.5 beats 1 - 1
    # A ban by -100 holds for sampled rows too.
    ban = SamplingParams(temperature=1.0, logit_bias={"0": -100})
    draws = sample(x.expand(2000, 3), ban, None, torch.Generator().manual_seed(0))
    assert (draws != 0).all()
    assert SamplingParams().logit_bias == {}


# ------------------------------------------------------------- min_new_tokens
def test_suppress_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[False, True, False], [True, False, True]])
    inf = float("-inf")
    assert sampling.suppress(x, mask).tolist() == [[1.0, inf, 3.0], [inf, 5.0, inf]]


def test_min_new_tokens_holds_back_the_stop_tokens_until_the_minimum():
    # The stop token 0 is the argmax: greedy would stop at once.
    x = torch.tensor([[5.0, 1.0, 2.0, 0.0]])
    p = SamplingParams(temperature=0, min_new_tokens=3)
    picks = [sample(x, p, [[2] * g], stop_ids=[{0}]).item() for g in range(6)]
    assert picks == [2, 2, 2, 0, 0, 0]
    out = process_logits(x, p, [[2, 2]], stop_ids=[{0}])
    assert out.tolist() == [[float("-inf"), 1.0, 2.0, 0.0]]  # only the stop token changed
    # The row's own stop_token_ids are held back too, with or without stop_ids.
    q = SamplingParams(temperature=0, min_new_tokens=1, stop_token_ids=[2])
    assert sample(x, q, [[]], stop_ids=[{0}]).tolist() == [1]
    assert sample(x, q, [[]]).tolist() == [0]  # no stop_ids given: only stop_token_ids are banned
    # Nor does a logit bias bring a stop token back before the minimum (bias comes first).
    b = SamplingParams(temperature=0, min_new_tokens=1, logit_bias={3: 100})
    assert sample(x, b, [[]], stop_ids=[{3}]).tolist() == [0]


@pytest.mark.parametrize("generated_len", range(6))
@pytest.mark.parametrize("eos", [5, [3, 7, 49]])
def test_min_new_tokens_equals_transformers(generated_len, eos):
    x = _logits(generated_len)
    prompt_len, minimum = 4, 3
    input_ids = torch.randint(0, V, (4, prompt_len + generated_len), generator=torch.Generator().manual_seed(1))
    theirs = MinNewTokensLengthLogitsProcessor(prompt_len, minimum, eos)(input_ids, x.clone())
    ids = input_ids.tolist()
    eos_set = {eos} if isinstance(eos, int) else set(eos)
    ours = process_logits(x, SamplingParams(min_new_tokens=minimum), [r[prompt_len:] for r in ids],
                          prompts=[r[:prompt_len] for r in ids], stop_ids=[eos_set] * 4)
    _same(ours, theirs)
    assert torch.isinf(ours).any() == (generated_len < minimum)


def test_min_new_tokens_per_row_lengths_equal_each_row_alone():
    x = _logits(3, b=3)
    rows = [SamplingParams(min_new_tokens=m) for m in (0, 2, 5)]
    generated, stops = [[1, 2, 3], [1], [1, 2, 3, 4]], [{0, 1}, {2}, None]
    batched = process_logits(x, rows, generated, stop_ids=stops)
    for i in range(3):
        _same(batched[i:i + 1], process_logits(x[i:i + 1], rows[i], [generated[i]], stop_ids=[stops[i]]))
    assert torch.isinf(batched).sum(1).tolist() == [0, 1, 0]  # row 2 has no stop ids to ban


# ------------------------------------------------------------- user processors
def test_logits_processors_are_called_per_row_with_prompt_output_and_row_logits():
    x = _logits(5, b=3)
    calls = []

    def ban_4(prompt, output, logits):
        calls.append(("ban_4", prompt, output, logits.clone()))
        logits[4] = float("-inf")  # in place, as many vLLM processors do
        return logits

    def plus_one(prompt, output, logits):
        calls.append(("plus_one", prompt, output, logits.clone()))
        return logits + 1

    rows = [SamplingParams(logits_processors=[ban_4, plus_one]), SamplingParams(),
            SamplingParams(logits_processors=(plus_one,))]
    prompts, generated = [[1, 2], [3], [4, 5, 6]], [[7], [], [8, 9]]
    before = x.clone()
    out = process_logits(x, rows, generated, prompts=prompts)
    assert [(c[0], c[1], c[2]) for c in calls] == [("ban_4", [1, 2], [7]), ("plus_one", [1, 2], [7]),
                                                   ("plus_one", [4, 5, 6], [8, 9])]
    assert all(type(c[1]) is list and type(c[2]) is list for c in calls)
    assert torch.equal(calls[0][3], x[0]) and torch.equal(calls[2][3], x[2])
    assert calls[1][3][4] == float("-inf")  # the second processor sees the first one's result
    expected = x.clone()
    expected[0, 4] = float("-inf")
    expected[[0, 2]] += 1
    assert torch.equal(out, expected)
    assert torch.equal(x, before)  # the in-place processor did not write into the caller's logits


def test_a_processor_that_returns_the_wrong_shape_is_an_acorn_error():
    bad = SamplingParams(logits_processors=[lambda prompt, output, logits: logits[:3]])
    with pytest.raises(AcornError, match="logits processor"):
        sample(_logits(0, b=1), bad)


def test_processing_order_by_hand():
    """processors -> logit bias -> min_new_tokens -> repetition -> frequency/presence."""
    x = torch.tensor([[2.0, 1.0, 0.5, 3.0]])
    seen = []

    def lift_2(prompt, output, logits):
        seen.append(logits.tolist())
        return logits + torch.tensor([0.0, 0.0, 1.0, 0.0])

    p = SamplingParams(logits_processors=[lift_2], logit_bias={1: 2.0}, min_new_tokens=2,
                       repetition_penalty=2.0, frequency_penalty=0.25)
    out = process_logits(x, p, [[0]], prompts=[[1]], stop_ids=[{3}])
    # lift_2: [2, 1, 1.5, 3]; bias: [2, 3, 1.5, 3]; min_new_tokens bans 3: [2, 3, 1.5, -inf];
    # repetition 2.0 on {0, 1} (prompt and output): [1, 1.5, 1.5, -inf]; frequency 0.25 on 0: [0.75, ...].
    assert seen == [[2.0, 1.0, 0.5, 3.0]]  # the processor sees the model's own scores
    assert out.tolist() == [[0.75, 1.5, 1.5, float("-inf")]]


def test_a_plain_greedy_batch_runs_none_of_the_steps(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a step ran that no row asked for")

    for name in ("_processors", "logit_bias", "suppress", "repetition_penalty", "frequency_presence_penalty",
                 "temperature", "top_k", "top_p", "min_p"):
        monkeypatch.setattr(sampling, name, boom)
    x = _logits(1)
    assert torch.equal(sample(x, SamplingParams(temperature=0, min_new_tokens=2), [[1, 2]] * 4,
                              stop_ids=[{x.argmax(-1)[0].item()}] * 4), x.argmax(-1))
    with pytest.raises(AssertionError, match="no row asked"):  # the guard itself can fail
        sample(x, SamplingParams(temperature=0, logit_bias={1: 1.0}))



@pytest.mark.parametrize("params, generated, stops, plain", [
    (SamplingParams(temperature=0), 0, {3}, True),
    (SamplingParams(temperature=0, min_new_tokens=2), 2, {3}, True),  # past its minimum
    (SamplingParams(temperature=0, min_new_tokens=2), 1, None, True),  # no stop token to hold back
    (SamplingParams(temperature=0, min_new_tokens=2), 1, {3}, False),
    (SamplingParams(temperature=0, min_new_tokens=2, stop_token_ids=[3]), 1, None, False),
    (SamplingParams(temperature=0.7), 0, None, False),
    (SamplingParams(temperature=0, repetition_penalty=1.2), 0, None, False),
    (SamplingParams(temperature=0, frequency_penalty=0.5), 0, None, False),
    (SamplingParams(temperature=0, presence_penalty=0.5), 0, None, False),
    (SamplingParams(temperature=0, logit_bias={1: 1.0}), 0, None, False),
    (SamplingParams(temperature=0, logits_processors=[lambda prompt, output, row: row]), 0, None, False),
])
def test_plain_argmax_says_exactly_when_sampling_runs_no_step(monkeypatch, params, generated, stops, plain):
    """plain_argmax (what lets a compiled decode step's own argmax stand for sampling) is true
    exactly when sample() runs none of its steps on the row, and then sample() is the argmax."""
    ran = []
    for name in ("_processors", "logit_bias", "suppress", "repetition_penalty", "frequency_presence_penalty",
                 "temperature", "top_k", "top_p", "min_p"):
        monkeypatch.setattr(sampling, name, lambda x, *rest, _name=name: ran.append(_name) or x)
    x = _logits(2, b=1)
    got = sample(x, params, [[1] * generated], stop_ids=[stops])
    assert sampling.plain_argmax(params, generated, stops) is plain
    assert (not ran) is plain
    if plain:
        assert torch.equal(got, x.argmax(-1))

# ------------------------------------------------------------- logprobs
def test_token_logprobs_by_hand():
    probs = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.125, 0.125]]
    x = torch.tensor(probs).log() + torch.tensor([[7.0], [-3.0]])  # a shift per row changes nothing
    chosen, ids, values = token_logprobs(x, torch.tensor([1, 0]), 2)
    assert torch.allclose(chosen, torch.tensor([math.log(0.2), math.log(0.5)]), atol=1e-6)
    assert ids.dtype == torch.long and ids.tolist() == [[3, 2], [0, 1]]
    assert torch.allclose(values, torch.tensor([[math.log(0.4), math.log(0.3)], [math.log(0.5), math.log(0.25)]]),
                          atol=1e-6)
    c0, i0, v0 = token_logprobs(x, torch.tensor([3, 3]), 0)
    assert i0.shape == (2, 0) and v0.shape == (2, 0)
    assert torch.allclose(c0, torch.tensor([math.log(0.4), math.log(0.125)]), atol=1e-6)
    assert token_logprobs(x, torch.tensor([0, 0]), 10)[1].shape == (2, 4)  # k past the vocabulary: all of it


def test_token_logprobs_is_float32_for_a_bf16_model_and_handles_banned_tokens():
    x = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]], dtype=torch.bfloat16)
    chosen, ids, values = token_logprobs(x, torch.tensor([2]), 4)
    assert chosen.dtype == values.dtype == torch.float32
    assert chosen.item() == float("-inf")
    assert torch.allclose(values[0, :3], torch.full((3,), math.log(1 / 3)))
    assert ids[0, 3].item() == 2 and values[0, 3].item() == float("-inf")


# ------------------------------------------------------------- the draws, statistically
P8 = torch.tensor([0.3, 0.2, 0.15, 0.12, 0.09, 0.07, 0.05, 0.02])  # no ties: the kept sets are unambiguous
# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


def _chi2(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's statistic sum (observed - expected)^2 / expected over tokens with expected > 0."""
    n, keep = counts.sum(), expected > 0
    return (((counts[keep] - n * expected[keep]) ** 2) / (n * expected[keep])).sum().item()


def _filtered(temp: float, kept: list[int]) -> torch.Tensor:
    """softmax(log P8 / temp) restricted to the kept tokens and renormalised, by hand."""
    target = P8.double() ** (1 / temp)
    expected = torch.zeros(8, dtype=torch.float64)
    expected[kept] = target[kept] / target[kept].sum()
    return expected


def _draw_counts(params: SamplingParams, n: int = 20_000) -> torch.Tensor:
    ids = sample(P8.log().expand(n, 8), params, None, torch.Generator().manual_seed(1234))
    return torch.bincount(ids, minlength=8).double()


@pytest.mark.parametrize("settings,temp,kept", [
    (dict(top_k=3), 1.0, [0, 1, 2]),
    (dict(top_p=0.7), 1.0, [0, 1, 2, 3]),  # 0.3 + 0.2 + 0.15 = 0.65 < 0.7; one more
    (dict(min_p=0.25), 1.0, [0, 1, 2, 3, 4]),  # p >= 0.25 * 0.3 = 0.075
    (dict(), 0.5, list(range(8))),  # temperature alone: p ** 2, renormalised
    (dict(top_p=0.7), 2.0, [0, 1, 2, 3, 4]),  # sqrt(p): the tail 5, 6, 7 holds 0.237 <= 0.3, with 4 0.350
    (dict(top_k=6, min_p=0.2), 0.5, [0, 1, 2]),  # p ** 2 >= 0.2 * 0.3 ** 2: p >= 0.134
])
def test_draw_frequencies_match_the_filtered_distribution(settings, temp, kept):
    counts = _draw_counts(SamplingParams(temperature=temp, **settings))
    removed = [t for t in range(8) if t not in kept]
    assert counts[removed].sum() == 0, "a filtered-out token was drawn"
    expected = _filtered(temp, kept)
    chi2 = _chi2(counts, expected)
    assert chi2 < CHI2_001[len(kept) - 1], f"chi-square {chi2:.1f}: frequencies {(counts / 20_000).tolist()}"
    assert (counts / 20_000 - expected).abs().max() < 0.015


def test_the_chi_square_check_tells_a_slightly_wrong_distribution():
    """The check above has the power to catch a sampler 20% off in temperature."""
    counts = _draw_counts(SamplingParams(temperature=1.0, top_k=3))
    assert _chi2(counts, _filtered(1.0, [0, 1, 2])) < CHI2_001[2]
    assert _chi2(counts, _filtered(0.8, [0, 1, 2])) > CHI2_001[2]
    assert _chi2(counts, _filtered(1.25, [0, 1, 2])) > CHI2_001[2]


# ------------------------------------------------------------- seeds and batch composition
def _mixed_rows():
    return [SamplingParams(temperature=0.8, top_k=10), SamplingParams(temperature=1.3, top_p=0.8),
            SamplingParams(temperature=0), SamplingParams(temperature=1.0, min_p=0.1, logit_bias={0: 3.0})]


def test_a_seeded_generator_reproduces_its_draws():
    x = _logits(8, b=4)
    rows = _mixed_rows()

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return torch.stack([sample(x, rows, None, gens) for _ in range(25)])

    assert torch.equal(run([1, 2, 3, 4]), run([1, 2, 3, 4]))
    assert not torch.equal(run([1, 2, 3, 4])[:, 0], run([9, 2, 3, 4])[:, 0])


def test_rows_with_their_own_generators_do_not_depend_on_the_batch():
    x = _logits(8, b=4)
    rows = _mixed_rows()
    steps = 25

    def draws(order, seeds):
        gens = [torch.Generator().manual_seed(seeds[i]) for i in order]
        batch = [rows[i] for i in order]
        return torch.stack([sample(x[order], batch, None, gens) for _ in range(steps)])

    seeds = {0: 10, 1: 11, 2: 12, 3: 13}
    together = draws([0, 1, 2, 3], seeds)
    for i in range(4):
        assert torch.equal(draws([i], seeds)[:, 0], together[:, i]), f"row {i} alone differs"
    shuffled = draws([3, 1, 0], seeds)  # another order, one row fewer
    assert torch.equal(shuffled[:, 0], together[:, 3])
    assert torch.equal(shuffled[:, 2], together[:, 0])
    assert len(set(together[:, 1].tolist())) > 1  # the sampled rows do vary from step to step


# ------------------------------------------------------------- the new parameters
def test_new_parameters_default_and_normalise():
    p = SamplingParams()
    assert (p.n, p.min_new_tokens, p.logit_bias, p.logprobs, p.logits_processors) == (1, 0, {}, None, [])
    assert (p.num_beams, p.length_penalty, p.early_stopping) == (1, 1.0, False)
    f = lambda prompt, output, logits: logits  # noqa: E731
    assert SamplingParams(logits_processors=(f,)).logits_processors == [f]
    assert SamplingParams(logits_processors=f).logits_processors == [f]
    assert SamplingParams(num_beams=4, n=4, early_stopping="never").early_stopping == "never"
    assert SamplingParams(min_new_tokens=5, max_new_tokens=5, logprobs=20).logprobs == 20


@pytest.mark.parametrize("bad,field", [
    (dict(n=0), "n"), (dict(n=1.5), "n"), (dict(n=True), "n"),
    (dict(min_new_tokens=-1), "min_new_tokens"), (dict(min_new_tokens=2.0), "min_new_tokens"),
    (dict(min_new_tokens=10, max_new_tokens=5), "min_new_tokens"),
    (dict(logit_bias={"abc": 1}), "logit_bias"), (dict(logit_bias={1: 100.5}), "logit_bias"),
    (dict(logit_bias={1: -101}), "logit_bias"), (dict(logit_bias={-1: 0}), "logit_bias"),
    (dict(logit_bias={1: float("nan")}), "logit_bias"), (dict(logit_bias={1.5: 1}), "logit_bias"),
    (dict(logit_bias={1: "x"}), "logit_bias"), (dict(logit_bias=[1, 2]), "logit_bias"),
    (dict(logprobs=-1), "logprobs"), (dict(logprobs=21), "logprobs"), (dict(logprobs=1.0), "logprobs"),
    (dict(logits_processors=[1]), "logits_processors"),
    (dict(num_beams=0), "num_beams"), (dict(num_beams=2, n=3), "n"),
    (dict(length_penalty=float("inf")), "length_penalty"), (dict(length_penalty="1"), "length_penalty"),
    (dict(early_stopping="always"), "early_stopping"), (dict(early_stopping=None), "early_stopping"),
])
def test_bad_new_parameters_are_acorn_errors_that_name_the_field(bad, field):
    with pytest.raises(AcornError, match=rf"\b{field}\b must") as info:
        SamplingParams(**bad)
    assert "\n" not in str(info.value)


def test_logit_bias_at_the_limits_is_accepted():
    assert SamplingParams(logit_bias={"7": -100, 8: 100}).logit_bias == {7: -100.0, 8: 100.0}


def test_merge_takes_the_openai_names_max_tokens_and_min_tokens():
    p = SamplingParams.merge(None, {"max_tokens": 12, "min_tokens": 3})
    assert (p.max_new_tokens, p.min_new_tokens) == (12, 3)
    assert SamplingParams.merge(None, {"max_tokens": 12, "max_new_tokens": 12}).max_new_tokens == 12
    with pytest.raises(AcornError, match="max_tokens=12 and max_new_tokens=13"):
        SamplingParams.merge(None, {"max_tokens": 12, "max_new_tokens": 13})
    with pytest.raises(AcornError, match="min_new_tokens"):  # merged values are checked again
        SamplingParams.merge(SamplingParams(max_new_tokens=4), {"min_tokens": 5})
    with pytest.raises(AcornError, match="max_tokens"):  # the aliases are listed among the known names
        SamplingParams.merge(None, {"max_toks": 1})
    merged = SamplingParams.merge(SamplingParams(logit_bias={"3": 1}), {"temperature": 0})
    assert merged.logit_bias == {3: 1.0}  # normalising again keeps the normalised form


def test_a_vanishing_temperature_is_greedy_and_extreme_penalties_are_refused():
    """1e-50 rounds to 0 in float32 (inf logits, NaN probabilities): it used to
    crash the sampler, and through the server the engine thread."""
    assert SamplingParams(temperature=1e-50).temperature == 0.0
    assert SamplingParams(temperature=1e-4).temperature == 1e-4
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, SamplingParams(temperature=1e-45)), logits.argmax(-1))
    for bad in (dict(repetition_penalty=1e-45), dict(repetition_penalty=1e9), dict(presence_penalty=1e40),
                dict(frequency_penalty=float("nan"))):
        with pytest.raises(AcornError, match=next(iter(bad))):
            SamplingParams(**bad)
