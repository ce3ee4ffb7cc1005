"""Supervised fine-tuning: teach a pretrained model to answer, not to continue.

The same loss as pretraining (acorn.train.pretrain.next_token_loss) in the one
loop (acorn.train.loop.fit), on different rows: conversations rendered with the chat template, the loss only
on the assistant's tokens, several conversations packed per row without
attention between them (acorn.train.sft_data). It starts from a checkpoint
directory (Acorn's or any Hugging Face one Acorn loads) whose tokenizer files
it uses, and writes a Hugging Face directory again.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from acorn.errors import AcornError
from acorn.model.lora import LoRAConfig
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, accumulation, fit
from acorn.train.optim import OptimConfig
from acorn.train.pretrain import evaluate, next_token_loss, token_nbytes
from acorn.train.run import build_model, start


@dataclass
class SFTConfig:
    data: str = "runs/world/sft.jsonl"  # JSONL files, directories or globs; several separated by commas
    out: str = "runs/sft"  # run directory: checkpoints, metrics, model/ (or adapter/), report.md
    init_from: str = ""  # the pretrained checkpoint directory (required)
    seed: int = 0  # data order and the validation split
    epochs: float = 1.0  # passes over the data, used when train.max_steps is 0
    val_fraction: float = 0.02  # share of conversations held out for validation
    model: ModelConfig | None = None  # taken from the --init_from checkpoint
    # A fine-tune moves a trained model a little: a lower peak rate, a short warmup.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=20, min_lr_ratio=0.0))
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=0, micro_batch=8, seq_len=256,
                                                                 batch_tokens=8192))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=50, batches=10, checkpoint_every=200))
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # --lora.r 16: train adapters, write RUN/adapter

    LIMITS: ClassVar[dict[str, str]] = {"seed": ">= 0", "epochs": "> 0", "val_fraction": "[0, 1)"}


def sft(cfg: SFTConfig, *, resume: bool = False) -> Path:
    from acorn.fileio import expand_inputs
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.sft_data import ItemLoader, load_examples, pack, split_examples

    if not cfg.init_from:
        raise AcornError("sft starts from a pretrained model: pass --init_from CHECKPOINT_DIR")
    device, dist = start(cfg)
    try:
        tok = Tokenizer.from_pretrained(cfg.init_from)
    except AcornError as e:
        raise AcornError(f"the checkpoint's tokenizer: {e}") from None
    model = build_model(cfg, device, tok.vocab_size)  # refuses a seq_len past the model's context

    paths = expand_inputs([p for p in cfg.data.split(",") if p], (".jsonl",), any_file=False)
    examples, truncated = load_examples(paths, tok, max_len=cfg.train.seq_len + 1)
    train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.seed)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    rows, val_rows = pack(train_ex, cfg.train.seq_len, pad), pack(val_ex, cfg.train.seq_len, pad)
    loader = ItemLoader(rows, batch_size=cfg.train.micro_batch, seed=cfg.seed, rank=dist.rank, world_size=dist.world)
    val_loader = ItemLoader(val_rows, batch_size=cfg.train.micro_batch, seed=cfg.seed)

    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len, dist.world)
    steps_per_epoch = max(1, len(rows) // (cfg.train.micro_batch * dist.world * accum))
    if cfg.train.max_steps <= 0:
        cfg.train.max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if dist.main:
        trained = sum(sum(e.mask) for e in train_ex)
        print(f"sft: {len(examples):,} conversations ({len(train_ex):,} train, {len(val_ex):,} held out"
              f"{f', {truncated} cut to {cfg.train.seq_len + 1} tokens' if truncated else ''}) packed into "
              f"{len(rows):,} rows of {cfg.train.seq_len} ({sum(map(len, (e.ids for e in train_ex))) / (len(rows) * (cfg.train.seq_len + 1)):.0%} "
              f"filled); {trained:,} tokens trained on per epoch; {cfg.train.max_steps} steps", flush=True)
    # The mask lives in the targets (-100 outside the assistant's turns), so pretraining's loss is SFT's.
    validate = functools.partial(evaluate, loader=val_loader, batches=cfg.eval.batches, device=device,
                                 token_nbytes=token_nbytes(tok, device))
    return fit(cfg, model, loader, next_token_loss, evaluate=validate, device=device, dist=dist, tokenizer=tok,
               resume=resume, stage="sft")
