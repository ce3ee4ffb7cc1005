"""Acorn: a complete large-language-model stack you can read end to end."""

from acorn.errors import AcornError
from acorn.tokenizer import Tokenizer

__all__ = ["AcornError", "Tokenizer", "load"]


def __getattr__(name):
    # acorn.load imports torch; keep `import acorn` (and `acorn --help`) fast without it.
    if name == "load":
        from acorn.checkpoint import load

        return load
    raise AttributeError(f"module 'acorn' has no attribute {name!r}")
