"""Evaluation results on disk, and runs side by side.

An output directory holds
  results.json          the metrics per task, and what produced them: the model,
                        task versions, few-shot K and seeds, limit, BOS, data dir
  samples_TASK.jsonl    one line per document: prompt, target, output
                        (log-likelihoods or text), scores, truncated
  results.md            the metrics as a markdown table
  (with --decontaminate) results.json's "contamination": per task the
                        contaminated documents and the scores without them,
                        also as tables in results.md; samples say "contaminated"
`compare` reads several such directories into one table and a bar chart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from acorn.errors import AcornError
from acorn.fileio import write_json, write_jsonl, write_text

MAIN = ("acc", "acc_norm", "exact_match", "perplexity", "word_perplexity", "bits_per_byte")
COUNTS = ("n", "num_fewshot", "truncated", "skipped")  # about a run, not scores


def save(out: dict, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for task, samples in out["samples"].items():
        write_jsonl(d / f"samples_{task}.jsonl", samples)
    extra = {"contamination": out["contamination"]} if "contamination" in out else {}
    write_json(d / "results.json", {"results": out["results"], "config": out["config"], **extra})
    text = table({out["config"]["model"]: out["results"]}) + "\n"
    if extra:
        from acorn.eval.contamination import table as contamination_table

        text += "\n" + contamination_table(out["contamination"]) + "\n"
    write_text(d / "results.md", text)
    return d


def load(directory: str | Path) -> dict:
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise AcornError(f"{path}: missing; give a directory written by `acorn eval ... --out DIR`")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise AcornError(f"{path}: not valid JSON ({e})") from None


def _metrics(results: dict) -> list[tuple[str, str]]:
    """(task, metric) pairs worth a row: the scores, not their standard errors or counts."""
    return [(t, m) for t, r in results.items() for m in r
            if not m.endswith("_stderr") and m not in COUNTS]


def _cell(value, err=None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int) and err is None:  # a count (pairs kept, documents)
        return str(value)
    text = f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"  # a model's perplexity on text it never read
    return text + (f" ± {err:.4f}" if err is not None else "")


def table(runs: dict[str, dict]) -> str:
    """A markdown table: a row per (task, metric), a column per run."""
    names = list(runs)
    rows = []
    for name in names:
        for key in _metrics(runs[name]):
            if key not in rows:
                rows.append(key)
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for task, m in rows:
        cells = [_cell(runs[n].get(task, {}).get(m), runs[n].get(task, {}).get(f"{m}_stderr")) for n in names]
        lines.append(f"| {task} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(directories: list[str | Path], chart: str | Path | None = None) -> str:
    """The runs in these directories side by side (named by directory); with
    chart, a bar chart of the accuracy-like metrics saved there."""
    runs = {str(d): load(d)["results"] for d in directories}
    if chart is not None:
        bar_chart(runs, chart)
    return table(runs)


def is_rate(metric: str) -> bool:
    """A score in [0, 1] worth a bar: accuracy, exact match, or a registered
    per-document metric (not chance, which is a reference line's worth)."""
    from acorn.eval.registry import METRICS

    return metric.split(",")[0] in ("acc", "acc_norm", "exact_match") or (metric in METRICS and metric != "chance")


def bar_chart(runs: dict[str, dict], path: str | Path, keys: list[tuple[str, str]] | None = None,
              title: str | None = None) -> Path:
    """Grouped bars: one group per (task, metric) scored in [0, 1] (or the
    given keys), a bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if keys is None:
        keys = [(t, m) for t, m in dict.fromkeys(k for r in runs.values() for k in _metrics(r)) if is_rate(m)]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys) + 2), 4.5))
    width = 0.8 / max(1, len(runs))
    for j, (name, results) in enumerate(runs.items()):
        values = [results.get(t, {}).get(m, 0.0) for t, m in keys]
        ax.bar([i + j * width for i in range(len(keys))], values, width, label=name)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([t.replace(":", "\n") + f"\n{m}" for t, m in keys], fontsize=8)  # task:label on two lines
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
