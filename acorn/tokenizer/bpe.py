"""Byte-level BPE: training, encoding, decoding, special tokens, streaming.

The concept (Sennrich et al. 2016, as used by GPT-2 and GPT-4): text is split
into chunks by a regex (so merges never cross a word/number/space boundary),
each chunk is a sequence of bytes, and training repeatedly merges the most
frequent adjacent pair into a new token. Encoding applies the merges in the
order they were learned (lowest rank first).

Acorn writes none of the hot loops itself: training runs on rustbpe (Rust,
parallel), encoding and decoding on tiktoken. What lives here is the shape a
user needs around them: special tokens that are plain text unless allowed,
vocabulary sizes that include the special tokens, clear errors on bad input,
an incremental decoder for streaming, and the Hugging Face file format
(in acorn.tokenizer.files).

Training rule, exactly (tests/tokenizer/test_bpe.py replays it in pure Python):
each regex chunk counts once per occurrence; pairs are counted at every
adjacent position, overlaps included ("aaa" holds (a, a) twice); the most
frequent pair is merged, left to right within each chunk; when counts tie, the
pair with the smallest (left id, right id) wins. Training stops early, with a
warning, when no pair is left to merge.

Id layout of a trained tokenizer: ids 0..255 are the 256 single bytes (id ==
byte value), 256..V-S-1 are merges in the order learned (id == rank), and the
last S ids are the special tokens.
"""

from __future__ import annotations

import codecs
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Iterable, Iterator, Literal, Sequence

import regex
import tiktoken

from acorn.errors import AcornError
from acorn.tokenizer.text import iter_file_texts, split_for_training

# GPT-4's (cl100k) split pattern: case-insensitive contractions, letters with
# an optional leading non-letter, numbers in groups of up to 3 digits (so the
# model sees "123" "456" rather than one token per arbitrary digit string),
# punctuation runs, and whitespace handled so a space attaches to the next word.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# GPT-2's split pattern (case-sensitive contractions, unbounded digit runs).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}

# Below this many characters a batch is encoded on the calling thread: starting
# threads would cost more than they save.
_PARALLEL_MIN_CHARS = 1 << 16

AllowedSpecial = Literal["all"] | Collection[str]


def resolve_pattern(pattern: str) -> str:
    """A pattern name ('gpt4', 'gpt2') or a regex; checks that the regex compiles."""
    pat = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pat)
    except regex.error as e:
        raise AcornError(f"split pattern does not compile ({e}); pass 'gpt4', 'gpt2' or a valid regex") from None
    return pat


class Tokenizer:
    """A byte-level BPE tokenizer with special tokens and an optional chat template.

    Build one with `Tokenizer.train(...)`, `Tokenizer.from_pretrained(path)`, or
    directly from tiktoken-style `mergeable_ranks` (token bytes -> id).
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int] | None,
        special_tokens: dict[str, int],
        pattern: str = GPT4_PATTERN,
        *,
        name: str = "acorn",
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        chat_format: str | None = None,
        encoding=None,
    ):
        if "" in special_tokens:
            # tiktoken's special-token regex would match the empty string everywhere and never advance.
            raise AcornError(f"special token {special_tokens['']} is empty text, which matches everywhere; "
                             "a special token needs at least one character (fix the tokenizer's files)")
        self.name = name
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template
        self.chat_format = chat_format
        # `encoding` is a tiktoken.Encoding, or any object with the same methods
        # (acorn.tokenizer.files wraps the `tokenizers` library that way for
        # formats tiktoken cannot express).
        if encoding is None:
            if mergeable_ranks is None:
                raise ValueError("need mergeable_ranks or an encoding")
            encoding = tiktoken.Encoding(
                name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
            )
        self.encoding = encoding
        self._special_ids = frozenset(self.special_tokens.values())
        self._id_to_special = {i: s for s, i in self.special_tokens.items()}

    # ----------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        texts: Iterable[str] | Sequence[str | os.PathLike],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        chat_format: str = "acorn",
        special_tokens: Sequence[str] | None = None,
        text_field: str = "text",
        errors: Literal["strict", "replace"] = "strict",
        name: str = "acorn",
    ) -> "Tokenizer":
        """Train byte-level BPE with rustbpe.

        texts: an iterable of strings, or a list of file paths (.txt read whole,
            .jsonl read field `text_field` of each line).
        vocab_size: the final vocabulary size, special tokens included.
        chat_format: 'acorn', 'chatml' or 'llama3'; reserves that format's
            special tokens and sets its chat template.
        special_tokens: extra special tokens appended after the format's.
        errors: what to do with bytes that are not UTF-8 in files ('strict'
            stops with the file and offset, 'replace' substitutes U+FFFD).
        """
        import rustbpe

        from acorn.chat.formats import get_format

        fmt = get_format(chat_format)
        if any(not isinstance(s, str) or not s for s in special_tokens or []):
            raise AcornError("a special token cannot be empty (--special ''); give each one some text, "
                             "e.g. --special '<|tool|>'")
        specials = list(dict.fromkeys([*fmt.special_tokens, *(special_tokens or [])]))
        pat = resolve_pattern(pattern)
        if vocab_size < 256 + len(specials):
            raise AcornError(
                f"vocab size {vocab_size} is too small: it needs 256 byte tokens + {len(specials)} special "
                f"tokens; use --vocab-size {256 + len(specials)} or more (thousands in practice)"
            )
        n_merges_vocab = vocab_size - len(specials)

        pieces = _training_pieces(texts, text_field=text_field, errors=errors)
        seen = _CountingIter(pieces)
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(seen, n_merges_vocab, pattern=pat)
        if seen.chars == 0:
            raise AcornError("the training corpus is empty; give files (or texts) that contain text")
        ranks = {bytes(b): r for b, r in bpe.get_mergeable_ranks()}
        # rustbpe stops early when no pair occurs twice; ids of specials follow
        # the merges actually learned so the id space has no holes.
        base = len(ranks)
        if base < n_merges_vocab:
            warnings.warn(
                f"the corpus only supports {base - 256} merges: vocabulary is {base + len(specials)}, "
                f"not the {vocab_size} asked for; train on more text for a larger vocabulary",
                stacklevel=2,
            )
        special_ids = {s: base + i for i, s in enumerate(specials)}
        return cls(
            ranks, special_ids, pat, name=name, bos_token=fmt.bos_token, eos_token=fmt.eos_token,
            pad_token=fmt.pad_token, chat_template=fmt.template or None, chat_format=fmt.name,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load from a directory (tokenizer.json, vocab.json + merges.txt, *.tiktoken),
        a single file, or the built-in name 'gpt2'. Never fetches anything."""
        from acorn.tokenizer.files import load_tokenizer

        return load_tokenizer(path)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write Hugging Face files (tokenizer.json, tokenizer_config.json, ...)."""
        from acorn.tokenizer.files import save_tokenizer

        return save_tokenizer(self, directory)

    save_pretrained = save

    def add_special_tokens(self, tokens: Sequence[str]) -> "Tokenizer":
        """A copy with `tokens` appended as special tokens, ids vocab_size, vocab_size + 1, ...:
        every existing id keeps its meaning, so a model trained with this tokenizer still
        reads its ids (grow its embeddings with acorn.model.transformer.resize_vocab).
        Tokens it already has as specials are kept where they are."""
        if any(not isinstance(t, str) or not t for t in tokens):
            raise AcornError("a special token cannot be empty; give each one some text, e.g. '<image>'")
        if not isinstance(self.encoding, tiktoken.Encoding) or self.mergeable_ranks is None:
            raise AcornError(f"special tokens can only be added to a byte-level BPE Acorn reads natively; {self.name} "
                             "was loaded through the tokenizers library: add them with transformers instead")
        new = [t for t in dict.fromkeys(tokens) if t not in self.special_tokens]
        specials = {**self.special_tokens, **{t: self.vocab_size + i for i, t in enumerate(new)}}
        return Tokenizer(self.mergeable_ranks, specials, self.pattern, name=self.name, bos_token=self.bos_token,
                         eos_token=self.eos_token, pad_token=self.pad_token, chat_template=self.chat_template,
                         chat_format=self.chat_format)

    # ------------------------------------------------------------------- sizes
    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def __len__(self) -> int:
        return self.vocab_size

    def token_id(self, token: str) -> int:
        """Id of a special token by its text."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise AcornError(f"{token!r} is not a special token of this tokenizer") from None

    @property
    def bos_id(self) -> int | None:
        return self.special_tokens.get(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(self.eos_token) if self.eos_token else None

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get(self.pad_token) if self.pad_token else None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # ---------------------------------------------------------------- encoding
    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = (),
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> list[int]:
        """Text to ids.

        Special-token text inside `text` ("<|end|>") is encoded as plain text
        unless listed in `allowed_special` (or 'all'): text from users must not
        be able to forge a role marker (prompt injection).
        """
        if allowed_special:
            ids = self.encoding.encode(text, allowed_special=allowed_special, disallowed_special=())
        else:
            ids = self.encoding.encode_ordinary(text)
        if add_bos:
            ids.insert(0, self._require("bos"))
        if add_eos:
            ids.append(self._require("eos"))
        return ids

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = (), num_threads: int | None = None
    ) -> list[list[int]]:
        """Encode many texts on several threads; equal to [encode(t) for t in texts].

        tiktoken releases the GIL while it encodes, so threads run in parallel.
        Each thread gets a contiguous group of texts rather than one task per
        text (tiktoken's own encode_batch): with many short documents the
        per-task overhead of a thread pool costs more than the encoding.
        """
        texts = list(texts)
        n_threads = min(num_threads or os.cpu_count() or 1, len(texts))
        total = sum(map(len, texts))
        if n_threads <= 1 or total < _PARALLEL_MIN_CHARS:
            return [self.encode(t, allowed_special=allowed_special) for t in texts]

        def encode_group(group: list[str]) -> list[list[int]]:
            return [self.encode(t, allowed_special=allowed_special) for t in group]

        # A few groups per thread, cut by characters, so one long text does not
        # leave the other threads idle.
        groups, group, size, target = [], [], 0, total / (4 * n_threads)
        for t in texts:
            group.append(t)
            size += len(t)
            if size >= target:
                groups.append(group)
                group, size = [], 0
        if group:
            groups.append(group)
        with ThreadPoolExecutor(n_threads) as pool:
            return [ids for done in pool.map(encode_group, groups) for ids in done]

    def _require(self, which: str) -> int:
        tid = getattr(self, f"{which}_id")
        if tid is None:
            raise AcornError(f"this tokenizer has no {which} token; train or load one that defines it")
        return tid

    # ---------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        self._check_ids(ids)
        return self.encoding.decode_bytes(ids)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False, errors: str = "replace") -> str:
        """Ids to text. Bytes that do not form UTF-8 become U+FFFD (errors='replace')."""
        ids = list(ids)
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        self._check_ids([token_id])
        return self.encoding.decode_single_token_bytes(token_id)

    def _check_ids(self, ids: Sequence[int]) -> None:
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise AcornError(f"token id {i} is outside this tokenizer's vocabulary (0..{n - 1})")

    def stream_decoder(self, *, skip_special: bool = False) -> "StreamDecoder":
        """An incremental decoder for streaming generation (see StreamDecoder)."""
        return StreamDecoder(self, skip_special=skip_special)

    # -------------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_assistant_mask: bool = False,
        tools: list[dict] | None = None,
        chat_template: str | None = None,
        **kwargs,
    ):
        """Render a conversation with this tokenizer's chat template.

        tokenize=False returns the text; tokenize=True the ids; with
        return_assistant_mask=True a dict {"input_ids", "assistant_mask"} whose
        mask is 1 on the tokens an SFT loss should train on.
        """
        from acorn.chat.template import apply_chat_template

        return apply_chat_template(
            self, messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize,
            return_assistant_mask=return_assistant_mask, tools=tools, chat_template=chat_template, **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"special_tokens={len(self.special_tokens)}, chat_format={self.chat_format!r})"
        )


class StreamDecoder:
    """Turns ids into text one at a time without ever emitting broken UTF-8.

    A multi-byte character may be split across tokens (an emoji is 4 bytes and
    byte-level BPE may give each byte its own token). The decoder keeps the
    trailing bytes of an unfinished character until the rest arrives; bytes
    that can never become valid UTF-8 are emitted as U+FFFD, as `decode` does.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one id; returns the text that is now complete (maybe '')."""
        if self._skip_special and self._tok.is_special(token_id):
            return ""
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """End of stream: whatever is pending, with U+FFFD for an unfinished character."""
        return self._utf8.decode(b"", final=True)


# ------------------------------------------------------------------ training IO
class _CountingIter:
    """Passes strings through to rustbpe and counts the characters seen."""

    def __init__(self, it: Iterator[str]):
        self._it = it
        self.chars = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        s = next(self._it)
        self.chars += len(s)
        return s


def _training_pieces(texts, *, text_field: str, errors: str) -> Iterator[str]:
    """Yield training text in pieces. Paths are read from disk; strings pass through."""
    if isinstance(texts, (str, os.PathLike)):
        texts = [texts]
    if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, (str, os.PathLike)) for t in texts) and all(
        isinstance(t, os.PathLike) or _looks_like_path(t) for t in texts
    ):
        for path in texts:
            yield from _file_pieces(Path(path), text_field=text_field, errors=errors)
        return
    for t in texts:
        yield from split_for_training(t)


def _looks_like_path(s: str) -> bool:
    return len(s) < 4096 and "\n" not in s and os.path.exists(s)


def _file_pieces(path: Path, *, text_field: str, errors: str) -> Iterator[str]:
    yield from iter_file_texts(path, text_field, errors)
