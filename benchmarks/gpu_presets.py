"""The gpu presets on a machine with a GPU: sections `scaling-gpu` and `speedrun-gpu`.

Two halves, because the GPU machine is not where docs/BENCHMARKS.md is edited:

    python benchmarks/gpu_presets.py run --out DIR [--minutes 1]   # on the GPU machine
    python benchmarks/gpu_presets.py write DIR                     # here, on what came back

`run` makes the large world, its 8,192-token tokenizer and shards (in DIR/sweep, as
`acorn scaling sweep` does), trains the scaling gpu preset's sweep, fits it and evaluates
emergence (benchmarks/scaling.py's run: timed, with the machine described), then trains the
speedrun gpu preset's pretraining stage on the same shards for --minutes, eager and then
compiled (tokens/s, MFU, peak GPU memory), and packs everything but the models into
DIR/gpu.tar.gz (what a device machine sends back). `write` unpacks such an archive (or reads
DIR) and writes the two sections and docs/img/scaling-gpu-*.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.fileio import read_json, write_json  # noqa: E402


def gpu_description() -> str:
    import torch

    if not torch.cuda.is_available():
        return machine_description()
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), host {machine_description()}"


def speedrun_stage(data: Path, out: Path, minutes: float, compile_: bool) -> dict:
    """The speedrun gpu preset's pretraining stage, its budget cut to `minutes` (as stage_pretrain does it)."""
    import torch

    from acorn import speedrun as sr
    from acorn.train.pretrain import pretrain

    p = replace(sr.PRESETS["gpu"], compile=compile_)
    cfg = sr.pretrain_config(p, data, out, read_json(data / "meta.json")["tokenizer"]["vocab_size"], 0)
    steps = sr._steps_for(cfg, minutes)
    cfg.train.max_steps, cfg.optim.warmup_steps = steps, max(10, steps // 20)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    pretrain(cfg)
    info = sr._last_metrics(out) | {"steps": steps, "seconds": time.perf_counter() - t, "compiled": compile_}
    if torch.cuda.is_available():
        info["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    info.pop("loss_plot", None)
    return info


def pack(out: Path) -> None:
    with tarfile.open(out / "gpu.tar.gz", "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out)
            if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".png", ".yaml") \
                    and not {"data", "world", "model"} & set(rel.parts):
                tar.add(p, arcname=str(rel))


def cmd_run(args) -> None:
    import scaling  # benchmarks/scaling.py

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sw = out / "sweep"
    timing = scaling.run(argparse.Namespace(out=str(sw), preset="gpu", data=None, skip_sweep=False,
                                            bootstrap=args.bootstrap, limit=args.limit))
    timing |= {"machine": gpu_description(), "command": command_line(), "date": today()}
    write_json(sw / "benchmark_timing.json", timing)
    pack(out)
    runs = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        runs[label] = speedrun_stage(sw / "data", out / "speedrun" / label, args.minutes, compiled)
        log(f"speedrun gpu preset, {label}: {runs[label]}")
        write_json(out / "speedrun_gpu.json", {"minutes": args.minutes, "machine": timing["machine"],
                                                "command": timing["command"], "date": today(), "runs": runs})
        pack(out)


def speedrun_section(doc: dict, note: str | None) -> str:
    from acorn import speedrun as sr

    rows = []
    for label, r in doc["runs"].items():
        rows.append([label, r["steps"], f"{r['tokens']:,}", f"{r['tok_s']:,.0f}", f"{r['mfu']:.1%}",
                     f"{r['peak_mem_gib']:.1f}", f"{r['seconds']:.0f}", f"{r['val_loss']:.3f}"])
    p = sr.PRESETS["gpu"]
    lines = ["## The speedrun gpu preset's pretraining on one GPU (issue 19)", "",
             f"Command: `{doc['command']}` ({doc['date']}). Machine: {doc['machine']}.", "",
             f"The gpu preset's pretraining stage (model {p.model}, {p.seq_len}-token rows, micro-batch "
             f"{p.micro_batch}, {p.batch_tokens:,} tokens per step, the large world's shards) with its "
             f"{p.pretrain_minutes:g}-minute budget cut to {doc['minutes']:g} min, so that it fits a short loan of "
             "the machine; steps are sized by the stage's own probe, which pays compilation out of the budget. "
             "MFU: 6 N (+ attention) FLOPs per token against the GPU's dense bf16 peak (acorn.hardware).", "",
             markdown_table(["run", "steps", "tokens", "tokens/s (median step)", "MFU", "peak GPU memory (GiB)",
                             "stage seconds", "val loss"], rows), ""]
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def cmd_write(args) -> None:
    import scaling  # benchmarks/scaling.py

    src = Path(args.dir)
    if (src / "gpu.tar.gz").exists() and not (src / "sweep").exists():
        with tarfile.open(src / "gpu.tar.gz") as tar:
            tar.extractall(src, filter="data")
    sw = src / "sweep"
    if (sw / "benchmark_timing.json").exists():
        ns = argparse.Namespace(out=str(sw), preset="gpu", serve_multiple=10.0, note=args.scaling_note)
        body = scaling.section(ns, read_json(sw / "benchmark_timing.json"))
        scaling.copy_plots(sw, "gpu")
        write_section(scaling.SECTION["gpu"], body)
        log("wrote section scaling-gpu")
    if (src / "speedrun_gpu.json").exists():
        write_section("speedrun-gpu", speedrun_section(read_json(src / "speedrun_gpu.json"), args.speedrun_note))
        log("wrote section speedrun-gpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="on the GPU machine: sweep, fit, emergence, speedrun pretraining")
    r.add_argument("--out", required=True, help="a working directory; DIR/gpu.tar.gz is what to bring back")
    r.add_argument("--minutes", type=float, default=1.0, help="the speedrun stage's budget, each of eager and compiled")
    r.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the Approach 3 fit")
    r.add_argument("--limit", type=int, default=500, help="emergence items per task")
    w = sub.add_parser("write", help="here: write the sections from what `run` left in DIR (or its gpu.tar.gz)")
    w.add_argument("dir")
    w.add_argument("--scaling-note", help="a paragraph for the scaling-gpu section")
    w.add_argument("--speedrun-note", help="a paragraph for the speedrun-gpu section")
    args = ap.parse_args()
    {"run": cmd_run, "write": cmd_write}[args.cmd](args)


if __name__ == "__main__":
    main()
