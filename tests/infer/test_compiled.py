"""The compiled batch-1 decode step (Engine(compile_decode=True), acorn.infer.compiled).

The static-shape step (the context padded to a bucket and masked) gives the paged step's
logits for every model family, reading nothing outside the request's own blocks; the
engine with it gives the same greedy tokens as without it and as transformers, falls back
to the eager step while a second request runs, and leaks no blocks. Most tests run the
static-shape function eagerly (CompiledDecode(compile=False): the padding and masking
without the compiler's seconds); the last one compiles it, and recompiles after the
weights change.
"""

import copy

import pytest
import torch

from acorn.infer import Engine, SamplingParams
from acorn.infer.compiled import CompiledDecode, capacity
from acorn.infer.paged import PagedKV, StepInput, paged_forward
from acorn.model import packed
from tests.infer.test_engine import _hf_greedy
from tests.model.test_transformer import VARIANTS, model_for

PROMPTS = ["The quick brown fox", "Once", "A small acorn grows into a tall"]
GREEDY = dict(temperature=0, ignore_eos=True, max_new_tokens=12)


def test_capacity_buckets_double_and_stay_within_the_context():
    assert [capacity(n, 16, 1024) for n in (1, 256, 257, 513, 1024)] == [256, 256, 512, 1024, 1024]
    assert capacity(100, 16, 128) == 128  # a short model's context is its only bucket
    assert capacity(100, 48, 1024) == 288  # whole blocks


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "alibi"])
@torch.no_grad()
def test_the_static_step_gives_the_paged_steps_logits(variant):
    """Decode steps through the padded context (every block past the table is the
    request's first block again, masked) against the plain paged step, with NaN in every
    block the request does not own: a padded slot that read another request's block
    would poison the row (a masked NaN still gives NaN)."""
    model = model_for(variant)
    cfg = model.config
    kv = PagedKV(cfg, num_blocks=8, block_size=4, dtype=torch.float32, device="cpu")
    table = [5, 2, 7]
    for t in (*kv.keys, *kv.values):
        t.fill_(float("nan"))
        for b in table:
            t[b * 4:(b + 1) * 4] = 0
    ids = torch.randint(0, cfg.vocab_size, (12,)).tolist()
    paged_forward(model, StepInput.build([(table, 0, ids[:6], 1)], 4, cfg.sliding_window, "cpu"), kv)
    static = CompiledDecode(model, kv, compile=False)
    for i in range(6, 12):
        got, argmax = static(ids[i], i, table)
        assert argmax.tolist() == [int(got[0].argmax()), 1]
        blocks = capacity(i + 1, 4, cfg.max_seq_len) // 4
        assert blocks > 3 and static._table.tolist() == table[:i // 4 + 1] + [5] * (blocks - i // 4 - 1)
        want = paged_forward(model, StepInput.build([(table, i, [ids[i]], 1)], 4, cfg.sliding_window, "cpu"), kv)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _static_engine(checkpoint, **options) -> Engine:
    """An engine whose batch-1 decode steps run the static-shape function uncompiled."""
    engine = Engine.from_pretrained(checkpoint[0], device="cpu", compile_decode=True, **options)
    engine.compiled = CompiledDecode(engine.model, engine.kv, compile=False)
    return engine


@pytest.fixture(scope="module")
def eager(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


def test_the_static_step_keeps_the_greedy_tokens_and_leaks_no_blocks(checkpoint, eager):
    engine = _static_engine(checkpoint)
    for prompt in PROMPTS:  # one at a time: every decode step is a static one
        got = engine.generate(prompt, **GREEDY)[0].token_ids
        assert got == eager.generate(prompt, **GREEDY)[0].token_ids
        assert got == _hf_greedy(checkpoint[1], engine.encode(prompt), GREEDY["max_new_tokens"])
    assert engine.compiled.steps == len(PROMPTS) * (GREEDY["max_new_tokens"] - 1)
    assert engine.blocks.num_used == 0



def test_non_finite_logits_in_a_static_step_fail_the_request(checkpoint, eager):
    """The graph's greedy token comes with the row's finiteness: a decode step whose logits
    are NaN (the embedding of the token it feeds poisoned) fails the request, as the eager
    step does, instead of taking the argmax of a NaN row."""
    prompt = [5, 6, 7, 8, 9]
    first = eager.generate(prompt, **{**GREEDY, "max_new_tokens": 1})[0].token_ids[0]
    assert first not in prompt  # the prefill stays finite; the first static step feeds the NaN
    engine = _static_engine(checkpoint, dtype="float32")
    with torch.no_grad():
        engine.model.model.embed_tokens.weight[first] = float("nan")
    engine.add_request(prompt, SamplingParams(**GREEDY))
    done = []
    while engine.has_unfinished():
        done += [out.completion for out in engine.step() if out.completion is not None]
    assert done[0].finish_reason == "error" and done[0].token_ids == [first]
    assert engine.compiled.steps == 1 and engine.blocks.num_used == 0

def test_a_second_request_runs_eagerly_beside_the_first_and_changes_no_output(checkpoint, eager):
    engine = _static_engine(checkpoint)
    params = SamplingParams(**{**GREEDY, "max_new_tokens": 20})
    first = engine.add_request(PROMPTS[0], params)
    done = {}

    def run(steps=None):
        while engine.has_unfinished() and steps != 0:
            for out in engine.step():
                if out.completion is not None:
                    done[out.request_id] = out.completion.token_ids
            steps = None if steps is None else steps - 1

    run(5)  # a prefill and four static steps
    assert engine.compiled.steps == 4
    second = engine.add_request(PROMPTS[2], SamplingParams(**{**GREEDY, "max_new_tokens": 6}))
    run(3)  # two requests: the eager step, whatever the first one is doing
    assert engine.compiled.steps == 4
    run()  # the second finished first: the first goes on alone, static again
    assert 4 < engine.compiled.steps < 19
    assert done[first] == eager.generate(PROMPTS[0], params)[0].token_ids
    assert done[second] == eager.generate(PROMPTS[2], **{**GREEDY, "max_new_tokens": 6})[0].token_ids
    assert engine.blocks.num_used == 0


def test_compiled_decode_keeps_the_tokens_and_follows_a_training_step(checkpoint, eager):
    """Compiled for real (a few seconds on the tiny model): the same greedy tokens as the
    eager engine and transformers; after an in-place optimizer step the old graph (its
    weights frozen into it) is dropped and the tokens are the new weights'."""
    engine = Engine.from_pretrained(checkpoint[0], device="cpu", compile_decode=True)
    prompt = PROMPTS[0]
    before = engine.generate(prompt, **GREEDY)[0].token_ids
    assert before == eager.generate(prompt, **GREEDY)[0].token_ids
    assert before == _hf_greedy(checkpoint[1], engine.encode(prompt), GREEDY["max_new_tokens"])
    stats = engine.stats()
    assert stats["compiled_graphs"] == 1 and stats["compile_seconds"] > 0 and engine.compiled.failed is None
    assert engine.compiled.steps == GREEDY["max_new_tokens"] - 1 and stats["blocks_in_use"] == 0
    # after its first call the graph runs without dynamo's frame hook (compiled._direct)
    assert all(graph.direct is not None for graph in engine.compiled.graphs.values())

    model = engine.model
    with torch.no_grad():  # in place: the same tensors, their versions moved on; layers that
        for layer in model.model.layers:  # float32 runs unfused, so no pack is rebuilt
            layer.self_attn.o_proj.weight.mul_(-2.0)
            layer.mlp.down_proj.weight.mul_(1.5)
    engine.reset_prefix_cache()
    after = engine.generate(prompt, **GREEDY)[0].token_ids
    twin = Engine(packed.unpack(copy.deepcopy(model)), engine.tokenizer, pack_weights=False)
    assert after == twin.generate(prompt, **GREEDY)[0].token_ids
    assert after != before
    assert engine.compiled.steps > GREEDY["max_new_tokens"]  # the new weights ran compiled too


def test_the_cli_flag_reaches_the_engine(checkpoint, monkeypatch, capsys):
    from acorn.cli import build_parser, main

    seen = []
    real = Engine.from_pretrained.__func__

    def spy(cls, path, **options):  # records the options, then builds an eager engine (no compile)
        seen.append((options.pop("compile_decode", None), options.get("int8_head")))
        return real(cls, path, **options)

    monkeypatch.setattr(Engine, "from_pretrained", classmethod(spy))
    ckpt = str(checkpoint[0])
    main(["generate", ckpt, "--prompt", "The", "--max-new-tokens", "2", "--device", "cpu", "--compile-decode"])
    main(["generate", ckpt, "--prompt", "The", "--max-new-tokens", "2", "--device", "cpu", "--int8-head"])
    assert seen == [(True, False), (False, True)]
    args = build_parser().parse_args(["serve", ckpt, "--compile-decode", "--int8-head"])
    assert args.compile_decode and args.int8_head


def test_the_static_step_over_an_int8_kv_cache_keeps_the_tokens(checkpoint):
    engine = _static_engine(checkpoint, kv_cache_dtype="int8")
    eager = Engine.from_pretrained(checkpoint[0], device="cpu", kv_cache_dtype="int8")
    for prompt in PROMPTS[:2]:
        assert engine.generate(prompt, **GREEDY)[0].token_ids == eager.generate(prompt, **GREEDY)[0].token_ids
    assert engine.compiled.steps == 2 * (GREEDY["max_new_tokens"] - 1)


def test_a_model_that_does_not_compile_warns_once_and_decodes_eagerly(tok):
    """fullgraph cannot take an MoE layer's data-dependent routing: the first static step
    warns and runs eagerly, and the engine does not try again."""
    import warnings

    model = model_for("moe")
    prompt = [1, 5, 9, 13]
    want = Engine(copy.deepcopy(model), tok).generate(prompt, **GREEDY)[0].token_ids
    engine = Engine(model, tok, compile_decode=True)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        assert engine.generate(prompt, **GREEDY)[0].token_ids == want
    assert engine.compiled.failed and engine.compiled.steps == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert engine.generate(prompt, **GREEDY)[0].token_ids == want
    assert engine.blocks.num_used == 0
