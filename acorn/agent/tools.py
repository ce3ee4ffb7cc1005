"""A tool registry: what a model may call, described the way it is shown to it.

A tool is a name, a description, a JSON Schema of its arguments and a Python
callable (OpenAI's function-calling protocol; Schick et al. 2023,
"Toolformer", for models that decide when to call). The registry is the one
place a call from the model becomes a call of Python code, in this order:

  1. the name must be a registered tool
  2. the arguments must be a JSON object (a string is parsed first)
  3. the arguments must validate against the tool's schema (jsonschema)
  4. the callable runs with them as keyword arguments, under a wall-clock
     limit (a tool that hangs is abandoned, its call answered with an error)

A failure at any step never raises: it becomes the call's result, a line
starting "error:" that says what was wrong and how to call the tool instead,
and the model sees it as the tool's output and may try again (the agent loop
counts such retries). Only a tool's own result is shown when all four pass.

    registry = ToolRegistry([calculator_tool()])
    registry.call("calculator", '{"expression": "6+6"}').content   # '12'
"""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import jsonschema

from acorn.errors import AcornError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
# The kinds of failed call; None when the tool ran and answered.
ERRORS = ("unknown_tool", "bad_json", "bad_arguments", "raised", "timeout", "refused")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON Schema of the arguments object
    function: Callable[..., Any] = field(compare=False)  # called with the validated arguments as keywords
    side_effects: bool = False  # changes something outside the conversation: the agent asks its confirm hook first
    timeout: float = 30.0  # seconds a call may take before it is abandoned

    def __post_init__(self):
        if not NAME.match(self.name):
            raise AcornError(f"tool name {self.name!r} must be 1-64 letters, digits, _ or -")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise AcornError(f"tool {self.name!r}: parameters must be a JSON Schema of type \"object\"")
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise AcornError(f"tool {self.name!r}: its parameters are not a valid JSON Schema ({e.message})") from None
        if not callable(self.function):
            raise AcornError(f"tool {self.name!r}: function must be callable")

    def spec(self) -> dict:
        """The tool as the chat template and the OpenAI API show it to a model."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass
class ToolResult:
    name: str
    arguments: dict | None  # None when they were not a JSON object
    content: str  # what the model is shown as the tool's output
    error: str | None = None  # one of ERRORS, or None: the tool answered

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        return {"name": self.name, "arguments": self.arguments, "content": self.content, "error": self.error}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


class ToolRegistry:
    """Tools by name; `call` is the only way a model's call reaches Python."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise AcornError(f"a tool named {tool.name!r} is already registered; give each tool its own name")
        self._tools[tool.name] = tool
        return tool

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        if name not in self._tools:
            raise AcornError(f"no tool named {name!r}; the tools are: {', '.join(self._tools) or 'none'}")
        return self._tools[name]

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self, names: Iterable[str] | None = None) -> list[dict]:
        """The tools' specs for the chat template (all, or those named)."""
        return [self[n].spec() for n in (self._tools if names is None else names)]

    def select(self, names: Iterable[str]) -> "ToolRegistry":
        """A registry of only the named tools (an agent's allowlist)."""
        return ToolRegistry(self[n] for n in names)

    def check(self, name: str, arguments: str | dict | None) -> ToolResult | dict:
        """Steps 1-3: the validated arguments, or the failed call's result."""
        if name not in self._tools:
            return ToolResult(name, None, f"error: there is no tool named {name!r}; call one of: "
                                          f"{', '.join(self._tools) or 'none'}", "unknown_tool")
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                return ToolResult(name, None, f"error: the arguments are not valid JSON ({e.msg}); write them as "
                                              "a JSON object", "bad_json")
        if not isinstance(arguments, dict):
            return ToolResult(name, None, "error: the arguments must be a JSON object", "bad_json")
        tool = self._tools[name]
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters)
                                                   .iter_errors(arguments))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path)
            return ToolResult(name, arguments, f"error: the arguments do not match {name}'s schema"
                                               f"{' at ' + where if where else ''}: {problem.message}; expected "
                                               f"{json.dumps(tool.parameters, ensure_ascii=False)}", "bad_arguments")
        return arguments

    def call(self, name: str, arguments: str | dict | None) -> ToolResult:
        """Run one call (steps 1-4); never raises for anything the model wrote."""
        checked = self.check(name, arguments)
        if isinstance(checked, ToolResult):
            return checked
        tool = self._tools[name]
        done: queue.Queue = queue.Queue(maxsize=1)

        def work():
            try:
                done.put((True, tool.function(**checked)))
            except Exception as e:  # the tool's failure is the model's information, not ours
                done.put((False, e))

        # A daemon thread, not an executor: a tool that never returns must not
        # keep the process alive at exit.
        threading.Thread(target=work, name=f"tool-{name}", daemon=True).start()
        try:
            ok, value = done.get(timeout=tool.timeout)
        except queue.Empty:
            return ToolResult(name, checked, f"error: {name} did not answer within {tool.timeout:g} s", "timeout")
        if not ok:
            message = str(value).strip().splitlines()[-1:] or [""]
            return ToolResult(name, checked, f"error: {type(value).__name__}: {message[0]}"[:500], "raised")
        return ToolResult(name, checked, _text(value))
