"""The engine behind the server: one thread steps it, many requests await it.

Engine.step() is synchronous and not thread-safe, and a web server serves
every request from one asyncio event loop. AsyncEngine connects the two:

  - one background thread owns the Engine. Between steps it takes new
    requests and aborts from a command queue, then runs one step (continuous
    batching: every request in flight advances together) and hands each
    sample's StepOutput (new ids, text, log-probs; the Completion at the end)
    to the event loop (loop.call_soon_threadsafe). It uses only the engine's
    public API (validate_prompt, add_request, step, abort, stats). A sample
    the engine ends with finish_reason "error" (non-finite logits) fails its
    request alone, with a GenerationError the routes answer 500; the thread
    goes on serving the others;
  - each HTTP handler calls submit(), which returns a RequestStream to
    `async for` over. Closing it (a client that disconnects) aborts the
    request in the engine thread before its next step, which frees its KV
    blocks at once;
  - a bounded queue: when max_pending requests wait already, submit() raises
    QueueFull and the server answers 429 with Retry-After, instead of letting
    latency grow without bound.

It also keeps the numbers /metrics reports: requests in the queue and
running, KV blocks in use, tokens generated, time to first token.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from acorn.errors import AcornError
from acorn.infer.sampling import GenerationError
from acorn.infer.sequence import StepOutput


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests."""


@dataclass
class RequestStream:
    """What submit() returns: an async iterator of the engine's StepOutputs for
    this request, ending when every sample has finished."""

    request_id: str
    prompt_tokens: int
    n: int
    _engine: "AsyncEngine"
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    completions: list = field(default_factory=list)  # acorn.infer.Completion per sample, once finished
    cached_tokens: int = 0
    _done: bool = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> StepOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def put(self, item) -> None:
        """Hand over a StepOutput, an exception, or None (the end); on the event loop's thread."""
        self._queue.put_nowait(item)

    def abort(self) -> None:
        """Stop generating (idempotent); the KV blocks are freed before the next step."""
        if not self._done:
            self._done = True
            self._engine.abort(self.request_id)

    async def collect(self) -> list:
        """Wait for the whole output (non-streaming requests); aborts if cancelled."""
        try:
            async for _ in self:
                pass
        finally:
            self.abort()
        return self.completions


class AsyncEngine:
    def __init__(self, engine, *, max_pending: int = 256):
        self.engine = engine
        self.max_pending = max_pending
        self._commands: deque = deque()
        self._wake = threading.Event()
        self._streams: dict[str, RequestStream] = {}
        self._started: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._ids = itertools.count()
        self._lock = threading.Lock()
        # metrics
        self.requests_total = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.ttft: deque = deque(maxlen=1000)  # seconds, recent requests
        self._token_times: deque = deque(maxlen=10000)  # (time, tokens) of recent steps
        self.error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="acorn-engine", daemon=True)
        self._thread.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Take no new requests; let those in flight finish for up to `grace`
        seconds, then abort the rest and stop the engine thread."""
        self._stopping = True
        deadline = time.monotonic() + grace
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for rid in list(self._streams):
            self.abort(rid)
        self._command(("stop", None))
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------ requests
    def submit(self, prompt_ids: list[int], params, images=None) -> RequestStream:
        """Queue a request; raises QueueFull, ShuttingDown, or AcornError for a bad one.
        images: one per tokens_per_image placeholders of the prompt (a vision model)."""
        if self._stopping or self._thread is None:
            raise ShuttingDown("the server is shutting down")
        if self.pending >= self.max_pending:
            raise QueueFull(f"{self.pending} requests are waiting (the limit is {self.max_pending})")
        self.engine.validate_prompt(prompt_ids, params)  # here, in the caller's thread: a clear 400
        images = self.engine.prepare_images(prompt_ids, images)
        rid = f"req-{next(self._ids)}"
        stream = RequestStream(rid, len(prompt_ids), params.n, self)
        with self._lock:
            self._streams[rid] = stream
            self._started[rid] = time.monotonic()
        self.requests_total += 1
        self.prompt_tokens += len(prompt_ids)
        self._command(("add", (rid, prompt_ids, params, images)))
        return stream

    @property
    def pending(self) -> int:
        """Requests accepted but not yet running."""
        adds = sum(1 for c in list(self._commands) if c[0] == "add")
        return adds + self.engine.stats().get("waiting", 0)

    def abort(self, request_id: str) -> None:
        """Abort a request in the engine thread, before its next step."""
        self._command(("abort", request_id))

    def _command(self, command) -> None:
        self._commands.append(command)
        self._wake.set()

    # ------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                while self._commands:
                    # Taken off the queue only once handled: an add stays visible to `pending`
                    # (in the queue, then in the scheduler), so max_pending holds under a burst.
                    kind, arg = self._commands[0]
                    if kind == "stop":
                        return
                    if kind == "abort":
                        if engine.abort(arg):
                            self._finish(arg)
                    elif kind == "add":
                        rid, ids, params, images = arg
                        if rid in self._streams:  # not aborted while queued
                            try:
                                engine.add_request(ids, params, request_id=rid, images=images)
                            except AcornError as e:
                                self._deliver(rid, e)
                                self._finish(rid, notify=False)
                    self._commands.popleft()
                if not engine.has_unfinished():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as e:  # the engine broke: fail every request rather than hang them
            self.error = e
            for rid in list(self._streams):
                self._deliver(rid, RuntimeError(f"the engine stopped: {e}"))
                self._finish(rid, notify=False)

    def _step(self) -> None:
        outs = self.engine.step()
        now = time.monotonic()
        new_tokens = 0
        for out in outs:
            rid = out.request_id
            stream = self._streams.get(rid)
            if stream is None:
                continue
            new_tokens += len(out.token_ids)
            if rid in self._started:
                self.ttft.append(now - self._started.pop(rid))
            if out.finish_reason == "error":
                # This request failed (non-finite logits): it alone gets the error, its other
                # samples stop, and the engine goes on with the rest of the batch.
                self.engine.abort(rid)
                self._deliver(rid, GenerationError(out.completion.error))
                self._finish(rid, notify=False)
                continue
            if out.completion is not None:
                stream.completions.append(out.completion)
                stream.cached_tokens = max(stream.cached_tokens, out.completion.cached_tokens)
            self._deliver(rid, out)
            if len(stream.completions) == stream.n:
                stream.completions.sort(key=lambda c: c.index)
                self._finish(rid)
        self.generated_tokens += new_tokens
        self._token_times.append((now, new_tokens))

    def _deliver(self, rid: str, item) -> None:
        stream = self._streams.get(rid)
        if stream is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(stream.put, item)

    def _finish(self, rid: str, notify: bool = True) -> None:
        if notify:
            self._deliver(rid, None)
        with self._lock:
            self._streams.pop(rid, None)
            self._started.pop(rid, None)

    # ------------------------------------------------------------ metrics
    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._token_times) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def metrics(self) -> dict:
        stats = self.engine.stats()
        ttft = sorted(self.ttft)
        return {
            "queue_depth": self.pending,
            "running_requests": stats.get("running", 0),
            "kv_blocks_in_use": stats.get("blocks_in_use", 0),
            "kv_blocks_total": stats["num_blocks"],
            "requests_total": self.requests_total,
            "prompt_tokens_total": self.prompt_tokens,
            "generated_tokens_total": self.generated_tokens,
            "tokens_per_second": self.tokens_per_second(),
            "time_to_first_token_seconds_p50": ttft[len(ttft) // 2] if ttft else 0.0,
            "time_to_first_token_seconds_p90": ttft[int(len(ttft) * 0.9)] if ttft else 0.0,
            "prefix_cache_hit_tokens_total": stats.get("prefix_hit_tokens", 0),
        }
