"""Sentence embeddings: one vector per text, from the language model itself.

The vector is the model's final hidden states (after the last norm, before
the output head) averaged over the text's tokens, then L2-normalised, so the
dot product of two vectors is their cosine similarity. Mean pooling is the
SBERT choice (Reimers & Gurevych 2019) and, for a causal model, keeps every
token's state, not only the last one's.

These are a generative model's states, not those of a model trained for
retrieval (no contrastive fine-tuning, as in E5 or GTE): good enough to
compare texts the model has seen, weaker than a dedicated embedding model.
Retrieval and the server's /v1/embeddings both use embed().
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.inference_mode()
def embed(model, token_lists: list[list[int]], batch_size: int = 16) -> Tensor:
    """(len(token_lists), d_model) float32 on the CPU, each row of norm 1.

    Rows of a batch are padded on the right and attention is causal, so no
    real token ever sees a pad (positions start at 0 in every row): each
    vector equals that of its token list run alone."""
    device = model.device
    out = []
    for start in range(0, len(token_lists), batch_size):
        rows = token_lists[start:start + batch_size]
        t = max(map(len, rows))
        ids = torch.tensor([r + [0] * (t - len(r)) for r in rows], device=device)
        hidden = model(ids, hidden_only=True).hidden.float()
        real = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in rows], device=device)
        mean = (hidden * real[:, :, None]).sum(1) / real.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------- embedders
def fingerprint(directory) -> str:
    """sha256 over a model directory's config and weight files (names and bytes):
    an index records it, and refuses queries embedded by any other model."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class AcornEmbedder:
    """An Acorn (or Hugging Face causal LM) checkpoint as an embedder: embed()
    over its tokenizer's ids, each text truncated to the model's context."""

    kind = "acorn"

    def __init__(self, path, *, device="cpu", model=None, tokenizer=None):
        from acorn.model.checkpoint import load
        from acorn.tokenizer.bpe import Tokenizer

        self.path = str(path)
        self.model = model if model is not None else load(path, device=device)
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer.from_pretrained(path)
        self.dim = self.model.config.d_model
        self.identity = {"kind": self.kind, "path": self.path, "fingerprint": fingerprint(path), "dim": self.dim}

    def ids(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_id
        ids = ([bos] if bos is not None else []) + self.tokenizer.encode(text)
        return ids[: self.model.config.max_seq_len] or [0]

    def encode(self, texts: list[str], batch_size: int = 16):
        """(len(texts), dim) float32 numpy, rows of norm 1."""
        return embed(self.model, [self.ids(t) for t in texts], batch_size).numpy()


class SentenceTransformerEmbedder:
    """A sentence-transformers model directory, run by the sentence-transformers
    library itself (its pooling and normalisation, as its authors trained it)."""

    kind = "sentence-transformers"

    def __init__(self, path, *, device="cpu"):
        from acorn.errors import AcornError

        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise AcornError("loading a sentence-transformers model needs the library; "
                             "pip install sentence-transformers") from None
        self.path = str(path)
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.dim = int(self.model.get_sentence_embedding_dimension())
        self.identity = {"kind": self.kind, "path": self.path, "fingerprint": fingerprint(path), "dim": self.dim}

    def encode(self, texts: list[str], batch_size: int = 16):
        return self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=False, show_progress_bar=False).astype("float32")


def load_embedder(path, *, device="cpu"):
    """A local model directory as an embedder: sentence-transformers' when it has
    modules.json (its layout), else an Acorn / Hugging Face causal LM."""
    from pathlib import Path

    from acorn.errors import AcornError

    p = Path(path)
    if not p.is_dir():
        raise AcornError(f"{path}: not a model directory; give an Acorn checkpoint (e.g. runs/embed/model) or a "
                         "local sentence-transformers directory")
    if (p / "modules.json").is_file():
        return SentenceTransformerEmbedder(p, device=device)
    return AcornEmbedder(p, device=device)
