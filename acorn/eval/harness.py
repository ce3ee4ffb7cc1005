"""The evaluation harness: tasks -> requests -> the engine -> scores.

Each task (acorn.eval.tasks) turns its documents into requests of one of
lm-evaluation-harness's three kinds (lm_eval/api/model.py, LM), which the one
engine answers:

  loglikelihood          (context, continuation) -> log P(continuation | context)
                         and whether greedy decoding produces it:
                         Engine.loglikelihood, one context shared by all of
                         a document's choices
  loglikelihood_rolling  a whole text -> its log-likelihood, scored in windows
                         of the model's context, each conditioned on the token
                         before it (lm_eval.utils.get_rolling_token_windows
                         with context_len=1)
  generate_until         a context -> greedy text until a stop string
                         (Engine.generate)
  code_exec              a context -> `repeats` sampled texts until a stop
                         string (one Engine.generate with n); each program
                         (the task's `program` template) runs in the
                         bubblewrap sandbox (acorn.sandbox); pass@k by Chen et
                         al.'s unbiased estimator

Tokenisation follows lm-eval's HFLM so the numbers agree on the same model
(lm_eval/api/model.py TemplateLM._encode_pair, lm_eval/models/huggingface.py):
the context's trailing spaces move to the continuation; the continuation's
ids are those of context + continuation after the context's ids; an empty
context becomes the BOS token (or EOS without one); a BOS token starts each
text exactly when add_bos says so (by default: when the checkpoint's
tokenizer adds one in transformers, which is what HFLM gets); a context too
long for the model is cut from the left (counted in the results as
`truncated`).

Under torchrun (WORLD_SIZE > 1) each process scores every world-th document
from its rank (lm-eval's split), and the per-document samples are gathered
to every process before the metrics, so the numbers are those of one
process. Sampling seeds depend on the document's index, not on the process
or batch that generates it.

A task with `chat: true` (the built-in world's) is asked as a model is used
as an assistant instead: the prompt is a user's turn through the chat
template, a multiple-choice continuation is scored after the template's
assistant header, generation stops at the end of the assistant's turn, and
a tool call the reply makes is executed and answered once (the registered
tools of acorn.eval.registry).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from acorn.errors import AcornError
from acorn.eval import metrics, registry
from acorn.eval.tasks import Task, fewshot_examples, get_tasks, read_docs, render, resolve
from acorn.eval.tasks import data_dir as find_data_dir


def tokenizer_adds_bos(checkpoint: str | Path) -> bool:
    """Whether transformers' tokenizer for this checkpoint starts each text
    with BOS: tokenizer_config.json's add_bos_token, else whether
    tokenizer.json's post-processor template puts the BOS token first."""
    folder = Path(checkpoint)
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if isinstance(cfg.get("add_bos_token"), bool):
        return cfg["add_bos_token"]
    try:
        post = json.loads((folder / "tokenizer.json").read_text()).get("post_processor") or {}
    except (OSError, ValueError):
        return False
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for p in procs:
        single = p.get("single") or []
        if p.get("type") == "TemplateProcessing" and single and "SpecialToken" in single[0]:
            return True
    return False


class Requests:
    """Tokenisation and truncation of requests as lm-eval's HFLM does them."""

    def __init__(self, engine, add_bos: bool):
        self.engine, self.tok, self.add_bos = engine, engine.tokenizer, add_bos
        self.max_len = engine.model.config.max_seq_len
        bos, eos = self.tok.bos_id, self.tok.eos_id
        self.prefix = bos if bos is not None else eos  # what an empty context becomes
        if add_bos and bos is None:
            raise AcornError("add_bos is set but the tokenizer has no BOS token")

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text)
        return [self.tok.bos_id, *ids] if self.add_bos else ids

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok.encode(continuation)
            if self.prefix is None:
                raise AcornError("an empty context needs a BOS or EOS token to condition on; the tokenizer has none")
            return ([self.prefix], cont) if cont[0] != self.prefix else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]

    def fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], bool]:
        """The context cut from the left so context + continuation is at most
        the model's context + 1 tokens (the last token is only predicted)."""
        room = self.max_len + 1 - len(cont)
        if room < 1:
            raise AcornError(f"a continuation of {len(cont)} tokens does not fit the model's context of {self.max_len}")
        return (ctx[-room:], True) if len(ctx) > room else (ctx, False)

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """Windows of at most max_len predicted tokens that cover the text
        once (lm_eval.utils.get_rolling_token_windows with context_len=1, then
        make_disjoint_window): the first after the BOS/EOS prefix, each next
        one after the token before it, and the last, shorter one after as
        many earlier tokens as fill the model's context."""
        ids = self.encode(text)
        if self.prefix is None:
            raise AcornError("rolling log-likelihood needs a BOS or EOS token to start from; the tokenizer has none")
        L = self.max_len
        windows = [([self.prefix], ids[:L])] if ids else []
        for start in range(L, len(ids), L):
            end = min(start + L, len(ids))
            windows.append((ids[end - L - 1:start], ids[start:end]))
        return windows


def current_processes() -> tuple[int, int]:
    """(rank, world size): of torch.distributed when it is running, else 1 process."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def start_processes() -> tuple[int, int]:
    """Join the torchrun group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        from acorn.hardware import resolve_device
        from acorn.train.run import init_distributed

        init_distributed(resolve_device("auto"))
    return current_processes()


def shard(n_docs: int, rank: int, world: int) -> list[int]:
    """The documents one process scores: every world-th, from its rank (as
    lm-eval splits a task across processes)."""
    return list(range(rank, n_docs, world))


def gather(samples: list[dict], world: int) -> list[dict]:
    """Every process's samples, on every process, in document order."""
    if world > 1:
        import torch.distributed as tdist

        parts: list = [None] * world
        tdist.all_gather_object(parts, samples)
        samples = [s for part in parts for s in part]
    return sorted(samples, key=lambda s: s["doc_id"])


def summarize(task: Task, samples: list[dict]) -> dict:
    """A task's metrics from its documents' samples (all of them, or a
    subset: the clean documents of a contamination check)."""
    result = {"n": len(samples), "truncated": sum(bool(s["truncated"]) for s in samples)}
    for m in task.metric_names:
        values = [s["scores"][m] for s in samples]
        result[m] = metrics.aggregate(m, values)
        err = metrics.stderr(m, values)
        if err is not None:
            result[f"{m}_stderr"] = err
    return result


def run_task(engine, task: Task, *, num_fewshot: int | None = None, limit: int | None = None,
             root: str | Path | None = None, add_bos: bool = False, batch_tokens: int = 8192,
             progress: bool = True, processes: tuple[int, int] | None = None) -> tuple[dict, list[dict]]:
    """One task: (its metrics, one sample per document). processes: (rank,
    world size) to score this process's share and gather the rest (default:
    torch.distributed's, or one process). With subsets, the metrics per label
    are under result["subsets"][label]."""
    from tqdm import tqdm

    rank, world = processes or current_processes()
    root = find_data_dir(root)
    path = resolve(task, task.data, root)
    all_docs = read_docs(path)
    docs = all_docs[:limit] if limit else all_docs
    k = task.num_fewshot if num_fewshot is None else num_fewshot
    if task.fewshot_data is None:
        pool, same = all_docs, True
    else:
        fs_path = resolve(task, task.fewshot_data, root)
        pool, same = (all_docs, True) if fs_path == path else (read_docs(fs_path), False)
    # The few-shot draws run over all documents in order (one seeded RNG), then each process takes its share.
    shots = fewshot_examples(task, docs, pool, k, same)
    ids = shard(len(docs), rank, world)
    mine = [docs[i] for i in ids]
    contexts = [task.context(docs[i], shots[i]) for i in ids]
    if task.add_bos is not None:  # the task's own setting, where the tokenizer has a BOS
        add_bos = task.add_bos and engine.tokenizer.bos_id is not None
    req = Requests(engine, add_bos)
    kind = task.output_type
    bar = tqdm(desc=task.task, unit="req", disable=not progress or rank != 0, leave=False)
    try:
        if kind == "generate_until":
            samples = _generate(engine, task, mine, contexts, req, bar, ids)
        elif kind == "code_exec":
            samples = _code_exec(engine, task, mine, contexts, req, bar, ids)
        else:
            samples = _loglikelihood(engine, task, mine, contexts, req, bar, batch_tokens)
    finally:
        bar.close()
    for s, i in zip(samples, ids):
        s["doc_id"] = i
    samples = gather(samples, world)
    for sample in samples:  # registered metrics read the document and its sample
        for m in task.metric_names:
            if m not in sample["scores"] and m in registry.METRICS:
                sample["scores"][m] = registry.METRICS[m](docs[sample["doc_id"]], sample)
    result = summarize(task, samples)
    result = {"n": result.pop("n"), "num_fewshot": k, **result}
    if task.truncation == "skip":
        result["skipped"] = sum(bool(s.get("skipped")) for s in samples)
    if task.subsets:
        labels = [task.subset_labels(docs[s["doc_id"]]) for s in samples]
        groups: dict[str, list[dict]] = {}  # each template's labels in order of appearance, template by template
        for j in range(len(task.subsets)):
            for doc_labels, sample in zip(labels, samples):
                groups.setdefault(doc_labels[j], []).append(sample)
        result["subsets"] = {label: {"n": len(g), **_aggregate(task.metric_names, g)} for label, g in groups.items()}
    return result, samples


def _aggregate(names: list[str], samples: list[dict]) -> dict:
    out = {}
    for m in names:
        values = [s["scores"][m] for s in samples]
        out[m] = metrics.aggregate(m, values)
        err = metrics.stderr(m, values)
        if err is not None:
            out[f"{m}_stderr"] = err
    return out


def _chat_prompt(engine, task: Task, text: str) -> list[int]:
    """The document as a user's turn, rendered with the chat template (the
    task's tools in its system prompt), ending at the assistant's header."""
    schemas = [registry.tool(t).schema for t in task.tools] or None
    return engine.chat_prompt([{"role": "user", "content": text}], tools=schemas)


def _loglikelihood(engine, task, docs, contexts, req: Requests, bar, batch_tokens) -> list[dict]:
    kind = task.output_type
    requests, owners = [], []  # (context ids, [continuation ids]) and the document each came from
    truncated = [False] * len(docs)
    conts_text = []
    for i, (doc, ctx_text) in enumerate(zip(docs, contexts)):
        if kind == "multiple_choice":
            conts = [task.target_delimiter + c for c in task.choices(doc)]
        elif kind == "loglikelihood":
            conts = [task.target_text(doc)]
        else:
            conts = []
        conts_text.append(conts)
        if kind == "loglikelihood_rolling":
            windows = req.rolling_windows(task.target_text(doc))
            requests += [(ctx, [cont]) for ctx, cont in windows]
            owners += [i] * len(windows)
            continue
        # Choices whose contexts are cut alike share one request (all of them, unless too long).
        chat_ids = _chat_prompt(engine, task, ctx_text) if task.chat else None
        for cont in conts:
            # After a chat template the continuation is the reply's own tokens
            # (Engine.score on a prompt of ids); else tokenised as lm-eval does.
            ctx, cont_ids = (chat_ids, req.tok.encode(cont)) if task.chat else req.pair(ctx_text, cont)
            ctx, cut = req.fit(ctx, cont_ids)
            truncated[i] |= cut
            if requests and owners[-1] == i and requests[-1][0] == ctx:
                requests[-1][1].append(cont_ids)
            else:
                requests.append((ctx, [cont_ids]))
                owners.append(i)
    bar.total = sum(len(c) for _, c in requests)
    answers = engine.loglikelihood(requests, batch_tokens=batch_tokens, progress=bar.update)
    per_doc: list[list[tuple[float, bool]]] = [[] for _ in docs]
    for i, a in zip(owners, answers):
        per_doc[i].extend(a)
    samples = []
    for i, (doc, ctx_text) in enumerate(zip(docs, contexts)):
        lls = [ll for ll, _ in per_doc[i]]
        sample = {"doc_id": i, "prompt": ctx_text, "target": None, "output": lls, "truncated": truncated[i]}
        if kind == "multiple_choice":
            gold = task.target(doc)
            if not isinstance(gold, int):
                gold = task.choices(doc).index(gold)
            sample.update(target=gold, choices=conts_text[i],
                          scores=metrics.multiple_choice(lls, task.choices(doc), gold))
        elif kind == "loglikelihood":
            sample.update(target=conts_text[i][0], output=lls[0],
                          scores={"perplexity": lls[0], "acc": float(per_doc[i][0][1])})
        else:
            text = task.target_text(doc)
            total = sum(lls)
            words, nbytes = metrics.count_words(text), metrics.count_bytes(text)
            sample.update(target=text, output=total, scores={
                "word_perplexity": (total, words), "byte_perplexity": (total, nbytes), "bits_per_byte": (total, nbytes)})
        samples.append(sample)
    return samples


def _prompts(engine, task, contexts, req: Requests) -> tuple[list, list[bool], list[bool], int, list[str]]:
    """The prompts' ids for a generating task (None: too long and skipped),
    whether each was cut or skipped, max_gen_toks and the stop strings."""
    gen = task.generation_kwargs
    until = list(gen.get("until", []))
    max_gen = int(gen.get("max_gen_toks", 256))
    room = req.max_len - max_gen
    if room < 1:
        raise AcornError(f"task {task.task}: max_gen_toks {max_gen} leaves no room for a prompt in the model's "
                         f"context of {req.max_len}")
    prompts, truncated, skipped = [], [], []
    for text in contexts:
        ids = _chat_prompt(engine, task, text) if task.chat else req.encode(text)
        over = len(ids) > room
        skip = over and task.truncation == "skip"
        prompts.append(None if skip else ids[-room:])
        truncated.append(over and not skip)
        skipped.append(skip)
    return prompts, truncated, skipped, max_gen, until


def _completions(engine, task: Task, prompts: list, max_gen: int, until: list[str], bar, doc_ids: list[int],
                 n: int = 1, chunk: int = 64) -> list[list[str]]:
    """n generated texts for each prompt of ids (n empty texts for None: a prompt skipped).

    stop_at eos is HFLM's: ending at the tokenizer's EOS only (not at a chat
    format's end-of-turn tokens) or a stop string; the text is every new token
    but the special ones, cut before the first stop string. stop_at engine is
    an application's: the engine's stop tokens, its text. Greedy unless the
    task's generation_kwargs give a temperature. chunk: prompts per
    engine.generate call; 64 fills the engine's default batch (max_num_seqs)."""
    from acorn.infer.sampling import SamplingParams

    gen = task.generation_kwargs
    texts: list[list[str]] = [[""] * n for _ in prompts]
    todo = [i for i, p in enumerate(prompts) if p is not None]
    eos = [engine.tokenizer.eos_id] if engine.tokenizer.eos_id is not None else []
    hflm = {"ignore_eos": True, "stop_token_ids": eos} if task.stop_at == "eos" else {}
    params = dict(temperature=0.0, max_new_tokens=max_gen, stop=until, **hflm)
    params |= {key: gen[key] for key in ("temperature", "top_p", "top_k") if key in gen}
    if n > 1:
        params["n"] = n
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        batch = [prompts[i] for i in part]
        if "seed" in gen:
            # Sample j of document i draws with seed + i * n + j, in whatever chunk or
            # process i falls: generate adds to a prompt's seed the samples of the prompts
            # before it in the call (q * n for the q-th), which this takes back out.
            done = engine.generate(batch, [SamplingParams(**params, seed=int(gen["seed"]) + (doc_ids[i] - q) * n)
                                           for q, i in enumerate(part)])
        else:
            done = engine.generate(batch, **params)
        for q, i in enumerate(part):
            outs = []
            for c in done[q * n:(q + 1) * n]:
                text = engine.tokenizer.decode(c.token_ids, skip_special=True) if hflm else c.text
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                outs.append(text)
            texts[i] = outs
        bar.update(len(part))
    bar.update(len(prompts) - len(todo))
    return texts


def _generate(engine, task, docs, contexts, req: Requests, bar, doc_ids: list[int]) -> list[dict]:
    prompts, truncated, skipped, max_gen, until = _prompts(engine, task, contexts, req)
    bar.total = len(prompts)
    texts = [outs[0] for outs in _completions(engine, task, prompts, max_gen, until, bar, doc_ids)]
    calls: list[list[dict]] = [[] for _ in docs]
    if task.tools:
        texts = _tool_round(engine, task, contexts, texts, calls, until, bar, doc_ids)
    em = task.exact_match
    samples = []
    for i, (doc, ctx, out) in enumerate(zip(docs, contexts, texts)):
        target = task.target_text(doc)
        extracted = {name: metrics.regex_extract(out, f["regex"], f.get("group_select", 0),
                                                 f.get("fallback", "[invalid]"))
                     for name, f in task.filters.items()} or {"": out}
        scores = {(f"exact_match,{name}" if name else "exact_match"): metrics.exact_match(
            pred, target, regexes_to_ignore=em.get("regexes_to_ignore", ()), ignore_case=em.get("ignore_case", False),
            ignore_punctuation=em.get("ignore_punctuation", False)) for name, pred in extracted.items()}
        samples.append({"doc_id": i, "prompt": ctx, "target": target, "output": out,
                        "extracted": extracted if task.filters else None, "truncated": truncated[i],
                        "skipped": skipped[i], "tool_calls": calls[i], "scores": scores})
    return samples


def _code_exec(engine, task, docs, contexts, req: Requests, bar, doc_ids: list[int]) -> list[dict]:
    """repeats samples per document; each becomes the task's program and runs
    in the sandbox; pass@k from how many of them passed."""
    from concurrent.futures import ThreadPoolExecutor

    from acorn import sandbox

    sandbox.check()
    n = task.repeats
    prompts, truncated, skipped, max_gen, until = _prompts(engine, task, contexts, req)
    bar.total = len(prompts)
    texts = _completions(engine, task, prompts, max_gen, until, bar, doc_ids, n=n)
    limits = sandbox.Limits(**{key: v for key, v in task.execution.items() if key != "workers"})
    programs = [render(task.program, {**doc, "completion": t}) for doc, outs in zip(docs, texts) for t in outs]
    bar.reset(total=len(programs))
    bar.set_description(f"{task.task} (running)")

    def run(program: str) -> sandbox.Result:
        result = sandbox.run_python(program, limits=limits)
        bar.update(1)
        return result

    workers = int(task.execution.get("workers", min(4, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(run, programs))
    ks = [int(m.split("@")[1]) for m in task.metric_names]
    samples = []
    for i, (doc, ctx, outs) in enumerate(zip(docs, contexts, texts)):
        runs = results[i * n:(i + 1) * n]
        passed = sum(r.ok for r in runs)
        samples.append({"doc_id": i, "prompt": ctx, "target": task.target_text(doc), "output": outs,
                        "passed": [r.ok for r in runs], "status": [r.status for r in runs],
                        "truncated": truncated[i],
                        "scores": {f"pass@{k}": metrics.pass_at_k(n, passed, k) for k in ks}})
    return samples


def _tool_round(engine, task: Task, contexts: list[str], texts: list[str], calls: list[list[dict]],
                until: list[str], bar, doc_ids: list[int]) -> list[str]:
    """Execute the first tool call of each reply that makes one and ask again
    with its result: the final answers (a reply without a call is its own).
    calls[i] receives reply i's calls, the first with its result."""
    from acorn.chat.tools import parse_tool_calls

    fmt = engine.tokenizer.chat_format or "acorn"
    max_gen = int(task.generation_kwargs.get("tool_max_gen_toks", 24))
    room = engine.model.config.max_seq_len - max_gen
    schemas = [registry.tool(t).schema for t in task.tools]
    final, followups = list(texts), {}
    for i, text in enumerate(texts):
        content, made = parse_tool_calls(text, fmt)
        if not made:
            continue
        call = made[0]
        name = call["function"]["name"]
        result = (registry.tool(name).run(call["function"]["arguments"]) if name in task.tools
                  else f"error: no tool named {name!r}")
        calls[i] = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in made]
        calls[i][0]["result"] = result
        messages = [{"role": "user", "content": contexts[i]},
                    {"role": "assistant", "content": content or None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": result}]
        ids = engine.chat_prompt(messages, tools=schemas)
        followups[i] = None if len(ids) > room and task.truncation == "skip" else ids[-room:]
    if followups:
        bar.total += len(followups)
        answers = [outs[0] for outs in _completions(engine, task, list(followups.values()), max_gen, until, bar,
                                                     [doc_ids[i] for i in followups])]
        for i, answer in zip(followups, answers):
            final[i] = answer
    return final


def evaluate(model, tasks: list[str | Task], *, num_fewshot: int | None = None, limit: int | None = None,
             data_dir: str | Path | None = None, add_bos: bool | None = None, batch_tokens: int = 8192,
             progress: bool = True, decontaminate: list[str | Path] | None = None, ngram: int = 13,
             tokenizer: str | Path | None = None) -> dict:
    """Evaluate a checkpoint directory (Acorn's or Hugging Face's) or an
    Engine on tasks (names of built-in tasks or groups, task YAML paths or Tasks).

    add_bos: start every text with BOS; None: as transformers' tokenizer does
    for the checkpoint (lm-eval's default), or for an Engine as Engine.encode
    does (when its tokenizer has one).
    decontaminate: training corpora (token shard directories or text files):
    check every document for `ngram`-gram overlap with them (before the model
    loads) and report each task's scores on its clean and contaminated
    documents too (acorn.eval.contamination; tokenizer decodes the shards when
    meta.json's path is gone).
    Returns {"results": {task: metrics}, "samples": {task: [...]}, "config": {...}}
    (a task with subsets also has {"task:label": metrics} in results) and, with
    decontaminate, "contamination": the report with the split scores."""
    from acorn.infer.engine import Engine

    # Every task name and data file, and the sandbox code tasks need, is checked before the model loads.
    loaded = [t for name in tasks for t in ([name] if isinstance(name, Task) else get_tasks(name))]
    if not loaded:
        raise AcornError("no tasks given; e.g. --tasks arc_easy,piqa")
    for task in loaded:
        resolve(task, task.data, find_data_dir(data_dir))
    if any(t.output_type == "code_exec" for t in loaded):
        from acorn import sandbox

        sandbox.check()
    report = None
    if decontaminate:
        from acorn.eval import contamination

        report = contamination.check(loaded, decontaminate, n=ngram, limit=limit, data_dir=data_dir,
                                     tokenizer=tokenizer)
    rank, world = start_processes()
    checkpoint = None
    if not isinstance(model, Engine):
        checkpoint = str(model)
        engine = Engine.from_pretrained(model, paged=True)
        if add_bos is None:
            add_bos = tokenizer_adds_bos(model) and engine.tokenizer.bos_id is not None
    else:
        engine = model
        if add_bos is None:
            add_bos = engine.tokenizer.bos_id is not None
    results, samples, versions = {}, {}, {}
    t0 = time.perf_counter()
    for task in loaded:
        results[task.task], samples[task.task] = run_task(
            engine, task, num_fewshot=num_fewshot, limit=limit, root=data_dir, add_bos=add_bos,
            batch_tokens=batch_tokens, progress=progress, processes=(rank, world))
        versions[task.task] = task.version
        for label, sub in results[task.task].pop("subsets", {}).items():  # a row of their own: task:label
            results[f"{task.task}:{label}"] = sub
    out = {
        "results": results,
        "samples": samples,
        "config": {"model": checkpoint or getattr(engine.model.config, "name", "engine"), "tasks": list(versions),
                   "versions": versions, "num_fewshot": num_fewshot, "limit": limit, "add_bos": add_bos,
                   "fewshot_seeds": {t.task: t.fewshot_seed for t in loaded}, "processes": world,
                   "generation_seeds": {t.task: t.generation_kwargs["seed"] for t in loaded
                                        if "seed" in t.generation_kwargs},
                   "data_dir": str(find_data_dir(data_dir)), "seconds": round(time.perf_counter() - t0, 2)},
    }
    if report is not None:
        contamination.attach(out, report, loaded)
    return out

