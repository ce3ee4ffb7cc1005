"""Continuous batching: which requests run in the next forward pass.

Static batching runs a batch until its longest request finishes; the rows
that finished early sit idle and new requests wait for the whole batch.
Continuous (iteration-level) batching (Yu et al. 2022, Orca) decides again at
every step. Each step has a budget of tokens (max_num_batched_tokens) and of
requests (max_num_seqs), filled in this order:

  1. decodes    every running request that is generating gets its one token
                (they are latency-bound: a user is waiting for each token)
  2. prefills   running requests part-way through a long prompt get their
                next chunk (chunked prefill: a 4,000-token prompt does not
                stall everyone else's decoding for a whole forward pass)
  3. admission  waiting requests join, first come first served, as far as
                the budget and free KV blocks allow; a prefix-cache hit
                means their cached blocks are not computed again

When a running request needs a new KV block and none is free, the most
recently admitted running request is preempted: its blocks are released and
it goes back to the front of the queue, to be recomputed (prompt plus the
tokens it has generated so far) when memory frees up. Recomputation wastes
some work but needs no swap space, and for short contexts it is what vLLM
does by default. Its registered blocks stay in the prefix cache, so the
recomputation often finds them still there.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from acorn.infer.paged import BlockManager

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
class Request:
    """One sequence the engine is generating. `state` is the engine's
    per-request output state (sampling generator, text, stop handling)."""

    request_id: str
    prompt: list[int]
    state: object
    output: list[int] = field(default_factory=list)
    status: str = WAITING
    table: list[int] = field(default_factory=list)  # KV block table
    hashes: list[int] = field(default_factory=list)  # prefix hashes of the full computed blocks
    cache_salt: str | None = None  # seeds the prefix hashes: the LoRA adapter (no blocks shared across adapters)
    num_computed: int = 0  # tokens whose keys and values are in the pool
    cached_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    arrival: int = 0
    forks: list["Request"] = field(default_factory=list)  # siblings (n > 1) to start from this one's prefill
    preemptions: int = 0
    images: object = None  # acorn.infer.multimodal.RequestImages, or None
    prompt_keys: list | None = None  # the prompt as the prefix cache hashes it (images: their digests), or None

    def __post_init__(self):
        if self.images is not None and self.prompt_keys is None:
            self.prompt_keys = self.images.hash_keys(self.prompt)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def hash_tokens(self) -> list:
        """What the prefix cache hashes: the tokens, each image placeholder as (image digest, index)."""
        return (self.prompt if self.prompt_keys is None else self.prompt_keys) + self.output

    @property
    def remaining(self) -> int:
        """Tokens not yet in the pool (1 while decoding: the last sampled one)."""
        return len(self.prompt) + len(self.output) - self.num_computed

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.prompt) + len(self.output) - 1


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_num_seqs: int = 64, max_num_batched_tokens: int = 512):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self._arrivals = itertools.count()
        self.preemptions = 0

    def add(self, req: Request) -> None:
        req.arrival = next(self._arrivals)
        self.waiting.append(req)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # --------------------------------------------------------------- steps
    def schedule(self) -> list[tuple[Request, int]]:
        """The (request, number of new tokens) pieces of the next step."""
        budget = self.max_num_batched_tokens
        pieces: list[tuple[Request, int]] = []
        preempted = False
        # 1 + 2: running requests, decodes before prefill chunks.
        for req in sorted(self.running, key=lambda r: (r.prefilling, r.arrival)):
            if budget == 0:
                break
            if req.status != RUNNING:  # preempted earlier in this loop
                continue
            n = min(req.remaining, budget)
            while not self.blocks.allocate(req.table, req.num_computed + n):
                victim = self.running[-1]  # the newest request gives way
                self._preempt(victim)
                preempted = True
                for j, (other, m) in enumerate(pieces):
                    if other is victim:  # already scheduled in this step: take it back
                        del pieces[j]
                        budget += m
                        break
                if victim is req:
                    break
            if req.status != RUNNING:
                continue
            pieces.append((req, n))
            budget -= n
        # 3: admit waiting requests (not in a step that had to preempt: memory is short).
        while self.waiting and budget and not preempted and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            cached, hashes = self.blocks.match_prefix(req.hash_tokens, req.cache_salt)
            start = len(cached) * self.blocks.block_size
            n = min(len(req.tokens) - start, budget)
            if not self.blocks.allocate(req.table, start + n, cached):
                break
            self.waiting.popleft()
            self.blocks.query_tokens += len(req.prompt)
            self.blocks.hit_tokens += start
            if not req.preemptions:
                req.cached_tokens = start
            req.hashes, req.num_computed, req.status = list(hashes), start, RUNNING
            self.running.append(req)
            pieces.append((req, n))
            budget -= n
        return pieces

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.blocks.release(req.table)
        req.hashes, req.num_computed, req.status = [], 0, WAITING
        req.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)

    def computed(self, req: Request, n: int) -> None:
        """n more tokens of req are in the pool: register the blocks they filled."""
        req.num_computed += n
        self.blocks.register(req.table, req.hashes, req.hash_tokens, req.num_computed, req.cache_salt)

    def start_running(self, req: Request) -> None:
        """A forked request that already holds its blocks joins the batch."""
        req.status = RUNNING
        req.arrival = next(self._arrivals)
        self.running.append(req)

    def finish(self, req: Request) -> None:
        """Done or aborted: free its blocks at once."""
        if req.status == RUNNING:
            self.running.remove(req)
        elif req.status == WAITING and req in self.waiting:
            self.waiting.remove(req)
        self.blocks.release(req.table)
        req.status = FINISHED
        for child in req.forks:  # siblings that never started
            child.status = FINISHED
        req.forks = []
