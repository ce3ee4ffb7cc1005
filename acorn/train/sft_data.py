"""Supervised fine-tuning data: conversations -> packed rows with a loss mask.

Two input formats, the ones people already have:
  messages            {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}
                      OpenAI style, tool calls and tool results included;
                      rendered with the tokenizer's chat template
  prompt/completion   {"prompt": "...", "completion": "..."} plain strings,
                      trained as raw text: BOS + prompt + completion + EOS
                      (as TRL does for non-conversational data)
  text                {"text": "..."}: a plain document, BOS + text + EOS with
                      the loss on all of it (TRL's language-modeling rows): how
                      pretraining documents are mixed into SFT (replay, so the
                      fine-tune keeps what pretraining taught)

The loss is on what the model should learn to write: the assistant turns
(content, tool calls and the end-of-turn token, from the template's
generation spans) or the completion, never the prompt. Masked positions get
target -100, which cross-entropy ignores.

Packing: short conversations waste most of a fixed-length row as padding, so
several are placed in one row, each with its own document id; the model's
block-diagonal attention (`document_ids`) keeps them from seeing each other
and restarts positions at each one, so a packed row trains exactly like the
conversations one at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
import torch

from acorn.errors import AcornError
from acorn.fileio import read_jsonl_lines

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1 where the token is one the model should learn to produce
    images: tuple[int, ...] = ()  # which pictures the ids' image placeholders stand for, in order (acorn.train.vlm_data)


def load_examples(paths, tok, *, max_len: int) -> tuple[list[Example], int]:
    """Render every conversation; returns the examples and how many were cut to max_len."""
    examples, truncated = [], 0
    for path in paths:
        for lineno, row in read_jsonl_lines(path):
            ex = render_example(row, tok, where=f"{path}:{lineno}")
            if not any(ex.mask):
                continue  # nothing to learn from (no assistant turn)
            if len(ex.ids) > max_len:
                truncated += 1
                ex = Example(ex.ids[:max_len], ex.mask[:max_len])
            examples.append(ex)
    if not examples:
        raise AcornError("no training examples with an assistant turn or a completion in " + ", ".join(map(str, paths)))
    return examples, truncated


def render_example(row: dict, tok, *, where: str = "") -> Example:
    if "messages" in row:
        try:
            r = tok.apply_chat_template(row["messages"], tools=row.get("tools"), return_assistant_mask=True)
        except AcornError as e:  # the template says what is wrong with the conversation; say where it is
            raise AcornError(f"{where}: {e}" if where else str(e)) from None
        return Example(r["input_ids"], r["assistant_mask"])
    if "prompt" in row and "completion" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            raise AcornError(f"{where}: prompt and completion must be strings (for conversations use 'messages')")
        p = tok.encode(row["prompt"], add_bos=tok.bos_id is not None)
        c = tok.encode(row["completion"], add_eos=tok.eos_id is not None)
        return Example(p + c, [0] * len(p) + [1] * len(c))
    if "text" in row:
        if not isinstance(row["text"], str):
            raise AcornError(f"{where}: text must be a string")
        ids = tok.encode(row["text"], add_bos=tok.bos_id is not None, add_eos=tok.eos_id is not None)
        return Example(ids, [0] * (tok.bos_id is not None) + [1] * (len(ids) - (tok.bos_id is not None)))
    raise AcornError(f"{where}: a row needs 'messages' (a conversation), 'prompt' and 'completion', or 'text' "
                     f"(a document); it has {', '.join(map(str, row)) or 'no fields'}")


def pack(examples: list[Example], seq_len: int, pad_id: int) -> list[tuple[list[int], list[int], list[int], list[int]]]:
    """Greedy first-fit packing into rows of seq_len + 1 tokens: (ids, targets-mask, document ids,
    the row's pictures in placeholder order).

    Returns rows whose ids have length seq_len + 1 (the extra one is the last target);
    padding at the end of a row has mask 0 and its own document id.
    """
    rows, cur_ids, cur_mask, cur_doc, cur_images = [], [], [], [], []
    width = seq_len + 1
    for doc, ex in enumerate(examples):
        if cur_ids and len(cur_ids) + len(ex.ids) > width:
            rows.append(_pad(cur_ids, cur_mask, cur_doc, cur_images, width, pad_id))
            cur_ids, cur_mask, cur_doc, cur_images = [], [], [], []
        cur_ids += ex.ids
        cur_mask += ex.mask
        cur_doc += [doc] * len(ex.ids)
        cur_images += ex.images
    if cur_ids:
        rows.append(_pad(cur_ids, cur_mask, cur_doc, cur_images, width, pad_id))
    return rows


def _pad(ids, mask, doc, images, width, pad_id):
    n = width - len(ids)
    return ids + [pad_id] * n, mask + [0] * n, doc + [-1] * n, images


def to_batch(rows):
    """Rows -> Batch(x, y, document_ids): y is next-token ids, IGNORE where not trained on
    or where the next token belongs to another document."""
    from acorn.data.loader import Batch

    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    doc = torch.tensor([r[2] for r in rows], dtype=torch.long)
    # Contiguous, as the pretraining loader's: a compiled model guards on its inputs' strides,
    # and a view of the (B, T + 1) rows would compile a second graph beside the probe's.
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].clone()
    same_doc = doc[:, 1:] == doc[:, :-1]
    y[~(mask[:, 1:] & same_doc)] = IGNORE
    return Batch(x=x, y=y, document_ids=doc[:, :-1].contiguous())


class ItemLoader:
    """Items in micro-batches, in a seeded order, epoch after epoch; resumable exactly. The items
    are SFT's packed rows (collate: to_batch) or the preference stages' pairs and examples
    (acorn.train.prefs_data's collate functions).

    The same interface as acorn.data.loader.TokenLoader (next(), state_dict(),
    load_state_dict(), iter_eval()), so the one training loop runs them all.
    """

    def __init__(self, items: list, collate=to_batch, *, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.items, self.collate, self.batch_size, self.seed = items, collate, batch_size, seed
        self.rank, self.world = rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def __iter__(self):
        return self

    def __next__(self):
        global_batch = self.batch_size * self.world
        if len(self.items) < global_batch:  # checked here: evaluation can work with less
            raise AcornError(f"only {len(self.items)} training items (packed rows, pairs or examples) for a global "
                             f"batch of {global_batch}; lower --train.micro_batch or add data")
        if self.cursor + global_batch > len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.cursor : self.cursor + global_batch]
        self.cursor += global_batch
        mine = idx[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.collate([self.items[i] for i in mine])

    def iter_eval(self, max_batches: int | None = None):
        """The items in their stored order, in batches (all of them when max_batches is None)."""
        stop = len(self.items) if max_batches is None else min(len(self.items), max_batches * self.batch_size)
        for start in range(0, stop, self.batch_size):
            yield self.collate(self.items[start : start + self.batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation()


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A deterministic held-out split (at least one example each when there are two or more)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples)))) if len(examples) > 1 and val_fraction > 0 else 0
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val


