"""`acorn vlm train`: LLaVA's two stages (Liu et al. 2023, "Visual Instruction Tuning") in the one loop.

The VLM is three trained parts joined (acorn.vision.llava): the vision encoder
of a CLIP run (`acorn clip train`), a new projector, and a chat model (`acorn
sft`) whose tokenizer gets the <image> special token and whose embeddings grow
by its row (acorn.vision.llava.add_image_token: every other id unchanged).

  stage 1  alignment: only the projector trains, on "Describe the picture." ->
           the caption; the encoder and the decoder are frozen, so the
           projector learns to write image rows the decoder already reads
  stage 2  instruction tuning: the projector and the decoder train on the
           pictures' questions (acorn.train.vlm_data); the encoder stays frozen
           unless --train_encoder true (CLIP did not learn to read; this may)

Stage 2 goes on from stage 1's model (--init_from RUN1/model) or starts from
--clip and --model with a fresh projector. Both are SFT in every other way: the
rows are chat conversations with the loss on the answer only, packed several to
a row without attention between them, and the loss and validation are SFT's
(acorn.train.pretrain.next_token_loss / evaluate), which pass the batch's
pictures to the model (Batch.pixel_values). RUN/model is written by
acorn.vision.llava.save_llava (transformers' LlavaForConditionalGeneration layout).

The caption control (--images caption): the chat model alone, trained the same
way on the same conversations with each picture's caption as text in place of
the image; `acorn vlm eval` of it measures the questions with perfect perception.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from acorn.errors import AcornError
from acorn.train.loop import EvalConfig, LoopConfig, accumulation, fit
from acorn.train.optim import OptimConfig


@dataclass
class VLMConfig:
    world: str = "runs/world"  # a world with pictures (`acorn data world --images`): train split trains, eval validates
    out: str = "runs/vlm"  # run directory: checkpoints, metrics, report.md, model/ (a transformers LLaVA directory)
    stage: int = 1  # 1: alignment (projector only, on captions); 2: instruction tuning (projector + decoder, questions)
    clip: str = ""  # a CLIP checkpoint (`acorn clip train`'s RUN/model) whose vision encoder the VLM sees with
    model: str = ""  # the chat model (`acorn sft`'s RUN/model): the decoder, given the <image> token here
    init_from: str = ""  # a VLM to go on from (stage 1's RUN/model for stage 2), in place of --clip and --model
    train_encoder: bool = False  # stage 2: train the vision encoder too (frozen by default, as in LLaVA)
    images: Literal["pixels", "caption"] = "pixels"  # caption: the caption-in-prompt control, a text-only --model
    seed: int = 0  # data order and the projector's initial weights
    epochs: float = 0.0  # passes over the training conversations when train.max_steps is 0; 0: STAGE_EPOCHS
    # LLaVA trains the projector alone at 1e-3; here stage 2 too (the chat model's own SFT rate), short warmup.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, min_lr_ratio=0.0))
    # A conversation is 64 image tokens and ~15-35 of text: 256-token rows hold 2-3. float32: the chat model's size
    # (1M parameters) gains nothing from bf16 autocast on these CPUs and loses precision.
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=0, micro_batch=8, seq_len=256,
                                                                 batch_tokens=2048, dtype="float32"))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=100, batches=10, checkpoint_every=500))

    LIMITS: ClassVar[dict[str, str]] = {"stage": "[1, 2]", "seed": ">= 0", "epochs": ">= 0"}


# Epochs per stage, measured on the default world (docs/BENCHMARKS.md, vlm): stage 2 after one epoch
# answered colours 39% right, after four 99.8%; three epochs of stage 1 instead of one lowered the caption
# loss (val 5.3 -> 5.0) and raised the shape answers after stage 2 from 65% to 89% (87% with stage 1 at lr
# 3e-3: the rate is not what matters). 3 + 4 epochs: ~2 + 5 min on one core.
STAGE_EPOCHS = {1: 3.0, 2: 4.0}


def load_vlm(cfg: VLMConfig, device):
    """(model, tokenizer) to train: a VLM from --init_from, or one joined from --clip and --model; for the
    caption control the chat model alone. Frozen parts have requires_grad False."""
    from acorn.model.checkpoint import load as load_checkpoint
    from acorn.tokenizer.bpe import Tokenizer

    if cfg.images == "caption":
        if not cfg.model or cfg.clip or cfg.init_from:
            raise AcornError("the caption control (--images caption) trains a text-only chat model: pass --model "
                             "CHAT_DIR and neither --clip nor --init_from")
        return load_checkpoint(cfg.model, dtype="float32", device=str(device)).train(), \
            Tokenizer.from_pretrained(cfg.model)
    if cfg.init_from:
        if cfg.clip or cfg.model:
            raise AcornError("--init_from is a whole VLM: give it alone, or --clip and --model to join a new one")
        from acorn.vision.llava import load_llava

        model, tok = load_llava(cfg.init_from, device=str(device), dtype="float32")
    else:
        if not cfg.clip or not cfg.model:
            raise AcornError("a new VLM joins a CLIP vision encoder and a chat model: pass --clip CLIP_DIR (`acorn "
                             "clip train`'s RUN/model) and --model CHAT_DIR (`acorn sft`'s RUN/model), or --init_from "
                             "a VLM")
        from acorn.vision.clip import load_clip
        from acorn.vision.llava import Llava, LlavaConfig, add_image_token

        clip, _ = load_clip(cfg.clip)
        language = load_checkpoint(cfg.model, dtype="float32", device="cpu")
        try:
            tok = Tokenizer.from_pretrained(cfg.model)
        except AcornError as e:
            raise AcornError(f"the chat model's tokenizer: {e}") from None
        tok, image_id = add_image_token(tok, language)
        model = Llava(LlavaConfig(vision=clip.config.vision, text=language.config, image_token_id=image_id),
                      vision=clip.vision_model, language=language).to(device)
    model.train()
    model.vision.requires_grad_(cfg.stage == 2 and cfg.train_encoder)
    model.language.requires_grad_(cfg.stage == 2)
    model.projector.requires_grad_(True)
    return model, tok


def train_vlm(cfg: VLMConfig, *, resume: bool = False) -> Path:
    from acorn.train.pretrain import evaluate, next_token_loss, token_nbytes
    from acorn.train.run import start
    from acorn.train.sft_data import ItemLoader, pack
    from acorn.train.vlm_data import examples, image_batch
    from acorn.vision.images import load_pixels
    from acorn.vision.zero_shot import read_world_images

    if cfg.stage not in (1, 2):
        raise AcornError(f"--stage {cfg.stage}: choose 1 (alignment) or 2 (instruction tuning)")
    if cfg.train_encoder and cfg.stage == 1:
        raise AcornError("--train_encoder trains the vision encoder in stage 2; stage 1 trains the projector alone")
    if cfg.images == "caption" and (cfg.stage == 1 or cfg.train_encoder):
        raise AcornError("the caption control is a text-only model, with no projector to align or encoder to "
                         "train: train it with --stage 2 and without --train_encoder")
    rows = read_world_images(cfg.world)  # the missing-pictures error before any model loads
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "eval"]
    if not train_rows:
        raise AcornError(f"{cfg.world}: no pictures in the train split; draw more with `acorn data world --images N`")
    device, dist = start(cfg)
    model, tok = load_vlm(cfg, device)
    max_seq = model.config.text.max_seq_len if cfg.images == "pixels" else model.config.max_seq_len
    if cfg.train.seq_len > max_seq:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds the decoder's max_seq_len {max_seq}")

    image_tokens, pixels, val_pixels, mean, std = None, None, None, None, None
    if cfg.images == "pixels":
        vision = model.config.vision
        image_tokens, mean, std = model.config.tokens_per_image, vision.image_mean, vision.image_std
        pixels = load_pixels([r["path"] for r in train_rows], vision.image_size)
        val_pixels = load_pixels([r["path"] for r in val_rows], vision.image_size) if val_rows else None
    train_ex = examples(tok, train_rows, cfg.stage, image_tokens=image_tokens, max_len=cfg.train.seq_len + 1)
    val_ex = examples(tok, val_rows, cfg.stage, image_tokens=image_tokens, max_len=cfg.train.seq_len + 1)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    train_packed, val_packed = pack(train_ex, cfg.train.seq_len, pad), pack(val_ex, cfg.train.seq_len, pad)
    loader = ItemLoader(train_packed, functools.partial(image_batch, pixels=pixels, mean=mean, std=std),
                        batch_size=cfg.train.micro_batch, seed=cfg.seed, rank=dist.rank, world_size=dist.world)
    val_loader = ItemLoader(val_packed, functools.partial(image_batch, pixels=val_pixels, mean=mean, std=std),
                            batch_size=cfg.train.micro_batch, seed=cfg.seed)

    accum = accumulation(cfg.train.batch_tokens, cfg.train.micro_batch, cfg.train.seq_len, dist.world)
    steps_per_epoch = max(1, len(train_packed) // (cfg.train.micro_batch * dist.world * accum))
    if cfg.train.max_steps <= 0:
        cfg.train.max_steps = max(1, math.ceil((cfg.epochs or STAGE_EPOCHS[cfg.stage]) * steps_per_epoch))
    if dist.main:
        what = {1: "captions", 2: "questions"}[cfg.stage]
        trains = ("the chat model (caption control)" if cfg.images == "caption" else
                  "the projector" if cfg.stage == 1 else
                  f"the projector and the decoder{', the encoder too' if cfg.train_encoder else ''}")
        print(f"vlm stage {cfg.stage}: {len(train_ex):,} conversations ({what}) about {len(train_rows):,} "
              f"pictures, {len(val_ex):,} held out; {image_tokens or 0} tokens per image; packed into "
              f"{len(train_packed):,} rows of {cfg.train.seq_len}; training {trains}; {cfg.train.max_steps} steps",
              flush=True)
    validate = functools.partial(evaluate, loader=val_loader, batches=cfg.eval.batches, device=device,
                                 token_nbytes=token_nbytes(tok, device)) if val_packed else None
    stage = f"vlm stage {cfg.stage}" + (" (caption control)" if cfg.images == "caption" else "")
    return fit(cfg, model, loader, next_token_loss, evaluate=validate, device=device, dist=dist, tokenizer=tok,
               resume=resume, stage=stage)
