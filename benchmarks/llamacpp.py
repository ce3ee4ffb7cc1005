"""CPU inference against llama.cpp, side by side: batch-1 decode, time to first token,
and batched throughput, for Acorn, llama.cpp (llama-cpp-python) and transformers.

Models: random weights (seed 0; speed does not depend on the values) in two shapes,
  50m  Llama, 6 layers, d_model 512, 8 heads / 4 KV heads, d_ff 1408, vocabulary 32,000,
       untied head (50.5M parameters)
  1b   Llama-3.2-1B's shape (Acorn's `1b` preset: 16 layers, d_model 2048, 32 / 8 heads,
       d_ff 8192, vocabulary 128,256, tied head; 1.24B parameters)
saved as a Hugging Face checkpoint with the speedrun's tokenizer (its ids are all the
prompts use; the model's vocabulary is larger, as llama.cpp's padded GGUF vocabulary is)
and exported with Acorn's GGUF export (acorn.model.gguf, `acorn export gguf --type`).

Precisions, each contender at the same one:
  f32   Acorn float32 | llama.cpp F32 | transformers float32
  bf16  Acorn bfloat16 | llama.cpp BF16 | transformers bfloat16
  int8  Acorn int8 (per-channel, acorn.model.quant, bf16 activations) | llama.cpp Q8_0
  int4  Acorn int4 (group 128; bf16 activations) | llama.cpp Q4_0 (embedding/head Q8_0)
(transformers has no CPU int8/int4 kernel of its own: not run there.)

Batch 1: greedy decode of --new-tokens tokens after a --prompt-tokens prompt (ignore
EOS); time to first token (TTFT) is the prompt's forward pass and the first token,
decode speed is (new tokens - 1) / (total time - TTFT). Batched: --requests requests
at once (prompts of 16-64 tokens, outputs of 32-128 tokens, seeded), all submitted at
t=0: Acorn's engine (continuous batching, paged KV), llama.cpp's parallel sequences
(one llama_decode per step over every live sequence, as its `parallel` example does),
and transformers generate() one request after another (the way a plain script serves
them; its rate does not depend on how many are queued, so it is measured once on the
first 16 requests).

Each contender runs in its own process (this script with --worker): for each setting all
of them load, warm up, then take turns, run i of every contender before run i + 1 of any
(so a change in the machine's load falls on all of them), the median of --runs reported;
with --sequential (the 1b model, which fits in memory once) one process at a time.
Every contender gets the same --threads (torch.set_num_threads / llama.cpp n_threads).

    python benchmarks/llamacpp.py --size 50m --threads 1
    python benchmarks/llamacpp.py --size 1b --threads 1 --new-tokens 64 --no-batched
    python benchmarks/llamacpp.py --size 50m --precisions bf16 --no-write       # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

SIZES = {
    "50m": dict(vocab_size=32000, n_layer=6, d_model=512, n_head=8, n_kv_head=4, d_ff=1408, max_seq_len=1024,
                tie_embeddings=False),
    "1b": "1b",  # Acorn's preset: Llama-3.2-1B's shape
}
PRECISIONS = ("f32", "bf16", "int8", "int4")
GGUF_TYPE = {"f32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}
TORCH_DTYPE = {"f32": "float32", "bf16": "bfloat16", "int8": "bfloat16", "int4": "bfloat16"}
TOKENIZER = Path("/tmp/sr/run/tokenizer")


# ------------------------------------------------------------------ models
def model_dir(size: str) -> Path:
    return CACHE / "llamacpp" / size


def prepare(size: str, precisions) -> Path:
    """The HF checkpoint (bf16 on disk for 1b, float32 for 50m) and the GGUF files, made once."""
    import torch

    from acorn.model.checkpoint import save
    from acorn.model.gguf import write_gguf
    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.tokenizer.bpe import Tokenizer

    d = model_dir(size)
    ckpt = d / "hf"
    # the speedrun's tokenizer, or the one saved with the checkpoint once it exists
    tok = Tokenizer.from_pretrained(ckpt if (ckpt / "tokenizer.json").is_file() else tokenizer_path())
    model = None

    def get_model():
        nonlocal model
        if model is None:
            torch.manual_seed(0)
            spec = SIZES[size]
            cfg = ModelConfig.from_preset(spec) if isinstance(spec, str) else ModelConfig(**spec)
            model = Transformer(cfg).eval()
        return model

    if not (ckpt / "config.json").is_file():
        log(f"saving the {size} checkpoint")
        save(get_model(), ckpt, tokenizer=tok, dtype=torch.bfloat16 if size == "1b" else torch.float32)
    for p in precisions:
        path = d / f"model-{GGUF_TYPE[p]}.gguf"
        if not path.is_file():
            log(f"exporting {path.name}")
            write_gguf(get_model(), tok, path, type=GGUF_TYPE[p], name=f"acorn-{size}")
    return d


def tokenizer_path() -> Path:
    if (TOKENIZER / "tokenizer.json").is_file():
        return TOKENIZER
    fallback = Path("runs/speedrun/tokenizer")
    if (fallback / "tokenizer.json").is_file():
        return fallback
    sys.exit(f"no tokenizer at {TOKENIZER} or {fallback}: run the speedrun (or `acorn tokenizer train`) first")


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


def workload(n_requests: int, vocab: int, seed: int = 1) -> list[tuple[list[int], int]]:
    """(prompt ids, output tokens) per request: prompts of 16-64 tokens, outputs of 32-128."""
    rng = random.Random(seed)
    return [([rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))], rng.randint(32, 128))
            for _ in range(n_requests)]


# ------------------------------------------------------------------ workers
def timed(fn, runs: int, warmup=None) -> list[float]:
    (warmup or fn)()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class AcornRunner:
    def __init__(self, d: Path, precision: str, pack: bool, compile_decode: bool = False, int8_head: bool = False):
        from acorn.infer.engine import Engine
        from acorn.model import quant
        from acorn.model.checkpoint import load
        from acorn.tokenizer.bpe import Tokenizer

        # Quantized: from the bf16 weights, run with bf16 activations (what a quantized checkpoint
        # loads in on a CPU with bf16 instructions); the head stays float (acorn.model.quant).
        model = load(d / "hf", dtype="float32" if precision == "f32" else "bfloat16", device="cpu")
        if precision in ("int8", "int4"):
            quant.quantize(model, precision)
        # int8_head: the head from an int8 copy, as llama.cpp's Q8_0 / Q4_0 files keep it
        self.engine = Engine(model, Tokenizer.from_pretrained(d / "hf"), max_num_seqs=64, pack_weights=pack,
                             compile_decode=compile_decode,
                             int8_head=int8_head and pack and precision in ("int8", "int4"))
        self.vocab = self.engine.tokenizer.vocab_size

    def generate(self, prompts: list[list[int]], lengths: list[int]) -> int:
        from acorn.infer.sampling import SamplingParams

        self.engine.reset_prefix_cache()  # every run computes its prompts
        params = [SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0.0, ignore_eos=True)
                  for n in lengths]
        outs = self.engine.generate(prompts, params)
        return sum(len(c.token_ids) for c in outs)


class LlamaCppRunner:
    def __init__(self, d: Path, precision: str, threads: int, n_seq: int):
        import llama_cpp
        import llama_cpp.llama_cpp as C

        _no_repack(C)
        self.C = C
        path = str(d / f"model-{GGUF_TYPE[precision]}.gguf")
        self.n_seq = n_seq
        if n_seq == 1:
            self.llm = llama_cpp.Llama(path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                                       verbose=False, seed=0)
            self.vocab = self.llm.n_vocab()
        else:
            C.llama_backend_init()
            self.model = C.llama_model_load_from_file(path.encode(), C.llama_model_default_params())
            p = C.llama_context_default_params()
            p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 256 * n_seq, 512, 512, n_seq
            p.n_threads = p.n_threads_batch = threads
            self.ctx = C.llama_init_from_model(self.model, p)
            self.vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self.model))
            self.batch = C.llama_batch_init(512, 0, 1)

    def generate_one(self, prompt: list[int], n: int) -> int:
        out = 0
        self.llm.reset()  # else generate() reuses the KV of the matching prefix: the prompt must be computed
        for _ in self.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                   reset=True):
            out += 1
            if out == n:
                break
        return out

    def generate_parallel(self, prompts: list[list[int]], lengths: list[int]) -> int:
        """Every request a sequence of one context: prompts prefilled in batches of up to 512
        tokens, then one llama_decode per step over every live sequence; greedy (argmax)."""
        import numpy as np

        C, ctx, batch = self.C, self.ctx, self.batch
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        last = {}  # seq -> its last token
        pos = {s: 0 for s in range(len(prompts))}
        made = {s: 0 for s in range(len(prompts))}

        def run(entries):
            """entries: (seq, token, wants logits); decode them as one batch, return seq -> argmax."""
            batch.n_tokens = len(entries)
            for i, (s, t, want) in enumerate(entries):
                batch.token[i], batch.pos[i] = t, pos[s]
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, s
                batch.logits[i] = want
                pos[s] += 1
            if C.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            got = {}
            for i, (s, _, want) in enumerate(entries):
                if want:
                    logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, i), shape=(self.vocab,))
                    got[s] = int(logits.argmax())
            return got

        pending = [(s, t, j == len(p) - 1) for s, p in enumerate(prompts) for j, t in enumerate(p)]
        for i in range(0, len(pending), 512):
            for s, t in run(pending[i:i + 512]).items():
                last[s], made[s] = t, 1
        live = [s for s in last if made[s] < lengths[s]]
        while live:
            for s, t in run([(s, last[s], True) for s in live]).items():
                last[s] = t
                made[s] += 1
            done = [s for s in live if made[s] >= lengths[s]]
            for s in done:
                C.llama_memory_seq_rm(C.llama_get_memory(ctx), s, -1, -1)
            live = [s for s in live if made[s] < lengths[s]]
        return sum(made.values())


def _no_repack(C) -> None:
    """llama.cpp built with GGML_NATIVE on an AMX CPU repacks weights for its AMX kernels;
    that path segfaulted here on batches of 2+ tokens (benchmarks/gguf_llamacpp.py). The
    plain CPU kernels read the same tensors; llama-cpp-python has no keyword for it."""
    defaults = C.llama_model_default_params
    if getattr(defaults, "_acorn_no_repack", False):
        return

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    no_repack._acorn_no_repack = True
    C.llama_model_default_params = no_repack


class HFRunner:
    def __init__(self, d: Path, precision: str):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(d / "hf", dtype=getattr(torch, TORCH_DTYPE[precision])).eval()
        self.model.generation_config = GenerationConfig(do_sample=False, pad_token_id=0, eos_token_id=None,
                                                        bos_token_id=None)
        self.vocab = 2048

    def generate_one(self, prompt: list[int], n: int) -> int:
        torch = self.torch
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                      min_new_tokens=n)
        return out.shape[1] - len(prompt)


def serve(args) -> None:
    """Worker: load one contender at one setting, then answer commands on stdin, one line
    each: warm, ttft, total (batch 1), batch (batched); each answered RESULT <seconds>."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    d = model_dir(args.size)
    from acorn.tokenizer.bpe import Tokenizer

    vocab = Tokenizer.from_pretrained(d / "hf").vocab_size
    c, p, n_req = args.worker, args.precision, args.requests
    if c in ("acorn", "acorn-unpacked", "acorn-compiled"):
        r = AcornRunner(d, p, pack=c != "acorn-unpacked", compile_decode=c == "acorn-compiled",
                        int8_head=args.int8_head)
        one = lambda prompt, n: r.generate([prompt], [n])  # noqa: E731
        many = r.generate
    elif c == "llamacpp":
        r = LlamaCppRunner(d, p, args.threads, 1 if not n_req else n_req)
        one, many = (r.generate_one if not n_req else None), r.generate_parallel
    else:
        r = HFRunner(d, p)
        one = r.generate_one

        def many(prompts, lengths):
            return sum(r.generate_one(q, n) for q, n in zip(prompts, lengths))
    prompt = prompt_ids(args.prompt_tokens, vocab)
    work = workload(n_req, vocab)
    if c == "hf":
        work = work[:16]  # one by one: its rate does not depend on the queue (module docstring)
    prompts, lengths = [w[0] for w in work], [w[1] for w in work]
    commands = {
        "ttft": lambda: one(prompt, 1),
        "total": lambda: one(prompt, args.new_tokens),
        "batch": lambda: many(prompts, lengths),
        "warm": (lambda: one(prompt, args.new_tokens)) if not n_req else
                (lambda: one(prompts[0], 8)) if c == "hf" else (lambda: many(prompts, lengths)),
    }
    print("READY " + json.dumps({"tokens": sum(lengths)}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd not in commands:
            break
        t0 = time.perf_counter()
        commands[cmd]()
        print(f"RESULT {time.perf_counter() - t0}", flush=True)


class Worker:
    """One contender's process (this script with --worker), driven line by line."""

    def __init__(self, args, contender: str, precision: str, requests: int = 0):
        cmd = [sys.executable, __file__, "--worker", contender, "--size", args.size, "--precision", precision,
               "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
               "--prompt-tokens", str(args.prompt_tokens), "--requests", str(requests),
               *(["--int8-head"] if args.int8_head else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.name = f"{contender} {precision} {'batch 1' if not requests else f'{requests} requests'}"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self._read("READY "))

    def _read(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
        raise RuntimeError(f"{self.name}: the worker ended (exit {self.proc.wait()})")

    def ask(self, cmd: str) -> float:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return float(self._read("RESULT "))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait()


def measure(args, contenders: list[str], precision: str, requests: int = 0) -> dict[str, dict]:
    """Each contender's median times. Interleaved (all processes alive; run i of every
    contender before run i + 1 of any, so a change in the machine's load falls on all of
    them), or one process at a time with --sequential (the 1b model: one copy in memory)."""
    out: dict[str, dict] = {}
    kinds = ["batch"] if requests else ["ttft", "total"]

    def runs_of(c):
        return 1 if (c == "hf" and requests) else args.runs

    def finish(c, w, times):
        res = {k: statistics.median(v) for k, v in times.items()}
        res["runs"] = times
        if requests:
            tokens = w.info["tokens"]
            res["tokens"], res["tok_s"] = tokens, tokens / res["batch"]
        else:
            res["decode_tok_s"] = (args.new_tokens - 1) / (res["total"] - res["ttft"])
        out[c] = res
        log(f"    {w.name}: {json.dumps({k: round(v, 4) for k, v in res.items() if k != 'runs'})}")

    if args.sequential:
        for c in contenders:
            w = Worker(args, c, precision, requests)
            try:
                w.ask("warm")
                times = {k: [] for k in kinds}
                for _ in range(runs_of(c)):
                    for k in kinds:
                        times[k].append(w.ask(k))
                finish(c, w, times)
            except RuntimeError as e:
                log(f"    {e}")
            finally:
                w.close()
        return out
    workers = {}
    try:
        for c in contenders:
            try:
                workers[c] = Worker(args, c, precision, requests)
                workers[c].ask("warm")
            except RuntimeError as e:
                log(f"    {e}")
                workers.pop(c, None)
        times = {c: {k: [] for k in kinds} for c in workers}
        for i in range(args.runs):
            order = list(workers)[i % len(workers):] + list(workers)[:i % len(workers)]  # who goes first rotates
            for c in order:
                if i < runs_of(c):
                    for k in kinds:
                        times[c][k].append(workers[c].ask(k))
        for c, w in workers.items():
            finish(c, w, times[c])
    finally:
        for w in workers.values():
            w.close()
    return out


# ------------------------------------------------------------------ report
def fmt(x, digits=1):
    if x is None:
        return "—"
    return f"{x:.{digits + 1}f}" if digits and abs(x) < 10 else f"{x:.{digits}f}"  # 1b's few tok/s


def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="50m", help="model shape (module docstring)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="precisions to run batch 1 in")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads, the same for every contender")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated at batch 1")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length at batch 1")
    ap.add_argument("--batched", nargs="*", type=int, default=[16, 64], help="request counts for throughput")
    ap.add_argument("--no-batched", action="store_true", help="skip the batched throughput")
    ap.add_argument("--batched-precision", choices=PRECISIONS, default="bf16", help="precision of the batched runs")
    ap.add_argument("--no-hf", action="store_true", help="leave transformers out")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a line added to the section (e.g. the machine's load)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the docs/BENCHMARKS.md section from the "
                    "cached results of earlier runs, measuring nothing")
    ap.add_argument("--sequential", action="store_true", help="one contender's process at a time instead of "
                    "interleaving their runs (for a model that fits in memory only once)")
    # worker mode (one contender, one setting, in its own process)
    ap.add_argument("--int8-head", action="store_true", help="int8 and int4: Acorn's output head runs from an int8 "
                    "copy (packed.pack(int8_head=True)), as the Q8_0 / Q4_0 GGUF files keep theirs at 8 bits; "
                    "default: the head stays bf16")
    ap.add_argument("--no-unpacked", action="store_true", help="leave out the engine with pack_weights=False")
    ap.add_argument("--no-compiled", action="store_true", help="leave out the engine with compile_decode=True "
                    "(its warm-up compiles the step: 10-30 s at 50m, minutes at 1b)")
    ap.add_argument("--worker", choices=["acorn", "acorn-unpacked", "acorn-compiled", "llamacpp", "hf"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        serve(args)
        return
    if args.report_only:
        write_report()
        return
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llama-cpp-python is not installed: `pip install llama-cpp-python` (builds llama.cpp, ~20 min on "
                 "2 cores); this benchmark needs it")
    precisions = list(dict.fromkeys([*args.precisions, *([] if args.no_batched else [args.batched_precision])]))
    prepare(args.size, precisions)

    res = {}
    for p in args.precisions:
        contenders = ["llamacpp", "acorn", *([] if args.no_compiled else ["acorn-compiled"]),
                      *(["acorn-unpacked"] if args.size == "50m" and not args.no_unpacked else []),
                      *([] if args.no_hf or p in ("int8", "int4") else ["hf"])]
        log(f"{args.size} {p}, batch 1: {', '.join(contenders)}")
        for c, r in measure(args, contenders, p).items():
            if c.startswith("acorn") and p in ("int8", "int4"):
                r["int8_head"] = args.int8_head
            res[f"{c}|{p}"] = r
    if not args.no_batched:
        p = args.batched_precision
        for n in args.batched:
            log(f"{args.size} {p}, {n} requests")
            res[f"batched{n}"] = measure(args, ["llamacpp", "acorn", *([] if args.no_hf else ["hf"])], p, n)
    # Merged into what earlier runs at this size measured (a rerun of some precisions
    # replaces only their rows); each result keeps the command that produced it.
    path = CACHE / "llamacpp" / f"results-{args.size}.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    if merged and "raw" not in merged:  # the first format: the results alone
        merged = {"raw": merged, "by": {k: "" for k in merged}, "runs": {}}
    run = {"command": command_line(), "date": today(), "note": args.note, "new_tokens": args.new_tokens,
           "prompt_tokens": args.prompt_tokens, "threads": args.threads, "runs": args.runs,
           "sequential": args.sequential, "batched_precision": args.batched_precision}
    merged.setdefault("raw", {}).update(res)
    merged.setdefault("by", {}).update({k: run["command"] for k in res})
    merged.setdefault("runs", {})[run["command"]] = run
    merged["machine"] = machine_description(("llama_cpp_python", "transformers"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1))
    body = size_section(args.size, merged)
    if args.no_write:
        print(body)
        return
    write_report()


def size_section(size: str, merged: dict) -> str:
    """One size's part of the section, from its merged results."""
    from acorn.model.transformer import ModelConfig

    raw = merged["raw"]
    spec = SIZES[size]
    cfg = ModelConfig.from_preset(spec) if isinstance(spec, str) else ModelConfig(**spec)
    g = lambda r, k: None if r is None else r[k]  # noqa: E731
    ms = lambda r: fmt(g(r, "ttft") and g(r, "ttft") * 1e3, 0)  # noqa: E731
    rows = []
    for p in PRECISIONS:
        ll, ac = raw.get(f"llamacpp|{p}"), raw.get(f"acorn|{p}")
        un, hf = raw.get(f"acorn-unpacked|{p}"), raw.get(f"hf|{p}")
        co = raw.get(f"acorn-compiled|{p}")
        if ll is None and ac is None:
            continue
        head8 = any(r is not None and r.get("int8_head") for r in (ac, co))
        rows.append([p + (" (Acorn's head int8)" if head8 else ""), fmt(g(ll, "decode_tok_s")), fmt(g(ac, "decode_tok_s")), fmt(g(co, "decode_tok_s")),
                     fmt(g(un, "decode_tok_s")), fmt(g(hf, "decode_tok_s")),
                     f"**{ratio(g(ac, 'decode_tok_s'), g(ll, 'decode_tok_s'))}**",
                     f"**{ratio(g(co, 'decode_tok_s'), g(ll, 'decode_tok_s'))}**",
                     ratio(g(ac, "decode_tok_s"), g(hf, "decode_tok_s")), f"{ms(ll)} / {ms(ac)} / {ms(hf)}"])
    brows = []
    for key in sorted((k for k in raw if k.startswith("batched")), key=lambda k: int(k[7:])):
        got = raw[key]
        ll, ac, hf = (got[c]["tok_s"] if c in got else None for c in ("llamacpp", "acorn", "hf"))
        tokens = next(iter(got.values()))["tokens"] if got else None
        brows.append([key[7:], tokens, fmt(ll), fmt(ac), fmt(hf), f"**{ratio(ac, ll)}**", f"**{ratio(ac, hf)}**"])
    runs = [r for c, r in merged.get("runs", {}).items() if c in set(merged["by"].values())]
    lines = []
    for r in runs:
        keys = [k.split("|")[-1] if "|" in k else k for k, c in merged["by"].items() if c == r["command"]]
        lines.append(f"- `{r['command']}` ({r['date']}; {', '.join(dict.fromkeys(keys))}): batch 1 decodes "
                     f"{r['new_tokens']} tokens after a {r['prompt_tokens']}-token prompt, {r['threads']} thread(s) "
                     f"for every contender, median of {r['runs']} after a warm-up, "
                     f"{'one process after another' if r['sequential'] else 'runs interleaved across the processes'}."
                     f" {r['note']}")
    body = f"""### {size}: {cfg.num_params() / 1e6:,.1f}M parameters ({cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} / {cfg.n_kv_head} heads, d_ff {cfg.d_ff}, vocabulary {cfg.vocab_size:,}, {"tied" if cfg.tie_embeddings else "untied"} head; random weights)

Machine: {merged.get("machine", "")}

{chr(10).join(lines)}

tok/s is decode speed after the first token; TTFT in ms (llama.cpp / Acorn / transformers). "Acorn" is the
engine's default (eager) step; "Acorn compiled" the engine with compile_decode=True (opt-in: the batch-1
step as one torch.compile'd static-shape graph, compiled in the warm-up, which is not timed; section
decode-compile); "Acorn unpacked" the engine with pack_weights=False (no fused projections, no pre-packed
bf16, no int8 head). "—": not run at that setting.

{markdown_table(["precision", "llama.cpp tok/s", "Acorn tok/s", "Acorn compiled", "Acorn unpacked",
                 "transformers tok/s", "Acorn / llama.cpp", "compiled / llama.cpp", "Acorn / transformers",
                 "TTFT ms"], rows)}
"""
    if brows:
        body += f"""
Batched (bf16): all requests at once (prompts 16-64 tokens, outputs 32-128, seeded), tokens generated per
second of wall time; llama.cpp with one sequence per request (one llama_decode per step over all live
sequences); Acorn's engine (continuous batching, paged KV); transformers one request after another
(measured once, on the first 16 requests).

{markdown_table(["requests", "tokens", "llama.cpp tok/s", "Acorn tok/s", "transformers 1-by-1 tok/s",
                 "Acorn / llama.cpp", "Acorn / transformers"], brows)}
"""
    return body


INTRO = """## CPU inference against llama.cpp

Acorn's engine, llama.cpp (llama-cpp-python 0.3.36, built from source; its AMX weight repacking
off, which crashed here: benchmarks/gguf_llamacpp.py) and transformers, on the same random-weight
models, each contender in its own process with the same thread count; the GGUF files are
Acorn's own export (`acorn export gguf --type f32|bf16|q8_0|q4_0`). `benchmarks/llamacpp.py`'s
docstring has the method. What this work changed in Acorn's decode path (all on by default):
weights packed for inference (acorn.model.packed: q/k/v and gate/up each one matmul, q and k
rotated in one op, bf16 weights pre-packed once for oneDNN's AMX/AVX512-BF16 kernel instead of
reordered by every F.linear call), torch's rms_norm, batch-1 attention without row indexing,
attention in the cache's dtype (bf16 flash attention is faster than float32 in torch 2.13; the
float32 copy of the gathered keys and values cost as much as attention), and quantized
checkpoints loading in bf16 on CPUs with bf16 instructions (torch's int8/int4 kernels are fast
only with bf16 activations).
"""


def goals() -> str:
    """The issue's goals, from the cached results of both sizes."""
    def load(size):
        f = CACHE / "llamacpp" / f"results-{size}.json"
        merged = json.loads(f.read_text()) if f.is_file() else {}
        return merged.get("raw", merged)

    lines = []
    for size, bar in (("1b", 1.0), ("50m", 0.8)):
        r = load(size)
        for p in ("bf16", "int8", "int4"):
            a, b, co = r.get(f"acorn|{p}"), r.get(f"llamacpp|{p}"), r.get(f"acorn-compiled|{p}")
            if a and b:
                x = a["decode_tok_s"] / b["decode_tok_s"]
                verdict = "met" if x >= bar else "**not met**"
                got = f"{x:.2f}x llama.cpp with the default (eager) step"
                if co:
                    y = co["decode_tok_s"] / b["decode_tok_s"]
                    got += f", {y:.2f}x compiled (opt-in `--compile-decode`)"
                    if x < bar <= y:
                        verdict = "met with `--compile-decode` only"
                    elif x < bar and y < bar:
                        verdict = "**not met**, compiled or not"
                head = ", Acorn's head int8 as llama.cpp's" if a.get("int8_head") else ""
                lines.append(f"- batch-1 decode at {size}, {p}{head}: {got} (goal >= {bar}x): {verdict}")
    r = load("50m")
    got = r.get("batched64") or {}
    if "acorn" in got and "llamacpp" in got:
        x = got["acorn"]["tok_s"] / got["llamacpp"]["tok_s"]
        lines.append(f"- 64 requests at 50m: {x:.2f}x llama.cpp's parallel sequences (goal >= 1.0x): "
                     f"{'met' if x >= 1 else '**not met**'}")
    if "acorn" in got and "hf" in got:
        x = got["acorn"]["tok_s"] / got["hf"]["tok_s"]
        lines.append(f"- 64 requests at 50m: {x:.1f}x transformers one by one (goal >= 10x): "
                     f"{'met' if x >= 10 else '**not met**'}")
    for size in ("50m", "1b"):
        r = load(size)
        a, b = r.get("acorn|bf16"), r.get("acorn|f32")
        if a and b:
            x = a["decode_tok_s"] / b["decode_tok_s"]
            lines.append(f"- bf16 faster than float32 in Acorn ({size}, batch 1): {x:.2f}x "
                         f"{'met' if x > 1 else '**not met**'}")
    return "\n".join(lines)


ANALYSIS_FILE = Path(__file__).resolve().parent / "llamacpp_analysis.md"


def write_report() -> None:
    """The docs/BENCHMARKS.md section from the cached per-size sections and results, and
    the analysis written beside this script (benchmarks/llamacpp_analysis.md)."""
    parts = []
    for size in SIZES:
        f = CACHE / "llamacpp" / f"results-{size}.json"
        if f.is_file():
            merged = json.loads(f.read_text())
            if "raw" not in merged:
                merged = {"raw": merged, "by": {}, "runs": {}}
            parts.append(size_section(size, merged))
    text = "\n".join(parts)
    analysis = ANALYSIS_FILE.read_text() if ANALYSIS_FILE.is_file() else ""
    body = f"{INTRO}\n{text}\n### Goals\n\n{goals()}\n\n{analysis}"
    write_section("llamacpp", body)
    print(body)

if __name__ == "__main__":
    main()
