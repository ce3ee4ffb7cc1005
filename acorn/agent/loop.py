"""The agent loop: a chat model that reasons, calls tools, observes, and answers (ReAct).

ReAct (Yao et al. 2023) interleaves the model's own text with actions whose
observations come back into its context, until it answers. Here an action is
a tool call in the chat format's own syntax, the observation is the tool's
output in a tool turn, and the loop is Agent.run:

  1. render the conversation with the allowed tools' schemas (the chat
     template) and generate the assistant's next turn through the one engine,
     under the "auto" grammar when constrained (acorn.chat.tools: plain text,
     or calls that are well formed, to a declared tool, with arguments valid
     against its schema: never a broken call)
  2. a turn without calls is the answer: if `validate` finds a problem with
     it, the problem goes back to the model as a user turn (a retry);
     otherwise the loop ends
  3. each call passes the guardrails in order: the allowlist (only the
     agent's tools), the `policy` (a callable (call, transcript) -> reason to
     refuse, or None), the `confirm` hook for a tool with side effects; then
     the registry validates the arguments and runs the tool
     (acorn.agent.tools); refusals and errors are the call's result, shown to
     the model like any other
  4. an observation longer than `max_observation_tokens` is cut, and the cut
     is said in the observation and in the step; when the whole conversation
     no longer fits the model's context, the oldest observations are elided
     (said in their place) before anything else is given up
  5. limits end the loop, each with its own `stopped` reason: `max_steps`
     model turns ("step_limit"), `token_budget` generated tokens over all
     turns ("token_budget"), `max_retries` invalid turns in a row (a
     malformed or invalid call, an answer `validate` rejects:
     "invalid_calls" / "invalid_output"), a conversation that cannot fit the
     context ("context")

Every turn, call and result is a Step of the AgentResult and an event of its
JSONL trace; `format_transcript` prints them for a person.

    agent = Agent(engine, make_tools("calculator"))
    result = agent.run("What is 123 * 45?")
    print(format_transcript(result))
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from acorn.agent.tools import ToolRegistry, ToolResult
from acorn.chat.tools import TOOL_FORMATS, parse_tool_calls, tool_call_grammar, tool_syntax
from acorn.errors import AcornError

STOPS = ("answer", "step_limit", "token_budget", "invalid_calls", "invalid_output", "context")


@dataclass
class Step:
    """One model turn and what came of it."""
    index: int
    text: str  # the turn's content (its calls removed)
    tool_calls: list[dict]  # OpenAI-style calls the turn made
    results: list[ToolResult] = field(default_factory=list)  # one per call, in order
    tokens: int = 0  # generated in this turn
    finish_reason: str = "stop"
    malformed: bool = False  # it tried to call a tool but the call could not be read
    notes: list[str] = field(default_factory=list)  # what the loop did to the context (truncation, elision, retries)

    def to_json(self) -> dict:
        return {"index": self.index, "text": self.text, "tool_calls": self.tool_calls,
                "results": [r.to_json() for r in self.results], "tokens": self.tokens,
                "finish_reason": self.finish_reason, "malformed": self.malformed, "notes": self.notes}


@dataclass
class AgentResult:
    answer: str | None  # the final answer; None when a limit ended the loop first
    stopped: str  # one of STOPS
    steps: list[Step]
    messages: list[dict]  # the whole conversation, as the model last saw it
    tokens: int  # generated over all turns
    seconds: float = 0.0
    events: list[dict] = field(default_factory=list)  # the trace, one dict per line

    @property
    def tool_calls(self) -> int:
        return sum(len(s.tool_calls) for s in self.steps)

    @property
    def malformed_calls(self) -> int:
        return sum(s.malformed for s in self.steps)

    @property
    def invalid_calls(self) -> int:
        """Calls the registry or the allowlist turned away (unknown tool, bad JSON, schema errors)."""
        return sum(r.error in ("unknown_tool", "bad_json", "bad_arguments") for s in self.steps for r in s.results)

    def to_json(self) -> dict:
        return {"answer": self.answer, "stopped": self.stopped, "tokens": self.tokens, "seconds": self.seconds,
                "tool_calls": self.tool_calls, "malformed_calls": self.malformed_calls,
                "invalid_calls": self.invalid_calls, "steps": [s.to_json() for s in self.steps],
                "messages": self.messages}


def _call_view(call: dict) -> dict:
    """A call as guardrails see it: {"id", "name", "arguments"} with the arguments parsed when they are JSON."""
    fn = call.get("function", call)
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    return {"id": call.get("id"), "name": fn.get("name"), "arguments": args}


class Agent:
    """A chat model with tools, run as a ReAct loop (see the module docstring).

    engine: an acorn Engine (chat template, tokenizer, context length, generation).
    tools: a ToolRegistry (or Tools); allow: the names this agent may call (default: all).
    policy: (call, transcript) -> a reason to refuse the call, or None (a ToolPolicy of acorn's
        prompt-injection defences has this shape); call is {"id", "name", "arguments"}.
    confirm: (call) -> bool, asked before every call of a tool with side effects (None: they run).
    validate: (answer) -> a problem with the final answer, or None.
    generate: (prompt ids, SamplingParams) -> Completion; default engine.generate (the server
        passes its async engine's).
    """

    def __init__(self, engine, tools: ToolRegistry | Iterable, *, allow: Iterable[str] | None = None,
                 system: str | None = None, max_steps: int = 6, token_budget: int = 1024,
                 max_new_tokens: int = 128, max_observation_tokens: int = 200, max_retries: int = 2,
                 constrained: bool = True, temperature: float = 0.0, seed: int | None = 0,
                 policy: Callable[[dict, list[dict]], str | None] | None = None,
                 confirm: Callable[[dict], bool] | None = None, validate: Callable[[str], str | None] | None = None,
                 generate: Callable | None = None, trace: str | Path | None = None):
        self.engine = engine
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        allow = list(self.registry.names if allow is None else allow)
        unknown = [n for n in allow if n not in self.registry]
        if unknown:
            raise AcornError(f"the allowlist names {unknown[0]!r}, which is not among the tools "
                             f"({', '.join(self.registry.names) or 'none'})")
        self.allow = allow
        for name, value, least in (("max_steps", max_steps, 1), ("token_budget", token_budget, 1),
                                   ("max_new_tokens", max_new_tokens, 1), ("max_observation_tokens",
                                   max_observation_tokens, 16), ("max_retries", max_retries, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise AcornError(f"{name} must be an integer >= {least}, got {value!r}")
        self.system, self.max_steps, self.token_budget = system, max_steps, token_budget
        self.max_new_tokens, self.max_observation_tokens, self.max_retries = (max_new_tokens, max_observation_tokens,
                                                                              max_retries)
        self.temperature, self.seed = temperature, seed
        self.policy, self.confirm, self.validate = policy, confirm, validate
        self._generate = generate or (lambda ids, params: engine.generate([ids], params)[0])
        self.trace = trace
        self.chat_format = getattr(engine, "chat_format", None)
        if self.allow and self.chat_format not in TOOL_FORMATS:
            raise AcornError("this model's tokenizer has no chat format with a tool-call syntax, so it cannot call "
                             f"tools; use a chat model whose format is one of {', '.join(TOOL_FORMATS)}")
        self.specs = self.registry.specs(self.allow)
        self.grammar = None
        if constrained and self.allow:
            self.grammar = tool_call_grammar(engine.tokenizer, self.chat_format,
                                             [(s["function"]["name"], s["function"]["parameters"]) for s in self.specs],
                                             allow_text=True)
        syntax = tool_syntax(self.chat_format)
        self._openers = tuple(m.strip() for m in ((syntax.call_open, syntax.begin) if syntax else ()) if m.strip())

    # ------------------------------------------------------------ helpers
    def _params(self, max_new: int):
        from acorn.infer import SamplingParams

        return SamplingParams(max_new_tokens=max_new, temperature=self.temperature, seed=self.seed,
                              guided={"grammar": self.grammar} if self.grammar else None)

    def _prompt(self, messages: list[dict]) -> list[int]:
        return self.engine.chat_prompt(messages, tools=self.specs or None)

    def _cut(self, text: str) -> tuple[str, str | None]:
        """An observation within max_observation_tokens, and the note saying it was cut."""
        tok = self.engine.tokenizer
        ids = tok.encode(text)
        if len(ids) <= self.max_observation_tokens:
            return text, None
        note = f"[truncated: the output was {len(ids)} tokens; the first {self.max_observation_tokens} are shown]"
        return tok.decode(ids[: self.max_observation_tokens]) + "\n" + note, note

    def _fit(self, messages: list[dict], room: int, notes: list[str]) -> list[int] | None:
        """The prompt's ids with room for `room` new tokens, eliding the oldest
        observations while it does not fit; None when nothing more can go."""
        limit = self.engine.model.config.max_seq_len
        while True:
            ids = self._prompt(messages)
            if len(ids) + room <= limit:
                return ids
            old = next((m for m in messages if m["role"] == "tool" and not m.get("elided")), None)
            if old is None:
                return None
            n = len(self.engine.tokenizer.encode(old["content"]))
            old["content"], old["elided"] = f"[elided to fit the context: {n} tokens of earlier output]", True
            notes.append(f"elided an earlier observation of {n} tokens to fit the context")

    def _malformed(self, completion) -> bool:
        """The turn tried to call a tool but no call could be read (a marker left in
        the content, or the turn cut off inside a call)."""
        return any(m in completion.text for m in self._openers)

    def _guard(self, view: dict, messages: list[dict]) -> ToolResult | None:
        """The guardrails before a call runs: a refusal as the call's result, or None to go on."""
        name = view["name"]
        args = view["arguments"] if isinstance(view["arguments"], dict) else None
        if name in self.registry and name not in self.allow:
            return ToolResult(name, args, f"refused: {name} is not among this agent's tools "
                                          f"({', '.join(self.allow)})", "refused")
        if self.policy is not None and name in self.registry:
            reason = self.policy(view, messages)
            if reason:
                return ToolResult(name, args, f"refused: {reason}", "refused")
        if name in self.registry and self.registry[name].side_effects and self.confirm is not None:
            if not self.confirm(view):
                return ToolResult(name, args, f"refused: the user did not confirm this call of {name}", "refused")
        return None

    # ------------------------------------------------------------ the loop
    def run(self, task: str | list[dict]) -> AgentResult:
        """Run the loop on a task (a user message, or a whole conversation)."""
        if isinstance(task, str):
            if not task.strip():
                raise AcornError("the task is empty; give the agent something to do")
            messages = [{"role": "user", "content": task}]
        else:
            messages = [dict(m) for m in task]
            if not messages:
                raise AcornError("the conversation is empty; give the agent a user message")
        if self.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system})
        t0 = time.perf_counter()
        events = [{"event": "start", "task": task, "tools": self.allow, "constrained": self.grammar is not None,
                   "max_steps": self.max_steps, "token_budget": self.token_budget, "time": time.time()}]
        steps: list[Step] = []
        used, retries, answer, stopped = 0, 0, None, "step_limit"
        for index in range(self.max_steps):
            left = self.token_budget - used
            if left <= 0:
                stopped = "token_budget"
                break
            room = min(self.max_new_tokens, left)
            notes: list[str] = []
            ids = self._fit(messages, room, notes)
            if ids is None:
                stopped = "context"
                break
            completion = self._generate(ids, self._params(room))
            if completion.finish_reason == "error":
                raise AcornError(f"generation failed: {completion.error}")
            content, calls = parse_tool_calls(completion.text, self.chat_format)
            completion.text = content
            used += len(completion.token_ids)
            step = Step(index, content, calls, tokens=len(completion.token_ids),
                        finish_reason=completion.finish_reason, notes=notes)
            steps.append(step)
            step.malformed = not calls and self._malformed(completion)
            event = {"event": "model", "step": index, "text": content, "tool_calls": calls,
                     "tokens": step.tokens, "finish_reason": completion.finish_reason, "malformed": step.malformed}
            events.append(event | ({"notes": list(notes)} if notes else {}))
            if step.malformed:
                retries += 1
                messages += [{"role": "assistant", "content": content},
                             {"role": "tool", "tool_call_id": "malformed", "content":
                              'error: that tool call could not be read; write it as {"name": NAME, "arguments": '
                              '{...}} with the arguments as a JSON object, or answer in plain text'}]
                step.notes.append("malformed call: the error was shown to the model")
                if retries > self.max_retries:
                    stopped = "invalid_calls"
                    break
                continue
            if not calls:
                problem = self.validate(content) if self.validate is not None else None
                if problem:
                    retries += 1
                    step.notes.append(f"answer rejected: {problem}")
                    events.append({"event": "rejected", "step": index, "problem": problem})
                    if retries > self.max_retries:
                        stopped = "invalid_output"
                        break
                    messages += [{"role": "assistant", "content": content},
                                 {"role": "user", "content": f"That answer was not accepted: {problem}. Try again."}]
                    continue
                messages.append({"role": "assistant", "content": content})
                answer, stopped = content.strip(), "answer"
                break
            messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
            invalid = False
            for call in calls:
                view = _call_view(call)
                result = self._guard(view, messages) or self.registry.call(view["name"],
                                                                           call["function"]["arguments"])
                invalid = invalid or result.error in ("unknown_tool", "bad_json", "bad_arguments")
                shown, note = self._cut(result.content)
                if note:
                    step.notes.append(f"{result.name}: {note}")
                step.results.append(result)
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": result.name, "content": shown})
                events.append({"event": "tool", "step": index, "name": result.name, "arguments": result.arguments,
                               "content": shown, "error": result.error, "truncated": note is not None})
            retries = retries + 1 if invalid else 0
            if invalid and retries > self.max_retries:
                stopped = "invalid_calls"
                break
        else:
            stopped = "step_limit"
        for m in messages:
            m.pop("elided", None)
        result = AgentResult(answer, stopped, steps, messages, used, round(time.perf_counter() - t0, 3), events)
        events.append({"event": "end", "stopped": stopped, "answer": answer, "tokens": used, "steps": len(steps),
                       "seconds": result.seconds})
        if self.trace is not None:
            from acorn.fileio import write_jsonl

            write_jsonl(self.trace, events)
        return result


def format_transcript(result: AgentResult) -> str:
    """The run for a person: each message, each call and result, what the loop did, and why it stopped."""
    lines = []
    for m in result.messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                lines.append(f"assistant: {m['content']}")
            for c in m["tool_calls"]:
                lines.append(f"assistant -> {c['function']['name']}({c['function']['arguments']})")
        elif role == "tool":
            lines.append(f"{m.get('name', 'tool')}: {m['content']}")
        else:
            lines.append(f"{role}: {m['content']}")
    for s in result.steps:
        for n in s.notes:
            lines.append(f"[step {s.index + 1}: {n}]")
    lines.append(f"[stopped: {result.stopped} after {len(result.steps)} step{'s' * (len(result.steps) != 1)}, "
                 f"{result.tokens} tokens generated, {result.seconds:.1f} s]")
    return "\n".join(lines)
