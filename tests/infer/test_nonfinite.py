"""Non-finite logits (NaN weights, an overflow) fail the request that meets them,
alone, with a clear error; the engine goes on, and leaves no NaN behind in its KV pool.

The model is the root conftest's tiny checkpoint with the embedding of one token
(POISON) set to NaN: a request that feeds it has NaN logits from then on, the
others are untouched. logit_bias +100 makes a request generate it (its next step
then fails mid-decode, with its NaN keys and values already in the pool); -100
keeps the healthy requests away from it."""

from __future__ import annotations

import pytest
import torch

from acorn.infer import Engine, GenerationError, SamplingParams

POISON = 299  # a merge of the 300-token BPE: in none of the prompts below
SHORT, OTHER, LONG = [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], list(range(20, 44))  # 24 tokens: two blocks of 16


def poisoned_engine(checkpoint) -> Engine:
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32")
    with torch.no_grad():
        engine.model.model.embed_tokens.weight[POISON] = float("nan")
    return engine


def healthy(**kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=8, temperature=0, logit_bias={POISON: -100}, ignore_eos=True, **kw)


def poisoned(**kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=6, logit_bias={POISON: 100}, ignore_eos=True, **kw)


def run(engine: Engine, requests: dict) -> dict:
    """Run {name: (prompt, params)} together through add_request/step; name -> Completion."""
    ids = {engine.add_request(p, params): name for name, (p, params) in requests.items()}
    done = {}
    while len(done) < len(ids):
        for out in engine.step():
            if out.completion is not None:
                done[ids[out.request_id]] = out.completion
    return done


def test_a_request_with_non_finite_logits_fails_alone_and_the_engine_goes_on(checkpoint):
    reference = poisoned_engine(checkpoint)
    alone = {name: run(reference, {name: (p, healthy())})[name].token_ids
             for name, p in (("other", OTHER), ("long", LONG))}

    # In one batch of a fresh engine: "bad" (added first, so it owns block 0) generates the poison
    # token and fails at the next step, while "other" and "long" decode beside it. "other" is the
    # shorter row of its decode group, so it reads padding: never another request's NaN.
    engine = poisoned_engine(checkpoint)
    out = run(engine, {"bad": (SHORT, poisoned(temperature=0)), "other": (OTHER, healthy()),
                       "long": (LONG, healthy())})
    assert out["bad"].finish_reason == "error" and out["bad"].token_ids == [POISON]
    assert out["other"].finish_reason == "length" and out["other"].token_ids == alone["other"]
    assert out["long"].token_ids == alone["long"]
    assert engine.stats()["blocks_in_use"] == 0
    # The failed request's blocks were wiped: a later request that reuses them reads no NaN.
    assert all(torch.isfinite(t).all() for t in (*engine.kv.keys, *engine.kv.values))

    # Prompted with the poison token: its first logits are NaN (a draw at temperature 0.8 used to raise
    # from torch.multinomial in the engine thread; an argmax picked id 0, a NUL byte).
    first = run(engine, {"bad": (SHORT + [POISON], poisoned(temperature=0.8, seed=1))})["bad"]
    assert first.finish_reason == "error" and "not finite" in first.error and first.token_ids == []
    assert run(engine, {"other": (OTHER, healthy())})["other"].token_ids == alone["other"]  # and it goes on


@pytest.mark.parametrize("paged", [True, False])
def test_generate_stream_and_beam_search_raise_one_clear_error(checkpoint, paged):
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32", paged=paged)
    with torch.no_grad():
        engine.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")  # the repro: every logit NaN
    for params in (SamplingParams(max_new_tokens=4, temperature=0.8, seed=0),
                   SamplingParams(max_new_tokens=4, temperature=0)):
        with pytest.raises(GenerationError, match="not finite"):
            engine.generate(SHORT, params)
        with pytest.raises(GenerationError, match="not finite"):
            list(engine.stream(SHORT, params))
    with pytest.raises(GenerationError, match="not finite"):
        engine.generate(SHORT, SamplingParams(max_new_tokens=4, num_beams=2))
