"""Watermark benchmark: how well the green-list watermark (Kirchenbauer et al.
2023, acorn/infer/watermark.py) is detected, how rarely it is imagined, and
what it costs in text quality, on a small model trained here.

  a. detection     N held-out prompts, one sample of T new tokens each
                   (temperature 1, no other filter), watermarked with gamma 0.25
                   and delta in {1, 2, 4}; the detector reads each sample's text
                   (re-tokenised: what a detector sees) and its token ids. The
                   detection rate is the share with z > 4.
  b. false alarms  the same z > 4 test on unwatermarked text: the model's own
                   samples (delta 0) and human text, every non-overlapping
                   T-token window of tinyshakespeare (--quick: the first 300),
                   for several keys (--quick: one). Both
                   should be ~ N(0, 1), so about 3 in 100,000 above 4.
  c. quality       perplexity of each delta's samples under the unwatermarked
                   model (the paper's "oracle" perplexity, here the generating
                   model itself): exp(mean negative log-likelihood of the
                   generated tokens given the prompt and the tokens before).
                   Delta = 0 is the model's own sampling, the baseline.
  d. cost          milliseconds to build one green list (a cache miss) at the
                   model's vocabulary and at GPT-2's 50,257, and microseconds
                   per generated token of the processor as the engine calls it.

The model: Acorn's default layout pretrained with acorn.train.pretrain on the
first 90% of tinyshakespeare for a fixed wall-clock budget, with the BPE
tokenizer and shards of benchmarks/train.py (prepare_data, reused by import);
prompts are windows of the held-out last 10%. The model is cached under
benchmarks/.cache/watermark/ and retrained only when missing.

    python benchmarks/watermark.py                     # full: a 2-minute model, 40 samples x 200 tokens
    python benchmarks/watermark.py --quick --no-write  # a 30-second model, 8 samples x 100 tokens
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402
from train import TEXT_DIR, acorn_model, prepare_data  # noqa: E402  (benchmarks/train.py: tokenizer, shards)

from acorn.infer import Engine, SamplingParams  # noqa: E402
from acorn.infer.watermark import GreenList, WatermarkProcessor, detect  # noqa: E402

WORK = CACHE / "watermark"
KEY = "acorn-benchmark"
GAMMA, Z = 0.25, 4.0
DELTAS = (0.0, 1.0, 2.0, 4.0)


def train_model(data, size: tuple[int, int, int], seconds: float, steps: int, batch_tokens: int) -> Path:
    """A checkpoint directory (weights + tokenizer) from pretrain(), cached by its settings."""
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig, pretrain

    n_layer, d_model, n_head = size
    out = WORK / f"model-{n_layer}x{d_model}x{n_head}-v{data.vocab_size}-{seconds:.0f}s-{steps}x{batch_tokens}"
    if (out / "model" / "config.json").exists():
        log(f"model: cached {out / 'model'}")
        return out / "model"
    log(f"model: pretraining {n_layer}x{d_model} for {seconds:.0f}s -> {out}")
    overrides = {"data": str(data.shards), "out": str(out),
                 "model": acorn_model("default", size, data.vocab_size, 256),
                 # A short run: a short warmup, a smaller batch (more steps in the budget), and the
                 # cosine's length a guess at what the budget allows (max_minutes stops it anyway).
                 "optim": {"warmup_steps": max(2, steps // 10)},
                 "train": {"seq_len": 256, "micro_batch": 16, "batch_tokens": batch_tokens, "max_steps": steps,
                           "max_minutes": seconds / 60},
                 "eval": {"every": 0, "checkpoint_every": 0}}
    pretrain(load(PretrainConfig, None, overrides))
    return out / "model"


@torch.inference_mode()
def nll_of_outputs(model, prompts: list[list[int]], outputs: list[list[int]]) -> list[float]:
    """Each sample's mean -log p(generated token | everything before) under `model`."""
    out = []
    for p, o in zip(prompts, outputs):
        ids = torch.tensor([p + o])
        logp = model(ids).logits.float().log_softmax(-1)[0]
        pred = logp[len(p) - 1: len(p) + len(o) - 1]
        out.append(-float(pred.gather(1, torch.tensor(o)[:, None]).mean()))
    return out


def perplexity(nlls: list[float]) -> tuple[float, float, float]:
    """exp of the mean NLL (all samples have the same length), and a 95% interval from the
    spread between samples (tokens within a sample are not independent; samples are)."""
    m, se = statistics.mean(nlls), statistics.stdev(nlls) / math.sqrt(len(nlls))
    return math.exp(m), math.exp(m - 1.96 * se), math.exp(m + 1.96 * se)


def green_list_ms(vocab: int, n: int = 50) -> float:
    """Median ms to build one green list (every call a cache miss: a new previous token)."""
    g = GreenList(KEY, vocab, GAMMA)
    times = []
    for prev in range(n):
        t0 = time.perf_counter()
        g.mask([prev])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def processor_us_per_token(vocab: int, prompts: list[list[int]], outputs: list[list[int]], runs: int = 3) -> float:
    """Median over runs of the processor's time per generated token, replaying the samples' steps through a
    fresh processor (so the cache misses are those of a real generation), called as the engine calls it."""
    logits, times = torch.zeros(vocab), []
    for _ in range(runs):
        wm, n = WatermarkProcessor(KEY, vocab, gamma=GAMMA, delta=2.0), 0
        t0 = time.perf_counter()
        for p, o in zip(prompts, outputs):
            for i in range(len(o)):
                wm(list(p), o[:i], logits)
            n += len(o)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times) * 1e6


def run(args) -> dict:
    data = prepare_data(args.vocab)
    log(f"data: {len(data.train):,} training tokens, {len(data.val):,} held-out tokens, vocab {data.vocab_size}")
    ckpt = train_model(data, args.size, args.train_seconds, args.train_steps, args.batch_tokens)
    engine = Engine.from_pretrained(ckpt, device="cpu")
    tok, vocab = engine.tokenizer, engine.tokenizer.vocab_size

    # Prompts: 16-token windows spread over the held-out text.
    val = data.val.tolist()
    stride = (len(val) - 16) // args.samples
    prompts = [val[i * stride: i * stride + 16] for i in range(args.samples)]

    per_delta = {}
    for delta in DELTAS:
        procs = [WatermarkProcessor(KEY, vocab, gamma=GAMMA, delta=delta)] if delta else []
        params = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=0, ignore_eos=True,
                                logits_processors=procs)
        completions = engine.generate(prompts, params)
        outputs = [c.token_ids for c in completions]
        on_text = [detect(c.text, tok, KEY, GAMMA) for c in completions]
        z_text, z_ids = [d.z_score for d in on_text], [detect(o, tok, KEY, GAMMA).z_score for o in outputs]
        n = sum(map(len, outputs))
        per_delta[delta] = {"z_text": z_text, "z_ids": z_ids, "outputs": outputs,
                            "ppl": perplexity(nll_of_outputs(engine.model, prompts, outputs)),
                            "scored": statistics.median(d.num_tokens for d in on_text)}
        log(f"delta {delta:g}: median z {statistics.median(z_text):.2f} (text) / {statistics.median(z_ids):.2f} "
            f"(ids), perplexity {per_delta[delta]['ppl'][0]:.2f}, {n} tokens")

    # Human text: every non-overlapping window of the whole of tinyshakespeare (ids of the training
    # tokenizer; the model never enters into it), under several keys.
    ids = tok.encode((TEXT_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    windows = [ids[i:i + args.tokens] for i in range(0, len(ids) - args.tokens + 1, args.tokens)][:args.windows]
    keys = [f"{KEY}-{k}" for k in range(args.keys)]
    human = [detect(w, tok, k, GAMMA).z_score for k in keys for w in windows]
    log(f"human text: {len(human)} tests, mean z {statistics.mean(human):.2f}, sd {statistics.stdev(human):.2f}, "
        f"max {max(human):.2f}, {sum(z > Z for z in human)} above {Z:g}")
    return {"data": data, "ckpt": ckpt, "engine": engine, "per_delta": per_delta, "human": human,
            "windows": len(windows), "keys": len(keys), "human_tokens": len(ids),
            "ms": {vocab: green_list_ms(vocab), 50257: green_list_ms(50257)},
            "us_per_token": processor_us_per_token(vocab, prompts, per_delta[2.0]["outputs"])}


def report(args, r: dict) -> str:
    cfg = r["engine"].model.config
    params = r["engine"].model.num_params()
    base = r["per_delta"][0.0]
    rows = []
    for delta, d in r["per_delta"].items():
        rate = sum(z > Z for z in d["z_text"]) / len(d["z_text"])
        rate_ids = sum(z > Z for z in d["z_ids"]) / len(d["z_ids"])
        rows.append([f"{delta:g}" + (" (no watermark)" if delta == 0 else ""),
                     f"{rate:.0%}" if delta else f"{rate:.0%} (false alarms)", f"{rate_ids:.0%}",
                     f"{statistics.median(d['z_text']):.2f}", f"{min(d['z_text']):.2f}", f"{d['scored']:.0f}",
                     f"{d['ppl'][0]:.1f} ({d['ppl'][1]:.1f}-{d['ppl'][2]:.1f})",
                     f"{d['ppl'][0] / base['ppl'][0]:.2f}x"])
    table = markdown_table(["delta", "z > 4 (text)", "z > 4 (ids)", "median z", "lowest z", "scored tokens",
                            "perplexity (95% CI)", "vs delta 0"], rows, align="lrrrrrrr")
    h = r["human"]
    (v_model, ms_model), (v_gpt2, ms_gpt2) = r["ms"].items()
    return f"""## Watermark: detection, false alarms and the perplexity cost of delta

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description()}, {torch.get_num_threads()} torch threads

Kirchenbauer et al. 2023's green-list watermark (`acorn/infer/watermark.py`), gamma {GAMMA}, context 1
(LeftHash), threshold z > {Z:g}, repeated (previous, token) pairs counted once. Model: Acorn's default layout,
{cfg.n_layer} x {cfg.d_model}, {cfg.n_head} heads, {params / 1e6:.2f}M parameters, pretrained by
`acorn.train.pretrain` for {args.train_seconds:.0f} s (at most {args.train_steps} steps of
{args.batch_tokens:,} tokens) on the first 90% of tinyshakespeare with a {cfg.vocab_size}-token BPE
(benchmarks/train.py's tokenizer and shards). {args.samples} prompts of 16 held-out tokens, one sample each of
{args.tokens} new tokens, temperature 1, seed 0, the same prompts and seed for every delta.

"z > 4 (text)": the share of samples the detector flags from the decoded text, re-tokenised as a detector
would (re-tokenisation can differ from the generated ids); "(ids)": from the generated ids. Perplexity: of the
generated tokens under the same model without the watermark, exp(mean NLL), with a 95% interval from the
spread of the samples' mean NLLs (each delta's samples are different texts, so part of a difference is
sampling noise); "vs delta 0": its ratio to the model's own samples' perplexity.

{table}

Human text: {r['windows']} non-overlapping {args.tokens}-token windows of tinyshakespeare (from the start of its
{r['human_tokens']:,} tokens) under {r['keys']} key(s), {len(h):,} tests: mean z {statistics.mean(h):.2f}, sd
{statistics.stdev(h):.2f}, highest {max(h):.2f}; **{sum(z > Z for z in h)} of {len(h):,} above {Z:g}**
(false-positive rate {sum(z > Z for z in h) / len(h):.2%}; a standard normal gives 0.003%).

Cost: one green list (a cache miss; a hit is a dictionary lookup) takes {ms_model:.3f} ms at V = {v_model:,} and
{ms_gpt2:.2f} ms at V = {v_gpt2:,} (median of 50: a keyed hash of every token id, then a kthvalue). The processor
as the engine calls it, replaying the delta-2 samples through a fresh cache: {r['us_per_token']:.0f} us per
generated token (median of 3).
{args.note or ''}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 30-second model, 8 samples of 100 tokens")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=40, help="prompts (one sample each) per delta")
    ap.add_argument("--tokens", type=int, default=200, help="new tokens per sample, and human-text window length")
    ap.add_argument("--keys", type=int, default=3, help="keys tried on every human-text window")
    ap.add_argument("--windows", type=int, default=10**9, help="at most this many human-text windows")
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--train-steps", type=int, default=150, help="the cosine schedule's length")
    ap.add_argument("--batch-tokens", type=int, default=8192, help="tokens per optimizer step in training")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--note", default="", help="a line added to the report")
    ap.add_argument("--no-write", action="store_true", help="print instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = (4, 128, 4)
    if args.quick:
        args.size, args.samples, args.tokens, args.keys = (2, 64, 2), 8, 100, 1
        args.windows, args.train_seconds, args.train_steps, args.batch_tokens = 300, 30.0, 60, 4096
    WORK.mkdir(parents=True, exist_ok=True)
    body = report(args, run(args))
    if args.no_write:
        print(body)
    else:
        log(f"wrote {write_section('watermark', body)}")


if __name__ == "__main__":
    main()
