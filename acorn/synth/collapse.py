"""Model collapse: models trained generation after generation on their predecessors' text.

Shumailov et al. 2024 ("AI models collapse when trained on recursively generated data",
Nature): each generation is trained only on samples of the previous one, and the
distribution narrows; the tails (rare tokens, rare facts) go first, then the model
drifts. Gerstgrasser et al. 2024 ("Is Model Collapse Inevitable?"): when the synthetic
data is added to the real data instead of replacing it, the error stays bounded.

`acorn synth collapse` runs the experiment on real text (e.g. the world's
pretrain.jsonl), one mode per run:

  generation 0   a fresh model trained on the real training documents
  generation k   a fresh model, the same size and the same number of steps (equal
                 compute), trained on
                   replace     the documents sampled from generation k-1 (Shumailov)
                   mix         those samples with real documents making real_fraction of it
                   accumulate  the real documents and the samples of every generation so far
                               (Gerstgrasser)
                 then sampled from: as many documents as the real training set holds,
                 from the BOS token at the temperature, through the one engine.

Measured for every generation, on real held-out documents: the validation loss, the
loss on the tail (the rarest token ids that together make rare_share of the real
training tokens), and of its samples: distinct-1/2 (unique n-grams over all n-grams),
the vocabulary used (ids that occur, over those the real training text uses), the mean
length. Written to OUT/generations.jsonl and OUT/collapse.png; every generation's
model is OUT/gen_K/model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig
from acorn.train.loop import EvalConfig, LoopConfig, fit
from acorn.train.optim import OptimConfig
from acorn.train.pretrain import next_token_loss
from acorn.train.run import Dist

MODES = ("replace", "mix", "accumulate")


@dataclass
class CollapseConfig:
    data: str = ""  # real text: .jsonl (a "text" field per line) or .txt files, comma-separated (required)
    tokenizer: str = ""  # tokenizer directory (required)
    out: str = "runs/collapse"  # run directory: gen_K/ per generation, generations.jsonl, collapse.png
    mode: Literal["replace", "mix", "accumulate"] = "replace"  # what generation k trains on (module docstring)
    generations: int = 5  # generations after generation 0
    real_fraction: float = 0.5  # mix: the share of real documents in each generation's data
    max_docs: int = 2000  # real documents used (a random subset; 0: all), a tenth of them held out
    sample_tokens: int = 128  # most tokens per sampled document
    temperature: float = 1.0  # sampling temperature (1: the model's own distribution)
    rare_share: float = 0.05  # the tail: the rarest ids making up this share of the real training tokens
    seed: int = 0  # data subset, initial weights, sampling
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        vocab_size=2048, n_layer=2, d_model=64, n_head=4, n_kv_head=2, max_seq_len=128))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=10))
    train: LoopConfig = field(default_factory=lambda: LoopConfig(seq_len=128, micro_batch=16, batch_tokens=4096,
                                                                 max_steps=150, dtype="float32"))

    LIMITS: ClassVar[dict[str, str]] = {"generations": ">= 1", "real_fraction": "[0, 1)", "max_docs": ">= 0",
                                        "sample_tokens": ">= 1", "temperature": "> 0", "rare_share": "(0, 1]",
                                        "seed": ">= 0"}


@dataclass
class _Stage:
    """One generation's fit() settings: the loop wants out, model, optim, train, eval."""

    out: str
    model: ModelConfig
    optim: OptimConfig
    train: LoopConfig
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(every=0, checkpoint_every=0))
    init_from: str | None = None
    seed: int = 0


# ------------------------------------------------------------------ data
def read_documents(spec: str) -> list[str]:
    from acorn.fileio import expand_inputs, read_jsonl_lines

    paths = expand_inputs([p for p in spec.split(",") if p], (".jsonl", ".txt"))
    docs = []
    for path in paths:
        if path.suffix == ".jsonl":
            for lineno, row in read_jsonl_lines(path):
                if "text" not in row and isinstance(row.get("messages"), list):
                    # A conversation (a chat-format QA pair, --mixed-qa-format chat): what its turns say.
                    docs.append("\n".join(m["content"] for m in row["messages"]
                                          if isinstance(m, dict) and isinstance(m.get("content"), str)))
                    continue
                if not isinstance(row.get("text"), str):
                    raise AcornError(f"{path}:{lineno}: no \"text\" string; a JSONL document needs a text field")
                docs.append(row["text"])
        else:
            docs.append(path.read_text(encoding="utf-8"))
    docs = [d for d in docs if d.strip()]
    if len(docs) < 10:
        raise AcornError(f"{spec}: {len(docs)} documents; model collapse needs at least 10 real ones")
    return docs


def rows_of(docs: list[list[int]], seq_len: int, pad: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Token documents packed into rows of seq_len + 1 (the layout of acorn.train.sft_data.pack,
    every token trained on, no attention across documents)."""
    from acorn.train.sft_data import Example, pack

    return pack([Example(d[: seq_len + 1], [1] * min(len(d), seq_len + 1)) for d in docs if len(d) > 1], seq_len, pad)


def tail_ids(train_docs: list[list[int]], share: float) -> set[int]:
    """The rarest ids of the training text that together make `share` of its tokens."""
    counts = Counter(t for d in train_docs for t in d)
    total, acc, out = sum(counts.values()), 0, set()
    for tok, c in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if acc + c > share * total and out:
            break
        out.add(tok)
        acc += c
    return out


def distinct_n(docs: list[list[int]], n: int) -> float:
    grams = [tuple(d[i:i + n]) for d in docs for i in range(len(d) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def real_losses(model, rows, tail: set[int], device, batch_size: int = 16) -> dict:
    """Mean next-token loss on the real held-out rows, over all targets and over the tail's."""
    from acorn.train.sft_data import to_batch

    model.eval()
    tail_mask = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    tail_mask[list(tail)] = True
    tot = n = tot_tail = n_tail = 0.0
    for i in range(0, len(rows), batch_size):
        b = to_batch(rows[i:i + batch_size])
        x, y, docs = b.x.to(device), b.y.to(device), b.document_ids.to(device)
        logits = model(x, document_ids=docs).logits
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
        valid = y.flatten() != -100
        in_tail = valid & tail_mask[y.flatten().clamp(min=0)]
        tot += nll[valid].sum().item()
        n += valid.sum().item()
        tot_tail += nll[in_tail].sum().item()
        n_tail += in_tail.sum().item()
    model.train()
    return {"val_loss": tot / max(n, 1), "tail_loss": tot_tail / max(n_tail, 1)}


def sample_documents(model, tok, n: int, max_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    """n documents from the BOS token through the one engine (ids without BOS; EOS ends one)."""
    from acorn.infer import Engine, SamplingParams

    start = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if start is None:
        raise AcornError("the tokenizer has no BOS or EOS token to start a document from")
    engine = Engine(model, tok, max_num_seqs=64, max_num_batched_tokens=2048)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed, n=n)
    completions = engine.generate([[start]], params)
    stops = engine.stop_token_ids
    return [[t for t in c.token_ids if t not in stops] for c in completions]


# ------------------------------------------------------------------ the experiment
def training_docs(mode: str, k: int, real: list[list[int]], samples: list[list[list[int]]], real_fraction: float,
                  rng: random.Random) -> list[list[int]]:
    """What generation k (>= 1) trains on; samples[j] are generation j's samples."""
    if mode == "replace":
        return list(samples[k - 1])
    if mode == "mix":
        synth = list(samples[k - 1])
        n_real = round(len(synth) * real_fraction / (1 - real_fraction))
        return synth + rng.sample(real, min(n_real, len(real)))
    if mode == "accumulate":
        return list(real) + [d for s in samples[:k] for d in s]
    raise AcornError(f"unknown collapse mode {mode!r}; choose one of {', '.join(MODES)}")


def collapse(cfg: CollapseConfig, *, quiet: bool = False) -> list[dict]:
    """Run the generations of cfg.mode; returns one row of measurements per generation."""
    from acorn import hardware
    from acorn.fileio import write_jsonl
    from acorn.model.transformer import Transformer
    from acorn.synth.constitution import check_run_dir
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.sft_data import ItemLoader

    if not cfg.data or not cfg.tokenizer:
        raise AcornError("model collapse needs real text and a tokenizer: --data FILES --tokenizer DIR")
    if cfg.mode not in MODES:
        raise AcornError(f"unknown collapse mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
    tok = Tokenizer.from_pretrained(cfg.tokenizer)
    if cfg.model.vocab_size < tok.vocab_size:
        raise AcornError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                         f"({tok.vocab_size}); set --model.vocab_size {tok.vocab_size}")
    if cfg.train.seq_len > cfg.model.max_seq_len:
        raise AcornError(f"train.seq_len {cfg.train.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}")
    out = Path(cfg.out)
    check_run_dir(out, json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), overwrite=False)
    rng = random.Random(cfg.seed)
    texts = read_documents(cfg.data)
    rng.shuffle(texts)
    texts = texts[: cfg.max_docs or None]
    bos = [tok.bos_id] if tok.bos_id is not None else []
    encoded = [tok.encode(t) + ([tok.eos_id] if tok.eos_id is not None else []) for t in texts]
    n_val = max(1, len(encoded) // 10)
    val, real = encoded[:n_val], encoded[n_val:]
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    val_rows = rows_of([bos + d for d in val], cfg.train.seq_len, pad)
    tail = tail_ids(real, cfg.rare_share)
    real_vocab = len({t for d in real for t in d})
    device = hardware.resolve_device()
    hardware.flush_denormals(device)
    samples: list[list[list[int]]] = []
    history = []
    for k in range(cfg.generations + 1):
        docs = real if k == 0 else training_docs(cfg.mode, k, real, samples, cfg.real_fraction, rng)
        items = rows_of([bos + d for d in docs], cfg.train.seq_len, pad)
        loader = ItemLoader(items, batch_size=cfg.train.micro_batch, seed=cfg.seed + k)
        torch.manual_seed(cfg.seed)  # every generation starts from the same initial weights
        model = Transformer(cfg.model).to(device)
        stage = _Stage(str(out / f"gen_{k}"), cfg.model, cfg.optim, dataclasses.replace(cfg.train),
                       seed=cfg.seed)
        if not quiet:
            print(f"generation {k} ({cfg.mode}): {len(docs):,} documents, {len(items):,} rows", flush=True)
        fit(stage, model, loader, next_token_loss, device=device, dist=Dist(), tokenizer=tok, stage="collapse")
        row = {"generation": k, "mode": cfg.mode, "train_docs": len(docs),
               "train_tokens": sum(map(len, docs)), **real_losses(model, val_rows, tail, device)}
        gen = sample_documents(model, tok, len(real), cfg.sample_tokens, cfg.temperature, cfg.seed * 1000 + k)
        samples.append(gen)
        row.update({"distinct_1": distinct_n(gen, 1), "distinct_2": distinct_n(gen, 2),
                    "vocab_used": len({t for d in gen for t in d}) / real_vocab,
                    "tail_share": sum(t in tail for d in gen for t in d) / max(1, sum(map(len, gen))),
                    "mean_length": sum(map(len, gen)) / len(gen),
                    "example": tok.decode(gen[0])[:300]})
        history.append(row)
        write_jsonl(out / "generations.jsonl", history)
        if not quiet:
            print(f"  val loss {row['val_loss']:.3f}, tail loss {row['tail_loss']:.3f}, distinct-2 "
                  f"{row['distinct_2']:.3f}, vocabulary used {row['vocab_used']:.1%}", flush=True)
    if len(history) > 1:
        plot([history], out / "collapse.png")
    return history


def plot(runs: list[list[dict]], path: str | Path) -> None:
    """Validation loss, tail loss and distinct-2 across generations, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from acorn.fileio import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, ax, title in (("val_loss", axes[0], "loss on real held-out text"),
                           ("tail_loss", axes[1], "loss on the rarest tokens (the tail)"),
                           ("distinct_2", axes[2], "distinct-2 of the samples")):
        for rows in runs:
            ax.plot([r["generation"] for r in rows], [r[key] for r in rows], marker="o", label=rows[0]["mode"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
