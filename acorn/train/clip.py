"""CLIP training (`acorn clip train`): a vision encoder and a caption encoder learn one space.

Contrastive pre-training as Radford et al. 2021 do it: a batch of B pictures and
their captions is encoded (acorn.vision.clip), the B x B cosine similarities
times the learned scale are the logits, and the loss is symmetric InfoNCE (the
cross-entropy of each picture over the batch's captions and of each caption
over its pictures, averaged: acorn.train.embed.info_nce, the loss `acorn embed
train` uses). No two pictures of a batch share a caption (in-batch negatives
must be negatives). It runs in the one loop (acorn.train.loop.fit) like every
trainer; the loop's seq_len is the captions' token limit and micro_batch the
contrastive batch, so its "tokens" are pairs x seq_len (the progress bar's
tok/s is pairs per second times seq_len).

Data: the world's pictures (`acorn data world --images`), split train. Each
evaluation reports the symmetric loss on the eval split (val_loss) and zero-shot
accuracy per question kind (acorn.vision.zero_shot: zs_count, zs_colour, ...).

The caption tokenizer: a directory (--tokenizer), or by default one trained here
on the training captions: bytes only (--merges 0), so every letter and digit is a
token and a name or number never seen in training still reaches the text encoder
letter by letter; --merges N makes it a BPE (words and seen names become a token
or a few). Bytes learnt faster here: 1,200 steps on the default world's pictures
gave 54% whole-caption zero-shot accuracy from bytes, 25% with 500 merges. It is
saved with the model, a transformers CLIPModel directory (RUN/model).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acorn.errors import AcornError
from acorn.train.embed import ContrastiveLoader, info_nce
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, fit
from acorn.train.optim import OptimConfig
from acorn.train.run import start
from acorn.vision.clip import CLIP, CLIPConfig, caption_ids, pad_captions


@dataclass
class ClipConfig:
    world: str = "runs/world"  # a world with pictures (`acorn data world --images`); trains on its train split
    out: str = "runs/clip"  # run directory: metrics.jsonl, checkpoints/, model/ (a transformers CLIPModel)
    seed: int = 0  # the weights and the batch order
    tokenizer: str = ""  # the captions' tokenizer directory; "": trained here on the training captions
    merges: int = 0  # BPE merges of a tokenizer trained here (fewer if the captions support fewer); 0: bytes only
    model: CLIPConfig = field(default_factory=CLIPConfig)
    # CLIP's AdamW (beta2 0.98, weight decay 0.2), warmup then cosine; at 1,200 steps 2e-3 was no better than 1e-3
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=30, min_lr_ratio=0.05,
                                                                   weight_decay=0.2, beta2=0.98))
    # micro_batch is the contrastive batch (its pictures are each other's negatives); seq_len the caption token
    # limit. float32: at this size bf16 autocast was slower on CPU (0.3-0.6 s against 0.1-0.25 s a step).
    # 3,000 steps: 4-5 minutes on 2 shared CPU cores; the whole-caption zero-shot accuracy on the default world's
    # eval pictures was 54% after 1,200 steps, 87% after 3,000 (docs/BENCHMARKS.md, section clip)
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=3000, micro_batch=32, seq_len=48,
                                                                 batch_tokens=32 * 48, dtype="float32"))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=1000, batches=4, checkpoint_every=1000))


def image_caption_loader(pixels: torch.Tensor, captions: list[list[int]], keys: list[str], batch_size: int,
                         seed: int, pad_id: int | None) -> ContrastiveLoader:
    """Batches {"pixels": (B, 3, S, S) in [0, 1], "ids": (B, T), "lengths": (B,)} with distinct captions."""
    def collate(items: list[int]) -> dict:
        ids, lengths = pad_captions([captions[i] for i in items], pad_id)
        return {"pixels": pixels[items].float() / 255.0, "ids": ids, "lengths": lengths}

    return ContrastiveLoader(list(range(len(keys))), keys, batch_size, seed, collate,
                             "contrastive training needs pictures with at least two different captions; draw "
                             "more with `acorn data world --images N`")


def clip_loss(model, batch: dict) -> LossOutput:
    """Symmetric InfoNCE summed over the batch's pairs; weight = pairs. Metrics: pictures whose nearest
    caption is their own (accuracy), and the scale (1 / temperature) the similarities were multiplied by."""
    images, texts, scale = model(batch["pixels"], batch["ids"], batch["lengths"])
    loss, correct = info_nce(images, texts, scale, symmetric=True)
    return LossOutput(loss, len(images), {"accuracy": correct, "scale": scale.detach() * len(images)})


def caption_tokenizer(cfg: ClipConfig, captions: list[str]):
    from acorn.chat.formats import get_format
    from acorn.tokenizer.bpe import Tokenizer

    if cfg.tokenizer:
        return Tokenizer.from_pretrained(cfg.tokenizer)
    if cfg.merges < 0:
        raise AcornError(f"merges must be >= 0, got {cfg.merges}")
    with warnings.catch_warnings():  # captions are few and regular: fewer merges than asked is expected
        warnings.simplefilter("ignore")
        return Tokenizer.train(captions, 256 + len(get_format("acorn").special_tokens) + cfg.merges)


def train_clip(cfg: ClipConfig, *, resume: bool = False) -> Path:
    from acorn.vision.images import load_pixels
    from acorn.vision.zero_shot import read_world_images, world_people, world_zero_shot

    rows = read_world_images(cfg.world)  # the missing-pictures error first, before any work
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    if not train_rows:
        raise AcornError(f"{cfg.world}: no pictures in the train split; draw more with `acorn data world --images N`")
    text = cfg.model.text
    if cfg.train.seq_len > text.max_len:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds model.text.max_len {text.max_len} (the caption "
                         "encoder's positions); lower one or raise the other")
    device, dist = start(cfg)
    tok = caption_tokenizer(cfg, [r["caption"] for r in train_rows])
    if tok.eos_id is None:
        raise AcornError(f"{cfg.tokenizer}: the tokenizer has no EOS token, where CLIP reads a caption; use another")
    if text.vocab_size and text.vocab_size < tok.vocab_size:
        raise AcornError(f"model.text.vocab_size {text.vocab_size} is smaller than the tokenizer's {tok.vocab_size}; "
                         "leave it at 0 to take the tokenizer's")
    text.vocab_size = text.vocab_size or tok.vocab_size
    text.bos_id, text.eos_id, text.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
    size = cfg.model.vision.image_size
    pixels = load_pixels([r["path"] for r in train_rows], size)  # a corrupt file is named here
    ids = [caption_ids(tok, r["caption"], cfg.train.seq_len) for r in train_rows]
    loader = image_caption_loader(pixels, ids, [r["caption"] for r in train_rows], cfg.train.micro_batch, cfg.seed,
                                  tok.pad_id)
    model = CLIP(cfg.model).to(device)
    eval_pixels = load_pixels([r["path"] for r in eval_rows], size) if eval_rows else None
    people = world_people(cfg.world)
    if dist.main:
        kinds = ", ".join(f"{sum(r['kind'] == k for r in train_rows)} {k}" for k in ("shapes", "number", "badge"))
        print(f"clip: {len(train_rows):,} training pictures ({kinds}), {len(eval_rows):,} eval; batches of "
              f"{loader.batch_size} with distinct captions; caption tokenizer: "
              f"{cfg.tokenizer or f'trained here, {tok.vocab_size} tokens'}", flush=True)

    def evaluate(m) -> dict:
        if eval_pixels is None:
            return {}
        out = {f"zs_{k}": r["accuracy"] for k, r in world_zero_shot(m, tok, eval_rows, eval_pixels, people).items()}
        val = image_caption_loader(eval_pixels, [caption_ids(tok, r["caption"], cfg.train.seq_len) for r in eval_rows],
                                   [r["caption"] for r in eval_rows], cfg.train.micro_batch, cfg.seed, tok.pad_id)
        total = n = 0.0
        for batch in val.order[:cfg.eval.batches]:
            b = val.collate(batch)
            loss = clip_loss(m, {k: v.to(device) for k, v in b.items()})
            total, n = total + float(loss.loss), n + float(loss.weight)
        return {"val_loss": total / n, **out} if n else out

    out = fit(cfg, model, loader, clip_loss, evaluate=evaluate, device=device, dist=dist, tokenizer=tok,
              resume=resume, stage="clip")
    if dist.main:
        last = next((json.loads(line) for line in reversed((out / "metrics.jsonl").read_text().splitlines())
                     if '"zs_' in line), None)
        if last:
            print("zero-shot on the eval pictures: " + ", ".join(f"{k[3:]} {v:.1%}" for k, v in last.items()
                                                              if k.startswith("zs_")), flush=True)
    return out
