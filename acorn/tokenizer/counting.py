"""Looking at a tokenizer: what it contains, how it splits text, what text costs.

The concept is compression. A byte-level BPE tokenizer turns bytes into ids;
the fewer ids per byte of your text, the more text fits in a context window,
the less a training run or an API call costs, and the further a model can see.
"Bytes per token" on text like yours is the number to compare tokenizers by
(GPT-2 gets about 4 on English prose; a tokenizer trained on your own domain
usually does better there and worse elsewhere).

The other side of the same coin: a model sees ids, never letters. "strawberry"
reaches it as two or three opaque ids, which is why counting the r's in it is
hard for a language model and easy for a program. `describe` shows both.

Counting streams the file: it is read in chunks cut at newlines (where no split
pattern match can straddle the cut, so the count equals encoding the whole
text at once), so a multi-gigabyte file costs a few megabytes of memory.
A .jsonl file counts what training reads from it, the text field of each line
(acorn.tokenizer.text.iter_file_texts), not the JSON around it.
"""

from __future__ import annotations

import os
from typing import Literal

from acorn.errors import AcornError
from acorn.tokenizer.bpe import Tokenizer
from acorn.tokenizer.text import CHUNK_BYTES, iter_file_texts, iter_text_chunks

Errors = Literal["strict", "replace"]

# Pieces encoded per encode_batch call (tiktoken spreads them over threads).
_BATCH_PIECES = 4

SAMPLE_TEXT = "Hello world, 12345!"
STRAWBERRY = "strawberry"

# ------------------------------------------------------------------- counting
def count_tokens(
    tok: Tokenizer, path: str | os.PathLike, errors: Errors = "strict", *, chunk_bytes: int = CHUNK_BYTES,
    text_field: str = "text",
) -> int:
    """Number of tokens in a text file, or in the `text_field` of a .jsonl file's
    lines (special-token text counts as plain text)."""
    return _count(tok, path, errors, chunk_bytes, text_field)[1]


def _count(tok: Tokenizer, path, errors: str, chunk_bytes: int, text_field: str = "text") -> tuple[int, int]:
    """(utf-8 bytes of the text, tokens) of one file, streamed."""
    n_bytes = n_tokens = batch_bytes = 0
    batch: list[str] = []

    def flush() -> int:
        n = sum(len(ids) for ids in tok.encode_batch(batch)) if batch else 0
        batch.clear()
        return n

    jsonl = str(path).endswith(".jsonl")
    pieces = iter_file_texts(path, text_field, errors) if jsonl else iter_text_chunks(path, errors, chunk_bytes)
    for piece in pieces:
        # With errors='replace' the text differs from the file; count the
        # bytes the tokenizer actually saw.
        size = len(piece.encode("utf-8", "surrogatepass"))
        n_bytes += size
        batch_bytes += size
        batch.append(piece)
        if batch_bytes >= _BATCH_PIECES * chunk_bytes:  # a few pieces of a text file, many short documents
            n_tokens += flush()
            batch_bytes = 0
    n_tokens += flush()
    return n_bytes, n_tokens


def compare_bytes_per_token(
    tokenizers: dict[str, Tokenizer], paths, errors: Errors = "strict", *, chunk_bytes: int = CHUNK_BYTES,
    text_field: str = "text",
) -> list[dict]:
    """Bytes per token of each tokenizer on the same files (higher compresses better).

    Returns one row per tokenizer, in the order given:
    {"name", "vocab_size", "bytes", "tokens", "bytes_per_token"}.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise AcornError("no input files; give one or more text files")
    rows = []
    for name, tok in tokenizers.items():
        n_bytes = n_tokens = 0
        for p in paths:
            b, t = _count(tok, p, errors, chunk_bytes, text_field)
            n_bytes += b
            n_tokens += t
        rows.append({
            "name": name,
            "vocab_size": tok.vocab_size,
            "bytes": n_bytes,
            "tokens": n_tokens,
            "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """An aligned text table of compare_bytes_per_token rows."""
    header = ["tokenizer", "vocab", "bytes", "tokens", "bytes/token"]
    body = [
        [str(r["name"]), f"{r['vocab_size']:,}", f"{r['bytes']:,}", f"{r['tokens']:,}", f"{r['bytes_per_token']:.3f}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        # Name left-aligned, numbers right-aligned so digits line up.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in body)])


# ----------------------------------------------------------------- describing
def token_pieces(tok: Tokenizer, text: str) -> list[str | bytes]:
    """The pieces `text` splits into: each token's text, or its bytes when it is
    only part of a UTF-8 character (byte-level BPE may cut an emoji in four)."""
    out: list[str | bytes] = []
    for i in tok.encode(text):
        b = tok.token_bytes(i)
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(b)
    return out


def describe(tok: Tokenizer) -> str:
    """A readable summary of a tokenizer (what `acorn tokenizer info` prints)."""
    ranks = tok.mergeable_ranks
    # Byte-level BPE starts from 256 single-byte tokens; every other
    # mergeable token is one learned merge.
    merges = f"{len(ranks) - 256:,}" if ranks is not None else "n/a (not a tiktoken-style vocabulary)"
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    shown = ", ".join(f"{s}={i}" for s, i in specials[:16])
    if len(specials) > 16:
        shown += f", ... and {len(specials) - 16} more"

    def role(name: str) -> str:
        t = getattr(tok, f"{name}_token")
        return f"{t} (id {getattr(tok, f'{name}_id')})" if t else "none"

    if tok.chat_template:
        chat = f"{tok.chat_format or 'custom'} (chat template present)"
    else:
        chat = f"{tok.chat_format or 'none'} (no chat template)"
    straw_ids = tok.encode(STRAWBERRY)
    straw_sp_ids = tok.encode(" " + STRAWBERRY)
    lines = [
        f"name:            {tok.name}",
        f"vocab size:      {tok.vocab_size:,} (special tokens included)",
        f"merges:          {merges}",
        f"special tokens:  {len(specials)}" + (f": {shown}" if specials else ""),
        f"bos / eos / pad: {role('bos')} / {role('eos')} / {role('pad')}",
        f"split pattern:   {tok.pattern}",
        f"chat format:     {chat}",
        "",
        f"example:         {SAMPLE_TEXT!r} -> {token_pieces(tok, SAMPLE_TEXT)}",
        f"                 ids {tok.encode(SAMPLE_TEXT)}",
        f"strawberry:      {STRAWBERRY!r} -> {token_pieces(tok, STRAWBERRY)} = ids {straw_ids}",
        f"                 {' ' + STRAWBERRY!r} -> {token_pieces(tok, ' ' + STRAWBERRY)} = ids {straw_sp_ids}",
        f"                 The model sees these ids, not letters: the {STRAWBERRY.count('r')} r's are not visible "
        "in them,",
        "                 which is why counting letters is hard for an LLM (and the same word gets",
        "                 different ids with and without a leading space).",
    ]
    return "\n".join(lines)
