"""Acorn: a complete large-language-model stack you can read end to end."""

from acorn.errors import AcornError
from acorn.tokenizer.bpe import Tokenizer

__all__ = ["AcornError", "LLM", "SamplingParams", "Tokenizer", "load"]


def __getattr__(name):
    # acorn.load, acorn.LLM and acorn.SamplingParams import torch; keep `import acorn` (and `acorn --help`) fast without it.
    if name == "load":
        from acorn.model.checkpoint import load

        return load
    if name == "LLM":
        from acorn.infer.llm import LLM

        return LLM
    if name == "SamplingParams":
        from acorn.infer.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'acorn' has no attribute {name!r}")
