"""Small file helpers shared by every stage: atomic writes and JSONL.

Every file Acorn writes goes through `atomic_write`: the bytes land in a
temporary file in the same directory and are renamed over the target, so a
crash or kill -9 never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from acorn.errors import AcornError, NotUTF8

# The process's umask, read once (os.umask can only be read by setting it): files
# and directories made in a temporary place get the mode open() and mkdir() would give.
UMASK = os.umask(0)
os.umask(UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` for the caller to write; on success the
    file is synced and renamed over `path` (a reader sees the old file or the
    whole new one, never a part), on failure removed. For writers that open the
    file themselves (gguf's GGUFWriter); `atomic_write` opens it for you."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions open() would.
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# What atomic_path (mkstemp) and a checkpoint save (mkdtemp) name their temporaries:
# ".{target name}.{8 random characters}.tmp".
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def remove_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries an interrupted atomic write left in `directory` (a
    kill -9 skips the cleanup): files and checkpoint directories named like
    atomic_path's, nothing else. Returns what was removed. Call it only where no
    other process is writing (a run's own directory as the run starts)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if not _TEMP_NAME.fullmatch(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def atomic_directory(directory: str | os.PathLike, *, stale: re.Pattern | None = None,
                     last: str = "config.json") -> Iterator[Path]:
    """A temporary directory beside `directory` for the caller to fill (a checkpoint's
    files); on success its files are moved in -- a rename when `directory` is new, else
    file by file with `last` (the file that marks a complete save) moved last -- and on
    failure it is removed, so an interrupted save leaves the previous contents whole.
    stale: names of files an earlier save left that this one would not overwrite and
    that a reader would take for its own (old weight shards): removed."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AcornError(f"{directory}: is a file; give a directory to save the checkpoint in")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it 0700; the checkpoint gets a normal directory's mode
    try:
        yield tmp
        if not directory.exists():
            os.rename(tmp, directory)
            return
        new = {p.name for p in tmp.iterdir()}
        for old in directory.iterdir():
            if stale is not None and old.name not in new and stale.fullmatch(old.name):
                old.unlink()
        for name in sorted(new, key=lambda n: n == last):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to `path`; on success rename it over `path`."""
    try:
        with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
    except OSError as e:
        if e.filename is None:  # a failed write (disk full) names no file: name the one being written
            e.filename = str(path)
        raise
    except RuntimeError as e:
        # torch.save reports a write that failed (the disk filled up) as its own RuntimeError from
        # inline_container.cc ("unexpected pos"), not as the OSError it is.
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(errno.ENOSPC if free < 64 << 20 else errno.EIO,
                      f"writing failed ({free / 2**20:,.1f} MiB free on that disk)", str(path)) from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, errors: str = "strict") -> Iterator[dict]:
    """Yield the objects of a JSONL file (gzip-compressed when it ends in .gz); a bad line is an
    AcornError naming file and line."""
    for _, row in read_jsonl_lines(path, errors):
        yield row


def read_jsonl_lines(path: str | os.PathLike, errors: str = "strict") -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file (see parse_jsonl_line)."""
    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such file; check the path")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark some editors write
            if line.strip():
                yield lineno, parse_jsonl_line(line, path, lineno, errors)


def parse_jsonl_line(line: bytes, path, lineno: int, errors: str = "strict") -> dict:
    """One line of a JSONL file -> its object. Every reader of JSONL (tokenizer training,
    data preparation in worker processes, SFT, token counting) parses lines here, so bytes
    that are not UTF-8 (errors='strict'; 'replace' substitutes U+FFFD), a line that is
    not JSON and a value that is not an object all end the same way: an AcornError
    naming the file and line."""
    try:
        text = line.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise NotUTF8(f"{path}:{lineno}: bytes at column {e.start + 1} are not UTF-8 "
                      f"({line[e.start:e.start + 4]!r}); convert the file to UTF-8") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise AcornError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
    except RecursionError:
        raise AcornError(f"{path}:{lineno}: JSON nested too deeply; fix or remove that line") from None
    if not isinstance(row, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(row), "a number")
        raise AcornError(f"{path}:{lineno}: {kind}, not a JSON object; each line must be one object, "
                         'e.g. {"text": "..."}')
    return row


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such file; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AcornError(f"{path}: not valid JSON at line {e.lineno} ({e.msg}); fix the file") from None


def check_new_output(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse to write into `path` when something is already there, unless `overwrite`:
    an existing file, or a directory that is not empty (what `acorn data world`,
    `tokenizer train` and `quantize` write into; pretraining, SFT and data prepare
    refuse the same way)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise AcornError(f"{flag} {p} is a file; give a directory path")
    if not overwrite and p.is_dir() and any(p.iterdir()):
        raise AcornError(f"{flag} {p} already holds files; choose another {flag} or pass --overwrite to write over them")


def expand_inputs(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    suffixes: Sequence[str] = (".txt", ".jsonl"),
    *,
    any_file: bool = True,
) -> list[Path]:
    """Files, directories and globs -> existing files, each once, in a stable order.

    Directories (not recursively) and globs contribute the files ending in one
    of `suffixes`. A file named explicitly is taken whatever its suffix when
    `any_file`; otherwise it too must have one (for readers that pick the
    format by suffix).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    kinds = "/".join(suffixes)
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
            if not found:
                raise AcornError(f"{p}: directory has no {kinds} files; point at the data files")
            out.extend(found)
        elif p.is_file():
            if not any_file and p.suffix not in suffixes:
                raise AcornError(f"{p}: unknown input format {p.suffix or '(no suffix)'!r}; give {kinds} files")
            out.append(p)
        else:
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            matches = [m for m in matches if m.is_file() and m.suffix in suffixes]
            if not matches:
                raise AcornError(f"{item}: no such file, and no {kinds} file matches it as a glob; check the path")
            out.extend(matches)
    if not out:
        raise AcornError("no inputs given; pass files, directories or globs")
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())
