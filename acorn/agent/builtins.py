"""The built-in tools: calculator, sandboxed Python, search over a RAG index, and a lookup of the world's facts.

  calculator  arithmetic parsed into a syntax tree and evaluated node by node
              (numbers, + - * / // % **, unary minus, parentheses): never
              Python's eval, so a call cannot run code; exponents and results
              are bounded, so a call cannot exhaust memory either
  python      a program run only inside acorn.sandbox's bubblewrap sandbox (no
              network, a private /tmp, no view of the host, rlimits, a
              wall-clock limit); where the sandbox cannot run, making the tool
              fails with the sandbox's one-line reason: there is no fallback
              to running code unsandboxed
  search      the k best passages of a RAG index (acorn.rag) for a query
  lookup      one fact (birth year, city, profession, employer, mentor,
              spouse) of a person of the built-in world (world.json)

`make_tools(["calculator", "search"], index=..., world=...)` builds a
registry of the named ones, refusing with one line when one needs a resource
that was not given.
"""

from __future__ import annotations

import ast
import math
import operator
from pathlib import Path

from acorn.agent.tools import Tool, ToolRegistry
from acorn.errors import AcornError

BUILTINS = ("calculator", "python", "search", "lookup")

# ------------------------------------------------------------------ calculator
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPRESSION = 200  # characters
MAX_MAGNITUDE = 10 ** 100  # of any intermediate result: 10**10**10 would take the machine's memory


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression, or ValueError saying what is not allowed."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("the expression is empty; write e.g. 123*45")
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}; write e.g. 123*45") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 256 or abs(left) > MAX_MAGNITUDE ** 0.5):
                raise ValueError("the power is too large")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
            except OverflowError:
                raise ValueError("the result is too large") from None
            if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
                raise ValueError("the result is too large" if not isinstance(value, complex) else
                                 "the result is not a real number")
            return value
        raise ValueError(f"not allowed in an expression: {type(node).__name__}; use numbers and + - * / // % **")

    value = ev(tree)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the result is not a finite number")
        if value.is_integer() and abs(value) < 2 ** 53:
            return int(value)  # 12/4 answers 3, as a person would write it
    return value


def calculator_tool() -> Tool:
    """The calculator, described exactly as the world's SFT conversations show it
    (acorn.data.world.CALCULATOR_TOOL), so a model tuned on them sees the schema
    it learned; it evaluates more than the description promises (/ // % **)."""
    from acorn.data.world import CALCULATOR_TOOL

    def run(expression: str) -> str:
        value = calculate(expression)
        return str(value) if isinstance(value, int) else format(value, ".12g")

    spec = CALCULATOR_TOOL["function"]
    return Tool(spec["name"], spec["description"], spec["parameters"], run)


# ------------------------------------------------------------------ python
def python_tool(seconds: float = 10.0, memory_mb: int = 512) -> Tool:
    """Python in the sandbox; raises the sandbox's one-line refusal now if it cannot run here."""
    from acorn import sandbox

    sandbox.check()  # refuse at once, not on the model's first call
    limits = sandbox.Limits(seconds=seconds, memory_mb=memory_mb)

    def run(code: str) -> str:
        r = sandbox.run_python(code, limits=limits)
        out = r.stdout
        if not r.ok:
            err = "\n".join(r.stderr.strip().splitlines()[-5:])
            out += ("\n" if out and not out.endswith("\n") else "") + f"[{r.status}]" + (f"\n{err}" if err else "")
        return out if out.strip() else "[no output; print() the result]"

    # Code changes nothing outside its sandbox, but it is an action the user may want to approve:
    # side_effects routes it through the agent's confirm hook.
    return Tool("python", "Run a Python program in an isolated sandbox (no network, no files of the host) and "
                "return what it prints.",
                {"type": "object", "properties": {"code": {"type": "string", "description": "a Python program"}},
                 "required": ["code"]}, run, side_effects=True, timeout=seconds + 15)


# ------------------------------------------------------------------ search
def search_tool(index, *, embedder=None, k: int = 3, mode: str = "hybrid") -> Tool:
    """Search a RAG index (a directory from `acorn rag index`, or an acorn.rag.pipeline.RAG)."""
    from acorn.rag.pipeline import RAG

    rag = index if isinstance(index, RAG) else RAG(index, embedder=embedder, k=k, mode=mode)

    def run(query: str, k: int = k) -> str:
        (hits,) = rag.retrieve([query], k)
        if not hits:
            return "no passages found"
        return "\n".join(f"[{h.rank}] {h.chunk.title}: {' '.join(h.chunk.text.split())}" for h in hits)

    return Tool("search", "Search the knowledge base; returns the best passages for the query.",
                {"type": "object", "properties": {"query": {"type": "string", "minLength": 1},
                                                  "k": {"type": "integer", "minimum": 1, "maximum": 10}},
                 "required": ["query"]}, run)


# ------------------------------------------------------------------ lookup
def lookup_tool(world) -> Tool:
    """Facts of the built-in world: a World, world.json, or the directory holding it."""
    from acorn.data.world import FACT_ATTRIBUTES, read_world

    if not hasattr(world, "people"):
        path = Path(world)
        path = path if path.suffix == ".json" else path / "world.json"
        if not path.is_file():
            raise AcornError(f"{path}: no world.json here; give the directory `acorn data world --out` wrote")
        world = read_world(path)
    people = {p.name.lower(): p for p in world.people}

    def run(name: str, attribute: str) -> str:
        p = people.get(" ".join(name.split()).lower())
        if p is None:
            raise ValueError(f"no person named {name!r} in the world")
        value = getattr(p, attribute)
        return "none" if value is None else str(value)

    return Tool("lookup", "Look up a fact about a person: " + ", ".join(FACT_ATTRIBUTES) + ".",
                {"type": "object", "properties": {"name": {"type": "string"},
                                                  "attribute": {"enum": list(FACT_ATTRIBUTES)}},
                 "required": ["name", "attribute"]}, run)


# ------------------------------------------------------------------ by name
def parse_tool_names(spec: str | list[str]) -> list[str]:
    """"calculator,python" -> ["calculator", "python"], refusing unknown names."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise AcornError(f"no tools named; give some of: {', '.join(BUILTINS)}")
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise AcornError(f"unknown tool {unknown[0]!r}; the built-in tools are: {', '.join(BUILTINS)}")
    return list(dict.fromkeys(names))


def make_tools(names: str | list[str], *, index=None, embedder=None, world=None, k: int = 3,
               python_seconds: float = 10.0) -> ToolRegistry:
    """A registry of built-in tools by name. search needs `index`, lookup `world`."""
    registry = ToolRegistry()
    for name in parse_tool_names(names):
        if name == "calculator":
            registry.add(calculator_tool())
        elif name == "python":
            registry.add(python_tool(seconds=python_seconds))
        elif name == "search":
            if index is None:
                raise AcornError("the search tool needs an index: pass --index INDEX (a directory from "
                                 "`acorn rag index`)")
            registry.add(search_tool(index, embedder=embedder, k=k))
        elif name == "lookup":
            if world is None:
                raise AcornError("the lookup tool needs the world: pass --world DIR (from `acorn data world`)")
            registry.add(lookup_tool(world))
    return registry
