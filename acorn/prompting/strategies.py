"""Prompting strategies: zero-shot, few-shot, chain of thought, self-consistency, system prompts and roles.

Each is a small function that builds a prompt and asks the one engine
(acorn.infer.Engine) for completions; none has a generation loop of its own.
They take one question (-> Answer) or a list (-> list[Answer], all prompts in
one engine call so continuous batching and the prefix cache serve them).

  zero-shot          the question alone (Radford et al. 2019, GPT-2)
  few-shot           k solved examples first (Brown et al. 2020, GPT-3); in a
                     chat, each example is a user turn and an assistant turn
  chain of thought   the answer comes after its reasoning: demonstrations
                     with worked steps (Wei et al. 2022) or, with none, the
                     trigger "Let's think step by step." (Kojima et al. 2022)
  self-consistency   n sampled chains, each answer extracted, the majority
                     answer kept (Wang et al. 2022)
  system prompts     a system message (role "system") first; roles are the
  and roles          chat template's (acorn.chat.template renders them), so a
                     chat model sees the conversation in the format it was
                     fine-tuned on

A chat model gets its prompt through the tokenizer's chat template; a base
model (raw=True) gets plain text, "Q: ...\\nA: ..." blocks, the form
pretraining text has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from acorn.errors import AcornError
from acorn.infer.sampling import SamplingParams
from acorn.prompting.answers import extract_answer, majority_vote
from acorn.prompting.examples import Example

COT_TRIGGER = "Let's think step by step."

Examples = Sequence[Example] | Callable[[str], Sequence[Example]]  # fixed, or chosen per question


@dataclass
class Answer:
    answer: str | None  # the extracted, normalised answer (None: nothing to extract)
    text: str  # the completion the answer came from (for self-consistency: the first that reached it)
    samples: list[str] = field(default_factory=list)  # every completion's text
    votes: dict[str, int] = field(default_factory=dict)  # answer -> samples that reached it
    prompt_tokens: int = 0
    skipped: bool = False  # the prompt did not fit the model's context: not asked


# ------------------------------------------------------------------ prompts
def _shown(example: Example, cot: bool) -> str:
    """An example's answer as the model should write it."""
    if cot and example.reasoning:
        return f"{example.reasoning} The answer is {example.output}."
    return example.output


def messages(question: str, *, examples: Sequence[Example] = (), system: str | None = None,
             cot: bool = False) -> list[dict]:
    """The conversation for a chat model: the system message, each example as
    a user turn answered by an assistant turn, then the question."""
    out = [{"role": "system", "content": system}] if system else []
    for e in examples:
        out += [{"role": "user", "content": e.input}, {"role": "assistant", "content": _shown(e, cot)}]
    trigger = cot and not any(e.reasoning for e in examples)
    out.append({"role": "user", "content": f"{question}\n{COT_TRIGGER}" if trigger else question})
    return out


def text_prompt(question: str, *, examples: Sequence[Example] = (), system: str | None = None,
                cot: bool = False) -> str:
    """The prompt for a base model: plain text, one "Q: ...\\nA: ..." block per example."""
    blocks = [system] if system else []
    blocks += [f"Q: {e.input}\nA: {_shown(e, cot)}" for e in examples]
    trigger = cot and not any(e.reasoning for e in examples)
    blocks.append(f"Q: {question}\nA:" + (f" {COT_TRIGGER}" if trigger else ""))
    return "\n\n".join(blocks)


def render(engine, question: str, *, examples: Sequence[Example] = (), system: str | None = None,
           cot: bool = False, raw: bool = False) -> list[int]:
    """Token ids of the prompt: through the chat template unless raw."""
    if raw or engine.tokenizer.chat_format is None:
        return engine.encode(text_prompt(question, examples=examples, system=system, cot=cot))
    return engine.chat_prompt(messages(question, examples=examples, system=system, cot=cot))


# ------------------------------------------------------------------ the engine call
def default_params(*, cot: bool, raw: bool, **overrides) -> SamplingParams:
    """Greedy unless told otherwise; room for the reasoning when there is some.
    A base model has no end-of-turn token, so a blank line (the next example)
    ends its answer, and a direct answer ends at its line."""
    stop = (["\n\n", "\nQ:"] if cot else ["\n"]) if raw else []
    return SamplingParams.merge(SamplingParams(temperature=0.0, max_new_tokens=96 if cot else 24, stop=stop),
                                overrides)


def ask(engine, prompts: list[list[int]], params: SamplingParams, *, numeric: bool = False) -> list[Answer]:
    """One engine call for every prompt (params.n samples each); the answers
    majority-voted per prompt (with n = 1, the one completion's answer).
    A prompt that leaves no room for max_new_tokens in the context is skipped."""
    room = engine.model.config.max_seq_len - params.max_new_tokens
    fits = [i for i, p in enumerate(prompts) if len(p) <= room]
    done = engine.generate([prompts[i] for i in fits], params) if fits else []
    out = [Answer(None, "", prompt_tokens=len(p), skipped=True) for p in prompts]
    for j, i in enumerate(fits):
        samples = [c.text for c in done[j * params.n:(j + 1) * params.n]]
        extracted = [extract_answer(t, numeric=numeric) for t in samples]
        best, votes = majority_vote(extracted)
        text = samples[extracted.index(best)] if best is not None else samples[0]
        out[i] = Answer(best, text, samples, dict(votes), len(prompts[i]))
    return out


def _questions(questions: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(questions, str):
        return [questions], True
    questions = list(questions)
    if not all(isinstance(q, str) and q for q in questions):
        raise AcornError("questions must be non-empty strings")
    return questions, False


def examples_for(examples: Examples, question: str) -> Sequence[Example]:
    """The demonstrations for one question: the fixed list, or the chooser's pick."""
    return examples(question) if callable(examples) else examples


def _strategy(engine, questions, *, examples: Examples = (), system=None, cot=False, raw=False, numeric=False,
              params: SamplingParams | None = None, **overrides):
    qs, single = _questions(questions)
    p = default_params(cot=cot, raw=raw) if params is None else params
    p = SamplingParams.merge(p, overrides)
    prompts = [render(engine, q, examples=examples_for(examples, q), system=system, cot=cot, raw=raw) for q in qs]
    answers = ask(engine, prompts, p, numeric=numeric)
    return answers[0] if single else answers


# ------------------------------------------------------------------ the strategies
def zero_shot(engine, questions: str | Sequence[str], *, system: str | None = None, raw: bool = False,
              numeric: bool = False, params: SamplingParams | None = None, **overrides):
    """The question alone (with an optional system prompt): direct answering."""
    return _strategy(engine, questions, system=system, raw=raw, numeric=numeric, params=params, **overrides)


def few_shot(engine, questions: str | Sequence[str], examples: Examples, *, system: str | None = None,
             raw: bool = False, numeric: bool = False, params: SamplingParams | None = None, **overrides):
    """Solved examples, then the question. examples: a list for every question,
    or a function question -> examples (acorn.prompting.choose_examples)."""
    return _strategy(engine, questions, examples=examples, system=system, raw=raw, numeric=numeric,
                     params=params, **overrides)


def chain_of_thought(engine, questions: str | Sequence[str], *, examples: Examples = (), system: str | None = None,
                     raw: bool = False, numeric: bool = False, params: SamplingParams | None = None, **overrides):
    """Reasoning before the answer: examples with worked steps, or the
    zero-shot trigger when none has any. The answer is read from the
    completion's last "The answer is X"."""
    return _strategy(engine, questions, examples=examples, system=system, cot=True, raw=raw, numeric=numeric,
                     params=params, **overrides)


def self_consistency(engine, questions: str | Sequence[str], *, n: int = 5, examples: Examples = (),
                     system: str | None = None, cot: bool = True, raw: bool = False, numeric: bool = False,
                     temperature: float = 0.7, seed: int | None = 0, params: SamplingParams | None = None,
                     **overrides):
    """n sampled completions per question (one engine request with n samples),
    each answer extracted, the most frequent one returned with its votes.
    temperature must be > 0: n greedy samples would be n copies of one."""
    if temperature <= 0:
        raise AcornError("self-consistency samples: temperature must be > 0 (e.g. 0.7)")
    p = default_params(cot=cot, raw=raw) if params is None else params
    p = SamplingParams.merge(p, {"n": n, "temperature": temperature, "seed": seed} | overrides)
    return _strategy(engine, questions, examples=examples, system=system, cot=cot, raw=raw, numeric=numeric,
                     params=p)


STRATEGIES = {"zero-shot": zero_shot, "few-shot": few_shot, "cot": chain_of_thought,
              "self-consistency": self_consistency}
