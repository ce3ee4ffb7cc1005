"""The layering rules of GUIDE.md, checked on the source with `ast`:

  (a) a package never imports one above it (model knows nothing of infer or
      serve; infer nothing of serve), nor a peer on its own layer;
  (b) no import cycles between packages;
  (c) no module imports another module's `_private` name, or reads one off
      an imported acorn module (`mod._name`);
  (d) no module reaches into another class's privates: `obj._name` where
      `_name` is defined only in other acorn modules (a heuristic: it knows
      names, not types).

Every import counts, the lazy ones inside functions included: a lazy import
is still a dependency, only a later one. Dunder names are public.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ACORN = Path(__file__).resolve().parents[1] / "acorn"

# The layers, bottom first. A unit is a top-level package or module of acorn
# ("__init__" is acorn/__init__.py, the facade that re-exports the API). A
# unit may import units on lower layers only; units on one layer are peers
# and import neither each other nor anything above.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),  # the one user-facing exception type
    ("fileio", "config", "hardware"),  # atomic files, YAML + overrides, device/dtype
    ("sandbox",),  # untrusted code under bubblewrap (eval's code execution; agents' tools next): errors only
    ("chat",),  # formats and templates; duck-types the tokenizer, never imports it
    ("tokenizer",),  # imports chat (lazily) for Tokenizer.apply_chat_template
    ("model",),
    ("data",),  # the world and shards: reads text through the tokenizer
    ("vision",),  # images in: the vision encoder (the decoder's blocks), CLIP, zero-shot on the world's pictures
    ("infer",),
    ("rag",),  # embeddings from the one forward; retrieval that may generate through the engine
    # Strategies over the engine; similarity-chosen few-shot examples use rag's embeddings.
    # Below eval, so evaluation tasks and benchmarks can score a strategy.
    ("prompting",),
    ("agent",),  # tools and the ReAct loop over the engine; rag for search, the sandbox for Python
    ("train",),  # the one loop: model, data, tokenizer
    ("eval",),  # scores through the engine
    ("scaling",),  # sweeps of ordinary pretraining runs, their fits, and their models on eval's world tasks
    ("synth",),  # synthetic data: constitutional AI, distillation, collapse, Q-A (generates, trains, checks eval sets)
    ("serve",),  # routes over the engine
    ("speedrun",),  # the whole pipeline, stage by stage
    ("cli",),
    ("__init__", "__main__"),
]

# Known exceptions, each with a comment saying why: (file relative to acorn/,
# "layer" | "private" | "reach", the imported module or the name). None today.
ALLOWED: set[tuple[str, str, str]] = set()

RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


# ------------------------------------------------------------------ the parse
def _module_name(path: Path) -> str:
    parts = ("acorn", *path.relative_to(ACORN).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ACORN / rel).with_suffix(".py").is_file() or (ACORN / rel / "__init__.py").is_file()


def _unit(module: str) -> str:
    """The layer unit of a module: acorn.infer.engine -> infer, acorn.cli -> cli, acorn -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {_module_name(p): p for p in sorted(ACORN.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for m, p in MODULES.items()}


def _where(module: str, node: ast.AST) -> str:
    return f"acorn/{MODULES[module].relative_to(ACORN)}:{node.lineno}"


def _imports(module: str):
    """(node, imported module, imported name or None) for every acorn import in a module.
    `from acorn.x import y` names module acorn.x.y when y is a submodule, else
    name y of acorn.x."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "acorn" or alias.name.startswith("acorn."):
                    yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "acorn" and not source.startswith("acorn."):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if _is_module(sub):
                    yield node, sub, None
                else:
                    yield node, source, alias.name


def _in_order(found: list[str]) -> list[str]:
    """Findings ("acorn/path.py:LINE: what") by file, then line."""
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module(name: str) -> bool:
    return any(_private(part) for part in name.split("."))


# ------------------------------------------------------------------ (a), (b)
def test_every_unit_of_acorn_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert not units - RANK.keys(), f"add these to LAYERS in {__file__}: {sorted(units - RANK.keys())}"
    assert not RANK.keys() - units, f"LAYERS names units that do not exist: {sorted(RANK.keys() - units)}"


def upward_imports() -> list[str]:
    found = []
    for module, path in MODULES.items():
        unit = _unit(module)
        for node, target, _ in _imports(module):
            other = _unit(target)
            if other == unit or RANK[other] < RANK[unit]:
                continue
            rule = "imports a peer on its own layer" if RANK[other] == RANK[unit] else "imports a layer above it"
            if (str(path.relative_to(ACORN)), "layer", target) in ALLOWED:
                continue
            found.append(f"{_where(module, node)}: {unit} {rule}: {target} ({other})")
    return _in_order(found)


def test_no_package_imports_a_layer_above_it():
    found = upward_imports()
    assert not found, "layers are, bottom first: " + " < ".join("/".join(layer) for layer in LAYERS) + \
        "\n" + "\n".join(found)


def package_cycles() -> list[list[str]]:
    """Cycles of the unit import graph: its strongly connected components of
    more than one unit (Tarjan's algorithm), each as a list of units."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        unit = _unit(module)
        for _, target, _ in _imports(module):
            other = _unit(target)
            if other != unit:
                graph[unit].add(other)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(RANK):
        if v not in index:
            visit(v)
    return components


def _pretend(monkeypatch, sources: dict[str, str]) -> None:
    """Check made-up sources instead of acorn's: {module name: its code}."""
    paths = {m: ACORN.joinpath(*m.split(".")[1:]).with_suffix(".py") for m in sources}
    monkeypatch.setitem(globals(), "MODULES", paths)
    monkeypatch.setitem(globals(), "TREES", {m: ast.parse(code) for m, code in sources.items()})


def test_the_layer_and_cycle_checks_find_an_upward_import_and_a_cycle(monkeypatch):
    _pretend(monkeypatch, {"acorn.errors": "from acorn.fileio import read_json", "acorn.fileio": "import acorn.errors"})
    assert upward_imports() == ["acorn/errors.py:1: errors imports a layer above it: acorn.fileio (fileio)"]
    assert package_cycles() == [["errors", "fileio"]]


def test_no_import_cycles_between_packages():
    cycles = package_cycles()
    assert not cycles, "packages that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


# ------------------------------------------------------------------ (c)
def _module_aliases(module: str) -> dict[str, str]:
    """Names a module binds to acorn modules (anywhere in it): `import acorn.x as m`,
    `from acorn import fileio`; a plain `import acorn.x` binds `acorn`."""
    names = {}
    for node, target, name in _imports(module):
        if name is not None:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == target:
                    names[alias.asname or target.split(".")[0]] = target if alias.asname else "acorn"
        else:
            for alias in node.names:
                if target.endswith("." + alias.name):
                    names[alias.asname or alias.name] = target
    return names


def _dotted(node: ast.AST) -> str | None:
    """a.b.c for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return inner and f"{inner}.{node.attr}"
    return None


def _named_module(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The acorn module an expression names (`fileio`, `acorn.model.quant`), else None."""
    chain = _dotted(node)
    if chain is None or chain.split(".")[0] not in aliases:
        return None
    head, _, rest = chain.partition(".")
    owner = ".".join(filter(None, [aliases[head], rest]))
    return owner if _is_module(owner) else None


def private_names_used() -> list[str]:
    found = []
    for module, path in MODULES.items():
        rel = str(path.relative_to(ACORN))
        for node, target, name in _imports(module):
            what = f"{target}.{name}" if name else target
            if target == module or not (_private_module(target) or (name and _private(name))):
                continue
            if (rel, "private", what) not in ALLOWED:
                found.append(f"{_where(module, node)}: imports the private {what}")
        aliases = _module_aliases(module)
        for node in ast.walk(TREES[module]):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = _named_module(node.value, aliases)
            if owner and owner != module and (rel, "private", f"{owner}.{node.attr}") not in ALLOWED:
                found.append(f"{_where(module, node)}: reads the private {owner}.{node.attr}")
    return _in_order(found)


def test_no_module_uses_another_modules_private_names():
    found = private_names_used()
    assert not found, "make the name public (and document it) or move the code that needs it:\n" + "\n".join(found)


# ------------------------------------------------------------------ (d)
def _defined_privates(module: str) -> set[str]:
    """Private names a module defines: functions, classes, methods, class and
    module attributes, and `self._x = ...` / `cls._x = ...` in its methods."""
    names = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:  # class attributes and dataclass fields
                    targets = item.targets if isinstance(item, ast.Assign) else \
                        [item.target] if isinstance(item, ast.AnnAssign) else []
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"):
                        names.add(t.attr)
        if isinstance(node, ast.Module):
            for item in node.body:
                targets = item.targets if isinstance(item, ast.Assign) else \
                    [item.target] if isinstance(item, ast.AnnAssign) else []
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if _private(n)}


def _own(node: ast.AST) -> bool:
    """self._x, cls._x and super()._x are the object's own."""
    return (isinstance(node, ast.Name) and node.id in ("self", "cls")) or \
        (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super")


def reached_privates() -> list[str]:
    defined = {m: _defined_privates(m) for m in MODULES}
    where: dict[str, list[str]] = defaultdict(list)
    for m, names in defined.items():
        for n in names:
            where[n].append(m)
    found = []
    for module, path in MODULES.items():
        aliases = _module_aliases(module)
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.Attribute):
                obj, name = node.value, node.attr
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 and \
                    isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                obj, name = node.args[0], node.args[1].value
            else:
                continue
            if not _private(name) or _own(obj) or name in defined[module]:
                continue
            if _named_module(obj, aliases):
                continue  # a module's private: rule (c) reports it
            owners = sorted(m for m in where.get(name, []) if m != module)
            rel = str(path.relative_to(ACORN))
            if owners and (rel, "reach", name) not in ALLOWED:
                found.append(f"{_where(module, node)}: {ast.unparse(obj)}.{name} "
                             f"(defined in {', '.join(owners)})")
    return _in_order(found)


def test_no_module_reaches_into_another_modules_private_attributes():
    found = reached_privates()
    assert not found, "use or add a public method of the owner instead:\n" + "\n".join(found)


def test_the_reach_heuristic_finds_a_foreign_private(monkeypatch):
    _pretend(monkeypatch, {"acorn.errors": "class A:\n    def __init__(self):\n        self._x = 1",
                           "acorn.fileio": "import acorn.errors as e\n"
                                           "def f(a):\n    return a._x, a.__dict__, getattr(a, '_x'), a._y, e.A._x"})
    assert reached_privates() == ["acorn/fileio.py:3: a._x (defined in acorn.errors)"] * 2 + \
        ["acorn/fileio.py:3: e.A._x (defined in acorn.errors)"]  # a._y: not acorn's


@pytest.mark.parametrize("source,expected", [
    ("from acorn.model.transformer import _rope", "1: imports the private acorn.model.transformer._rope"),
    ("from acorn.model import _rope", "1: imports the private acorn.model._rope"),
    ("from acorn import fileio\nfileio._secret", "2: reads the private acorn.fileio._secret"),
    ("import acorn.model.transformer as t\nt._rope", "2: reads the private acorn.model.transformer._rope"),
    ("import acorn.model.transformer\nacorn.model.transformer._rope",
     "2: reads the private acorn.model.transformer._rope"),
])
def test_the_private_name_checks_find_what_they_look_for(monkeypatch, source, expected):
    _pretend(monkeypatch, {"acorn.cli": source})
    assert private_names_used() == ["acorn/cli.py:" + expected]
