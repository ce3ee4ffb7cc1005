"""The Python a task YAML may name: per-document metrics, tools and template filters.

A task is data (acorn.eval.tasks), but some scores need more than a regex and
exact match: whether an answer about a person the model never saw is an
honest "I don't know", the knowledge base's value or a made-up one needs the
world's truth; a tool the model calls must be executed. Such a piece is a
Python function registered here under a name, and a task names it:

  metrics: [answer_match, tool_used]     # in the task YAML
  tools: [calculator]

(lm-evaluation-harness reaches the same with `!function module.name` in its
YAMLs; a registry keeps YAML files free of import paths and lets `acorn eval`
list what exists.) A metric is fn(doc, sample) -> float, averaged over the
documents; sample is the harness's record of the document (output, target,
choices, tool_calls, ...). A tool is its JSON schema (put in the chat
template's system prompt) and run(arguments_json) -> result text. A filter is a
Jinja filter the task's templates may use (doc_to_text, doc_to_choice, ...).
A module that adds its own calls register_metric / register_tool /
register_filter before the tasks that name them are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from acorn.data.world import CALCULATOR_TOOL, fact_sentence
from acorn.errors import AcornError
from acorn.eval import world


@dataclass(frozen=True)
class Tool:
    schema: dict  # OpenAI-style {"type": "function", "function": {name, description, parameters}}
    run: Callable[[str], str]  # the call's arguments (JSON text) -> the result the model reads


METRICS: dict[str, Callable[[dict, dict], float]] = {
    "answer_match": world.answer_match,
    "first_word_match": world.first_word_match,
    "idk_rate": world.idk_rate,
    "kb_answer_rate": world.kb_answer_rate,
    "hallucination_rate": world.hallucination_rate,
    "tool_used": world.tool_used,
    "chance": world.chance,
}
TOOLS: dict[str, Tool] = {
    "calculator": Tool(CALCULATOR_TOOL, world.run_calculator),
}


# Jinja filters for the tasks' templates: value | fact_sentence(person, attribute) is the world's
# answer sentence stating it (world_multiple_choice_sentence scores its choices in that form).
FILTERS: dict[str, Callable] = {
    "fact_sentence": lambda value, person, attribute: fact_sentence(person, attribute, value),
}


def register_metric(name: str, fn: Callable[[dict, dict], float]) -> None:
    METRICS[name] = fn


def register_tool(name: str, schema: dict, run: Callable[[str], str]) -> None:
    TOOLS[name] = Tool(schema, run)


def register_filter(name: str, fn: Callable) -> None:
    """A Jinja filter for the tasks' templates (value | name(args...))."""
    FILTERS[name] = fn


def tool(name: str) -> Tool:
    if name not in TOOLS:
        raise AcornError(f"unknown tool {name!r}; registered: {', '.join(TOOLS)}")
    return TOOLS[name]
