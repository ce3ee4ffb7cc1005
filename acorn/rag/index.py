"""The retrieval index: chunks, their vectors in FAISS, and BM25 over their words.

Kept apart from the embedder (acorn.rag.embeddings): the index stores vectors
and finds neighbours; it never runs a model. It records which embedder made
its vectors (kind, path, fingerprint of the weights, dimension) and refuses
queries from any other: vectors of two models live in unrelated spaces, and
searching one with the other returns confident nonsense.

Dense search (Johnson et al. 2017, FAISS): "exact" is a flat index (every
vector compared), "hnsw" a hierarchical navigable small-world graph (Malkov &
Yashunin 2016: approximate, sub-linear). Metrics: "cosine" (vectors
normalised, then inner product), "dot" (raw inner product: a long vector
wins whatever its direction) and "l2" (Euclidean distance, scored as its
negative square). They agree on unit vectors and disagree on unnormalised
ones; benchmarks/rag.py shows where.
Sparse search: BM25 (Robertson & Zaragoza 2009) from the bm25s library, on
lower-cased words without English stop words; rebuilt from the chunks when
an index loads (milliseconds for thousands of chunks), so it can never
disagree with them.

On disk, a directory written whole or not at all (built in a temporary
sibling, then renamed into place): index.json (format, version, embedder,
metric, kind, chunking), chunks.jsonl, vectors.npy (the embedder's raw
vectors: adding documents or another metric needs no re-embedding) and
faiss.index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acorn.errors import AcornError
from acorn.fileio import UMASK, read_jsonl, write_json, write_jsonl
from acorn.rag.chunking import Chunk

FORMAT = "acorn-rag-index"
VERSION = 1
METRICS = ("cosine", "dot", "l2")
KINDS = ("exact", "hnsw")


@dataclass
class Hit:
    chunk: Chunk
    score: float  # higher is closer, whatever the metric
    rank: int  # 1 = best


@dataclass
class Index:
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dim) float32, as the embedder returned them
    embedder: dict  # the embedder's identity: kind, path, fingerprint, dim
    metric: str = "cosine"
    kind: str = "exact"
    chunking: dict = field(default_factory=dict)
    hnsw_m: int = 32  # graph neighbours per node
    ef_search: int = 64  # HNSW candidates kept while searching: recall against speed

    def __post_init__(self):
        if self.metric not in METRICS:
            raise AcornError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.kind not in KINDS:
            raise AcornError(f"unknown index kind {self.kind!r}; choose exact or hnsw")
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32).reshape(len(self.chunks), -1)
        ids = [c.id for c in self.chunks]
        if len(set(ids)) != len(ids):
            raise AcornError("two chunks share an id; give each document its own id")
        self._faiss = None
        self._bm25 = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.chunks)

    # ------------------------------------------------------------- dense
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _build_faiss(self):
        import faiss

        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.kind == "exact":
            index = faiss.IndexFlat(self.dim, metric)
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, metric)
            index.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
        if len(self.chunks):
            index.add(self._prepare(self.vectors))
        return index

    @property
    def faiss_index(self):
        if self._faiss is None:
            self._faiss = self._build_faiss()
        return self._faiss

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The k nearest chunks of each query vector, best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise AcornError(f"query vectors of shape {tuple(queries.shape)}; this index holds {self.dim}-dimensional "
                             "vectors (query with the index's embedder)")
        k = min(k, len(self.chunks))
        if k <= 0:
            return [[] for _ in queries]
        index = self.faiss_index
        if self.kind == "hnsw":
            index.hnsw.efSearch = max(self.ef_search, k)
        scores, rows = index.search(self._prepare(queries), k)
        if self.metric == "l2":
            scores = -scores  # faiss returns squared distances; closer must score higher
        return [[Hit(self.chunks[i], float(s), r + 1) for r, (i, s) in enumerate((i, s) for i, s in zip(ri, si) if i >= 0)]
                for ri, si in zip(rows, scores)]

    # -------------------------------------------------------------- BM25
    def _build_bm25(self):
        import bm25s

        tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=None)
        retriever = bm25s.BM25()
        if self.chunks:
            retriever.index(tokenizer.tokenize([c.text for c in self.chunks], show_progress=False),
                            show_progress=False)
        return tokenizer, retriever

    def search_bm25(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The k best chunks of each query by BM25; chunks sharing no word with it are left out."""
        if self._bm25 is None:
            self._bm25 = self._build_bm25()
        tokenizer, retriever = self._bm25
        out = []
        for q in queries:
            words = tokenizer.tokenize([q], update_vocab=False, show_progress=False, return_as="string")[0]
            known = [tokenizer.word_to_id[w] for w in words if w and w in tokenizer.word_to_id]
            if not self.chunks or not known:
                out.append([])
                continue
            scores = np.asarray(retriever.get_scores(known), dtype=np.float64)
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
            out.append([Hit(self.chunks[i], float(scores[i]), r + 1)
                        for r, i in enumerate(j for j in order if scores[j] > 0)])
        return out

    # ------------------------------------------------------------ growing
    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Append chunks and their vectors (from this index's embedder)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(chunks), -1)
        if len(chunks) and vectors.shape[1] != self.dim and len(self.chunks):
            raise AcornError(f"{vectors.shape[1]}-dimensional vectors for a {self.dim}-dimensional index; "
                             "embed with the index's embedder")
        taken = {c.id for c in self.chunks}
        clash = [c.id for c in chunks if c.id in taken]
        if clash:
            raise AcornError(f"chunk {clash[0]!r} is already in the index; give new documents their own ids or "
                             "rebuild the index")
        self.chunks = self.chunks + list(chunks)
        self.vectors = np.concatenate([self.vectors.reshape(-1, vectors.shape[1]), vectors]) if len(chunks) else self.vectors
        if self._faiss is not None and len(chunks):
            self._faiss.add(self._prepare(vectors))
        self._bm25 = None

    # ---------------------------------------------------------------- disk
    def save(self, directory) -> Path:
        """Write the index directory whole: a reader sees the old one or the new one."""
        import faiss

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise AcornError(f"{directory} exists and is not a directory; choose another --out")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            os.chmod(tmp, 0o777 & ~UMASK)
            write_jsonl(tmp / "chunks.jsonl", [c.to_json() for c in self.chunks])
            np.save(tmp / "vectors.npy", self.vectors)
            faiss.write_index(self.faiss_index, str(tmp / "faiss.index"))
            write_json(tmp / "index.json", {
                "format": FORMAT, "version": VERSION, "embedder": self.embedder, "metric": self.metric,
                "kind": self.kind, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search, "chunking": self.chunking,
                "chunks": len(self.chunks), "dim": self.dim})
            old = None
            if directory.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
                os.rmdir(old)
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory, embedder: dict | None = None) -> "Index":
        """Read an index directory; with `embedder` (an identity), refuse one built by another model."""
        import faiss

        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise AcornError(f"{directory}: not an index directory (no index.json); build one with "
                             "`acorn rag index DOCS... --out DIR --embedder MODEL`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise AcornError(f"{meta_path}: unreadable; rebuild the index with `acorn rag index`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise AcornError(f"{directory}: not an Acorn RAG index; build one with `acorn rag index`")
        if meta.get("version") != VERSION:
            raise AcornError(f"{directory}: index format version {meta.get('version')}, this Acorn reads version "
                             f"{VERSION}; rebuild it with `acorn rag index`")
        if embedder is not None:
            check_embedder(meta["embedder"], embedder, directory)
        chunks = [Chunk(**row) for row in read_jsonl(directory / "chunks.jsonl")]
        vectors = np.load(directory / "vectors.npy")
        index = cls(chunks, vectors, meta["embedder"], meta["metric"], meta["kind"], meta.get("chunking", {}),
                    meta.get("hnsw_m", 32), meta.get("ef_search", 64))
        index._faiss = faiss.read_index(str(directory / "faiss.index"))
        if index._faiss.ntotal != len(chunks):
            raise AcornError(f"{directory}: faiss.index holds {index._faiss.ntotal} vectors for {len(chunks)} chunks; "
                             "rebuild the index with `acorn rag index`")
        return index


def check_embedder(built: dict, using: dict, where) -> None:
    """Refuse an embedder other than the one an index was built with."""
    same = built.get("kind") == using.get("kind") and built.get("fingerprint") == using.get("fingerprint")
    if not same:
        raise AcornError(f"{where} was built with the {built.get('kind')} embedder {built.get('path')} "
                         f"(fingerprint {built.get('fingerprint')}), not {using.get('path')} "
                         f"(fingerprint {using.get('fingerprint')}); query with --embedder {built.get('path')}, "
                         "or rebuild the index with this one")
