"""Beam search against transformers' generate(num_beams=...), the oracle.

The fixture is a tiny random Llama made by transformers (std 0.3, so the
distributions are far from uniform), saved and loaded into Acorn. The stop id
of each prompt is the token the model likes most along its greedy
continuation, so beams finish at different lengths and the three
early_stopping modes give different answers (asserted below: a grid where
they all agreed would not test them).
"""

import itertools

import pytest
import torch
import transformers

from acorn.model.checkpoint import load
from acorn.errors import AcornError
from acorn.infer.beam import Beam, beam_search
from tests.conftest import random_llama

VOCAB = 96
PAD = VOCAB - 1  # transformers fills the rows that finished early with it
N = 16  # max_new_tokens
PROMPTS = [[5, 17, 42, 8], [60], [3, 3, 90, 12, 77, 21, 40], [11, 2, 70]]
MODES = [True, False, "never"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, the same weights loaded by Acorn)."""
    hf = random_llama(VOCAB)
    # A bare config: no logits processors beyond what each call asks for.
    hf.generation_config = transformers.GenerationConfig(pad_token_id=PAD)
    path = tmp_path_factory.mktemp("beam-ckpt")
    hf.save_pretrained(path)
    return hf, load(path, device="cpu")


@pytest.fixture(scope="module")
def liked(models):
    """Per prompt: the token with the highest mean probability along its greedy continuation."""
    hf, _ = models
    out = []
    for p in PROMPTS:
        x = torch.tensor([p])
        with torch.no_grad():
            seq = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=N,
                              eos_token_id=None)
            probs = hf(seq).logits[0, len(p) - 1:].softmax(-1).mean(0)
        out.append(int(probs.argmax()))
    return out


@torch.no_grad()
def _hf_beams(hf, prompt, *, stop=(), num_beams, num_return=None, max_new_tokens=N, **kw) -> list[tuple[list[int], float]]:
    """transformers' returned beams as (generated ids up to and with the stop id, sequences_score)."""
    x = torch.tensor([prompt])
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=num_beams,
                      max_new_tokens=max_new_tokens, eos_token_id=list(stop) or None,
                      num_return_sequences=num_return or num_beams, output_scores=True,
                      return_dict_in_generate=True, **kw)
    beams = []
    for row, score in zip(out.sequences[:, len(prompt):].tolist(), out.sequences_scores.tolist()):
        ends = [i for i, t in enumerate(row) if t in stop]
        if ends:  # a finished row is padded to the longest returned one
            assert all(t == PAD for t in row[ends[0] + 1:])
            row = row[:ends[0] + 1]
        else:
            assert len(row) == max_new_tokens
        beams.append((row, score))
    return beams


def _assert_same(mine: list[Beam], theirs: list[tuple[list[int], float]], stop=()):
    assert [b.token_ids for b in mine] == [ids for ids, _ in theirs]
    assert [b.score for b in mine] == pytest.approx([s for _, s in theirs], abs=1e-4)
    for b in mine:
        assert b.finished == (b.token_ids[-1] in stop)


# ------------------------------------------------------- against transformers
@pytest.mark.parametrize("early_stopping", MODES)
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_equals_transformers(models, liked, num_beams, length_penalty, early_stopping):
    hf, model = models
    for prompt, eos in zip(PROMPTS, liked):
        for stop in ({eos}, set()):
            kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
            mine = beam_search(model, prompt, max_new_tokens=N, vocab_size=VOCAB, stop_ids=stop,
                               num_return=num_beams, **kw)
            _assert_same(mine, _hf_beams(hf, prompt, stop=stop, **kw), stop)


def test_the_grid_has_beams_that_finish_early_and_modes_that_differ(models, liked):
    """Each mode stops no earlier than the one before it (True, False, "never") on the
    same search, and the finished set only improves, so the kept scores can only rise
    from mode to mode. Here each step up also changes the answer somewhere."""
    _, model = models
    finished_early = strictly_better = 0
    raised = {False: 0, "never": 0}
    for (prompt, eos), nb, lp in itertools.product(zip(PROMPTS, liked), [2, 4], [1.0, 0.0, 2.0]):
        runs = {es: beam_search(model, prompt, num_beams=nb, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos},
                                length_penalty=lp, early_stopping=es, num_return=nb) for es in MODES}
        finished_early += sum(b.finished and len(b.token_ids) < N for b in runs[True])
        for lower, higher in [(True, False), (False, "never")]:
            lo, hi = [b.score for b in runs[lower]], [b.score for b in runs[higher]]
            assert all(h >= l - 1e-6 for l, h in zip(lo, hi))
            raised[higher] += any(h > l + 1e-6 for l, h in zip(lo, hi))
        strictly_better += runs["never"][0].score > runs[True][0].score + 1e-6
    assert finished_early > 0 and strictly_better > 0
    assert raised[False] > 0 and raised["never"] > 0


def test_num_return_is_a_prefix_of_the_ranking(models, liked):
    hf, model = models
    prompt, eos = PROMPTS[2], liked[2]
    full = beam_search(model, prompt, num_beams=4, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos}, num_return=4)
    assert [b.score for b in full] == sorted((b.score for b in full), reverse=True)
    for r in (1, 2, 3):
        mine = beam_search(model, prompt, num_beams=4, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos}, num_return=r)
        assert mine == full[:r]
        _assert_same(mine, _hf_beams(hf, prompt, stop={eos}, num_beams=4, num_return=r), {eos})


def test_several_stop_ids_widen_the_candidates(models, liked):
    """n stop ids: (1 + n) * num_beams candidates per step, as transformers keeps, so
    that num_beams of them go on even when the best ones all stop. Stopping at the
    prompt's three likeliest next tokens tests that: 2 * num_beams would not be enough."""
    hf, model = models
    for prompt in PROMPTS:
        with torch.no_grad():
            first = model(torch.tensor([prompt])).logits[0, -1, :VOCAB].topk(3).indices.tolist()
        for stop in (set(liked), set(first)):
            assert len(stop) > 1
            for nb, es in itertools.product([2, 3, 4], MODES):
                mine = beam_search(model, prompt, num_beams=nb, max_new_tokens=N, vocab_size=VOCAB, stop_ids=stop,
                                   early_stopping=es, num_return=nb)
                _assert_same(mine, _hf_beams(hf, prompt, stop=sorted(stop), num_beams=nb, early_stopping=es), stop)


def test_min_new_tokens_equals_transformers(models, liked):
    hf, model = models
    for prompt, eos in zip(PROMPTS, liked):
        free = beam_search(model, prompt, num_beams=2, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos}, num_return=2)
        m = 6
        mine = beam_search(model, prompt, num_beams=2, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos},
                           num_return=2, min_new_tokens=m)
        assert all(len(b.token_ids) > m for b in mine)
        _assert_same(mine, _hf_beams(hf, prompt, stop={eos}, num_beams=2, min_new_tokens=m), {eos})
        if prompt == PROMPTS[2]:  # here a beam finishes within m tokens when allowed to
            assert any(len(b.token_ids) <= m for b in free)


# ------------------------------------------------------------ own properties
@torch.no_grad()
def test_score_is_the_length_penalised_log_probability_recomputed_without_a_cache(models, liked):
    _, model = models
    for prompt, eos in zip(PROMPTS, liked):
        for lp in (1.0, 0.0, 2.0):
            for b in beam_search(model, prompt, num_beams=3, max_new_tokens=N, vocab_size=VOCAB, stop_ids={eos},
                                 length_penalty=lp, early_stopping="never", num_return=3):
                ids = prompt + b.token_ids
                logprobs = model(torch.tensor([ids])).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
                total = logprobs.gather(1, torch.tensor(b.token_ids)[:, None]).sum().item()
                assert b.score == pytest.approx(total / len(b.token_ids) ** lp, abs=1e-4)
                assert b.finished == (b.token_ids[-1] == eos) and (b.finished or len(b.token_ids) == N)


def test_a_padded_vocabulary_is_never_searched(models):
    """Extra lm_head rows with large logits (a vocabulary padded for speed): with
    vocab_size they change nothing; searched, they would win."""
    hf, model = models
    d = model.lm_head.weight.shape[1]
    g = torch.Generator().manual_seed(3)
    padded = type(model)(model.config)
    padded.load_state_dict(model.state_dict())
    head, embed = torch.nn.Linear(d, VOCAB + 32, bias=False), torch.nn.Embedding(VOCAB + 32, d)
    with torch.no_grad():
        head.weight.copy_(torch.cat([model.lm_head.weight, torch.randn(32, d, generator=g) * 5]))
        embed.weight.copy_(torch.cat([model.model.embed_tokens.weight, torch.randn(32, d, generator=g)]))
    padded.lm_head, padded.model.embed_tokens = head, embed
    padded.eval()
    prompt = PROMPTS[0]
    mine = beam_search(padded, prompt, num_beams=3, max_new_tokens=8, vocab_size=VOCAB, num_return=3)
    _assert_same(mine, _hf_beams(hf, prompt, num_beams=3, max_new_tokens=8))
    unsliced = beam_search(padded, prompt, num_beams=3, max_new_tokens=8, vocab_size=VOCAB + 32, num_return=3)
    assert any(t >= VOCAB for b in unsliced for t in b.token_ids)


def test_beams_end_at_the_models_context(models):
    _, model = models
    context = model.config.max_seq_len
    prompt = (PROMPTS[2] * 20)[:context - 5]
    beams = beam_search(model, prompt, num_beams=2, max_new_tokens=N, vocab_size=VOCAB, num_return=2)
    assert [len(b.token_ids) for b in beams] == [5, 5]
    with pytest.raises(AcornError):
        beam_search(model, list(range(context)), num_beams=2, max_new_tokens=N, vocab_size=VOCAB)


def test_bad_arguments_are_refused(models):
    _, model = models
    for kw in (dict(num_beams=2, num_return=3), dict(num_beams=0), dict(num_beams=2, max_new_tokens=0),
               dict(num_beams=2, early_stopping="sometimes")):
        args = dict(max_new_tokens=4, vocab_size=VOCAB) | kw
        with pytest.raises(AcornError):
            beam_search(model, PROMPTS[0], **args)
