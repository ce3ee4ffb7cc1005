"""Tokens: byte-level BPE and everything around it.

bpe.py trains (rustbpe) and encodes (tiktoken) with special tokens and a
streaming decoder; files.py reads and writes the tokenizer files of other
projects (GPT-2 vocab/merges, .tiktoken, Hugging Face tokenizer.json); text.py
reads UTF-8 text in pieces that never split a BPE chunk; counting.py counts
tokens, compares compression and shows how text splits.
"""

from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, StreamDecoder, Tokenizer
from acorn.tokenizer.text import iter_text_chunks, read_text_file

__all__ = ["GPT2_PATTERN", "GPT4_PATTERN", "StreamDecoder", "Tokenizer", "iter_text_chunks", "read_text_file"]
