"""Speculative decoding: the verification rule keeps the target's distribution,
greedy output is the plain greedy output token for token, and both drafters
(a draft model, prompt lookup) run inside continuous batching."""

import pytest
import torch

from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.infer.speculative import Draft, DraftModel, PromptLookup, verify

PROMPTS = ["The quick brown fox", "Once", "A small acorn grows into a tall", "The cat sat on"]
GREEDY = dict(temperature=0, ignore_eos=True)
P = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
Q = torch.tensor([0.05, 0.10, 0.40, 0.05, 0.30, 0.10])


def _frequencies(draw, n=20000):
    counts = torch.zeros(len(P))
    for _ in range(n):
        counts[draw()] += 1
    return counts / n


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_the_first_token_is_distributed_as_the_target(drafter):
    """Whatever the draft proposes, what comes out is distributed as p (the
    tolerance is ~4 standard errors of a frequency at 20,000 draws)."""
    g = torch.Generator().manual_seed(0)
    target = torch.stack([P, P.flip(0)])  # position 2 only matters when the draft is kept

    def draw():
        if drafter == "model":
            d = int(torch.multinomial(Q, 1, generator=g))
            tokens, _ = verify(target, Draft([d], Q[None]), False, g)
        else:
            tokens, _ = verify(target, Draft([4]), False, g)  # a fixed guess: q is a point mass
        return tokens[0]

    freq = _frequencies(draw)
    assert (freq - P).abs().max() < 0.013, (freq, P)


def test_acceptance_follows_min_1_p_over_q():
    g = torch.Generator().manual_seed(1)
    kept = sum(verify(torch.stack([P, P]), Draft([2], Q[None]), False, g)[1] for _ in range(20000)) / 20000
    assert kept == pytest.approx(0.20 / 0.40, abs=0.015)  # token 2: p/q = 0.5


def test_greedy_verification_keeps_drafts_while_they_are_the_argmax():
    target = torch.eye(5)[[1, 2, 3, 4]]  # argmax 1, 2, 3, then 4
    assert verify(target, Draft([1, 2, 0]), True, None) == ([1, 2, 3], 2)
    assert verify(target, Draft([1, 2, 3]), True, None) == ([1, 2, 3, 4], 3)  # all kept, plus the bonus
    assert verify(target, Draft([0, 2, 3]), True, None) == ([1], 0)


def test_prompt_lookup_copies_what_followed_the_last_ngram():
    lookup = PromptLookup(k=3)
    assert lookup.propose(None, [5, 6, 7, 8, 9, 1, 6, 7], None, None).tokens == [8, 9, 1]
    assert lookup.propose(None, [1, 2, 3, 4], None, None).tokens == []  # nothing repeats
    assert lookup.propose(None, [4, 1, 2, 4, 3, 3], None, None).tokens == [3]  # the latest 1-gram match


@pytest.fixture(scope="module")
def plain(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


def _ids(completions):
    return [c.token_ids for c in completions]


def test_greedy_with_the_model_itself_as_draft_keeps_everything(checkpoint, plain):
    expected = _ids(plain.generate(PROMPTS, max_new_tokens=20, **GREEDY))
    draft = Engine.from_pretrained(checkpoint[0], device="cpu").model
    engine = Engine(plain.model, plain.tokenizer, speculative=DraftModel(draft, k=4))
    assert _ids(engine.generate(PROMPTS, max_new_tokens=20, **GREEDY)) == expected
    stats = engine.stats()
    assert stats["acceptance_rate"] > 0.95 and stats["blocks_in_use"] == 0
    # A whole prompt's worth of steps saved: far fewer forward passes than tokens.
    assert stats["drafted_tokens"] > 40


def test_greedy_with_a_poor_draft_model_is_still_the_plain_output(checkpoint, plain):
    torch.manual_seed(3)
    from acorn.model.transformer import ModelConfig, Transformer

    cfg = ModelConfig.from_dict({**plain.model.config.to_dict(), "n_layer": 1})
    poor = Transformer(cfg).eval()
    expected = _ids(plain.generate(PROMPTS, max_new_tokens=20, **GREEDY))
    engine = Engine(plain.model, plain.tokenizer, speculative=DraftModel(poor, k=3), block_size=4)
    assert _ids(engine.generate(PROMPTS, max_new_tokens=20, **GREEDY)) == expected
    assert engine.stats()["acceptance_rate"] < 0.9 and engine.stats()["blocks_in_use"] == 0


def test_prompt_lookup_greedy_equals_plain_and_accepts_copies(checkpoint, plain):
    engine = Engine.from_pretrained(checkpoint[0], device="cpu", speculative_model="ngram", num_speculative_tokens=5)
    prompts = [p * 3 for p in PROMPTS]  # repetitive prompts: something to copy
    assert _ids(engine.generate(prompts, max_new_tokens=24, **GREEDY)) == \
        _ids(plain.generate(prompts, max_new_tokens=24, **GREEDY))
    assert engine.stats()["drafted_tokens"] > 0


def test_sampling_with_a_draft_model_finishes_and_frees_its_blocks(checkpoint, plain):
    draft = Engine.from_pretrained(checkpoint[0], device="cpu").model
    engine = Engine(plain.model, plain.tokenizer, speculative=DraftModel(draft, k=3), block_size=4)
    params = SamplingParams(max_new_tokens=15, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    outs = engine.generate(PROMPTS, params)
    assert [len(c.token_ids) for c in outs] == [15] * 4  # never past max_new_tokens
    again = Engine(plain.model, plain.tokenizer, speculative=DraftModel(draft, k=3), block_size=4)
    assert _ids(again.generate(PROMPTS, params)) == _ids(outs)  # seeded: reproducible
    assert engine.stats()["blocks_in_use"] == 0 and engine.stats()["acceptance_rate"] > 0.5


def test_a_draft_with_another_tokenizer_is_refused(checkpoint, tmp_path, tok):
    import shutil

    from acorn.tokenizer.bpe import Tokenizer

    other = tmp_path / "draft"
    shutil.copytree(checkpoint[0], other)
    Tokenizer.train(["a different corpus entirely " * 50], 280).save(other)
    with pytest.raises(AcornError, match="different tokenizer"):
        Engine.from_pretrained(checkpoint[0], device="cpu", speculative_model=str(other))
