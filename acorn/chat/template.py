"""Chat templates: a conversation (system, user, assistant, tool) to tokens.

A chat template is a Jinja program that turns a list of messages into one
string of text and role markers; the Hugging Face convention (a `chat_template`
in tokenizer_config.json, rendered by `transformers`' `apply_chat_template`) is
what every open model ships, so Acorn renders templates the same way, to the
character, and its own three formats are such templates:

  acorn    <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>
           tool calls  <|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>
           tool results <|tool_output|>...<|/tool_output|> as their own turn
  chatml   <|im_start|>role\\n...<|im_end|>\\n, tool calls and results as in
           Qwen2.5: <tool_call>\\n{json}\\n</tool_call> in the assistant turn,
           <tool_response>\\n...\\n</tool_response> grouped in one user turn
  llama3   <|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>,
           tool calls <|python_tag|>{"name": ..., "parameters": {...}}; {...}<|eom_id|>,
           tool results in the `ipython` role

Tools (OpenAI-style JSON schemas) are written into the system turn by all
three: acorn and chatml one schema per line (`tojson`), llama3 as Llama 3.1
does (`tojson(indent=4)`, blank-line separated, after "Environment: ipython").

The parts an SFT loss trains on (assistant content, its tool calls and the
closing end-of-turn token, never the role header) are wrapped in
`{% generation %}...{% endgeneration %}`, the transformers convention behind
`return_assistant_tokens_mask`.

Prompt injection: text inside messages is data. A user who types "<|end|>"
must not close their own turn, so when tokenizing, special-token text found in
the conversation is marked (see `_mark`) and encoded as plain text; only the
special tokens the template itself writes become special ids.
"""

from __future__ import annotations

import contextvars
import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from acorn.chat.formats import FORMATS, get_format
from acorn.errors import AcornError


# ------------------------------------------------------------- the renderer
# The Jinja environment transformers renders chat templates in, rebuilt here so
# any template from a tokenizer_config.json renders to the same characters:
# sandboxed (templates from the Hub are untrusted code), trim_blocks and
# lstrip_blocks, loop controls (break/continue), a tojson filter that does not
# HTML-escape, raise_exception, strftime_now, a generation tag, and dict() and
# namespace() that cannot be used to reach Python internals.


@dataclass
class _GenerationTracker:
    pos: int = 0  # characters yielded by the template so far
    spans: list = field(default_factory=list)  # (start, end) character spans of {% generation %} blocks


# Which render (if any) the generation tag reports to. A context variable rather
# than state on the shared, cached environment, so concurrent renders in
# threads do not see each other's spans.
_TRACKER: contextvars.ContextVar[_GenerationTracker | None] = contextvars.ContextVar("acorn_chat_tracker", default=None)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged and
    records where that text starts in the output.

    The start is the number of characters the template has yielded before the
    block, exactly how transformers measures it, so masks agree with it even in
    odd cases (a tag inside a macro, whose output Jinja buffers)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_track", []), [], [], body).set_lineno(lineno)

    def _track(self, caller):
        text = caller()
        tracker = _TRACKER.get()
        if tracker is not None:
            tracker.spans.append((tracker.pos, tracker.pos + len(text)))
        return text


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes '<', '>', '&' and "'"; chat templates want JSON as json.dumps writes it.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without handing them the dict class itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace() minus underscore names, which could reach the object's internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_namespace_name(name):
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore names on a namespace ({name!r})")


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@lru_cache(maxsize=64)
def compile_template(template: str) -> jinja2.Template:
    """Compile a chat template once (templates are long and compiling is the slow part)."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise AcornError(
            f"chat template does not compile (line {e.lineno}: {e.message}); fix the Jinja syntax"
        ) from None


@dataclass(frozen=True)
class Rendered:
    text: str
    generation_spans: tuple[tuple[int, int], ...]  # character spans of {% generation %} blocks in text


def render(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **variables,
) -> Rendered:
    """Render a Jinja chat template exactly as transformers does.

    The template sees `messages`, `tools`, `documents`, `add_generation_prompt`
    and `variables` (apply_chat_template passes the special tokens there,
    bos_token, eos_token, pad_token, then the caller's extra keyword arguments).
    Messages are passed as given; apply_chat_template validates and normalises
    them first.
    """
    compiled = compile_template(template)
    tracker = _GenerationTracker()
    token = _TRACKER.set(tracker)
    parts = []
    try:
        for part in compiled.generate(
            messages=messages, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
            **variables,
        ):
            parts.append(part)
            tracker.pos += len(part)
    except jinja2.TemplateError as e:
        # raise_exception is how a template rejects a conversation it cannot render ("roles must alternate").
        raise AcornError(f"the chat template rejected this conversation: {e.message or e}") from None
    finally:
        _TRACKER.reset(token)
    return Rendered("".join(parts), tuple(tracker.spans))


def render_text(template: str, messages: list[dict], **kwargs) -> str:
    """`render(...)` without the generation spans."""
    return render(template, messages, **kwargs).text


# --------------------------------------------------------------- messages
_ROLES = ("system", "user", "assistant", "tool")


def _known_roles(template: str) -> tuple[str, ...]:
    # Llama 3.x names the tool-result role `ipython`; accept it for any template that knows that word.
    return _ROLES + ("ipython",) if "ipython" in template else _ROLES


def _plain(value: Any, where: str) -> Any:
    """A copy of `value` made only of JSON types, so the template cannot touch (or call methods on) caller objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    # Subclasses (enums, numpy scalars) carry methods of their own; keep only the base value.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise AcornError(
        f"{where} holds a {type(value).__name__}; messages must contain only JSON data (str, number, list, dict)"
    )


def _normalize_tool_call(call: Any, where: str) -> dict:
    if not isinstance(call, dict):
        raise AcornError(
            f"{where} is a {type(call).__name__}; write it as "
            "{'type': 'function', 'function': {'name': ..., 'arguments': {...}}}"
        )
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise AcornError(
            f"{where} has no function name; give it 'function': {{'name': 'tool_name', 'arguments': {{...}}}}"
        )
    args = fn.get("arguments", {})
    if args is None:
        args = {}
    if isinstance(args, str):
        # OpenAI sends arguments as a JSON string; parse it so a string and the
        # equivalent dict render to the same text (and the same tokens).
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise AcornError(
                f"{where} has arguments that are not valid JSON ({e.msg} at char {e.pos}); pass a JSON object"
            ) from None
    if not isinstance(args, dict):
        raise AcornError(f"{where} has arguments of type {type(args).__name__}; arguments must be a JSON object")
    fn = {**fn, "arguments": args}
    return {**call, "function": fn} if "function" in call else fn


def normalize_messages(messages: Any, *, template: str = "") -> list[dict]:
    """Validate a conversation and return the copy a template is rendered with.

    As transformers does, keys whose value is None are dropped (many templates
    test `is defined`, not `is none`), and a message's reasoning is offered under
    both `reasoning_content` and `thinking`. Tool-call arguments given as a JSON
    string are parsed to a dict.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise AcornError("a conversation must be a non-empty list of messages like {'role': 'user', 'content': '...'}")
    roles = _known_roles(template)
    out = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, dict):
            raise AcornError(
                f"{where} is a {type(msg).__name__}; each message must be a dict like {{'role': 'user', 'content': '...'}}"
            )
        role = msg.get("role")
        if role not in roles:
            raise AcornError(f"{where} has role {role!r}; use one of {', '.join(roles)}")
        content = msg.get("content")
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None and role != "assistant":
            raise AcornError(f"{where} is a {role} message with tool_calls; only assistant messages can call tools")
        if content is None and not (role == "assistant" and tool_calls):
            raise AcornError(
                f"{where} ({role}) has no content; give it 'content': '...' "
                "(only an assistant message with tool_calls may omit it)"
            )
        if isinstance(content, (list, tuple)):
            msg = {**msg, "content": _flatten_parts(content, where)}
        elif content is not None and not isinstance(content, str):
            raise AcornError(f"{where} has content of type {type(content).__name__}; content must be a string "
                             "or a list of parts like {'type': 'text', 'text': '...'}")
        else:
            msg = {**msg, "content": content.replace(_IMAGE, "")} if content is not None else msg
        msg = {k: _plain(v, where) for k, v in msg.items() if v is not None}
        if tool_calls is not None:
            if not isinstance(tool_calls, (list, tuple)):
                raise AcornError(f"{where} has tool_calls of type {type(tool_calls).__name__}; give a list of calls")
            msg["tool_calls"] = [
                _normalize_tool_call(c, f"{where} tool call {j}") for j, c in enumerate(msg["tool_calls"])
            ]
        reasoning = next((msg[k] for k in ("reasoning_content", "thinking", "reasoning") if k in msg), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


# ------------------------------------------------------------ images in messages
# A message's content may be a list of parts (the OpenAI/Anthropic shape, after
# the server has decoded them): {"type": "text", "text": "..."} and
# {"type": "image", "image": <file path, bytes or PIL image>}. The parts are
# joined into one string for the template, each image as the noncharacter
# _IMAGE (removed from all real text, so it cannot be forged); after the data
# is marked, apply_chat_template writes each _IMAGE as image_tokens copies of
# the placeholder special token (acorn.vision.llava.IMAGE_TOKEN), which encode
# as special ids: the model's forward puts the image's vectors there.
_IMAGE = "\ufdd2"
IMAGE_PLACEHOLDER = "<image>"  # = acorn.vision.llava.IMAGE_TOKEN (kept here so chat does not import vision)


def _flatten_parts(parts, where: str) -> str:
    out = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"].replace(_IMAGE, ""))
        elif kind == "image" and part.get("image") is not None:
            out.append(_IMAGE)
        else:
            raise AcornError(f"{where} content part {j} is not a text or image part; write "
                             "{'type': 'text', 'text': '...'} or {'type': 'image', 'image': <path or bytes>}")
    return "".join(out)


def message_images(messages) -> list:
    """The image parts' payloads (file paths, bytes or PIL images), in the order the prompt holds them."""
    return [part["image"] for msg in messages if isinstance(msg, dict) and isinstance(msg.get("content"), (list, tuple))
            for part in msg["content"] if isinstance(part, dict) and part.get("type") == "image"]


def _expand_images(msgs: list[dict], placeholder: str) -> list[dict]:
    """Each image mark in the messages' content -> the placeholder tokens (only content holds images)."""
    return [{**m, "content": m["content"].replace(_IMAGE, placeholder)} if isinstance(m.get("content"), str) else m
            for m in msgs]


def _image_placeholder(tok, image_tokens: int | None, n_images: int) -> str:
    if not n_images:
        return ""
    if not image_tokens or IMAGE_PLACEHOLDER not in getattr(tok, "special_tokens", {}):
        raise AcornError(f"the conversation holds {n_images} image(s) but this is a text-only model; send text "
                         "only, or use a model that reads images (`acorn vlm train`)")
    return IMAGE_PLACEHOLDER * image_tokens


# ------------------------------------------------------ injection-safe encoding
# Special-token text inside the conversation (messages, tools, template
# variables) is wrapped in two Unicode noncharacters before rendering. Unicode
# reserves noncharacters for a program's internal use, so they never occur in
# real text (any that do are removed from the input first, so they cannot be
# forged). After rendering, a special token between the two markers came from
# the data and is encoded as plain text; one without markers was written by the
# template and becomes a special id. A lone marker (the template split a marked
# token with a string method) is dropped, but still keeps the text on its two
# sides from forming a special token.
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"


def _mark(value: Any, specials_re: re.Pattern) -> Any:
    if isinstance(value, str):
        value = value.replace(_OPEN, "").replace(_CLOSE, "")
        return specials_re.sub(lambda m: _OPEN + m.group(0) + _CLOSE, value)
    if isinstance(value, dict):
        return {k: _mark(v, specials_re) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark(v, specials_re) for v in value]
    return value


@lru_cache(maxsize=16)
def _special_patterns(specials: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    # Longest first, so a special token wins over another that is its prefix.
    alts = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) or "(?!)"
    scan = re.compile(f"{_OPEN}({alts}){_CLOSE}|({alts})|[{_OPEN}{_CLOSE}]")
    return re.compile(alts), scan


def _encode_marked(tok, marked: str) -> tuple[str, list[int], list[int]]:
    """Encode a rendered chat whose data-borne special tokens are marked.

    Returns the chat text without markers, its ids, and the (sorted) positions in
    `marked` of the markers removed, to map character offsets back to the text.
    Text between template specials is encoded ordinarily in one piece, so for a
    chat with no injected tokens the ids equal tok.encode(text, allowed_special='all').
    """
    _, scan = _special_patterns(tuple(tok.special_tokens))
    ids: list[int] = []
    text_parts: list[str] = []
    plain: list[str] = []  # the ordinary text since the last template special
    removed: list[int] = []
    pos = 0

    def flush():
        if plain:
            ids.extend(tok.encode("".join(plain)))
            plain.clear()

    for m in scan.finditer(marked):
        plain.append(marked[pos:m.start()])
        text_parts.append(marked[pos:m.start()])
        if m.group(1) is not None:  # special-token text from the data: plain text
            plain.append(m.group(1))
            text_parts.append(m.group(1))
            removed += [m.start(), m.end() - 1]
        elif m.group(2) is not None:  # written by the template: a special id
            flush()
            ids.append(tok.special_tokens[m.group(2)])
            text_parts.append(m.group(2))
        else:
            removed.append(m.start())
        pos = m.end()
    plain.append(marked[pos:])
    text_parts.append(marked[pos:])
    flush()
    return "".join(text_parts), ids, removed


def _assistant_mask(tok, ids: list[int], text: str, spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose first byte lies inside a generation span of `text`."""
    # Character offsets to UTF-8 byte offsets, since tokens are byte sequences.
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    byte_spans = sorted((byte_at[s], byte_at[e]) for s, e in spans if e > s)
    mask, offset = [], 0
    for i in ids:
        mask.append(int(any(s <= offset < e for s, e in byte_spans)))
        offset += len(tok.token_bytes(i))
    if offset != byte_at[-1]:
        raise AssertionError("token bytes do not add up to the rendered chat")  # a tokenizer bug, not user input
    return mask


# ------------------------------------------------------------ the entry point
def resolve_template(tok, chat_template: str | None = None, tools=None) -> str:
    """The template to use: the argument (a format name or a Jinja string), the
    tokenizer's own, else its chat format's (acorn by default)."""
    if chat_template is not None:
        return FORMATS[chat_template].template if chat_template in FORMATS else chat_template
    own = getattr(tok, "chat_template", None)
    if isinstance(own, dict):
        # tokenizer_config.json may hold several named templates (transformers picks 'tool_use' for tools).
        own = own.get("tool_use") if tools and "tool_use" in own else own.get("default")
    if own:
        return own
    fmt = getattr(tok, "chat_format", None) or "acorn"
    return get_format(fmt).template


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _special_token_variables(tok) -> dict[str, str]:
    # transformers passes tokenizer.special_tokens_map: the special tokens that are set.
    out = {}
    for name in ("bos_token", "eos_token", "pad_token"):
        value = getattr(tok, name, None)
        if value:
            out[name] = value
    return out


def apply_chat_template(
    tok,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    tokenize: bool = True,
    return_assistant_mask: bool = False,
    tools: list[dict] | None = None,
    chat_template: str | None = None,
    image_tokens: int | None = None,
    **kwargs,
):
    """Render a conversation with a chat template, and tokenize it.

    chat_template: a format name ('acorn', 'chatml', 'llama3') or a Jinja
        string; default the tokenizer's template, else its format's.
    tokenize=False: the text, identical to transformers' apply_chat_template
        (except that tool-call arguments given as JSON strings are parsed and
        re-serialised, so they render like the equivalent dict).
    tokenize=True: the ids. Special tokens written by the template become
        special ids; special-token text inside messages stays plain text.
    return_assistant_mask: {"input_ids": [...], "assistant_mask": [...]}, the
        mask 1 on tokens whose first byte is inside a {% generation %} block.
    kwargs: extra template variables (e.g. a date string a template reads);
        `documents` is passed as its own variable, as transformers does.
    image_tokens: placeholder tokens per image part (a vision model's
        tokens_per_image); each image part of a message's content becomes that
        many IMAGE_PLACEHOLDER special ids (message_images lists the images in
        the same order). Images with image_tokens None: a text-only model's error.
    """
    template = resolve_template(tok, chat_template, tools)
    msgs = normalize_messages(messages, template=template)
    n_images = sum(m.get("content", "").count(_IMAGE) for m in msgs if isinstance(m.get("content"), str))
    placeholder = _image_placeholder(tok, image_tokens, n_images)
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
            raise AcornError(
                "tools must be a list of JSON schemas (dicts), e.g. {'type': 'function', 'function': {...}}"
            )
        tools = _plain(list(tools), "tools")
    documents = _plain(kwargs.pop("documents", None), "documents")
    kwargs = _plain(kwargs, "a template variable")
    specials = _special_token_variables(tok)
    if return_assistant_mask and not _GENERATION_TAG.search(template):
        # Without the tag every token would be masked out: an SFT run would silently train on nothing.
        raise AcornError(
            "this chat template has no {% generation %} blocks, so it cannot mark assistant tokens; "
            "use chat_template='acorn', 'chatml' or 'llama3', or wrap assistant turns in {% generation %}"
        )
    if not tokenize:
        if return_assistant_mask:
            raise AcornError("return_assistant_mask needs tokenize=True")
        return render(
            template, _expand_images(msgs, placeholder), tools=tools, documents=documents,
            add_generation_prompt=add_generation_prompt, **{**specials, **kwargs},
        ).text

    specials_re, _ = _special_patterns(tuple(tok.special_tokens))
    rendered = render(
        template, _expand_images(_mark(msgs, specials_re), placeholder), tools=_mark(tools, specials_re), documents=_mark(documents, specials_re),
        add_generation_prompt=add_generation_prompt, **{**specials, **_mark(kwargs, specials_re)},
    )
    text, ids, removed = _encode_marked(tok, rendered.text)
    if not return_assistant_mask:
        return ids

    def unmarked(pos: int) -> int:
        return pos - bisect_right(removed, pos - 1)

    spans = [(unmarked(s), unmarked(e)) for s, e in rendered.generation_spans]
    return {"input_ids": ids, "assistant_mask": _assistant_mask(tok, ids, text, spans)}
