"""Paged KV memory (Kwon et al. 2023, PagedAttention) with prefix caching.

A KV cache that gives each request one contiguous tensor must reserve room for
the longest output the request might produce: most of that memory sits empty,
and a request that outgrows it cannot continue. Paging does for the KV cache
what virtual memory does for processes:

  blocks       KV memory is one pool of fixed-size blocks (block_size tokens of
               keys and values for every layer), sized once from a memory budget
  block table  each request holds a list of block numbers; its token i lives
               in block table[i // block_size], slot i % block_size. A request
               takes a new block only when its last one is full, so at most
               block_size - 1 slots per request are ever unused.

Attention reads a request's keys and values by gathering its slots from the
pool (PagedAttention below); writing the new tokens' keys and values is a
scatter into their slots.

Prefix caching (vLLM's automatic prefix caching; SGLang's RadixAttention is
the tree-shaped relative). A full block is identified by a hash of its tokens
chained with the hash of the block before it, so the hash names the whole
prefix up to the block's end. Full blocks are registered under their hash; a
new request whose prompt starts with the same tokens (a system prompt, a
document, the earlier turns of a chat) takes those blocks by reference
instead of computing them again. Blocks are reference counted: when the last
request holding a registered block lets go, the block is not wiped but kept
as 'evictable', and reused least-recently-used first when memory is needed.
A request may carry a salt (vLLM's cache_salt; the engine uses its LoRA
adapter's name) that seeds its hash chain: the same tokens under another
salt hash differently, so their blocks, whose keys and values another adapter
computed, are never shared. An image placeholder is hashed as (digest of the
image, index within it), not by its id (acorn.infer.multimodal): blocks are
shared only where the images are the same too.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
from torch import Tensor

from acorn.errors import AcornError
from acorn.model import lora
from acorn.model.transformer import sdpa


DECODE_GROUP = 16  # decode rows attended together (sorted by context length)
# torch 2.5+'s CPU flash attention is faster in bf16 than in float32 (measured with torch 2.13:
# 0.5x float32's time for 16 decode rows, and 0.65x for a 64-token prefill), so attention
# runs in the cache's dtype; converting the gathered keys and values to float32 cost as much
# as the attention itself.
_CPU_SDPA_16BIT = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class BlockManager:
    """Which KV block belongs to whom: allocation, reference counts, prefix hashes.

    Only numbers live here (no tensors), so it is tested on its own."""

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise AcornError(f"the KV cache needs at least one block of at least one token "
                             f"(got {num_blocks} blocks of {block_size})")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.prefix_caching = prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks  # the registered hash of a full block
        self.by_hash: dict[int, int] = {}  # hash -> block
        self.free: deque[int] = deque(range(num_blocks))  # blocks holding nothing worth keeping
        self.evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced cached blocks, least recent first
        self.hit_tokens = 0  # prompt tokens served from the prefix cache, in total
        self.query_tokens = 0  # prompt tokens looked up

    # ---------------------------------------------------------- counting
    @property
    def num_free(self) -> int:
        """Blocks a request can take now (free ones and evictable cached ones)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_used(self) -> int:
        """Blocks some request holds."""
        return self.num_blocks - self.num_free

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    # ---------------------------------------------------------- hashing
    @staticmethod
    def chain_hash(parent: int | str | None, tokens) -> int:
        """The hash of a full block: its tokens (ids, or (image digest, index) for an
        image placeholder) chained with the hash of the block before (for the first
        block: the request's salt, or None)."""
        return hash((parent, tuple(tokens)))

    def prefix_hashes(self, tokens: list[int], salt: str | None = None) -> list[int]:
        hashes, parent = [], salt
        for i in range(len(tokens) // self.block_size):
            parent = self.chain_hash(parent, tokens[i * self.block_size:(i + 1) * self.block_size])
            hashes.append(parent)
        return hashes

    # ---------------------------------------------------------- allocation
    def _take(self) -> int:
        if self.free:
            block = self.free.popleft()
        else:  # reuse the least recently used cached block: its prefix is forgotten
            block, _ = self.evictable.popitem(last=False)
            del self.by_hash[self.hash_of[block]]
            self.hash_of[block] = None
        self.ref[block] = 1
        return block

    def _acquire(self, block: int) -> None:
        if self.ref[block] == 0:
            self.evictable.pop(block)
        self.ref[block] += 1

    def match_prefix(self, tokens: list[int], salt: str | None = None) -> tuple[list[int], list[int]]:
        """The cached blocks that hold the longest prefix of `tokens` (hashed with
        `salt`), and the hashes of those blocks. At least one token is always left
        to compute (its logits are needed), so a prompt that is cached entirely
        gives up its last block."""
        if not self.prefix_caching:
            return [], []
        blocks, hashes = [], []
        for h in self.prefix_hashes(tokens, salt):
            block = self.by_hash.get(h)
            if block is None:
                break
            blocks.append(block)
            hashes.append(h)
        if blocks and len(blocks) * self.block_size >= len(tokens):
            blocks.pop()
            hashes.pop()
        return blocks, hashes

    def allocate(self, table: list[int], n_tokens: int, cached: list[int] = ()) -> bool:
        """Grow a block table to hold n_tokens, starting from the cached
        blocks of a prefix match when the table is empty. False (and nothing
        changed) when there are not enough free blocks."""
        need = self.blocks_for(n_tokens) - len(table) - len(cached)
        # Cached blocks that nobody holds are counted as free: taking them must not count twice.
        reclaimed = sum(1 for b in cached if self.ref[b] == 0)
        if need > self.num_free - reclaimed:
            return False
        for b in cached:
            self._acquire(b)
            table.append(b)
        for _ in range(max(need, 0)):
            table.append(self._take())
        return True

    def fork(self, table: list[int], n_tokens: int) -> tuple[list[int], int | None]:
        """A child's block table sharing the parent's full blocks. The parent's
        last block, if partly filled, is not shared (both would write into
        it): the child gets a fresh block, and the caller copies the slots.
        Returns (table, the fresh block or None); raises if none is free."""
        full = n_tokens // self.block_size
        shared = table[:full]
        for b in shared:
            self._acquire(b)
        if full == len(table) or n_tokens % self.block_size == 0:
            return list(shared), None
        if not self.num_free:
            self.release(shared)
            raise MemoryError("no free KV block to fork into")
        fresh = self._take()
        return [*shared, fresh], fresh

    def register(self, table: list[int], hashes: list[int], tokens: list[int], n_computed: int,
                 salt: str | None = None) -> None:
        """Register the blocks that n_computed tokens have filled, extending
        `hashes` (the request's chain of block hashes, seeded with `salt`) in place."""
        if not self.prefix_caching:
            return
        for i in range(len(hashes), n_computed // self.block_size):
            parent = hashes[-1] if hashes else salt
            h = self.chain_hash(parent, tokens[i * self.block_size:(i + 1) * self.block_size])
            hashes.append(h)
            block = table[i]
            if h not in self.by_hash and self.hash_of[block] is None:
                self.by_hash[h] = block
                self.hash_of[block] = h

    def release(self, table: list[int]) -> None:
        """Let go of a request's blocks. The last blocks go first so that, of
        one request's cached blocks, the LRU order evicts the tail first."""
        for block in reversed(table):
            self.ref[block] -= 1
            if self.ref[block] < 0:
                raise AssertionError(f"block {block} released more often than taken")
            if self.ref[block] == 0:
                if self.hash_of[block] is not None:
                    self.evictable[block] = None
                else:
                    self.free.append(block)
        table.clear()

    def forget(self, table: list[int]) -> list[int]:
        """The blocks of `table` that no other request holds, taken out of the
        prefix cache so no later request reuses them; returns them (for the
        caller to wipe: a request that failed on non-finite values left NaN in them)."""
        mine = [b for b in table if self.ref[b] == 1]
        for b in mine:
            if self.hash_of[b] is not None:
                del self.by_hash[self.hash_of[b]]
                self.hash_of[b] = None
        return mine

    def reset_prefix_cache(self) -> None:
        """Forget every unreferenced cached block."""
        for block in list(self.evictable):
            del self.by_hash[self.hash_of[block]]
            self.hash_of[block] = None
            self.free.append(block)
        self.evictable.clear()


class PagedKV:
    """The block pool itself: per layer, keys and values of shape
    (num_blocks * block_size, n_kv_head, head_dim); slot s is token s % block_size
    of block s // block_size. Attention goes through write() and read(), so the
    storage format stays in here:

      auto  the model's dtype
      int8  each token's key (and value) of each head as int8 codes with one
            float32 scale, absmax / 127 (symmetric, per token and head: a new
            token never changes the scale of those already stored). A quarter
            of fp32's memory (half of bf16's) plus 4 bytes per head and token;
            read() dequantizes to the model's dtype before attention.
    """

    def __init__(self, cfg, num_blocks: int, block_size: int, *, dtype: torch.dtype, device,
                 kv_dtype: str = "auto"):
        if kv_dtype not in ("auto", "int8"):
            raise AcornError(f"unknown KV cache dtype {kv_dtype!r}; choose auto (the model's) or int8")
        slots = num_blocks * block_size
        shape = (slots, cfg.n_kv_head, cfg.head_dim)
        self.kv_dtype = kv_dtype
        store = torch.int8 if kv_dtype == "int8" else dtype
        self.keys = [torch.zeros(shape, dtype=store, device=device) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, dtype=store, device=device) for _ in range(cfg.n_layer)]
        self.key_scales = self.value_scales = None
        if kv_dtype == "int8":
            self.key_scales = [torch.zeros(shape[:2], device=device) for _ in range(cfg.n_layer)]
            self.value_scales = [torch.zeros(shape[:2], device=device) for _ in range(cfg.n_layer)]
        self.block_size = block_size

    @staticmethod
    def bytes_per_token(cfg, dtype: torch.dtype, kv_dtype: str = "auto") -> int:
        per_head = cfg.head_dim + 4 if kv_dtype == "int8" else cfg.head_dim * torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.n_layer * cfg.n_kv_head * per_head

    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values, *(self.key_scales or []), *(self.value_scales or [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """k, v (N, n_kv_head, head_dim): the new tokens' keys and values into their slots."""
        if self.kv_dtype == "int8":
            k, k_scale = quantize_int8(k)
            v, v_scale = quantize_int8(v)
            self.key_scales[layer].index_copy_(0, slots, k_scale)
            self.value_scales[layer].index_copy_(0, slots, v_scale)
        self.keys[layer].index_copy_(0, slots, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(0, slots, v.to(self.values[layer].dtype))

    def read(self, layer: int, index: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Keys and values at pool slots `index` (any shape), as (*index.shape, n_kv_head, head_dim) in dtype."""
        # index_select on a 2-D view copies whole rows: tens of times faster
        # on CPU than advanced indexing of the 3-D pool with a 2-D index.
        shape = (*index.shape, *self.keys[layer].shape[1:])
        flat = index.reshape(-1)
        k = self.keys[layer].flatten(1).index_select(0, flat).view(shape)
        v = self.values[layer].flatten(1).index_select(0, flat).view(shape)
        if self.kv_dtype == "int8":
            k_scale = self.key_scales[layer].index_select(0, flat).view(*shape[:-1], 1)
            v_scale = self.value_scales[layer].index_select(0, flat).view(*shape[:-1], 1)
            return (k.to(torch.float32) * k_scale).to(dtype), (v.to(torch.float32) * v_scale).to(dtype)
        return k.to(dtype), v.to(dtype)

    def clear(self, blocks: list[int]) -> None:
        """Zero these blocks' keys and values in every layer. Attention reads the unused
        tail of a request's last block under a mask, and a masked NaN left there by an
        earlier owner would still poison it (0 * NaN = NaN)."""
        if not blocks:
            return
        slots = torch.tensor(blocks, device=self.keys[0].device)[:, None] * self.block_size + \
            torch.arange(self.block_size, device=self.keys[0].device)
        slots = slots.reshape(-1)
        for t in (*self.keys, *self.values, *(self.key_scales or []), *(self.value_scales or [])):
            t.index_fill_(0, slots, 0)

    def copy_block(self, src: int, dst: int, n_tokens: int) -> None:
        a, b = src * self.block_size, dst * self.block_size
        for t in (*self.keys, *self.values, *(self.key_scales or []), *(self.value_scales or [])):
            t[b:b + n_tokens] = t[a:a + n_tokens]


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., D) -> int8 codes (..., D) and float32 scales (...): symmetric,
    scale = absmax / 127 over the last dimension, so |x - codes * scale| <= scale / 2."""
    x = x.float()
    scale = x.abs().amax(-1) / 127.0
    codes = torch.round(x / scale.clamp(min=1e-12)[..., None]).clamp(-127, 127).to(torch.int8)
    return codes, scale


def attention_window(cfg) -> int | None:
    """The sliding window a paged step masks to, or None when the model has none shorter than
    its context (the eager step and the compiled one mask alike)."""
    return cfg.sliding_window if cfg.sliding_window and cfg.sliding_window < cfg.max_seq_len else None


def slots_of(table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """The pool slots of tokens start..end-1 of a request with this block table."""
    return [table[i // block_size] * block_size + i % block_size for i in range(start, end)]


@dataclass
class StepInput:
    """One forward pass over pieces of several requests, flattened.

    tokens/positions/slots: (N,) the new tokens, their positions and the pool
    slots their keys and values go to. For attention, decode rows (one new
    token) are batched together against their gathered keys; each prefill
    piece (several new tokens) attends on its own.
    """

    tokens: Tensor
    positions: Tensor
    slots: Tensor
    # Decode rows in groups of similar context length (padding to the longest
    # in a group is wasted gathering): (rows (Bd,), pool slots of each row's
    # context (Bd, S) padded with 0, mask (Bd, 1, 1, S) or None when no padding).
    decodes: list[tuple[Tensor, Tensor, Tensor | None]]
    prefills: list[tuple[int, int, Tensor, Tensor | None]]  # (first row, n rows, context slots, mask or None)
    logit_rows: Tensor  # rows whose next-token logits are wanted

    @classmethod
    def build(cls, pieces, block_size: int, window: int | None, device) -> "StepInput":
        """pieces: (block table, first new token index, new token ids, how many
        of the last rows want logits: 0, 1, or 1 + k for a speculative check).

        The piece's context is every token up to and including its new ones."""
        tokens, positions, slots, logit_rows = [], [], [], []
        decode_rows, decode_tables, decode_lengths, prefills = [], [], [], []
        for table, start, new, wants in pieces:
            row, n, end = len(tokens), len(new), start + len(new)
            tokens += new
            positions += range(start, end)
            slots += slots_of(table, start, end, block_size)
            logit_rows.extend(range(row + n - int(wants), row + n))
            if n == 1:
                decode_rows.append(row)
                decode_tables.append(table[:math.ceil(end / block_size)])
                decode_lengths.append(end)
                continue
            mask = None
            if start or (window is not None and end > window):
                q = torch.arange(start, end, device=device)[:, None]
                k = torch.arange(end, device=device)[None, :]
                allowed = k <= q
                if window is not None:
                    allowed &= k > q - window
                mask = allowed
            context = _table_slots(torch.tensor([table], device=device), block_size)[0, :end]
            prefills.append((row, n, context, mask))
        decodes = []
        order = sorted(range(len(decode_rows)), key=lambda i: decode_lengths[i])
        for g in range(0, len(order), DECODE_GROUP):
            group = order[g:g + DECODE_GROUP]
            lengths_list = [decode_lengths[i] for i in group]
            width = max(lengths_list)
            n_blocks = max(max(len(decode_tables[i]) for i in group), math.ceil(width / block_size))
            # A shorter table is padded with its own first block, not another request's: the
            # padding is masked, but a masked NaN still poisons attention (0 * NaN = NaN), so
            # a row reads only keys and values its own request wrote.
            tables = torch.tensor([decode_tables[i] + decode_tables[i][:1] * (n_blocks - len(decode_tables[i]))
                                   for i in group], device=device)
            gather = _table_slots(tables, block_size)[:, :width]  # past a row's length: masked
            lengths = torch.tensor(lengths_list, device=device)
            k = torch.arange(width, device=device)[None, :]
            allowed = k < lengths[:, None]
            if window is not None:
                allowed &= k >= lengths[:, None] - window
            mask = None if bool(allowed.all()) else allowed[:, None, None, :]
            decodes.append((torch.tensor([decode_rows[i] for i in group], device=device), gather, mask))
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        return cls(as_long(tokens), as_long(positions), as_long(slots), decodes, prefills, as_long(logit_rows))


def _table_slots(tables: Tensor, block_size: int) -> Tensor:
    """(B, blocks) block tables -> (B, blocks * block_size) the slots of every position."""
    offsets = torch.arange(block_size, device=tables.device)
    return (tables[:, :, None] * block_size + offsets).reshape(tables.shape[0], -1)


class PagedAttention:
    """Attention for the model's block stack (acorn.model.transformer's
    KVAttention) over the paged pool: each layer writes the new tokens' keys
    and values into their slots, then attends each row to its request's
    context, gathered from the pool. Decode rows attend in groups, each
    prefill piece on its own (StepInput)."""

    def __init__(self, step: StepInput, kv: PagedKV):
        self.step, self.kv = step, kv

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v (1, heads, N, head_dim) of the step's N new tokens -> (1, n_head, N, head_dim)."""
        step, kv = self.step, self.kv
        kv.write(layer, step.slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
        out_dtype = q.dtype
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and not _CPU_SDPA_16BIT:
            # Older torch's CPU attention kernels were several times slower in 16-bit than
            # in float32 (measured: 7x for a decode step); the cache stays 16-bit.
            q = q.float()
        if len(step.decodes) == 1 and not step.prefills and q.shape[2] == 1:
            # Batch 1 decoding (one row, one token): its context straight into attention,
            # none of the row indexing that batches need.
            _, gather, mask = step.decodes[0]
            kd, vd = kv.read(layer, gather[0], q.dtype)  # (S, Hkv, D)
            out = sdpa(q, kd.transpose(0, 1)[None], vd.transpose(0, 1)[None], mask)
            return out.to(out_dtype)
        q = q[0].transpose(0, 1)  # (N, H, D)
        out = torch.empty_like(q)
        for rows, gather, mask in step.decodes:
            qd = q[rows][:, :, None, :]  # (Bd, H, 1, D)
            kd, vd = kv.read(layer, gather, q.dtype)  # (Bd, S, Hkv, D)
            out[rows] = sdpa(qd, kd.permute(0, 2, 1, 3), vd.permute(0, 2, 1, 3), mask)[:, :, 0]
        for row, count, context, mask in step.prefills:
            qp = q[row:row + count].transpose(0, 1)[None]  # (1, H, T, D)
            kp, vp = kv.read(layer, context, q.dtype)  # (S, Hkv, D)
            out[row:row + count] = sdpa(qp, kp.transpose(0, 1)[None], vp.transpose(0, 1)[None], mask,
                                        mask is None)[0].transpose(0, 1)
        return out.to(out_dtype).transpose(0, 1)[None]


def paged_forward(model, step: StepInput, kv: PagedKV, adapters: tuple[Tensor, list] | None = None,
                  images: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The model over one flattened step; returns the logits (R, V) of step.logit_rows.

    Transformer.forward's own pieces, with attention reading and writing the
    paged pool instead of a per-request cache. adapters: (index (N,), names):
    token i applies LoRA adapter names[index[i]] (acorn.model.lora.use_adapters);
    the head sees only the logit rows, so it gets their part of the index.
    images: (feature rows (M, d), their step rows (M,)): the embeddings of those
    tokens (image placeholders) replaced by the rows, in order."""
    if model.config.positions == "alibi":
        raise AcornError("ALiBi models run on the engine's plain path (paged=False)")
    index, names = adapters if adapters is not None else (None, [])
    head_index = None if index is None else index[step.logit_rows.to(index.device)]
    tokens, positions = step.tokens[None], step.positions[None]
    with lora.use_adapters(model.model, None if index is None else index[None], names), \
            lora.use_adapters(model.lm_head, head_index, names):
        if images is None:
            x = model.embed(tokens, positions)
        else:
            features, rows = images
            mask = torch.zeros_like(tokens, dtype=torch.bool)
            mask[0, rows] = True
            x = model.embed(tokens, positions, features, mask)
        hidden, _ = model.blocks(x, model.position_encoding(positions, x.dtype), PagedAttention(step, kv))
        return model.logits(hidden[0, step.logit_rows])
