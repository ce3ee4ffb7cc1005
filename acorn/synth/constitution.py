"""Constitutional AI: a model critiques and revises its own answers against written principles.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback". Two phases, each
writing training data for a stage Acorn already has:

  supervised (SL-CAI)  for each prompt: sample an answer; ask the model to critique it
           under a principle drawn at random; ask it to revise the answer in the light
           of the critique. The prompt with the revision is an SFT row (`acorn sft`).
  AI feedback (RLAIF)  for each prompt: sample two answers; ask the model which one
           follows a principle better, reading the probabilities of "A" and "B" (both
           orders, averaged, so a bias for a position cancels). The preferred answer is
           `chosen`, the other `rejected`: a preference pair in TRL's conversational
           format for `acorn dpo`.

The critic is the model itself (ModelCritic) or, where the truth is known, the world
(OracleCritic: the world's labels through the same pipeline), so what the model's own
judgement costs is a measured difference. The formats (critique request, revision
request, comparison question) are the world's (acorn.data.world), which teaches them
with `acorn data world --critique-sft`.

Principles files, Markdown or YAML, user-editable:

    ## no-made-up-facts                     principles:
    applies: fact                             - name: no-made-up-facts
    critique: Identify any fact ...             applies: fact
    revision: Rewrite the answer ...            critique: Identify any fact ...
                                                revision: Rewrite the answer ...

`applies` (fact, arithmetic or all; default all) limits a principle to the prompts of
that kind (a prompt row's `kind`, else arithmetic when the question holds "a op b").
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from acorn.data.world import (CALCULATOR_TOOL, CRITIQUE_OK, IDK_ANSWER, WORLD_PRINCIPLES, arithmetic_critique,
                              calculate, comparison_request, critique_request, fact_critique, read_world,
                              revision_request)
from acorn.errors import AcornError
from acorn.fileio import read_jsonl_lines

KINDS = ("fact", "arithmetic", "all")
_ARITHMETIC = re.compile(r"(-?\d+)\s*([+*-])\s*(-?\d+)")
_OP_WORDS = re.compile(r"(-?\d+)\s+(plus|minus|times)\s+(-?\d+)")


# ------------------------------------------------------------------ principles
@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request: what to look for in an answer
    revision: str  # the revision request: how to rewrite it
    applies: str = "all"  # fact | arithmetic | all

    def as_dict(self) -> dict:
        return asdict(self)


def world_principles() -> list[Principle]:
    """The built-in world's principles (the ones its --critique-sft rows teach)."""
    return [Principle(**p) for p in WORLD_PRINCIPLES]


def load_principles(path: str | Path) -> list[Principle]:
    """A principles file: Markdown (.md) with one `## name` section of `key: value`
    lines each, or YAML (.yaml/.yml) with a list under `principles:` (or at the top)."""
    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such principles file; give a .md or .yaml file (e.g. WORLD/principles.md "
                         "from `acorn data world --critique-sft`)")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        entries = _yaml_entries(text, path)
    elif path.suffix == ".md":
        entries = _markdown_entries(text, path)
    else:
        raise AcornError(f"{path}: a principles file is .md or .yaml; rename it or convert it")
    if not entries:
        raise AcornError(f"{path}: no principles found; add a section `## name` with `critique:` and `revision:` "
                         "lines (Markdown) or a list under `principles:` (YAML)")
    principles, seen = [], set()
    for i, e in enumerate(entries):
        name = str(e.get("name") or "").strip()
        where = f"{path}: principle {name or i + 1}"
        missing = [k for k in ("name", "critique", "revision") if not str(e.get(k) or "").strip()]
        if missing:
            raise AcornError(f"{where} has no {' or '.join(missing)}; every principle needs a name, a critique "
                             "request and a revision request")
        unknown = set(e) - {"name", "critique", "revision", "applies"}
        if unknown:
            raise AcornError(f"{where}: unknown key {sorted(unknown)[0]!r}; the keys are name, applies, critique, "
                             "revision")
        applies = str(e.get("applies") or "all").strip()
        if applies not in KINDS:
            raise AcornError(f"{where}: applies {applies!r}; choose one of {', '.join(KINDS)}")
        if name in seen:
            raise AcornError(f"{where} is named twice; give each principle its own name")
        seen.add(name)
        principles.append(Principle(name, str(e["critique"]).strip(), str(e["revision"]).strip(), applies))
    return principles


def _yaml_entries(text: str, path: Path) -> list[dict]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AcornError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if isinstance(data, dict):
        data = data.get("principles")
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise AcornError(f"{path}: expected a list of principles (name, critique, revision) under `principles:`")
    return data


def _markdown_entries(text: str, path: Path) -> list[dict]:
    entries: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            entries.append({"name": line[3:].strip()})
        elif entries and line.strip():
            key, sep, value = line.partition(":")
            if not sep or not key.strip().isidentifier():
                raise AcornError(f"{path}:{lineno}: expected `key: value` (applies, critique or revision) "
                                 f"under ## {entries[-1]['name']}; got {line.strip()[:40]!r}")
            entries[-1][key.strip().lower()] = value.strip()
    return entries


def applicable(principles: list[Principle], kind: str) -> list[Principle]:
    return [p for p in principles if p.applies in ("all", kind)]


# ------------------------------------------------------------------ prompts
def read_prompts(path: str | Path) -> list[dict]:
    """Prompt rows from a JSONL file: {"prompt": text or messages} or {"question": text} or
    {"messages": [...]} (the conversation up to its last user turn); other fields (kind,
    person, attribute, answer) are kept for the oracle critic. Each gets `messages` and `kind`."""
    path = Path(path)
    if not path.is_file():
        raise AcornError(f"{path}: no such prompts file; give a JSONL file with a `prompt` or `question` per line")
    rows = []
    for lineno, row in read_jsonl_lines(path):
        where = f"{path}:{lineno}"
        value = row.get("prompt", row.get("question", row.get("messages")))
        if isinstance(value, str) and value.strip():
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            users = [i for i, m in enumerate(value) if m["role"] == "user"]
            if not users:
                raise AcornError(f"{where}: the conversation has no user turn to answer")
            messages = value[: users[-1] + 1]
        else:
            raise AcornError(f"{where}: a prompt row needs `prompt` or `question` (a non-empty string) or "
                             f"`messages` (a conversation); it has {', '.join(map(str, row)) or 'no fields'}")
        rows.append({**row, "messages": messages, "kind": prompt_kind(row, messages[-1]["content"] or "")})
    if not rows:
        raise AcornError(f"{path}: no prompts (the file is empty); add one JSON object per line")
    return rows


def prompt_kind(row: dict, question: str) -> str:
    kind = row.get("kind")
    if kind in ("arithmetic", "tool"):
        return "arithmetic"
    if kind in ("fact", "refusal", "unknown"):
        return "fact"
    return "arithmetic" if expression_of(question) else "fact"


def expression_of(question: str) -> str | None:
    """The arithmetic expression a world question asks about ("What is 12 plus 5?" -> "12+5")."""
    m = _ARITHMETIC.search(question)
    if m:
        return f"{m.group(1)}{m.group(2)}{m.group(3)}"
    m = _OP_WORDS.search(question)
    if m:
        return f"{m.group(1)}{ {'plus': '+', 'minus': '-', 'times': '*'}[m.group(2)]}{m.group(3)}"
    return None


# ------------------------------------------------------------------ critics
def _question(row: dict) -> str:
    return row["messages"][-1]["content"] or ""


class OracleCritic:
    """The world's labels in the critic's place: a fact about an unknown person breaks
    no-made-up-facts (revision: IDK_ANSWER), a wrong result breaks the calculator
    principle (revision: the result). Needs prompt rows that name their `person`
    (fact questions) or hold an arithmetic expression."""

    name = "oracle"

    def __init__(self, world_dir: str | Path):
        path = Path(world_dir) / "world.json"
        if not path.is_file():
            raise AcornError(f"{world_dir}: no world.json; the oracle critic needs a world from `acorn data world`")
        self.known = {p.name: p.known for p in read_world(path).people}

    def _verdict(self, row: dict, answer: str, principle: Principle) -> tuple[str, str]:
        if row["kind"] == "arithmetic":
            expr = expression_of(_question(row))
            if expr is None:
                raise AcornError(f"the oracle critic cannot check {_question(row)!r}: no arithmetic expression in it")
            result = calculate(expr)
            return arithmetic_critique(answer, result), str(result)
        person = row.get("person")
        if person not in self.known:
            raise AcornError(f"the oracle critic needs the prompt's `person` (a name in world.json); the prompt "
                             f"{_question(row)!r} has {person!r}")
        critique = fact_critique(person, self.known[person], answer)
        return critique, answer.strip() if critique == CRITIQUE_OK else IDK_ANSWER

    def critique_and_revise(self, rows: list[dict], answers: list[str], principles: list[Principle]) -> list[dict]:
        out = []
        for row, answer, p in zip(rows, answers, principles):
            critique, revision = self._verdict(row, answer, p)
            out.append({"critique": critique, "revision": revision, "tool_calls": []})
        return out

    def prefer_a(self, rows: list[dict], pairs: list[tuple[str, str]], principles: list[Principle]) -> list[float | None]:
        """1.0 when only B breaks the principle, 0.0 when only A does, None when both or neither."""
        out = []
        for row, (a, b), p in zip(rows, pairs, principles):
            ok_a = self._verdict(row, a, p)[0] == CRITIQUE_OK
            ok_b = self._verdict(row, b, p)[0] == CRITIQUE_OK
            out.append(None if ok_a == ok_b else float(ok_a))
        return out


class ModelCritic:
    """The model judges itself through the one engine, greedily: the critique (calling the
    calculator where the principle's questions are arithmetic and the model asks for it),
    then the revision, in the formats of acorn.data.world; comparisons by the
    probabilities of the replies "A" and "B"."""

    name = "model"

    def __init__(self, engine, max_new_tokens: int = 48):
        from acorn.infer import SamplingParams

        self.engine = engine
        # A calculator call alone is ~40 tokens of JSON: a shorter budget cuts it off unparsed.
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=max(max_new_tokens, 64))

    def _generate(self, conversations: list[tuple[list[dict], list | None]]) -> list:
        if not conversations:
            return []
        from acorn.infer.sequence import Completion

        prompts = [self.engine.chat_prompt(m, tools=t) for m, t in conversations]
        # A conversation past the model's context (a long critique quoted back) gets an empty
        # reply, which gives no training row, instead of stopping the whole run.
        fits = [i for i, p in enumerate(prompts) if len(p) < self.engine.model.config.max_seq_len]
        done = dict(zip(fits, self.engine.generate([prompts[i] for i in fits], self.greedy) if fits else []))
        completions = [done.get(i) or Completion(len(p), [], "", "length") for i, p in enumerate(prompts)]
        for (_, tools), c in zip(conversations, completions):
            if tools:
                self.engine.parse_tools(c)
        return completions

    def critique_and_revise(self, rows: list[dict], answers: list[str], principles: list[Principle]) -> list[dict]:
        convs = []
        for row, answer, p in zip(rows, answers, principles):
            tools = [CALCULATOR_TOOL] if p.applies == "arithmetic" else None
            convs.append(([{"role": "user", "content": critique_request(_question(row), answer, p.as_dict())}], tools))
        first = self._generate(convs)
        # One round of tool calls: the calculator's result goes back, the model then writes the critique.
        again = [i for i, c in enumerate(first) if c.tool_calls]
        for i in again:
            call = first[i].tool_calls[0]
            try:
                result = str(calculate(json.loads(call["function"]["arguments"]).get("expression", "")))
            except (ValueError, AttributeError, json.JSONDecodeError) as e:
                result = f"error: {e}"
            convs[i][0].extend([{"role": "assistant", "content": None, "tool_calls": [call]},
                                {"role": "tool", "tool_call_id": call.get("id", "call_0"), "content": result}])
        second = dict(zip(again, self._generate([convs[i] for i in again])))
        critiques = [(second[i] if i in second else c).text.strip() for i, c in enumerate(first)]
        for (messages, _), critique, p in zip(convs, critiques, principles):
            messages += [{"role": "assistant", "content": critique},
                         {"role": "user", "content": revision_request(p.as_dict())}]
        revisions = self._generate(convs)
        return [{"critique": cr, "revision": rv.text.strip(), "tool_calls": [m for m in conv[1:-2]]}
                for cr, rv, (conv, _) in zip(critiques, revisions, convs)]

    def prefer_a(self, rows: list[dict], pairs: list[tuple[str, str]], principles: list[Principle]) -> list[float | None]:
        """P(A is better), averaged over both orders of the two answers (None: the question
        does not fit the model's context)."""
        import math

        out = []
        context = self.engine.model.config.max_seq_len
        for row, (a, b), p in zip(rows, pairs, principles):
            probs = []
            for first, second, flip in ((a, b, False), (b, a, True)):
                prompt = self.engine.chat_prompt([{"role": "user", "content": comparison_request(
                    _question(row), first, second, p.as_dict())}])
                if len(prompt) + 4 > context:
                    break
                la, lb = self.engine.score(prompt, ["A", "B"])
                pa = 1 / (1 + math.exp(lb - la))
                probs.append(1 - pa if flip else pa)
            out.append(sum(probs) / 2 if len(probs) == 2 else None)
        return out


# ------------------------------------------------------------------ the two phases
def _sample(engine, rows: list[dict], n: int, temperature: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    from acorn.infer import SamplingParams

    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed)
    completions = engine.generate([engine.chat_prompt(r["messages"]) for r in rows], params)
    return [[c.text.strip() for c in completions[i * n:(i + 1) * n]] for i in range(len(rows))]


def _draw(rng: random.Random, principles: list[Principle], row: dict) -> Principle:
    fits = applicable(principles, row["kind"])
    if not fits:
        raise AcornError(f"no principle applies to {row['kind']} prompts such as {_question(row)!r}; add one with "
                         f"`applies: {row['kind']}` or `applies: all`")
    return rng.choice(fits)


def supervised_phase(engine, rows: list[dict], principles: list[Principle], critic, *, seed: int = 0,
                     temperature: float = 1.0, max_new_tokens: int = 48) -> list[dict]:
    """One trace per prompt: the sampled answer, the principle, the critique, the revision."""
    rng = random.Random(seed)
    drawn = [_draw(rng, principles, r) for r in rows]
    answers = [a[0] for a in _sample(engine, rows, 1, temperature, max_new_tokens, seed)]
    judged = critic.critique_and_revise(rows, answers, drawn)
    return [{"messages": r["messages"], "kind": r["kind"], "principle": p.name, "answer": a,
             "critique": j["critique"], "violation": j["critique"] != CRITIQUE_OK, "revision": j["revision"],
             **{k: r[k] for k in ("person", "attribute") if k in r}}
            for r, p, a, j in zip(rows, drawn, answers, judged)]


def sft_rows(traces: list[dict], keep_unflagged: bool = False) -> list[dict]:
    """The supervised phase's training data: the prompt and the revision (or, with
    keep_unflagged, the original answer where the critique found nothing)."""
    out = []
    for t in traces:
        reply = t["answer"] if keep_unflagged and not t["violation"] else t["revision"]
        if reply:
            out.append({"messages": [*t["messages"], {"role": "assistant", "content": reply}], "kind": t["kind"],
                        "principle": t["principle"]})
    return out


def feedback_phase(engine, rows: list[dict], principles: list[Principle], critic, *, seed: int = 0,
                   temperature: float = 1.0, max_new_tokens: int = 48) -> list[dict]:
    """Preference pairs from the critic's choice between two sampled answers (identical
    answers, and pairs the critic has no preference on, give none)."""
    rng = random.Random(seed + 1)
    drawn = [_draw(rng, principles, r) for r in rows]
    samples = _sample(engine, rows, 2, temperature, max_new_tokens, seed + 1)
    keep = [i for i, (a, b) in enumerate(samples) if a and b and a != b]
    prefs = critic.prefer_a([rows[i] for i in keep], [tuple(samples[i]) for i in keep], [drawn[i] for i in keep])
    pairs = []
    for i, pa in zip(keep, prefs):
        if pa is None or pa == 0.5:
            continue
        a, b = samples[i]
        chosen, rejected = (a, b) if pa > 0.5 else (b, a)
        pairs.append({"prompt": rows[i]["messages"], "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}], "principle": drawn[i].name,
                      "p_chosen": round(max(pa, 1 - pa), 4)})
    return pairs


# ------------------------------------------------------------------ the command
def constitutional(model: str | Path, prompts: str | Path, out: str | Path, *, principles: str | Path | None = None,
                   critic: str = "model", world: str | Path | None = None, phases: str = "both", seed: int = 0,
                   temperature: float = 1.0, max_new_tokens: int = 48, limit: int | None = None,
                   keep_unflagged: bool = False, overwrite: bool = False, quiet: bool = True) -> dict:
    """`acorn synth constitutional`: writes to `out` traces.jsonl and sft.jsonl (supervised
    phase), preference.jsonl (AI-feedback phase) and summary.json; returns the summary."""
    from acorn.infer import Engine
    from acorn.fileio import write_json, write_jsonl

    if phases not in ("both", "supervised", "feedback"):
        raise AcornError(f"--phases {phases!r}; choose both, supervised or feedback")
    if critic not in ("model", "oracle"):
        raise AcornError(f"--critic {critic!r}; choose model (the model judges itself) or oracle (the world's labels)")
    if critic == "oracle" and not world:
        raise AcornError("--critic oracle needs --world WORLD_DIR (the world's labels)")
    plist = load_principles(principles) if principles else world_principles()
    rows = read_prompts(prompts)[: limit or None]
    record = {"model": str(model), "prompts": str(prompts), "principles": str(principles or "world (built in)"),
              "critic": critic, "world": str(world) if world else None, "phases": phases, "seed": seed,
              "temperature": temperature, "max_new_tokens": max_new_tokens, "limit": limit,
              "keep_unflagged": keep_unflagged}
    check_run_dir(out, record, overwrite)
    oracle = OracleCritic(world) if critic == "oracle" else None
    engine = Engine.from_pretrained(model)
    judge = oracle or ModelCritic(engine, max_new_tokens)
    out = Path(out)
    summary: dict = {"run": record, "prompts": len(rows), "principles": [p.name for p in plist]}
    if phases in ("both", "supervised"):
        traces = supervised_phase(engine, rows, plist, judge, seed=seed, temperature=temperature,
                                  max_new_tokens=max_new_tokens)
        data = sft_rows(traces, keep_unflagged)
        write_jsonl(out / "traces.jsonl", traces)
        write_jsonl(out / "sft.jsonl", data)
        summary["supervised"] = {"traces": len(traces), "flagged": sum(t["violation"] for t in traces),
                                 "sft_rows": len(data),
                                 "changed": sum(t["revision"] != t["answer"] for t in traces)}
    if phases in ("both", "feedback"):
        pairs = feedback_phase(engine, rows, plist, judge, seed=seed, temperature=temperature,
                               max_new_tokens=max_new_tokens)
        write_jsonl(out / "preference.jsonl", pairs)
        summary["feedback"] = {"pairs": len(pairs)}
    write_json(out / "summary.json", summary)
    if not quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "run"}, indent=2))
    return summary


def check_run_dir(out: str | Path, record: dict, overwrite: bool) -> None:
    """Refuse an output directory that holds files of another run (its run.json differs, or
    it has none); the same run again may write over its own files. Writes run.json."""
    from acorn.fileio import read_json, write_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AcornError(f"--out {out} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        previous = read_json(out / "run.json") if (out / "run.json").is_file() else None
        if previous != record:
            what = "another run's files" if previous is not None else "files of something else"
            diff = "" if previous is None else " (" + ", ".join(
                f"{k}: {previous.get(k)!r} there, {v!r} now" for k, v in record.items() if previous.get(k) != v)[:200] + ")"
            raise AcornError(f"--out {out} already holds {what}{diff}; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", record)
