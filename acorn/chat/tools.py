"""Tool calls in a chat format's own syntax: parsing them, streaming around them, forcing them.

A chat model calls a tool by writing the call into its reply, in the syntax its
chat template taught it (Schick et al. 2023, "Toolformer", for the idea of calls
inline in the text; OpenAI's function-calling protocol on the API side;
Qwen2.5's <tool_call> blocks, Llama 3.1's <|python_tag|> JSON, Acorn's own
<|tool_call|> blocks on the model side). That syntax is one ToolSyntax per
chat format (acorn.chat.formats), and the three things that must agree with
the template are derived from it here:

  parse_tool_calls     generated text -> (content, OpenAI-style tool calls): the
                       inverse of the template's rendering of calls
  streamable_content   while a reply streams: how much of it is surely content,
                       so text that may open a call is held back, not shown
  tool_call_grammar    a Lark grammar (llguidance's dialect, for
                       acorn.infer.structured) whose every match is one or more
                       calls written exactly as the template writes them, with
                       arguments valid against each tool's JSON Schema; the
                       server uses it for tool_choice "required" / a named tool;
                       with allow_text, for "auto": text, or well-formed calls
                       (the agent loop, acorn.agent.loop, decodes under it)

The grammar is text built from the table, so it lives here with the syntax it
spells; acorn.infer.structured compiles any grammar and knows no chat format.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache
from typing import Any, Sequence

from acorn.chat.formats import FORMATS, ToolSyntax, get_format
from acorn.errors import AcornError

# The formats whose replies can carry tool calls.
TOOL_FORMATS = tuple(name for name, f in FORMATS.items() if f.tool_syntax is not None)


def tool_syntax(chat_format: str | None) -> ToolSyntax | None:
    """The format's tool-call syntax; None for a format without one (or no format)."""
    fmt = FORMATS.get(chat_format) if chat_format else None
    return fmt.tool_syntax if fmt is not None else None


# ------------------------------------------------------------------ parsing
# A block that is not a JSON object with a string "name" (malformed JSON, a
# block cut off by max_tokens) is not a call: it stays in the content, markers
# and all, so nothing the model wrote is lost and a server can return it as
# plain text. In the list shape one bad call voids the list (the parts cannot be
# told apart from text), so all of it stays content.
_SPACE = re.compile(r"\s*")


def parse_tool_calls(text: str, chat_format: str) -> tuple[str, list[dict]]:
    """Split generated assistant text into (content, tool calls).

    Each call is {"id", "type": "function", "function": {"name", "arguments"}}
    with arguments a JSON string, as in the OpenAI API. A trailing end-of-turn
    token (the generation's stop token) is removed first.
    """
    fmt = get_format(chat_format)
    for stop in fmt.stop_tokens:
        if text.endswith(stop):
            text = text[: -len(stop)]
            break
    syntax = fmt.tool_syntax
    if syntax is None:
        return text, []
    return _parse_blocks(text, syntax) if syntax.call_close else _parse_list(text, syntax)


def _call_from_json(obj: Any) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    # Either key is read, whatever the format writes: a model tuned on another
    # family's data may use the other one, and its call is still a call.
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


@lru_cache(maxsize=None)
def _block_pattern(syntax: ToolSyntax) -> re.Pattern:
    # What the template writes before a call (chatml's newline after the content
    # or the previous call) belongs to the call, not to the content.
    lead = "|".join(re.escape(s) for s in dict.fromkeys((syntax.after_content, syntax.separator)) if s)
    return re.compile((f"(?:{lead})?" if lead else "") + re.escape(syntax.call_open.strip()) + "(.*?)"
                      + re.escape(syntax.call_close.strip()), re.S)


def _parse_blocks(text: str, syntax: ToolSyntax) -> tuple[str, list[dict]]:
    calls: list[dict] = []

    def take(m: re.Match) -> str:
        try:
            call = _call_from_json(json.loads(m.group(1)))
        except json.JSONDecodeError:
            call = None
        if call is None:
            return m.group(0)
        calls.append(call)
        return ""

    content = _block_pattern(syntax).sub(take, text)
    return content, calls


def _parse_list(text: str, syntax: ToolSyntax) -> tuple[str, list[dict]]:
    head, tag, body = text.partition(syntax.begin.strip())
    if not tag:
        if not syntax.bare:
            return text, []
        head, body = "", text
    calls = _json_calls(body, syntax.separator.strip())
    if calls is None:
        return text, []
    return head.removesuffix(syntax.after_content), calls


def _json_calls(body: str, separator: str) -> list[dict] | None:
    """The calls of a list body (JSON objects, `separator` between them, any
    whitespace around it), or None if the body is anything else."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while True:
        try:
            obj, pos = decoder.raw_decode(body, _SPACE.match(body, pos).end())
        except json.JSONDecodeError:
            return None
        call = _call_from_json(obj)
        if call is None:
            return None
        calls.append(call)
        pos = _SPACE.match(body, pos).end()
        if pos == len(body):
            return calls
        if separator:
            if not body.startswith(separator, pos):
                return None
            pos += len(separator)


# ---------------------------------------------------------------- streaming
def _markers(syntax: ToolSyntax) -> tuple[str, ...]:
    """The texts that open the calls of a reply. The parser takes the text
    written between the content and the calls (chatml's newline) with them, so
    streaming must hold it back too."""
    opening = (syntax.begin or syntax.call_open).strip()
    return (syntax.after_content + opening, opening) if syntax.after_content else (opening,)


def held_back(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of one of
    `markers` (tool-call markers, stop strings): text that may be a marker
    arriving in pieces, so it must wait to be shown."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


def streamable_content(text: str, chat_format: str | None) -> tuple[int, bool]:
    """For a reply that may call tools, as it streams in: (how many of its
    first characters are surely content and can be shown now, whether a tool
    call has begun). What is not shown waits for the whole reply, to be parsed;
    a call's JSON in pieces would be of no use to a client."""
    syntax = tool_syntax(chat_format)
    if syntax is None:
        return len(text), False
    if syntax.bare:  # the reply may be calls without their opening tag
        head = text.lstrip()
        if not head or head.startswith("{"):
            return 0, bool(head)
    markers = _markers(syntax)
    hits = [i for i in (text.find(m) for m in markers) if i >= 0]
    if hits:
        return min(hits), True
    return len(text) - held_back(text, markers), False


# ------------------------------------------------------------------ grammar
# The JSON inside a call as the templates write it (Jinja's tojson = json.dumps):
# ", " and ": " separators, no other whitespace.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def tool_call_grammar(tokenizer, chat_format: str | None, functions: list[tuple[str, dict | None]], *,
                      parallel: bool = True, allow_text: bool = False) -> str:
    """A Lark grammar (llguidance's dialect) for replies that are only tool
    calls, in the chat format's own syntax: one call (parallel=False) or
    one or more, each a call of one of `functions` (name, JSON Schema of its
    arguments) whose arguments match the schema (%json). Special tokens of
    the syntax are named by id (<[id]>), so the model must emit the special
    token itself, as it learned to, not its text spelled out in pieces.

    allow_text: tool_choice "auto" — the reply may also be plain text, or
    text followed by calls. The text can hold no special token (a regex
    never matches one), so it cannot open a call: once the model starts a
    call, the call is well formed and schema-valid, and a reply is never a
    broken call left in the content. In a format whose bare calls need no
    opening tag (Llama 3.1), text may not begin with `{` either, since that
    is how a bare call begins."""
    syntax = tool_syntax(chat_format)
    if syntax is None:
        raise AcornError(f"chat format {chat_format!r} has no tool-call syntax, so a tool call cannot be forced; "
                         f"use a model whose chat format is one of {', '.join(TOOL_FORMATS)}")
    lines, alternatives = [], []
    for i, (name, schema) in enumerate(functions):
        schema = dict(schema or {"type": "object", "properties": {}})
        if "properties" in schema:
            # Arguments the function does not declare are of no use to it, and a
            # model free to invent them may ramble until max_tokens cuts the call.
            schema.setdefault("additionalProperties", False)
        schema["x-guidance"] = {**_JSON_STYLE, **schema.get("x-guidance", {})}
        head = "{" + f'"name": {json.dumps(name, ensure_ascii=False)}, "{syntax.arguments_key}": '
        lines.append(f"fn_{i}: {json.dumps(head)} %json {json.dumps(schema)} \"}}\"")
        alternatives.append(f"fn_{i}")
    call = _sequence(_lark_text(syntax.call_open, tokenizer), "(" + " | ".join(alternatives) + ")",
                     _lark_text(syntax.call_close, tokenizer))
    more = "(" + _sequence(_lark_text(syntax.separator, tokenizer), "call") + ")*" if parallel else ""
    calls = _sequence(_lark_text(syntax.begin, tokenizer), "call", more)
    if not allow_text:
        return "\n".join([f"start: {calls}", f"call: {call}", *lines])
    # Text, or calls, or text then calls (with what the template writes between them).
    after = _lark_text(syntax.after_content, tokenizer)
    text = r"/\s*[^\s{](.|\n)*|\s+/" if syntax.bare else r"/(.|\n)+/"
    start = f"start: TEXT? | calls | TEXT {after} calls".replace("  ", " ")
    return "\n".join([start, f"calls: {calls}", f"call: {call}", *lines, f"TEXT: {text}"])


def _sequence(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _lark_text(text: str, tokenizer) -> str:
    """Literal text as Lark: the tokenizer's special tokens by id, the rest as strings."""
    if not text:
        return ""
    specials = sorted((s for s in tokenizer.special_tokens if s in text), key=len, reverse=True)
    if not specials:
        return json.dumps(text)
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    return " ".join(f"<[{tokenizer.special_tokens[p]}]>" if p in tokenizer.special_tokens else json.dumps(p)
                    for p in pieces if p)
