"""The serving engine: paged KV blocks, continuous batching, chunked prefill,
preemption, prefix caching, n samples from one prefill, aborts.

Every output is held to the plain path (one contiguous cache per row, tested
against transformers in test_engine.py), and the block accounting to zero
after every request has finished or been aborted.
"""

import random

import pytest
import torch

from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.infer.paged import BlockManager
from tests.model.test_transformer import VARIANTS, model_for

PROMPTS = ["The quick brown fox", "Once", "A small acorn grows into a tall", "The cat sat on",
           "Once upon a time there was a little model that learned to speak. The cat"]
GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def plain(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu", paged=False)


def _paged(checkpoint, **options) -> Engine:
    return Engine.from_pretrained(checkpoint[0], device="cpu", **options)


def _ids(completions):
    return [c.token_ids for c in completions]


# ------------------------------------------------------------ block manager
def test_block_manager_allocates_shares_and_releases():
    m = BlockManager(8, 4)
    a, b = [], []
    assert m.allocate(a, 9) and len(a) == 3 and m.num_used == 3
    assert m.allocate(a, 12) and len(a) == 3  # still fits the third block
    assert m.allocate(a, 13) and len(a) == 4
    assert not m.allocate(b, 4 * 5)  # 5 blocks wanted, 4 free: nothing taken
    assert b == [] and m.num_used == 4
    m.release(a)
    assert a == [] and m.num_used == 0 and m.num_free == 8


def test_prefix_blocks_are_matched_by_chained_hash_and_kept_after_release():
    m = BlockManager(8, 4)
    tokens = list(range(10))
    a, hashes = [], []
    m.allocate(a, 10)
    m.register(a, hashes, tokens, 10)
    assert len(hashes) == 2  # two full blocks; the third holds 2 tokens and is not registered
    cached, h = m.match_prefix(tokens[:8] + [99, 98, 97])
    assert cached == a[:2] and h == hashes
    # The same second block after a different first block is a different prefix.
    assert m.match_prefix([50, 1, 2, 3] + tokens[4:8] + [1])[0] == []
    # A prompt that is cached entirely keeps its last block to compute (its logits are needed).
    assert m.match_prefix(tokens[:8])[0] == a[:1]
    m.release(a)
    assert m.num_used == 0 and len(m.evictable) == 2  # cached, evictable
    b = []
    assert m.allocate(b, 12, m.match_prefix(tokens[:8] + [7, 7, 7, 7])[0])
    assert b[:2] == cached and m.num_used == 3 and not m.evictable
    m.release(b)


def test_evictable_blocks_are_reused_least_recently_used_first():
    m = BlockManager(4, 2)
    first, second = [], []
    m.allocate(first, 4)
    m.register(first, [], [1, 2, 3, 4], 4)
    m.allocate(second, 4)
    m.register(second, [], [5, 6, 7, 8], 4)
    first_blocks = list(first)
    m.release(first)  # released first: least recently used
    m.release(second)
    taken = []
    assert m.allocate(taken, 4)  # no free block left: two evictions
    assert sorted(taken) == sorted(first_blocks)
    assert m.match_prefix([1, 2, 3, 4, 0])[0] == []  # the older prefix is gone
    assert m.match_prefix([5, 6, 7, 8, 0])[0] != []  # the newer one survives


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    m = BlockManager(8, 4)
    parent = []
    m.allocate(parent, 10)
    child, fresh = m.fork(parent, 10)
    assert child[:2] == parent[:2] and fresh == child[2] and fresh not in parent
    assert m.ref[parent[0]] == 2 and m.ref[parent[2]] == 1
    m.release(child)
    m.release(parent)
    assert m.num_used == 0


# ------------------------------------------------------------ equal to the plain path
@pytest.mark.parametrize("options", [
    dict(),
    dict(block_size=4, max_num_batched_tokens=7),  # chunked prefill, prompts split across steps
    dict(block_size=3, max_num_seqs=2),  # at most two running at once: the rest queue
    dict(block_size=1, prefix_caching=False),
])
def test_paged_greedy_equals_the_plain_path(checkpoint, plain, options):
    expected = _ids(plain.generate(PROMPTS, max_new_tokens=24, **GREEDY))
    engine = _paged(checkpoint, **options)
    assert _ids(engine.generate(PROMPTS, max_new_tokens=24, **GREEDY)) == expected
    assert engine.stats()["blocks_in_use"] == 0


def test_greedy_is_the_same_alone_and_in_a_batch(checkpoint):
    """Batch invariance: what a request generates does not depend on its company."""
    engine = _paged(checkpoint, prefix_caching=False)
    alone = [engine.generate(p, max_new_tokens=30, **GREEDY)[0].token_ids for p in PROMPTS]
    together = _ids(engine.generate(PROMPTS * 3, max_new_tokens=30, **GREEDY))
    assert together == alone * 3


def test_seeded_sampling_equals_the_plain_path(checkpoint, plain):
    params = SamplingParams(max_new_tokens=20, temperature=1.3, top_k=50, seed=11, ignore_eos=True)
    assert _ids(_paged(checkpoint).generate(PROMPTS, params)) == _ids(plain.generate(PROMPTS, params))


def test_preemption_by_recomputation_keeps_the_outputs(checkpoint, plain):
    expected = _ids(plain.generate(PROMPTS, max_new_tokens=40, **GREEDY))
    per_token = Engine.from_pretrained(checkpoint[0], device="cpu").stats()["kv_bytes_per_token"]
    # Room for 96 tokens: not enough for the five requests at once (~190 tokens).
    engine = _paged(checkpoint, block_size=4, kv_cache_memory=96 * per_token)
    assert _ids(engine.generate(PROMPTS, max_new_tokens=40, **GREEDY)) == expected
    stats = engine.stats()
    assert stats["preemptions"] > 0 and stats["blocks_in_use"] == 0


# ------------------------------------------------------------ prefix caching
def test_a_shared_prefix_is_computed_once(checkpoint):
    engine = _paged(checkpoint, block_size=4)
    system = "Once upon a time there was a little model that learned to speak. " * 2
    first = engine.generate(system + "The cat", max_new_tokens=8, **GREEDY)[0]
    before = engine.stats()["computed_tokens"]
    second = engine.generate(system + "The fox", max_new_tokens=8, **GREEDY)[0]
    shared = len(engine.encode(system)) // 4 * 4
    assert first.cached_tokens == 0 and second.cached_tokens >= shared - 4 and second.cached_tokens > 0
    computed = engine.stats()["computed_tokens"] - before
    assert computed == second.prompt_tokens - second.cached_tokens + 7  # the rest of the prompt, then 7 decodes
    fresh = _paged(checkpoint, prefix_caching=False)
    assert second.token_ids == fresh.generate(system + "The fox", max_new_tokens=8, **GREEDY)[0].token_ids


def test_n_samples_share_one_prefill(checkpoint):
    engine = _paged(checkpoint, block_size=4)
    prompt = PROMPTS[4]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5, n=4, ignore_eos=True)
    samples = engine.generate(prompt, params)
    assert [c.index for c in samples] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in samples}) > 1
    # One prefill of the prompt, then 9 decode steps per sample (the last sampled token is never fed).
    assert engine.stats()["computed_tokens"] == len(engine.encode(prompt)) + 4 * 9
    # Sample j draws with seed + j: the same as a single request with that seed.
    for j, c in enumerate(samples):
        alone = _paged(checkpoint).generate(prompt, params, n=1, seed=5 + j)[0]
        assert c.token_ids == alone.token_ids


# ------------------------------------------------------------ logprobs
@torch.no_grad()
def test_logprobs_are_the_models_log_probabilities(checkpoint):
    engine = _paged(checkpoint)
    c = engine.generate(PROMPTS[0], max_new_tokens=6, logprobs=3, temperature=0.8, seed=1, ignore_eos=True)[0]
    ids = engine.encode(PROMPTS[0]) + c.token_ids
    vocab = engine.tokenizer.vocab_size
    full = engine.model(torch.tensor([ids])).logits[0, :, :vocab].float().log_softmax(-1)
    start = c.prompt_tokens - 1
    for i, entry in enumerate(c.logprobs):
        row = full[start + i]
        assert entry["token_id"] == c.token_ids[i]
        assert entry["logprob"] == pytest.approx(float(row[c.token_ids[i]]), abs=1e-4)
        top = torch.topk(row, 3)
        assert [t for t, _ in entry["top_logprobs"]] == top.indices.tolist()


# ------------------------------------------------------------ the step loop, aborts, accounting
def test_streaming_yields_the_same_text_and_closing_early_frees_the_blocks(checkpoint):
    engine = _paged(checkpoint)
    full = engine.generate(PROMPTS[2], max_new_tokens=20, **GREEDY)[0]
    assert "".join(engine.stream(PROMPTS[2], max_new_tokens=20, **GREEDY)) == full.text
    it = engine.stream(PROMPTS[2], max_new_tokens=20, **GREEDY)
    next(it)
    assert engine.stats()["blocks_in_use"] > 0
    it.close()
    assert engine.stats()["blocks_in_use"] == 0 and not engine.has_unfinished()


def test_abort_frees_blocks_at_once(checkpoint):
    engine = _paged(checkpoint, block_size=2)
    ids = [engine.add_request(p, max_new_tokens=50, **GREEDY) for p in PROMPTS]
    for _ in range(5):
        engine.step()
    used = engine.stats()["blocks_in_use"]
    assert engine.abort(ids[0]) and not engine.abort(ids[0])
    assert engine.stats()["blocks_in_use"] < used
    for r in ids[1:]:
        engine.abort(r)
    assert engine.stats()["blocks_in_use"] == 0 and not engine.has_unfinished()


def test_no_block_leaks_after_1000_random_requests_with_random_aborts(checkpoint):
    rng = random.Random(0)
    per_token = Engine.from_pretrained(checkpoint[0], device="cpu").stats()["kv_bytes_per_token"]
    engine = _paged(checkpoint, block_size=4, kv_cache_memory=200 * per_token, max_num_seqs=16,
                    max_num_batched_tokens=48)
    words = "the quick brown fox jumps over a lazy dog once upon time".split()
    live, finished, aborted = {}, 0, 0  # live: request id -> its samples not yet finished
    for i in range(1000):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        params = SamplingParams(max_new_tokens=rng.randint(1, 6), temperature=rng.choice([0, 1.0]),
                                n=rng.choice([1, 1, 1, 2]), seed=i)
        live[engine.add_request(prompt, params)] = params.n
        if rng.random() < 0.5:
            for out in engine.step():
                if out.finished and out.request_id in live:
                    live[out.request_id] -= 1
                    if not live[out.request_id]:
                        del live[out.request_id]
                        finished += 1
        if live and rng.random() < 0.2:
            victim = rng.choice(sorted(live))
            del live[victim]
            aborted += engine.abort(victim)
    while engine.has_unfinished():
        engine.step()
    stats = engine.stats()
    assert aborted > 100 and finished > 100 and stats["preemptions"] > 0
    assert stats["blocks_in_use"] == 0 and engine.blocks.num_free == engine.num_blocks
    assert sum(engine.blocks.ref) == 0 and not engine._groups


def test_bad_requests_are_refused_with_one_clear_line(checkpoint):
    engine = _paged(checkpoint, block_size=4, kv_cache_memory=8 * 256)
    with pytest.raises(AcornError, match="KV cache holds"):
        engine.add_request("word " * 40)
    with pytest.raises(AcornError, match="outside the vocabulary"):
        engine.add_request("hi", logit_bias={10**6: 1.0})
    engine.add_request("hi", request_id="a")
    with pytest.raises(AcornError, match="already in use"):
        engine.add_request("hi", request_id="a")


# ------------------------------------------------------------ every architecture
@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-tied-biases", "mistral-window", "qwen2-window", "qwen3",
                                  "mixtral", "llama-yarn-rope"])
def test_paged_greedy_equals_transformers_for_each_family(name, tmp_path, tok):
    """Learned positions, biases, sliding windows, QK-norm, experts and RoPE
    scalings all go through the paged forward, not only Llama's layout."""
    from acorn.model.checkpoint import load
    from tests.model.test_checkpoint import NEW, PAD, _batch, _hf_greedy, _hf_model

    hf, path = _hf_model(name, tmp_path)
    ids, mask = _batch()
    expected = _hf_greedy(hf, ids, mask, NEW).tolist()
    engine = Engine(load(path, dtype="float32", device="cpu"), tok, block_size=4, max_num_batched_tokens=10)
    prompts = [ids[0].tolist(), ids[1, PAD:].tolist()]
    assert _ids(engine.generate(prompts, max_new_tokens=NEW, **GREEDY)) == expected


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "alibi"])
@torch.no_grad()
def test_paged_forward_logits_equal_the_models_forward(variant):
    """The paged step is Transformer.forward's own pieces around another
    attention: every logit row equals the plain forward's, through prefill
    chunks, a chunk after a cached prefix, and decode rows of unequal lengths
    grouped together (learned and sinusoidal positions, RoPE, QK-norm,
    softcap, sliding window, experts)."""
    from acorn.infer.paged import PagedKV, StepInput, paged_forward

    model = model_for(variant)
    cfg = model.config
    a, b = torch.randint(0, cfg.vocab_size, (2, 13)).tolist()
    tables = {"a": [0, 1, 2, 3], "b": [6, 4, 5, 7]}
    seqs = {"a": a, "b": b}
    kv = PagedKV(cfg, num_blocks=8, block_size=4, dtype=torch.float32, device="cpu")
    steps = [[("a", 0, 6), ("b", 0, 3)],  # two prefills
             [("a", 6, 7), ("b", 3, 9)],  # a decode row, a chunk after cached tokens
             [("a", 7, 8), ("b", 9, 10)],  # two decode rows of different lengths, one group
             [("a", 8, 13), ("b", 10, 11)]]  # a chunk longer than the window
    got = {"a": [], "b": []}
    for pieces in steps:
        inputs = [(tables[r], i, seqs[r][i:j], j - i) for r, i, j in pieces]  # every row wants logits
        step = StepInput.build(inputs, 4, cfg.sliding_window, "cpu")
        logits = paged_forward(model, step, kv)
        row = 0
        for r, i, j in pieces:
            got[r].append(logits[row:row + j - i])
            row += j - i
    for r in seqs:
        want = model(torch.tensor([seqs[r][:len(torch.cat(got[r]))]])).logits[0]
        torch.testing.assert_close(torch.cat(got[r]), want, atol=1e-5, rtol=0)


def test_alibi_is_refused_by_the_paged_forward():
    from acorn.infer.paged import PagedKV, StepInput, paged_forward

    model = model_for("alibi")
    kv = PagedKV(model.config, num_blocks=2, block_size=4, dtype=torch.float32, device="cpu")
    with pytest.raises(AcornError, match="paged=False"):
        paged_forward(model, StepInput.build([([0], 0, [1, 2], 1)], 4, None, "cpu"), kv)


# ------------------------------------------------------------ int8 KV cache
def test_int8_kv_codes_are_within_half_a_step():
    from acorn.infer.paged import quantize_int8

    x = torch.randn(50, 4, 16) * torch.logspace(-3, 2, 50)[:, None, None]
    codes, scale = quantize_int8(x)
    assert codes.dtype == torch.int8 and scale.shape == (50, 4)
    err = (codes.float() * scale[..., None] - x).abs()
    assert bool((err <= scale[..., None] / 2 + 1e-6 * x.abs()).all())


def test_int8_kv_cache_generates_like_the_full_precision_one(checkpoint, plain):
    engine = _paged(checkpoint, kv_cache_dtype="int8", block_size=4)
    full = engine.stats()["kv_bytes_per_token"], plain.stats()["kv_bytes_per_token"]
    cfg = plain.model.config
    assert full == (2 * cfg.n_layer * cfg.n_kv_head * (cfg.head_dim + 4), 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4)
    ours = _ids(engine.generate(PROMPTS, max_new_tokens=12, **GREEDY))
    ref = _ids(plain.generate(PROMPTS, max_new_tokens=12, **GREEDY))
    # Quantization noise may flip a near-tie late in a sequence, never the start of all of them.
    assert sum(a[:4] == b[:4] for a, b in zip(ours, ref)) >= len(PROMPTS) - 1
    agree = sum(x == y for a, b in zip(ours, ref) for x, y in zip(a, b)) / sum(map(len, ref))
    assert agree > 0.7
    assert engine.stats()["blocks_in_use"] == 0
    with pytest.raises(AcornError, match="kv_cache_dtype"):
        _paged(checkpoint, kv_cache_dtype="int4")
