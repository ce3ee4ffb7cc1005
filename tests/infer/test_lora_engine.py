"""Many LoRA adapters on one base in the engine (S-LoRA / Punica's idea).

The oracle is the model with one adapter: set active (the layer's own forward) or
merged into the weights (lora.merge_and_unload). A batch mixing adapters must give
every row exactly what its adapter alone gives, and the prefix cache must never
hand one adapter's keys and values to another.
"""

from __future__ import annotations

import copy

import pytest
import torch

import acorn
from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.infer.paged import BlockManager, PagedKV, StepInput, paged_forward
from acorn.model import lora

NAMES = ("a", "b", "c")
TARGETS = "all-linear,lm_head"  # the head too: it sees only the logit rows of a step


@torch.no_grad()
def _randomize(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    for layer in lora.lora_layers(model).values():
        if name in layer.lora_B:
            b = layer.lora_B[name].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def adapters(checkpoint, tmp_path_factory):
    """Three adapters of different ranks trained on nothing (random non-zero B), saved in PEFT's layout."""
    path, _ = checkpoint
    out = {}
    for i, name in enumerate(NAMES):
        m = acorn.load(path, device="cpu")
        lora.add_lora(m, r=2 + i, alpha=8, targets=TARGETS)
        _randomize(m, "default", seed=10 + i)
        out[name] = lora.save_adapter(m, tmp_path_factory.mktemp(f"adapter-{name}"), base=path)
    return out


def _multi(path, adapters):
    model = acorn.load(path, device="cpu")
    for name, directory in adapters.items():
        lora.load_adapter(model, directory, name=name)
    lora.set_active(model, None)
    return model.eval()


@torch.no_grad()
def test_a_mixed_flattened_step_gives_each_row_its_own_adapters_logits(checkpoint, adapters):
    """Prefill pieces of four requests (three adapters and the base) in one step, then their
    decode rows: every logit row equals the model's forward with that adapter alone."""
    path, _ = checkpoint
    model = _multi(path, adapters)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, cfg.vocab_size, (7 + r,), generator=g).tolist() for r in range(4)]
    which = ["b", None, "a", "c"]
    tables = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    kv = PagedKV(cfg, num_blocks=12, block_size=4, dtype=torch.float32, device="cpu")
    names = [None, *NAMES]
    got = [[] for _ in prompts]
    for lo, hi in ((0, -1), (-1, None)):  # the prompts less their last token, then it as a decode row
        pieces = [(t, lo % len(p), p[lo:hi], len(p[lo:hi])) for t, p in zip(tables, prompts)]
        index = torch.tensor([names.index(w) for w, p in zip(which, prompts) for _ in p[lo:hi]])
        logits = paged_forward(model, StepInput.build(pieces, 4, None, "cpu"), kv, (index, names))
        row = 0
        for r, p in enumerate(prompts):
            got[r].append(logits[row:row + len(p[lo:hi])])
            row += len(p[lo:hi])
    for r, p in enumerate(prompts):
        lora.set_active(model, which[r])
        want = model(torch.tensor([p])).logits[0]
        # float32 round-off only (1.06e-5 seen when other tests ran first in the same worker); adapters
        # differ by > 1e-2 (below), so 1e-4 still tells one adapter's rows from another's
        torch.testing.assert_close(torch.cat(got[r]), want, atol=1e-4, rtol=0)
    # ... and the rows really differ by adapter (the property above could not hold by accident).
    lora.set_active(model, None)
    base = model(torch.tensor([prompts[0]])).logits[0]
    assert (torch.cat(got[0]) - base).abs().max() > 1e-2


@torch.no_grad()
def test_one_adapter_per_row_of_a_padded_batch_equals_each_alone(checkpoint, adapters):
    """The plain path's form: a (B, 1) index broadcast over each row's tokens."""
    path, _ = checkpoint
    model = _multi(path, adapters)
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with lora.use_adapters(model, torch.tensor([[2], [0], [1]]), [None, "a", "b"]):
        mixed = model(ids).logits
    for row, name in enumerate(["b", None, "a"]):
        lora.set_active(model, name)
        torch.testing.assert_close(mixed[row], model(ids[row:row + 1]).logits[0], atol=1e-4, rtol=0)  # as above


@pytest.mark.parametrize("paged", [True, False])
def test_greedy_output_of_each_adapter_in_one_mixed_batch_equals_the_merged_models(checkpoint, tok, adapters, paged):
    """Three adapters and the base, two prompts each, all in one batch (generate() adds every
    request before the first step): each output equals its adapter's merged model's."""
    path, _ = checkpoint
    prompts = ["The quick brown", "A small acorn"]
    greedy = dict(max_tokens=12, temperature=0, ignore_eos=True)
    want = {}
    for name in [None, *NAMES]:
        model = acorn.load(path, device="cpu", adapter=adapters[name] if name else None)
        merged = lora.merge_and_unload(copy.deepcopy(model)) if name else model
        want[name] = [c.token_ids for c in Engine(merged, tok).generate(prompts, **greedy)]
    engine = Engine.from_pretrained(path, device="cpu", paged=paged, lora_adapters=adapters)
    assert engine.adapters == list(NAMES)
    jobs = [(p, name) for name in [None, *NAMES] for p in prompts]
    outs = engine.generate([p for p, _ in jobs], [SamplingParams(lora=name, **greedy) for _, name in jobs])
    got = {}
    for (_, name), c in zip(jobs, outs):
        got.setdefault(name, []).append(c.token_ids)
    assert got == want
    assert len({str(v) for v in want.values()}) == 4  # four different outputs: the adapters matter


def test_beam_search_and_stream_apply_the_requested_adapter(checkpoint, tok, adapters):
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cpu", lora_adapters=adapters)
    merged = lora.merge_and_unload(acorn.load(path, device="cpu", adapter=adapters["b"]))
    alone = Engine(merged, tok)
    beam = dict(max_tokens=8, num_beams=3, n=2)
    assert [c.token_ids for c in engine.generate("The cat", lora="b", **beam)] == \
        [c.token_ids for c in alone.generate("The cat", **beam)]
    greedy = dict(max_tokens=10, temperature=0, ignore_eos=True)
    assert "".join(engine.stream("The cat", lora="b", **greedy)) == alone.generate("The cat", **greedy)[0].text


def test_the_prefix_cache_never_shares_blocks_across_adapters(checkpoint, tok, adapters):
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cpu", block_size=4, lora_adapters=adapters)
    prompt = "Once upon a time there was a little model that learned to speak."
    run = lambda name: engine.generate(prompt, max_tokens=2, temperature=0, lora=name)[0].cached_tokens  # noqa: E731
    assert run("a") == 0
    assert run("b") == 0  # the same tokens under another adapter: nothing cached
    assert run(None) == 0  # nor for the base
    assert run("a") > 0 and run("b") > 0  # the same adapter again: its own blocks


def test_a_salt_seeds_the_block_hash_chain():
    m = BlockManager(8, 4)
    tokens = list(range(12))
    plain, a, b = m.prefix_hashes(tokens), m.prefix_hashes(tokens, "a"), m.prefix_hashes(tokens, "b")
    assert len({*plain, *a, *b}) == 9  # no block hash in common
    table = [0, 1, 2]
    m.register(table, hashes := [], tokens, 12, "a")
    assert hashes == a
    assert m.match_prefix(tokens + [1], "a")[0] == table and m.match_prefix(tokens + [1], "b")[0] == []


def test_unknown_adapters_and_bad_directories_are_one_line_errors(checkpoint, tok, adapters, tmp_path):
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cpu", lora_adapters=adapters)
    with pytest.raises(AcornError, match="no LoRA adapter named 'd'; this engine has a, b, c"):
        engine.generate("The", lora="d")
    with pytest.raises(AcornError, match="no LoRA adapter named 'd'"):
        engine.add_request("The", lora="d")
    with pytest.raises(AcornError, match="lora must be an adapter's name"):
        SamplingParams(lora=3)
    with pytest.raises(AcornError, match="no such adapter directory"):
        Engine.from_pretrained(path, device="cpu", lora_adapters={"a": adapters["a"], "x": tmp_path / "missing"})
    with pytest.raises(AcornError, match="no LoRA adapter named 'a'; this engine has none"):
        Engine(acorn.load(path, device="cpu"), tok).generate("The", lora="a")


def test_the_stacked_inference_path_equals_the_segment_path_and_sees_weight_updates(checkpoint, adapters):
    """Without autograd a mixed batch runs every adapter in one stacked matmul pair
    (LoRALinear.stacked); with it, one pair per adapter on its slice. Both must agree, and
    the stack must follow an adapter's weights when they change in place. (1e-4: bmm and mm
    round float32 sums in different orders; an adapter's effect is > 1e-3.)"""
    path, _ = checkpoint
    model = _multi(path, adapters)
    ids = torch.randint(0, model.config.vocab_size, (4, 6), generator=torch.Generator().manual_seed(2))
    index, names = torch.tensor([[1], [3], [0], [2]]), [None, "a", "b", "c"]

    def mixed(grad: bool):
        with torch.set_grad_enabled(grad), lora.use_adapters(model, index, names):
            return model(ids).logits.detach()

    torch.testing.assert_close(mixed(False), mixed(True), atol=1e-4, rtol=0)
    before = mixed(False)
    _randomize(model, "c", seed=99)  # in place: the stack's key must notice
    after, want = mixed(False), mixed(True)
    torch.testing.assert_close(after, want, atol=1e-4, rtol=0)
    assert (after[1] - before[1]).abs().max() > 1e-3  # row 1 runs "c": it changed
    torch.testing.assert_close(after[[0, 2, 3]], before[[0, 2, 3]], atol=1e-4, rtol=0)  # the others did not


def test_padding_the_segments_is_refused_when_it_would_more_than_double_the_rows():
    names = [None, "a", "b", "c"]
    even = lora.AdapterRouting(torch.tensor([[1, 1, 2, 2, 3, 3, 0, 0]]), names)
    gather, scatter, length = even.padded(torch.Size([1, 8]), "cpu")
    assert length == 2 and gather[scatter].tolist() == list(range(8))  # every token comes back to its place
    uneven = lora.AdapterRouting(torch.tensor([[1] * 17 + [2, 3, 0]]), names)  # 4 x 17 rows for 20 tokens
    assert uneven.padded(torch.Size([1, 20]), "cpu") is None
