"""Evaluation tasks as data: a YAML file says where the documents are, how a
document becomes a prompt, its target and its choices, and how it is scored.

The keys follow lm-evaluation-harness's task YAMLs (lm_eval/api/task.py,
ConfigurableTask; e.g. lm_eval/tasks/arc/arc_easy.yaml), so a task ported
from there reads the same:

  task               the name (`--tasks NAME`)
  version            recorded in results.json; bump it when the prompt changes
  output_type        multiple_choice | loglikelihood | loglikelihood_rolling | generate_until
                     | code_exec (generate, then run the program against tests)
  data               the documents: a .jsonl/.json/.parquet/.csv file or a YAML
                     list, relative to the data directory (--data-dir) unless
                     absolute; ./name or ../name: relative to the task file
  download           where to get the file when it is missing (named in the error)
  fewshot_data       where few-shot examples come from (default: `data`, and
                     then a document is never its own example)
  fewshot_sampler    random (lm-eval's default: one seeded random.Random per
                     task, drawing for each document in order) | first_n
  fewshot_seed       that generator's seed (lm-eval's --fewshot_random_seed, 1234)
  num_fewshot        the default K (--num-fewshot overrides it)
  doc_to_text        Jinja template (or a field name): the prompt
  doc_to_target      the answer: text, or for multiple choice an index into the choices
  doc_to_choice      the choices: a field holding a list, or a template that renders one
  target_delimiter   between prompt and answer (" ")
  fewshot_delimiter  between examples ("\\n\\n")
  metrics            which of the kind's metrics to report (default: all of them)
  generation_kwargs  until (stop strings), max_gen_toks; code_exec also
                     temperature, top_p, top_k, seed (default greedy)
  filters            {name: {regex, group_select, fallback}}: answer extraction, one
                     exact-match score per filter (lm-eval's filter_list, regex + take_first)
  exact_match        {ignore_case, ignore_punctuation, regexes_to_ignore}
  doc_to_decontamination_query  the text of a document a contamination check
                     looks for in a training corpus (default: the prompt and its
                     answer; acorn.eval.contamination)
  repeats            code_exec: samples per document (lm-eval's key; pass@k needs k <= repeats)
  program            code_exec: Jinja template over the document's fields and
                     `completion` giving the program to run; it passes when it
                     exits 0 (default HumanEval's: prompt, completion, the tests,
                     then check(entry_point))
  execution          code_exec: sandbox limits {seconds, memory_mb, processes}
                     (acorn.sandbox.Limits) and workers (programs run at once)

Beyond lm-eval's keys, for models used as chat assistants (the built-in
world's tasks, acorn/eval/world.py):

  chat               true: the prompt is a user's turn rendered with the
                     model's chat template (as lm-eval's --apply_chat_template),
                     ending at the assistant's header; a generation then ends
                     at the end of the assistant's turn
  tools              registered tools (acorn.eval.registry) whose schemas the
                     chat template puts in the system prompt; the first call a
                     reply makes is executed, and the model answers again after
                     its result (one round; generation_kwargs.tool_max_gen_toks)
  add_bos            true/false: start the prompt with BOS whatever the run's
                     setting (a task for models trained with BOS before every
                     document, as Acorn's); unset: the run's
  truncation         left (lm-eval's: a prompt too long for the model is cut
                     from the left) | skip (generate_until: not asked, scored
                     on an empty output; counted as `skipped`)
  subsets            templates (or field names) that label each document: the
                     metrics are reported again per label, as task:label
  generation_kwargs  also stop_at: eos (HFLM's: only EOS ends a generation and
                     special tokens are dropped from the text; the default
                     without chat) | engine (the engine's stop tokens, EOS and
                     the chat format's end of turn, and the text as the engine
                     returns it, special tokens kept; the default with chat)
  metrics            also registered per-document metrics (acorn.eval.registry)

A group file (`group: NAME`, `task: [names]`) names several tasks at once,
as lm-eval's groups do: `--tasks world` runs the world's tasks.

A user adds a task by writing such a file and passing its path to `--tasks`;
no Python. The built-in tasks are the YAML files in acorn/eval/tasks/.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from acorn.errors import AcornError
from acorn.eval import registry

BUILTIN_DIR = Path(__file__).parent / "tasks"
KINDS = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until", "code_exec")
# What each kind can report (lm-eval's process_results for the same output_type).
METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood": ("perplexity", "acc"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "generate_until": ("exact_match",),
    "code_exec": ("pass@1",),  # any pass@k with k <= repeats
}
HUMANEVAL_PROGRAM = "{{prompt}}{{completion}}\n\n{{test}}\n\ncheck({{entry_point}})\n"
EXECUTION_KEYS = ("seconds", "memory_mb", "processes", "output_bytes", "workers")


@dataclass
class Task:
    task: str
    output_type: str
    data: str
    doc_to_text: str = ""
    doc_to_target: str = ""
    doc_to_choice: str | None = None
    version: float = 1.0
    download: str = ""
    fewshot_data: str | None = None
    fewshot_sampler: str = "random"
    fewshot_seed: int = 1234
    num_fewshot: int = 0
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    metrics: list[str] = field(default_factory=list)
    generation_kwargs: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    exact_match: dict = field(default_factory=dict)
    doc_to_decontamination_query: str | None = None
    repeats: int = 1
    program: str = HUMANEVAL_PROGRAM
    execution: dict = field(default_factory=dict)
    chat: bool = False
    tools: list[str] = field(default_factory=list)
    add_bos: bool | None = None
    truncation: str = "left"
    subsets: list[str] = field(default_factory=list)
    source: str = ""  # the YAML file it came from

    # ---------------------------------------------------------------- a document
    def text(self, doc: dict) -> str:
        return str(render(self.doc_to_text, doc))

    def choices(self, doc: dict) -> list[str] | None:
        if self.doc_to_choice is None:
            return None
        value = render(self.doc_to_choice, doc)
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise AcornError(f"{self.source}: doc_to_choice gave {value[:60]!r}, not a list") from None
        return [str(c) for c in value]

    def target(self, doc: dict) -> int | str:
        """The answer: an index for multiple choice, else text."""
        value = render(self.doc_to_target, doc)
        if self.doc_to_choice is not None and isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value if isinstance(value, int) else str(value)

    def target_text(self, doc: dict) -> str:
        t = self.target(doc)
        return self.choices(doc)[t] if isinstance(t, int) and self.doc_to_choice is not None else str(t)

    def example(self, doc: dict) -> str:
        """A solved document, as it appears among the few-shot examples."""
        return self.text(doc) + self.target_delimiter + self.target_text(doc) + self.fewshot_delimiter

    def context(self, doc: dict, shots: list[dict]) -> str:
        """The prompt: the few-shot examples, then the document without its
        answer (lm-eval's fewshot_context for plain text, no chat template)."""
        return "".join(self.example(s) for s in shots) + self.text(doc)

    @property
    def metric_names(self) -> list[str]:
        names = self.metrics or list(METRICS[self.output_type])
        if self.output_type == "generate_until" and self.filters and "exact_match" in names:
            return [f"exact_match,{f}" for f in self.filters] + [m for m in names if m != "exact_match"]
        return names

    @property
    def stop_at(self) -> str:
        return self.generation_kwargs.get("stop_at", "engine" if self.chat else "eos")

    def subset_labels(self, doc: dict) -> list[str]:
        return [str(render(s, doc)) for s in self.subsets]


# ------------------------------------------------------------------ templates
_ENV = None


def render(template: str | int, doc: dict) -> Any:
    """A field's value when the template names a field (lm-eval's rule), else
    the rendered Jinja template (undefined names are errors, as in lm-eval)."""
    global _ENV
    if isinstance(template, int):
        return template
    if template in doc:
        return doc[template]
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        _ENV.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    _ENV.filters.update(registry.FILTERS)  # those registered since, too
    try:
        return _ENV.from_string(template).render(**doc)
    except Exception as e:  # jinja2's UndefinedError, TemplateSyntaxError, ...
        raise AcornError(f"template {template!r} failed on a document with fields {sorted(doc)}: {e}") from None


# ------------------------------------------------------------------ loading tasks
def builtin_tasks() -> dict[str, Path]:
    """Built-in tasks and groups by name (a file's name is its task's)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def get_tasks(name: str) -> list[Task]:
    """The tasks a name stands for: one task, or every task of a group."""
    path = _find(name)
    group = _read_yaml(path)[0]
    if "group" not in group:
        return [load_task(path)]
    if set(group) - {"group", "task"} or not isinstance(group.get("task"), list) or not group["task"]:
        raise AcornError(f"{path}: a group file has two keys, group (its name) and task (a list of task names)")
    tasks = []
    for member in group["task"]:
        tasks += get_tasks(str(member))
    return tasks


def get_task(name: str) -> Task:
    """A built-in task by name, or a task YAML file by path."""
    return load_task(_find(name))


def _find(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise AcornError(f"{path}: no such task file")
        return path
    known = builtin_tasks()
    if name not in known:
        raise AcornError(f"unknown task {name!r}; available: {', '.join(known)} (or the path of a task YAML file)")
    return known[name]


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """A task or group file's mapping, and the line of each key."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise AcornError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or node is None:
        raise AcornError(f"{path}: a task file is a mapping of keys (task, output_type, data, doc_to_text, ...)")
    return raw, {k.value: k.start_mark.line + 1 for k, _ in node.value}


def load_task(path: str | Path) -> Task:
    """Read and check a task YAML; a mistake is reported with its key and line."""
    path = Path(path)
    raw, lines = _read_yaml(path)

    def bad(key: str, problem: str):
        return AcornError(f"{path}:{lines.get(key, 1)}: {key}: {problem}")

    known = {f.name: f for f in fields(Task) if f.name != "source"}
    for key in raw:
        if key not in known:
            raise bad(key, f"unknown key; known keys: {', '.join(known)}")
    for key in ("task", "output_type", "data"):
        if key not in raw:
            raise AcornError(f"{path}:1: {key}: missing (every task names its task, output_type and data)")
    if raw["output_type"] not in KINDS:
        raise bad("output_type", f"{raw['output_type']!r} is not one of {', '.join(KINDS)}")
    kinds = {"str": str, "int": int, "float": (int, float), "dict": dict, "list[str]": list,
             "str | None": (str, type(None)), "bool": bool, "bool | None": (bool, type(None))}
    for key, value in raw.items():
        want = kinds.get(str(known[key].type))
        if want is not None and not isinstance(value, want):
            raise bad(key, f"expected {known[key].type}, got {type(value).__name__} {value!r}")
    kind = raw["output_type"]
    if raw.get("repeats", 1) < 1:
        raise bad("repeats", f"{raw['repeats']} samples per document; give 1 or more")
    for m in raw.get("metrics", []):
        if kind == "code_exec":
            k = re.fullmatch(r"pass@(\d+)", str(m))
            if not k or not 1 <= int(k.group(1)) <= raw.get("repeats", 1):
                raise bad("metrics", f"{m!r}: code_exec reports pass@k with 1 <= k <= repeats "
                                     f"({raw.get('repeats', 1)})")
        elif m not in METRICS[kind] and m not in registry.METRICS:
            raise bad("metrics", f"{m!r} is not a metric of {kind} ({', '.join(METRICS[kind])}) nor a registered "
                      f"one ({', '.join(registry.METRICS)})")
    for key in raw.get("execution", {}):
        if key not in EXECUTION_KEYS:
            raise bad("execution", f"unknown key {key!r}; known: {', '.join(EXECUTION_KEYS)}")
    for t in raw.get("tools", []):
        if t not in registry.TOOLS:
            raise bad("tools", f"{t!r} is not a registered tool ({', '.join(registry.TOOLS)})")
    if raw.get("tools") and not raw.get("chat"):
        raise bad("tools", "tools are offered through the chat template; set chat: true")
    if raw.get("truncation", "left") not in ("left", "skip"):
        raise bad("truncation", "choose left or skip")
    if raw.get("truncation") == "skip" and kind != "generate_until":
        raise bad("truncation", "skip is for generate_until (a log-likelihood needs every choice scored)")
    if raw.get("generation_kwargs", {}).get("stop_at", "eos") not in ("eos", "engine"):
        raise bad("generation_kwargs", "stop_at: choose eos or engine")
    if kind == "multiple_choice" and not raw.get("doc_to_choice"):
        raise bad("output_type", "multiple_choice needs doc_to_choice")
    if raw.get("fewshot_sampler", "random") not in ("random", "first_n"):
        raise bad("fewshot_sampler", "choose random or first_n")
    for name, spec in raw.get("filters", {}).items():
        if not isinstance(spec, dict) or "regex" not in spec:
            raise bad("filters", f"filter {name!r} needs a regex")
    return Task(**raw, source=str(path))


# ------------------------------------------------------------------ documents
def data_dir(given: str | Path | None = None) -> Path:
    """Where task data files live: --data-dir, else $ACORN_EVAL_DATA, else
    ../shared/data/eval beside the repository."""
    if given:
        return Path(given)
    if os.environ.get("ACORN_EVAL_DATA"):
        return Path(os.environ["ACORN_EVAL_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"


def resolve(task: Task, name: str, root: Path) -> Path:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (Path(task.source).parent / path) if name.startswith(("./", "../")) else root / path
    if not path.is_file():
        where = f"; get it from {task.download}" if task.download else ""
        raise AcornError(f"{path}: the data of task {task.task} is missing{where} "
                         f"(or point --data-dir / ACORN_EVAL_DATA at a directory holding {Path(name).name})")
    return path


def read_docs(path: Path) -> list[dict]:
    """Documents from JSON lines, a JSON list, Parquet, CSV or a YAML list."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            docs = json.loads(path.read_text(encoding="utf-8"))
            return docs if isinstance(docs, list) else docs["data"]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix in (".yaml", ".yml"):
            docs = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
                raise ValueError("a YAML data file is a list of mappings")
            return docs
    except (ValueError, KeyError, yaml.YAMLError) as e:
        raise AcornError(f"{path}: cannot read its documents ({e})") from None
    raise AcornError(f"{path}: unknown data format {suffix!r}; give .jsonl, .json, .parquet, .csv or .yaml")


def fewshot_examples(task: Task, docs: list[dict], pool: list[dict], k: int, same_split: bool):
    """The k examples for each document, in document order, as lm-eval draws
    them (lm_eval/api/samplers.py, ContextSampler.sample): one random.Random
    seeded once per task; when the examples come from the evaluated split,
    k + 1 are drawn and the document itself (and equal ones) removed."""
    if k == 0:
        return [[] for _ in docs]
    if k > len(pool) - same_split:
        raise AcornError(f"task {task.task}: {k} few-shot examples asked, but its few-shot source has "
                         f"{len(pool) - same_split}")
    if task.fewshot_sampler == "first_n":
        return [[d for d in pool if not (same_split and d == doc)][:k] for doc in docs]
    rnd = random.Random(task.fewshot_seed)
    out = []
    for doc in docs:
        if not same_split:
            out.append(rnd.sample(pool, k))
            continue
        shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]
        if len(shots) < k:  # copies of the document were drawn twice
            shots = rnd.sample([d for d in pool if d != doc], k)
        out.append(shots)
    return out
