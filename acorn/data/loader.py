"""Batches of next-token training rows from the token shards of acorn.data.prepare.

The concept is nanoGPT's `get_batch`: rows of seq_len + 1 consecutive tokens
read from memory-mapped shards, x = row[:-1] and y = row[1:] (the target at
each position is the next token). What Acorn adds is that the order is a pure
function of (seed, epoch, cursor), so a run restarts exactly where it stopped,
and that data-parallel ranks split one global batch instead of each drawing
their own.

Rows. The shards of a split are one concatenated stream. Two ways to cut it:
- default: non-overlapping windows at offsets 0, L, 2L, ... (L = seq_len; a
  window's last target is the next window's first input), so an epoch sees
  every token once, across document boundaries as in GPT-2 pretraining.
- pack_documents=True: every row starts at a document start (a BOS) and holds
  whole documents, the last one cut at the row's end; the next row starts at
  the first document that begins at or after that end, so the cut remainder
  is dropped and no token is seen twice in an epoch (nanochat's BOS-aligned
  packing; a document longer than L keeps only its first L + 1 tokens).
  `document_ids` numbers the documents within each row, for the model's
  block-diagonal attention (Transformer.forward(..., document_ids=)).

Order. Epoch e visits the rows in the permutation drawn by
numpy.random.default_rng([seed, e]). A global batch is the next
batch_size * world_size rows of that permutation; rank r takes rows
[r * batch_size, (r + 1) * batch_size) of it, so world_size ranks together see
exactly the batch one process with batch_size * world_size would see. An epoch
ends when fewer rows than a global batch are left (they are skipped).

State. `state_dict()` is {epoch, cursor (rows of this epoch already handed
out, globally), and what the rows depend on}; there is no RNG state to carry
because the permutation is recomputed from (seed, epoch). It can be restored
with a different world_size or batch_size: the next global batch starts at the
same row.

API: iterating a TokenLoader yields `Batch(x, y, document_ids)`, int64 tensors
of shape (batch_size, seq_len) (document_ids is None unless pack_documents),
forever, epoch after epoch. `iter_eval(max_batches)` is a separate, finite,
in-order pass over the split (usually "val") that leaves the training position
alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from acorn.errors import AcornError
from acorn.fileio import read_json


@dataclass
class Batch:
    x: torch.Tensor                            # (B, T) int64 inputs
    y: torch.Tensor                            # (B, T) int64 next-token targets
    document_ids: torch.Tensor | None = None   # (B, T) int64, 0-based document index within each row
    pixel_values: torch.Tensor | None = None   # (N, 3, S, S) normalised: the images x's placeholder tokens stand for, in order


def _packed_starts(bos_positions: np.ndarray, row_len: int, n_tokens: int) -> np.ndarray:
    """Greedy BOS-aligned row starts: each row starts at the first BOS at or after the previous row's end."""
    starts = []
    i = 0
    while i < len(bos_positions):
        s = int(bos_positions[i])
        if s + row_len > n_tokens:
            break
        starts.append(s)
        i = int(np.searchsorted(bos_positions, s + row_len - 1, side="left"))
    return np.asarray(starts, dtype=np.int64)


def open_shards(data_dir: str | os.PathLike, split: str) -> tuple[dict, list[np.memmap]]:
    """(meta.json, the split's shards memory-mapped), after checking that
    preparation finished and every shard has the size meta.json records."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise AcornError(f"{data_dir}: no meta.json; make the data dir with "
                         f"`acorn data prepare INPUTS --tokenizer TOK --out {data_dir}`")
    meta = read_json(meta_path)
    if not meta.get("complete"):
        raise AcornError(f"{data_dir}: preparation did not finish; re-run the same `acorn data prepare` "
                         "command to complete it")
    if split not in meta["shards"]:
        raise AcornError(f"unknown split {split!r}; choose one of {', '.join(meta['shards'])}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    shards = []
    for rec in meta["shards"][split]:
        path = data_dir / rec["file"]
        if not path.is_file() or path.stat().st_size != rec["tokens"] * dtype.itemsize:
            raise AcornError(f"{path}: missing or not the size meta.json records; re-run `acorn data prepare` "
                             "with the same arguments to rebuild it")
        shards.append(np.memmap(path, dtype=dtype, mode="r"))
    return meta, shards


def documents(data_dir: str | os.PathLike, split: str = "train") -> Iterator[np.ndarray]:
    """The split's documents in order, each the token ids from its BOS (kept)
    to the next document's BOS. prepare writes every document as [BOS] ids
    [EOS], closes shards only between documents, and a document cannot hold
    a BOS of its own, so each BOS starts exactly one document."""
    meta, shards = open_shards(data_dir, split)
    bos = meta["tokenizer"]["bos_id"]
    for shard in shards:
        starts = np.flatnonzero(shard == bos)
        for a, b in zip(starts, [*starts[1:], len(shard)]):
            yield np.asarray(shard[a:b])


class TokenLoader:
    """Deterministic, resumable, data-parallel batches over one split of a prepared data dir."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pack_documents: bool = False,
    ):
        if batch_size < 1 or seq_len < 1:
            raise AcornError(f"batch size and sequence length must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise AcornError(f"rank {rank} is outside world size {world_size}; ranks run 0..world_size-1")
        self.data_dir = Path(data_dir)
        meta, self._shards = open_shards(self.data_dir, split)
        self.split, self.batch_size, self.seq_len, self.seed = split, batch_size, seq_len, seed
        self.rank, self.world_size, self.pack_documents = rank, world_size, pack_documents
        self.bos_id = meta["tokenizer"]["bos_id"]
        self.vocab_size = meta["tokenizer"]["vocab_size"]
        self._offsets = np.cumsum([0, *(len(s) for s in self._shards)])
        self.num_tokens = int(self._offsets[-1])

        row_len = seq_len + 1
        if pack_documents:
            bos = np.concatenate([np.flatnonzero(s == self.bos_id) + off
                                  for s, off in zip(self._shards, self._offsets)] or [np.zeros(0, np.int64)])
            self._starts = _packed_starts(bos, row_len, self.num_tokens)
        else:
            self._starts = np.arange(max(0, (self.num_tokens - 1) // seq_len), dtype=np.int64) * seq_len
        self.global_batch = batch_size * world_size
        if len(self._starts) == 0:
            raise AcornError(f"the {split} split ({self.num_tokens:,} tokens) has no row of {seq_len} tokens; "
                             "lower the sequence length or prepare more data")
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = -1, None

    # ----------------------------------------------------------------- sizes
    @property
    def num_rows(self) -> int:
        return len(self._starts)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    # ------------------------------------------------------------- iteration
    def __iter__(self) -> "TokenLoader":
        return self

    def __next__(self) -> Batch:
        if self.num_rows < self.global_batch:  # checked here: evaluation can work with less
            raise AcornError(
                f"the {self.split} split ({self.num_tokens:,} tokens) has {self.num_rows} rows of {self.seq_len} "
                f"tokens, fewer than one global batch of {self.global_batch}; lower the batch size or sequence "
                "length, or prepare more data")
        if self.cursor + self.global_batch > self.num_rows:
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
            self._perm_epoch = self.epoch
        lo = self.cursor + self.rank * self.batch_size
        rows = self._starts[self._perm[lo : lo + self.batch_size]]
        self.cursor += self.global_batch
        return self._batch(rows)

    def iter_eval(self, max_batches: int | None = None) -> Iterator[Batch]:
        """One in-order pass over all of the split's rows (this rank's share of each
        global batch; the last batch may be smaller, or empty for some ranks)."""
        n = math.ceil(self.num_rows / self.global_batch)
        n = n if max_batches is None else min(max_batches, n)
        for step in range(n):
            lo = step * self.global_batch + self.rank * self.batch_size
            starts = self._starts[lo : min(lo + self.batch_size, self.num_rows)]
            if len(starts):
                yield self._batch(starts)

    def _batch(self, starts: np.ndarray) -> Batch:
        rows = np.stack([self._read(int(s), self.seq_len + 1) for s in starts]).astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
        doc = None
        if self.pack_documents:
            doc = torch.from_numpy(np.cumsum(rows[:, :-1] == self.bos_id, axis=1) - 1)
        return Batch(x, y, doc)

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream, across shard ends."""
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts, pos, end = [], start, start + length
        while pos < end:
            shard = self._shards[i]
            lo = pos - int(self._offsets[i])
            take = min(end - pos, len(shard) - lo)
            parts.append(shard[lo : lo + take])
            pos += take
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "split": self.split,
                "seq_len": self.seq_len, "pack_documents": self.pack_documents, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that wrote `state` stopped."""
        mine = self.state_dict()
        for key in ("seed", "split", "seq_len", "pack_documents", "num_rows"):
            if state.get(key) != mine[key]:
                raise AcornError(f"loader state was saved with {key}={state.get(key)!r}, this loader has "
                                 f"{mine[key]!r}; resume with the same data and settings")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
