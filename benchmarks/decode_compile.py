"""Does torch.compile help the engine's decode step on this machine?

The paged engine's step changes shape every step (how many rows decode, how
long each context is, which prefill chunks ride along), so compiling the whole
step would recompile constantly. What can be compiled with dynamic shapes are
the dense parts of each block: the MLP and the two RMSNorms (SwiGLU's silu *
up and the norms fuse; the matmuls stay library calls). This measures, on the
engine benchmark's model shape with random weights, batch-1 decode (ms per
token, 64 tokens after a 16..128-token prompt) and a 32-request continuous
batch, eager against compiled, fp32 and bf16, medians of --runs runs taking
turns (one engine each, both warmed up, compile time reported apart).

    python benchmarks/decode_compile.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.infer.engine import Engine  # noqa: E402
from acorn.infer.sampling import SamplingParams  # noqa: E402
from acorn.model.transformer import ModelConfig, Transformer  # noqa: E402
from acorn.tokenizer.bpe import Tokenizer  # noqa: E402


def compiled(model: Transformer) -> Transformer:
    for layer in model.model.layers:
        layer.mlp = torch.compile(layer.mlp, dynamic=True)
        layer.input_layernorm = torch.compile(layer.input_layernorm, dynamic=True)
        layer.post_attention_layernorm = torch.compile(layer.post_attention_layernorm, dynamic=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    tok = Tokenizer.train(["hello world, the quick brown fox " * 200], 300)
    rng = random.Random(0)
    reqs = [([rng.randrange(280) for _ in range(rng.randint(16, 128))], rng.randint(16, 64)) for _ in range(32)]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        cfg = ModelConfig.from_preset("small", max_seq_len=1280)
        eager = Transformer(cfg).eval().to(dtype)
        twin = Transformer(cfg).eval().to(dtype)
        twin.load_state_dict(eager.state_dict())
        engines = {"eager": Engine(eager, tok, kv_cache_memory=256 << 20),
                   "compiled (MLP + norms, dynamic)": Engine(compiled(twin), tok, kv_cache_memory=256 << 20)}
        warm = {}
        for name, e in engines.items():
            t = time.perf_counter()
            e.generate(reqs[0][0], max_new_tokens=16, temperature=0, ignore_eos=True)
            for p, _ in reqs[:8]:
                e.add_request(p, SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
            while e.has_unfinished():
                e.step()
            warm[name] = time.perf_counter() - t
        one = {n: [] for n in engines}
        many = {n: [] for n in engines}
        outs = {}
        for r in range(args.runs):
            for name, e in engines.items():
                t = time.perf_counter()
                outs[name] = e.generate(reqs[0][0], max_new_tokens=64, temperature=0, ignore_eos=True)[0].token_ids
                one[name].append((time.perf_counter() - t) / 64 * 1000)
                e.reset_prefix_cache()
                t = time.perf_counter()
                for p, n in reqs:
                    e.add_request(p, SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True))
                while e.has_unfinished():
                    e.step()
                many[name].append(time.perf_counter() - t)
                log(f"{dtype} run {r + 1} {name}: {one[name][-1]:.2f} ms/token, {many[name][-1]:.2f} s")
        base1, base_many = statistics.median(one["eager"]), statistics.median(many["eager"])
        for name in engines:
            m1, mm = statistics.median(one[name]), statistics.median(many[name])
            rows.append([str(dtype).removeprefix("torch."), name, f"{warm[name]:.1f}", f"{m1:.2f}",
                         f"{base1 / m1:.2f}x", f"{mm:.2f}", f"{base_many / mm:.2f}x",
                         "yes" if outs[name] == outs["eager"] else "no"])
    body = f"""## torch.compile of the engine's decode step (CPU)

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description()}

Model: Acorn's `small` preset shape (27.8M parameters, random weights). Compiled: each block's MLP and RMSNorms
with `torch.compile(dynamic=True)` (the paged step's shapes change every step; attention and the gathers stay
eager). Batch 1: 64 greedy tokens after a {len(reqs[0][0])}-token prompt. 32 requests: prompts 16-128 tokens,
16-64 new tokens, all at once (continuous batching). Medians of {args.runs} runs taking turns; "warm-up s"
includes compiling.

{markdown_table(["dtype", "step", "warm-up s", "batch-1 ms/token", "vs eager", "32 requests s", "vs eager",
                 "same greedy tokens"], rows)}

Compile stays off by default unless a row above shows it paying for its warm-up.
"""
    if args.no_write:
        print(body)
    else:
        write_section("decode-compile", body)
        log("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
