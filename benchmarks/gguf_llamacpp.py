"""GGUF export checked against llama.cpp itself: does llama.cpp, reading the file
`acorn export gguf` wrote, tokenize and decode as Acorn does?

For a checkpoint (by default a speedrun's chat model), at each --types:

  1. export it with acorn.model.gguf (the same code as `acorn export gguf`);
  2. load the file with llama-cpp-python (llama.cpp built from source: the
     runtime Ollama and LM Studio embed);
  3. tokenize a few plain prompts (BOS added as Acorn's engine adds it) and chat
     prompts (the rendered template, special tokens parsed) with both;
  4. compare the next-token logits over each prompt (max |difference|);
  5. decode greedily --new-tokens tokens with both (Acorn's engine, ignore_eos)
     and count how many tokens agree before the first difference.

f32 must agree token for token (same weights, float32 on both sides; only the
order of additions differs). f16 and q8_0 round the weights, so a greedy path
may fork at a near-tie; the logit difference shows how far the rounding moves.

llama-cpp-python is not a dependency of Acorn: `pip install llama-cpp-python`
compiles llama.cpp (about 20 minutes on 2 cores).

    python benchmarks/gguf_llamacpp.py --checkpoint runs/speedrun/sft/model
    python benchmarks/gguf_llamacpp.py --checkpoint /tmp/sr-tiny/sft/model --no-write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import CACHE, command_line, log, machine_description, markdown_table, today, write_section  # noqa: E402

from acorn.infer.engine import Engine  # noqa: E402
from acorn.infer.sampling import SamplingParams  # noqa: E402
from acorn.model.gguf import export_gguf  # noqa: E402
from acorn.train.prefs_data import common_prefix  # noqa: E402

PROMPTS = ["The capital of", "Once upon a time, there was", "Q: What is 12 + 30?\nA:",
           "  indented  text,\n\nnumbers 1234567 and punctuation!?"]
QUESTIONS = ["Where does Mira Holloway live?", "What is 1648 + 1805?", "Hello! Who are you?"]


def _default_checkpoint() -> Path | None:
    for c in [Path("runs/speedrun/sft/model"), *sorted(Path("/tmp").glob("fresh*/runs/speedrun/sft/model")),
              Path("/tmp/sr-tiny/sft/model")]:
        if (c / "config.json").is_file():
            return c
    return None


def _greedy_llama_cpp(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: a finished speedrun's chat model)")
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"], choices=["f32", "f16", "q8_0"])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--repack", action="store_true", help="let llama.cpp repack weights for its AMX kernels "
                    "(off: that path crashed on this machine)")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: `pip install llama-cpp-python` (builds llama.cpp, ~20 min on 2 cores)")
    if not args.repack:
        # llama.cpp built with GGML_NATIVE on an AMX CPU repacks q8_0 weights for its AMX kernels
        # ("extra buffer types"); that path segfaulted here on any batch of 2+ tokens (gdb:
        # ggml_backend_amx_mul_mat), in llama.cpp, whatever the file. The plain CPU kernels read
        # the same tensors; llama-cpp-python has no keyword for it, so set the default params.
        import llama_cpp.llama_cpp as llama_c

        defaults = llama_c.llama_model_default_params

        def no_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_c.llama_model_default_params = no_repack
    ckpt = args.checkpoint or _default_checkpoint()
    if ckpt is None:
        sys.exit("no checkpoint given and no finished speedrun found; pass --checkpoint DIR")
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)

    engine = Engine.from_pretrained(ckpt, dtype="float32", device="cpu")
    tok, model = engine.tokenizer, engine.model
    cfg = model.config
    prompts = [(f"text: {p!r}", engine.encode(p), ("text", p)) for p in PROMPTS]
    if tok.chat_template:
        for q in QUESTIONS:
            messages = [{"role": "user", "content": q}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompts.append((f"chat: {q!r}", engine.chat_prompt(messages), ("chat", text)))
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    acorn_out = [engine.generate([ids], params)[0].token_ids for _, ids, _ in prompts]
    with torch.no_grad():
        acorn_logits = [model(torch.tensor([ids])).logits[0].float().numpy() for _, ids, _ in prompts]

    rows, detail, summary = [], [], {}
    out_dir = CACHE / "gguf"
    for type_ in args.types:
        path = out_dir / f"{ckpt.resolve().name}-{type_}.gguf"
        line = export_gguf(ckpt, path, type=type_, overwrite=True)
        log(line)
        llm = llama_cpp.Llama(str(path), n_ctx=cfg.max_seq_len, n_threads=args.threads, n_batch=cfg.max_seq_len,
                              logits_all=True, verbose=False, seed=0)
        same_tokens = same_greedy = 0
        max_diff = 0.0
        for (label, ids, (kind, text)), want, logits in zip(prompts, acorn_out, acorn_logits):
            if kind == "text":
                theirs = llm.tokenize(text.encode(), add_bos=True, special=False)
            else:
                theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
            same_tokens += theirs == ids
            llm.reset()
            llm.eval(ids)
            scores = np.asarray(llm.scores[:len(ids)], dtype=np.float32)[:, :cfg.vocab_size]
            diff = float(np.abs(scores - logits).max())
            max_diff = max(max_diff, diff)
            llm.reset()
            got = _greedy_llama_cpp(llm, ids, args.new_tokens)
            agree = common_prefix(got, want)
            same_greedy += agree == args.new_tokens
            detail.append([type_, label, "yes" if theirs == ids else f"**no** ({len(theirs)} vs {len(ids)})",
                           f"{diff:.2e}", f"{agree}/{args.new_tokens}"])
            if agree < args.new_tokens:
                log(f"  {type_} {label}: differs at token {agree}: acorn {tok.decode(want)!r} | "
                    f"llama.cpp {tok.decode(got)!r}")
        n = len(prompts)
        rows.append([type_, f"{path.stat().st_size / 2**20:.2f} MiB", f"{same_tokens}/{n}", f"{max_diff:.2e}",
                     f"{same_greedy}/{n}"])
        summary[type_] = (same_tokens == n, same_greedy == n)
        del llm

    info = engine.model.config
    body = f"""## GGUF export: llama.cpp against Acorn on the same checkpoint

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description(("gguf", "llama_cpp_python"))}
{args.note}
Checkpoint: `{ckpt}` ({model.num_params():,} parameters: {info.n_layer} layers, d_model {info.d_model},
{info.n_head} heads / {info.n_kv_head} KV heads, vocabulary {info.vocab_size}; tokenizer split pattern -> llama.cpp
pre-tokenizer `{line.split("pre-tokenizer ")[1].split(",")[0]}`). Each type exported by `acorn export gguf`, loaded by
llama-cpp-python {llama_cpp.__version__} (llama.cpp built from source, CPU{"" if args.repack else "; weights not repacked for its AMX kernels, which crashed here: see --repack"}). {len(prompts)} prompts: {len(PROMPTS)}
plain texts (BOS first, as Acorn's engine encodes them) and {len(prompts) - len(PROMPTS)} chat prompts (the rendered
template, special tokens parsed). "Same ids": llama.cpp's tokenizer gives Acorn's ids. "Max logit diff": the largest
|difference| of any next-token logit over every prompt position. "Greedy equal": all {args.new_tokens} greedy tokens
equal (Acorn's engine with ignore_eos against llama.cpp's sampler at temperature 0).

{markdown_table(["type", "file", "same ids", "max logit diff", "greedy equal"], rows)}

<details><summary>per prompt</summary>

{markdown_table(["type", "prompt", "same ids", "max logit diff", "greedy tokens agreeing"], detail, "llrrr")}

</details>

Goal: llama.cpp loads the export and produces Acorn's greedy tokens:
{"met" if summary.get("f32", (False, False)) == (True, True) else "**not met**"} at f32
{"".join(f"; {t}: ids {'same' if s[0] else 'differ'}, greedy {'equal' if s[1] else 'forks'}"
         for t, s in summary.items() if t != "f32")}.
"""
    if args.no_write:
        print(body)
    else:
        write_section("gguf", body)
        print(body)


if __name__ == "__main__":
    main()
