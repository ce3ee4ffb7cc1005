"""Pretraining: next-token cross-entropy on token shards, the recipe of the seeds.

A config, a loader and a loss handed to the one training loop
(acorn.train.loop.fit), which does the rest: gradient accumulation, bf16
autocast where the hardware has it, clipping, a guard that skips steps whose
loss or gradient is not finite, exact resume, DDP / FSDP2 under torchrun, and
the outputs. What is pretraining's own:
- the data: TokenLoader rows of seq_len + 1 consecutive tokens from the shards;
- the loss (`next_token_loss`): cross-entropy of every next token, the MoE
  load-balancing term added where the model has one;
- the evaluation (`evaluate`): validation loss, perplexity = exp(loss), and
  bits per byte, which unlike the loss compares across tokenizers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from acorn.errors import AcornError
from acorn.fileio import read_json
from acorn.model.lora import LoRAConfig
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, fit
from acorn.train.optim import OptimConfig
from acorn.train.run import build_model, start


# ----------------------------------------------------------------- config
@dataclass
class PretrainConfig:
    data: str = "runs/data"  # directory of token shards (`acorn data prepare`)
    out: str = "runs/pretrain"  # run directory: checkpoints, metrics, model/, report.md
    seed: int = 0  # initial weights and data order
    init_from: str | None = None  # a Hugging Face / Acorn checkpoint directory to start from (sets model)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("micro"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # with --init_from: continued pretraining of adapters

    LIMITS: ClassVar[dict[str, str]] = {"seed": ">= 0", "train.max_steps": ">= 1"}


# ---------------------------------------------------------------- stage
def pretrain(cfg: PretrainConfig, *, resume: bool = False, probe: Callable[[nn.Module], dict] | None = None) -> Path:
    """Pretrain on the token shards in cfg.data; returns the run directory.

    probe: called with the model (eval mode, no gradients) at every evaluation
    (--eval.every), its numbers logged in metrics.jsonl beside the validation
    loss: a behaviour measured while it forms (benchmarks/icl.py's curves)."""
    from acorn.data.loader import TokenLoader

    if probe is not None and not cfg.eval.every:
        raise AcornError("a probe runs at every evaluation, and --eval.every is 0: set --eval.every N")
    device, dist = start(cfg)
    meta = _data_meta(Path(cfg.data))
    model = build_model(cfg, device, meta["tokenizer"]["vocab_size"])
    loader = TokenLoader(cfg.data, "train", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                         seed=cfg.seed, rank=dist.rank, world_size=dist.world, pack_documents=cfg.train.pack_documents)
    tok = _tokenizer(meta)
    # Only read when evaluating: data prepared without a validation split trains with --eval.every 0.
    validate = None
    if cfg.eval.every:
        try:
            val_loader = TokenLoader(cfg.data, "val", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                                     seed=cfg.seed, pack_documents=cfg.train.pack_documents)
            validate = functools.partial(evaluate, loader=val_loader, batches=cfg.eval.batches, device=device,
                                         token_nbytes=token_nbytes(tok, device) if tok is not None else None)
        except AcornError as e:  # a tiny corpus may hold back too little to evaluate on
            if dist.main:
                print(f"no validation: {e}", flush=True)
    if probe is not None:
        validated = validate
        validate = lambda m: (validated(m) if validated else {}) | probe(m)  # noqa: E731
    return fit(cfg, model, loader, next_token_loss, evaluate=validate, device=device, dist=dist, tokenizer=tok,
               resume=resume, stage="pretrain")


# ---------------------------------------------------------------- loss
def image_inputs(batch, device=None) -> dict:
    """The batch's pictures as the model's pixel_values keyword, when it has any (the
    image conversations of `acorn vlm train`); nothing for text, so a text model is
    called as it always is."""
    pixels = getattr(batch, "pixel_values", None)
    if pixels is None:
        return {}
    return {"pixel_values": pixels if device is None else pixels.to(device)}


def next_token_loss(model, batch) -> LossOutput:
    """Cross-entropy of every next token, summed over the trained ones (targets
    != -100), weight = their number: pretraining's loss, and SFT's, whose
    batches carry -100 wherever the assistant is not speaking, and the VLM
    stages', whose batches also carry the pictures (Batch.pixel_values). A MoE model's
    load-balancing term is added per token and logged apart as aux_loss."""
    out = model(batch.x, targets=batch.y, document_ids=batch.document_ids, **image_inputs(batch))
    n = (batch.y != -100).sum()
    # The model gives the mean over the trained tokens, nan for a micro-batch
    # without any (an SFT row whose answer was cut off), which must add nothing,
    # not poison the step. A tensor count: no wait for the device.
    loss = torch.where(n > 0, out.loss * n, 0.0)
    metrics = {}
    if out.aux_loss is not None:
        loss = loss + out.aux_loss * n
        metrics["aux_loss"] = out.aux_loss.detach() * n
    return LossOutput(loss, n, metrics)


# ----------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, *, loader, batches: int, device, token_nbytes: torch.Tensor | None = None) -> dict:
    """Validation loss (nats per token), perplexity = exp(loss), and bits per
    byte: the same text's loss divided by its UTF-8 size, which unlike the loss
    compares across tokenizers. Targets that are special tokens (no bytes of
    text) are left out of bits per byte, as nanochat does. Called by fit in
    eval mode and under autocast (the `evaluate` of acorn.train.loop)."""
    import torch.nn.functional as F

    nll_sum = n = nll_text = n_bytes = 0.0
    for batch in loader.iter_eval(batches):
        x, y = batch.x.to(device), batch.y.to(device)
        docs = batch.document_ids.to(device) if batch.document_ids is not None else None
        logits = model(x, document_ids=docs, **image_inputs(batch, device)).logits
        y = y.flatten()
        nll = F.cross_entropy(logits.float().flatten(0, 1), y, ignore_index=-100, reduction="none")
        valid = y != -100
        nll_sum += nll[valid].sum().item()
        n += valid.sum().item()
        if token_nbytes is not None:
            b = token_nbytes[y.clamp(min=0)] * valid
            nll_text += nll[b > 0].sum().item()
            n_bytes += b.sum().item()
    if not n:
        return {}
    loss = nll_sum / n
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    if n_bytes:
        out["val_bpb"] = nll_text / math.log(2) / n_bytes
    return out


def token_nbytes(tok, device) -> torch.Tensor:
    """UTF-8 length of every token's text; 0 for special tokens."""
    return torch.tensor([0 if tok.is_special(i) else len(tok.token_bytes(i)) for i in range(tok.vocab_size)],
                        dtype=torch.float64, device=device)


# ------------------------------------------------------------- helpers
def _tokenizer(meta: dict):
    """The tokenizer the data was prepared with, if it is still where it was."""
    path = meta.get("tokenizer", {}).get("path")
    if not path or not Path(path).exists():
        return None
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.from_pretrained(path)


def _data_meta(data: Path) -> dict:
    if not (data / "meta.json").exists():
        raise AcornError(f"{data}: no prepared data (meta.json); run `acorn data prepare INPUTS --tokenizer DIR --out {data}`")
    return read_json(data / "meta.json")
