"""Evaluation benchmark: `acorn eval` against lm-evaluation-harness's HF backend
(HFLM) on the same model, the same documents and the same prompts, in one run.

The model is a random Llama (6 layers, width 384, the GPT-NeoX tokenizer's
50k vocabulary: ~45M parameters); weights do not change the cost, and a
random model keeps the benchmark offline. The documents are the first
--limit of each task in ../shared/data/eval, zero-shot; lm-eval reads the
same files through its `json` loader with its own task YAMLs for them (the
prompts of lm_eval/tasks/{arc,piqa,lambada}). Each contender's time is its
whole evaluate call (task building, tokenising, the model, scoring),
taking turns, median of --runs. The same run checks the two agree: the
largest per-document log-likelihood difference and whether every metric
is identical.

Where Acorn saves: a document's context goes through the model once for all
its choices (lm-eval runs context + choice once per choice), and the
vocabulary-sized head runs only where a log-probability is read.

    python benchmarks/eval.py                    # 100 documents per task, 3 runs
    python benchmarks/eval.py --limit 20 --runs 1 --no-write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import (CACHE, SHARED_DATA, command_line, log, machine_description, markdown_table,  # noqa: E402
                    median_times_interleaved, today, write_section)

TASKS = {  # lm-eval task YAMLs over the local files (as tests/eval/test_harness.py)
    "arc_easy": dict(output_type="multiple_choice", doc_to_text="{{query}}\nAnswer:", doc_to_target="gold",
                     doc_to_choice="choices", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
    "arc_challenge": dict(output_type="multiple_choice", doc_to_text="{{query}}\nAnswer:", doc_to_target="gold",
                          doc_to_choice="choices", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
    "piqa": dict(output_type="multiple_choice", doc_to_text="{{query}}Answer:", doc_to_target="gold",
                 doc_to_choice="choices", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
    "lambada_openai": dict(output_type="loglikelihood", doc_to_text="context", doc_to_target="{{' ' + continuation}}",
                           metric_list=[{"metric": "perplexity", "aggregation": "perplexity"}, {"metric": "acc"}]),
}
WORK = CACHE / "eval"


def make_model() -> tuple[Path, object]:
    import transformers

    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.from_pretrained(SHARED_DATA / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    tok.bos_token = tok.eos_token = "<|endoftext|>"  # as GPT-NeoX's tokenizer_config.json says (the file has none)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=384, intermediate_size=1024,
                                   num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                                   max_position_embeddings=2048, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    path = WORK / "model"
    hf.save_pretrained(path)
    tok.save(path)
    return path, hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import logging

    import transformers
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from acorn.eval.harness import evaluate
    from acorn.eval.tasks import get_task
    from acorn.infer.engine import Engine

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_flush_denormal(True)
    path, hf = make_model()
    tdir = WORK / "lm_eval_tasks"
    tdir.mkdir(parents=True, exist_ok=True)
    for name, cfg in TASKS.items():
        data = SHARED_DATA / "eval" / get_task(name).data
        (tdir / f"ref_{name}.yaml").write_text(yaml.safe_dump({
            "task": f"ref_{name}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **cfg}))
    lm = HFLM(pretrained=hf, tokenizer=transformers.AutoTokenizer.from_pretrained(path), batch_size=32)
    manager = TaskManager(include_path=str(tdir), include_defaults=False)
    engine = Engine.from_pretrained(path)
    out = {}

    def ours():
        out["acorn"] = evaluate(engine, list(TASKS), limit=args.limit, add_bos=False, progress=False)

    def theirs():
        out["lm_eval"] = simple_evaluate(model=lm, tasks=[f"ref_{t}" for t in TASKS], limit=args.limit,
                                         task_manager=manager, log_samples=True, bootstrap_iters=0,
                                         fewshot_random_seed=1234, verbosity="ERROR")

    log(f"{len(TASKS)} tasks x {args.limit} documents, zero-shot; {args.runs} runs each")
    times = median_times_interleaved([("acorn", ours), ("lm-eval HFLM", theirs)], args.runs, warmup=1)
    # Agreement, from the last runs.
    worst, same, rows = 0.0, True, []
    for t in TASKS:
        mine, ref = out["acorn"]["results"][t], out["lm_eval"]["results"][f"ref_{t}"]
        by_doc = {s["doc_id"]: s for s in out["lm_eval"]["samples"][f"ref_{t}"]}
        for s in out["acorn"]["samples"][t]:
            lls = s["output"] if isinstance(s["output"], list) else [s["output"]]
            worst = max(worst, *(abs(a - r[0][0]) for a, r in zip(lls, by_doc[s["doc_id"]]["resps"])))
        metrics = [m for m in ("acc", "acc_norm") if m in mine]
        same &= all(mine[m] == ref[f"{m},none"] for m in metrics)
        rows.append([t, *(f"{mine[m]:.3f}" for m in metrics)])
    a, b = times["acorn"][0], times["lm-eval HFLM"][0]
    log(f"acorn {a:.2f}s, lm-eval {b:.2f}s: {b / a:.1f}x; max |ll difference| {worst:.2e}; metrics identical: {same}")
    n_params = sum(p.numel() for p in hf.parameters())
    body = f"""## Evaluation harness: `acorn eval` vs lm-evaluation-harness (HFLM)

`{command_line()}` on {today()}; {machine_description(("lm_eval", "transformers"))}.

A random Llama ({n_params / 1e6:.0f}M parameters: 6 layers, width 384, the GPT-NeoX tokenizer's 50k
vocabulary), float32; {", ".join(TASKS)}: the first {args.limit} documents of each from
`../shared/data/eval`, zero-shot, read by lm-eval through its `json` loader with task YAMLs giving
the same prompts. Each time is the whole evaluate call (lm-eval: `simple_evaluate` with batch size
32; Acorn: `acorn.eval.harness.evaluate` with 8192 padded tokens per forward pass), median of
{args.runs} runs taken in turns after a warm-up.

{markdown_table(["harness", "median seconds", "runs"], [
    ["acorn eval", f"{a:.2f}", ", ".join(f"{x:.2f}" for x in times["acorn"][1])],
    ["lm-eval HFLM", f"{b:.2f}", ", ".join(f"{x:.2f}" for x in times["lm-eval HFLM"][1])]])}

Acorn is **{b / a:.1f}x** faster. The two agree: the largest per-document log-likelihood
difference is {worst:.1e}, and acc / acc_norm are {"identical" if same else "NOT identical"} on every task.
The savings: each document's context runs once for all its choices (lm-eval runs context + choice
per choice; its one-token-continuation cache only helps single-token answers), and the 50k-wide
output head runs only at the positions whose log-probabilities are read.
"""
    if not args.no_write:
        write_section("eval", body)
        log("wrote the eval section of docs/BENCHMARKS.md")
    else:
        print(body)


if __name__ == "__main__":
    main()
