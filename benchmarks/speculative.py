"""Speculative decoding benchmark: how much faster batch-1 greedy decoding gets,
and how many draft tokens the target keeps.

Two models are trained by Acorn's pretraining on the same data (the first 90%
of tinyshakespeare, the tokenizer and shards of benchmarks/train.py, cached in
benchmarks/.cache/quant/ by benchmarks/quant.py's trainer):

  target  the shape of the engine benchmark's model (Acorn's `small` preset:
          8 layers, d_model 512, 8 heads, 4 KV heads; ~20M parameters at this vocabulary)
  draft   a 2-layer, d_model 128 model, trained for less time

For held-out prompts (windows of the last 10% of the text), greedy decoding of
a fixed number of new tokens, one request at a time, on the paged engine:
plain, with the draft model proposing k tokens, and with prompt lookup (no
model). Reported: time per request (median over prompts of the median of
--runs runs, contenders taking turns), speedup against plain, the acceptance
rate (kept / drafted tokens), and whether every output is token for token the
plain greedy output (it must be).

    python benchmarks/speculative.py                # ~12 minutes of training (once), then the measurements
    python benchmarks/speculative.py --quick --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import command_line, log, machine_description, markdown_table, median_times_interleaved, today, write_section  # noqa: E402

import quant as quant_bench  # noqa: E402  (its trainer caches trained checkpoints)
import train as train_bench  # noqa: E402  (tinyshakespeare tokenizer and shards)
from acorn.infer.engine import Engine  # noqa: E402
from acorn.infer.sampling import SamplingParams  # noqa: E402
from acorn.infer.speculative import DraftModel, PromptLookup  # noqa: E402

TARGET = (8, 512, 8, 4, 1408)  # n_layer, d_model, n_head, n_kv_head, d_ff: the `small` preset's shape
DRAFT = (2, 128, 4, 2, 384)
QUICK_TARGET = (2, 128, 4, 2, 384)
QUICK_DRAFT = (1, 64, 2, 1, 192)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models trained seconds, 2 prompts")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--target-seconds", type=float, default=480)
    ap.add_argument("--draft-seconds", type=float, default=180)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if args.quick:
        args.target_seconds, args.draft_seconds, args.prompts, args.new_tokens, args.runs = 20, 10, 2, 32, 2
    torch.set_flush_denormal(True)
    dtype = getattr(torch, args.dtype)

    data = train_bench.prepare_data(args.vocab)
    target_path, target_info = quant_bench.trained_model(data, QUICK_TARGET if args.quick else TARGET, args.seq,
                                                         args.target_seconds, 6)
    draft_path, draft_info = quant_bench.trained_model(data, QUICK_DRAFT if args.quick else DRAFT, args.seq,
                                                       args.draft_seconds, 6)
    plain = Engine.from_pretrained(target_path, dtype=dtype, device="cpu")
    draft_engine = Engine.from_pretrained(draft_path, dtype=dtype, device="cpu")
    with_draft = Engine(plain.model, plain.tokenizer, speculative=DraftModel(draft_engine.model, args.k))
    with_lookup = Engine(plain.model, plain.tokenizer, speculative=PromptLookup(args.k))
    contenders = {"plain": plain, f"draft model (k={args.k})": with_draft, f"prompt lookup (k={args.k})": with_lookup}

    g = torch.Generator().manual_seed(0)
    val = data.val
    starts = torch.randint(0, len(val) - args.prompt_tokens - 1, (args.prompts,), generator=g).tolist()
    prompts = [val[s:s + args.prompt_tokens].tolist() for s in starts]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)

    outputs = {name: [e.generate(p, params)[0].token_ids for p in prompts] for name, e in contenders.items()}
    identical = {name: outs == outputs["plain"] for name, outs in outputs.items()}
    for e in contenders.values():  # acceptance counted over the timed runs only
        e.drafted_tokens = e.accepted_tokens = 0
    per_prompt = {name: [] for name in contenders}
    for i, p in enumerate(prompts):
        log(f"prompt {i + 1}/{len(prompts)}")
        res = median_times_interleaved([(name, lambda e=e, p=p: e.generate(p, params)) for name, e in contenders.items()],
                                       args.runs)
        for name in contenders:
            per_prompt[name].append(res[name][0])
    t_plain = statistics.median(per_prompt["plain"])
    rows = []
    for name, e in contenders.items():
        t = statistics.median(per_prompt[name])
        stats = e.stats()
        rate = stats.get("acceptance_rate")
        rows.append([name, f"{t:.2f}", f"{args.new_tokens / t:.1f}", f"{t_plain / t:.2f}x",
                     "-" if rate is None else f"{rate:.0%}", "yes" if identical[name] else "**no**"])
    best = max(t_plain / statistics.median(per_prompt[n]) for n in contenders if n != "plain")
    draft_name = f"draft model (k={args.k})"
    speedup = t_plain / statistics.median(per_prompt[draft_name])
    body = f"""## Speculative decoding: batch-1 greedy speedup and acceptance

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description()}
{args.note}
Target: {target_info['params']:,} parameters ({TARGET if not args.quick else QUICK_TARGET} as n_layer, d_model, n_head,
n_kv_head, d_ff), trained {target_info['seconds']} s ({target_info['tokens']:,} tokens, last training loss
{target_info['train_loss']:.3f}). Draft: {draft_info['params']:,} parameters, trained {draft_info['seconds']} s
({draft_info['tokens']:,} tokens, last loss {draft_info['train_loss']:.3f}); both by `acorn.train.pretrain` on the
first 90% of tinyshakespeare with the same {data.vocab_size}-token BPE. {args.dtype}, CPU, the paged engine, one
request at a time. {len(prompts)} held-out prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens each,
greedy; the time is the median over prompts of each prompt's median of {args.runs} runs (contenders taking turns).

{markdown_table(["decoding", "s per request", "tokens/s", "vs plain", "acceptance", "identical to plain greedy"], rows)}

Goal at least 2x with identical greedy output, with a draft model trained by Acorn from the same data:
{"met" if speedup >= 2 and identical[draft_name] else "**not met**"} ({speedup:.2f}x; the best drafter here {best:.2f}x).
"""
    if args.no_write:
        print(body)
    else:
        write_section("speculative", body)
        log("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
