"""The continuous-batching scheduler (acorn.infer.scheduler) on its own: a
real BlockManager, requests with made-up token ids, and no model. The step
below does the engine's part: every scheduled piece is computed, and a
request whose tokens are all in the pool samples one more token.

The tests follow the numbered policy of the scheduler's docstring: 1 decodes,
2 prefill chunks, 3 admission, then preemption, aborts and the budgets."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from acorn.infer.paged import BlockManager
from acorn.infer.scheduler import FINISHED, RUNNING, WAITING, Request, Scheduler

SAMPLED = 7  # the stand-in model's every token


@dataclass
class Budget:
    """The engine's per-request state, reduced to when it stops."""

    max_new: int


_fresh = itertools.count(1000)  # token ids no other request has: prompts share no prefix unless told


def add(sched: Scheduler, name: str, prompt_len: int, max_new: int = 100) -> Request:
    req = Request(name, [next(_fresh) for _ in range(prompt_len)], Budget(max_new))
    sched.add(req)
    return req


def scheduler(num_blocks: int, block_size: int = 4, *, prefix_caching: bool = True, **budgets) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size, prefix_caching=prefix_caching), **budgets)


def step(sched: Scheduler) -> list[tuple[str, int]]:
    """One engine step with a stand-in model; returns the (request id, tokens) pieces."""
    pieces = sched.schedule()
    for req, n in pieces:
        sched.computed(req, n)
        if req.remaining == 0:  # all its tokens are in the pool: the model's logits give the next one
            req.output.append(SAMPLED)
            if len(req.output) == req.state.max_new:
                sched.finish(req)
    return [(req.request_id, n) for req, n in pieces]


def names(requests) -> list[str]:
    return [r.request_id for r in requests]


# ------------------------------------------------------------ 1 + 2: decodes, then prefill chunks
def test_decodes_go_first_and_a_long_prompt_is_prefilled_around_them():
    """A 50-token prompt does not stall a running decode: every step the decode
    gets its one token first (1) and the prompt gets what is left of the
    budget (2, 3); the request behind it waits until a step has room."""
    sched = scheduler(64, max_num_batched_tokens=16)
    add(sched, "a", 5)
    assert step(sched) == [("a", 5)]
    add(sched, "b", 50)
    add(sched, "c", 3)
    assert step(sched) == [("a", 1), ("b", 15)]  # 1: a decodes; 3: b joins with the other 15
    assert step(sched) == [("a", 1), ("b", 15)]  # 1, then 2: b's next chunk; c waits, no budget left
    assert step(sched) == [("a", 1), ("b", 15)]
    assert step(sched) == [("a", 1), ("b", 5), ("c", 3)]  # b's last chunk leaves room: c joins
    assert step(sched) == [("a", 1), ("b", 1), ("c", 1)]  # everyone decodes


def test_a_prompt_longer_than_the_budget_is_prefilled_in_budget_sized_chunks():
    sched = scheduler(64, max_num_batched_tokens=16)
    r = add(sched, "r", 50, max_new=2)
    for chunk, computed in [(16, 16), (16, 32), (16, 48), (2, 50)]:
        assert step(sched) == [("r", chunk)]
        # Blocks are taken as the chunks need them, not for the whole prompt at once.
        assert r.num_computed == computed and len(r.table) == sched.blocks.blocks_for(computed)
    assert r.output == [SAMPLED]  # the last chunk gave the first token
    assert step(sched) == [("r", 1)]
    assert r.status == FINISHED and r.output == [SAMPLED, SAMPLED] and sched.blocks.num_used == 0


# ------------------------------------------------------------ 3: admission
def test_admission_is_first_come_first_served_and_stops_when_blocks_run_out():
    sched = scheduler(5, prefix_caching=False, max_num_batched_tokens=100)
    a, b, c, d = add(sched, "a", 8), add(sched, "b", 8), add(sched, "c", 8), add(sched, "d", 2)
    # Two blocks each for a and b; c needs two of the one left. d would fit in
    # it, but does not overtake c: first come, first served.
    assert step(sched) == [("a", 8), ("b", 8)]
    assert names(sched.running) == ["a", "b"] and names(sched.waiting) == ["c", "d"]
    assert c.table == [] and d.table == [] and sched.blocks.num_used == 4


def test_max_num_seqs_caps_the_running_batch():
    sched = scheduler(64, max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(4):
        add(sched, f"r{i}", 3, max_new=2)
    assert step(sched) == [("r0", 3), ("r1", 3)]  # budget and blocks for all four; room for two
    assert step(sched) == [("r0", 1), ("r1", 1)]  # both finish here
    assert step(sched) == [("r2", 3), ("r3", 3)]


# ------------------------------------------------------------ preemption by recomputation
def test_the_newest_request_is_preempted_and_later_recomputed_with_its_output():
    sched = scheduler(4, prefix_caching=False, max_num_batched_tokens=100)
    a, b = add(sched, "a", 8, max_new=4), add(sched, "b", 8, max_new=4)
    assert step(sched) == [("a", 8), ("b", 8)]  # all four blocks taken
    add(sched, "c", 2)
    # a's next token needs a third block: b, the newest, gives way. No one is
    # admitted in a step that had to preempt.
    assert step(sched) == [("a", 1)]
    assert b.status == WAITING and b.table == [] and b.num_computed == 0
    assert b.preemptions == 1 and sched.preemptions == 1
    assert names(sched.waiting) == ["b", "c"]  # back to the front of the queue
    assert b.output == [SAMPLED]  # what it generated is kept, to be recomputed, not sampled again
    assert len(a.table) == 3 and sched.blocks.num_used == 3
    assert step(sched) == [("a", 1)]  # b needs 3 blocks, 1 is free: it waits, and c behind it
    assert step(sched) == [("a", 1)]  # a's last token: it finishes and frees its blocks
    assert step(sched) == [("b", 9), ("c", 2)]  # b recomputes prompt + output; c fits beside it
    assert b.status == RUNNING and b.num_computed == 9 and b.output == [SAMPLED, SAMPLED]  # decoding again


def test_no_request_is_admitted_in_a_step_that_had_to_preempt():
    """Memory is short in such a step: even the victim, whose released blocks
    would hold its next chunk, waits for the next step."""
    sched = scheduler(5, prefix_caching=False, max_num_batched_tokens=6)
    a = add(sched, "a", 4)
    assert step(sched) == [("a", 4)]
    b = add(sched, "b", 8)
    assert step(sched) == [("a", 1), ("b", 5)]
    assert step(sched) == [("a", 1), ("b", 3)]
    add(sched, "c", 8)
    assert step(sched) == [("a", 1), ("b", 1)]  # b took the last free block; c waits
    assert step(sched) == [("a", 1), ("b", 1)]
    assert sched.blocks.num_free == 0 and len(a.table) == 2 and len(b.table) == 3
    # a needs a third block: b gives way, a takes one of its three. The other
    # two would hold b's next chunk (5 of the budget's 6 tokens), but not now.
    assert step(sched) == [("a", 1)]
    assert b.status == WAITING and sched.blocks.num_free == 2
    assert step(sched) == [("a", 1), ("b", 5)]


def test_the_newest_request_preempts_itself_when_it_is_the_one_that_needs_a_block():
    sched = scheduler(4, prefix_caching=False, max_num_batched_tokens=100)
    a, b = add(sched, "a", 6), add(sched, "b", 8)
    assert step(sched) == [("a", 6), ("b", 8)]
    # a's 7th and 8th slots are in its second block; b's 9th token needs a new one.
    assert step(sched) == [("a", 1)]
    assert a.status == RUNNING and len(a.table) == 2
    assert b.status == WAITING and b.table == [] and sched.blocks.num_used == 2


def test_a_preempted_request_finds_its_registered_blocks_in_the_prefix_cache():
    sched = scheduler(4, max_num_batched_tokens=100)
    a, b = add(sched, "a", 8, max_new=3), add(sched, "b", 8)
    step(sched)
    first = b.table[0]
    assert step(sched) == [("a", 1)]  # b preempted; a took b's last block (released first, evicted first)
    assert b.table == [] and first not in a.table
    assert step(sched) == [("a", 1)]  # a finishes
    hits = sched.blocks.hit_tokens
    assert step(sched) == [("b", 5)]  # the first 4 of b's 9 tokens are still cached: only 5 are computed
    assert b.table[0] == first and sched.blocks.hit_tokens == hits + 4


# ------------------------------------------------------------ aborts
def test_aborts_free_blocks_at_once():
    sched = scheduler(4, prefix_caching=False, max_num_batched_tokens=100)
    a, b, c = add(sched, "a", 8), add(sched, "b", 8), add(sched, "c", 8)
    child = Request("c", list(c.prompt), Budget(1))
    c.forks = [child]  # a sibling (n > 1) that would start from c's prefill
    assert step(sched) == [("a", 8), ("b", 8)]
    sched.finish(a)  # between steps, as the engine's abort() does
    assert a.status == FINISHED and a.table == [] and names(sched.running) == ["b"]
    assert sched.blocks.num_used == 2  # before any further step
    sched.finish(c)  # a waiting request leaves the queue, with the siblings it would have started
    assert not sched.waiting and c.status == FINISHED and child.status == FINISHED
    add(sched, "d", 4)
    assert step(sched) == [("b", 1), ("d", 4)]  # a's blocks went to b's next token and to d


# ------------------------------------------------------------ everything at once
def test_random_traffic_keeps_the_policy_and_returns_every_block():
    """Random prompts (some sharing prefixes), lengths, arrivals and aborts in
    a pool small enough to preempt. Every step: the budgets hold, decodes come
    before prefills and admissions, every running decode gets its token, no
    admission in a step that preempted, and the block references are exactly
    the running requests' tables. At the end every block is back."""
    rng = random.Random(0)
    sched = scheduler(16, max_num_seqs=5, max_num_batched_tokens=24)
    blocks = sched.blocks
    prefixes = [[next(_fresh) for _ in range(12)] for _ in range(3)]
    everyone, aborted, added = [], set(), 0
    for _ in range(2000):
        while added < 150 and rng.random() < 0.5:
            n = rng.randint(1, 30)
            prompt = (rng.choice(prefixes)[:rng.randint(0, 12)] if rng.random() < 0.5 else []) + \
                [next(_fresh) for _ in range(n)]
            req = Request(f"r{added}", prompt[:30], Budget(rng.randint(1, 12)))
            sched.add(req)
            everyone.append(req)
            added += 1
        if rng.random() < 0.05 and sched.num_unfinished:
            victim = rng.choice(list(sched.waiting) + sched.running)
            sched.finish(victim)
            aborted.add(victim.request_id)

        before = list(sched.running)
        preemptions = sched.preemptions
        pieces = sched.schedule()
        scheduled = [req for req, _ in pieces]
        assert sum(n for _, n in pieces) <= sched.max_num_batched_tokens
        assert len(sched.running) <= sched.max_num_seqs
        assert len(set(map(id, scheduled))) == len(scheduled) and all(r.status == RUNNING for r in scheduled)
        # 1, 2, 3: decodes, then chunks of running prompts, then newly admitted requests.
        kind = [0 if r in before and r.remaining == 1 else 1 if r in before else 2 for r in scheduled]
        assert kind == sorted(kind)
        assert all(r in scheduled for r in sched.running if r in before and r.remaining == 1)
        if sched.preemptions > preemptions:
            assert 2 not in kind
        for req, n in pieces:
            assert len(req.table) == blocks.blocks_for(req.num_computed + n)
        held = [b for r in sched.running for b in r.table]
        assert sorted(held) == sorted(b for b, k in enumerate(blocks.ref) for _ in range(k))
        assert all(r.table == [] for r in sched.waiting)

        for req, n in pieces:
            sched.computed(req, n)
            if req.remaining == 0:
                req.output.append(SAMPLED)
                if len(req.output) == req.state.max_new:
                    sched.finish(req)
        if added == 150 and not sched.num_unfinished:
            break
    assert added == 150 and not sched.num_unfinished  # no request starved
    assert sched.preemptions > 0 and blocks.hit_tokens > 0  # the run did preempt and hit the cache
    assert blocks.num_used == 0 and not any(blocks.ref) and blocks.num_free == blocks.num_blocks
    for req in everyone:
        assert req.status == FINISHED
        if req.request_id not in aborted:
            assert req.output == [SAMPLED] * req.state.max_new
