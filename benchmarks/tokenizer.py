"""Tokenizer benchmark: BPE training time, encoding throughput, compression.

Three questions, each answered side by side with the libraries Acorn builds on
or competes with, in one run, as medians of several runs:

a. Training (byte-level BPE, GPT-4 split pattern, 32,768 tokens) on a ~50 MB
   corpus: Acorn's `Tokenizer.train(paths, ...)` end to end (reading the files)
   vs rustbpe alone on the same text already in memory (fed one document at
   a time, and as ~1 MB strings) vs Hugging Face `tokenizers`' BpeTrainer.
   Goal: Acorn within 1.2x of the faster rustbpe.
b. Encoding with GPT-2's vocabulary on ~10 MB of mixed text: Acorn
   `encode` / `encode_batch` vs raw tiktoken (`encode_ordinary` /
   `encode_ordinary_batch` on an Encoding built from the same ranks) vs
   `tokenizers` (vocab.json + merges.txt). Goal: Acorn >= 0.9x raw tiktoken.
   The ids of the three are checked to be equal.
c. Bytes per token of Acorn tokenizers trained on the training split vs GPT-2,
   on held-out text.

    python benchmarks/tokenizer.py            # full: 50 MB corpus, 3 (training) / 5 (encoding) runs
    python benchmarks/tokenizer.py --quick    # ~2 MB, 1 run, to try changes

Writes the `tokenizer` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    CACHE, SHARED_DATA, command_line, log, machine_description, markdown_table, median_times_interleaved, today,
    write_section,
)

from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, Tokenizer  # noqa: E402

MB = 1_000_000
CORPUS_VERSION = 3  # bump when the corpus recipe changes, so the cache is rebuilt
N_PARTS = 10  # the training corpus is written as this many files, as a user's would be
# Documents in the corpus files are separated by two blank lines (runs of
# blank lines inside a document are collapsed to one), so the in-memory
# contenders can get the very same documents back.
DOC_SEP = "\n\n\n"
_BLANKS = re.compile(r"\n{3,}")


# ---------------------------------------------------------------------- corpus
def _real_documents() -> dict[str, list[str]]:
    """Real text from ../shared/data, one string per document, grouped by source."""
    d = SHARED_DATA
    if not d.is_dir():
        sys.exit(f"{d}: shared data not found; the benchmark needs ../shared/data next to the repository")
    out: dict[str, list[str]] = {}
    # Shakespeare as paragraphs (speeches), so documents are of a size like the others.
    shakes = (d / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    out["tinyshakespeare"] = [p.strip("\n") for p in shakes.split("\n\n") if p.strip()]
    for path in sorted((d / "eval").glob("*.jsonl")):
        docs = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    docs.append("\n".join(_strings(json.loads(line))))
        out[f"eval/{path.stem}"] = docs
    pref = d / "preference" / "hh-rlhf-harmless-base-test.jsonl.gz"
    with gzip.open(pref, "rt", encoding="utf-8") as f:
        # Chosen and rejected share every turn but the last; keep the chosen
        # dialogue whole and only the rejected final answer, so the corpus is
        # not half duplicates.
        docs = []
        for line in f:
            if line.strip():
                row = json.loads(line)
                docs.append(row["chosen"].strip())
                docs.append(row["rejected"].rsplit("Assistant:", 1)[-1].strip())
        out["preference/hh-rlhf-harmless-base-test"] = docs
    return out


def _strings(obj) -> list[str]:
    """Every string value of a JSON record (query, choices, context, answer...)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


_WORD = re.compile(r"[A-Za-z]{4,}|\d+")


def _perturb(doc: str, rng: random.Random) -> str:
    """A light deterministic edit: swap two inner letters in ~4% of longer words
    and redraw ~half of the numbers, so repeated text still brings new words
    (a pure repeat would leave the trainer's set of distinct words unchanged,
    making training look cheaper than on 50 MB of real text)."""

    def edit(m: re.Match) -> str:
        w = m.group(0)
        if w.isdigit():
            return "".join(rng.choice("0123456789") for _ in w) if rng.random() < 0.5 else w
        if rng.random() < 0.04:
            i = rng.randrange(1, len(w) - 2)
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        return w

    return _WORD.sub(edit, doc)


def build_corpus(target_mb: float) -> dict:
    """Write the corpus under benchmarks/.cache/ (once) and describe it.

    Every 10th real document is held out for part c; the rest, shuffled, is
    the training text. If the real text is short of the target, the rest is
    Acorn's synthetic world when acorn.data.world exists, else perturbed
    repeats of the real training documents (see _perturb).
    """
    root = CACHE / f"tokenizer-corpus-v{CORPUS_VERSION}-{target_mb:g}mb"
    meta_path = root / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text(encoding="utf-8"))
    log(f"building the {target_mb:g} MB corpus under {root} (once; cached afterwards)")
    root.mkdir(parents=True, exist_ok=True)
    target = int(target_mb * MB)
    rng = random.Random(0)

    train: list[str] = []
    held: dict[str, list[str]] = {}
    composition: dict[str, int] = {}
    for source, docs in _real_documents().items():
        for i, doc in enumerate(docs):
            doc = _BLANKS.sub("\n\n", doc)
            if i % 10 == 0:
                held.setdefault(source, []).append(doc)
            else:
                train.append(doc)
                composition[source] = composition.get(source, 0) + len(doc.encode("utf-8")) + len(DOC_SEP)
    rng.shuffle(train)
    size = sum(composition.values())
    real_bytes = size

    # Cut the real text down if the target is smaller (the --quick corpus).
    if size > target:
        kept, size, composition = [], 0, {"real text (all sources, shuffled)": 0}
        for doc in train:
            if size >= target:
                break
            kept.append(doc)
            size += len(doc.encode("utf-8")) + len(DOC_SEP)
        train, composition = kept, {"real text (all sources, shuffled)": size}

    topup = None
    if size < target:
        topup = _topup_world(root, target - size) or None
        if topup is not None:
            extra, how = topup
        else:
            extra, how = _topup_perturbed(train, target - size), "perturbed repeats of the real training documents"
        extra_bytes = sum(len(x.encode("utf-8")) + len(DOC_SEP) for x in extra)
        composition[f"top-up: {how}"] = extra_bytes
        train = train + extra
        size += extra_bytes

    # Training files: N_PARTS roughly equal .txt files, documents separated by a blank line.
    per_part = -(-len(train) // N_PARTS)
    parts = []
    for k in range(N_PARTS):
        p = root / f"train-{k:02d}.txt"
        p.write_text(DOC_SEP.join(train[k * per_part:(k + 1) * per_part]) + "\n", encoding="utf-8")
        parts.append(p.name)
    (root / "heldout-mixed.txt").write_text(
        DOC_SEP.join(doc for docs in held.values() for doc in docs) + "\n", encoding="utf-8"
    )
    (root / "heldout-shakespeare.txt").write_text(DOC_SEP.join(held["tinyshakespeare"]) + "\n", encoding="utf-8")
    meta = {
        "target_mb": target_mb,
        "train_parts": parts,
        "train_bytes": sum((root / p).stat().st_size for p in parts),
        "real_bytes_available": real_bytes,
        "composition": composition,
        "heldout_bytes": (root / "heldout-mixed.txt").stat().st_size,
        "heldout_shakespeare_bytes": (root / "heldout-shakespeare.txt").stat().st_size,
        "root": str(root),
    }
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def _topup_perturbed(train: list[str], need_bytes: int) -> list[str]:
    """Repeats of the training documents, each pass reshuffled and perturbed with its own seed."""
    extra, got, r = [], 0, 1
    while got < need_bytes:
        rng = random.Random(r)
        order = list(train)
        rng.shuffle(order)
        for doc in order:
            extra.append(_perturb(doc, rng))
            got += len(extra[-1].encode("utf-8")) + len(DOC_SEP)
            if got >= need_bytes:
                break
        r += 1
    return extra


def _topup_world(root: Path, need_bytes: int):
    """Documents from Acorn's synthetic world, if acorn.data.world is there yet."""
    try:
        from acorn.data.world import generate_world
    except ImportError:  # being written alongside this benchmark
        log("acorn.data.world is not available: topping up with perturbed repeats of real text")
        return None
    # The world's pretraining documents (biographies, reasoning, arithmetic);
    # its SFT and eval files repeat the same facts in other shapes.
    docs: list[str] = []
    got = 0
    for seed in range(100):
        d = root / "world" / f"seed{seed}"
        log(f"generating Acorn's synthetic world (size=large, seed={seed}) for the top-up")
        generate_world(d, seed=seed, size="large", tokenizer="gpt2")
        with open(d / "pretrain.jsonl", encoding="utf-8") as f:
            for line in f:
                if got >= need_bytes:
                    break
                if line.strip():
                    docs.append(_BLANKS.sub("\n\n", json.loads(line)["text"]))
                    got += len(docs[-1].encode("utf-8")) + len(DOC_SEP)
        if got >= need_bytes:
            break
    if not docs:
        return None
    return docs, "pretraining documents of Acorn's synthetic world (acorn.data.world, size=large, seed 0 on)"


def _read_docs(paths: list[Path]) -> list[str]:
    return [doc for p in paths for doc in p.read_text(encoding="utf-8").split(DOC_SEP)]


# -------------------------------------------------------------------- training
def bench_training(paths: list[Path], vocab_size: int, runs: int) -> tuple[list[dict], Tokenizer]:
    import rustbpe
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from acorn.chat.formats import FORMATS

    specials = list(FORMATS["acorn"].special_tokens)
    docs = _read_docs(paths)  # for the in-memory contenders, read before timing
    n_bytes = sum(p.stat().st_size for p in paths)
    rows = []
    result: dict = {}

    def acorn_train():
        result["tok"] = Tokenizer.train(paths, vocab_size)

    # What a careful user does by hand: text from memory, the same vocabulary
    # minus the special tokens Acorn reserves, the same pattern; fed either
    # one document at a time (the obvious way) or as ~1 MB strings of joined
    # documents (fewer Python strings for rustbpe to pull across the GIL).
    pieces, cur, cur_len = [], [], 0
    for doc in docs:
        cur.append(doc)
        cur_len += len(doc)
        if cur_len >= 1 << 20:
            pieces.append(DOC_SEP.join(cur))
            cur, cur_len = [], 0
    if cur:
        pieces.append(DOC_SEP.join(cur))

    def rustbpe_train(texts: list[str]):
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(texts), vocab_size - len(specials), pattern=GPT4_PATTERN)
        result["rustbpe_ranks"] = len(bpe.get_mergeable_ranks())

    def hf_train():
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(docs, trainer, length=len(docs))
        result["hf_vocab"] = tok.get_vocab_size()

    contenders = [
        ("Acorn `Tokenizer.train(paths, V)` (reads the files)", acorn_train),
        (f"rustbpe alone, in memory, one document at a time ({len(docs):,})", lambda: rustbpe_train(docs)),
        (f"rustbpe alone, in memory, documents joined into ~1 MB strings ({len(pieces)})",
         lambda: rustbpe_train(pieces)),
        ("HF `tokenizers` BpeTrainer (ByteLevel + GPT-4 Split, in memory)", hf_train),
    ]
    log(f"training on {n_bytes / MB:.1f} MB, {runs} runs, contenders taking turns")
    for name, (med, times) in median_times_interleaved(contenders, runs).items():
        rows.append({"name": name, "median_s": med, "times": times, "mb_per_s": n_bytes / MB / med})
    tok = result["tok"]
    log(f"  vocab sizes: acorn {tok.vocab_size}, rustbpe {result['rustbpe_ranks']} + {len(specials)} specials, "
        f"HF {result['hf_vocab']}")
    return rows, tok


# -------------------------------------------------------------------- encoding
def load_gpt2() -> tuple[Tokenizer, str]:
    """Acorn's built-in GPT-2 tokenizer, and how it was obtained."""
    try:
        return Tokenizer.from_pretrained("gpt2"), 'Tokenizer.from_pretrained("gpt2")'
    except ImportError:
        # acorn.tokenizer.files not there yet: the same object built by hand
        # from the shared ranks (the encode path measured is the same).
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(SHARED_DATA / "tokenizers" / "gpt2" / "gpt2.tiktoken"))
        tok = Tokenizer(ranks, {"<|endoftext|>": 50256}, GPT2_PATTERN, name="gpt2",
                        bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        return tok, "Tokenizer(ranks from shared gpt2.tiktoken) — from_pretrained('gpt2') was not available"


def bench_encoding(docs: list[str], runs: int) -> tuple[list[dict], str, int]:
    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    gpt2, how = load_gpt2()
    if gpt2.mergeable_ranks is not None:
        ranks = gpt2.mergeable_ranks
    else:
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(SHARED_DATA / "tokenizers" / "gpt2" / "gpt2.tiktoken"))
    raw = tiktoken.Encoding("gpt2-raw", pat_str=gpt2.pattern, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    gdir = SHARED_DATA / "tokenizers" / "gpt2"
    hf = HFTokenizer(models.BPE.from_file(str(gdir / "vocab.json"), str(gdir / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()

    text = DOC_SEP.join(docs)
    n_bytes = len(text.encode("utf-8"))
    log(f"encoding: {n_bytes / MB:.1f} MB in {len(docs):,} documents; checking ids agree")
    single = gpt2.encode(text)
    assert single == raw.encode_ordinary(text), "Acorn and tiktoken disagree on the single-call ids"
    acorn_b = gpt2.encode_batch(docs)
    assert acorn_b == raw.encode_ordinary_batch(docs), "Acorn and tiktoken disagree on batch ids"
    hf_b = [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    bad = [i for i, (a, b) in enumerate(zip(acorn_b, hf_b)) if a != b]
    assert not bad, f"HF tokenizers disagrees with tiktoken on {len(bad)} documents, first {docs[bad[0]][:200]!r}"
    n_tokens = len(single)

    contenders = [
        ("Acorn `encode(text)`", "single call", lambda: gpt2.encode(text)),
        ("tiktoken `encode_ordinary(text)`", "single call", lambda: raw.encode_ordinary(text)),
        ("Acorn `encode_batch(docs)`", "batch", lambda: gpt2.encode_batch(docs)),
        ("tiktoken `encode_ordinary_batch(docs)`", "batch", lambda: raw.encode_ordinary_batch(docs)),
        ("HF `tokenizers` `encode_batch(docs)` (+ `.ids`)", "batch",
         lambda: [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]),
    ]
    kinds = {name: kind for name, kind, _ in contenders}
    timed = median_times_interleaved([(name, fn) for name, _, fn in contenders], runs, warmup=1)
    rows = [{"name": name, "kind": kinds[name], "median_s": med, "times": times, "mb_per_s": n_bytes / MB / med}
            for name, (med, times) in timed.items()]
    return rows, how, n_tokens


# ---------------------------------------------------------------- compression
def bench_compression(paths: list[Path], tok32k: Tokenizer, vocab_small: int, heldout: list[Path]) -> list[dict]:
    from acorn.tokenizer.counting import compare_bytes_per_token

    log(f"compression: training a {vocab_small}-token tokenizer on the same training files")
    small = Tokenizer.train(paths, vocab_small)
    gpt2, _ = load_gpt2()
    toks = {f"Acorn, trained here, {tok32k.vocab_size:,}": tok32k, f"Acorn, trained here, {small.vocab_size:,}": small,
            f"GPT-2, {gpt2.vocab_size:,}": gpt2}
    per_file = {p.name: compare_bytes_per_token(toks, [p]) for p in heldout}
    return [
        {"name": name, "bpt": {f: rows[i]["bytes_per_token"] for f, rows in per_file.items()},
         "tokens": {f: rows[i]["tokens"] for f, rows in per_file.items()}}
        for i, name in enumerate(toks)
    ]


# --------------------------------------------------------------------- report
def report(args, meta, train_rows, vocab, enc_rows, enc_how, enc_bytes, enc_docs, enc_tokens, comp_rows) -> str:
    # Ratios are medians of per-run ratios: the contenders of one run ran
    # back to back, so pairing them cancels most of the drift in load.
    def paired(row: dict, ref: dict) -> float:
        return statistics.median(a / b for a, b in zip(row["times"], ref["times"]))

    # The goal is stated against rustbpe at its best, so the faster feeding.
    rust = min(train_rows[1:3], key=lambda r: r["median_s"])
    train_table = markdown_table(
        ["implementation", "median s", "MB/s", "time vs fastest rustbpe", "runs (s)"],
        [[r["name"], f"{r['median_s']:.2f}", f"{r['mb_per_s']:.2f}", f"{paired(r, rust):.2f}x",
          ", ".join(f"{t:.2f}" for t in r["times"])] for r in train_rows],
    )
    acorn_vs_rust = paired(train_rows[0], rust)
    raw = {r["kind"]: r for r in enc_rows if r["name"].startswith("tiktoken")}
    enc_table = markdown_table(
        ["implementation", "call", "median s", "MB/s", "speed vs raw tiktoken", "runs (s)"],
        [[r["name"], r["kind"], f"{r['median_s']:.3f}", f"{r['mb_per_s']:.1f}", f"{1 / paired(r, raw[r['kind']]):.2f}x",
          ", ".join(f"{t:.2f}" for t in r["times"])] for r in enc_rows],
    )
    acorn_enc = [1 / paired(r, raw[r["kind"]]) for r in enc_rows if r["name"].startswith("Acorn")]
    files = list(comp_rows[0]["bpt"])
    comp_table = markdown_table(
        ["tokenizer", *[f"bytes/token on {f}" for f in files]],
        [[r["name"], *[f"{r['bpt'][f]:.3f}" for f in files]] for r in comp_rows],
    )
    comp = "\n".join(f"- {k}: {v / MB:.1f} MB" for k, v in meta["composition"].items())
    goal = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return f"""## Tokenizer

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description(("tiktoken", "rustbpe", "tokenizers"))}
{f"Note: {args.note}" if args.note else ""}

Corpus ({meta['train_bytes'] / MB:.1f} MB of training text in {len(meta['train_parts'])} files, built
deterministically by the script under `benchmarks/.cache/`; every 10th real document is held out):
{comp}

### a. Training: byte-level BPE, GPT-4 split pattern, vocabulary {vocab:,}

{train_table}

Medians of {len(train_rows[0]['times'])} runs. Within each run the contenders take turns, so load that comes and
goes on the machine falls on all of them alike; the ratio columns are medians of the per-run ratios.

Goal Acorn <= 1.2x rustbpe alone: {goal(acorn_vs_rust <= 1.2)} ({acorn_vs_rust:.2f}x the faster rustbpe row). Acorn's
time includes reading and decoding the files (it hands rustbpe ~1 MB pieces cut at safe newlines); rustbpe
and `tokenizers` get the same documents already in memory (`tokenizers` one document at a time, with
`length` given). All end at {vocab:,} tokens (rustbpe is asked for
{vocab:,} minus the 11 special tokens Acorn and `tokenizers` reserve inside that size).

### b. Encoding: GPT-2 vocabulary, {enc_bytes / MB:.1f} MB of mixed text ({enc_tokens:,} tokens)

{enc_table}

Goal Acorn >= 0.9x raw tiktoken: {goal(min(acorn_enc) >= 0.9)} (worst {min(acorn_enc):.2f}x). Ids were checked
equal across Acorn, tiktoken and `tokenizers` on every document before timing. The text is the first
{enc_bytes / MB:.0f} MB of the training files ({enc_docs:,} documents; the real text comes first). "single call" encodes
it as one string; "batch" encodes the list of documents (tiktoken: 8 threads; `tokenizers`: its own
thread pool). Acorn's GPT-2: {enc_how}. Medians of {len(enc_rows[0]['times'])} runs after one warm-up call.

### c. Compression: bytes per token on held-out text (higher is better)

{comp_table}

`heldout-mixed.txt` ({meta['heldout_bytes'] / MB:.2f} MB) is every 10th document of each real source;
`heldout-shakespeare.txt` ({meta['heldout_shakespeare_bytes'] / MB:.2f} MB) is its tinyshakespeare part. Neither
was seen in training.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~2 MB corpus, 1 MB to encode, 1 run: to try changes")
    ap.add_argument("--corpus-mb", type=float, help="training corpus size (default 50; 2 with --quick)")
    ap.add_argument("--encode-mb", type=float, help="text to encode in part b (default 10; 1 with --quick)")
    ap.add_argument("--runs", type=int, help="runs per measurement, median reported (default 3; 1 with --quick)")
    ap.add_argument("--encode-runs", type=int, help="runs per encoding measurement (default 5; 1 with --quick)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--small-vocab-size", type=int, default=8192, help="second tokenizer for part c")
    ap.add_argument("--note", default="", help="a line to add under the machine (e.g. 'machine shared with other jobs')")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    corpus_mb = args.corpus_mb or (2 if args.quick else 50)
    encode_mb = args.encode_mb or (1 if args.quick else 10)
    runs = args.runs or (1 if args.quick else 3)
    # Encoding runs take seconds, training runs take much longer: afford more of the former.
    encode_runs = args.encode_runs or (1 if args.quick else 5)

    meta = build_corpus(corpus_mb)
    root = Path(meta["root"])
    paths = [root / p for p in meta["train_parts"]]
    log(f"corpus: {meta['train_bytes'] / MB:.1f} MB in {len(paths)} files; {json.dumps(meta['composition'])}")

    train_rows, tok = bench_training(paths, args.vocab_size, runs)

    # Part b's mixed text: the first documents of the (shuffled) training files.
    docs, size = [], 0
    for doc in _read_docs(paths):
        if size >= encode_mb * MB:
            break
        docs.append(doc)
        size += len(doc.encode("utf-8")) + len(DOC_SEP)
    enc_rows, enc_how, n_tokens = bench_encoding(docs, encode_runs)
    enc_bytes = len(DOC_SEP.join(docs).encode("utf-8"))

    comp_rows = bench_compression(paths, tok, args.small_vocab_size,
                                  [root / "heldout-mixed.txt", root / "heldout-shakespeare.txt"])

    section = report(args, meta, train_rows, args.vocab_size, enc_rows, enc_how, enc_bytes, len(docs), n_tokens,
                     comp_rows)
    print(section)
    if not args.no_write:
        log(f"wrote the tokenizer section of {write_section('tokenizer', section)}")


if __name__ == "__main__":
    main()
