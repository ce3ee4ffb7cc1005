"""Knowledge distillation: a student learns from a teacher's distribution over the next token.

Token level (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): at
every position the student's distribution is pulled towards the teacher's, both
softened by a temperature T, and mixed with the ordinary cross-entropy on the data's
next token:

    loss per token = alpha * T^2 * D(teacher_T, student_T) + (1 - alpha) * CE(student, next token)

The T^2 keeps the soft term's gradients the size of the hard term's as T grows
(Hinton et al., section 2). D is one of
    forward  KL(teacher || student): the student covers everything the teacher finds likely
    reverse  KL(student || teacher): the student commits to the teacher's modes (MiniLLM, Gu et al. 2023)
    js       the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024) with weight
             beta: beta KL(teacher || M) + (1 - beta) KL(student || M), M = beta teacher + (1 - beta) student
             (beta 0.5 is the symmetric JS; TRL's GKDTrainer.generalized_jsd_loss is the reference)
It is a loss function of the one training loop (acorn.train.loop.fit): the teacher is
closed over and runs under torch.no_grad() on the same batch. The data is pretraining's
(token shards from `acorn data prepare`), read by pretraining's loader.

Sequence level (Kim & Rush 2016): train on the teacher's generations instead, which
needs only text: `acorn synth generate` writes them, `acorn data prepare` and
`acorn pretrain` (or `acorn sft`) do the rest.

Teacher and student must share the tokenizer: a token-level divergence compares two
distributions over the same ids. Different tokenizers are refused with the way out
(sequence-level distillation, or data re-tokenized with the teacher's tokenizer).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from acorn.errors import AcornError
from acorn.fileio import read_json
from acorn.model.lora import LoRAConfig
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, LossOutput, fit
from acorn.train.optim import OptimConfig
from acorn.train.run import build_model, start

KINDS = ("forward", "reverse", "js")


# ------------------------------------------------------------------ the losses
def divergence(student_logits: Tensor, teacher_logits: Tensor, kind: str = "forward", temperature: float = 1.0,
               beta: float = 0.5) -> Tensor:
    """Per-position divergence (..., V) x (..., V) -> (...), in float32, both at the temperature."""
    if kind not in KINDS:
        raise AcornError(f"unknown distillation divergence {kind!r}; choose one of {', '.join(KINDS)}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    if not 0.0 < beta < 1.0:  # the end points are forward (0) and reverse (1) KL: name them instead
        raise AcornError(f"js beta must be in (0, 1), got {beta}; use kind forward (beta 0) or reverse (beta 1)")
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log1p(-beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, kind: str = "forward",
            temperature: float = 2.0, alpha: float = 0.5, beta: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss sum, trained tokens, divergence sum, cross-entropy sum) over the positions whose
    target is not -100; the loss per token is alpha T^2 D + (1 - alpha) CE (module docstring)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])  # padded vocabularies: the shared ids
    s, t = student_logits[..., :v].flatten(0, -2), teacher_logits[..., :v].flatten(0, -2)
    y = targets.flatten()
    keep = y != -100
    div = divergence(s[keep], t[keep], kind, temperature, beta).sum()
    ce = F.cross_entropy(s[keep].float(), y[keep], reduction="sum")
    loss = alpha * temperature ** 2 * div + (1 - alpha) * ce
    return loss, keep.sum(), div, ce


def distill_loss(model, batch, *, teacher, kind: str = "forward", temperature: float = 2.0, alpha: float = 0.5,
                 beta: float = 0.5) -> LossOutput:
    """The loss function of the one loop: the teacher's logits on the same batch (no
    gradient), the student's, kd_loss; the divergence and the cross-entropy are logged."""
    with torch.no_grad():
        t_logits = teacher(batch.x, document_ids=batch.document_ids).logits
    s_logits = model(batch.x, document_ids=batch.document_ids).logits
    loss, n, div, ce = kd_loss(s_logits, t_logits, batch.y, kind=kind, temperature=temperature, alpha=alpha,
                               beta=beta)
    return LossOutput(loss, n, {"kd": div.detach(), "ce": ce.detach()})


# ------------------------------------------------------------------ the stage
@dataclass
class DistillConfig:
    teacher: str = ""  # the teacher checkpoint directory (required; same tokenizer as the data)
    data: str = "runs/data"  # token shards (`acorn data prepare`) made with the teacher's tokenizer
    out: str = "runs/distill"  # run directory: checkpoints, metrics, model/, report.md
    seed: int = 0  # initial weights and data order
    init_from: str | None = None  # start the student from this checkpoint (else fresh weights from model)
    kind: Literal["forward", "reverse", "js"] = "forward"  # the divergence (see acorn.synth.distill)
    temperature: float = 2.0  # softens both distributions; the soft term is scaled by its square
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha on the data's next token (0: no teacher)
    beta: float = 0.5  # js only: the mixture weight of the teacher (0.5: symmetric Jensen-Shannon)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("nano"))  # the student
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    LIMITS: ClassVar[dict[str, str]] = {"seed": ">= 0", "temperature": "> 0", "alpha": "[0, 1]",
                                        "beta": "(0, 1)", "train.max_steps": ">= 1"}


def same_tokenizer(a, b) -> bool:
    """The same ids for the same bytes: the vocabulary size, every token's bytes, the special tokens."""
    if a.vocab_size != b.vocab_size:
        return False
    return all(a.token_bytes(i) == b.token_bytes(i) and a.is_special(i) == b.is_special(i)
               for i in range(a.vocab_size))


def check_tokenizers(teacher_dir: str | Path, student_tok, what: str = "the data") -> None:
    from acorn.tokenizer.bpe import Tokenizer

    try:
        t_tok = Tokenizer.from_pretrained(teacher_dir)
    except AcornError as e:
        raise AcornError(f"the teacher's tokenizer: {e}") from None
    if not same_tokenizer(t_tok, student_tok):
        raise AcornError(
            f"the teacher {teacher_dir} has another tokenizer than {what} (vocabulary {t_tok.vocab_size} vs "
            f"{student_tok.vocab_size}): token-level distillation compares distributions over the same ids. "
            "Prepare the data with the teacher's tokenizer, or distil at the sequence level "
            "(`acorn synth generate` the teacher's text, then train on it), which needs no shared vocabulary")


def distill(cfg: DistillConfig, *, resume: bool = False) -> Path:
    """Train the student on cfg.data against the teacher in cfg.teacher; returns the run directory."""
    from acorn.data.loader import TokenLoader
    from acorn.model.checkpoint import load as load_checkpoint
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.pretrain import evaluate, token_nbytes

    if not cfg.teacher:
        raise AcornError("distillation needs a teacher: pass --teacher CHECKPOINT_DIR")
    meta_path = Path(cfg.data) / "meta.json"
    if not meta_path.is_file():
        raise AcornError(f"{cfg.data}: no prepared data (meta.json); run `acorn data prepare INPUTS --tokenizer "
                         f"{cfg.teacher} --out {cfg.data}`")
    meta = read_json(meta_path)
    tok_path = meta.get("tokenizer", {}).get("path")
    if not tok_path or not Path(tok_path).exists():
        raise AcornError(f"{cfg.data}: the tokenizer it was prepared with ({tok_path}) is gone; prepare it again "
                         f"with --tokenizer {cfg.teacher}")
    tok = Tokenizer.from_pretrained(tok_path)
    check_tokenizers(cfg.teacher, tok, f"the data in {cfg.data}")
    device, dist = start(cfg)
    model = build_model(cfg, device, tok.vocab_size)
    teacher = load_checkpoint(cfg.teacher, dtype="float32", device=str(device)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loader = TokenLoader(cfg.data, "train", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                         seed=cfg.seed, rank=dist.rank, world_size=dist.world, pack_documents=cfg.train.pack_documents)
    validate = None
    if cfg.eval.every:
        val_loader = TokenLoader(cfg.data, "val", batch_size=cfg.train.micro_batch, seq_len=cfg.train.seq_len,
                                 seed=cfg.seed, pack_documents=cfg.train.pack_documents)
        validate = functools.partial(evaluate, loader=val_loader, batches=cfg.eval.batches, device=device,
                                     token_nbytes=token_nbytes(tok, device))
    if cfg.train.seq_len > teacher.config.max_seq_len:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds the teacher's context "
                         f"({teacher.config.max_seq_len}); lower --train.seq_len")
    loss_fn = functools.partial(distill_loss, teacher=teacher, kind=cfg.kind, temperature=cfg.temperature,
                                alpha=cfg.alpha, beta=cfg.beta)
    return fit(cfg, model, loader, loss_fn, evaluate=validate, device=device, dist=dist, tokenizer=tok,
               resume=resume, stage="distill")


def val_loss(model_dir: str | Path, data: str | Path, *, seq_len: int, batch_size: int = 16, batches: int = 40,
             seed: int = 0) -> float:
    """A checkpoint's loss on the first `batches` rows of the val split of token shards, in
    float32: the teacher and its students (or any models of one tokenizer) compared on the
    same rows, however each was trained."""
    from acorn import hardware
    from acorn.data.loader import TokenLoader
    from acorn.model.checkpoint import load as load_checkpoint
    from acorn.train.pretrain import evaluate

    device = hardware.resolve_device()
    model = load_checkpoint(model_dir, dtype="float32", device=str(device)).eval()
    loader = TokenLoader(data, "val", batch_size=batch_size, seq_len=seq_len, seed=seed)
    with torch.no_grad():
        out = evaluate(model, loader=loader, batches=batches, device=device)
    if "val_loss" not in out:
        raise AcornError(f"{data}: its val split holds no row of {seq_len + 1} tokens; lower seq_len")
    return out["val_loss"]


# ------------------------------------------------------------------ sequence level
def generate(model: str | Path, out: str | Path, *, prompts: str | Path | None = None, samples: int = 0,
             n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128, seed: int = 0,
             limit: int | None = None, overwrite: bool = False) -> dict:
    """`acorn synth generate`: a model's generations through the one engine, as training data.

    With prompts (a JSONL file as `acorn synth constitutional` reads): n replies per prompt,
    written as conversations {"messages": [..., assistant reply]} for `acorn sft`.
    Without: `samples` documents from the BOS token, written as {"text": ...} for
    `acorn data prepare` and `acorn pretrain` (sequence-level distillation, Kim & Rush 2016;
    and the data of the model-collapse experiment)."""
    from acorn.fileio import write_jsonl
    from acorn.infer import Engine, SamplingParams

    out = Path(out)
    if out.exists() and not overwrite:
        raise AcornError(f"--out {out} already exists; choose another file or pass --overwrite")
    if out.suffix != ".jsonl":
        raise AcornError(f"--out {out}: the generations are written as JSONL; give a path ending in .jsonl")
    if (prompts is None) == (samples <= 0):
        raise AcornError("give either --prompts FILE (replies to prompts) or --samples N (documents from scratch)")
    engine = Engine.from_pretrained(model)
    if prompts is not None:
        from acorn.synth.constitution import read_prompts

        rows = read_prompts(prompts)[: limit or None]
        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, n=n, seed=seed)
        completions = engine.generate([engine.chat_prompt(r["messages"]) for r in rows], params)
        data = [{"messages": [*rows[i // n]["messages"], {"role": "assistant", "content": c.text.strip()}],
                 "kind": rows[i // n]["kind"], "teacher": str(model)}
                for i, c in enumerate(completions) if c.text.strip()]
    else:
        tok = engine.tokenizer
        start = tok.bos_id if tok.bos_id is not None else tok.eos_id
        if start is None:
            raise AcornError(f"{model}: the tokenizer has no BOS or EOS token to start a document from")
        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, n=samples,
                                seed=seed)
        data = [{"text": c.text} for c in engine.generate([[start]], params) if c.text.strip()]
    write_jsonl(out, data)
    return {"written": len(data), "out": str(out)}
