"""Contamination checks: which evaluation documents also occur in the
training corpus, by n-gram overlap, and the scores without them.

The method of GPT-3 (Brown et al. 2020, appendix C) as lm-evaluation-harness
implements it (lm_eval/decontamination/janitor.py): text is normalised by
lower-casing ASCII letters and deleting ASCII punctuation, split on
whitespace into words, and a document is contaminated when any of its
n-grams of words (13 by default) occurs anywhere in the corpus. A document
of fewer than n words has no n-gram and cannot be checked at that n; it is
counted as `too_short`, never silently called clean (lower n to check it).

What is checked of a document: the task's doc_to_decontamination_query
(lm-eval's key) when given, else the solved document as it would appear in
a few-shot prompt, the prompt and its answer (Task.example without the
trailing delimiter).

The corpus: token shard directories made by `acorn data prepare` (their train
split, decoded document by document with the tokenizer meta.json records),
or .txt/.jsonl/.parquet files read as `acorn data prepare` reads them. An
n-gram never spans two corpus documents.

How it is fast enough in Python: the evaluation documents' words get ids
(from 1); a corpus word that no evaluation document has becomes 0, and so
does a document boundary, so no n-gram holding one can match. Each corpus
chunk's n-grams are hashed at once with numpy (a polynomial hash mod 2^64),
the hashes looked up in the evaluation n-grams' with np.isin, and only the
few hits compared word by word, so a hash collision can never report a
match.

The scores on the clean subset come from the per-document samples of a run
(acorn.eval.harness.summarize over the documents not flagged), so nothing is
scored twice.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from acorn.errors import AcornError
from acorn.eval.tasks import Task, get_task, read_docs, render, resolve
from acorn.eval.tasks import data_dir as find_data_dir

DEFAULT_N = 13
# lm-eval's Janitor: ASCII upper -> lower, string.punctuation deleted.
_TABLE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial hash mod 2^64 loses no bits to the multiplier
_CHUNK_WORDS = 1 << 20


def normalize(text: str) -> list[str]:
    """The words n-grams are made of (lm-eval's Janitor.normalize_string, then split)."""
    return text.translate(_TABLE).split()


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def query(task: Task, doc: dict) -> str:
    """The text of a document that is looked for in the corpus."""
    if task.doc_to_decontamination_query:
        return str(render(task.doc_to_decontamination_query, doc))
    text = task.text(doc)
    return text + task.target_delimiter + task.target_text(doc) if text else task.target_text(doc)


@dataclass
class Hit:
    """A contaminated evaluation document."""
    doc_id: int
    matched: int   # how many of its distinct n-grams occur in the corpus
    ngrams: int    # how many distinct n-grams it has
    example: str   # the first matched n-gram (normalised words)
    where: str     # the corpus document it was first found in: "path #k" (k from 0)


@dataclass
class TaskReport:
    task: str
    documents: int
    too_short: list[int] = field(default_factory=list)
    hits: dict[int, Hit] = field(default_factory=dict)

    @property
    def contaminated(self) -> list[int]:
        return sorted(self.hits)

    @property
    def checked(self) -> int:
        return self.documents - len(self.too_short)

    def to_json(self) -> dict:
        return {"documents": self.documents, "checked": self.checked, "too_short": len(self.too_short),
                "contaminated": len(self.hits), "fraction": len(self.hits) / self.documents if self.documents else 0.0,
                "contaminated_ids": self.contaminated, "too_short_ids": self.too_short,
                "overlaps": [asdict(h) for _, h in sorted(self.hits.items())]}


class Index:
    """The n-grams of the evaluation documents, to look the corpus up in."""

    def __init__(self, n: int = DEFAULT_N):
        if n < 1:
            raise AcornError(f"n-gram size must be at least 1, got {n}; e.g. --ngram 13")
        self.n = n
        self.vocab: dict[str, int] = {}  # word -> id (from 1)
        self.owners: dict[tuple[int, ...], list[tuple[str, int]]] = {}  # n-gram ids -> (task, doc id)
        self.reports: dict[str, TaskReport] = {}
        self.sizes: dict[tuple[str, int], int] = {}  # distinct n-grams per document
        self.found: dict[tuple[str, int], set[tuple[int, ...]]] = {}
        self._hashes: np.ndarray | None = None
        self._words_of: dict[int, str] = {}

    def add(self, task: str, docs: list[str]) -> None:
        report = self.reports.setdefault(task, TaskReport(task, 0))
        for text in docs:
            doc_id = report.documents
            report.documents += 1
            ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in normalize(text)]
            grams = set(ngrams(ids, self.n))
            if not grams:
                report.too_short.append(doc_id)
            self.sizes[(task, doc_id)] = len(grams)
            for g in grams:
                self.owners.setdefault(g, []).append((task, doc_id))
        self._hashes = None

    def hashes(self) -> np.ndarray:
        """The distinct hashes of the evaluation n-grams, sorted (the same hash as _rolling_hash)."""
        if self._hashes is None:
            grams = np.array(list(self.owners), dtype=np.uint64).reshape(-1, self.n)
            h = np.zeros(len(grams), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(self.n):
                    h = h * _BASE + grams[:, j]
            self._hashes = np.unique(h)
        return self._hashes

    def scan(self, documents: Iterable[tuple[str, str]]) -> None:
        """Look every n-gram of the corpus documents ((where, text) pairs) up."""
        table = self.hashes()
        ids: list[int] = []
        where: list[str] = []
        starts: list[int] = []
        for name, text in documents:
            starts.append(len(ids))
            where.append(name)
            ids.extend(self.vocab.get(w, 0) for w in normalize(text))
            ids.append(0)  # a boundary: no n-gram spans two documents
            if len(ids) >= _CHUNK_WORDS:
                self._match(np.array(ids, dtype=np.uint64), starts, where, table)
                ids, where, starts = [], [], []
        if ids:
            self._match(np.array(ids, dtype=np.uint64), starts, where, table)

    def _match(self, ids: np.ndarray, starts: list[int], where: list[str], table: np.ndarray) -> None:
        if len(ids) < self.n or not len(table):
            return
        h = _rolling_hash(ids, self.n)
        starts_at = np.asarray(starts)
        for pos in np.flatnonzero(np.isin(h, table)):
            gram = tuple(int(x) for x in ids[pos:pos + self.n])
            owners = self.owners.get(gram)
            if owners is None:  # a hash collision
                continue
            doc = int(np.searchsorted(starts_at, pos, side="right")) - 1
            for task, doc_id in owners:
                self.found.setdefault((task, doc_id), set()).add(gram)
                report = self.reports[task]
                if doc_id not in report.hits:
                    report.hits[doc_id] = Hit(doc_id, 0, self.sizes[(task, doc_id)], self._words(gram), where[doc])
                report.hits[doc_id].matched = len(self.found[(task, doc_id)])

    def _words(self, gram: tuple[int, ...]) -> str:
        if len(self._words_of) != len(self.vocab):
            self._words_of = {i: w for w, i in self.vocab.items()}
        return " ".join(self._words_of[i] for i in gram)


def _rolling_hash(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of each window ids[i:i + n]: sum_j ids[i + j] * BASE^(n - 1 - j) mod 2^64."""
    m = len(ids) - n + 1
    h = np.zeros(max(m, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + ids[j:j + m]
    return h


# ------------------------------------------------------------------ the corpus
def is_shard_dir(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def corpus_documents(paths: list[str | Path], *, tokenizer: str | Path | None = None,
                     text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(where, text) of every corpus document: token shard directories
    (their train split, decoded) and text files, in the order given."""
    if not paths:
        raise AcornError("no corpus given; e.g. --corpus runs/data (token shards) or --corpus corpus.jsonl")
    for p in map(Path, paths):
        if is_shard_dir(p):
            yield from _shard_documents(p, tokenizer)
        else:
            from acorn.data.prepare import documents

            counts: dict[Path, int] = {}
            for f, text in documents([p], text_field=text_field):
                k = counts[f] = counts.get(f, -1) + 1
                yield f"{f} #{k}", text


def _shard_documents(data: Path, tokenizer: str | Path | None) -> Iterator[tuple[str, str]]:
    from acorn.data.loader import documents
    from acorn.data.prepare import load_tokenizer, tokenizer_fingerprint
    from acorn.fileio import read_json

    meta = read_json(data / "meta.json")
    recorded = meta.get("tokenizer", {})
    path = tokenizer or recorded.get("path")
    if not path or not (Path(path).exists() or path == "gpt2"):
        raise AcornError(f"{data}: the tokenizer its shards were made with ({path}) is not there; "
                         "pass --tokenizer DIR to decode them")
    if tokenizer_fingerprint(path) != recorded.get("sha256"):
        raise AcornError(f"{data}: tokenizer {path} is not the one its shards were made with "
                         "(meta.json records another sha256); pass the right --tokenizer")
    tok = load_tokenizer(path)
    special = {i for i in (recorded.get("bos_id"), recorded.get("eos_id")) if i is not None}
    for k, ids in enumerate(documents(data, "train")):
        yield f"{data} train #{k}", tok.decode([int(i) for i in ids if int(i) not in special])


# ------------------------------------------------------------------ the check
def check(tasks: list[str | Task], corpus: list[str | Path], *, n: int = DEFAULT_N, limit: int | None = None,
          data_dir: str | Path | None = None, tokenizer: str | Path | None = None,
          text_field: str = "text") -> dict:
    """Per task: how many documents are contaminated, which, and where; the
    documents are the first `limit` of each task, as `acorn eval --limit`
    scores them."""
    loaded = [t if isinstance(t, Task) else get_task(t) for t in tasks]
    if not loaded:
        raise AcornError("no tasks given; e.g. --tasks arc_easy,piqa")
    root = find_data_dir(data_dir)
    index = Index(n)
    for task in loaded:
        docs = read_docs(resolve(task, task.data, root))
        index.add(task.task, [query(task, d) for d in (docs[:limit] if limit else docs)])
    index.scan(corpus_documents(list(corpus), tokenizer=tokenizer, text_field=text_field))
    return {"ngram": n, "corpus": [str(c) for c in corpus], "limit": limit,
            "tasks": {name: r.to_json() for name, r in index.reports.items()}}


def split_scores(task: Task, samples: list[dict], contaminated: Iterable[int]) -> dict:
    """The task's metrics over all its documents, the clean ones and the
    contaminated ones, from a run's per-document samples."""
    from acorn.eval.harness import summarize

    dirty = set(contaminated)
    return {"all": summarize(task, samples),
            "clean": summarize(task, [s for s in samples if s["doc_id"] not in dirty]),
            "contaminated": summarize(task, [s for s in samples if s["doc_id"] in dirty])}


def attach(out: dict, report: dict, tasks: list[Task]) -> dict:
    """Add a contamination report to an evaluation's output: each sample
    marked, and per task the scores on the clean and contaminated subsets."""
    for task in tasks:
        r = report["tasks"][task.task]
        dirty = set(r["contaminated_ids"])
        for s in out["samples"][task.task]:
            s["contaminated"] = s["doc_id"] in dirty
        r["scores"] = split_scores(task, out["samples"][task.task], dirty)
    out["contamination"] = report
    return out


def table(report: dict) -> str:
    """Markdown: per task the contaminated fraction, and where scores are
    attached, each metric on all / clean / contaminated documents."""
    lines = [f"Contamination: {report['ngram']}-gram overlap with {', '.join(report['corpus'])}", "",
             "| task | documents | checked | contaminated | fraction |", "|---|---:|---:|---:|---:|"]
    for name, r in report["tasks"].items():
        lines.append(f"| {name} | {r['documents']} | {r['checked']} | {r['contaminated']} | {r['fraction']:.4f} |")
    scored = {name: r["scores"] for name, r in report["tasks"].items() if "scores" in r}
    if scored:
        lines += ["", "| task | metric | all | clean | contaminated |", "|---|---|---:|---:|---:|"]
        for name, s in scored.items():
            for m, v in s["all"].items():
                if m in ("n", "truncated") or m.endswith("_stderr"):
                    continue
                cells = [_cell(s[part].get(m)) for part in ("all", "clean", "contaminated")]
                lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
