"""The green-list watermark (Kirchenbauer et al. 2023): the processor adds
delta to exactly a gamma fraction of the vocabulary, the green list is a
deterministic function of (key, previous token), and the detector, from the
text and the tokenizer alone, finds watermarked generations of the engine and
does not flag unwatermarked ones, human text or the wrong key."""

import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from acorn.cli import main
from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.infer.watermark import Detection, GreenList, WatermarkProcessor, detect, fmix32, p_value, z_score
from acorn.tokenizer.bpe import Tokenizer

SHAKESPEARE = Path(__file__).parents[3] / "shared" / "data" / "text" / "tinyshakespeare.txt"


def _green(key, vocab, prev, gamma=0.25, **kw) -> torch.Tensor:
    """The green mask as the processor applies it: which logits it raised."""
    wm = WatermarkProcessor(key, vocab, gamma=gamma, delta=1.0, **kw)
    return wm([1, 2, prev], [], torch.zeros(vocab)) == 1.0


# ------------------------------------------------------------ the processor
@pytest.mark.parametrize("vocab,gamma", [(300, 0.25), (50257, 0.25), (50257, 0.5), (1000, 0.1), (7, 0.3)])
def test_processor_adds_delta_to_exactly_a_gamma_fraction_and_nothing_else(vocab, gamma):
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(vocab))
    logits[3] = float("-inf")  # a banned token stays banned
    wm = WatermarkProcessor("k", vocab, gamma=gamma, delta=2.5)
    out = wm([5, 9], [11], logits.clone())
    green = _green("k", vocab, 11, gamma)  # the previous token is output_ids[-1]
    assert int(green.sum()) == int(gamma * vocab)
    assert torch.equal(out[green], logits[green] + 2.5)
    assert torch.equal(out[~green], logits[~green])


def test_first_token_is_seeded_by_the_prompts_last_token_and_padding_is_untouched():
    wm = WatermarkProcessor(7, 300, delta=1.0)
    assert torch.equal(wm([4, 8, 42], [], torch.zeros(300)), wm([], [42], torch.zeros(300)))
    out = wm([42], [], torch.zeros(320))  # a padded embedding: columns >= vocab_size are not tokens
    assert torch.equal(out[300:], torch.zeros(20)) and int(out.sum()) == 75
    assert torch.equal(wm([], [], torch.zeros(300)), torch.zeros(300))  # no context: no bias
    with pytest.raises(AcornError, match="vocab_size"):
        wm([1], [], torch.zeros(299))


def test_green_list_is_deterministic_per_key_and_previous_token_and_differs_otherwise():
    v = 50257
    a = _green("secret", v, 100)
    assert torch.equal(a, _green("secret", v, 100))  # a fresh processor: nothing stateful
    assert torch.equal(a, GreenList("secret", v).mask([100]))
    assert torch.equal(_green(42, v, 5), _green("42", v, 5))  # the key is str(key): the CLI's key is the API's
    size = int(0.25 * v)
    for other in (_green("secret", v, 101), _green("secret2", v, 100), _green(43, v, 100)):
        # Independent lists of `size` tokens overlap in about size * gamma (hypergeometric, sd ~ 42 here).
        assert abs(int((a & other).sum()) - size * 0.25) < 6 * 42


def test_every_token_is_green_for_about_a_gamma_fraction_of_contexts():
    # A pseudo-random partition, not a fixed set: over 400 previous tokens each
    # token id is green about gamma of the time (binomial, sd 0.0217).
    g = GreenList(1, 500)
    freq = torch.stack([g.mask([p]) for p in range(400)]).float().mean(0)
    assert abs(float(freq.mean()) - 0.25) < 1e-6
    assert float((freq - 0.25).abs().max()) < 5 * math.sqrt(0.25 * 0.75 / 400)


def test_context_schemes():
    left, mn = GreenList("k", 1000, context=3), GreenList("k", 1000, context=3, scheme="minhash")
    # LeftHash(h): only the token h positions back counts.
    assert torch.equal(left.mask([9, 1, 2]), left.mask([9, 5, 6])) and torch.equal(left.mask([9, 1, 2]),
                                                                                  GreenList("k", 1000).mask([9]))
    assert not torch.equal(left.mask([9, 1, 2]), left.mask([8, 1, 2]))
    # Min-hash: the seed is the smallest PRF value of the window, so it ignores order.
    assert torch.equal(mn.mask([1, 2, 3]), mn.mask([3, 1, 2]))
    assert len({mn.seed([a, b, c]) for a, b, c in [(1, 2, 3), (4, 5, 6), (7, 8, 9)]}) == 3
    wm = WatermarkProcessor("k", 1000, context=3)
    assert torch.equal(wm([5], [6], torch.zeros(1000)), torch.zeros(1000))  # 2 tokens of context: none
    assert torch.equal(wm([5], [6, 7], torch.zeros(1000)) > 0, left.mask([5, 6, 7]))


def test_fmix32_is_murmur3s_finaliser():
    def fmix32_ref(h):  # Python ints do not overflow: the plain definition
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)

    rng = random.Random(0)
    xs = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + [rng.getrandbits(32) for _ in range(5000)]
    assert fmix32(torch.tensor(xs)).tolist() == [fmix32_ref(x) for x in xs]


@pytest.mark.parametrize("kw", [dict(gamma=0), dict(gamma=1.0), dict(context=0), dict(scheme="selfhash"),
                                dict(delta=float("nan")), dict(key=""), dict(key=1.5), dict(vocab_size=1)])
def test_bad_settings_are_acorn_errors(kw):
    args = {"key": "k", "vocab_size": 300, **kw}
    with pytest.raises(AcornError):
        WatermarkProcessor(**args)


# ------------------------------------------------------------ the statistic
def test_z_score_and_p_value_on_a_hand_computed_example(tok):
    # T = 16 scored tokens, 10 green, gamma = 1/4: z = (10 - 4) / sqrt(16 * 3/16) = 6 / sqrt(3) = 2 sqrt(3),
    # p = P(Z >= 3.4641) = 0.000266 (normal table).
    assert z_score(10, 16, 0.25) == pytest.approx(2 * math.sqrt(3))
    assert p_value(2 * math.sqrt(3)) == pytest.approx(2.66e-4, rel=5e-3)
    assert p_value(2 * math.sqrt(3)) == pytest.approx(1 - statistics.NormalDist().cdf(2 * math.sqrt(3)))
    assert p_value(0.0) == 0.5

    # The same through detect(): a chain of 16 distinct (prev, token) pairs, 10 green then 6 red.
    g = GreenList("hand", tok.vocab_size)
    ids, used = [7], set()
    for want in [True] * 10 + [False] * 6:
        mask = g.mask([ids[-1]])
        nxt = next(t for t in range(tok.vocab_size) if bool(mask[t]) == want and (ids[-1], t) not in used)
        used.add((ids[-1], nxt))
        ids.append(nxt)
    d = detect(ids, tok, "hand")
    assert (d.num_tokens, d.num_green) == (16, 10)
    assert d.z_score == pytest.approx(2 * math.sqrt(3)) and d.p_value == pytest.approx(2.66e-4, rel=5e-3)
    assert not d.watermarked and d.green_fraction == 10 / 16
    assert detect(ids, tok, "hand", z_threshold=3).watermarked


def test_repeated_pairs_are_counted_once(tok):
    ids = [5, 6] * 20  # two distinct (prev, token) pairs, repeated
    assert detect(ids, tok, "k").num_tokens == 2
    assert detect(ids, tok, "k", ignore_repeated=False).num_tokens == 39
    # A green pair repeated 39 times is no evidence once counted once.
    g = GreenList("k", tok.vocab_size)
    a = next(t for t in range(tok.vocab_size) if g.mask([t])[t])  # a token green after itself
    assert detect([a] * 40, tok, "k", ignore_repeated=False).z_score > 10
    assert detect([a] * 40, tok, "k").z_score < 2


def test_detect_rejects_text_too_short_and_foreign_ids(tok):
    with pytest.raises(AcornError, match="token"):
        detect("", tok, "k")
    with pytest.raises(AcornError, match="outside"):
        detect([1, 2, tok.vocab_size], tok, "k")


# ------------------------------------------------------------ through the engine
@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


PROMPTS = ["The cat", "Once upon a time", "A small acorn"]


def _generate(engine, processors=(), seed=0):
    # The fixture model's context is 128 tokens: three 110-token samples make ~330 tokens of text.
    params = SamplingParams(max_new_tokens=110, temperature=1.0, seed=seed, ignore_eos=True,
                            logits_processors=list(processors))
    return engine.generate(PROMPTS, params)


@pytest.fixture(scope="module")
def watermarked(engine):
    return _generate(engine, [WatermarkProcessor("acorn", engine.tokenizer.vocab_size, delta=6.0)])


def test_every_generated_token_is_green_with_a_huge_delta(engine):
    # delta far beyond the model's logit range: each token, the first one too
    # (seeded by the prompt's last token), must come from its green list.
    g = GreenList("acorn", engine.tokenizer.vocab_size)
    completions = _generate(engine, [WatermarkProcessor("acorn", engine.tokenizer.vocab_size, delta=1000.0)], seed=3)
    for prompt, c in zip(PROMPTS, completions):
        ids = engine.encode(prompt)[-1:] + c.token_ids
        assert len(ids) == 111 and all(bool(g.mask([ids[i - 1]])[ids[i]]) for i in range(1, len(ids)))


def test_detector_finds_watermarked_text(engine, watermarked):
    text = " ".join(c.text for c in watermarked)
    d = detect(text, engine.tokenizer, "acorn")
    assert isinstance(d, Detection) and d.num_tokens > 150
    assert d.z_score > 4 and d.watermarked and d.p_value < 3.2e-5
    for c in watermarked:  # each 110-token sample on its own, from its token ids
        assert detect(c.token_ids, engine.tokenizer, "acorn").z_score > 4


def test_a_wrong_key_does_not_detect(engine, watermarked):
    text = " ".join(c.text for c in watermarked)
    for key in ("acorn2", "Acorn", 0):
        assert abs(detect(text, engine.tokenizer, key).z_score) < 4


def test_unwatermarked_generations_are_not_flagged(engine):
    text = " ".join(c.text for c in _generate(engine))
    d = detect(text, engine.tokenizer, "acorn")
    assert d.num_tokens > 150 and abs(d.z_score) < 4 and not d.watermarked


@pytest.fixture(scope="module")
def shakespeare():
    """Human text: tinyshakespeare beside the checkout; in a bare clone (CI), the
    project's own prose (README and docs, written by people, never watermarked)."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text(encoding="utf-8")
    repo = Path(__file__).resolve().parents[2]
    text = "\n".join(p.read_text(encoding="utf-8") for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))])
    assert len(text) > 50_000  # at least 5 passages of the test below
    return text


def test_human_text_is_not_flagged(tok, shakespeare):
    # Passages of ~500 tokens; GPT-2's 50,257-token vocabulary and the fixture's 300-token one.
    gpt2 = Tokenizer.from_pretrained("gpt2")
    for tokenizer, passages in ((gpt2, 3), (tok, 8)):
        for start in range(0, min(passages * 10_000, len(shakespeare) - 2_000), 10_000):
            d = detect(shakespeare[start:start + 2_000], tokenizer, "acorn")
            assert d.num_tokens > 300 and abs(d.z_score) < 4 and not d.watermarked


def test_counting_repeated_pairs_once_keeps_z_standard_normal_on_human_text(tok, shakespeare):
    # Over 100 keys, z of one human passage should be ~ N(0, 1). With the
    # fixture's 300-token vocabulary the same (prev, token) pairs recur again
    # and again, and counting each occurrence multiplies the spread of z
    # (about 3x here): false positives at z > 4.
    chunk = shakespeare[:2_000]
    once = [detect(chunk, tok, key).z_score for key in range(100)]
    every = [detect(chunk, tok, key, ignore_repeated=False).z_score for key in range(100)]
    assert abs(statistics.mean(once)) < 0.4 and 0.7 < statistics.stdev(once) < 1.3 and max(map(abs, once)) < 4
    assert statistics.stdev(every) > 2


# ------------------------------------------------------------ the command line
def test_cli_detect(engine, watermarked, checkpoint, tmp_path, capsys):
    wm, plain = tmp_path / "wm.txt", tmp_path / "plain.txt"
    wm.write_text(" ".join(c.text for c in watermarked), encoding="utf-8")
    plain.write_text(" ".join(c.text for c in _generate(engine)), encoding="utf-8")
    expected = detect(wm.read_text(encoding="utf-8"), engine.tokenizer, "acorn")

    assert main(["watermark", "detect", str(wm), "--tokenizer", str(checkpoint[0]), "--key", "acorn"]) == 0
    out = capsys.readouterr().out
    assert f"z-score: {expected.z_score:.2f}" in out and "p-value:" in out and "verdict: watermarked" in out
    assert main(["watermark", "detect", str(plain), "--tokenizer", str(checkpoint[0]), "--key", "acorn",
                 "--gamma", "0.25", "--z", "4"]) == 0
    assert "verdict: not watermarked" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "", "a"])
def test_cli_detect_bad_input_is_one_line_exit_2(checkpoint, tmp_path, capsys, content):
    path = tmp_path / "in.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["watermark", "detect", str(path), "--tokenizer", str(checkpoint[0]), "--key", "k"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acorn: error: ") and err.count("\n") == 1
