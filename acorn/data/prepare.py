"""Pretraining data preparation: text in, binary token shards out.

The concept is nanoGPT's `prepare.py` / nanochat's token shards: tokenize the
corpus once, ahead of training, into flat arrays of token ids that the loader
(acorn.data.loader) memory-maps, so training never waits on a tokenizer.

Inputs: files, directories (their *.txt, *.jsonl and *.parquet files, not
recursive) and globs, taken in sorted order.
- .txt: the whole file is ONE document. A file larger than TXT_SPLIT_BYTES
  (4 MiB: a book dump, not a document) is cut into pieces of about 1 MiB at
  safe newlines (acorn.tokenizer.text.iter_text_chunks) and each piece is a
  document of its own.
- .jsonl: one document per line, the string in field `text_field`. A line
  without that field but with "messages" (a list of role/content dicts, as
  in sft.jsonl; "tools" too, if it has them) is a conversation document: it
  is rendered by the tokenizer's own chat template (acorn.chat.template, the
  one renderer SFT uses too), the template's role markers as special ids and
  the messages' text as plain text. That is how pretraining learns the chat
  format before SFT does (mixed training in the chat template: `acorn data
  world --mixed-qa N --mixed-qa-format chat`). A tokenizer without a chat
  template cannot render it and is refused.
- .parquet: one document per row, the string column `text_field`, read one
  row group at a time with pyarrow.
Empty documents ("") are skipped; a file with no bytes at all is an error.

Output directory (one split per prefix, each a flat stream of documents):
    meta.json        what was prepared from what (see `_identity`) and the shard list
    train_000.bin    little-endian uint16 when vocab_size <= 65536, else uint32,
    train_001.bin    no header: np.memmap(path, dtype=meta["dtype"]) reads it
    val_000.bin      held-out documents, same layout
Each document is written as [BOS] ids [EOS]. BOS starts every document
(nanochat's convention: the loader finds document starts by looking for BOS,
and a row that starts at BOS is what generation starts from); EOS ends it so
the model learns where a document stops, which generation needs to know when
to stop. A tokenizer whose EOS is its BOS (GPT-2's <|endoftext|>) writes the
token once; one without a BOS uses its EOS as the document start. Text that
looks like a special token is encoded as plain text: a document cannot forge
a BOS. A conversation is written as [BOS] (the template's ids) [EOS], without
a second BOS or EOS where the template already writes one (the acorn and
llama3 templates start with BOS).

Validation split: a document goes to val when a keyed hash of its text (key:
the seed; a conversation's is its canonical JSON, json.dumps(messages,
sort_keys=True)) falls below `val_fraction`. That is deterministic, independent of
order and worker count, and puts exact duplicates on the same side, so a
duplicated document cannot leak from train into val.

Resuming: the corpus is cut into chunks of about `chunk_bytes` of input
(whole documents, cut without tokenizing, so the cut is the same on every
run). Chunks are tokenized in parallel worker processes and assembled in
order; a shard closes at the first chunk boundary where it holds at least
`shard_tokens` tokens, so shard contents are a pure function of the inputs,
tokenizer and settings. Every shard is written atomically and then recorded
in meta.json with its chunk range. A re-run with the same inputs, tokenizer
and settings keeps each recorded shard whose file has the recorded size,
tokenizes only the chunks of the missing ones, and produces the same bytes.
A re-run with anything different is refused (choose a new --out or pass
--overwrite).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from acorn.errors import AcornError
from acorn import fileio
from acorn.fileio import atomic_write, read_json, write_json

FORMAT = "acorn-token-shards"
FORMAT_VERSION = 1
SUFFIXES = (".txt", ".jsonl", ".parquet")
TXT_SPLIT_BYTES = 4 << 20
TXT_PIECE_BYTES = 1 << 20
# Chunks are the unit of parallel work and of shard boundaries. A shard holds
# about 4 * shard_tokens bytes of text (~4 bytes per token), so a chunk of
# shard_tokens / 4 bytes is ~1/16 of a shard: shards overshoot shard_tokens by
# a few percent at most. Capped at 1 MiB so workers stay busy and memory flat.
CHUNK_BYTES_MIN = 1 << 10
CHUNK_BYTES_MAX = 1 << 20
# Files a tokenizer is made of (never a model's weights next to them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id: uint16 up to 65,536 tokens."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def chunk_bytes_for(shard_tokens: int) -> int:
    return max(CHUNK_BYTES_MIN, min(CHUNK_BYTES_MAX, shard_tokens // 4))


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}.bin"


# ------------------------------------------------------------------- inputs
def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, directories and globs -> existing .txt/.jsonl/.parquet files, each once, in a stable order."""
    return [p.resolve() for p in fileio.expand_inputs(inputs, SUFFIXES, any_file=False)]


def _check_input(path: Path, text_field: str, errors: str = "strict") -> None:
    """Fail before the work, not an hour into it: empty files, a wrong field or column."""
    if path.stat().st_size == 0:
        raise AcornError(f"{path}: file is empty; remove it from the inputs")
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    _jsonl_document(line.removeprefix(b"\xef\xbb\xbf"), path, lineno, text_field, errors)
                    return
        raise AcornError(f"{path}: no documents (only blank lines); remove it from the inputs")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise AcornError(f"{path}: not a readable Parquet file ({e}); check the file") from None
        if text_field not in schema.names:
            raise AcornError(f"{path}: no column {text_field!r}; pass --text-field NAME "
                             f"(columns there: {', '.join(schema.names) or 'none'})")
        t = schema.field(text_field).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view"):
            raise AcornError(f"{path}: column {text_field!r} holds {t}, not strings; pass --text-field NAME "
                             "of a string column")


@dataclass(frozen=True)
class Conversation:
    """A JSONL line's "messages" (and "tools"): a document the chat template renders."""
    messages: list
    tools: list | None
    where: str  # file:line, for errors

    @property
    def text(self) -> str:
        """What its turns say, one per line: what readers of plain text (documents()) see."""
        return "\n".join(m["content"] for m in self.messages if isinstance(m, dict) and isinstance(m.get("content"), str))

    @property
    def key(self) -> str:
        """The text its validation hash is of: the messages as canonical JSON."""
        return json.dumps(self.messages, sort_keys=True)


def _jsonl_document(line: bytes, path, lineno: int, text_field: str, errors: str = "strict") -> str | Conversation:
    row = fileio.parse_jsonl_line(line, path, lineno, errors)
    text = row.get(text_field)
    if isinstance(text, str):
        return text
    if text_field not in row and isinstance(row.get("messages"), list):
        return Conversation(row["messages"], row.get("tools"), f"{path}:{lineno}")
    raise AcornError(f"{path}:{lineno}: no string field {text_field!r} (nor a \"messages\" list); pass --text-field "
                     f"NAME (fields there: {', '.join(map(str, row)) or 'none'})")


# ------------------------------------------------------------------- chunks
# A piece is what one input contributes to a chunk; a worker turns pieces into
# documents. ("jsonl", path, first_line, bytes) | ("text", path, str) |
# ("parquet", path, row_group, first_row).
def iter_chunks(files: Sequence[Path], chunk_bytes: int, errors: str = "strict") -> Iterator[tuple[list[tuple], int]]:
    """Yield (pieces, input bytes) in order; a chunk closes once it holds chunk_bytes of input."""
    pieces, size = [], 0
    for piece, n in _iter_pieces(files, chunk_bytes, errors):
        pieces.append(piece)
        size += n
        if size >= chunk_bytes:
            yield pieces, size
            pieces, size = [], 0
    if pieces:
        yield pieces, size


def _iter_pieces(files: Sequence[Path], chunk_bytes: int, errors: str = "strict") -> Iterator[tuple[tuple, int]]:
    from acorn.tokenizer.text import iter_text_chunks, read_text_file

    for path in files:
        if path.suffix == ".txt":
            if path.stat().st_size <= TXT_SPLIT_BYTES:
                yield ("text", str(path), read_text_file(path, errors)), path.stat().st_size
            else:
                for text in iter_text_chunks(path, errors, chunk_bytes=TXT_PIECE_BYTES):
                    yield ("text", str(path), text), len(text.encode("utf-8", "surrogatepass"))
        elif path.suffix == ".jsonl":
            yield from _jsonl_pieces(path, chunk_bytes)
        else:
            import pyarrow.parquet as pq

            md = pq.ParquetFile(path).metadata
            first_row = 0
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                nbytes = sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
                yield ("parquet", str(path), g, first_row), nbytes
                first_row += rg.num_rows


def _jsonl_pieces(path: Path, chunk_bytes: int) -> Iterator[tuple[tuple, int]]:
    """Cut at newlines without parsing: the main process reads, workers parse."""
    line, buf = 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            buf += block
            cut = buf.rfind(b"\n") + 1 if block else len(buf)
            if cut and (len(buf) >= chunk_bytes or not block):
                piece, buf = buf[:cut], buf[cut:]
                yield ("jsonl", str(path), line, piece), len(piece)
                line += piece.count(b"\n")
            if not block:
                return


def _piece_documents(piece: tuple, text_field: str, errors: str = "strict") -> list[str | Conversation]:
    kind, path = piece[0], piece[1]
    if kind == "text":
        return [piece[2]]
    if kind == "jsonl":
        first, data = piece[2], piece[3]
        if first == 1:
            data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        return [_jsonl_document(line, path, first + i, text_field, errors)
                for i, line in enumerate(data.split(b"\n")) if line.strip()]
    import pyarrow.parquet as pq

    group, first_row = piece[2], piece[3]
    texts = pq.ParquetFile(path).read_row_group(group, columns=[text_field]).column(0).to_pylist()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise AcornError(f"{path}: row {first_row + i} has no text in column {text_field!r} (null); "
                             "drop such rows or fill them")
    return texts


def documents(inputs: Sequence[str | os.PathLike], text_field: str = "text") -> Iterator[tuple[Path, str]]:
    """(file, text) of every document of the inputs, in the order and with the
    boundaries `prepare` uses (a .txt file whole, or in ~1 MiB pieces past
    4 MiB; a JSONL line; a Parquet row), empty ones included. A conversation's
    text is its turns' contents, one per line (Conversation.text)."""
    files = expand_inputs(inputs)
    for f in files:
        _check_input(f, text_field)
    for pieces, _ in iter_chunks(files, CHUNK_BYTES_MAX):
        for piece in pieces:
            for doc in _piece_documents(piece, text_field):
                yield Path(piece[1]), doc.text if isinstance(doc, Conversation) else doc


# ------------------------------------------------------------- tokenizing
@dataclass
class _Spec:
    """What a worker needs besides the chunk (small, picklable)."""
    text_field: str
    val_fraction: float
    seed: int
    dtype: str
    bos: int
    eos: int | None
    errors: str = "strict"


def is_val(text: str, val_fraction: float, seed: int) -> bool:
    """Keyed BLAKE2b of the text, as a number in [0, 1), below val_fraction."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") < val_fraction * 2.0**64


def has_chat_template(tok) -> bool:
    """Does the tokenizer carry a chat template (its own, or its Acorn chat format's)?
    Without one apply_chat_template would fall back to the acorn format, whose
    role markers such a tokenizer does not have as special tokens."""
    return bool(getattr(tok, "chat_template", None) or getattr(tok, "chat_format", None))


def render_conversation(tok, conv: Conversation) -> list[int]:
    """A conversation document's ids: the tokenizer's chat template, rendered as SFT renders it
    (special tokens the template writes as their ids, the messages' text as plain text)."""
    if not has_chat_template(tok):
        raise AcornError(f"{conv.where}: a conversation (\"messages\") needs a chat template to render, and the "
                         "tokenizer has none; use one with a chat template (`acorn tokenizer train` writes one) "
                         "or give the line a text field")
    try:
        return tok.apply_chat_template(conv.messages, tools=conv.tools)
    except AcornError as e:  # the template says what is wrong with the conversation; say where it is
        raise AcornError(f"{conv.where}: {e}") from None


def tokenize_chunk(tok, pieces: list[tuple], spec: _Spec, num_threads: int | None = 1) -> dict:
    """Documents of a chunk -> {"train": ids, "val": ids, "train_docs": n, "val_docs": n}."""
    docs_in = [d for piece in pieces for d in _piece_documents(piece, spec.text_field, spec.errors)
               if (d.messages if isinstance(d, Conversation) else d)]
    encoded = iter(tok.encode_batch([d for d in docs_in if isinstance(d, str)], num_threads=num_threads))
    out: dict[str, list[int]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    eos = spec.eos if spec.eos is not None and spec.eos != spec.bos else None  # GPT-2's one token: written once
    for doc in docs_in:
        if isinstance(doc, Conversation):
            ids, key = render_conversation(tok, doc), doc.key
        else:
            ids, key = next(encoded), doc
        split = "val" if spec.val_fraction > 0 and is_val(key, spec.val_fraction, spec.seed) else "train"
        stream = out[split]
        # Text never encodes to a special id, so only a template's own BOS or EOS can be here already.
        if ids[:1] != [spec.bos]:
            stream.append(spec.bos)
        stream.extend(ids)
        if eos is not None and ids[-1:] != [eos]:
            stream.append(eos)
        docs[split] += 1
    return {"train": np.array(out["train"], dtype=spec.dtype), "val": np.array(out["val"], dtype=spec.dtype),
            "train_docs": docs["train"], "val_docs": docs["val"]}


_WORKER: dict = {}


def _init_worker(tokenizer_path: str, parent: int) -> None:
    die_with_parent(parent)
    from acorn.tokenizer.bpe import Tokenizer

    _WORKER["tok"] = Tokenizer.from_pretrained(tokenizer_path)


def die_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies. A parent killed with
    kill -9 runs no cleanup, and its pool's workers would otherwise wait on their
    queue forever (keeping multiprocessing's resource tracker alive with them).
    On Linux the kernel delivers SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a
    daemon thread watches the parent's pid."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            if ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="acorn-parent-watch").start()


def _work(pieces: list[tuple], spec: _Spec) -> dict:
    return tokenize_chunk(_WORKER["tok"], pieces, spec, num_threads=1)


# ---------------------------------------------------------------- identity
def load_tokenizer(path):
    from acorn.tokenizer.bpe import Tokenizer

    try:
        return Tokenizer.from_pretrained(path)
    except AcornError:
        raise
    except Exception as e:
        raise AcornError(f"cannot load tokenizer {path} ({type(e).__name__}: {e}); point --tokenizer at a "
                         "directory written by `acorn tokenizer train`") from None


def tokenizer_fingerprint(path) -> str:
    """sha256 over the tokenizer's own files (names and bytes); the built-in 'gpt2' hashes its asset."""
    p = Path(path)
    if not p.exists():
        from acorn.tokenizer.files import GPT2_RANKS

        files = [GPT2_RANKS]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and (f.name in TOKENIZER_FILES or f.suffix == ".tiktoken"))
    else:
        files = [p, *(p.parent / n for n in ("tokenizer_config.json", "special_tokens_map.json"))]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _identity(meta: dict) -> dict:
    """The keys that decide shard contents: a re-run must match on all of them."""
    tok = meta["tokenizer"]
    return {"format": (meta["format"], meta["version"]), "tokenizer": tok["sha256"],
            "vocab_size": tok["vocab_size"], "bos/eos ids": (tok["bos_id"], tok["eos_id"]), "dtype": meta["dtype"],
            **{f"setting {k}": v for k, v in meta["settings"].items()},
            "inputs": [(i["path"], i["bytes"], i["mtime_ns"]) for i in meta["inputs"]]}


def _existing_meta(out: Path, meta: dict, overwrite: bool) -> dict | None:
    """The meta.json of an earlier run into `out` that this run may resume, or None to start fresh."""
    # Temporary files are what a kill left mid-write: never finished data, so removed, never a reason to refuse.
    for f in [*out.glob(".train_*.tmp"), *out.glob(".val_*.tmp"), *out.glob(".meta.json.*.tmp")]:
        f.unlink(missing_ok=True)
    ours = [*out.glob("train_*.bin"), *out.glob("val_*.bin")]
    old_path = out / "meta.json"
    if overwrite:
        for f in [*ours, old_path]:
            f.unlink(missing_ok=True)
        return None
    if not old_path.is_file():
        if ours:
            raise AcornError(f"{out} holds token shards but no meta.json; choose a new --out or pass --overwrite")
        return None
    old = read_json(old_path)
    if not ours and isinstance(old, dict) and not any((old.get("shards") or {}).values()):
        return None  # a run stopped before its first shard: nothing to resume, nothing to protect
    try:
        a, b = _identity(old), _identity(meta)
    except (KeyError, TypeError):
        raise AcornError(f"{old_path} is not from this version of `acorn data prepare`; "
                         "choose a new --out or pass --overwrite") from None
    for key in b:
        if a.get(key) != b[key]:
            what = ("the input files changed" if key == "inputs"
                    else f"{key} differs ({a.get(key)!r} there, {b[key]!r} now)")
            raise AcornError(f"{out} was prepared with other inputs, tokenizer or settings: {what}; "
                             "choose a new --out or pass --overwrite")
    return old


def _valid_records(old: dict | None, out: Path, itemsize: int) -> dict[str, dict[int, dict]]:
    """Recorded shards whose file exists with the recorded size, by split and index."""
    valid: dict[str, dict[int, dict]] = {s: {} for s in SPLITS}
    for split in SPLITS:
        for rec in (old or {}).get("shards", {}).get(split, []):
            f = out / rec["file"]
            if (rec["file"] == shard_name(split, rec["index"]) and f.is_file()
                    and f.stat().st_size == rec["tokens"] * itemsize):
                valid[split][rec["index"]] = rec
    return valid


# ------------------------------------------------------------------ shards
@dataclass
class _ShardWriter:
    """Assembles one split's chunks, in order, into shards; reuses valid recorded shards."""
    split: str
    out: Path
    shard_tokens: int
    valid: dict[int, dict]
    index: int = 0
    start: int = 0          # first chunk of the shard being built
    parts: list = field(default_factory=list)
    tokens: int = 0
    docs: int = 0
    skip_until: int = -1    # chunks below this belong to a reused shard
    records: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records = dict(self.valid)

    def covers(self, chunk: int) -> bool:
        """Is this chunk inside a valid recorded shard (so it need not be tokenized for this split)?"""
        return any(r["chunks"][0] <= chunk < r["chunks"][1] for r in self.valid.values())

    def add(self, chunk: int, result: dict | None) -> bool:
        """Add chunk `chunk` (None: not tokenized, as it lies in reused shards); True when a shard was written."""
        if chunk < self.skip_until:
            return False
        rec = self.valid.get(self.index)
        if rec is not None and rec["chunks"][0] == chunk and not self.parts:
            self.skip_until = rec["chunks"][1]
            self.index += 1
            self.start = self.skip_until
            return False
        if rec is not None and rec["chunks"][0] < chunk:  # cannot happen when the identity matched
            raise AcornError(f"{self.out}: recorded shard {rec['file']} does not line up with this run; "
                             "choose a new --out or pass --overwrite")
        arr = result[self.split]
        if arr.size:
            self.parts.append(arr)
            self.tokens += int(arr.size)
            self.docs += result[f"{self.split}_docs"]
        if self.tokens >= self.shard_tokens:
            self.flush(chunk + 1)
            return True
        return False

    def flush(self, end_chunk: int) -> None:
        if not self.tokens:
            return
        name = shard_name(self.split, self.index)
        with atomic_write(self.out / name, "wb") as f:
            f.write(memoryview(np.concatenate(self.parts)))
        self.records[self.index] = {"file": name, "index": self.index, "tokens": self.tokens,
                                    "documents": self.docs, "chunks": [self.start, end_chunk]}
        self.index += 1
        self.start, self.parts, self.tokens, self.docs = end_chunk, [], 0, 0

    def record_list(self) -> list[dict]:
        return [self.records[i] for i in sorted(self.records)]


# -------------------------------------------------------------------- main
def prepare(
    inputs: Sequence[str | os.PathLike],
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    text_field: str = "text",
    val_fraction: float = 0.005,
    shard_tokens: int = 10_000_000,
    workers: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    errors: str = "strict",
) -> dict:
    """Tokenize `inputs` into shards in `out` (see the module docstring); returns a summary.

    workers: tokenizer processes (default: all cores); 0 or 1 tokenizes in this
        process (on threads). The shards do not depend on it. Workers end with
        this process, however it ends.
    errors: bytes that are not UTF-8 stop with the file and place ('strict') or
        become U+FFFD ('replace').
    overwrite: delete the shards and meta.json of an earlier run into `out`
        that used other inputs, tokenizer or settings (instead of refusing).
    quiet: no progress bar and no printed summary.
    """
    t0 = time.perf_counter()
    if not 0 <= val_fraction < 1:
        raise AcornError(f"val fraction must be in [0, 1), got {val_fraction}; e.g. --val-fraction 0.005")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise AcornError(f"shard tokens must be a positive integer, got {shard_tokens!r}; "
                         "e.g. --shard-tokens 10_000_000")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise AcornError(f"seed must be a non-negative integer, got {seed!r}; e.g. --seed 0")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise AcornError(f"workers must be a non-negative integer, got {workers!r}; e.g. --workers 4 "
                         "(0: tokenize in this process)")
    if errors not in ("strict", "replace"):
        raise AcornError(f"errors must be 'strict' or 'replace', not {errors!r}")
    files = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer)
    bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if bos is None:
        raise AcornError(f"tokenizer {tokenizer} has no BOS or EOS token to separate documents; "
                         "use one trained by `acorn tokenizer train`")
    for f in files:
        _check_input(f, text_field, errors)
    dtype = token_dtype(tok.vocab_size)
    chunk_bytes = chunk_bytes_for(shard_tokens)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"{out} exists and is not a directory; give --out a directory path")
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "tokenizer": {"path": str(Path(tokenizer).resolve() if Path(tokenizer).exists() else tokenizer),
                      "sha256": tokenizer_fingerprint(tokenizer), "vocab_size": tok.vocab_size,
                      "bos_id": bos, "eos_id": tok.eos_id},
        "dtype": dtype.name, "byteorder": "little",
        "settings": {"text_field": text_field, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
                     "seed": seed, "chunk_bytes": chunk_bytes,
                     # Recorded only when not the default, so data prepared before the setting existed resumes.
                     **({"errors": errors} if errors != "strict" else {})},
        "inputs": [{"path": str(f), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files],
        "shards": {"train": [], "val": []},
        "complete": False,
    }
    old = _existing_meta(out, meta, overwrite) if out.is_dir() else None
    valid = _valid_records(old, out, dtype.itemsize)
    if old is not None and old.get("complete") and all(
        sorted(valid[s]) == list(range(old.get("shard_counts", {}).get(s, -1))) for s in SPLITS
    ):
        summary = _summary(old, out, time.perf_counter() - t0, new_tokens=0, reused=sum(map(len, valid.values())))
        if not quiet:
            print(f"{out}: already prepared from these inputs with this tokenizer; nothing to do")
            print(format_summary(summary))
        return summary
    out.mkdir(parents=True, exist_ok=True)

    spec = _Spec(text_field, val_fraction, seed, dtype.str, bos, tok.eos_id, errors)
    writers = {s: _ShardWriter(s, out, shard_tokens, valid[s]) for s in SPLITS}
    workers = (os.cpu_count() or 1) if workers is None else workers
    total_bytes = sum(i["bytes"] for i in meta["inputs"])
    new_tokens = 0

    def save_meta(complete: bool) -> None:
        meta["shards"] = {s: w.record_list() for s, w in writers.items()}
        meta["complete"] = complete
        if complete:
            meta["chunks"] = n_chunks
            meta["shard_counts"] = {s: len(w.records) for s, w in writers.items()}
        write_json(out / "meta.json", meta)

    # Recorded before the first shard is written: a run killed while writing it
    # is then resumed by the next, not refused as a directory of unknown shards.
    n_chunks = 0
    save_meta(False)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=True if quiet else None)
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(str(tokenizer), os.getpid()))
    try:
        pending: deque = deque()  # (chunk index, input bytes, future or result or None), in order

        def drain(limit: int) -> None:
            nonlocal new_tokens
            while len(pending) > limit:
                c, nbytes, fut = pending.popleft()
                result = fut.result() if hasattr(fut, "result") else fut
                if result is not None:
                    new_tokens += result["train"].size + result["val"].size
                if any([writers[s].add(c, result) for s in SPLITS]):
                    save_meta(False)
                bar.update(nbytes)

        for c, (pieces, nbytes) in enumerate(iter_chunks(files, chunk_bytes, errors)):
            n_chunks = c + 1
            if all(w.covers(c) for w in writers.values()):
                pending.append((c, nbytes, None))
            elif pool is not None:
                pending.append((c, nbytes, pool.submit(_work, pieces, spec)))
            else:
                pending.append((c, nbytes, tokenize_chunk(tok, pieces, spec, num_threads=None)))
            drain(2 * workers)
        drain(0)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for w in writers.values():
        w.flush(n_chunks)
    if not writers["train"].records:
        raise AcornError("the inputs hold no documents (every text is empty); check --text-field and the files")
    save_meta(True)
    summary = _summary(meta, out, time.perf_counter() - t0, new_tokens=new_tokens,
                       reused=sum(len(w.valid) for w in writers.values()))
    if not quiet:
        if not writers["val"].records and val_fraction > 0:
            print(f"warning: no document fell in the validation split; raise --val-fraction (now {val_fraction})")
        print(format_summary(summary))
    return summary


def _summary(meta: dict, out: Path, seconds: float, *, new_tokens: int, reused: int) -> dict:
    sh = meta["shards"]
    return {
        "out": str(out), "dtype": meta["dtype"],
        "documents": {s: sum(r["documents"] for r in sh[s]) for s in SPLITS},
        "tokens": {s: sum(r["tokens"] for r in sh[s]) for s in SPLITS},
        "shards": {s: len(sh[s]) for s in SPLITS},
        "reused_shards": reused, "tokenized_tokens": int(new_tokens),
        "seconds": round(seconds, 3), "tokens_per_second": round(new_tokens / seconds) if seconds > 0 else 0,
    }


def format_summary(s: dict) -> str:
    docs, toks, shards = s["documents"], s["tokens"], s["shards"]
    line = (f"prepared {docs['train'] + docs['val']:,} documents ({docs['train']:,} train, {docs['val']:,} val), "
            f"{toks['train'] + toks['val']:,} tokens ({toks['train']:,} train, {toks['val']:,} val) "
            f"in {shards['train']} train + {shards['val']} val shards of {s['dtype']} -> {s['out']}")
    line += (f"\ntokenized {s['tokenized_tokens']:,} tokens in {s['seconds']:.1f}s "
             f"({s['tokens_per_second']:,} tokens/s)")
    if s["reused_shards"]:
        line += f"; reused {s['reused_shards']} finished shards"
    return line
