"""Structured-output benchmark: what the token mask costs per generated token.

Constrained decoding (acorn.infer.structured, llguidance underneath) computes
a mask over the whole vocabulary before every sampled token, on the CPU. The
question is whether that is small next to the forward pass it rides along
with. For each tokenizer (an 8k BPE trained on tinyshakespeare, and GPT-2's
50k vocabulary) it measures, medians over all tokens of several runs:

  a. mask + advance  JSON fed token by token through a JSON-Schema Constraint:
     allowed() (llguidance's bitmask, unpacked into a torch bool mask of the
     vocabulary) then advance(). Two kinds of JSON for one book-record schema
     (strings, integers, a number, a boolean, an enum, an array, a nested
     object): a fixed document, compact as the constraint writes it, and the
     random model's own guided outputs from (b). Also llguidance's
     compute_bitmask alone (the rest is Acorn's conversion), and the one-time
     costs: building the LLTokenizer for the vocabulary, compiling the schema.
  b. decode step     one engine step (paged, batch 1) of a random model of the
     "small" preset (~30M parameters with the 8k vocabulary; the same
     layout with GPT-2's vocabulary), unconstrained and guided by the schema;
     the difference is the end-to-end price of the constraint per token.

The model's weights are random: only the time matters here, not the text.

    python benchmarks/structured.py                 # both tokenizers, preset small, 1 torch thread
    python benchmarks/structured.py --quick --no-write   # the 8k tokenizer, preset micro, 1 run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import (CACHE, SHARED_DATA, command_line, log, machine_description, markdown_table,  # noqa: E402
                    today, write_section)

from acorn.infer.engine import Engine  # noqa: E402
from acorn.infer.sampling import SamplingParams  # noqa: E402
from acorn.infer.structured import _compiled, build_constraint  # noqa: E402
from acorn.model.transformer import ModelConfig, Transformer  # noqa: E402
from acorn.tokenizer.bpe import Tokenizer  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "author": {"type": "string", "maxLength": 30},
        "year": {"type": "integer", "minimum": 1400, "maximum": 2100},
        "rating": {"type": "number", "minimum": 0, "maximum": 5},
        "available": {"type": "boolean"},
        "format": {"enum": ["hardcover", "paperback", "ebook"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "publisher": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 24}, "city": {"type": "string", "maxLength": 16}},
            "required": ["name"],
            "additionalProperties": False,
        },
    },
    "required": ["title", "author", "year", "available"],
    "additionalProperties": False,
}
DOCUMENT = {
    "title": "The Tempest", "author": "William Shakespeare", "year": 1611, "rating": 4.5, "available": True,
    "format": "paperback", "tags": ["play", "comedy", "island"],
    "publisher": {"name": "Folger Library", "city": "Washington"},
}
PROMPT = "Give the book as JSON: "


def shakespeare_tokenizer(vocab_size: int) -> Tokenizer:
    """An 8k BPE trained on tinyshakespeare, cached in benchmarks/.cache."""
    path = CACHE / f"structured-shakespeare-{vocab_size}"
    if (path / "tokenizer.json").exists():
        return Tokenizer.from_pretrained(path)
    log(f"training a {vocab_size}-token BPE on tinyshakespeare")
    tok = Tokenizer.train([SHARED_DATA / "text" / "tinyshakespeare.txt"], vocab_size)
    tok.save(path)
    return tok


def tokenizers(quick: bool) -> list[tuple[str, Tokenizer]]:
    out = [("BPE 8k (tinyshakespeare)", shakespeare_tokenizer(8192))]
    if not quick:
        out.append(("GPT-2 (50k)", Tokenizer.from_pretrained("gpt2")))
    return out


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def one_time_costs(tok: Tokenizer) -> dict:
    """Building the LLTokenizer (once per tokenizer) and compiling the schema (once per schema)."""
    t0 = time.perf_counter()
    _compiled(tok)
    build_tokenizer = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_constraint({"json_schema": SCHEMA}, tok, {tok.eos_id})
    return {"build_tokenizer": build_tokenizer, "compile": time.perf_counter() - t0}


def measure_mask(tok: Tokenizer, texts: list[list[int]], runs: int) -> dict:
    """(a): per-token allowed() + advance() over each id list (valid JSON for
    SCHEMA), from the start state each time; and llguidance's part alone."""
    stop = {tok.eos_id}
    step, alone, first = [], [], []
    for _ in range(runs):
        for ids in texts:
            c = build_constraint({"json_schema": SCHEMA}, tok, stop)  # the cached compiled schema, a fresh state
            for k, t in enumerate(ids):
                t0 = time.perf_counter()
                allowed = c.allowed(tok.vocab_size)
                c.advance(t)
                dt = time.perf_counter() - t0
                (first if k == 0 else step).append(dt)
                assert allowed[t], f"token {t} of a text was masked: the text does not fit the schema"
            m = build_constraint({"json_schema": SCHEMA}, tok, stop)._matcher
            for k, t in enumerate(ids):
                t0 = time.perf_counter()
                m.compute_bitmask()
                m.consume_token(t)
                if k:
                    alone.append(time.perf_counter() - t0)
    return {"tokens": sum(map(len, texts)), "step": statistics.median(step), "p90": _p90(step),
            "mean": statistics.fmean(step), "first": statistics.median(first), "llguidance": statistics.median(alone)}


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def measure_decode(tok: Tokenizer, preset: str, min_steps: int) -> dict:
    """(b): decode-step times of a random model, unconstrained and guided (taking turns);
    also the guided outputs (token ids without the stop token) for (a)."""
    cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    engine = Engine(Transformer(cfg), tok, device="cpu")
    prompt = engine.encode(PROMPT)

    def request(guided: dict | None, seed: int) -> tuple[list[float], list[int] | None]:
        # Unconstrained: ignore_eos and a fixed length. Guided: until the JSON
        # is complete (the schema bounds every string and array).
        params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=64 if guided is None else 400,
                                guided=guided, ignore_eos=guided is None)
        engine.add_request(prompt, params)
        times, c = [], None
        while engine.has_unfinished():
            t0 = time.perf_counter()
            outs = engine.step()
            times.append(time.perf_counter() - t0)
            c = next((o.completion for o in outs if o.completion is not None), c)
        if guided is None:
            return times[1:], None  # the first step is the prefill
        assert c.finish_reason == "stop", c.text
        json.loads(c.text)
        return times[1:], [t for t in c.token_ids if t not in engine.stop_token_ids]

    request(None, 0)  # warm-up: allocates the KV pool
    # Taking turns, a plain request and a guided one, so a change in the
    # machine's load is charged to both.
    plain, guided, outputs, seed = [], [], [], 0
    while len(plain) < min_steps or len(guided) < min_steps:
        plain += request(None, seed)[0]
        times, ids = request({"json_schema": SCHEMA}, seed)
        guided += times
        outputs.append(ids)
        seed += 1
    params = sum(p.numel() for p in engine.model.parameters())
    return {"params": params, "plain": statistics.median(plain), "guided": statistics.median(guided),
            "plain_n": len(plain), "guided_n": len(guided), "outputs": outputs}


def report(args, preset: str, rows: list[dict]) -> str:
    mask = markdown_table(
        ["tokenizer", "vocab", "JSON", "tokens", "mask + advance, µs: median", "p90", "mean",
         "llguidance alone, µs", "first mask, µs"],
        [[r["name"], f"{r['vocab']:,}", what, a["tokens"], us(a["step"]), us(a["p90"]), us(a["mean"]),
          us(a["llguidance"]), us(a["first"])]
         for r in rows for what, a in (("the book document", r["doc"]), ("the model's outputs", r["gen"]))],
        align="lrlrrrrrr")
    step = markdown_table(
        ["tokenizer", "model parameters", "decode step, µs", "guided decode step, µs", "mask + advance / step"],
        [[r["name"], f"{r['decode']['params'] / 1e6:.1f}M", us(r["decode"]["plain"]), us(r["decode"]["guided"]),
          f"{r['gen']['step'] / r['decode']['plain']:.1%}"] for r in rows])
    once = markdown_table(
        ["tokenizer", "LLTokenizer build, ms", "schema compile, ms"],
        [[r["name"], f"{r['once']['build_tokenizer'] * 1e3:.0f}", f"{r['once']['compile'] * 1e3:.1f}"] for r in rows])
    note = f"\n_Note: {args.note}_\n" if args.note else ""
    return f"""## Structured outputs: the token mask against the forward pass

`{command_line()}` on {today()}
Machine: {machine_description(("llguidance",))}
{note}
Constrained decoding (`acorn/infer/structured.py`, llguidance underneath)
computes a mask over the vocabulary before every token. Mask + advance: JSON
fed token by token through a constraint for a book-record schema (strings,
integers, a number, a boolean, an enum, an array, a nested object), from
the start state each time, median (and 90th percentile, mean) over all
tokens but the first of {args.runs} run(s). Two kinds of JSON: one fixed
{len(json.dumps(DOCUMENT, separators=(",", ":")))}-character document, and the random model's own guided outputs
from (b) (strings of arbitrary characters, where nearly every token of the
vocabulary must be checked). "llguidance alone": its compute_bitmask +
consume_token, without Acorn's unpacking into a torch mask; "first mask": the
start state's.

{mask}

Decode step: one engine step (paged, batch 1, CPU, float32, {args.threads}
torch thread(s)) of a random "{preset}" model, median over at least
{args.steps} steps, unconstrained and guided by the schema, taking turns (the guided step
adds the mask, advance, and the engine's masking of the logits).

{step}

One-time costs (per tokenizer, then per schema; later requests with the
same schema reuse the compiled start state):

{once}

The mask is computed on the CPU whatever the device of the model, so on a
GPU, where a decode step of a small model takes a few milliseconds or less,
the same microseconds weigh more than here.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 8k tokenizer only, preset micro, 1 run, 32 steps")
    ap.add_argument("--preset", help="model preset for the decode step (default small; micro with --quick)")
    ap.add_argument("--runs", type=int, help="passes over the document (default 5; 1 with --quick)")
    ap.add_argument("--steps", type=int, help="decode steps per measurement, at least (default 128; 32 with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: a batch-1 step of a small model gains little from more, "
                         "and on a shared machine extra threads mostly wait for each other)")
    ap.add_argument("--note", default="", help="a line to add under the machine (e.g. 'machine shared')")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    args.runs = args.runs or (1 if args.quick else 5)
    args.steps = args.steps or (32 if args.quick else 128)
    preset = args.preset or ("micro" if args.quick else "small")
    torch.set_num_threads(args.threads)

    rows = []
    for name, tok in tokenizers(args.quick):
        once = one_time_costs(tok)
        log(f"{name}: decode steps of a random {preset} model")
        b = measure_decode(tok, preset, args.steps)
        log(f"  {us(b['plain'])} µs/step unconstrained, {us(b['guided'])} µs/step guided")
        log(f"{name}: mask + advance")
        doc = measure_mask(tok, [tok.encode(json.dumps(DOCUMENT, separators=(",", ":")))], args.runs)
        gen = measure_mask(tok, b["outputs"], args.runs)
        log(f"  {us(doc['step'])} µs/token over the document, {us(gen['step'])} over the model's outputs")
        rows.append({"name": name, "vocab": tok.vocab_size, "once": once, "decode": b, "doc": doc, "gen": gen})
    section = report(args, preset, rows)
    print(section)
    if not args.no_write:
        log(f"wrote the structured section of {write_section('structured', section)}")


if __name__ == "__main__":
    main()
