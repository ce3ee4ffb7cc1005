"""Verifiable rewards: plain Python functions that score completions, for GRPO and PPO.

RL with verifiable rewards (DeepSeekMath, Shao et al. 2024; Tulu 3, Lambert et
al. 2024) needs no learned reward model where a program can check the answer:
an arithmetic result is right or wrong, JSON parses and fits its schema or it
does not. A reward function here has TRL's signature, so a function written
for TRL's GRPOTrainer works unchanged:

    reward(prompts, completions, completion_ids, **columns) -> list[float | None]

- prompts: one per completion, as the data row gives it (a string, or a list
  of chat messages for conversational data);
- completions: the generated text, or [{"role": "assistant", "content": text}]
  when the prompt is a conversation (TRL's convention); `completion_text`
  reads either;
- completion_ids: the generated token ids;
- columns: every other field of the data row, one value per completion (the
  world's `answer`, a row's JSON `schema`, ...);
- returns one number per completion, or None where this function does not
  apply (TRL's convention: such entries are left out of the sum; a completion
  no function scores is "unscorable" and gets no advantage).

Built in (`--reward NAME`): `arithmetic` (exact match with the row's
`answer`), `json` (parses, and fits the row's `schema` when there is one,
checked with jsonschema), `format` (the whole reply matches a regular
expression: the row's `format` or a bare integer). Anything else is
`--reward module:function` (or `path/to/file.py:function`).

`score` runs several functions with weights over a rollout batch and turns
a function that raises into an AcornError naming the prompt, or, when asked
(`skip_errors`), into unscorable completions that train nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from acorn.errors import AcornError

RewardFn = Callable[..., Sequence[float | None]]


def completion_text(completion) -> str:
    """The text of a completion: a string, or TRL's conversational [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1].get("content") or ""
    raise TypeError(f"a completion is a string or a list of messages, not {type(completion).__name__}")


def _answer_form(text: str) -> str:
    # The comparison acorn.eval.world scores arithmetic with: no surrounding
    # space, no final full stop ("42." is 42), case and inner spacing ignored.
    return " ".join(text.strip().lower().rstrip(".").split())


# ------------------------------------------------------------- built-ins
def arithmetic_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """1.0 when the reply is exactly the row's answer (the world's arithmetic
    rows carry it in `answer`), else 0.0; None for rows without an answer."""
    if answer is None:
        raise AcornError("the arithmetic reward needs an `answer` column in the data "
                         "(runs/world/rl_arithmetic.jsonl has one)")
    return [None if a is None else float(_answer_form(completion_text(c)) == _answer_form(str(a)))
            for c, a in zip(completions, answer)]


def json_reward(prompts, completions, schema=None, **_) -> list[float]:
    """1.0 when the reply is valid JSON and, where the row has a `schema` (a JSON
    Schema, as an object or a string), valid against it; else 0.0."""
    import jsonschema

    schemas = schema if schema is not None else [None] * len(completions)
    out = []
    for c, s in zip(completions, schemas):
        try:
            value = json.loads(completion_text(c))
        except ValueError:
            out.append(0.0)
            continue
        if s is None:
            out.append(1.0)
            continue
        s = json.loads(s) if isinstance(s, str) else s
        try:
            jsonschema.validate(value, s)
            out.append(1.0)
        except jsonschema.ValidationError:
            out.append(0.0)
        except jsonschema.SchemaError as e:
            raise AcornError(f"the row's schema is not a valid JSON Schema ({e.message}); fix the data") from None
    return out


BARE_INTEGER = r"-?\d+"


def format_reward(prompts, completions, format=None, **_) -> list[float]:
    """1.0 when the whole reply (surrounding space aside) matches a regular
    expression: the row's `format`, or a bare integer by default (the shape an
    arithmetic answer takes, worth something even when the number is wrong)."""
    patterns = format if format is not None else [BARE_INTEGER] * len(completions)
    return [float(re.fullmatch(p or BARE_INTEGER, completion_text(c).strip(), flags=re.DOTALL) is not None)
            for c, p in zip(completions, patterns)]


def reward_model(path) -> RewardFn:
    """A learned reward model (`acorn reward train`'s RUN/model) as a reward function: each
    prompt with its completion is one conversation (or one text), scored by the model through
    its own tokenizer and chat template, so a policy with another vocabulary can still be scored."""
    from acorn.train.reward import load_reward_model

    if not (Path(path) / "config.json").is_file():
        raise AcornError(f"reward model={path}: no config.json there; give RUN/model of `acorn reward train`")
    rm = load_reward_model(path)

    def score(prompts, completions, **_) -> list[float]:
        items = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list):
                items.append([*prompt, {"role": "assistant", "content": completion_text(completion)}])
            else:
                items.append(prompt + completion_text(completion))
        return rm.score(items)

    return score


BUILTIN: dict[str, RewardFn] = {"arithmetic": arithmetic_reward, "json": json_reward, "format": format_reward}


def load_reward(spec: str | RewardFn | tuple[str, RewardFn]) -> tuple[str, RewardFn]:
    """(name, function) from a built-in name, `module:function` or `path/file.py:function`
    (named after the function; a callable passes through, named after itself)."""
    if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1]):  # already (name, function)
        return spec
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    if spec in BUILTIN:
        return spec, BUILTIN[spec]
    if spec.startswith("model="):
        return "model", reward_model(spec[len("model="):])
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise AcornError(f"unknown reward {spec!r}; use one of {', '.join(BUILTIN)}, model=DIR (a reward model) "
                         "or module:function (e.g. my_rewards:length_penalty)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AcornError(f"reward {spec!r}: {path} does not exist; check the path")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise AcornError(f"reward {spec!r}: cannot import {module_name} ({e}); check the name and PYTHONPATH") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AcornError(f"reward {spec!r}: {module_name} has no function {attr!r}")
    return attr, fn  # named by the function: the metrics say reward/<name>


# ------------------------------------------------------------- scoring
@dataclass
class Scores:
    rewards: list[float]  # per completion: the weighted sum of the functions that scored it; nan if none did
    per_function: dict[str, list[float]]  # each function's own values (nan where it returned None)
    failed_prompts: list[int] = field(default_factory=list)  # groups whose reward raised (skip_errors)


def score(functions: Sequence[tuple[str, RewardFn]], weights: Sequence[float] | None, prompts: list,
          completions: list, completion_ids: list[list[int]], columns: dict[str, list], *, group: int = 1,
          skip_errors: bool = False) -> Scores:
    """Run every reward function over a batch in which each prompt has `group`
    consecutive completions. Each function is called once for the whole batch;
    if it raises, it is called again prompt by prompt to find the prompt that
    breaks it, which is an AcornError naming it, or, with skip_errors, leaves
    that prompt's completions unscored (nan) while the rest keep their rewards."""
    weights = list(weights) if weights else [1.0] * len(functions)
    if len(weights) != len(functions):
        raise AcornError(f"{len(weights)} reward weights for {len(functions)} reward functions; give one each")
    n = len(completions)
    per_function, failed = {}, set()
    for name, fn in functions:
        try:
            values = _call(name, fn, prompts, completions, completion_ids, columns, range(n))
        except AcornError:  # already says what to fix (a missing column, a bad return value)
            raise
        except Exception:  # find the prompt that breaks it: one call per group
            values = [math.nan] * n
            for start in range(0, n, group):
                rows = range(start, min(n, start + group))
                try:
                    values[start:rows.stop] = _call(name, fn, prompts, completions, completion_ids, columns, rows)
                except AcornError:
                    raise
                except Exception as e:
                    if not skip_errors:
                        raise AcornError(f"reward {name!r} raised {type(e).__name__}: {e} on the prompt "
                                         f"{_short(prompts[start])}; fix the function, or pass "
                                         "--skip-reward-errors to train on without that prompt") from e
                    failed.add(start // group)
        per_function[name] = values
    rewards = []
    for i in range(n):
        scored = [w * per_function[name][i] for w, (name, _) in zip(weights, functions)
                  if not math.isnan(per_function[name][i])]
        rewards.append(sum(scored) if scored and i // group not in failed else math.nan)
    return Scores(rewards, per_function, sorted(failed))


def _call(name, fn, prompts, completions, completion_ids, columns, rows) -> list[float]:
    """fn on some rows of the batch, its values checked: one number (or None -> nan) per completion."""
    rows = list(rows)
    out = fn(prompts=[prompts[i] for i in rows], completions=[completions[i] for i in rows],
             completion_ids=[completion_ids[i] for i in rows], **{k: [col[i] for i in rows] for k, col in columns.items()})
    out = list(out) if out is not None else None
    if out is None or len(out) != len(rows):
        raise AcornError(f"reward {name!r} returned {'nothing' if out is None else f'{len(out)} values'} for "
                         f"{len(rows)} completions; it must return one number (or None) per completion")
    values = []
    for v in out:
        try:
            values.append(math.nan if v is None else float(v))  # numbers, bools, 0-dim tensors
        except (TypeError, ValueError):
            raise AcornError(f"reward {name!r} returned {v!r}; it must return numbers (or None)") from None
    return values


def _short(prompt: Any, limit: int = 120) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return repr(text if len(text) <= limit else text[:limit] + "...")
