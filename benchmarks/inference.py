"""Inference benchmark: Acorn's engine against transformers' generate().

One random Llama-layout model (the "small" preset, ~28M parameters, context
1280) is built in Acorn and copied into transformers' LlamaForCausalLM (the
parameter names are the same), and the two run the same token ids, taking
turns, medians of several runs, in float32 and bfloat16:

  a. batch-1 decode  one prompt, greedy, the same number of new tokens (never
     stopping early). Time to first token (TTFT): Acorn, `next(engine.stream())`;
     transformers, generate() with max_new_tokens=1. Decode tokens/s:
     (new tokens - 1) / (time for all of them - TTFT), from the medians.
     Acorn's default engine (paged) and its plain one (paged=False).
  b. throughput      64 requests of mixed prompt and output lengths (fixed
     seed), all given at once to the paged engine (continuous batching);
     against the plain engine in static batches (each batch runs until its
     longest request is done) and transformers' generate() one request at a
     time. Output tokens/s. The mix is chat-like: prompts of 16-256 tokens,
     replies of 16-192.
  c. prefix caching  TTFT of a prompt that is a shared 1,000-token prefix plus
     a new 16-token suffix, with the prefix already in the cache (an earlier
     request brought it), against an engine with prefix caching off.
  d. KV memory       bytes per token from the config, how many of (b)'s
     requests fit in a 256 MiB budget paged (whole blocks) against a
     contiguous cache that reserves the full context per sequence, and the
     peak number of blocks in use measured while (b) ran.

Prompts are random token ids, so the tokenizer only turns ids into text: it
is GPT-2's vocabulary cut to the model's size, keeping tokens that are whole
UTF-8 text on their own, so every generated token streams out at once (a
token holding half a character would be held back and make next(stream())
wait for the next one). Both sides: denormals flushed, torch's default
threads, inference mode, transformers with attn_implementation="sdpa", a
generation_config with greedy decoding, a pad token and no stop token (so no
logits processor and no early stop).

    python benchmarks/inference.py                 # the full run (float32 and bfloat16)
    python benchmarks/inference.py --quick         # a tiny model and few requests, to try it out
    python benchmarks/inference.py --dtype float32 --runs 3 --no-write
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import command_line, log, machine_description, markdown_table, median_times_interleaved, today, write_section  # noqa: E402
from model import hf_twin  # noqa: E402  (benchmarks/model.py: the same weights in LlamaForCausalLM)

from acorn.infer.engine import Engine  # noqa: E402
from acorn.infer.sampling import SamplingParams  # noqa: E402
from acorn.model.transformer import ModelConfig, Transformer  # noqa: E402
from acorn.tokenizer.bpe import Tokenizer  # noqa: E402

MiB = 1 << 20


@dataclass
class Setup:
    name: str
    model: dict  # ModelConfig fields
    decode_prompt: int  # (a) prompt tokens
    decode_new: int  # (a) new tokens
    requests: int  # (b) number of requests
    prompt_range: tuple[int, int]  # (b) prompt tokens, uniform, inclusive
    output_range: tuple[int, int]  # (b) output tokens, uniform, inclusive
    static_batch: int  # (b) rows per static batch of the plain engine
    prefix: int  # (c) shared prefix tokens
    suffix: int  # (c) per-request suffix tokens
    budget: int  # (d) KV bytes


FULL = Setup("small", dict(vocab_size=8192, n_layer=8, d_model=512, n_head=8, n_kv_head=4, max_seq_len=1280),
             decode_prompt=128, decode_new=128, requests=64, prompt_range=(16, 256), output_range=(16, 192),
             static_batch=16, prefix=1000, suffix=16, budget=256 * MiB)
QUICK = Setup("nano", dict(vocab_size=2048, n_layer=4, d_model=128, n_head=4, n_kv_head=2, max_seq_len=1280),
              decode_prompt=32, decode_new=24, requests=16, prompt_range=(8, 96), output_range=(4, 24),
              static_batch=4, prefix=1000, suffix=16, budget=256 * MiB)


# ---------------------------------------------------------------- set-up
def id_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer of exactly vocab_size tokens, each whole UTF-8 text: GPT-2's
    tokens in rank order, without the ones that are pieces of a character.
    Only ids are ever decoded here (the prompts are ids), never text encoded."""
    gpt2 = Tokenizer.from_pretrained("gpt2")
    kept = []
    for token, _ in sorted(gpt2.mergeable_ranks.items(), key=lambda kv: kv[1]):
        try:
            token.decode("utf-8")
        except UnicodeDecodeError:
            continue
        kept.append(token)
        if len(kept) == vocab_size:
            break
    return Tokenizer({t: i for i, t in enumerate(kept)}, {}, gpt2.pattern, name=f"gpt2-utf8-{vocab_size}")


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0.0, ignore_eos=True)


def fresh(engine: Engine) -> Engine:
    """Forget the paged engine's prefix cache, so a prompt repeated from an
    earlier run is computed again, as the first time."""
    engine.reset_prefix_cache()
    return engine


class HF:
    """transformers' LlamaForCausalLM and the generate() call its contenders make."""

    def __init__(self, model, device: str):
        from transformers import GenerationConfig

        self.model = model.eval()
        # Greedy, a pad token, no eos (so no MinNewTokens processor and no stop
        # check): the leanest generate() loop.
        self.model.generation_config = GenerationConfig(do_sample=False, pad_token_id=0, eos_token_id=None,
                                                        bos_token_id=None)
        self.device = device

    def generate(self, ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                      min_new_tokens=n)
        return out[0, len(ids):].tolist()  # .tolist() also waits for a GPU


def first_token(engine: Engine, prompt: list[int], n: int) -> None:
    stream = engine.stream(prompt, greedy(n))
    next(stream)
    stream.close()  # aborts the request


def build(setup: Setup, dtype: torch.dtype, device: str):
    torch.manual_seed(0)
    cfg = ModelConfig(**setup.model)
    model = Transformer(cfg)
    hf = hf_twin(model)  # copied in float32, then both cast the same way
    model, hf = model.to(device, dtype).eval(), hf.to(device, dtype)
    return model, HF(hf, device)


def workload(setup: Setup, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, output tokens) per request, the same in every run."""
    rng = random.Random(seed)
    out = []
    for _ in range(setup.requests):
        p = rng.randint(*setup.prompt_range)
        out.append(([rng.randrange(vocab) for _ in range(p)], rng.randint(*setup.output_range)))
    return out


def ms(s: float) -> str:
    return f"{s * 1e3:,.0f}" if s >= 0.01 else f"{s * 1e3:.1f}"


def secs(s: float) -> str:
    return f"{s:,.1f}" if s >= 10 else f"{s:.3g}"


# ---------------------------------------------------------------- (a) batch-1 decode
def measure_decode(setup, paged, plain, hf, vocab, runs) -> tuple[list[list[object]], dict]:
    rng = random.Random(1)
    prompt = [rng.randrange(vocab) for _ in range(setup.decode_prompt)]
    n = setup.decode_new
    # The warm-up: one call of each, whose tokens are compared (the same
    # model, so greedy decoding should agree, exactly in float32).
    toks = {"paged": fresh(paged).generate([prompt], greedy(n))[0].token_ids,
            "plain": plain.generate([prompt], greedy(n))[0].token_ids,
            "hf": hf.generate(prompt, n)}
    for k, v in toks.items():
        assert len(v) == n, f"{k} made {len(v)} tokens, not {n}"
    agree = {k: next((i for i, (a, b) in enumerate(zip(toks[k], toks["hf"])) if a != b), n) for k in ("paged", "plain")}
    for e in (paged, plain):
        first_token(fresh(e) if e.paged else e, prompt, n)
    hf.generate(prompt, 1)

    res = median_times_interleaved([
        ("paged ttft", lambda: first_token(fresh(paged), prompt, n)),
        ("plain ttft", lambda: first_token(plain, prompt, n)),
        ("hf ttft", lambda: hf.generate(prompt, 1)),
        ("paged all", lambda: fresh(paged).generate([prompt], greedy(n))),
        ("plain all", lambda: plain.generate([prompt], greedy(n))),
        ("hf all", lambda: hf.generate(prompt, n)),
    ], runs)
    # (On a busy machine a median TTFT can come out longer than a median
    # whole run; the rate is then not a number rather than a negative one.)
    rate = {k: (n - 1) / d if (d := res[f"{k} all"][0] - res[f"{k} ttft"][0]) > 0 else math.nan
            for k in ("paged", "plain", "hf")}
    names = {"paged": "Acorn engine (paged, default)", "plain": "Acorn engine (plain, paged=False)",
             "hf": "transformers generate()"}
    rows = [[names[k], ms(res[f"{k} ttft"][0]), secs(res[f"{k} all"][0]), f"{rate[k]:,.1f}",
             f"{rate[k] / rate['hf']:.2f}x"] for k in ("paged", "plain", "hf")]
    return rows, {"speed": rate["paged"] / rate["hf"], "plain_speed": rate["plain"] / rate["hf"], "agree": agree}


# ---------------------------------------------------------------- (b) throughput
def run_continuous(engine: Engine, work, peak: list[int] | None = None) -> None:
    """All requests at once into the paged engine; step until all are done."""
    fresh(engine)
    made: dict[str, int] = {}
    want = {engine.add_request(p, greedy(o)): o for p, o in work}
    while engine.has_unfinished():
        out = engine.step()
        if not out and not engine.scheduler.running:
            raise RuntimeError("the engine cannot make progress")
        for o in out:
            made[o.request_id] = made.get(o.request_id, 0) + len(o.token_ids)
        if peak is not None:
            peak.append(engine.stats()["blocks_in_use"])
    assert made == want, "a request did not get exactly its output tokens"


def run_static(engine: Engine, work, batch: int) -> None:
    """The plain engine in batches of `batch` requests in arrival order; each
    batch generates as many tokens as its longest request wants (the shorter
    ones' extra tokens are wasted work, not counted)."""
    for i in range(0, len(work), batch):
        chunk = work[i:i + batch]
        longest = max(o for _, o in chunk)
        outs = engine.generate([p for p, _ in chunk], greedy(longest))
        assert all(len(c.token_ids) == longest for c in outs)


def run_one_by_one_hf(hf: HF, work) -> None:
    for p, o in work:
        assert len(hf.generate(p, o)) == o


def measure_throughput(setup, paged, plain, hf, work, runs) -> tuple[list[list[object]], dict]:
    out_tokens = sum(o for _, o in work)
    # Warm-up on the first few requests (a whole transformers run takes minutes),
    # then one untimed full continuous-batching run that records the blocks in use.
    head = work[:max(2, setup.static_batch)]
    run_continuous(paged, head)
    run_static(plain, head, setup.static_batch)
    run_one_by_one_hf(hf, head[:2])
    peak: list[int] = []
    run_continuous(paged, work, peak)
    stats = paged.stats()
    contenders = [
        ("Acorn engine (paged), continuous batching, all requests at once", lambda: run_continuous(paged, work)),
        (f"Acorn engine (plain), static batches of {setup.static_batch}",
         lambda: run_static(plain, work, setup.static_batch)),
        ("transformers generate(), one request at a time", lambda: run_one_by_one_hf(hf, work)),
    ]
    res = median_times_interleaved(contenders, runs)
    t_hf = res[contenders[-1][0]][0]
    t_static = res[contenders[1][0]][0]
    rows = [[name, secs(res[name][0]), f"{out_tokens / res[name][0]:,.1f}", f"{t_hf / res[name][0]:.1f}x",
             f"{t_static / res[name][0]:.1f}x"] for name, _ in contenders]
    t_cont = res[contenders[0][0]][0]
    return rows, {"speed_hf": t_hf / t_cont, "speed_static": t_static / t_cont, "peak_blocks": max(peak),
                  "preemptions": stats["preemptions"], "num_blocks": stats["num_blocks"],
                  "prefix_hits": stats["prefix_hit_tokens"]}


# ---------------------------------------------------------------- (c) prefix caching
def measure_prefix(setup, model, tokenizer, paged, hf, vocab, runs) -> tuple[list[list[object]], dict]:
    rng = random.Random(2)
    prefix = [rng.randrange(vocab) for _ in range(setup.prefix)]
    suffixes = [[rng.randrange(vocab) for _ in range(setup.suffix)] for _ in range(2 * runs + 4)]
    nocache = Engine(model, tokenizer, prefix_caching=False)
    first_token(fresh(paged), prefix + suffixes[0], 1)  # brings the prefix into the cache
    # Each call takes a new suffix, so only the shared prefix can come from the cache.
    cached_next, uncached_next, hf_next = (itertools.count(1) for _ in range(3))
    res = median_times_interleaved([
        ("cached", lambda: first_token(paged, prefix + suffixes[next(cached_next)], 1)),
        ("uncached", lambda: first_token(nocache, prefix + suffixes[next(uncached_next)], 1)),
        ("hf", lambda: hf.generate(prefix + suffixes[next(hf_next)], 1)),
    ], runs, warmup=1)
    hit = paged.stats()["prefix_hit_tokens"]
    c, u, h = res["cached"][0], res["uncached"][0], res["hf"][0]
    rows = [["Acorn engine (paged), prefix in the cache", ms(c), f"{c / u:.2f}x"],
            ["Acorn engine (paged), prefix caching off", ms(u), "1.00x"],
            ["transformers generate(max_new_tokens=1)", ms(h), f"{h / u:.2f}x"]]
    return rows, {"ratio": c / u, "hit_tokens": hit}


# ---------------------------------------------------------------- (d) KV memory
def fit(budget_tokens: int, sizes: list[int]) -> int:
    """How many sequences fit: take the workload's requests in order (again
    from the first when all are in) until the next one does not fit."""
    used, count = 0, 0
    for s in itertools.cycle(sizes):
        if used + s > budget_tokens:
            return count
        used, count = used + s, count + 1


def measure_memory(setup, cfg, dtype, work, block_size, per_token_engine,
                   peak_blocks) -> tuple[list[list[object]], dict]:
    size = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * size
    assert per_token == per_token_engine, (per_token, per_token_engine)
    budget_tokens = setup.budget // per_token
    exact = [len(p) + o for p, o in work]
    paged = [math.ceil(t / block_size) * block_size for t in exact]
    contiguous = [cfg.max_seq_len] * len(work)
    rows = []
    for name, sizes in [(f"paged, blocks of {block_size} tokens", paged),
                        (f"contiguous, the full context ({cfg.max_seq_len}) reserved per sequence", contiguous),
                        ("(exact prompt + output tokens, no waste: the bound)", exact)]:
        rows.append([name, f"{statistics.mean(sizes):,.0f}", f"{fit(budget_tokens, sizes):,}",
                     f"{sum(sizes) * per_token / MiB:,.1f}"])
    n_paged, n_contig = fit(budget_tokens, paged), fit(budget_tokens, contiguous)
    return rows, {"per_token": per_token, "budget_tokens": budget_tokens, "ratio": n_paged / n_contig,
                  "peak_mib": peak_blocks * block_size * per_token / MiB,
                  "all_blocks": sum(paged) // block_size}


# ---------------------------------------------------------------- one dtype on one device
def measure(setup: Setup, dtype: torch.dtype, device: str, runs: int, tp_runs: int) -> dict:
    dname = str(dtype).replace("torch.", "")
    log(f"{device} {dname}: building the model")
    model, hf = build(setup, dtype, device)
    cfg = model.config
    tokenizer = id_tokenizer(cfg.vocab_size)
    vocab = tokenizer.vocab_size
    paged = Engine(model, tokenizer)  # the defaults: paged, prefix caching, block 16, 64 sequences, 512 tokens a step
    plain = Engine(model, tokenizer, paged=False)
    work = workload(setup, vocab)
    out = {"device": device, "dtype": dname}
    log(f"{device} {dname}: (a) batch-1 decode, {setup.decode_prompt}-token prompt, {setup.decode_new} new tokens")
    out["decode"] = measure_decode(setup, paged, plain, hf, vocab, runs)
    log(f"  decode: paged {out['decode'][1]['speed']:.2f}x, plain {out['decode'][1]['plain_speed']:.2f}x "
        f"transformers (goal 2x)")
    log(f"{device} {dname}: (b) throughput, {len(work)} requests, {sum(o for _, o in work)} output tokens")
    out["throughput"] = measure_throughput(setup, paged, plain, hf, work, tp_runs)
    log(f"  throughput: continuous batching {out['throughput'][1]['speed_hf']:.1f}x transformers one at a time "
        f"(goal 10x), {out['throughput'][1]['speed_static']:.1f}x static batches")
    log(f"{device} {dname}: (c) prefix caching, {setup.prefix}-token prefix + {setup.suffix}-token suffix")
    out["prefix"] = measure_prefix(setup, model, tokenizer, paged, hf, vocab, runs)
    log(f"  prefix: cached TTFT {out['prefix'][1]['ratio']:.2f}x uncached (goal <= 0.2x)")
    st = paged.stats()
    out["memory"] = measure_memory(setup, cfg, dtype, work, st["block_size"], st["kv_bytes_per_token"],
                                   out["throughput"][1]["peak_blocks"])
    out["engine"] = st
    del paged, plain, model, hf
    gc.collect()
    return out


# ---------------------------------------------------------------- the report
def met(ok: bool) -> str:
    return "met" if ok else "not met"


def report(setup: Setup, results: list[dict], runs: int, tp_runs: int, note: str | None) -> str:
    cfg = ModelConfig(**setup.model)
    work_sizes = workload(setup, cfg.vocab_size)
    out_tokens = sum(o for _, o in work_sizes)
    prompt_tokens = sum(len(p) for p, _ in work_sizes)
    parts = [f"""## Inference: the engine against transformers' generate()

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description(("transformers",))}, torch threads: {torch.get_num_threads()}
{f"{chr(10)}Note: {note}{chr(10)}" if note else ""}
Model: the shape of Acorn's `{setup.name}` preset, random weights (seed 0): vocabulary {cfg.vocab_size:,}, {cfg.n_layer} layers,
d_model {cfg.d_model}, {cfg.n_head} heads, {cfg.n_kv_head} KV heads (head_dim {cfg.head_dim}), d_ff {cfg.d_ff},
context {cfg.max_seq_len}: {cfg.num_params():,} parameters. The same weights in Acorn's `Transformer` and in
transformers' `LlamaForCausalLM` (`attn_implementation="sdpa"`). Prompts are random token ids (fixed seeds);
decoding is greedy and never stops early (Acorn: `ignore_eos`, `min_new_tokens` = `max_new_tokens`;
transformers: no eos token, `min_new_tokens` = `max_new_tokens`). Acorn's engine runs with its defaults
(paged, blocks of 16 tokens, up to 64 sequences and 512 tokens a step, prefix caching on) except where a row
says otherwise. Denormals flushed, inference mode, for both. Contenders take turns within each run, after an
untimed warm-up (the throughput contenders warm up on the first requests of the workload: its whole
transformers run takes minutes); medians of {runs} runs ({tp_runs} for the throughput table).
"""]
    for r in results:
        dev, dt = r["device"], r["dtype"]
        drows, d = r["decode"]
        trows, t = r["throughput"]
        prows, p = r["prefix"]
        mrows, m = r["memory"]
        label = f"{dev}, {dt}"
        if dev == "cuda":
            label += " (the GPU code path was written without a GPU to try it on: check these figures)"
        agree = ", ".join(f"{k} {v}/{setup.decode_new}" for k, v in d["agree"].items())
        parts.append(f"""### {label}

**a. Batch-1 decode**: a {setup.decode_prompt}-token prompt, {setup.decode_new} new tokens. TTFT: Acorn
`next(engine.stream(...))`, transformers `generate(max_new_tokens=1)`. Decode tokens/s: (new tokens - 1) / (median
time for all of them - median TTFT). Greedy tokens equal to transformers' before the first difference: {agree}.

{markdown_table(["contender", "TTFT ms", f"{setup.decode_new} tokens s", "decode tokens/s", "vs transformers"], drows)}

Goal Acorn's default engine >= 2x transformers' decode tokens/s: {met(d["speed"] >= 2)} ({d["speed"]:.2f}x).

**b. Throughput**: {setup.requests} requests, prompts {setup.prompt_range[0]}-{setup.prompt_range[1]} tokens,
outputs {setup.output_range[0]}-{setup.output_range[1]} tokens (uniform, seed 0; {prompt_tokens:,} prompt and
{out_tokens:,} output tokens in all). Tokens/s counts the requested output tokens only; in the static batches
every row generates as many tokens as the longest request of its batch (the extra ones are wasted work).

{markdown_table(["contender", "seconds", "output tokens/s", "vs transformers", "vs static batches"], trows)}

Goal continuous batching >= 10x transformers one at a time: {met(t["speed_hf"] >= 10)} ({t["speed_hf"]:.1f}x);
against Acorn's own static batching: {t["speed_static"]:.1f}x.

**c. Prefix caching**: TTFT of a prompt made of a shared {setup.prefix:,}-token prefix and a new
{setup.suffix}-token suffix (each run a different suffix). Cached: an earlier request brought the prefix into the
cache ({p["hit_tokens"]:,} prompt tokens served from it in all); uncached: an engine with `prefix_caching=False`.

{markdown_table(["contender", "TTFT ms", "vs uncached"], prows, align="lrr")}

Goal cached TTFT <= 0.2x uncached: {met(p["ratio"] <= 0.2)} ({p["ratio"]:.2f}x).

**d. KV memory**: {m["per_token"]:,} bytes per token (2 x {cfg.n_layer} layers x {cfg.n_kv_head} KV heads x
{cfg.head_dim} head_dim x {torch.empty((), dtype=getattr(torch, dt)).element_size()} bytes). Sequences of (b)'s
mix that fit in a {setup.budget // MiB} MiB budget ({m["budget_tokens"]:,} tokens), taking the requests in order:

{markdown_table(["cache layout", "tokens held per sequence (mean)", f"sequences in {setup.budget // MiB} MiB",
                 f"all {setup.requests} requests, MiB"], mrows, align="lrrr")}

Paged fits {m["ratio"]:.1f}x as many sequences as the contiguous reservation. Measured while (b) ran on the
paged engine: at most {t["peak_blocks"]:,} of its {t["num_blocks"]:,} blocks in use ({m["peak_mib"]:,.1f} MiB;
all {setup.requests} requests whole would need {m["all_blocks"]:,}, but prompts are prefilled 512 tokens a step
and the first requests finish before the last are in), {t["preemptions"]} preemptions.
""")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model and few requests, 2 runs (under a minute)")
    ap.add_argument("--runs", type=int, default=5, help="runs of (a) and (c)")
    ap.add_argument("--throughput-runs", type=int, default=3, help="runs of (b), minutes each")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both")
    ap.add_argument("--no-write", action="store_true", help="print instead of writing docs/BENCHMARKS.md")
    ap.add_argument("--note", help="a line for the report (does not change a number)")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    setup = QUICK if args.quick else FULL
    runs = 2 if args.quick else args.runs
    tp_runs = 2 if args.quick else args.throughput_runs
    dtypes = [torch.float32, torch.bfloat16] if args.dtype == "both" else [getattr(torch, args.dtype)]
    # On a CUDA machine the same figures on the GPU as well (not yet run on one).
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    t0 = time.perf_counter()
    results = [measure(setup, dtype, device, runs, tp_runs) for device in devices for dtype in dtypes]
    body = report(setup, results, runs, tp_runs, args.note)
    log(f"done in {time.perf_counter() - t0:.0f}s")
    if args.no_write:
        print(body)
    else:
        log(f"wrote {write_section('inference', body)}")


if __name__ == "__main__":
    main()
