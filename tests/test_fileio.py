"""Atomic writes: a failed write leaves the old file intact and no temp files."""

import os
import stat

import pytest

from acorn.errors import AcornError
from acorn.fileio import atomic_write, read_jsonl, write_jsonl, write_text


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_written_files_get_normal_permissions(tmp_path):
    p = tmp_path / "f.txt"
    write_text(p, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_jsonl_round_trip_and_bad_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    rows = [{"a": 1}, {"b": "ü"}]
    assert write_jsonl(p, rows) == 2
    assert list(read_jsonl(p)) == rows
    p.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(AcornError, match=r"rows.jsonl:2: not valid JSON"):
        list(read_jsonl(p))
