"""The `acorn` command: one subcommand per stage of the pipeline.

Thin on purpose: it parses arguments, calls one function per stage, and turns
an AcornError into one line on stderr with exit status 2, as it does an OSError
(permission denied, disk full), naming the file. Modules are imported inside
the handlers so `acorn --help` stays fast; a config-driven command (pretrain,
sft) imports its config class only to print its settings in --help.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from acorn.errors import AcornError, NotUTF8


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: the problem, then where help is.

    settings: "module:Class" of a config dataclass whose `--section.key` settings
    (acorn.config.describe) the help lists before the example."""

    def __init__(self, *args, settings: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings

    def error(self, message: str):
        self.exit(2, f"acorn: error: {message}; see `{self.prog} --help`\n")

    def format_help(self) -> str:
        if not self.settings:
            return super().format_help()
        import importlib

        from acorn.config import describe

        module, _, name = self.settings.partition(":")
        example, self.epilog = self.epilog, describe(getattr(importlib.import_module(module), name)) + "\n\n" + self.epilog
        try:
            return super().format_help()
        finally:
            self.epilog = example


def _training_flags(s: argparse.ArgumentParser, func) -> None:
    """A config-driven trainer's --config and --resume; its --section.key overrides pass through to func."""
    s.add_argument("--config", help="YAML file with the run's settings")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.set_defaults(func=func, accepts_overrides=True)


def _parser(sub, name: str, help: str, example: str, description: str | None = None,
            settings: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        settings=settings,
    )


# Argument types that refuse nonsense at parse time, with the flag's name (argparse adds it).
def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {f'{low} to {high}' if high is not None else f'>= {low}'}, "
                                             f"not {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in its own messages
    return parse


def _fraction(low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 < value < 1 if low_open else 0 <= value < 1):
            raise argparse.ArgumentTypeError(f"must be in {'(0' if low_open else '[0'}, 1), not {text}")
        return value

    parse.__name__ = "fraction"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


def _images_arg(text: str) -> int | str:
    return text if text == "default" else non_negative_int(text)


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)
port = _int_at_least(1, 65535)
MAX_SAMPLES = 64  # generate -n and --num-beams: all of them decode as one batch, and the output is read by a person


# ------------------------------------------------------------------ handlers
def cmd_data_world(args) -> None:
    from acorn.data.world import generate_world

    generate_world(args.out, seed=args.seed, size=args.size, tokenizer=args.tokenizer, overwrite=args.overwrite,
                   rag_sft=args.rag_sft, reading_docs=args.reading_docs, tool_sft=args.tool_sft,
                   mixed_qa=args.mixed_qa, critique_sft=args.critique_sft, icl_docs=args.icl_docs,
                   images=args.images, mixed_qa_format=args.mixed_qa_format, fact_answers=args.fact_answers,
                   icl_style=args.icl_style)


def cmd_data_prepare(args) -> None:
    from acorn.data.prepare import prepare

    prepare(args.inputs, args.tokenizer, args.out, text_field=args.text_field, val_fraction=args.val_fraction,
            shard_tokens=args.shard_tokens, workers=args.workers, seed=args.seed, overwrite=args.overwrite,
            errors=args.errors)


def cmd_tokenizer_train(args) -> None:
    import time

    from acorn.fileio import check_new_output
    from acorn.tokenizer.bpe import Tokenizer

    files = _expand_inputs(args.inputs)
    check_new_output(args.out, args.overwrite)  # before the training, not after it
    t0 = time.perf_counter()
    tok = Tokenizer.train(
        files, args.vocab_size, pattern=args.pattern, chat_format=args.chat_format,
        special_tokens=args.special or None, text_field=args.text_field, errors=args.errors,
    )
    dt = time.perf_counter() - t0
    out = tok.save(args.out)
    print(f"trained {tok.vocab_size} tokens ({len(tok.special_tokens)} special) in {dt:.1f}s -> {out}")


def cmd_tokenizer_encode(args) -> None:
    tok = _load_tokenizer(args.tokenizer)
    text = _text_arg(args)
    ids = tok.encode(text, allowed_special="all" if args.allow_special else ())
    if args.show:
        for i in ids:
            print(f"{i}\t{tok.token_bytes(i)!r}")
    else:
        print(" ".join(map(str, ids)))


def cmd_tokenizer_decode(args) -> None:
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise AcornError("ids must be integers separated by spaces or commas, e.g. `acorn tokenizer decode TOK 15496 995`") from None
    tok = _load_tokenizer(args.tokenizer)
    sys.stdout.write(tok.decode(ids))
    sys.stdout.write("\n")


def cmd_tokenizer_info(args) -> None:
    from acorn.tokenizer.counting import describe

    print(describe(_load_tokenizer(args.tokenizer)))


def cmd_tokenizer_eval(args) -> None:
    from acorn.tokenizer.counting import compare_bytes_per_token, format_table

    names = [args.tokenizer, *args.compare]
    toks = [_load_tokenizer(n) for n in names]
    rows = compare_bytes_per_token(dict(zip(names, toks)), _expand_inputs(args.inputs), errors=args.errors,
                                   text_field=args.text_field)
    print(format_table(rows))


def cmd_tokens_count(args) -> None:
    from acorn.tokenizer.counting import count_tokens

    tok = _load_tokenizer(args.tokenizer)
    total = 0
    for path in _expand_inputs(args.files):
        n = count_tokens(tok, path, errors=args.errors, text_field=args.text_field)
        total += n
        print(f"{n:>12,}  {path}")
    line = f"{total:>12,}  total ({tok.name}, vocab {tok.vocab_size})"
    if args.price_per_million is not None:
        line += f"; cost at ${args.price_per_million:g} per million tokens: ${total * args.price_per_million / 1e6:,.4f}"
    print(line)


def cmd_model_info(args) -> None:
    from acorn.model.checkpoint import model_info

    print(model_info(args.path))


def cmd_quantize(args) -> None:
    from acorn.model.checkpoint import quantize_checkpoint

    print(quantize_checkpoint(args.checkpoint, args.method, args.out, group_size=args.group_size,
                              skip=() if args.quantize_head else ("lm_head",), overwrite=args.overwrite))


def cmd_lora_merge(args) -> None:
    from acorn.model.lora import merge_checkpoint

    print(merge_checkpoint(args.base, args.adapter, args.out, overwrite=args.overwrite))


def cmd_export_gguf(args) -> None:
    from acorn.model.gguf import export_gguf

    print(export_gguf(args.checkpoint, args.out, type=args.type, overwrite=args.overwrite))


def cmd_pretrain(args) -> None:
    from acorn.config import load
    from acorn.train.pretrain import PretrainConfig, pretrain

    pretrain(load(PretrainConfig, args.config, args.overrides), resume=args.resume)


def cmd_sft(args) -> None:
    from acorn.config import load
    from acorn.train.sft import SFTConfig, sft

    sft(load(SFTConfig, args.config, args.overrides), resume=args.resume)


def cmd_dpo(args) -> None:
    from acorn.config import load
    from acorn.train.prefs import PrefsConfig, prefs

    prefs(load(PrefsConfig, args.config, args.overrides), resume=args.resume)


def cmd_reward_train(args) -> None:
    from acorn.config import load
    from acorn.train.reward import RewardConfig, reward_train

    reward_train(load(RewardConfig, args.config, args.overrides), resume=args.resume)


def cmd_reward_score(args) -> None:
    from acorn.train.reward import score_file

    r = score_file(args.model, args.data, out=args.out, batch_size=args.batch_size, tokenizer=args.tokenizer)
    if args.out is None:
        for row in r["rows_out"]:
            if "score" in row:
                print(f"{row['score']:.4f}")
            else:
                print(f"{row['score_chosen']:.4f}\t{row['score_rejected']:.4f}")
    summary = f"{r['rows']} rows scored, mean score {r['mean_score']:.4f}"
    if r["pairs"]:
        summary += f"; {r['pairs']} pairs, chosen scored higher in {r['accuracy']:.1%}"
    print(summary + (f"; scores -> {args.out}" if args.out else ""), file=sys.stderr)


def _rl_commands(stages) -> None:
    """`acorn grpo` and `acorn ppo`: RL from rewards (acorn.train.rl), set up like `acorn sft`."""

    def run(args) -> None:
        from acorn.config import load
        from acorn.train import rl

        cls, train = (rl.GRPOConfig, rl.grpo) if args.stage == "grpo" else (rl.PPOConfig, rl.ppo)
        cfg = load(cls, args.config, args.overrides)
        if args.reward:
            cfg.rewards = args.reward
        if args.skip_reward_errors:
            cfg.skip_reward_errors = True
        train(cfg, resume=args.resume)

    common = ("Settings as for `acorn sft`: --config FILE and --section.key VALUE overrides (data, eval_data, out,\n"
              "init_from, rewards, reward_weights, rollout, optim, train, eval, lora). Data: prompt-only JSONL, TRL's\n"
              "`prompt` column as text or as chat messages; other columns reach the reward functions\n"
              "(runs/world/rl_arithmetic.jsonl carries `answer`). Rollouts: --rollout.prompts P --rollout.n N\n"
              "--rollout.max_new_tokens T --rollout.temperature 1 --rollout.epochs E --rollout.minibatches M.\n"
              "Rewards: arithmetic (exact match with `answer`), json (valid, and fits the row's `schema`),\n"
              "format (the reply matches the row's `format` regex, else a bare integer), model=DIR (a reward model:\n"
              "`acorn reward train`'s RUN/model scores prompt + reply), or module:function\n"
              "(TRL's signature: fn(prompts, completions, completion_ids, **columns) -> list of floats).\n"
              "LoRA (--lora.r 16): the reference model is the base with the adapters switched off.\n"
              "Writes metrics.jsonl, rl.png, report.md and the model (or adapter) like the other stages.")
    for name, help, example, own in [
        ("grpo", "GRPO with verifiable rewards: n samples per prompt, group-normalised advantages, clipped ratio",
         "acorn grpo --init_from runs/speedrun/sft/model --data runs/world/rl_arithmetic.jsonl --reward arithmetic "
         "--out runs/grpo",
         "GRPO (Shao et al. 2024): --grpo.loss_type dapo|grpo|dr_grpo, --grpo.scale_rewards true|false,\n"
         "--grpo.epsilon 0.2 (none: no clipping), --grpo.epsilon_high 0.28 (DAPO), --grpo.beta 0.04 (k3 KL to the\n"
         "reference). scale_rewards false, epsilon none and beta 0 with one epoch is nanochat's REINFORCE."),
        ("ppo", "PPO with a value head, a KL penalty to the reference and GAE, against a reward function",
         "acorn ppo --init_from runs/speedrun/sft/model --data runs/world/rl_arithmetic.jsonl --reward arithmetic "
         "--out runs/ppo",
         "PPO (Ouyang et al. 2022, Stiennon et al. 2020): --ppo.kl_coef 0.05, --ppo.kl_estimator k1|k3,\n"
         "--ppo.kl_target 6 (adaptive coefficient), --ppo.gamma 1 --ppo.lam 0.95, --ppo.epsilon 0.2,\n"
         "--ppo.value_epsilon 0.2, --ppo.vf_coef 0.1, --ppo.whiten_rewards true. A learned reward model plugs\n"
         "in as a reward function (--reward model=RUN/model of `acorn reward train`)."),
    ]:
        s = _parser(stages, name, help, example, description=f"{help}.\n\n{own}\n\n{common}",
                    settings=f"acorn.train.rl:{'GRPOConfig' if name == 'grpo' else 'PPOConfig'}")
        _training_flags(s, run)
        s.add_argument("--reward", action="append", metavar="SPEC", help="a reward function: arithmetic, json, "
                       "format or module:function (repeatable: the rewards add up, weighted by --reward_weights)")
        s.add_argument("--skip-reward-errors", action="store_true", help="a reward function that raises leaves "
                       "that prompt untrained instead of stopping the run (the error names the prompt)")


def cmd_speedrun(args) -> None:
    from acorn.speedrun import speedrun

    stages = [n for n in args.stages.split(",") if n] if args.stages is not None else None
    recipe = {k: v for k, v in (("mixed_qa", args.mixed_qa), ("mixed_qa_format", args.mixed_qa_format),
                                ("compile", args.compile), ("sft_replay", args.sft_replay),
                                ("fact_answers", args.fact_answers), ("tool_sft", args.tool_sft),
                                ("pretrain_minutes", args.pretrain_minutes), ("sft_minutes", args.sft_minutes),
                                ("icl_phase", args.icl_phase), ("icl_world_share", args.icl_world_share),
                                ("world_icl_docs", args.world_icl_docs),
                                ("world_icl_style", args.world_icl_style)) if v is not None}
    if args.estimate:
        from acorn.speedrun import estimate, format_estimate

        print(format_estimate(estimate(args.preset, args.vocab_size, **recipe)))
        return
    speedrun(args.out, preset=args.preset, seed=args.seed, size=args.size, vocab_size=args.vocab_size, stages=stages,
             **recipe)


def cmd_eval(args) -> None:
    if args.checkpoint == "contamination":
        return _eval_contamination(args)
    if args.checkpoint == "injection":
        return _eval_injection(args)
    if args.corpus or args.results:
        raise AcornError("--corpus and --results belong to `acorn eval contamination`; to check a run's tasks "
                         "while evaluating, pass --decontaminate CORPUS")
    if args.checkpoint == "compare":
        from acorn.eval.results import compare

        if len(args.dirs) < 1:
            raise AcornError("give the result directories to compare: acorn eval compare DIR_A DIR_B ...")
        print(compare(args.dirs, chart=args.chart))
        if args.chart:
            print(f"chart: {args.chart}", file=sys.stderr)
        return
    if args.dirs:
        raise AcornError(f"unexpected arguments {' '.join(args.dirs)}; one checkpoint per run (compare runs with "
                         "`acorn eval compare DIR_A DIR_B`)")
    from acorn.eval.harness import current_processes, evaluate
    from acorn.eval.results import bar_chart, save, table

    add_bos = {"auto": None, "true": True, "false": False}[args.add_bos]
    out = evaluate(args.checkpoint, [t for t in args.tasks.split(",") if t], num_fewshot=args.num_fewshot,
                   limit=args.limit, data_dir=args.data_dir, add_bos=add_bos, batch_tokens=args.batch_tokens,
                   decontaminate=args.decontaminate, ngram=args.ngram, tokenizer=args.tokenizer)
    if current_processes()[0] != 0:  # under torchrun every process holds the gathered results; one reports them
        return
    print(table({args.checkpoint: out["results"]}))
    if "contamination" in out:
        from acorn.eval.contamination import table as contamination_table

        print("\n" + contamination_table(out["contamination"]))
    if args.out:
        d = save(out, args.out)
        bar_chart({args.checkpoint: out["results"]}, d / "results.png")
        print(f"wrote {d}/results.json, results.md, results.png and samples_TASK.jsonl", file=sys.stderr)


def _eval_injection(args) -> None:
    """`acorn eval injection CKPT --data-dir WORLD`: the prompt-injection attack suite."""
    from acorn.eval.injection import evaluate_injection, format_result, parse_attacks, save

    if len(args.dirs) != 1:
        raise AcornError("give one checkpoint: acorn eval injection CKPT --data-dir WORLD")
    r = evaluate_injection(args.dirs[0], args.data_dir, layout=args.layout, spotlight=args.spotlight,
                           limit=args.limit, attacks=parse_attacks(args.attacks))
    print(format_result(args.dirs[0], r))
    if args.out:
        print(f"wrote {save(r, args.out)}/injection.json and samples_injection.jsonl", file=sys.stderr)


def _add_eval_injection_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--layout", default="user", choices=["user", "tool"], help="the passages in the user turn, or in "
                   "a tool-role message apart from the question (role separation, against prompt injection) "
                   "(default: user)")
    s.add_argument("--spotlight", default="off", choices=["off", "delimit", "datamark"], help="mark the passages "
                   "as data (spotlighting, against prompt injection): << >> around each, or ^ between its words "
                   "(default: off)")
    s.add_argument("--attacks", help="the attacks to plant, separated by commas, or all: naive, ignore, completion, "
                   "escape (say a word), tool_email, tool_calculator (call a declared tool), leak (repeat the system "
                   "prompt's secret) (default: the four say-a-word attacks, the suite earlier runs reported)")


def _eval_contamination(args) -> None:
    """`acorn eval contamination`: the check alone, and with --results a
    finished run's scores split into clean and contaminated documents."""
    import json

    from acorn.eval import contamination
    from acorn.eval.tasks import get_task
    from acorn.fileio import write_json, write_text

    if args.dirs or args.decontaminate:
        raise AcornError("acorn eval contamination takes --tasks and --corpus (and --results DIR of a run), "
                         "no checkpoint or --decontaminate")
    if not args.corpus:
        raise AcornError("give the training corpus: --corpus DIR_OF_TOKEN_SHARDS or text/jsonl files")
    tasks = [get_task(t) for t in args.tasks.split(",") if t]
    report = contamination.check(tasks, args.corpus, n=args.ngram, limit=args.limit, data_dir=args.data_dir,
                                 tokenizer=args.tokenizer, text_field=args.text_field)
    if args.results:
        for task in tasks:
            path = Path(args.results) / f"samples_{task.task}.jsonl"
            if not path.is_file():
                raise AcornError(f"{path}: missing; --results takes a directory written by "
                                 f"`acorn eval CKPT --tasks {task.task} --out DIR`")
            samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            r = report["tasks"][task.task]
            if len(samples) != r["documents"]:
                raise AcornError(f"{path}: the run scored {len(samples)} documents of {task.task}, the check "
                                 f"{r['documents']}; pass the run's --limit")
            r["scores"] = contamination.split_scores(task, samples, r["contaminated_ids"])
    text = contamination.table(report)
    print(text)
    for name, r in report["tasks"].items():
        if r["contaminated"]:
            shown = ", ".join(map(str, r["contaminated_ids"][:20])) + (" ..." if r["contaminated"] > 20 else "")
            print(f"{name}: contaminated documents {shown}", file=sys.stderr)
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "contamination.json", report)
        write_text(d / "contamination.md", text + "\n")
        print(f"wrote {d}/contamination.json and contamination.md", file=sys.stderr)


def cmd_generate(args) -> None:
    prompt = args.prompt if args.prompt is not None else args.prompt_text
    if prompt is None:
        raise AcornError("give the text to continue: acorn generate CHECKPOINT --prompt \"Once upon a time\"")
    params = _sampling(args)  # bad settings fail before the model loads
    engine = _engine(args)
    if params.n == 1 and params.num_beams == 1 and params.logprobs is None:
        for delta in engine.stream(prompt, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    completions = engine.generate(prompt, params)
    for c in completions:
        if len(completions) > 1:
            score = f", score {c.score:.3f}" if c.score is not None else ""
            print(f"--- sample {c.index + 1} ({c.finish_reason}{score})")
        print(c.text)
        if c.logprobs is not None:
            tok = engine.tokenizer
            for entry in c.logprobs:
                alts = "  ".join(f"{tok.decode([i])!r} {lp:.3f}" for i, lp in entry["top_logprobs"])
                print(f"  {tok.decode([entry['token_id']])!r:>16} {entry['logprob']:8.3f}   {alts}")


def cmd_prompt(args) -> None:
    import json as _json

    from acorn import prompting
    from acorn.fileio import read_jsonl

    question = args.question if args.question is not None else args.question_text
    if question is None:
        raise AcornError("give the question: acorn prompt CHECKPOINT \"What is 12 + 7 * 3?\" --strategy cot")
    if args.strategy == "few-shot" and not args.examples:
        raise AcornError("--strategy few-shot needs --examples FILE.jsonl (rows with input and output)")
    pool = []
    if args.examples:
        path = Path(args.examples)
        if not path.is_file():
            raise AcornError(f"{path}: no such examples file; give a JSONL file of {{\"input\", \"output\"}} rows")
        pool = [prompting.Example.from_row(r) for r in read_jsonl(path)]
    params = _sampling(args)  # bad settings fail before the model loads
    engine = _engine(args)
    k = args.k if args.k is not None else min(4, len(pool))
    embedder = prompting.examples.engine_embedder(engine) if args.select == "similar" else None
    shots = prompting.choose_examples(pool, question, k, by=args.select, seed=args.seed or 0,
                                      embedder=embedder) if pool else []
    common = dict(system=args.system, raw=args.raw, numeric=args.numeric)
    if args.strategy == "tot":
        answer = prompting.tree_of_thoughts(engine, question, examples=shots, branches=args.branches, beam=args.beam,
                                            depth=args.depth, value=args.value, seed=args.seed or 0,
                                            temperature=args.temperature or 0.8,
                                            max_step_tokens=args.max_new_tokens or 48, **common)
    elif args.strategy == "self-consistency":
        fields = {f: getattr(params, f) for f in ("max_new_tokens", "top_k", "top_p", "stop")
                  if getattr(args, f, None) is not None}
        answer = prompting.self_consistency(engine, question, n=args.n or 5, examples=shots, cot=not args.no_cot,
                                            temperature=args.temperature or 0.7,
                                            seed=args.seed if args.seed is not None else 0, **common, **fields)
    else:
        fn = prompting.STRATEGIES[args.strategy]
        overrides = {f: getattr(params, f) for f in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")
                     if getattr(args, f, None) is not None}
        answer = fn(engine, question, **({"examples": shots} if args.strategy != "zero-shot" else {}), **common,
                    **overrides)
    if answer.skipped:
        raise AcornError(f"the prompt ({answer.prompt_tokens} tokens) does not fit the model's context of "
                         f"{engine.model.config.max_seq_len}; use fewer examples (--k) or a shorter question")
    if args.json:
        print(_json.dumps({"answer": answer.answer, "text": answer.text, "votes": answer.votes,
                           "samples": answer.samples, "examples": [e.input for e in shots]}))
        return
    print(answer.text)
    if args.strategy == "self-consistency":
        print("votes: " + ", ".join(f"{a!r} {n}" for a, n in sorted(answer.votes.items(), key=lambda x: -x[1])))
    print(f"answer: {answer.answer}")


def cmd_chat(args) -> None:
    from acorn.chat.template import message_images
    from acorn.infer import GenerationError
    from acorn.vision.images import open_image

    params = _sampling(args)
    pictures = [open_image(path) for path in args.image or []]  # a bad file: exit 2 before the model loads
    engine = _engine(args)
    if pictures and engine.tokens_per_image is None:
        raise AcornError(f"--image: {args.checkpoint} is a text-only model and cannot read images; drop --image, "
                         "or chat with a model that reads images (a LLaVA directory)")
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # EOF (Ctrl-D, or the end of piped input)
            sys.stdout.write("\n")
            return
        text = line.strip()
        if text == "/exit":
            return
        if text == "/reset":
            history = list(start)
            print("(conversation reset)")
            continue
        if not text:
            continue
        first = not any(m["role"] == "user" for m in history)
        # --image: the pictures go with the first user turn of each conversation (again after /reset).
        content = [*({"type": "image", "image": p} for p in pictures), {"type": "text", "text": text}]
        history.append({"role": "user", "content": content if first and pictures else text})
        try:
            deltas = engine.stream(engine.chat_prompt(history), params, images=message_images(history))
            reply = []
            sys.stdout.write("assistant> ")
            for delta in deltas:
                sys.stdout.write(delta)
                sys.stdout.flush()
                reply.append(delta)
        except GenerationError:  # the model itself fails (non-finite logits): every turn would; stop
            sys.stdout.write("\n")
            raise
        except AcornError as e:  # e.g. the conversation outgrew the context: say so, keep the session
            history.pop()
            print(f"\nacorn: error: {e}; /reset starts over", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_watermark_detect(args) -> None:
    from acorn.infer.watermark import detect
    from acorn.tokenizer.text import read_text_file

    text = read_text_file(Path(args.file), args.errors)
    if not text.strip():
        raise AcornError(f"{args.file}: the file is empty; give the text to test")
    d = detect(text, _load_tokenizer(args.tokenizer), args.key, gamma=args.gamma, context=args.context,
               z_threshold=args.z, scheme=args.scheme)
    print(f"tokens scored: {d.num_tokens}, green: {d.num_green} ({d.green_fraction:.1%}; {args.gamma:.1%} expected "
          f"without the watermark)\nz-score: {d.z_score:.2f}\np-value: {d.p_value:.3g}\n"
          f"verdict: {'watermarked' if d.watermarked else 'not watermarked'} (threshold z > {args.z:g})")


def cmd_serve(args) -> None:
    import os

    import uvicorn

    from acorn.infer import Engine
    from acorn.serve.app import check_api_keys, create_app

    env_key = os.environ.get("ACORN_API_KEY")
    if args.api_key is None and env_key is not None and not env_key.strip():
        raise AcornError("ACORN_API_KEY is set but empty; set it to the key, or unset it to serve without keys")
    # An empty --api-key (an unset variable) is refused here, before the model loads.
    keys = check_api_keys(args.api_key if args.api_key is not None else [env_key] if env_key else [])
    tools = None  # before the model loads: a bad tool name costs nothing
    if args.tools:
        from acorn.agent.builtins import make_tools

        tools = make_tools(args.tools, index=args.tools_index, world=args.tools_world)
    options = {"kv_cache_memory": args.kv_cache_memory_mb << 20} if args.kv_cache_memory_mb else {}
    name = args.model_name or Path(args.checkpoint).resolve().name
    adapters = _lora_adapters(args.lora or [], name)
    engine = Engine.from_pretrained(args.checkpoint, dtype=args.dtype, device=args.device, lora_adapters=adapters,
                                    compile_decode=args.compile_decode, int8_head=args.int8_head,
                                    **options)  # errors here: exit 2
    rag = None
    if args.rag:
        from acorn.rag.pipeline import RAG

        rag = RAG(args.rag, embedder=args.rag_embedder, k=args.rag_k, mode=args.rag_mode)
    app = create_app(engine, model_name=name, api_keys=keys, cors_origins=args.cors_origin or (),
                     max_tokens_cap=args.max_tokens_cap, max_pending=args.max_pending, rag=rag, tools=tools)
    url = f"http://{args.host}:{args.port}"
    print(f"serving {name!r}" + "".join(f", {a!r}" for a in adapters) + f" at {url}/v1 (OpenAI and Anthropic "
          f"APIs) and the chat page at {url}/" + ("; API keys required" if keys else ""), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)


def cmd_rag_index(args) -> None:
    from acorn.rag.pipeline import build_index

    if not args.add and not args.embedder:
        raise AcornError("give the embedding model: acorn rag index DOCS... --out INDEX --embedder MODEL_DIR")
    embedder = args.embedder
    if args.add and not embedder:
        from acorn.rag.index import Index

        embedder = Index.load(args.out).embedder["path"]
    build_index(args.docs, args.out, embedder, chunk_by=args.chunk_by, chunk_size=args.chunk_size,
                chunk_overlap=args.chunk_overlap, metric=args.metric, kind=args.kind, add=args.add, quiet=False)


def _rag(args, model):
    from acorn.rag.pipeline import RAG

    return RAG(args.index, model=model, embedder=args.embedder, k=args.k, mode=args.mode,
               max_new_tokens=args.max_new_tokens, rerank=args.rerank, rerank_method=args.rerank_method,
               spotlight=args.spotlight, layout=args.layout)


def cmd_rag_ask(args) -> None:
    import json

    if not args.question.strip():
        raise AcornError("the question is empty; acorn rag ask INDEX --model CKPT \"your question\"")
    rag = _rag(args, args.model)
    if args.model is None:  # retrieval only
        for h in rag.retrieve([args.question])[0]:
            print(f"[{h.rank}] {h.score:.4f}  {h.chunk.title} ({h.chunk.source}, {h.chunk.start}-{h.chunk.end})\n"
                  f"    {h.chunk.text[:200]}")
        return
    a = rag.ask(args.question)
    if args.json:
        print(json.dumps(a.to_json(), indent=2, ensure_ascii=False))
        return
    print(a.text.strip())
    print("\nsources:" if a.sources else "\nsources: none cited")
    for p in a.sources:
        print(f"  [{p['number']}] {p['title']} ({p['source']}, characters {p['start']}-{p['end']})")


def cmd_rag_eval(args) -> None:
    import json

    from acorn.fileio import read_jsonl, write_json

    path = Path(args.questions)
    if not path.is_file():
        raise AcornError(f"{path}: no such file; give a JSONL file of questions (e.g. WORLD/eval/unknown_qa.jsonl)")
    rows = list(read_jsonl(path))[: args.limit or None]
    result = _rag(args, args.model).evaluate(rows)
    if args.out:
        write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


def cmd_clip_train(args) -> None:
    from acorn.config import load
    from acorn.train.clip import ClipConfig, train_clip

    train_clip(load(ClipConfig, args.config, args.overrides), resume=args.resume)


def _clip_labels(args) -> list[str]:
    labels = list(args.label or [])
    if args.labels_file:
        path = Path(args.labels_file)
        if not path.is_file():
            raise AcornError(f"{path}: no such labels file; give a text file with one label per line")
        labels += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise AcornError("give the labels to choose from: --label \"a picture of three red circles\" (repeatable) "
                         "or --labels-file FILE (one per line)")
    return labels


def cmd_clip_classify(args) -> None:
    from acorn.vision.clip import classify

    for image, best in zip(args.images, classify(args.model, args.images, _clip_labels(args), top=args.top)):
        print(f"{image}: " + "; ".join(f"{label} ({p:.1%})" for label, p in best))


def cmd_clip_eval(args) -> None:
    from acorn.vision.zero_shot import evaluate_world, format_zero_shot

    print(format_zero_shot(evaluate_world(args.model, args.world, args.split)))


def cmd_vlm_train(args) -> None:
    from acorn.config import load
    from acorn.train.vlm import VLMConfig, train_vlm

    train_vlm(load(VLMConfig, args.config, args.overrides), resume=args.resume)


def cmd_vlm_eval(args) -> None:
    from acorn.eval.vlm import evaluate_vlm, format_vlm

    result = evaluate_vlm(args.model, args.world, split=args.split, limit=args.limit, batch_size=args.batch_size,
                          prefill_runs=args.prefill_runs)
    if args.out:
        from acorn.fileio import write_json

        write_json(args.out, result)
    print(format_vlm(result))


def cmd_embed_train(args) -> None:
    from acorn.config import load
    from acorn.train.embed import EmbedConfig, train_embedder

    train_embedder(load(EmbedConfig, args.config, args.overrides), resume=args.resume)


# ------------------------------------------------------------------- synth (issue 18)
def cmd_synth_constitutional(args) -> None:
    from acorn.synth.constitution import constitutional

    constitutional(args.model, args.prompts, args.out, principles=args.principles, critic=args.critic,
                   world=args.world, phases=args.phases, seed=args.seed, temperature=args.temperature,
                   max_new_tokens=args.max_new_tokens, limit=args.limit, keep_unflagged=args.keep_unflagged,
                   overwrite=args.overwrite, quiet=False)


def cmd_synth_generate(args) -> None:
    from acorn.synth.distill import generate

    r = generate(args.model, args.out, prompts=args.prompts, samples=args.samples, n=args.n,
                 temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                 limit=args.limit, overwrite=args.overwrite)
    print(f"{r['written']:,} generations -> {r['out']}")


def cmd_synth_distill(args) -> None:
    from acorn.config import load
    from acorn.synth.distill import DistillConfig, distill

    distill(load(DistillConfig, args.config, args.overrides), resume=args.resume)


def cmd_synth_collapse(args) -> None:
    import json

    from acorn.config import load
    from acorn.synth.collapse import CollapseConfig, collapse

    rows = collapse(load(CollapseConfig, args.config, args.overrides))
    print(json.dumps([{k: v for k, v in r.items() if k != "example"} for r in rows], indent=1))


def cmd_synth_qa(args) -> None:
    import json

    from acorn.synth.qa import synth_qa

    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    s = synth_qa(args.world, args.out, docs=args.docs, model=args.model, per_doc=args.per_doc, ngram=args.ngram,
                 tasks=tasks, decontaminate=args.decontaminate, seed=args.seed, limit=args.limit,
                 overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in s.items() if k != "run"}, indent=2))


def _add_synth_parser(stages) -> None:
    """acorn synth constitutional | generate | distill | collapse | qa (acorn.synth)."""
    sy = _parser(stages, "synth", "synthetic data: constitutional AI, distillation, model collapse, synthetic Q-A",
                 "acorn synth constitutional --model runs/sft/model --prompts prompts.jsonl --out runs/cai")
    ssub = sy.add_subparsers(dest="cmd", metavar="COMMAND")
    ssub.required = True

    s = _parser(ssub, "constitutional", "the model critiques and revises its answers under written principles "
                "(SFT data) and picks the better of two (preference pairs for DPO)",
                "acorn synth constitutional --model runs/sft/model --prompts prompts.jsonl "
                "--principles runs/world/principles.md --out runs/cai",
                description="Constitutional AI (Bai et al. 2022). Supervised phase: per prompt, sample an answer,\n"
                "critique it under a principle drawn at random, revise it: OUT/sft.jsonl (prompt + revision)\n"
                "and OUT/traces.jsonl. AI-feedback phase: sample two answers, ask which follows a principle\n"
                "better (P(A) vs P(B), both orders): OUT/preference.jsonl in TRL's format for `acorn dpo`.\n"
                "The world teaches the formats: `acorn data world --critique-sft`.")
    s.add_argument("--model", required=True, help="the chat model's checkpoint directory (answers and, with "
                   "--critic model, judges)")
    s.add_argument("--prompts", required=True, help="JSONL: `prompt` or `question` (text or messages) per line; "
                   "`kind`, `person` are used by the oracle critic")
    s.add_argument("--principles", help="principles file, .md (## name / critique: / revision: / applies:) or "
                   ".yaml (default: the built-in world's)")
    s.add_argument("--out", required=True, help="output directory (refused if it holds another run)")
    s.add_argument("--critic", default="model", choices=["model", "oracle"], help="who critiques and compares: "
                   "the model itself, or the world's labels (needs --world) (default: model)")
    s.add_argument("--world", help="a world directory (`acorn data world`): the oracle critic's truth")
    s.add_argument("--phases", default="both", choices=["both", "supervised", "feedback"],
                   help="supervised (critique + revision), feedback (AI preference pairs) or both (default: both)")
    s.add_argument("--seed", type=int, default=0, help="principle draws and sampling (default: 0)")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the answers (default: 1)")
    s.add_argument("--max-new-tokens", type=positive_int, default=48, help="most tokens per answer, critique or "
                   "revision (default: 48)")
    s.add_argument("--limit", type=positive_int, help="use only the first N prompts")
    s.add_argument("--keep-unflagged", action="store_true", help="where the critique finds no violation, train "
                   "on the original answer instead of the revision (default: always the revision, as Bai et al.)")
    s.add_argument("--overwrite", action="store_true", help="write into --out even if it holds another run")
    s.set_defaults(func=cmd_synth_constitutional)

    s = _parser(ssub, "generate", "a model's generations as training data (sequence-level distillation)",
                "acorn synth generate --model runs/teacher/model --samples 2000 --out runs/teacher_text.jsonl",
                description="Teacher generations through the one engine (Kim & Rush 2016). With --prompts: replies\n"
                "as conversations for `acorn sft`. With --samples N: documents from the BOS token as\n"
                "{\"text\"} rows for `acorn data prepare` and `acorn pretrain`.")
    s.add_argument("--model", required=True, help="the teacher's checkpoint directory")
    s.add_argument("--out", required=True, help="output .jsonl file")
    s.add_argument("--prompts", help="JSONL prompts (as for constitutional); replies are written as conversations")
    s.add_argument("--samples", type=non_negative_int, default=0, help="without --prompts: this many documents "
                   "from scratch")
    s.add_argument("--n", type=positive_int, default=1, help="replies per prompt (default: 1)")
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1 = off)")
    s.add_argument("--max-new-tokens", type=positive_int, default=128, help="most tokens per generation "
                   "(default: 128)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    s.add_argument("--limit", type=positive_int, help="use only the first N prompts")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_synth_generate)

    s = _parser(ssub, "distill", "token-level distillation: a student trained on a teacher's next-token "
                "distributions (forward KL, reverse KL or JS at a temperature) mixed with the data's next token",
                "acorn synth distill --teacher runs/pretrain/model --data runs/data --out runs/student "
                "--model.n_layer 2 --train.max_steps 300",
                description="Hinton et al. 2015 on the one training loop: loss per token = alpha T^2 D(teacher,\n"
                "student) + (1 - alpha) CE. The data: token shards from `acorn data prepare` made with the\n"
                "teacher's tokenizer (another tokenizer is refused). Settings as for `acorn pretrain`.",
                settings="acorn.synth.distill:DistillConfig")
    _training_flags(s, cmd_synth_distill)

    s = _parser(ssub, "collapse", "model collapse: generation after generation trained on the previous one's "
                "samples (replace, mix or accumulate), measured on real held-out text",
                "acorn synth collapse --data runs/world/pretrain.jsonl --tokenizer runs/tok --out runs/collapse "
                "--mode replace",
                description="Shumailov et al. 2024 (replace) vs Gerstgrasser et al. 2024 (accumulate). Per\n"
                "generation: the loss on real held-out text, on its rarest tokens, and the samples'\n"
                "distinct-n and vocabulary; OUT/generations.jsonl and OUT/collapse.png.",
                settings="acorn.synth.collapse:CollapseConfig")
    s.add_argument("--config", help="YAML file with the run's settings")
    s.set_defaults(func=cmd_synth_collapse, accepts_overrides=True)

    s = _parser(ssub, "qa", "synthetic question-answer pairs from the world's documents, filtered "
                "(deduplicated, verifiable), checked for contamination against the eval sets",
                "acorn synth qa --world runs/world --out runs/qa --model runs/sft/model")
    s.add_argument("--world", required=True, help="a world directory (`acorn data world`): people and eval sets")
    s.add_argument("--out", required=True, help="output directory: qa.jsonl and summary.json")
    s.add_argument("--docs", help="JSONL documents with `text` and `person` (default: WORLD/knowledge_base.jsonl)")
    s.add_argument("--model", help="a chat model answers from each document (default: the world's values)")
    s.add_argument("--per-doc", type=positive_int, default=5, help="questions per document (default: 5)")
    s.add_argument("--ngram", type=positive_int, default=5, help="words per n-gram of the contamination check "
                   "(default: 5; world questions are short)")
    s.add_argument("--tasks", help="eval tasks to check against, comma-separated (default: world_fact_qa, "
                   "world_unknown_qa, world_multiple_choice)")
    s.add_argument("--decontaminate", action="store_true", help="drop the pairs that overlap an eval document")
    s.add_argument("--seed", type=int, default=0, help="question phrasings drawn (default: 0)")
    s.add_argument("--limit", type=positive_int, help="use only the first N documents")
    s.add_argument("--overwrite", action="store_true", help="write into --out even if it holds another run")
    s.set_defaults(func=cmd_synth_qa)


# ------------------------------------------------------------------- helpers
def _lora_adapters(specs: list[str], base_name: str) -> dict[str, str]:
    """--lora NAME=DIR ... -> {name: directory}; each name a `model` of its own."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        name = name.strip()
        if not sep or not name or not directory.strip():
            raise AcornError(f"--lora {spec!r}: expected NAME=DIR, e.g. --lora sql=runs/sft-sql/adapter")
        if name in out or name == base_name:
            taken = "another adapter" if name in out else "the base model (--model-name)"
            raise AcornError(f"--lora {spec}: the name {name!r} is already {taken}'s; give each adapter its own name")
        out[name] = directory.strip()
    return out


def _load_tokenizer(name: str):
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.from_pretrained(name)


def _engine(args):
    from acorn.infer import Engine

    return Engine.from_pretrained(args.checkpoint, dtype=args.dtype, device=args.device,
                                  compile_decode=getattr(args, "compile_decode", False),
                                  int8_head=getattr(args, "int8_head", False))


def _sampling(args):
    from acorn.infer import SamplingParams

    names = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
             "frequency_penalty", "presence_penalty", "seed", "stop", "n", "num_beams", "length_penalty", "logprobs")
    return SamplingParams(**{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})


def _add_inference_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--max-new-tokens", type=int, help="most tokens to generate (default: 256)")
    s.add_argument("--temperature", type=float, help="0 = greedy; < 1 sharper, > 1 more random (default: 1.0)")
    s.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: off)")
    s.add_argument("--top-p", type=float, help="nucleus sampling: the most likely tokens up to this probability (default: off)")
    s.add_argument("--min-p", type=float, help="drop tokens less likely than this fraction of the top one (default: off)")
    s.add_argument("--repetition-penalty", type=float, help="CTRL penalty on tokens already in the text, e.g. 1.2 (default: 1 = off)")
    s.add_argument("--frequency-penalty", type=float, help="OpenAI-style: subtract count x this from generated tokens")
    s.add_argument("--presence-penalty", type=float, help="OpenAI-style: subtract this once a token has been generated")
    s.add_argument("--min-new-tokens", type=int, help="do not stop before this many tokens (default: 0)")
    s.add_argument("--seed", type=int, help="seed of the sampler (default: random)")
    s.add_argument("--stop", action="append", metavar="STR", help="stop before this text (repeatable)")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    s.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's)")
    s.add_argument("--compile-decode", action="store_true", help=COMPILE_DECODE_HELP)
    s.add_argument("--int8-head", action="store_true", help=INT8_HEAD_HELP)


# Engine(compile_decode=True): acorn.infer.compiled, measured in docs/BENCHMARKS.md (decode-compile).
# Engine(int8_head=True): acorn.model.packed.pack, measured in docs/BENCHMARKS.md (llamacpp).
INT8_HEAD_HELP = ("run the output head from an int8 copy of its weights with bf16 activations on CPU, as "
                  "llama.cpp's Q8_0/Q4_0 files keep theirs (logits change slightly; pays with --compile-decode)")
COMPILE_DECODE_HELP = ("decode a lone request through a torch.compile'd step with static shapes (faster per token "
                       "on CPU; the first step of each 256/512/... context bucket compiles for tens of seconds)")


def _text_arg(args) -> str:
    if args.file:
        from acorn.tokenizer.text import read_text_file

        return read_text_file(Path(args.file), getattr(args, "errors", "strict"))
    if args.text is not None:
        return args.text
    return sys.stdin.read()


def _expand_inputs(inputs: list[str]) -> list[Path]:
    from acorn.fileio import expand_inputs

    return expand_inputs(inputs)


# ------------------------------------------------------------------ acorn agent
def _ask_confirmation(call: dict) -> bool:
    """The CLI's confirm hook: ask on the terminal before a tool with side effects runs."""
    import json

    if not sys.stdin.isatty():
        print(f"acorn: refused {call['name']} (it has side effects and there is no terminal to confirm on; "
              "run without --confirm to allow it)", file=sys.stderr)
        return False
    answer = input(f"run {call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_agent(args) -> None:
    import json

    from acorn.agent.builtins import make_tools, parse_tool_names
    from acorn.agent.loop import Agent, format_transcript

    task = sys.stdin.read() if args.task == "-" else args.task
    if not task.strip():
        raise AcornError('the task is empty; acorn agent CKPT "What is 123 * 45?" --tools calculator')
    names = parse_tool_names(args.tools)  # before the model loads: a typo costs nothing
    allow = parse_tool_names(args.allow) if args.allow else None
    tools = make_tools(names, index=args.index, embedder=args.embedder, world=args.world)
    confirm, policy = (_ask_confirmation if args.confirm else None), None
    if args.privilege:
        from acorn.chat.privilege import ToolPolicy

        # Once a fetched text (search, lookup, a program's output) is in the context, a tool with side
        # effects runs only when confirmed (--confirm) and is refused otherwise; the calculator's
        # output is computed, so it taints nothing.
        policy = ToolPolicy(side_effects=[n for n in tools.names if tools[n].side_effects], trusted=["calculator"],
                            confirm=confirm)
        confirm = None  # the policy asks, and only when it must
    agent = Agent(_engine(args), tools, allow=allow, policy=policy,
                  system=args.system, max_steps=args.max_steps, token_budget=args.token_budget,
                  max_new_tokens=args.max_new_tokens, max_observation_tokens=args.max_observation_tokens,
                  max_retries=args.max_retries, constrained=not args.unconstrained, temperature=args.temperature,
                  seed=args.seed, confirm=confirm, trace=args.trace)
    result = agent.run(task)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_transcript(result))


def _add_agent_parser(stages) -> None:
    s = _parser(stages, "agent", "run a task with tools: the model calls them and reads their results (ReAct)",
                'acorn agent runs/speedrun/sft/model "What is 123 * 45?" --tools calculator --trace trace.jsonl',
                description="The ReAct loop: the chat model answers or calls a tool; each call is validated\n"
                "against the tool's JSON Schema and run, its result goes back to the model, until\n"
                "it answers or a limit is reached. The transcript is printed; --trace saves every\n"
                "turn, call and result as JSONL. Tools: calculator (arithmetic, never eval),\n"
                "python (only inside the bubblewrap sandbox; refused where it cannot run),\n"
                "search (a RAG index: --index), lookup (the world's facts: --world).")
    s.add_argument("checkpoint", help="a chat model directory (its chat format must have a tool-call syntax)")
    s.add_argument("task", help="what to do (a user message); - reads it from stdin")
    s.add_argument("--tools", default="calculator", help="comma-separated built-in tools: calculator, python, "
                   "search, lookup (default: calculator)")
    s.add_argument("--allow", help="the allowlist: of --tools, only these may be called (default: all of them)")
    s.add_argument("--index", help="the search tool's index directory (from `acorn rag index`)")
    s.add_argument("--embedder", help="the index's embedder (default: the one the index records)")
    s.add_argument("--world", help="the lookup tool's world directory (from `acorn data world`)")
    s.add_argument("--system", help="a system prompt (default: none)")
    s.add_argument("--max-steps", type=positive_int, default=6, help="most model turns (default: 6)")
    s.add_argument("--token-budget", type=positive_int, default=1024,
                   help="most tokens generated over all turns (default: 1024)")
    s.add_argument("--max-new-tokens", type=positive_int, default=128, help="most tokens of one turn (default: 128)")
    s.add_argument("--max-observation-tokens", type=_int_at_least(16), default=200,
                   help="a tool result longer than this is cut, and the cut said (default: 200)")
    s.add_argument("--max-retries", type=non_negative_int, default=2,
                   help="invalid turns in a row (malformed or invalid calls, rejected answers) before giving up "
                   "(default: 2)")
    s.add_argument("--unconstrained", action="store_true", help="do not constrain calls with the grammar (default: "
                   "constrained: the model writes text or a well-formed, schema-valid call)")
    s.add_argument("--confirm", action="store_true", help="ask on the terminal before each call of a tool with "
                   "side effects (python)")
    s.add_argument("--privilege", action="store_true", help="privilege separation: once a tool's fetched output "
                   "(search, lookup, python) is in the context, tools with side effects are refused unless --confirm "
                   "asks and you say yes (acorn.chat.privilege.ToolPolicy; default: off)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    s.add_argument("--trace", metavar="FILE", help="write the run as JSONL: start, each model turn, each tool "
                   "call and result, end")
    s.add_argument("--json", action="store_true", help="print the result as JSON instead of the transcript")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    s.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's)")
    s.set_defaults(func=cmd_agent)


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="acorn",
        description="Acorn: tokenizer, transformer, training, alignment, inference and serving, end to end.",
        epilog="example:\n  acorn speedrun            # the whole pipeline on the built-in world\n"
        "  acorn tokenizer --help    # the commands of one stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"acorn {_package_version()}")
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True

    # acorn speedrun
    s = _parser(stages, "speedrun", "run the whole pipeline on the built-in world and write report.md",
                "acorn speedrun --out runs/speedrun",
                description="World -> tokenizer -> shards -> pretrain -> SFT -> evaluation -> samples -> report.md.\n"
                "Presets: cpu (default: ~15 min on a 2-core CPU), tiny (about a minute, to try the\n"
                "pipeline), gpu (an 82M model on one GPU, compiled; ~45 min estimated from its budgets).\n"
                "report.md ends with a report card: the eval harness's numbers for the base and SFT\n"
                "models (and each later stage's), as a table and card.png. --stages NAME,... runs only\n"
                "those stages over a finished run in --out and adds their columns to its report card.")
    s.add_argument("--out", default="runs/speedrun", help="run directory (default: runs/speedrun)")
    s.add_argument("--preset", default="cpu", choices=["cpu", "tiny", "gpu"], help="how big a run (default: cpu)")
    s.add_argument("--size", choices=["tiny", "small", "default", "large"], help="world size (default: the preset's)")
    s.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the world, the weights and the data order: same seed, same run (default: 0)")
    s.add_argument("--vocab-size", type=positive_int, help="tokenizer vocabulary (default: the preset's)")
    s.add_argument("--pretrain-minutes", type=_positive_float, metavar="MIN", help="pretraining's time budget: a "
                   "throughput probe plans the steps and the loop fits their number to the budget as it runs "
                   "(--train.fit_minutes; default: the preset's: 9 for cpu)")
    s.add_argument("--sft-minutes", type=_positive_float, metavar="MIN", help="SFT's time budget, the same way "
                   "(default: the preset's: 4.5 for cpu)")
    s.add_argument("--mixed-qa", type=non_negative_int, metavar="N", help="mixed training: N question-answer pairs "
                   "per fact of the SFT people among the pretraining documents (`acorn data world --mixed-qa`; "
                   "default: the preset's, 0)")
    s.add_argument("--mixed-qa-format", choices=["plain", "chat"], help="how --mixed-qa writes those pairs: plain "
                   "text (\"Question: ...\\nAnswer: ...\") or chat: conversations rendered with the tokenizer's "
                   "chat template, special tokens as their ids, so the base model already answers in the format "
                   "SFT and the report card use (`acorn data world --mixed-qa-format`; default: the preset's, plain)")
    s.add_argument("--sft-replay", type=non_negative_int, metavar="N", help="replay: N of the world's pretraining "
                   "biographies (at random) mixed into SFT as text rows, so fine-tuning keeps what pretraining "
                   "taught about the people SFT never asks about (default: the preset's)")
    s.add_argument("--fact-answers", choices=["value", "sentence"], help="how SFT answers a fact question: with "
                   "the bare value (\"1959\") or a sentence in the biographies' words (\"As far as I know, NAME "
                   "was born in 1959.\"), which carries pretraining's lookup over to the people SFT never asks "
                   "about (`acorn data world --fact-answers`; default: the preset's, sentence for cpu and tiny)")
    s.add_argument("--tool-sft", action=argparse.BooleanOptionalAction, default=None,
                   help="SFT also teaches calling the calculator at every size, 1 to 6 digits, never an eval problem "
                   "(`acorn data world --tool-sft`); --no-tool-sft: only for large problems (default: the preset's, "
                   "on for cpu and tiny)")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model for pretraining and SFT (compilation is paid out of the time "
                   "budgets; where it fails the stage trains eagerly); --no-compile trains eagerly "
                   "(default: the preset's: on for cpu and gpu, off for tiny)")
    from acorn.data.world import ICL_STYLES, PHASE_DESIGNS

    s.add_argument("--icl-phase", metavar="CHAIN", help="the in-context phase: after pretraining, designs of "
                   "in-context documents joined by >, each trained for its @STEPS from the model the one before left "
                   "(e.g. copy@200>formats@200>world+formats@200: plain copying runs of the world's words, then "
                   "repeated-induction lines in five formats, then those mixed with the world's text), so the base "
                   "model learns to follow a label mapping shown in its prompt (that chain: 86.7-88.7%% on world_icl "
                   "after five base models of seven, ~6 more minutes; after the other two it stayed at chance, where "
                   "spaced copying runs before the formats, copy@200>spaced@200>formats@200>world+formats@200, "
                   "crossed after one of them, and with copy@400 first put both at ~80%%; with the world's text "
                   "in every stage, world+copy@200>world+spaced@200>world+formats@600 --icl-world-share 0.1667, "
                   "81.0%%, 79.7%% and 81.3%% in speedruns of seeds 0-2 with the facts kept, ~23 min; docs/BENCHMARKS.md, "
                   "icl-phase-bases, icl-phase-spaced); designs: "
                   f"{', '.join(PHASE_DESIGNS)}; '' for none (default: the preset's: none for cpu and gpu; "
                   "copy@2>world+formats@2 for tiny, which checks the pipeline)")
    s.add_argument("--icl-world-share", type=float, metavar="F", help="the world's text in each world+ design of "
                   "--icl-phase: each document is one of the world's own with probability F, else the design's "
                   "in-context document (a sixth in every stage, 0.1667, kept the facts: 89.2%% of those only in "
                   "pretraining after world+copy@200>world+spaced@200>world+formats@600, against 39.1%% after the "
                   "world-free spaced chain; docs/BENCHMARKS.md, icl-phase-spaced; default: the preset's, 1/3)")
    s.add_argument("--world-icl-docs", type=non_negative_int, metavar="N", help="N in-context documents of "
                   "--world-icl-style in the pretraining world instead of its episodes (1,500 in the default "
                   "world; `acorn data world --icl-docs`): the in-context patterns in pretraining itself, no phase "
                   "(10,000 of "
                   "copy+spaced+formats, a third of the tokens, left world_icl at 40.0%%; 40,000, two thirds, at "
                   "53.7%% with the facts lost: docs/BENCHMARKS.md, icl-phase-spaced; default: the preset's, 0)")
    s.add_argument("--world-icl-style", choices=ICL_STYLES, help="the --world-icl-docs documents (`acorn data world "
                   "--icl-style`: repeats, copy, formats, copy+formats, spaced, copy+spaced+formats; default: repeats)")
    s.add_argument("--estimate", action="store_true", help="print how long the run would take here (a throughput "
                   "probe of a few training steps) and exit")
    from acorn.speedrun import STAGES  # light: the stages import their modules when they run

    s.add_argument("--stages", help="run only these stages over the finished run in --out (its preset and seed); "
                   "registered: " + "; ".join(f"{st.title}" + ("" if st.default else " [not in a default run]")
                                              for st in STAGES.values()))
    s.set_defaults(func=cmd_speedrun)

    # acorn eval
    s = _parser(stages, "eval", "evaluate a checkpoint on benchmark tasks (lm-eval compatible), or compare runs",
                "acorn eval runs/sft --tasks arc_easy,piqa --num-fewshot 0 --limit 100 --out runs/eval-sft\n"
                "  acorn eval compare runs/eval-a runs/eval-b --chart compare.png\n"
                "  acorn eval contamination --tasks arc_easy,lambada_openai --corpus runs/data\n"
                "  acorn eval runs/base --tasks lambada_openai --decontaminate runs/data --out runs/eval-base",
                description="Evaluate an Acorn or Hugging Face checkpoint on tasks defined by YAML files, scored\n"
                "as lm-evaluation-harness scores them: multiple choice by log-likelihood (acc, acc_norm),\n"
                "a target's log-likelihood (perplexity, acc), rolling log-likelihood (perplexity per\n"
                "word and byte, bits per byte), generation with answer extraction (exact match), code\n"
                "run against tests in a bubblewrap sandbox (pass@k).\n"
                "Built-in tasks: arc_easy, arc_challenge, piqa, lambada_openai, gsm8k, acorn_code; the group\n"
                "world (the built-in world's tasks: --data-dir a directory from `acorn data world`); or the\n"
                "path of a task YAML (keys documented in acorn/eval/tasks.py). `acorn eval compare DIR...`\n"
                "prints runs side by side. `acorn eval contamination --corpus ...` finds the tasks'\n"
                "documents in a training corpus by 13-gram overlap (and with --results DIR splits a\n"
                "run's scores into clean and contaminated documents); --decontaminate does both in a run.")
    s.add_argument("checkpoint", help="checkpoint directory, or `compare` followed by result directories, or "
                   "`contamination`, or `injection` followed by a checkpoint (the prompt-injection attack suite "
                   "on the world of --data-dir: attack success rate and utility)")
    s.add_argument("dirs", nargs="*", help=argparse.SUPPRESS)
    s.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,lambada_openai",
                   help="comma-separated task names or YAML paths (default: arc_easy,arc_challenge,piqa,lambada_openai)")
    s.add_argument("--num-fewshot", type=non_negative_int, help="few-shot examples per prompt (default: each task's own)")
    s.add_argument("--limit", type=positive_int, help="evaluate the first N documents of each task (default: all)")
    s.add_argument("--out", help="write results.json, results.md, results.png and samples_TASK.jsonl here")
    s.add_argument("--data-dir", help="directory of the tasks' data files (default: $ACORN_EVAL_DATA, else "
                   "../shared/data/eval beside the repository)")
    s.add_argument("--add-bos", default="auto", choices=["auto", "true", "false"],
                   help="start each text with BOS (default auto: when the checkpoint's tokenizer adds it in "
                   "transformers, as lm-eval does)")
    s.add_argument("--batch-tokens", type=positive_int, default=8192, help="padded tokens per forward pass (default: 8192)")
    s.add_argument("--chart", help="compare: save a bar chart of the runs here")
    s.add_argument("--decontaminate", nargs="+", metavar="CORPUS",
                   help="training corpora (token shard dirs or .txt/.jsonl/.parquet files): also report each task's "
                   "contaminated documents and its scores without them")
    s.add_argument("--corpus", nargs="+", help="contamination: the training corpora to look in")
    s.add_argument("--results", help="contamination: a run's --out directory whose scores to split")
    s.add_argument("--ngram", type=int, default=13, help="words per n-gram of the contamination check (default 13)")
    s.add_argument("--tokenizer", help="contamination: decode token shards with this tokenizer (default: the one "
                   "their meta.json names)")
    s.add_argument("--text-field", default="text", help="contamination: the text field of .jsonl/.parquet corpora")
    _add_eval_injection_args(s)
    s.set_defaults(func=cmd_eval)

    # acorn data ...
    data = _parser(stages, "data", "make and prepare training data", "acorn data world --out runs/world")
    dsub = data.add_subparsers(dest="cmd", metavar="COMMAND")
    dsub.required = True
    s = _parser(dsub, "world", "generate the built-in synthetic world (documents, instructions, eval sets)",
                "acorn data world --out runs/world --size small --seed 0")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    s.add_argument("--size", default="default", choices=["tiny", "small", "default", "large"],
                   help="tiny is for tests; default is what the main job trains on")
    s.add_argument("--tokenizer", help="count sizes in tokens of this tokenizer (default: a BPE fitted to the world)")
    s.add_argument("--overwrite", action="store_true", help="replace the world already in --out (default: refuse)")
    s.add_argument("--rag-sft", action="store_true", help="sft.jsonl also teaches answering from retrieved passages "
                   "with a citation, or \"I don't know.\" when they lack the answer (default: off)")
    s.add_argument("--reading-docs", type=non_negative_int, default=0, metavar="N",
                   help="pretrain.jsonl also holds N reading documents: passages about invented people, then "
                   "questions answered from them with a citation, which teach a base model to copy a value "
                   "from its context (default: 0, none)")
    s.add_argument("--tool-sft", action="store_true", help="sft.jsonl also teaches calling the calculator at every "
                   "size, 1 to 6 digits, with the question's own numbers and operator (default: off)")
    s.add_argument("--mixed-qa", type=non_negative_int, default=0, metavar="N",
                   help="mixed training: N question-answer pairs per fact of each SFT person among the pretraining "
                   "documents (\"Question: ...\\nAnswer: ...\"); the held-out people get none and measure transfer "
                   "(default: 0, off)")
    s.add_argument("--mixed-qa-format", choices=["plain", "chat"], default="plain",
                   help="how --mixed-qa writes each pair: plain text (\"Question: ...\\nAnswer: ...\"), or chat: a "
                   "conversation ({\"messages\": [user question, assistant answer]}, the form of SFT's rows for "
                   "facts) that `acorn data prepare` renders with the tokenizer's chat template, special tokens as "
                   "their ids, so the base model already answers in SFT's format (default: plain)")
    s.add_argument("--fact-answers", choices=["value", "sentence"], default="value",
                   help="how sft.jsonl and preference.jsonl answer a fact question: value (\"1959\") or sentence "
                   "(\"As far as I know, NAME was born in 1959.\": the relation in the biographies' own words, so "
                   "the chat model answers with the lookup pretraining taught; the eval reads the value out of "
                   "it). Default: value, the files as they were")
    s.add_argument("--icl-docs", type=non_negative_int, default=0, metavar="N",
                   help="N in-context pretraining documents instead of the size's, of --icl-style; default: 0, the "
                   "size's own documents")
    s.add_argument("--icl-style", choices=ICL_STYLES, default="repeats",
                   help="the --icl-docs documents: repeats (half of them repeating their inputs so each later label "
                   "is copied from an earlier line: induction), copy (a run of words, repeated: plain induction), "
                   "formats (repeated induction written in five formats, the label 1-4 tokens after its input), "
                   "copy+formats (half each: what the speedrun's in-context phase mixes with the world's text), "
                   "spaced (a run of words with the formats' separators between them, repeated: copying across "
                   "their gaps) or copy+spaced+formats (a third each). Default: repeats")
    s.add_argument("--critique-sft", action="store_true", help="sft.jsonl also teaches critiques and revisions "
                   "under the world's principles (written to principles.md) and A/B comparisons, the format "
                   "`acorn synth constitutional` uses (default: off)")
    s.add_argument("--images", nargs="?", const="default", default=0, type=_images_arg, metavar="N",
                   help="also draw N pictures into images/ (PNG, 64x64, with metadata.jsonl): countable shapes, "
                   "numbers and badges of the world's people, with captions and question/answer pairs, for "
                   "`acorn clip train`; without N the size's number (tiny 60, small 1000, default 4000, large "
                   "20000) (default: none)")
    s.set_defaults(func=cmd_data_world)
    s = _parser(dsub, "prepare", "tokenize text into binary token shards for pretraining (resumable)",
                "acorn data prepare runs/world/pretrain.jsonl --tokenizer runs/tok --out runs/data")
    s.add_argument("inputs", nargs="+", help=".txt (one document per file), .jsonl or .parquet files, directories or globs")
    s.add_argument("--tokenizer", required=True, help="tokenizer directory (or file, or 'gpt2')")
    s.add_argument("--out", required=True, help="directory for train_*.bin, val_*.bin and meta.json")
    s.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text (default: text); "
                   "a JSONL line without it but with \"messages\" is a conversation, rendered with the tokenizer's "
                   "chat template")
    s.add_argument("--val-fraction", type=_fraction(), default=0.005, help="share of documents held out (default: 0.005)")
    s.add_argument("--shard-tokens", type=positive_int, default=10_000_000, help="tokens per shard (default: 10_000_000)")
    s.add_argument("--workers", type=non_negative_int, help="tokenizer processes (default: all cores; 0: this process)")
    s.add_argument("--seed", type=int, default=0, help="picks the validation documents (default: 0)")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="bytes that are not UTF-8: stop with the file and place, or replace them with U+FFFD "
                   "(default: strict)")
    s.add_argument("--overwrite", action="store_true", help="replace shards prepared with other inputs or settings")
    s.set_defaults(func=cmd_data_prepare)

    # acorn tokenizer ...
    tk = _parser(stages, "tokenizer", "train, inspect and use byte-level BPE tokenizers",
                 "acorn tokenizer train corpus.txt --vocab-size 8192 --out runs/tok")
    tsub = tk.add_subparsers(dest="cmd", metavar="COMMAND")
    tsub.required = True

    s = _parser(tsub, "train", "train a byte-level BPE tokenizer on text files",
                "acorn tokenizer train data/*.txt --vocab-size 32768 --out runs/tok")
    s.add_argument("inputs", nargs="+", help=".txt or .jsonl files, directories or globs")
    s.add_argument("--out", required=True, help="directory for tokenizer.json + tokenizer_config.json")
    s.add_argument("--vocab-size", type=positive_int, default=8192, help="total vocabulary including special tokens")
    s.add_argument("--pattern", default="gpt4", help="split regex: gpt4 (default), gpt2, or a regex")
    s.add_argument("--chat-format", default="acorn", choices=["acorn", "chatml", "llama3"],
                   help="reserve this chat format's special tokens and use its template")
    s.add_argument("--special", action="append", default=[], metavar="TOKEN", help="an extra special token (repeatable)")
    s.add_argument("--text-field", default="text", help="field holding the text in .jsonl inputs")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"], help="undecodable bytes: stop or replace")
    s.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out (default: refuse)")
    s.set_defaults(func=cmd_tokenizer_train)

    s = _parser(tsub, "encode", "print the ids of a text", "acorn tokenizer encode runs/tok 'Hello world'")
    s.add_argument("tokenizer", help="tokenizer directory or file, or 'gpt2'")
    s.add_argument("text", nargs="?", help="text to encode (default: stdin)")
    s.add_argument("--file", help="encode this file instead")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="--file bytes that are not UTF-8: stop, or replace them with U+FFFD (default: strict)")
    s.add_argument("--allow-special", action="store_true", help="turn special-token text into special ids")
    s.add_argument("--show", action="store_true", help="one token per line with its bytes")
    s.set_defaults(func=cmd_tokenizer_encode)

    s = _parser(tsub, "decode", "print the text of ids", "acorn tokenizer decode runs/tok 15496 995")
    s.add_argument("tokenizer", help="tokenizer directory or file, or 'gpt2'")
    s.add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
    s.set_defaults(func=cmd_tokenizer_decode)

    s = _parser(tsub, "info", "vocabulary, special tokens, split pattern and chat format",
                "acorn tokenizer info runs/tok")
    s.add_argument("tokenizer", help="tokenizer directory or file, or 'gpt2'")
    s.set_defaults(func=cmd_tokenizer_info)

    s = _parser(tsub, "eval", "bytes per token on a corpus, side by side with other tokenizers (GPT-2 by default)",
                "acorn tokenizer eval runs/tok corpus.txt --compare gpt2")
    s.add_argument("tokenizer", help="tokenizer directory or file")
    s.add_argument("inputs", nargs="+", help="text files, directories or globs")
    s.add_argument("--compare", action="append", default=None, metavar="TOKENIZER",
                   help="another tokenizer to compare (repeatable; default: gpt2)")
    s.add_argument("--text-field", default="text", help="field holding the text in .jsonl inputs (default: text)")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="bytes that are not UTF-8: stop with the file and place, or replace them with U+FFFD "
                   "(default: strict)")
    s.set_defaults(func=cmd_tokenizer_eval)

    # acorn model ...
    md = _parser(stages, "model", "inspect model checkpoints and presets", "acorn model info runs/ckpt")
    msub = md.add_subparsers(dest="cmd", metavar="COMMAND")
    msub.required = True
    s = _parser(msub, "info", "architecture, parameters, context, positions and weight memory at each precision "
                "(reads config.json and safetensors headers only)", "acorn model info gpt2-124m")
    s.add_argument("path", help="a Hugging Face checkpoint directory, or an Acorn preset name (e.g. gpt2-124m)")
    s.set_defaults(func=cmd_model_info)

    # acorn quantize
    s = _parser(stages, "quantize", "weight-only quantization of a checkpoint (int8, int4 or NF4); prints the "
                "weights' memory before and after", "acorn quantize runs/ckpt --method int4 --group-size 128 --out runs/ckpt-int4")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory (its tokenizer files are copied)")
    s.add_argument("--method", required=True, metavar="int8|int4|nf4",
                   help="int8: per output channel; int4: groups, asymmetric; nf4: QLoRA's NormalFloat4")
    s.add_argument("--group-size", type=positive_int, help="inputs per scale: 32, 64, 128 or 256 (default: 128 for int4, 64 for nf4)")
    s.add_argument("--quantize-head", action="store_true", help="quantize an untied output head too (default: kept float)")
    s.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out (default: refuse)")
    s.set_defaults(func=cmd_quantize)

    # acorn lora ...
    lr = _parser(stages, "lora", "LoRA / QLoRA adapters (PEFT's format): merge one into its base",
                 "acorn lora merge runs/pretrain/model runs/sft/adapter --out runs/sft/model")
    lsub = lr.add_subparsers(dest="cmd", metavar="COMMAND")
    lsub.required = True
    s = _parser(lsub, "merge", "fold a LoRA adapter into its base (W + scale * B A) and write a plain Hugging Face "
                "checkpoint with the base's tokenizer", "acorn lora merge runs/pretrain/model runs/sft/adapter --out runs/sft/model")
    s.add_argument("base", help="the base checkpoint directory the adapter was trained on")
    s.add_argument("adapter", help="a PEFT adapter directory (adapter_config.json + adapter_model.safetensors), "
                   "e.g. RUN/adapter of `acorn sft --lora.r 16`, or one peft saved")
    s.add_argument("--out", required=True, help="directory for the merged checkpoint")
    s.add_argument("--overwrite", action="store_true", help="write over a checkpoint already in --out "
                   "(default: refuse)")
    s.set_defaults(func=cmd_lora_merge)

    # acorn export ...
    ex = _parser(stages, "export", "write a checkpoint in another runtime's format (GGUF for llama.cpp)",
                 "acorn export gguf runs/speedrun/sft/model --out model.gguf --type q8_0")
    xsub = ex.add_subparsers(dest="cmd", metavar="COMMAND")
    xsub.required = True
    s = _parser(xsub, "gguf", "write one GGUF file (weights, architecture and tokenizer) that llama.cpp, Ollama "
                "and LM Studio run", "acorn export gguf runs/speedrun/sft/model --out model.gguf --type q8_0",
                description="Write one GGUF file (weights, architecture and tokenizer) that llama.cpp and what is "
                "built on it\n(Ollama, LM Studio) run. Layouts: RoPE + RMSNorm + SwiGLU as llama.cpp's llama "
                "(Llama;\nMistral when its window covers the context), qwen2 (q/k/v biases) and qwen3 (QK-norm); "
                "others are\nrefused. The tokenizer's split pattern must be one llama.cpp knows by name: GPT-4's "
                "(--pattern gpt4,\nthe default of `acorn tokenizer train`) or GPT-2's.")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory with its tokenizer files")
    s.add_argument("--out", required=True, help="the .gguf file to write (replaced whole, never half-written)")
    s.add_argument("--overwrite", action="store_true", help="replace a file already at --out (default: refuse)")
    s.add_argument("--type", default="f16", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                   help="matrix weights as f16 (default; half of f32), f32 (exact), bf16 (half of f32, f32's "
                   "range), q8_0 (8-bit blocks of 32 with one f16 scale: about a quarter of f32, error at most "
                   "half a step) or q4_0 (4-bit blocks of 32 with one f16 scale, about an eighth of f32; the "
                   "embedding and head stay q8_0); norms and biases stay f32")
    s.set_defaults(func=cmd_export_gguf)

    # acorn generate / chat
    s = _parser(stages, "generate", "continue a prompt with a model (streams the text)",
                "acorn generate runs/ckpt --prompt \"Once upon a time\" --max-new-tokens 50 --temperature 0.8")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory with its tokenizer files")
    s.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the text to continue (or --prompt)")
    s.add_argument("--prompt", help="the text to continue")
    _add_inference_flags(s)
    s.add_argument("-n", type=_int_at_least(1, MAX_SAMPLES), help="samples of the prompt, sharing one prefill "
                   f"(printed one after another; at most {MAX_SAMPLES})")
    s.add_argument("--num-beams", type=_int_at_least(1, MAX_SAMPLES),
                   help=f"beam search with this many beams (with -n: the n best beams; at most {MAX_SAMPLES})")
    s.add_argument("--length-penalty", type=float, help="beam search: score = log-prob / length**this (default: 1)")
    s.add_argument("--logprobs", type=non_negative_int, metavar="K",
                   help="print each token's log-probability and the K most likely alternatives")
    s.set_defaults(func=cmd_generate)
    s = _parser(stages, "prompt", "answer a question with a prompting strategy (few-shot, chain of thought, "
                "self-consistency, tree of thoughts)",
                "acorn prompt runs/speedrun/sft/model \"What is 12 + 7 * 3?\" --strategy self-consistency -n 8",
                description="Answer a question with a prompting strategy, every token from the one engine.\n\n"
                "  zero-shot         the question alone (with --system: a system prompt)\n"
                "  few-shot          --k solved examples from --examples first, chosen --select random or similar\n"
                "  cot               chain of thought: worked examples, or \"Let's think step by step.\"\n"
                "  self-consistency  -n sampled chains of thought, the majority answer\n"
                "  tot               tree of thoughts: --branches steps per partial solution, the --beam best kept,\n"
                "                    --depth steps at most, each scored by the model (--value)\n"
                "Prints the completion and the extracted answer (with self-consistency, the votes).")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory with its tokenizer files")
    s.add_argument("question_text", nargs="?", metavar="QUESTION", help="the question (or --question)")
    s.add_argument("--question", help="the question")
    s.add_argument("--strategy", default="zero-shot", choices=["zero-shot", "few-shot", "cot", "self-consistency", "tot"],
                   help="the prompting strategy (default: zero-shot)")
    s.add_argument("--system", help="a system message (role system, through the chat template)")
    s.add_argument("--examples", metavar="FILE", help="JSONL few-shot pool: {\"input\", \"output\", \"reasoning\"?} rows "
                   "(also question/answer); used by every strategy but zero-shot")
    s.add_argument("--k", type=int, help="examples in the prompt (default: 4, or the pool's size)")
    s.add_argument("--select", default="random", choices=["random", "similar"],
                   help="choose examples at random (seeded by --seed) or by embedding similarity to the question")
    s.add_argument("--raw", action="store_true",
                   help="plain-text Q:/A: prompt for a base model, not the chat template")
    s.add_argument("--numeric", action="store_true", help="the answer is the last number of the completion")
    s.add_argument("--no-cot", action="store_true", help="self-consistency over direct answers, not chains of thought")
    s.add_argument("-n", type=int, help="self-consistency: samples to vote over (default: 5)")
    s.add_argument("--branches", type=int, default=3, help="tot: candidate next steps per partial solution (default: 3)")
    s.add_argument("--beam", type=int, default=2, help="tot: partial solutions kept per level (default: 2)")
    s.add_argument("--depth", type=int, default=4, help="tot: most steps in a solution (default: 4); each step is one sampled line of at most "
                   "--max-new-tokens tokens (default: 48) at --temperature (default: 0.8)")
    s.add_argument("--value", default="likelihood", choices=["likelihood", "judge"],
                   help="tot: score a partial solution by its mean log-probability, or by the model's yes/no "
                   "judgement of it (default: likelihood)")
    s.add_argument("--json", action="store_true", help="print one JSON object: answer, text, votes, samples, examples")
    _add_inference_flags(s)
    s.set_defaults(func=cmd_prompt)
    s = _parser(stages, "chat", "talk with a model in the terminal (/reset forgets, /exit or Ctrl-D quits)",
                "acorn chat runs/sft --system \"You are a helpful assistant.\" --temperature 0.7")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory with its tokenizer files")
    s.add_argument("--system", help="a system message that starts the conversation")
    s.add_argument("--image", action="append", metavar="FILE",
                   help="a picture (PNG, JPEG, GIF, BMP, WEBP) shown with your first message; repeat for several "
                        "(a model that reads images: a LLaVA directory)")
    _add_inference_flags(s)
    s.set_defaults(func=cmd_chat)

    # acorn pretrain
    s = _parser(stages, "pretrain", "pretrain a transformer on prepared token shards (next-token prediction)",
                "acorn pretrain --config configs/micro.yaml --optim.lr 1e-3 --train.max_steps 2000",
                description="Pretrain a transformer on prepared token shards (next-token prediction).\n\n"
                "Settings come from the defaults, then --config FILE (YAML), then --section.key VALUE\n"
                "overrides (listed below). The resolved configuration is saved as config.yaml in the run\n"
                "directory. A run directory that holds a run is refused: --resume continues it.",
                settings="acorn.train.pretrain:PretrainConfig")
    _training_flags(s, cmd_pretrain)

    # acorn sft
    s = _parser(stages, "sft", "supervised fine-tuning on conversations (loss on the assistant's tokens only)",
                "acorn sft --init_from runs/pretrain/model --data runs/world/sft.jsonl --out runs/sft",
                description="Fine-tune a checkpoint on conversations: `messages` JSONL (OpenAI style, tool calls\n"
                "included) or prompt/completion JSONL; `text` rows (plain documents, the loss on every token)\n"
                "mix pretraining documents in (replay: --data chats.jsonl,docs.jsonl). Settings as for\n"
                "`acorn pretrain`: --config FILE and --section.key VALUE overrides (data, out, init_from, epochs, val_fraction, optim, train, eval, lora).\n\n"
                "LoRA: --lora.r 16 --lora.alpha 32 --lora.targets all-linear (or q_proj,v_proj,...) trains adapters\n"
                "on a frozen base and writes RUN/adapter (PEFT's format; merge with `acorn lora merge`);\n"
                "--lora.quantize nf4 stores the frozen base in 4 bits (QLoRA), --lora.rslora true scales by\n"
                "alpha/sqrt(r), --lora.dropout 0.05 drops the adapters' inputs.",
                settings="acorn.train.sft:SFTConfig")
    _training_flags(s, cmd_sft)

    # acorn dpo
    s = _parser(stages, "dpo", "preference optimisation without a reward model: DPO, cDPO, IPO, KTO, ORPO, SimPO",
                "acorn dpo --init_from runs/sft/model --data runs/world/preference.jsonl --loss dpo --beta 0.1",
                description="Tune a chat model on preference pairs (prompt/chosen/rejected JSONL, conversations or "
                "text,\nexplicit or implicit prompt; KTO also takes prompt/completion/label rows) with one of:\n"
                "  --loss dpo    Rafailov et al. 2023; --label_smoothing 0.1 makes it conservative DPO (cDPO)\n"
                "  --loss ipo    Azar et al. 2023 (--beta is its tau)\n"
                "  --loss kto    Ethayarajh et al. 2024 (--desirable_weight, --undesirable_weight)\n"
                "  --loss orpo   Hong et al. 2024, no reference model (--beta is its lambda)\n"
                "  --loss simpo  Meng et al. 2024, no reference model (--simpo_gamma)\n"
                "The reference log-probabilities are computed once before training (the starting model, the "
                "base\nwithout adapters under --lora.r, or --reference CKPT). Settings as for `acorn sft`: "
                "--config FILE and\n--section.key VALUE overrides (data, eval_data, out, init_from, reference, loss, "
                "beta, label_smoothing,\nsimpo_gamma, desirable_weight, undesirable_weight, epochs, val_fraction, "
                "optim, train, eval, lora).\nmetrics.jsonl logs TRL's rewards/chosen, rewards/rejected, "
                "rewards/margins, rewards/accuracies.",
                settings="acorn.train.prefs:PrefsConfig")
    _training_flags(s, cmd_dpo)

    # acorn reward ...
    rw = _parser(stages, "reward", "reward models: train one on preference pairs, score texts with one",
                 "acorn reward train --init_from runs/sft/model --data runs/world/preference.jsonl --out runs/reward")
    rsub = rw.add_subparsers(dest="cmd", metavar="COMMAND")
    rsub.required = True
    s = _parser(rsub, "train", "fit a scalar head on the transformer to preference pairs (Bradley-Terry, optional "
                "margin); writes a transformers XForSequenceClassification checkpoint and the held-out accuracy",
                "acorn reward train --init_from runs/sft/model --data runs/world/preference.jsonl --out runs/reward",
                description="Fit a reward model (the checkpoint's backbone + a linear d_model -> 1 read at the last "
                "token) to\npreference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) "
                "(margin from\na row's 'margin' field). RUN/model is a LlamaForSequenceClassification-style "
                "checkpoint (num_labels 1)\nthat transformers loads with the same scores; report.md gives the "
                "held-out pair accuracy. Settings:\n--config FILE and --section.key VALUE overrides (data, eval_data, "
                "out, init_from, margin,\ncenter_rewards_coefficient, epochs, val_fraction, optim, train, eval).",
                settings="acorn.train.reward:RewardConfig")
    _training_flags(s, cmd_reward_train)
    s = _parser(rsub, "score", "score texts, conversations or preference pairs with a reward model",
                "acorn reward score runs/reward/model runs/world/eval/preference.jsonl --out scored.jsonl")
    s.add_argument("model", help="a reward model directory (RUN/model of `acorn reward train`)")
    s.add_argument("data", help="JSONL(.gz): pairs (chosen/rejected) or rows with text, messages, or prompt+completion")
    s.add_argument("--out", help="write the rows with their scores here (default: print the scores)")
    s.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default: 16)")
    s.add_argument("--tokenizer", help="refuse unless this tokenizer (e.g. the policy checkpoint's) is the reward "
                   "model's: scores of another vocabulary's ids mean nothing")
    s.set_defaults(func=cmd_reward_score)

    # acorn grpo, acorn ppo
    _rl_commands(stages)

    # acorn rag ...
    rg = _parser(stages, "rag", "retrieval-augmented generation: index documents, ask with citations, evaluate",
                 "acorn rag index WORLD/knowledge_base.jsonl --out runs/index --embedder runs/embed/model")
    rsub = rg.add_subparsers(dest="cmd", metavar="COMMAND")
    rsub.required = True
    s = _parser(rsub, "index", "chunk and embed documents (.txt, .md, .jsonl with \"text\") into an index directory",
                "acorn rag index notes/ WORLD/knowledge_base.jsonl --out runs/index --embedder runs/embed/model",
                description="Chunk documents, embed the chunks and write an index directory (FAISS vectors, chunk\n"
                "texts with source, title and character offsets; BM25 is built from them when it loads).\n"
                "Empty or unreadable documents are named, skipped and counted. --add appends documents to\n"
                "an existing index with its own embedder and chunking.")
    s.add_argument("docs", nargs="+", help="text, Markdown or JSONL files, or directories of them")
    s.add_argument("--out", required=True, help="the index directory (replaced whole, never half-written)")
    s.add_argument("--embedder", help="an Acorn checkpoint (e.g. `acorn embed train`'s RUN/model) or a local "
                   "sentence-transformers directory (default with --add: the index's)")
    s.add_argument("--chunk-by", default="tokens", choices=["tokens", "paragraphs", "sentences"],
                   help="windows of tokens (default), paragraphs, or groups of sentences")
    s.add_argument("--chunk-size", type=int, default=128, help="tokens (or sentences) per chunk (default: 128)")
    s.add_argument("--chunk-overlap", type=int, default=16, help="tokens (or sentences) shared by neighbouring "
                   "chunks (default: 16)")
    s.add_argument("--metric", default="cosine", choices=["cosine", "dot", "l2"], help="vector similarity "
                   "(default: cosine)")
    s.add_argument("--kind", default="exact", choices=["exact", "hnsw"], help="exact (flat) or HNSW (approximate)")
    s.add_argument("--add", action="store_true", help="append to the index in --out instead of replacing it")
    s.set_defaults(func=cmd_rag_index)
    for name, help_, example in (
            ("ask", "answer a question from the index, citing the chunks used (without --model: the chunks found)",
             "acorn rag ask runs/index --model runs/sft/model \"Where was Kelvo Dranith born?\""),
            ("eval", "retrieval recall@1/@5 and MRR (dense, BM25, hybrid); with --model exact match, faithfulness",
             "acorn rag eval runs/index --model runs/sft/model --questions WORLD/eval/unknown_qa.jsonl")):
        s = _parser(rsub, name, help_, example)
        s.add_argument("index", help="an index directory made by `acorn rag index`")
        if name == "ask":
            s.add_argument("question", help="the question")
            s.add_argument("--json", action="store_true", help="print the answer, citations and passages as JSON")
        else:
            s.add_argument("--questions", required=True, help="JSONL: question, answer (or kb_answer), relevant "
                           "document/chunk ids (or kb_id)")
            s.add_argument("--limit", type=int, help="only the first N questions")
            s.add_argument("--out", help="write the full results (with examples) to this JSON file")
        s.add_argument("--model", help="a chat checkpoint directory")
        s.add_argument("--embedder", help="the index's embedder directory (default: the path the index records)")
        s.add_argument("-k", "--k", type=int, default=3, help="chunks put into the prompt (default: 3)")
        s.add_argument("--mode", default="hybrid", choices=["dense", "bm25", "hybrid"], help="retrieval "
                       "(default: hybrid, reciprocal rank fusion of dense and BM25)")
        s.add_argument("--max-new-tokens", type=int, default=32, help="most tokens in an answer (default: 32)")
        s.add_argument("--rerank", type=non_negative_int, default=0, metavar="N", help="retrieve N chunks and "
                       "reorder them by the chat model's judgement before keeping k (needs --model; default: 0, off)")
        s.add_argument("--rerank-method", default="yes", choices=["yes", "likelihood"], help="the reranking "
                       "score: log-odds of \"yes\" to \"does the passage answer the question?\" (default), or "
                       "the question's log-likelihood after the passage")
        _add_eval_injection_args(s)  # --layout, --spotlight: the prompt-injection defences of the prompt
        s.set_defaults(func=cmd_rag_ask if name == "ask" else cmd_rag_eval)

    # acorn embed train
    em = _parser(stages, "embed", "train a dedicated embedding model", "acorn embed train --init_from runs/pretrain/model "
                 "--data runs/world --out runs/embed")
    esub = em.add_subparsers(dest="cmd", metavar="COMMAND")
    esub.required = True
    s = _parser(esub, "train", "contrastive fine-tuning (InfoNCE, in-batch negatives, mean pooling) on the world's "
                "question/passage pairs", "acorn embed train --init_from runs/pretrain/model --data runs/world "
                "--out runs/embed --train.max_steps 300",
                description="Fine-tune a checkpoint into an embedding model: a question and the passage that answers\n"
                "it are pulled together, the other passages of the batch pushed away (InfoNCE, temperature\n"
                "--temperature). Pairs from a generated world (never its unknown_eval people, which measure\n"
                "it). Settings as for `acorn sft`: --config FILE and --section.key VALUE overrides.",
                settings="acorn.train.embed:EmbedConfig")
    _training_flags(s, cmd_embed_train)

    # acorn clip ...
    cl = _parser(stages, "clip", "train and use a CLIP image-caption model on the world's pictures",
                 "acorn clip train --world runs/world --out runs/clip")
    clsub = cl.add_subparsers(dest="cmd", metavar="COMMAND")
    clsub.required = True
    s = _parser(clsub, "train", "contrastive training of a vision transformer and a caption encoder (CLIP: symmetric "
                "InfoNCE, learned temperature) on the world's pictures",
                "acorn clip train --world runs/world --out runs/clip --train.max_steps 1200",
                description="Train CLIP (Radford et al. 2021) on the pictures of a world made with `acorn data world\n"
                "--images`: a vision transformer and a causal caption encoder learn one space in which each\n"
                "picture is nearest its own caption. Evaluations report zero-shot accuracy on the eval\n"
                "pictures per question kind (count, colour, shape, number, badge name). Writes RUN/model, a\n"
                "transformers CLIPModel directory. Settings as for `acorn sft`: --config FILE and\n"
                "--section.key VALUE overrides; --train.max_steps sets the steps.",
                settings="acorn.train.clip:ClipConfig")
    _training_flags(s, cmd_clip_train)
    s = _parser(clsub, "classify", "zero-shot classification: the label (a caption) nearest each image",
                "acorn clip classify runs/clip/model picture.png --label \"a picture of one red circle\" "
                "--label \"a picture of two red circles\"")
    s.add_argument("model", help="a CLIP checkpoint directory (`acorn clip train`'s RUN/model)")
    s.add_argument("images", nargs="+", help="image files (PNG, JPEG, GIF, BMP or WebP)")
    s.add_argument("--label", action="append", help="a label, written as a caption (repeatable)")
    s.add_argument("--labels-file", help="a text file of labels, one per line")
    s.add_argument("--top", type=positive_int, default=1, help="labels to print per image, best first (default: 1)")
    s.set_defaults(func=cmd_clip_classify)
    s = _parser(clsub, "eval", "zero-shot accuracy on a world's pictures per question kind, against chance",
                "acorn clip eval runs/clip/model --world runs/world")
    s.add_argument("model", help="a CLIP checkpoint directory (`acorn clip train`'s RUN/model)")
    s.add_argument("--world", required=True, help="a world with pictures (`acorn data world --images`)")
    s.add_argument("--split", default="eval", choices=["eval", "train"], help="which pictures (default: eval)")
    s.set_defaults(func=cmd_clip_eval)

    # acorn vlm ...
    vl = _parser(stages, "vlm", "a chat model that reads pictures (LLaVA): train it in two stages, evaluate it",
                 "acorn vlm train --stage 1 --clip runs/clip/model --model runs/sft/model --world runs/world "
                 "--out runs/vlm1")
    vsub = vl.add_subparsers(dest="cmd", metavar="COMMAND")
    vsub.required = True
    s = _parser(vsub, "train", "LLaVA's stages: 1 aligns a projector on captions, 2 tunes it and the decoder on "
                "questions about the pictures",
                "acorn vlm train --stage 2 --init_from runs/vlm1/model --world runs/world --out runs/vlm2",
                description="Join a CLIP vision encoder (`acorn clip train`) and a chat model (`acorn sft`) with a\n"
                "projector (Liu et al. 2023), and train on the pictures of a world made with `acorn data world\n"
                "--images`. Stage 1 (--stage 1 --clip DIR --model DIR): the projector alone learns to describe\n"
                "the pictures (their captions); encoder and decoder frozen. Stage 2 (--stage 2 --init_from\n"
                "RUN1/model): the projector and the decoder learn to answer the pictures' questions (count,\n"
                "colour, shape, number, badge name, the badge's person's facts); --train_encoder true trains\n"
                "the encoder too. --images caption trains the caption-in-prompt control (a text-only --model\n"
                "given each picture's caption in place of the image). The loss is on the answers only; writes\n"
                "RUN/model (transformers' LLaVA layout). Settings as for `acorn sft`: --config FILE and\n"
                "--section.key VALUE overrides.",
                settings="acorn.train.vlm:VLMConfig")
    _training_flags(s, cmd_vlm_train)
    s = _parser(vsub, "eval", "accuracy per question kind on a world's eval pictures, against chance; tokens per "
                "image and their prefill cost",
                "acorn vlm eval runs/vlm2/model --world runs/world",
                description="Ask every question of the world's eval pictures (count, colour, shape, number, badge\n"
                "name, badge -> person -> fact; badges split by whether the name was on a training badge) and\n"
                "score the answer as greedy decoding would give it: right when every token of the answer and\n"
                "the end of the turn is the model's top choice after the ones before. A VLM (`acorn vlm train`'s\n"
                "RUN/model) sees the picture; a text-only chat model is given the picture's caption in its\n"
                "place (the caption-in-prompt control). Also: chance per kind, tokens per image, and the\n"
                "prefill time of a question's prompt with the image against with the caption (median).")
    s.add_argument("model", help="a VLM (`acorn vlm train`'s RUN/model) or a text-only chat model directory")
    s.add_argument("--world", required=True, help="a world with pictures (`acorn data world --images`)")
    s.add_argument("--split", default="eval", choices=["eval", "train"], help="which pictures (default: eval)")
    s.add_argument("--limit", type=positive_int, default=None, help="at most this many questions per kind")
    s.add_argument("--batch-size", type=positive_int, default=32, help="conversations per forward (default: 32)")
    s.add_argument("--prefill-runs", type=_int_at_least(0), default=7,
                   help="timed prefills per prompt, median reported; 0: skip the timing (default: 7)")
    s.add_argument("--out", help="also write the results as JSON here")
    s.set_defaults(func=cmd_vlm_eval)

    # acorn tokens count
    tc = _parser(stages, "tokens", "count tokens and estimate API cost", "acorn tokens count notes.txt --price-per-million 0.5")
    csub = tc.add_subparsers(dest="cmd", metavar="COMMAND")
    csub.required = True
    s = _parser(csub, "count", "count the tokens of files and estimate their cost",
                "acorn tokens count notes.txt --tokenizer gpt2 --price-per-million 0.5")
    s.add_argument("files", nargs="+", help="text files, directories or globs")
    s.add_argument("--tokenizer", default="gpt2", help="tokenizer directory or file (default: the built-in gpt2)")
    s.add_argument("--price-per-million", type=_positive_float, help="price in dollars per million tokens")
    s.add_argument("--text-field", default="text", help="field holding the text in .jsonl files, which is what "
                   "is counted (default: text)")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="bytes that are not UTF-8: stop with the file and place, or replace them with U+FFFD "
                   "(default: strict)")
    s.set_defaults(func=cmd_tokens_count)
    # acorn watermark detect
    wm = _parser(stages, "watermark", "detect the green-list watermark (Kirchenbauer et al. 2023) in text",
                 "acorn watermark detect essay.txt --tokenizer runs/ckpt --key SECRET")
    wsub = wm.add_subparsers(dest="cmd", metavar="COMMAND")
    wsub.required = True
    s = _parser(wsub, "detect", "z-score, p-value and verdict for a text file; needs the key and tokenizer, not "
                "the model", "acorn watermark detect essay.txt --tokenizer runs/ckpt --key SECRET --z 4")
    s.add_argument("file", help="UTF-8 text file to test")
    s.add_argument("--tokenizer", required=True, help="tokenizer directory or file, or a checkpoint directory")
    s.add_argument("--key", required=True, help="the watermark's secret key (the Python API's key, as a string)")
    s.add_argument("--gamma", type=_fraction(low_open=True), default=0.25,
                   help="green fraction used when generating (default: 0.25)")
    s.add_argument("--z", type=float, default=4.0, help="z-score above which the text is watermarked (default: 4)")
    s.add_argument("--context", type=positive_int, default=1, help="tokens hashed into the seed (default: 1)")
    s.add_argument("--scheme", default="lefthash", choices=["lefthash", "minhash"], help="seeding scheme for --context > 1")
    s.add_argument("--errors", default="strict", choices=["strict", "replace"],
                   help="bytes that are not UTF-8: stop, or replace them with U+FFFD (default: strict)")
    s.set_defaults(func=cmd_watermark_detect)

    # acorn serve
    s = _parser(stages, "serve", "serve a model over HTTP: OpenAI and Anthropic APIs, /metrics, a chat page",
                "acorn serve runs/sft --port 8000 --api-key SECRET")
    s.add_argument("checkpoint", help="a Hugging Face checkpoint directory with its tokenizer files")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=port, default=8000, help="port, 1 to 65535 (default: 8000)")
    s.add_argument("--model-name", help="the model's name in the API (default: the checkpoint directory's name)")
    s.add_argument("--api-key", action="append", metavar="KEY", help="require this key (repeatable; default: "
                   "$ACORN_API_KEY if set, else no key)")
    s.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="let web pages from this origin call "
                   "the API, e.g. http://localhost:3000 (repeatable)")
    s.add_argument("--max-tokens-cap", type=positive_int, default=4096, help="most tokens one request may ask for (default: 4096)")
    s.add_argument("--max-pending", type=non_negative_int, default=256,
                   help="waiting requests beyond this get 429 (default: 256)")
    s.add_argument("--kv-cache-memory-mb", type=positive_int, help="memory for the paged KV cache (default: the engine's)")
    s.add_argument("--compile-decode", action="store_true", help=COMPILE_DECODE_HELP)
    s.add_argument("--int8-head", action="store_true", help=INT8_HEAD_HELP)
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    s.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's)")
    s.add_argument("--lora", action="append", metavar="NAME=DIR", help="also serve this LoRA adapter (a PEFT "
                   "directory) as model NAME; requests for different adapters share a batch (repeatable)")
    s.add_argument("--rag", metavar="INDEX", help="answer each chat turn from this index (`acorn rag index`): the "
                   "passages go into the prompt and the reply lists them as `sources`")
    s.add_argument("--rag-embedder", help="the index's embedder directory (default: the path the index records)")
    s.add_argument("--rag-k", type=int, default=3, help="passages per question (default: 3)")
    s.add_argument("--rag-mode", default="hybrid", choices=["dense", "bm25", "hybrid"], help="retrieval (default: hybrid)")
    s.add_argument("--tools", help="run these built-in tools for POST /v1/agent and the chat page's tools switch: "
                   "comma-separated, of calculator, python, search, lookup (default: none)")
    s.add_argument("--tools-index", metavar="INDEX", help="the search tool's index (from `acorn rag index`)")
    s.add_argument("--tools-world", metavar="DIR", help="the lookup tool's world (from `acorn data world`)")
    s.set_defaults(func=cmd_serve)
    _add_agent_parser(stages)
    _add_scaling_parser(stages)
    _add_synth_parser(stages)
    return p


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("acorn")
    except Exception:
        return "unknown"


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"acorn: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if getattr(args, "compare", "unset") is None:
        args.compare = ["gpt2"]
    try:
        args.func(args)
    except AcornError as e:
        hint = " or pass --errors replace" if isinstance(e, NotUTF8) and getattr(args, "errors", None) == "strict" else ""
        print(f"acorn: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acorn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the machine's answer, not a bug: permission denied, disk full, a read-only disk
        print(f"acorn: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    return 0


_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.ENOSPC: "free some disk space or choose another --out on a disk with room",
    errno.EIO: "check that the disk has room and works, or choose another --out",
    errno.EDQUOT: "free some space in your quota or choose another --out",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "it is a directory; give a file",
    errno.EEXIST: "it is in the way; remove it or choose another path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EADDRINUSE: "another process uses that port; choose another --port",
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e)
    return f"{where + ': ' if where else ''}{what}; {_OS_FIXES.get(e.errno, 'check the path and the disk')}"


# -------------------------------------------------------------------- acorn scaling
def _add_scaling_parser(stages) -> None:
    sc = _parser(stages, "scaling", "scaling laws and emergence: IsoFLOP sweeps, Chinchilla fits, held-out prediction",
                 "acorn scaling sweep --out runs/scaling && acorn scaling fit runs/scaling && "
                 "acorn scaling emergence runs/scaling")
    ssub = sc.add_subparsers(dest="cmd", metavar="COMMAND")
    ssub.required = True
    s = _parser(ssub, "sweep", "train a grid of model sizes (one depth dial) at several compute budgets (IsoFLOP)",
                "acorn scaling sweep --out runs/scaling --preset cpu --shard 0/2",
                description="Train every (budget, size) of an IsoFLOP grid as an ordinary pretraining run in\n"
                "OUT/runs/NAME. Sizes are depths; width, heads and learning rate are derived from the\n"
                "depth. Each run trains on D = C / (6 N) tokens (N: total parameters; non-embedding N is\n"
                "recorded too) with a cosine schedule spanning exactly those tokens; a run too short for\n"
                "the preset's batch gets a smaller one. Runs outside the preset's tokens-per-parameter\n"
                "window, or repeating the data too often, are left out and listed in OUT/sweep.json.\n"
                "A killed sweep continues where it stopped when run again.\n"
                "Presets: cpu (12 runs on the default world; 5.4 min with fit and emergence on 2 idle\n"
                "cores), gpu (18 runs on the large world; 4.7 min of training on one H200).")
    s.add_argument("--out", required=True, help="the sweep directory (sweep.json, runs/NAME/)")
    s.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help="grid, shapes and batch (default: cpu)")
    s.add_argument("--data", help="prepared token shards (`acorn data prepare`; default: make the preset's world, "
                   "tokenizer and shards in OUT)")
    s.add_argument("--budgets", help="comma-separated compute budgets in FLOPs, e.g. 1e12,3e12 (default: the preset's)")
    s.add_argument("--sizes", help="comma-separated depths, e.g. 1,2,3,4 (default: the preset's)")
    s.add_argument("--shard", default="0/1", help="i/n: train only the i-th of n balanced shares of the runs, so n "
                   "processes or machines split the sweep (default: 0/1, all)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="weights and data order of every run (default: 0)")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute precision (default: auto, bf16 where fast)")
    s.set_defaults(func=cmd_scaling_sweep)
    s = _parser(ssub, "fit", "fit scaling laws to a sweep: Approach 2 (IsoFLOP parabolas) and 3 (L = E + A/N^a + B/D^b)",
                "acorn scaling fit runs/scaling --n total",
                description="Approach 2: a parabola in log N per budget, whose minima give N*(C), D*(C) and\n"
                "tokens per parameter as power laws. Approach 3: L(N, D) = E + A/N^alpha + B/D^beta fitted\n"
                "by L-BFGS on the Huber loss (delta 1e-3) of log residuals from a grid of starts, with\n"
                "bootstrap intervals (Besiroglu et al. 2024). The largest budget is held out and its\n"
                "losses predicted. Writes OUT/fit.json and the plots OUT/scaling-*.png.")
    s.add_argument("sweep", help="a sweep directory")
    s.add_argument("--n", default="total", choices=["total", "non_embedding"],
                   help="count parameters with or without the embeddings (default: total)")
    s.add_argument("--bootstrap", type=non_negative_int, default=200, help="bootstrap resamples (default: 200)")
    s.add_argument("--no-holdout", action="store_true", help="fit every budget (default: hold out the largest)")
    s.set_defaults(func=cmd_scaling_fit)
    s = _parser(ssub, "predict", "compute-optimal and inference-aware model sizes from a sweep's fit",
                "acorn scaling predict runs/scaling --compute 1e15 --inference-tokens 1e10",
                description="From OUT/fit.json (Approach 3): the compute-optimal N and D for a budget and their\n"
                "loss; with --inference-tokens, the model that reaches the same loss at the least total\n"
                "cost of training (6ND) and serving (2N per token; Sardana et al. 2023).")
    s.add_argument("sweep", help="a sweep directory that `acorn scaling fit` has fitted")
    s.add_argument("--compute", type=_positive_float, required=True, help="training budget in FLOPs (6ND)")
    s.add_argument("--inference-tokens", type=_positive_float, help="tokens the model will serve in its lifetime")
    s.add_argument("--n", default="total", choices=["total", "non_embedding"], help="which fit (default: total)")
    s.set_defaults(func=cmd_scaling_predict)
    s = _parser(ssub, "emergence", "every sweep model on the world's tasks under sharp and smooth metrics",
                "acorn scaling emergence runs/scaling --world runs/scaling/world",
                description="Each finished run's model answers the world's arithmetic (by digits), fact cloze\n"
                "and in-context-learning items. Scored by exact match (sharp) and by the answer's\n"
                "log-probability, token edit distance and, for ICL, the Brier score (smooth), against\n"
                "compute. Writes OUT/emergence.json and OUT/scaling-emergence.png.")
    s.add_argument("sweep", help="a sweep directory")
    s.add_argument("--world", help="the world the sweep trained on (default: the one its data was prepared from)")
    s.add_argument("--limit", type=positive_int, help="items per task (default: all)")
    s.set_defaults(func=cmd_scaling_emergence)


def _csv_numbers(text: str | None, flag: str, kind=float) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AcornError(f"{flag} {text!r}: give comma-separated numbers, e.g. "
                         f"{'1,2,3' if kind is int else '1e12,3e12'}") from None
    if not values:
        raise AcornError(f"{flag}: give at least one value")
    return values


def cmd_scaling_sweep(args) -> None:
    from acorn.scaling.sweep import parse_shard, sweep

    res = sweep(args.out, args.preset, data=args.data, budgets=_csv_numbers(args.budgets, "--budgets"),
                depths=_csv_numbers(args.sizes, "--sizes", int), shard=parse_shard(args.shard), seed=args.seed,
                dtype=args.dtype)
    print(f"sweep: trained {len(res.ran)} runs in {res.seconds / 60:.1f} min"
          + (f"; {len(res.skipped_done)} had finished before" if res.skipped_done else "") + f"; next: acorn scaling fit {args.out}")


def cmd_scaling_fit(args) -> None:
    from acorn.scaling.report import fit_sweep

    print(fit_sweep(args.sweep, n_key=args.n, bootstrap=args.bootstrap, holdout=not args.no_holdout))


def cmd_scaling_predict(args) -> None:
    from acorn.scaling.predict import predict_from_sweep

    print(predict_from_sweep(args.sweep, args.compute, inference_tokens=args.inference_tokens, n_key=args.n))


def cmd_scaling_emergence(args) -> None:
    from acorn.scaling.report import emergence_sweep

    print(emergence_sweep(args.sweep, world=args.world, limit=args.limit))


if __name__ == "__main__":
    raise SystemExit(main())
