"""Reading training and evaluation text: UTF-8 files in pieces cut where no BPE chunk can cross.

Long texts are read, trained on and counted in pieces, so memory stays flat on
a corpus of any size; the cut rule below guarantees that tokenizing the pieces
gives exactly the tokens of the whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import regex

from acorn.errors import AcornError, NotUTF8

# Long texts are read, trained on and counted in pieces of about 1 MiB: big
# enough that per-call overhead vanishes, small enough that memory stays flat
# and rustbpe can spread pieces over cores. A piece ends only at a safe cut:
# right after a newline that follows a visible ASCII character and precedes an
# ASCII letter. No match of the GPT-2 or GPT-4 split pattern contains "\n"
# followed by a letter, and with a non-space before the newline GPT-2's
# end-of-text rule (\s++$) sees the same lone "\n" in the piece as in the whole
# text; so pieces give exactly the chunks of the whole. (Both neighbours being
# ASCII also keeps a byte cut on a UTF-8 character boundary.)
CHUNK_BYTES = 1 << 20
_SAFE_CUT = r"(?<=[\x21-\x7e])\n(?=[A-Za-z])"
_SAFE_CUT_STR = regex.compile(_SAFE_CUT)
_SAFE_CUT_BYTES = regex.compile(_SAFE_CUT.encode())


def read_text_file(path: str | os.PathLike, errors: str = "strict") -> str:
    """Read a UTF-8 file whole; undecodable bytes are an AcornError with the offset."""
    return "".join(iter_text_chunks(path, errors))


def iter_text_chunks(path: str | os.PathLike, errors: str = "strict", chunk_bytes: int | None = None) -> Iterator[str]:
    """Yield the text of a UTF-8 file in pieces of about `chunk_bytes`, cut at safe cuts.

    Undecodable bytes stop with the file and the byte offset ('strict') or
    become U+FFFD ('replace'). A file with no safe cut is read whole.
    """
    path = Path(path)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if not path.is_file():
        raise AcornError(f"{path}: no such file; check the path")
    if errors not in ("strict", "replace"):
        raise AcornError(f"errors must be 'strict' or 'replace', not {errors!r}")
    offset = 0  # file offset of buf[0], for the error message
    buf = b""
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            buf += block
            cut = _last_safe_cut(buf, max(0, len(buf) - len(block) - 1))
            if cut is not None:
                yield _decode(buf[:cut], path, offset, errors)
                offset += cut
                buf = buf[cut:]
    if buf:
        yield _decode(buf, path, offset, errors)


def iter_file_texts(path: str | os.PathLike, text_field: str = "text", errors: str = "strict") -> Iterator[str]:
    """The text a training stage reads from a file: a .jsonl's documents (the string in
    `text_field` of each line, or the turns of a `messages` conversation), otherwise
    the file's text in safe pieces. What tokenizer training trains on and what token
    counting counts, so a count is of the text, never of JSON keys, quotes and escapes."""
    path = Path(path)
    if path.suffix != ".jsonl":
        yield from iter_text_chunks(path, errors)
        return
    from acorn.fileio import read_jsonl_lines

    for lineno, row in read_jsonl_lines(path, errors):
        text = row.get(text_field)
        if isinstance(text, str):
            yield text
        elif text_field not in row and isinstance(row.get("messages"), list):
            # A conversation (OpenAI messages): what its turns say.
            yield from (m["content"] for m in row["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str))
        else:
            raise AcornError(f"{path}:{lineno}: no string field {text_field!r}; pass --text-field NAME "
                             f"(fields there: {', '.join(map(str, row)) or 'none'})")


def _last_safe_cut(buf: bytes, start: int) -> int | None:
    last = None
    for m in _SAFE_CUT_BYTES.finditer(buf, start):
        last = m.end()
    return last


def _decode(data: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise NotUTF8(
            f"{path}: bytes at offset {offset + e.start} are not UTF-8 ({data[e.start:e.start + 4]!r}); "
            "convert the file to UTF-8"
        ) from None


def split_for_training(text: str) -> Iterator[str]:
    """Cut a long in-memory text into pieces of about CHUNK_BYTES characters at safe cuts."""
    start = 0
    while len(text) - start > CHUNK_BYTES:
        m = _SAFE_CUT_STR.search(text, start + CHUNK_BYTES)
        if m is None:
            break
        yield text[start : m.end()]
        start = m.end()
    if start < len(text):
        yield text[start:]
