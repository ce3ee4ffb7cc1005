"""Quantization benchmark: what int8, int4 and NF4 weights cost in quality and buy in memory and speed.

One small model is trained with Acorn's pretraining on the first 90% of tinyshakespeare
(tokenizer and shards as benchmarks/train.py makes them, in benchmarks/.cache/quant/;
the trained checkpoint is kept there and reused by later runs with the same settings).
Then, for the fp32 model, the same model cast to bf16, and each quantization of the fp32
weights (acorn.model.quant.quantize; the embeddings and the tied head stay float):

  quality    perplexity on the held-out last 10% of the text: exp of the mean next-token
             cross-entropy over fixed, non-overlapping windows (benchmarks/train.py's
             heldout_loss), and its change against the fp32 and the bf16 model
  memory     bytes of all weights (acorn.model.quant.footprint) and bits per weight of the
             quantized layers (codes + scales, over their number of weights)
  speed      decode tokens/s of the engine (acorn.infer.Engine, greedy, a fixed number of
             new tokens after a short prompt), median of --runs runs taken in turns
  kernels    the time of one matrix-vector product (one token through one layer) at a
             large-model shape, where the weights rather than Python overheads dominate,
             for each layer kind through its packed kernel and through the fallback

A model this small decodes at a speed set by per-token Python and dispatch overheads, not by
reading its weights, so its decode column shows what the layers add per step; the
matrix-vector table is the place to see what packing buys.

    python benchmarks/quant.py                  # ~3-minute training (once), all measurements
    python benchmarks/quant.py --quick --no-write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import CACHE, command_line, log, machine_description, markdown_table, median_times_interleaved, today, write_section  # noqa: E402
from torch import nn  # noqa: E402

import train as train_bench  # noqa: E402  (benchmarks/train.py: tokenizer, shards, pretrain driver, held-out loss)
from acorn.model import quant  # noqa: E402

WORK = CACHE / "quant"
# (n_layer, d_model, n_head, n_kv_head, d_ff): d_ff a multiple of 128, so every group size divides every layer.
SIZE = (4, 256, 4, 2, 768)
QUICK_SIZE = (2, 128, 4, 2, 384)
# (label, method, group size, activation dtype); None method = the float model in that dtype.
ROWS = [
    ("fp32", None, None, torch.float32),
    ("bf16", None, None, torch.bfloat16),
    ("int8", "int8", None, torch.float32),
    ("int8", "int8", None, torch.bfloat16),
    ("int4 g128", "int4", 128, torch.float32),
    ("int4 g128", "int4", 128, torch.bfloat16),
    ("int4 g64", "int4", 64, torch.float32),
    ("int4 g32", "int4", 32, torch.float32),
    ("nf4 (b64, dq)", "nf4", 64, torch.float32),
    ("nf4 (b64, dq)", "nf4", 64, torch.bfloat16),
]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")


# ---------------------------------------------------------------- the model
def trained_model(data, size: tuple, seq: int, seconds: float, calib_steps: int):
    """A checkpoint directory with a model trained for about `seconds`, and its tokenizer;
    reused when one with the same settings is in the cache."""
    from acorn.model.checkpoint import save
    from acorn.tokenizer.bpe import Tokenizer

    n_layer, d_model, n_head, n_kv_head, d_ff = size
    model_cfg = dict(vocab_size=data.vocab_size, n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_kv_head,
                     d_ff=d_ff, max_seq_len=seq)
    key = hashlib.sha256(json.dumps([model_cfg, seconds, calib_steps], sort_keys=True).encode()).hexdigest()[:10]
    path = WORK / f"model-{key}"
    if (path / "config.json").is_file():
        log(f"reusing the trained model in {path}")
        return path, json.loads((path / "training.json").read_text())
    # 4,096 tokens a step (16 x 256, no accumulation): a few minutes then make a few hundred steps.
    train = {"seq_len": seq, "micro_batch": 16, "batch_tokens": 16 * seq}
    log(f"training: calibrating ({calib_steps} steps)")
    rows, _ = train_bench.run_acorn(data, {"model": model_cfg, "train": {**train, "max_steps": calib_steps}})
    step_s = statistics.median(16 * seq / r["tok_s"] for r in rows[len(rows) // 2:])  # the first steps warm up
    steps = max(4, int(seconds / step_s))
    log(f"training: {seconds:.0f}s -> {steps} steps of {step_s:.2f}s")
    t0 = time.perf_counter()
    rows, model = train_bench.run_acorn(
        data, {"model": model_cfg, "optim": {"warmup_steps": max(1, steps // 20)},
               "train": {**train, "max_steps": steps, "max_minutes": seconds / 60}}, keep_model=True)
    info = {"steps": len(rows), "tokens": len(rows) * 16 * seq, "seconds": round(time.perf_counter() - t0),
            "train_loss": rows[-1]["loss"], "params": model.num_params(), "model": model_cfg}
    save(model, path, tokenizer=Tokenizer.from_pretrained(data.shards.parent / "tokenizer"))
    (path / "training.json").write_text(json.dumps(info, indent=1))
    log(f"trained {info['steps']} steps ({info['tokens']:,} tokens) in {info['seconds']}s, last loss {info['train_loss']:.3f}")
    return path, info


def variant(path: Path, method: str | None, group_size: int | None, dtype: torch.dtype):
    from acorn.model.checkpoint import load

    model = load(path, dtype="float32", device="cpu")
    if method is not None:
        quant.quantize(model, method, group_size=group_size)
    return model.to(dtype).eval()


def quantized_bits(model: nn.Module) -> float | None:
    """Bits per weight of the quantized layers: their codes and scales over their weights."""
    layers = [m for m in model.modules() if isinstance(m, quant._QuantLinear)]
    if not layers:
        return None
    nbytes = sum(b.numel() * b.element_size() for m in layers for b in m.buffers())
    return 8 * nbytes / sum(m.in_features * m.out_features for m in layers)


# ---------------------------------------------------------------- measures
def measure_models(path: Path, val: torch.Tensor, seq: int, windows: int, new_tokens: int, runs: int) -> list[dict]:
    from acorn.infer import Engine, SamplingParams
    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.from_pretrained(path)
    held = val[: windows * seq + 1]
    prompt = val[:16].tolist()
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    results, engines = [], []
    for label, method, group, dtype in ROWS:
        model = variant(path, method, group, dtype)
        with torch.inference_mode():
            loss = train_bench.heldout_loss(lambda x, m=model: m(x).logits, held, seq)
        path_name = quant.kernel_path(method, "cpu", dtype) if method else f"F.linear ({dtype_name(dtype)})"
        results.append({"label": label, "method": method, "dtype": dtype_name(dtype), "loss": loss,
                        "ppl": math.exp(loss), "bytes": quant.footprint(model), "bits": quantized_bits(model),
                        "path": path_name})
        log(f"{label:>14} {dtype_name(dtype)}: held-out ppl {math.exp(loss):.3f}, {quant.footprint(model):,} bytes, {path_name}")
        engines.append(Engine(model, tok, prefix_caching=False))
    contenders = [(f"{r['label']} {r['dtype']}", lambda e=e: e.generate(prompt, params)) for r, e in zip(results, engines)]
    times = median_times_interleaved(contenders, runs, warmup=1)
    for r, (name, _) in zip(results, contenders):
        r["tok_s"] = new_tokens / times[name][0]
    return results


def measure_matvec(shape: tuple[int, int], runs: int, calls: int) -> list[dict]:
    """Seconds per call of one token through one (out, in) layer, for each layer kind and path."""
    out_f, in_f = shape
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
    entries = [("fp32", lin, torch.float32, True), ("bf16", nn.Linear(in_f, out_f, bias=False).to(torch.bfloat16),
                                                    torch.bfloat16, True)]
    with torch.no_grad():
        entries[1][1].weight.copy_(lin.weight)
    for name, method, group in (("int8", "int8", None), ("int4 g128", "int4", 128), ("nf4 b64", "nf4", 64)):
        layer = quant.MODULES[method].from_linear(lin) if method == "int8" else quant.MODULES[method].from_linear(lin, group)
        for dtype in (torch.float32, torch.bfloat16):
            entries += [(name, layer, dtype, kernels) for kernels in ((True, False) if method != "nf4" else (True,))]
    contenders, rows = [], []
    for name, layer, dtype, kernels in entries:
        x = torch.randn(1, in_f).to(dtype)
        method = getattr(layer, "method", None)
        quant.USE_KERNELS = kernels
        how = quant.kernel_path(method, "cpu", dtype) if method else "F.linear"
        quant.USE_KERNELS = True
        key = f"{name} {dtype_name(dtype)} {how}"

        def call(layer=layer, x=x, kernels=kernels):
            quant.USE_KERNELS = kernels
            with torch.inference_mode():
                for _ in range(calls):
                    layer(x)
            quant.USE_KERNELS = True

        rows.append({"label": name, "dtype": dtype_name(dtype), "path": how, "key": key,
                     "bytes": sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])})
        contenders.append((key, call))
    times = median_times_interleaved(contenders, runs, warmup=1)
    for r in rows:
        r["us"] = times[r["key"]][0] / calls * 1e6
    return rows


# ------------------------------------------------------------------ report
def report(args, data, info: dict, results: list[dict], mv: list[dict], shape, windows: int, seq: int) -> str:
    fp32 = next(r for r in results if r["label"] == "fp32")
    bf16 = next(r for r in results if r["label"] == "bf16")
    rows = []
    for r in results:
        rows.append([r["label"], r["dtype"], f"{r['ppl']:.3f}", f"{100 * (r['ppl'] / fp32['ppl'] - 1):+.2f}%",
                     f"{100 * (r['ppl'] / bf16['ppl'] - 1):+.2f}%", f"{r['bytes'] / 1e6:.2f} MB",
                     f"{r['bits']:.2f}" if r["bits"] else ("32" if r["dtype"] == "fp32" else "16"),
                     f"{r['tok_s']:.0f}", r["path"]])
    table = markdown_table(["weights", "activations", "held-out ppl", "vs fp32", "vs bf16", "all weights",
                            "bits/weight (quantized layers)", "decode tok/s", "matmul"], rows, "llrrrrrrl")
    mv_rows = [[r["label"], r["dtype"], r["path"], f"{r['us']:.0f}", f"{r['bytes'] / 1e6:.2f} MB"] for r in mv]
    mv_table = markdown_table(["layer", "activations", "path", "µs per token", "weight bytes"], mv_rows, "lllrr")
    m = info["model"]
    us = {(r["label"], r["dtype"], r["path"].startswith("fallback")): r["us"] for r in mv}
    speed = "\n".join(
        f"- {shape[0]} x {shape[1]}, {dt} activations: {name} through its kernel takes "
        f"{us[name, dt, False] / us[base, dt, False]:.2f}x the time of the {base} layer ({us[name, dt, True] / us[base, dt, False]:.2f}x "
        f"through the fallback)"
        for dt, base in (("bf16", "bf16"), ("fp32", "fp32")) for name in ("int8", "int4 g128")
        if (name, dt, False) in us and (name, dt, True) in us)
    return f"""## Quantization (int8, int4, NF4)

Command: `{command_line()}` ({today()})
Machine: {machine_description()}, {torch.get_num_threads()} torch thread(s)

Model: Acorn's default layout, {m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads ({m['n_kv_head']} KV),
SwiGLU d_ff {m['d_ff']}, tied embeddings, vocab {m['vocab_size']:,}, {info['params']:,} parameters; pretrained by
`acorn.train.pretrain` for {info['steps']} steps ({info['tokens']:,} tokens, {info['seconds']} s) on the first 90%
of tinyshakespeare (Acorn BPE trained on that part). Quantized: the {7 * m['n_layer']} linear layers of the blocks;
the embeddings (which are also the head) stay in the model's float dtype. Perplexity over {windows}
non-overlapping {seq}-token windows of the held-out last 10%. Decode: greedy, {args.new_tokens} new tokens after
a 16-token prompt through `acorn.infer.Engine`, median of {args.runs} runs taken in turns.

{table}

One token through one {shape[0]} x {shape[1]} layer (a large model's projection), median of {args.runs} runs of
{args.calls} calls:

{mv_table}

Reading it:
{speed}
- The weights column counts every weight (the float embeddings and head included), so the saving is less than
  the 4-8x of the quantized layers alone; the bits/weight column is theirs (codes and scales). On the kernel
  path an int4 layer also holds torch's own packed copy of its codes (in the kernel's blocked layout; the
  portable copy is what is saved): about 1 byte per weight in memory, not counted here.
- NF4 has no packed kernel in torch: it dequantizes the matrix at every call (what QLoRA's base layers do).
- A model this small decodes at a speed set by per-token Python and dispatch overheads; the matrix-vector table
  shows the layers where the weights dominate.
- Measured on a shared 2-core machine while other work ran: timings are noisy; perplexities are exact.
{('- --quick: a tiny model trained for 20 s; its perplexity differences are too small to rank the methods.' if args.quick else '')}
{('- ' + args.note) if args.note else ''}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model trained 20 s, fewer windows and runs")
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget of the model (once; then cached)")
    ap.add_argument("--calib-steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=0, help="held-out windows scored (default: all)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per decode run")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per contender (median)")
    ap.add_argument("--calls", type=int, default=50, help="layer calls per matrix-vector run")
    ap.add_argument("--shape", default="4096x4096", help="out x in of the matrix-vector layer")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training and measuring (default 1: on a shared 2-core machine, two threads "
                         "waiting on each other while another job holds a core trained 20x slower here)")
    ap.add_argument("--note", default="", help="a line added to the report")
    ap.add_argument("--no-write", action="store_true", help="print instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    size, seconds = SIZE, args.minutes * 60
    if args.quick:
        size, seconds, args.calib_steps = QUICK_SIZE, 20.0, 6
        args.windows, args.new_tokens, args.runs, args.calls = args.windows or 20, 24, 2, 10
        args.shape = "1024x1024" if args.shape == "4096x4096" else args.shape
    shape = tuple(int(x) for x in args.shape.lower().split("x"))

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    train_bench.WORK = WORK  # its tokenizer, shards and temporary runs go under .cache/quant, not .cache/train
    data = train_bench.prepare_data(args.vocab)
    path, info = trained_model(data, size, args.seq, seconds, args.calib_steps)
    windows = args.windows or (len(data.val) - 1) // args.seq
    results = measure_models(path, data.val, args.seq, windows, args.new_tokens, args.runs)
    mv = measure_matvec(shape, args.runs, args.calls)
    body = report(args, data, info, results, mv, shape, windows, args.seq)
    if args.no_write:
        print(body)
    else:
        log(f"wrote {write_section('quant', body)}")


if __name__ == "__main__":
    main()
