"""A dedicated embedding model: contrastive fine-tuning of a checkpoint (`acorn embed train`).

A language model's mean-pooled states (acorn.rag.embeddings) place texts by
what they look like; retrieval needs a question near the passage that
answers it. InfoNCE with in-batch negatives (van den Oord et al. 2018; as in
DPR, Karpukhin et al. 2020, and E5/GTE) teaches that: a batch of B (question,
passage) pairs is embedded (mean pooling over the tokens, L2-normalised),
the B x B cosine similarities divided by a temperature are the logits, and
the loss is cross-entropy towards the diagonal: each question must pick its
own passage among the batch's B. Every pair of a batch is about a different
person, so no negative is secretly a positive.

The pairs come from the world (acorn.data.world.retrieval_pairs), never its
unknown_eval people: the validation metric is recall@1 of their questions
(eval/unknown_qa.jsonl) against the whole knowledge base. It runs in the one
loop (acorn.train.loop.fit) with its own loss, and writes a Hugging Face
checkpoint that `acorn rag index --embedder RUN/model` loads.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, fit
from acorn.train.optim import OptimConfig
from acorn.train.run import build_model, start


@dataclass
class EmbedConfig:
    data: str = "runs/world"  # a generated world directory (acorn data world)
    out: str = "runs/embed"
    init_from: str = ""  # the checkpoint to start from (required)
    seed: int = 0
    temperature: float = 0.05  # InfoNCE's: lower sharpens the softmax over the batch
    pairs_per_attribute: int = 2  # question phrasings per (person, attribute)
    model: ModelConfig | None = None  # taken from the checkpoint
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10, min_lr_ratio=0.1))
    # micro_batch is the contrastive batch (the negatives); batch_tokens = micro x seq_len: one per step.
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=200, micro_batch=32, seq_len=128,
                                                                 batch_tokens=32 * 128))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=50, batches=0, checkpoint_every=100))


def _ids(tok, text: str, max_len: int) -> list[int]:
    bos = tok.bos_id  # as AcornEmbedder.ids: the same tokens at training and at use
    return (([bos] if bos is not None else []) + tok.encode(text))[:max_len]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(map(len, rows))
    ids = torch.tensor([r + [0] * (t - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in rows])
    return ids, mask


def distinct_batches(keys: list, batch_size: int, rng: random.Random) -> list[list[int]]:
    """The indices of `keys`, shuffled by rng, in batches of batch_size whose keys all differ, so no
    in-batch negative is secretly a positive (a second passage about the same person, a second picture
    with the same caption). Greedy: an item whose key the batch holds already waits for the next batch;
    a last batch of fewer than two is dropped."""
    idx = list(range(len(keys)))
    rng.shuffle(idx)
    batches, current, seen = [], [], set()
    waiting = []
    for i in idx:
        if keys[i] in seen:
            waiting.append(i)
            continue
        current.append(i)
        seen.add(keys[i])
        if len(current) == batch_size:
            batches.append(current)
            current, seen = [], set()
            still = []
            for j in waiting:
                if keys[j] not in seen and len(current) < batch_size:
                    current.append(j)
                    seen.add(keys[j])
                else:
                    still.append(j)
            waiting = still
    if len(current) >= 2:
        batches.append(current)
    return batches


class ContrastiveLoader:
    """Batches for contrastive training: items whose keys all differ (distinct_batches), reshuffled
    every epoch from (seed, epoch), so a resumed run sees the same batches; collate(items) makes
    a batch's tensors. `too_few`: the error when fewer than two keys differ."""

    def __init__(self, items: list, keys: list, batch_size: int, seed: int, collate, too_few: str):
        if len(set(keys)) < 2:
            raise AcornError(too_few)
        self.items, self.keys, self.collate = items, keys, collate
        self.batch_size, self.seed = min(batch_size, len(set(keys))), seed
        self.epoch, self.pos, self.order = 0, 0, self._order(0)

    def _order(self, epoch: int) -> list[list[int]]:
        return distinct_batches(self.keys, self.batch_size, random.Random(f"{self.seed}/{epoch}"))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.pos >= len(self.order):
            self.epoch, self.pos = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        batch = [self.items[i] for i in self.order[self.pos]]
        self.pos += 1
        return self.collate(batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = self._order(self.epoch)


def _collate_pairs(batch: list) -> dict:
    q, qm = _pad([b[0] for b in batch])
    p, pm = _pad([b[1] for b in batch])
    return {"q": q, "q_mask": qm, "p": p, "p_mask": pm}


def pair_loader(pairs: list[tuple[list[int], list[int], str]], batch_size: int, seed: int) -> ContrastiveLoader:
    """Batches of (question, passage, person) pairs, each batch about distinct people."""
    return ContrastiveLoader(pairs, [p for _, _, p in pairs], batch_size, seed, _collate_pairs,
                             "contrastive training needs pairs about at least two people; generate a larger world")


def mean_pool(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit vectors: final hidden states averaged over the real tokens (as acorn.rag.embeddings.embed)."""
    hidden = model(ids, hidden_only=True).hidden.float()
    mean = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(mean, dim=-1)


def info_nce(a: Tensor, b: Tensor, scale: float | Tensor, *, symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """InfoNCE with in-batch negatives over B pairs of unit vectors (row i of a with row i of b): the
    B x B similarities times `scale` (1 / temperature) are logits, and the loss is the cross-entropy
    towards the diagonal, summed over the B rows: each a must pick its own b among the batch's.
    symmetric (CLIP, Radford et al. 2021): the mean of that and the same over the columns (each b
    picking its own a), still summed over the B pairs.
    Returns (the loss summed over pairs, the number of rows of a whose nearest b is their own)."""
    logits = (a @ b.T) * scale
    target = torch.arange(len(a), device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="sum")
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target, reduction="sum")) / 2
    return loss, (logits.argmax(-1) == target).sum()


def info_nce_loss(model, batch: dict, temperature: float = 0.05) -> LossOutput:
    """Sum over the batch's questions of -log softmax(q . p / t)[own passage]; weight = questions."""
    q = mean_pool(model, batch["q"], batch["q_mask"])
    p = mean_pool(model, batch["p"], batch["p_mask"])
    loss, correct = info_nce(q, p, 1.0 / temperature)
    return LossOutput(loss, len(q), {"accuracy": correct})


def recall_at_1(model, tok, questions: list[str], relevant: list[int], passages: list[str], max_len: int) -> float:
    """Share of questions whose nearest passage (cosine) is their own."""
    from acorn.rag.embeddings import embed

    q = embed(model, [_ids(tok, t, max_len) for t in questions])
    p = embed(model, [_ids(tok, t, max_len) for t in passages])
    return float(((q @ p.T).argmax(-1) == torch.tensor(relevant)).float().mean())


def train_embedder(cfg: EmbedConfig, *, resume: bool = False) -> Path:
    from acorn.data.world import read_world, retrieval_pairs
    from acorn.fileio import read_jsonl
    from acorn.tokenizer.bpe import Tokenizer

    if not cfg.init_from:
        raise AcornError("embed train starts from a checkpoint: pass --init_from CHECKPOINT_DIR")
    world_dir = Path(cfg.data)
    if not (world_dir / "world.json").is_file():
        raise AcornError(f"{world_dir}: not a generated world (no world.json); make one with "
                         f"`acorn data world --out {world_dir}`")
    if cfg.temperature <= 0:
        raise AcornError(f"temperature must be positive, got {cfg.temperature}; e.g. --temperature 0.05")
    device, dist = start(cfg)
    tok = Tokenizer.from_pretrained(cfg.init_from)
    model = build_model(cfg, device, tok.vocab_size)
    world = read_world(world_dir / "world.json")
    n = cfg.train.seq_len
    pairs = [(_ids(tok, r["query"], n), _ids(tok, r["passage"], n), r["person"])
             for r in retrieval_pairs(world, cfg.pairs_per_attribute)]
    loader = pair_loader(pairs, cfg.train.micro_batch, cfg.seed)
    kb = list(read_jsonl(world_dir / "knowledge_base.jsonl"))
    kb_index = {r["id"]: i for i, r in enumerate(kb)}
    held = list(read_jsonl(world_dir / "eval" / "unknown_qa.jsonl"))
    if dist.main:
        print(f"embed: {len(pairs):,} question/passage pairs, batches of {loader.batch_size} (in-batch negatives), "
              f"temperature {cfg.temperature}; validated by recall@1 on {len(held)} held-out questions against "
              f"{len(kb)} knowledge-base passages", flush=True)

    def evaluate(m) -> dict:
        return {"recall@1": recall_at_1(m, tok, [r["question"] for r in held], [kb_index[r["kb_id"]] for r in held],
                                        [r["text"] for r in kb], n)}

    loss = functools.partial(info_nce_loss, temperature=cfg.temperature)
    return fit(cfg, model, loader, loss, evaluate=evaluate, device=device, dist=dist, tokenizer=tok, resume=resume,
               stage="embed")
