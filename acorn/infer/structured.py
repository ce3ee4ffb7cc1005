"""Structured outputs through constrained decoding.

A model asked for JSON usually writes JSON, but "usually" breaks a program
that parses it. Constrained decoding makes it certain: at every step a
grammar (a JSON Schema, a regular expression, a list of choices, a Lark
grammar) says which tokens may come next, every other token's logit is set to
-inf before sampling, and the sampler can only ever pick a token that keeps
the text a prefix of something the grammar accepts. Among the allowed tokens
the model's own probabilities still decide, so the output is the model's
answer in the required shape (Willard & Louf 2023, "Efficient Guided
Generation for LLMs" (Outlines); XGrammar and llguidance after it).

Why the mask is over tokens, not characters: the model emits tokens, and one
token may hold several characters (`{"` or `":` or `true`), part of a
character (one byte of a multi-byte UTF-8 sequence), or cross a boundary of
the grammar (a closing quote and the comma after it). A token is allowed when
*all* its bytes, appended to the text so far, still lead somewhere the
grammar accepts. Checking every token of a 50k-128k vocabulary against the
grammar at every step is the whole cost of the method, so it is done by
walking a trie of the vocabulary's bytes alongside the grammar's lexer and
parser, pruning whole subtrees at once.

The end: the sequence may stop only when the text is complete. The stop
tokens (EOS, a chat model's end-of-turn token, the request's stop_token_ids)
are allowed only in an accepting state, and banned before it, because a stop
token in the middle would cut the JSON in half. When the grammar can take
nothing more (an object's closing brace), the stop tokens are the only
tokens allowed; a sequence with no stop tokens at all is ended by the engine
(Constraint.done()).

The grammar work is llguidance's (Microsoft's Rust library, also the
structured-output backend of vLLM and SGLang): it compiles JSON Schema,
regexes and Lark into one lexer+Earley-parser grammar and computes the mask
in tens of microseconds. This module adapts it to Acorn: an LLTokenizer made
once per Acorn tokenizer from its token bytes (any vocabulary Acorn loads:
tiktoken, Hugging Face tokenizer.json), the grammar for each `guided` kind,
compiled start states cached per tokenizer, and the Constraint the engine
drives (acorn.infer.engine: allowed() before sampling, advance() after).

llguidance's own end-of-text token is a sentinel one past the vocabulary, not
the tokenizer's EOS: which tokens end a sequence differs per request (a chat
model ends its turn at <|end|>, ignore_eos drops EOS, stop_token_ids add
more), so the Constraint maps "the grammar may end here" onto the sequence's
own stop ids.

    guided={"json_schema": {...}}   a JSON Schema (dict or JSON text)
    guided={"json_object": True}    any JSON object
    guided={"regex": "[0-9]{3}"}    text that fully matches the regex (Rust regex syntax, no look-around)
    guided={"choice": ["yes", "no"]}  exactly one of the strings
    guided={"grammar": "start: ..."}  a Lark grammar (llguidance's dialect; may name special tokens as <|end|>)

JSON is compact by default (no whitespace between tokens): a small model
given the freedom of flexible whitespace can spend its whole budget on
newlines. A schema can ask for flexible whitespace with
{"x-guidance": {"whitespace_flexible": true}}.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from typing import Collection

import numpy as np
import torch
from torch import Tensor

from acorn.errors import AcornError

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
_END = b"<|acorn:grammar-end|>"  # llguidance's end-of-text: a special token one past the vocabulary
_JSON_DEFAULTS = {"whitespace_flexible": False}  # see the module docstring; a schema's x-guidance overrides
_CACHED_GRAMMARS = 64  # compiled start states kept per tokenizer (a server sees the same schemas again)


class Constraint:
    """Which tokens may come next, for one sequence; the engine's side of the grammar.

    allowed(vocab_size) -> (vocab_size,) bool: before each sampling step.
    advance(token_id): after it, with the chosen token (a stop id at the end too).
    done(): the text is complete and nothing more may follow.
    fresh(): a new constraint in the start state (another sample of the prompt).
    """

    def __init__(self, start, stop_ids: Collection[int], vocab_size: int, describe: str):
        self._start = start  # the compiled grammar in its start state; never advanced, fresh() copies it
        self._matcher = start.deep_copy()
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self._stops = np.array(sorted(i for i in self.stop_ids if i >= 0), dtype=np.int64)
        self.vocab_size = vocab_size  # the tokenizer's; llguidance's end sentinel is this id
        self.describe = describe  # e.g. "regex '[0-9]+'", for messages
        self.ended = False  # a stop token was taken

    def allowed(self, vocab_size: int) -> Tensor:
        """Mask (vocab_size,) of the tokens that may come next: the grammar's
        tokens, and the stop ids exactly when the text so far is complete.
        vocab_size may differ from the tokenizer's (padding ids of the model
        are never allowed; ids past vocab_size are dropped)."""
        # numpy until the end: on a vocabulary-sized vector each small torch
        # op costs more than llguidance's whole mask.
        if self.ended:
            mask = np.zeros(vocab_size, dtype=np.bool_)
        else:
            bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8),
                                 bitorder="little", count=self.vocab_size).view(np.bool_)
            if vocab_size == self.vocab_size:
                mask = bits
            else:
                mask = np.zeros(vocab_size, dtype=np.bool_)
                n = min(vocab_size, self.vocab_size)
                mask[:n] = bits[:n]
        # A stop token the grammar could also read as text (a user's stop id
        # for "\n") is still a stop token to the engine: never before the end.
        mask[self._stops[self._stops < vocab_size]] = self.is_complete()
        if not mask.any():
            raise AcornError(f"guided {self.describe}: no token may come next (the text is complete but the "
                             f"request has no stop token to end it, or the grammar matches only the empty text)")
        return torch.from_numpy(mask)

    def advance(self, token_id: int) -> None:
        """Take the chosen token; a stop id ends the text (it must be complete)."""
        token_id = int(token_id)
        if self.ended:
            raise AcornError(f"guided {self.describe}: token {token_id} came after the end of the text")
        if token_id in self.stop_ids:
            if not self._matcher.is_accepting():
                raise AcornError(f"guided {self.describe}: stop token {token_id} came before the text was complete")
            self.ended = True
            return
        if not self._matcher.consume_token(token_id):
            # Only possible when something re-enabled a masked token after
            # allowed() (a logits processor writing over -inf).
            raise AcornError(f"guided {self.describe}: token {token_id} does not fit the grammar here "
                             f"({_first_line(self._matcher.get_error())}); a logits processor must not "
                             f"re-enable tokens the constraint masked")

    def done(self) -> bool:
        """Complete, and nothing but a stop token may follow."""
        return self.ended or self._matcher.is_stopped()

    def is_complete(self) -> bool:
        """The text so far is a whole match (more may still follow, e.g. digits of a number)."""
        return self.ended or self._matcher.is_accepting()

    def fresh(self) -> "Constraint":
        return Constraint(self._start, self.stop_ids, self.vocab_size, self.describe)


def build_constraint(guided: dict, tokenizer, stop_ids: Collection[int] = frozenset()) -> Constraint:
    """The Constraint for SamplingParams.guided ({kind: spec}, kind one of
    KINDS) over `tokenizer`'s vocabulary, ending at `stop_ids`.

    A schema, regex or grammar that llguidance cannot compile raises AcornError."""
    if not (isinstance(guided, dict) and len(guided) == 1 and next(iter(guided)) in KINDS):
        raise AcornError(f"guided must be a dict with one key of {', '.join(KINDS)}, not {guided!r}")
    kind, spec = next(iter(guided.items()))
    grammar, describe = _grammar(kind, spec)
    start = _compiled(tokenizer).start(grammar, describe, position=kind == "grammar")
    return Constraint(start, stop_ids, tokenizer.vocab_size, describe)


def _grammar(kind: str, spec) -> tuple[str, str]:
    """(llguidance grammar text, a short description for messages) of one guided spec."""
    from llguidance import LLMatcher

    if kind == "json_schema":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise AcornError(f"guided json_schema is not valid JSON: {e}") from None
        if not isinstance(spec, dict):
            raise AcornError(f"guided json_schema must be a JSON Schema object, not {type(spec).__name__}")
        try:
            return LLMatcher.grammar_from_json_schema(spec, defaults=_JSON_DEFAULTS), "json_schema"
        except (ValueError, TypeError) as e:
            raise AcornError(f"guided json_schema: {_first_line(str(e))}") from None
    if kind == "json_object":
        if spec is not True:
            raise AcornError(f"guided json_object must be True, not {spec!r}")
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_DEFAULTS), "json_object"
    if kind == "regex":
        if not isinstance(spec, str):
            raise AcornError(f"guided regex must be a string, not {type(spec).__name__}")
        return LLMatcher.grammar_from_regex(spec), f"regex {spec!r}"
    if kind == "choice":
        if (not isinstance(spec, (list, tuple)) or not spec or not all(isinstance(c, str) for c in spec)):
            raise AcornError(f"guided choice must be a non-empty list of strings, not {spec!r}")
        # Lark string literals read JSON escapes, so json.dumps quotes any string.
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec)), "choice"
    if kind == "grammar":
        if not isinstance(spec, str):
            raise AcornError(f"guided grammar must be a Lark grammar as a string, not {type(spec).__name__}")
        return LLMatcher.grammar_from_lark(spec), "grammar"
    raise AcornError(f"unknown guided kind {kind!r}; choose one of {', '.join(KINDS)}")


def _first_line(message: str, *, position: bool = True) -> str:
    """One line of an llguidance message, which can span several (a regex
    error draws a caret under the pattern): the first line, completed by the
    line that says what is wrong ('error: ...') when there is one.
    position=False drops a leading 'at 1(8): ', a place in a grammar llguidance
    wrote itself (a regex becomes `start: /.../`), not in the user's text."""
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["unknown error"]
    first = lines[0] if position else re.sub(r"^at \d+\(\d+\): ", "", lines[0])
    why = next((line[len("error:"):].strip() for line in lines[1:] if line.startswith("error:")), None)
    return f"{first.rstrip(':')}: {why}" if why else first


class _Compiled:
    """One tokenizer's LLTokenizer and its compiled grammars' start states."""

    def __init__(self, tokenizer):
        from llguidance import LLTokenizer, TokenizerWrapper

        self.ll = LLTokenizer(TokenizerWrapper(_Vocabulary(tokenizer)))
        self.starts: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.Lock()

    def start(self, grammar: str, describe: str, *, position: bool):
        """The grammar's start state (compiled once); position: keep llguidance's
        'at line(column)' in messages (a user's Lark grammar, not a generated one)."""
        from llguidance import LLMatcher

        with self.lock:
            if grammar in self.starts:
                self.starts.move_to_end(grammar)
                return self.starts[grammar]
        problem = LLMatcher.validate_grammar(grammar, self.ll)
        if problem:
            raise AcornError(f"guided {describe} is not valid: {_first_line(problem, position=position)}")
        matcher = LLMatcher(self.ll, grammar, log_level=0)
        if matcher.is_error():  # validate_grammar should have caught it; the matcher is the last word
            raise AcornError(f"guided {describe} is not valid: {_first_line(matcher.get_error(), position=position)}")
        with self.lock:
            self.starts[grammar] = matcher
            if len(self.starts) > _CACHED_GRAMMARS:
                self.starts.popitem(last=False)
        return matcher


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: every token's bytes, which
    ids are special (never matched by text, only by <|name|> in a Lark
    grammar), the end-of-text id, and a text -> ids function."""

    def __init__(self, tokenizer):
        n = tokenizer.vocab_size
        self.tokens = [_token_bytes(tokenizer, i) for i in range(n)] + [_END]
        self.special_token_ids = sorted({*tokenizer.special_tokens.values(), n})
        self.eos_token_id = n
        self.bos_token_id = tokenizer.bos_id
        # Weak: the LLTokenizer keeps this object, and _by_tokenizer keeps the
        # LLTokenizer for as long as the tokenizer lives; a strong reference
        # back would keep the tokenizer alive for ever.
        self._tokenizer = weakref.ref(tokenizer)

    def __call__(self, text):
        if isinstance(text, bytes):
            raise TypeError("text, not bytes")  # tells TokenizerWrapper to pass str
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise RuntimeError("the tokenizer of this LLTokenizer is gone")
        return tokenizer.encode(text)


def _token_bytes(tokenizer, i: int) -> bytes:
    try:
        return tokenizer.token_bytes(i)
    except (KeyError, ValueError, AcornError):
        return b""  # an unused id: empty tokens are never allowed


_lock = threading.Lock()
_by_tokenizer: "weakref.WeakKeyDictionary[object, _Compiled]" = weakref.WeakKeyDictionary()


def _compiled(tokenizer) -> _Compiled:
    """The tokenizer's _Compiled, made on first use (building the LLTokenizer
    takes ~0.3 s for a 50k vocabulary) and kept as long as the tokenizer."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        raise AcornError("structured outputs need llguidance: pip install 'llguidance>=1.0'") from None
    with _lock:
        compiled = _by_tokenizer.get(tokenizer)
        if compiled is None:
            compiled = _by_tokenizer[tokenizer] = _Compiled(tokenizer)
        return compiled
