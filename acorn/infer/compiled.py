"""A compiled batch-1 decode step with static shapes (gpt-fast's approach, on the paged pool).

At batch 1 a small model's decode step on a CPU is not its matmuls as much as the few
hundred small torch ops around them and the Python that calls each one (for the 50M
model of benchmarks/llamacpp.py: 4.2 ms a step against llama.cpp's 1.7 ms).
torch.compile can turn the whole step into one generated C++ function (inductor's
cpp_wrapper: no Python per op; norms, RoPE, SiLU and residual adds fused into a few
loops; the matmuls oneDNN's, or inductor's own autotuned kernels, on weights frozen into
the graph) -- but only if the step's shapes stay the same from one step to the next, and
the paged step's context grows by a token each time. So the shapes are made static:

  token, position   one each
  block table       the request's blocks, padded to a fixed capacity (a bucket: 256,
                    512, 1024, ... tokens) with its own first block (StepInput.build's
                    rule: a masked NaN would still poison attention); the graph
                    computes the context's pool slots, the write slot and the mask
                    (past the position: masked) from it

and one compiled graph serves every step of a bucket; a context that outgrows its
bucket moves to the next one, at the cost of one more compile. The graph returns the
logits and, beside them, their argmax and whether the row is finite: for a greedy
request whose sampling would not change the logits (sampling.plain_argmax) that is the
token, with no eager op after the graph. After its first call a graph runs without
dynamo's frame hook (_direct).

The graph is paged_forward itself (the model's embed, blocks and logits, PagedAttention's
batch-1 path, the packed weights, the engine's KV pool): a way of running the one
forward pass, not a second model. The engine runs it (Engine(compile_decode=True)) for
a step in which exactly one request decodes one token, with no LoRA adapter and no
speculative draft; every other step stays as it is.

The graph holds the weights as constants (inductor's freezing: the oneDNN linear
lowering that runs the pre-packed bf16 weights needs them so), so it belongs to the
weights it was compiled with: when any parameter or buffer changes (a training step:
its version counter moves), the graphs are dropped, one eager step rebuilds the packs,
and the next step compiles again. A model whose layers are replaced after the engine is
built (quantized, LoRA-wrapped) needs a new engine.
"""

from __future__ import annotations

import itertools
import math
import operator
import time
import types
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from acorn.infer.paged import PagedKV, StepInput, attention_window, paged_forward
from acorn.infer.sampling import non_finite_rows
from acorn.model import packed

MIN_CAPACITY = 256  # the smallest bucket, in tokens; each next one doubles
# cpp_wrapper: the graph's calls from generated C++ rather than Python (most of what is
# left of a 50M step's overhead once the ops are fused); freezing: weights as constants,
# which the oneDNN linear lowering needs; emulate_precision_casts: round 16-bit values where
# eager rounds them (it did not make bf16 tokens match eager's on random weights either way,
# and cost nothing measurable; docs/BENCHMARKS.md, decode-compile); pattern_matcher off: inductor's
# graph rewrites (a matmul and the residual add after it fused into one oneDNN call, which rounds
# once where eager rounds twice) moved bf16 greedy tokens off eager's after 7 tokens of the 50M
# model on random weights, without them after 54, at the same speed (3.77 vs 3.71 ms a token).
INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True, "emulate_precision_casts": True, "pattern_matcher": False}
# 16-bit models also autotune their matmuls: inductor then times its own C++ GEMM kernels (AMX /
# AVX512 micro-kernels) against oneDNN's for each shape and keeps the faster. At batch 1 on this
# machine's AMX CPU its kernels won: the 50M model's bf16 step went from 1.60x to 2.07x the eager
# one (int8 1.59x -> 1.95x, int4 1.48x -> 1.58x), for about 3x the compile time (7 -> 21 s); in
# float32 it lost in every run (1.38x -> 1.15x). benchmarks/decode_compile.py measures both.
# Memory: the process grew by about 300 MB compiling the 50M model (the compiler itself and the
# kernels' own copies of the weights).
AUTOTUNE_16BIT = {"max_autotune": True}


def capacity(length: int, block_size: int, max_len: int) -> int:
    """The bucket (context slots) for a context of `length` tokens: the smallest of
    MIN_CAPACITY, 2 * MIN_CAPACITY, ... that holds it, no larger than the model's
    context (max_len), rounded up to whole blocks."""
    cap = MIN_CAPACITY
    while cap < length:
        cap *= 2
    cap = max(min(cap, max_len), length)
    return math.ceil(cap / block_size) * block_size


class CompiledDecode:
    """paged_forward for one request decoding one token, compiled once per capacity bucket.

    compile=False runs the same static-shape function eagerly (the padding and masking
    without the compiler: what tests check quickly). A model the compiler cannot take
    whole (fullgraph: an MoE layer's data-dependent routing) warns once and runs its
    steps eagerly from then on."""

    def __init__(self, model, kv: PagedKV, *, vocab: int | None = None, compile: bool = True,
                 options: dict | None = None):
        self.model, self.kv, self.compile = model, kv, compile
        self.vocab = vocab or model.config.vocab_size  # the tokenizer's: the argmax is over these ids
        sixteen = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
        # inductor's config for the compile; options= overrides the defaults
        self.options = {**INDUCTOR_OPTIONS, **(AUTOTUNE_16BIT if sixteen else {}), **(options or {})}
        self.graphs: dict[int, object] = {}  # capacity -> its compiled step
        self.compile_seconds = 0.0  # spent compiling (the first call of each graph), in total
        self.steps = 0  # steps run through a graph
        self.failed: str | None = None  # why compiling failed, if it did
        self._tensors: list[Tensor] = []
        self._weights = None  # (versions, storages) of the weights when the graphs were made
        self._table_key, self._table = None, None  # the last step's padded block table

    def ready(self) -> bool:
        """Whether a compiled step may run now: the weights are those the graphs were made
        with, or, when they changed, every pack is rebuilt from the new ones (after an eager
        step) and the old graphs are dropped."""
        if self.failed is not None:
            return False
        weights = _fingerprint(self._tensors)
        if self._weights is not None and weights == self._weights:
            return True
        if not packed.ready(self.model):
            return False
        self.drop()
        self._tensors = list(itertools.chain(self.model.parameters(), self.model.buffers()))
        self._weights = _fingerprint(self._tensors)
        return True

    def __call__(self, token: int, position: int, table: Sequence[int]) -> tuple[Tensor, Tensor]:
        """One request's decode step: `token` at `position`, its KV blocks `table` (at least
        the blocks up to the position's). Returns the logits (1, V) and, computed inside the
        graph, (2,) long: the argmax of the logits' first `vocab` ids and whether that row is
        finite (1) or holds a NaN or an infinity (0) -- the greedy token, when sampling would
        not change the logits (sampling.plain_argmax), without sampling's eager ops."""
        bs = self.kv.block_size
        cap = capacity(position + 1, bs, self.model.config.max_seq_len)
        needed = position // bs + 1
        # The table padded to the bucket with the request's own first block (StepInput.build's
        # rule: a masked NaN would still poison attention), as a tensor made again only when the
        # request reaches a new block or another request decodes.
        key = (cap, *table[:needed])
        if key != self._table_key:
            self._table_key = key
            self._table = torch.tensor([*table[:needed], *table[:1] * (cap // bs - needed)],
                                       dtype=torch.long, device=self.kv.keys[0].device)
        device = self._table.device
        args = (torch.tensor([token], device=device), torch.tensor([position], device=device), self._table)
        self.steps += 1
        graph = self.graphs.get(cap)
        if graph is not None:
            if graph.direct is not None:
                return graph.direct(*args)
            try:
                # Each graph has a code object of its own (_graph) holding one compiled entry,
                # valid while the weights are those it froze (ready() is checked before every
                # call) and for the step's static shapes and dtypes: dynamo's guards would only
                # confirm that, so they are skipped (about 0.1 ms of a 2.8 ms step of the 50M
                # bf16 model: docs/BENCHMARKS.md).
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return graph(*args)
            except Exception:  # noqa: BLE001 -- a guard failed and dynamo traced again without the options
                pass
        else:
            graph = self.graphs[cap] = self._graph(cap)
        from torch._inductor import config

        # The first call traces and compiles, with the options set for the trace too
        # (torch.compile's options= come too late: dynamo decides while tracing whether the
        # weights are frozen constants). Setting them costs 25 us, so later calls, which
        # match the graph's guards (static shapes, the same weights: ready()), go without.
        start = time.perf_counter()
        try:
            with config.patch(self.options):
                out = graph(*args)
        except Exception as e:  # noqa: BLE001 -- tracing and compiling touch no real tensor
            if not self.compile:
                raise
            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            warnings.warn(f"compile_decode: the decode step did not compile ({self.failed}); "
                          "decoding eagerly", RuntimeWarning, stacklevel=3)
            self.drop()
            self.steps -= 1
            return _step_function(self.model, self.kv, cap, self.vocab)(*args)
        finally:
            self.compile_seconds += time.perf_counter() - start
        graph.direct = _direct(graph) if self.compile else graph
        return out

    def drop(self) -> None:
        """Forget every graph. dynamo keeps each compiled graph in a global of the traced
        function's module until the cache entry on the function's code object goes, and that
        entry and dynamo's map back to the code object hold each other alive where the
        garbage collector does not look, so the entries are reset here. Not freed even so
        (torch 2.13; not even by torch._dynamo.reset()): the copies of the weights that
        inductor's autotuned GEMM kernels packed, 65 MB per compile for the 50M bf16 model,
        so an engine whose weights change often (an RL loop's updates) should decode eagerly."""
        for graph in self.graphs.values():
            if getattr(graph, "traced", None) is not None:
                try:
                    torch._dynamo.reset_code(graph.traced.__code__)
                except Exception:  # noqa: BLE001 -- dynamo's own API moved: the memory stays, nothing breaks
                    pass
        self.graphs.clear()

    def __del__(self):
        try:
            self.drop()
        except Exception:  # noqa: BLE001 -- at interpreter exit the module may be half gone
            pass

    def _graph(self, cap: int):
        fn = _step_function(self.model, self.kv, cap, self.vocab)
        fn.direct = None
        if not self.compile:
            return fn
        # dynamo keeps compiled graphs on the function's code object, guarded by the inputs'
        # shapes, not by whose weights were frozen into them: a code object of its own per
        # graph, so no other engine (or these weights' next version) can reuse it.
        code = fn.__code__.replace(co_name=f"decode_step_{id(self)}_{len(self.graphs)}")
        fn = types.FunctionType(code, fn.__globals__, code.co_name, None, fn.__closure__)
        graph = torch.compile(fn, fullgraph=True, dynamic=False)
        graph.direct, graph.traced = None, fn
        return graph


def _fingerprint(tensors: list[Tensor]) -> tuple[list[int], list[int]]:
    """Every tensor's version counter (moved on by an in-place write: an optimizer step,
    load_state_dict) and storage address (a swapped .data), read before every compiled
    step: about 0.05 ms for the 50M model's 141 tensors, most of it cache misses after the
    graph (map() over the list is only a little faster than a loop)."""
    return list(map(_VERSION, tensors)), list(map(Tensor.data_ptr, tensors))


_VERSION = operator.attrgetter("_version")


def _direct(graph):
    """The compiled graph as a plain function, called without dynamo's frame hook, or None.

    dynamo compiles a function into new bytecode (it gathers the graph's inputs from the
    arguments and the closure, calls the generated code, returns its output) and runs that
    bytecode from a frame-evaluation hook which, for every call, enters the compile
    context, looks up the code object's cache and (unless skipped) checks its guards: about
    0.2 ms a step for the 50M model, an eighth of its whole step (docs/BENCHMARKS.md,
    llamacpp). This graph's code object holds exactly one compiled entry, whose guards the
    engine vouches for (ready() and the static shapes), so its bytecode is made a function
    of its own and called directly. None (dynamo's hook then stays in the path) when the
    cache does not look like that."""
    fn = graph.traced
    try:
        entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list(fn.__code__)
        if len(entries) != 1 or entries[0].code.co_freevars != fn.__code__.co_freevars:
            return None
        return types.FunctionType(entries[0].code, fn.__globals__, fn.__name__, None, fn.__closure__)
    except Exception:  # noqa: BLE001 -- a private hook of dynamo's: without it, the slower path
        return None


def _step_function(model, kv: PagedKV, cap: int, vocab: int):
    """The step as a function of tensors only (what the compiler traces): paged_forward over
    one decode row, its context the `cap` pool slots of its padded block table (cap /
    block_size blocks), masked past the row's position (and before its sliding window);
    returns the logits and (argmax over the first `vocab` ids, whether the row is finite)."""
    bs = kv.block_size
    window = attention_window(model.config)

    def decode_step(tokens: Tensor, positions: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
        device = tokens.device
        context = (table[:, None] * bs + torch.arange(bs, device=device)).reshape(1, cap)
        k = torch.arange(cap, device=device)
        allowed = k <= positions
        if window is not None:
            allowed &= k > positions - window
        rows = torch.zeros(1, dtype=torch.long, device=device)
        step = StepInput(tokens, positions, context[0, positions], [(rows, context, allowed[None, None, None, :])],
                         [], rows)
        logits = paged_forward(model, step, kv)
        head = logits[:, :vocab]
        return logits, torch.cat([head.argmax(dim=-1), (~non_finite_rows(head)).long()])

    return decode_step
