"""Tree of thoughts: search over partial solutions, each scored by the model.

Yao et al. 2023, "Tree of Thoughts: Deliberate Problem Solving with Large
Language Models". A solution is a sequence of steps (thoughts). Breadth-first
search with a beam:

  1. the frontier starts as the empty solution
  2. each unfinished solution on the frontier is expanded into `branches`
     candidate next steps (sampled from the model)
  3. every candidate is scored (the model's value of the partial solution)
  4. the `beam` best candidates, with the finished solutions kept from
     before, form the next frontier
  5. stop when every solution on the frontier is finished or after `depth`
     steps; the best finished solution (else the best one) is the result

tree_search() is that loop over any expand and score functions (so it is
tested on a toy problem with a stub scorer); tree_of_thoughts() plugs in the
engine: steps are sampled lines of a chain of thought, and the value is either
the model's mean log-probability of the path ("likelihood") or its
log-odds of "yes" over "no" when asked whether the reasoning is right
("judge", the paper's value prompt reduced to two words).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from acorn.errors import AcornError
from acorn.infer.sampling import SamplingParams
from acorn.prompting.answers import extract_answer
from acorn.prompting.strategies import Answer, Examples, examples_for, render


@dataclass(frozen=True)
class Thought:
    steps: tuple[str, ...] = ()
    score: float = 0.0
    done: bool = False  # a finished solution: not expanded further


def tree_search(expand: Callable[[list[Thought]], list[list[str]]], score: Callable[[list[Thought]], list[float]],
                is_done: Callable[[Thought], bool], *, beam: int = 2, depth: int = 4) -> Thought:
    """Beam search over partial solutions (steps 1-5 of the module docstring).
    expand(frontier) gives each thought's candidate next steps; score(thoughts)
    their values (higher is better); is_done(thought) whether it is finished."""
    if beam < 1 or depth < 1:
        raise AcornError(f"tree search needs beam >= 1 and depth >= 1, not beam={beam}, depth={depth}")
    frontier = [Thought()]  # 1
    for _ in range(depth):
        open_ = [t for t in frontier if not t.done]
        if not open_:
            break  # 5
        children, seen = [], set()
        for parent, steps in zip(open_, expand(open_)):  # 2
            for step in steps:
                path = parent.steps + (step,)
                if path not in seen:  # two samples of the same step are one candidate
                    seen.add(path)
                    children.append(Thought(path))
        if not children:
            break
        values = score(children)  # 3
        children = [Thought(c.steps, v) for c, v in zip(children, values)]
        children = [Thought(c.steps, c.score, is_done(c)) for c in children]
        # 4: stable sort, so equal scores keep the order they were found in
        frontier = sorted([t for t in frontier if t.done] + children, key=lambda t: -t.score)[:beam]
    finished = [t for t in frontier if t.done]
    return max(finished or frontier, key=lambda t: t.score)


def tree_of_thoughts(engine, questions: str | Sequence[str], *, branches: int = 3, beam: int = 2, depth: int = 4,
                     value: str = "likelihood", examples: Examples = (), system: str | None = None,
                     raw: bool = False, numeric: bool = False, temperature: float = 0.8, seed: int = 0,
                     max_step_tokens: int = 48):
    """Tree-of-thoughts answers: each step one line of a chain of thought,
    sampled `branches` times (one engine request with n = branches), the
    search kept to the `beam` best partial solutions. A solution is finished
    when a step says "The answer is X"."""
    if value not in ("likelihood", "judge"):
        raise AcornError(f"unknown tree-of-thoughts value {value!r}; choose likelihood or judge")
    if temperature <= 0:
        raise AcornError("tree of thoughts samples its branches: temperature must be > 0")
    qs = [questions] if isinstance(questions, str) else list(questions)
    tok = engine.tokenizer
    params = SamplingParams(n=branches, temperature=temperature, seed=seed, max_new_tokens=max_step_tokens,
                            stop=["\n"])
    context = engine.model.config.max_seq_len
    out = []
    for q in qs:
        base = render(engine, q, examples=examples_for(examples, q), system=system, cot=True, raw=raw)

        def path_ids(t: Thought) -> list[int]:
            return tok.encode("".join(f" {s.strip()}" if i == 0 else f"\n{s.strip()}" for i, s in enumerate(t.steps)))

        def expand(frontier: list[Thought]) -> list[list[str]]:
            prompts = [base + path_ids(t) + (tok.encode("\n") if t.steps else []) for t in frontier]
            fits = [p for p in prompts if len(p) + max_step_tokens <= context]
            if not fits:
                return [[] for _ in frontier]
            done = iter(engine.generate(fits, params))
            return [[c.text for c in (next(done) for _ in range(branches)) if c.text.strip()]
                    if len(p) + max_step_tokens <= context else [] for p in prompts]

        def score(thoughts: list[Thought]) -> list[float]:
            reqs = []
            for t in thoughts:
                if value == "likelihood":
                    # Mean log-probability per token of the whole path: the model's confidence in it.
                    reqs.append((base, [path_ids(t)]))
                else:
                    ask = f"{q}\nReasoning: {' '.join(t.steps)}\nIs this reasoning correct? Answer yes or no."
                    ctx = render(engine, ask, system=system, raw=raw)
                    reqs.append((ctx, [tok.encode(" yes" if raw else "yes"), tok.encode(" no" if raw else "no")]))
            # A path grown past the context cannot be scored: it loses to every other.
            fits = [i for i, (ctx, conts) in enumerate(reqs) if len(ctx) + max(map(len, conts)) <= context]
            scored = dict(zip(fits, engine.loglikelihood([reqs[i] for i in fits]) if fits else []))
            values = []
            for i, (_, conts) in enumerate(reqs):
                if i not in scored:
                    values.append(float("-inf"))
                elif value == "likelihood":
                    values.append(scored[i][0][0] / len(conts[0]))
                else:
                    values.append(scored[i][0][0] - scored[i][1][0])
            return values

        def is_done(t: Thought) -> bool:
            return extract_answer(t.steps[-1], marked=True) is not None

        if len(base) + max_step_tokens > context:
            out.append(Answer(None, "", prompt_tokens=len(base), skipped=True))
            continue
        best = tree_search(expand, score, is_done, beam=beam, depth=depth)
        text = "\n".join(s.strip() for s in best.steps)
        answer = extract_answer(text, numeric=numeric, marked=True)
        out.append(Answer(answer, text, [text], {answer: 1} if answer else {}, len(base)))
    return out[0] if isinstance(questions, str) else out
