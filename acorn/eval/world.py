"""Evaluating a chat model on the built-in world: what it knows, and what it knows it doesn't.

The evaluation is a group of tasks of the one harness (acorn/eval/tasks/world*.yaml;
`acorn eval CKPT --tasks world --data-dir WORLD`, WORLD a directory written by
`acorn data world`), each a greedy generation or a log-likelihood through the one
engine, with the chat template, scored against the world's ground truth
(WORLD/eval/*.jsonl):

  world_fact_qa     "When was X born?" and the like, exact match after normalize(),
                    of the bare value or of the world's answer sentence about X
                    ("As far as I know, X was born in 1959.": answer_value),
                    split into questions SFT asked (in_sft) and facts only
                    pretraining documents stated (pretrain_only), which tests
                    knowledge extraction (Allen-Zhu & Li, Physics of LMs 3.1),
                    and by attribute
  world_unknown_qa  people the model never saw: the rate of the honest "I don't
                    know." (idk_rate), of confident made-up answers
                    (hallucination_rate), and of the knowledge base's true value
                    (kb_answer_rate: knowledge added by fine-tuning)
  world_arithmetic  exact match by number of digits; the calculator tool is in
                    the prompt, a call the model makes is executed and the model
                    answers from the result (one round); tool_used is reported
  world_multiple_choice  the same facts scored by the log-likelihood of each choice
                    (MMLU style): no generation, so it shows knowledge the model
                    cannot yet put into words; `chance` beside it
  world_multiple_choice_sentence  the same, each choice as the world's answer
                    sentence (for a model SFT taught to answer in sentences;
                    the template filter fact_sentence, acorn.eval.registry)
  world_icl         few-shot label mappings invented per item, so only in-context
                    learning solves them (Brown et al. 2020)

This module holds what those tasks need of the world's truth, registered by
name in acorn.eval.registry: how answers compare, how an answer about an
unknown person is classified, and the calculator the arithmetic task executes.
Each metric takes (document, sample) — the sample being the harness's record
of the document: its output text, target, choices, tool calls — and returns
a score in [0, 1] that the harness averages.
"""

from __future__ import annotations

import json

from acorn.data.world import IDK_ANSWER, answer_value, calculate


def normalize(text: str) -> str:
    """Compare answers without case, surrounding space or a final full stop."""
    return " ".join(text.strip().lower().rstrip(".").split())


def classify_unknown(answer: str, doc: dict) -> str:
    """An answer to a question about a person the model never saw: "idk" (the
    honest refusal), "kb" (the knowledge base's value: taught by fine-tuning),
    "empty", or "made_up" (a hallucination). A value in the world's answer sentence
    about the document's person counts as that value (answer_value)."""
    answer = _value(answer, doc)
    if normalize(answer) == normalize(IDK_ANSWER):
        return "idk"
    if normalize(answer) == normalize(doc["kb_answer"]):
        return "kb"
    return "empty" if answer.strip() == "" else "made_up"


# ------------------------------------------------------------------ metrics (doc, sample) -> score
def _value(output: str, doc: dict) -> str:
    """A fact question's answer: the value it states (acorn.data.world.answer_value: a bare
    value, or the world's answer sentence about the document's person and attribute)."""
    return answer_value(output, doc["person"], doc["attribute"]) if "person" in doc and "attribute" in doc else output


def answer_match(doc: dict, sample: dict) -> float:
    """Exact match of the output and the target after normalize(); for a fact question, of
    the value the answer states (a sentence about another person or attribute matches nothing)."""
    return float(normalize(_value(sample["output"], doc)) == normalize(sample["target"]))


def first_word_match(doc: dict, sample: dict) -> float:
    """The output's first word (after normalize()) is the target: a label
    followed by more text still counts."""
    return float(normalize(sample["output"]).split(" ")[0:1] == [normalize(sample["target"])])


def idk_rate(doc: dict, sample: dict) -> float:
    return float(classify_unknown(sample["output"], doc) == "idk")


def kb_answer_rate(doc: dict, sample: dict) -> float:
    return float(classify_unknown(sample["output"], doc) == "kb")


def hallucination_rate(doc: dict, sample: dict) -> float:
    return float(classify_unknown(sample["output"], doc) == "made_up")


def tool_used(doc: dict, sample: dict) -> float:
    """The model called a tool in its first reply."""
    return float(bool(sample.get("tool_calls")))


def chance(doc: dict, sample: dict) -> float:
    """What guessing scores: 1 / the number of choices (a multiple-choice
    sample's, else the document's `labels`)."""
    return 1 / len(sample.get("choices") or doc["labels"])


# ------------------------------------------------------------------ tools
def run_calculator(arguments: str) -> str:
    """The calculator tool on a call's JSON arguments: the result, or the error
    the model is shown instead (it never raises on the model's input)."""
    try:
        return str(calculate(json.loads(arguments).get("expression", "")))
    except (ValueError, AttributeError, json.JSONDecodeError) as e:
        return f"error: {e}"
