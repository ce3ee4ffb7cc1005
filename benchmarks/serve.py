"""Server benchmark: throughput and latency of `acorn serve` under 1, 8 and 64 concurrent clients.

The server runs in its own process (`acorn serve CHECKPOINT`, exactly as a user
starts it); this script is the load generator, in another process, talking
HTTP over loopback with streaming completions (POST /v1/completions,
stream=true, the vLLM extra ignore_eos so every request produces its
max_tokens). Each client sends its requests one after another; at each
concurrency level the clients together send --requests requests. Measured per
request from the client side:

  TTFT   time from sending the request to the first streamed token
  ITL    inter-token latency: the gaps between later streamed chunks (each
         chunk carries the text of one engine step, so usually one token)

and per level: output tokens/s (all requests' tokens over the level's wall
time), p50 and p99 of TTFT and ITL.

The model is the engine benchmark's shape (Acorn's `small` preset: 8 layers,
d_model 512, 8 heads, 4 KV heads; random weights) with a BPE trained on
tinyshakespeare; prompts are random held-out windows of that text.

    python benchmarks/serve.py               # levels 1, 8 and 64
    python benchmarks/serve.py --quick --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
WORK = CACHE / "serve"


def checkpoint(quick: bool) -> Path:
    """A random model of the engine benchmark's shape with a tinyshakespeare BPE (made once)."""
    import torch

    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.tokenizer.bpe import Tokenizer

    path = WORK / ("nano" if quick else "small")
    if (path / "config.json").is_file():
        return path
    tok_dir = WORK / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        Tokenizer.train([TEXT.read_text(encoding="utf-8")], 4096).save(tok_dir)
    tok = Tokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    shape = dict(n_layer=2, d_model=128, n_head=4, n_kv_head=2) if quick else \
        dict(n_layer=8, d_model=512, n_head=8, n_kv_head=4)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=1024, **shape))
    model.save(path, tokenizer=tok)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "acorn", "serve", str(path), "--port", str(port), "--device", "cpu",
                             "--model-name", "bench", "--max-pending", "1024"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not come up within 120 s")


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times, tokens = [], 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
    if not times:
        raise RuntimeError("no token came back")
    return {"ttft": times[0] - t0, "itl": [b - a for a, b in zip(times, times[1:])], "tokens": tokens}


async def level(url: str, clients: int, prompts: list[str], max_tokens: int) -> dict:
    queue = list(prompts)
    results = []

    async def client_loop(client):
        while queue:
            results.append(await one_request(client, url, queue.pop(), max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    itl = sorted(x for r in results for x in r["itl"])

    def pct(xs, p):
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000 if xs else float("nan")

    out_tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "wall": wall, "tokens": out_tokens,
            "tok_s": out_tokens / wall, "ttft50": pct(ttft, 50), "ttft99": pct(ttft, 99),
            "itl50": pct(itl, 50), "itl99": pct(itl, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model, levels 1 and 8, few requests")
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (at least the number of clients)")
    ap.add_argument("--prompt-chars", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    levels = [1, 8] if args.quick else [int(x) for x in args.levels.split(",")]
    if args.quick:
        args.requests, args.max_tokens = 8, 16
    path = checkpoint(args.quick)
    text = TEXT.read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9):]
    rng = random.Random(0)
    port = free_port()
    log(f"starting acorn serve {path} on port {port}")
    proc = start_server(path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        rows, results = [], []
        for clients in levels:
            n = max(args.requests, clients)
            starts = [rng.randrange(len(held_out) - args.prompt_chars) for _ in range(n)]
            prompts = [held_out[s:s + args.prompt_chars] for s in starts]
            asyncio.run(level(url, clients, prompts[:clients], 4))  # warm-up
            log(f"{clients} concurrent clients, {n} requests of {args.max_tokens} tokens")
            r = asyncio.run(level(url, clients, prompts, args.max_tokens))
            log(f"  {r['tok_s']:.1f} tokens/s, TTFT p50 {r['ttft50']:.0f} ms, ITL p50 {r['itl50']:.1f} ms")
            results.append(r)
            rows.append([clients, r["requests"], f"{r['wall']:.1f}", f"{r['tok_s']:,.1f}", f"{r['ttft50']:.0f}",
                         f"{r['ttft99']:.0f}", f"{r['itl50']:.1f}", f"{r['itl99']:.1f}"])
        metrics = httpx.get(url + "/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    in_use = [line for line in metrics.splitlines() if line.startswith("acorn_kv_blocks_in_use")]
    body = f"""## Serving: throughput and latency of `acorn serve` under concurrent clients

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description()}
{args.note}
Server: `acorn serve` in its own process (defaults: paged engine, continuous batching, prefix caching), model of the
engine benchmark's shape ({'2 layers, d_model 128' if args.quick else "Acorn's `small` preset: 8 layers, d_model 512, 8 heads, 4 KV heads"}; random weights, fp32) with a
4,096-token BPE of tinyshakespeare. Load generator: this script, another process, over HTTP on loopback
(httpx, streaming `POST /v1/completions`, greedy, `ignore_eos`, {args.max_tokens} tokens per request, prompts of
{args.prompt_chars} characters of held-out text). Each client sends its requests one after another; the clients of a
level send {args.requests} requests together (after a short warm-up). TTFT: request sent to first token, at the
client. ITL: gaps between streamed chunks after the first. The server and the load generator share the
machine's 2 cores, so the load generator takes some of the server's CPU.

{markdown_table(["concurrent clients", "requests", "wall s", "output tokens/s", "TTFT p50 ms", "TTFT p99 ms",
                 "ITL p50 ms", "ITL p99 ms"], rows)}

After the run: `{in_use[0] if in_use else 'acorn_kv_blocks_in_use (not reported)'}`.
"""
    if args.no_write:
        print(body)
    else:
        write_section("serve", body)
        log("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
