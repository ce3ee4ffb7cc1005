"""Shared helpers for the scripts in benchmarks/: timing, the machine, the report.

A measurement is only worth something with what produced it, so every section
of docs/BENCHMARKS.md carries the command that reproduces it, the machine and
the date, and every number is a median of several runs (the median, not the
mean, because one run disturbed by another process should not move it).

Each script owns one section of docs/BENCHMARKS.md, delimited by
`<!-- BEGIN name -->` / `<!-- END name -->`, and rewrites only that section,
so the scripts can be re-run in any order without clobbering each other.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
# Real data shared between checkouts: ../shared/data next to the repository.
SHARED_DATA = REPO.parent / "shared" / "data"
CACHE = REPO / "benchmarks" / ".cache"  # gitignored

HEADER = """# Benchmarks

Each section below is written by a script in `benchmarks/` and carries the
command that reproduces it, the machine it ran on and the date. Numbers are
medians of several runs, measured side by side with the reference
implementation in the same run. Do not edit a section by hand: re-run its
script, which rewrites only the text between its `BEGIN`/`END` markers.
"""


def median_time(fn: Callable[[], object], runs: int, *, label: str = "", warmup: int = 0) -> tuple[float, list[float]]:
    """Median wall-clock seconds of `fn()` over `runs` calls (after `warmup` untimed calls).

    Collects garbage before each call so one run's leftovers are not charged
    to the next.
    """
    for _ in range(warmup):
        fn()
    times = []
    for i in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if label:
            log(f"  {label}: run {i + 1}/{runs} {times[-1]:.2f}s")
    return statistics.median(times), times


def median_times_interleaved(
    contenders: list[tuple[str, Callable[[], object]]], runs: int, *, warmup: int = 0
) -> dict[str, tuple[float, list[float]]]:
    """Like median_time for several contenders, taking turns: A B C, A B C, ...

    On a machine whose load drifts (other jobs starting and stopping), timing
    all runs of A and then all runs of B charges the drift to whichever ran
    in the busy stretch; taking turns spreads it over all of them.
    """
    for _ in range(warmup):
        for _, fn in contenders:
            fn()
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for i in range(runs):
        for name, fn in contenders:
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            log(f"  run {i + 1}/{runs} {name}: {times[name][-1]:.2f}s")
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def run_options(ap) -> None:
    """The options of a script that trains or times on a shared machine and writes a section:
    --threads, --note, --no-write (torch_threads applies the first)."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core); on a "
                    "machine shared with other jobs 1 can be several times faster than 2 (no contended spin-waits)")
    ap.add_argument("--note", default="", help="a sentence added to the section")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")


def torch_threads(args) -> None:
    """Denormals flushed (tiny models' activations otherwise slow every op) and --threads applied."""
    import torch

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)


def log(msg: str) -> None:
    """Progress line with a timestamp (runs take minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def machine_description(extra_packages: tuple[str, ...] = ()) -> str:
    """One line: CPU model, usable cores, memory, Python, torch and the given packages."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{cpu_model()}, {usable} cores usable ({os.cpu_count()} online)"]
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        parts.append(f"{mem_kb / 2**20:.0f} GiB RAM")
    except (OSError, AttributeError):
        pass
    parts.append(f"{platform.system()} {platform.machine()}")
    parts.append(f"Python {platform.python_version()}")
    for dist in ("torch", *extra_packages):
        v = _version(dist)
        parts.append(f"{dist} {v}" if v else f"{dist} not installed")
    return ", ".join(parts)


def command_line(drop_options: tuple[str, ...] = ("--note",)) -> str:
    """The command that was run, as typed from the repository root, without
    options that only annotate the report (they do not change a number)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in drop_options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in drop_options)):
            args.append(a)
    return shlex.join(["python", str(script), *args])


# The 1-minute load average when the benchmark script started, before it did any work of its own.
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def load_note() -> str:
    """What else the machine was doing when this benchmark started, for its report: figures taken with
    other jobs running are slower and noisier than an idle machine's."""
    if LOAD_AT_START is None:
        return "load unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = LOAD_AT_START > 0.5
    return (f"load average {LOAD_AT_START:.2f} on {cores} cores when it started: "
            + ("measured with other jobs running" if busy else "the machine was otherwise idle"))


def today() -> str:
    return _dt.date.today().isoformat()


def write_section(name: str, body: str, path: str | os.PathLike = BENCHMARKS_MD) -> Path:
    """Replace the `name` section of BENCHMARKS.md with `body`, leaving the rest as it is.

    The section is appended if absent; the file is created with HEADER if
    missing. Written atomically, so a killed script never leaves half a file.
    """
    from acorn.fileio import write_text

    path = Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(old):
        # A function replacement so backslashes in the body are not read as escapes.
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text(path, new)
    return path


def publish(name: str, body: str, note: str = "", no_write: bool = False) -> None:
    """A section's body, with the reading (--note) after it, printed and (unless --no-write) written."""
    if note:  # a paragraph of its own, never a last table row
        body = f"{body.rstrip()}\n\n{note}\n"
    if not no_write:
        write_section(name, body)
    print(body)


def markdown_table(header: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = [header, sep, *[[str(c) for c in r] for r in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_figures(args, figures: dict) -> None:
    """Make each figure named in args.figures (comma-separated keys of figures: name ->
    (section, function of args returning its markdown)); print it with args.no_write,
    else write it as its section of docs/BENCHMARKS.md."""
    for fig in [f.strip() for f in args.figures.split(",") if f.strip()]:
        if fig not in figures:
            raise SystemExit(f"unknown figure {fig!r}; choose from {', '.join(figures)}")
        section, fn = figures[fig]
        body = fn(args)
        if args.no_write:
            print(body)
        else:
            write_section(section, body)
            log(f"wrote section {section} of docs/BENCHMARKS.md")
