"""Acorn: a complete large-language-model stack you can read end to end."""

from acorn.errors import AcornError
from acorn.tokenizer import Tokenizer

__all__ = ["AcornError", "Tokenizer"]
