"""World evaluation scoring, with a scripted engine standing in for a model, on the
root conftest's tiny world (its tokenizer, `tok`, only names the chat format)."""

from __future__ import annotations

import json

from acorn.data.world import IDK_ANSWER
from acorn.eval.world import evaluate_world, normalize
from acorn.infer.sequence import Completion


class Scripted:
    """Answers from a lookup table of the world's own answers (or wrong ones)."""

    def __init__(self, world, tok, *, correct: bool, use_tool: bool):
        self.tokenizer, self.correct, self.use_tool = tok, correct, use_tool
        self.answers = {}
        for name in ("fact_qa", "unknown_qa", "arithmetic"):
            for line in (world / "eval" / f"{name}.jsonl").read_text().splitlines():
                row = json.loads(line)
                self.answers[row["question"]] = row["answer"]
        self.calls = 0

    class model:  # engine.model.config.max_seq_len is all the evaluator reads of the model
        class config:
            max_seq_len = 10_000

    def encode(self, prompt):
        return prompt  # handed back to generate() as is

    def chat_prompt(self, messages, tools=None):
        return messages  # opaque to the evaluator: handed back to generate()

    def generate(self, prompts, **params):
        out = []
        for p in prompts:
            if isinstance(p, str):  # in-context prompts
                text = " nothing"
            elif p[-1]["role"] == "tool":  # after a calculator call: answer from the result
                text = p[-1]["content"]
            else:
                q = p[0]["content"]
                answer = self.answers[q]
                if self.use_tool and q.startswith(("What is", "Compute", "Calculate")):
                    self.calls += 1
                    expr = q.split(" ", 2)[-1].rstrip("?.") if q.startswith("What is") else q.split(" ", 1)[1].rstrip(".")
                    text = '<|tool_call|>' + json.dumps({"name": "calculator", "arguments": {"expression": expr}}) + "<|/tool_call|>"
                else:
                    text = answer if self.correct else answer + "0"
            out.append(Completion(prompt_tokens=0, token_ids=[], text=text, finish_reason="stop"))
        return out

    def score(self, prompt, continuations):
        return [0.0] + [-1.0] * (len(continuations) - 1)


def test_perfect_answers_score_everything(tiny_world, tok):
    r = evaluate_world(Scripted(tiny_world, tok, correct=True, use_tool=False), tiny_world)
    assert r["fact_qa"]["all"] == 1.0 and r["unknown_qa"]["idk_rate"] == 1.0
    assert r["unknown_qa"]["hallucination_rate"] == 0.0 and r["arithmetic"]["all"] == 1.0
    assert 0 < r["multiple_choice"]["accuracy"] <= 1.0  # gold is not always the first choice
    assert r["in_context"]["accuracy"] == 0.0


def test_wrong_answers_and_hallucinations(tiny_world, tok):
    r = evaluate_world(Scripted(tiny_world, tok, correct=False, use_tool=False), tiny_world,
                       tasks=("fact_qa", "unknown_qa"))
    assert r["fact_qa"]["all"] == 0.0
    assert r["unknown_qa"]["idk_rate"] == 0.0 and r["unknown_qa"]["hallucination_rate"] == 1.0
    assert r["unknown_qa"]["kb_answer_rate"] == 0.0


def test_knowledge_base_answers_count_as_known_not_hallucinated(tiny_world, tok):
    engine = Scripted(tiny_world, tok, correct=True, use_tool=False)
    for line in (tiny_world / "eval" / "unknown_qa.jsonl").read_text().splitlines():
        row = json.loads(line)
        engine.answers[row["question"]] = row["kb_answer"]  # a model taught the knowledge base
    r = evaluate_world(engine, tiny_world, tasks=("unknown_qa",))["unknown_qa"]
    assert r["kb_answer_rate"] == 1.0 and r["idk_rate"] == 0.0 and r["hallucination_rate"] == 0.0


def test_calculator_calls_are_executed(tiny_world, tok):
    engine = Scripted(tiny_world, tok, correct=False, use_tool=True)
    r = evaluate_world(engine, tiny_world, tasks=("arithmetic",))
    assert engine.calls > 0 and r["arithmetic"]["tool_used"] == 1.0
    assert r["arithmetic"]["all"] == 1.0  # the right result came from executing the calls


def test_normalize():
    assert normalize("  I don't KNOW. ") == normalize(IDK_ANSWER)
