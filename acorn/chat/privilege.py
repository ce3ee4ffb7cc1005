"""Privilege separation for tools: what a conversation may do once untrusted text is in it.

A prompt injection needs two things: text the attacker controls in the
model's context (a retrieved document, a web page, a tool's output) and a
way to act (a tool with side effects). Training and prompting lower the odds
that the model obeys the text (acorn.chat.context, acorn.eval.injection);
privilege separation removes the second thing instead, whatever the model
writes: the application tracks whether the context is *tainted* and decides
from that which calls may run (the idea of Willison's "dual LLM" pattern and
of CaMeL, Debenedetti et al. 2025, reduced to its simplest rule):

  1. the context is tainted once it holds a message from an untrusted source:
     a tool-role message (a tool's output), unless that tool is declared
     trusted (its output is computed, not fetched: a calculator), or any
     message marked {"untrusted": True} (e.g. a user turn carrying
     retrieved passages)
  2. while untainted, every call may run
  3. once tainted, a call of a tool with side effects (it sends, writes,
     deletes, pays) runs only if `confirm(call)` says yes, and without a
     confirm hook it is refused; with strict=True, every call of a tool not
     declared trusted is refused or confirmed the same way
  4. the refusal is a reason string: the agent loop shows it to the model as
     the call's result

A ToolPolicy is the `policy` of acorn.agent.Agent: policy(call, transcript)
-> a reason to refuse, or None; call is {"id", "name", "arguments"} and the
transcript the conversation so far (messages with "role", "content" and, for
tool results, the tool's "name").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class ToolPolicy:
    side_effects: Iterable[str] = ()  # tools that change something outside the conversation
    trusted: Iterable[str] = ()  # tools whose output cannot carry an attacker's text (it does not taint)
    confirm: Callable[[dict], bool] | None = None  # asked before a guarded call in a tainted context
    strict: bool = False  # once tainted, guard every untrusted tool, not only those with side effects
    log: list[dict] = field(default_factory=list)  # every decision: {"name", "tainted", "decision", "reason"}

    def __post_init__(self):
        self.side_effects, self.trusted = frozenset(self.side_effects), frozenset(self.trusted)

    def taint(self, transcript: list[dict]) -> str | None:
        """Why the context is tainted (the first untrusted message), or None when it is not."""
        for i, m in enumerate(transcript):
            if m.get("untrusted"):
                return f"message {i} ({m.get('role', '?')}) is marked untrusted"
            if m.get("role") == "tool" and m.get("name") not in self.trusted:
                return f"message {i} is output of the tool {m.get('name') or '(unnamed)'}"
        return None

    def guarded(self, name: str) -> bool:
        """Whether a call of `name` needs confirmation once the context is tainted."""
        return name in self.side_effects or (self.strict and name not in self.trusted)

    def __call__(self, call: dict, transcript: list[dict]) -> str | None:
        name = call.get("name") or ""
        why = self.taint(transcript)
        reason = None
        if why is not None and self.guarded(name):
            if self.confirm is None:
                reason = (f"{name} {'has side effects' if name in self.side_effects else 'is not trusted'} and the "
                          f"context holds untrusted content ({why}); it needs the user's confirmation")
            elif not self.confirm(call):
                reason = f"the user did not confirm {name} after untrusted content entered the context ({why})"
        self.log.append({"name": name, "tainted": why is not None,
                         "decision": "refused" if reason else "allowed", "reason": reason})
        return reason
