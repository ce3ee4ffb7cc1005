"""Documents in, chunks out: the first step of retrieval-augmented generation.

A retriever returns passages, not whole files, so documents are cut into
chunks small enough to fit several into a prompt and to be about one thing:
- "tokens": windows of `size` tokens that share `overlap` tokens with the
  previous window, so a fact cut by one boundary is whole in the next window
  (the default splitter of LlamaIndex and LangChain works so);
- "paragraphs": one chunk per blank-line separated paragraph;
- "sentences": `size` sentences per chunk, `overlap` of them shared.
Every chunk keeps where it came from (source file, title, character offsets
into the document's text, so text[start:end] is the chunk), which is what a
citation points at.

Inputs: .txt and .md files (one document each; the title is a Markdown
file's first heading, else the file name) and .jsonl files (one document per
row with "text", optional "title" and "id"). Empty or unreadable documents
are skipped, named and counted, never silently dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from acorn.errors import AcornError

METHODS = ("tokens", "paragraphs", "sentences")


@dataclass
class Document:
    text: str
    source: str  # the file (and ":row" for a JSONL row)
    title: str
    id: str  # the JSONL row's "id", else the source


@dataclass
class Chunk:
    id: str  # unique in an index: "{doc id}#{n}"
    text: str
    source: str
    title: str
    doc_id: str
    start: int  # character offsets into the document's text
    end: int
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Skipped:
    source: str
    reason: str


# ------------------------------------------------------------------ reading
def _title_of(path: Path, text: str) -> str:
    if path.suffix.lower() in (".md", ".markdown"):
        for line in text.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip() or path.stem
    return path.stem


def read_documents(paths: list[str | Path]) -> tuple[list[Document], list[Skipped]]:
    """Documents from files and directories (.txt, .md, .jsonl inside them);
    (documents, skipped). Raises only when nothing readable is left."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in (".txt", ".md", ".markdown", ".jsonl"))
        elif p.exists():
            files.append(p)
        else:
            raise AcornError(f"{p}: no such file or directory; give text, Markdown or JSONL files or directories")
    docs, skipped = [], []
    for f in files:
        try:
            raw = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            skipped.append(Skipped(str(f), f"unreadable ({getattr(e, 'strerror', None) or e.__class__.__name__})"))
            continue
        if f.suffix.lower() == ".jsonl":
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{f}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    skipped.append(Skipped(where, "not JSON"))
                    continue
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str) or not text.strip():
                    skipped.append(Skipped(where, 'no "text" or an empty one'))
                    continue
                title = row.get("title") if isinstance(row.get("title"), str) else f.stem
                docs.append(Document(text, where, title, str(row.get("id", where))))
        elif not raw.strip():
            skipped.append(Skipped(str(f), "empty"))
        else:
            docs.append(Document(raw, str(f), _title_of(f, raw), str(f)))
    if not docs:
        reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:3]) or "no .txt, .md or .jsonl files"
        raise AcornError(f"no readable documents ({reasons}); give non-empty text, Markdown or JSONL files")
    return docs, skipped


# ----------------------------------------------------------------- chunking
def _check(method: str, size: int, overlap: int) -> None:
    if method not in METHODS:
        raise AcornError(f"unknown chunking {method!r}; choose one of {', '.join(METHODS)}")
    if method != "paragraphs" and (size < 1 or not 0 <= overlap < size):
        raise AcornError(f"chunk size {size} with overlap {overlap}: need size >= 1 and 0 <= overlap < size")


def _windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows over n units, each `overlap` into the previous; the last ends at n."""
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end >= n:
            return out
        start = end - overlap


def _char_offsets(text: str, tokenizer) -> list[int]:
    """Character offset of each token boundary (len(ids) + 1 of them). From the
    tokens' bytes: a boundary inside a multi-byte character moves to that
    character's end, so every chunk is whole characters."""
    ids = tokenizer.encode(text)
    byte_to_char, c = {}, 0
    pos = 0
    for ch in text:
        byte_to_char[pos] = c
        pos += len(ch.encode("utf-8"))
        c += 1
    byte_to_char[pos] = c
    out, b = [0], 0
    for i in ids:
        b += len(tokenizer.token_bytes(i))
        snap = b
        while snap not in byte_to_char:  # mid-character: to the character's end
            snap += 1
        out.append(byte_to_char[snap])
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _spans(text: str, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Non-blank pieces of text between separators, as (start, end) with surrounding space trimmed."""
    spans, start = [], 0
    for m in [*pattern.finditer(text), None]:
        end = m.start() if m else len(text)
        piece = text[start:end]
        if piece.strip():
            s = start + len(piece) - len(piece.lstrip())
            spans.append((s, start + len(piece.rstrip())))
        start = m.end() if m else len(text)
    return spans


def chunk_document(doc: Document, method: str = "tokens", size: int = 128, overlap: int = 16,
                   tokenizer=None) -> list[Chunk]:
    """The chunks of one document. tokenizer (for "tokens"): anything with
    encode(text) -> ids and token_bytes(id) -> bytes (an acorn Tokenizer)."""
    _check(method, size, overlap)
    text = doc.text
    if method == "tokens":
        if tokenizer is None:
            raise AcornError("chunking by tokens needs a tokenizer; pass one, or chunk by paragraphs")
        offsets = _char_offsets(text, tokenizer)
        spans = [(offsets[a], offsets[b]) for a, b in _windows(len(offsets) - 1, size, overlap)]
    elif method == "paragraphs":
        spans = _spans(text, re.compile(r"\n\s*\n"))
    else:
        sentences = _spans(text, _SENTENCE_END)
        spans = [(sentences[a][0], sentences[b - 1][1]) for a, b in _windows(len(sentences), size, overlap)] \
            if sentences else []
    chunks = []
    for s, e in spans:
        if text[s:e].strip():
            chunks.append(Chunk(f"{doc.id}#{len(chunks)}", text[s:e], doc.source, doc.title, doc.id, s, e))
    return chunks


def chunk_documents(docs: list[Document], method: str = "tokens", size: int = 128, overlap: int = 16,
                    tokenizer=None) -> list[Chunk]:
    _check(method, size, overlap)
    return [c for d in docs for c in chunk_document(d, method, size, overlap, tokenizer)]
