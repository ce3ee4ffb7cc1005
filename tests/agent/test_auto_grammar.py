"""tool_choice "auto" under a grammar: plain text, or calls that are well formed and schema-valid."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from acorn.chat.formats import FORMATS
from acorn.chat.template import apply_chat_template
from acorn.chat.tools import parse_tool_calls, tool_call_grammar, tool_syntax
from acorn.infer.engine import default_stop_ids
from acorn.infer.structured import build_constraint
from acorn.tokenizer.bpe import Tokenizer

CORPUS = ('Hello there, the answer is 12. {"name": "calculator", "arguments": {"expression": "6+6"}} '
          "What is the weather in Oslo? It rains.\n") * 30
SCHEMAS = {"calculator": {"type": "object", "properties": {"expression": {"enum": ["6+6", "12*3"]}},
                          "required": ["expression"]},
           "weather": {"type": "object", "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 9}},
                       "required": ["days"]}}


@pytest.fixture(scope="module")
def toks():
    return {name: Tokenizer.train([CORPUS], 500, chat_format=name) for name in FORMATS}


def _constraint(tok, fmt):
    grammar = tool_call_grammar(tok, fmt, list(SCHEMAS.items()), allow_text=True)
    return build_constraint({"grammar": grammar}, tok, default_stop_ids(tok))


def _walk(tok, fmt, seed, special_weight=30.0, limit=80):
    """A random path through the grammar, leaning towards special tokens so calls happen."""
    c, g, out, stops = _constraint(tok, fmt), torch.Generator().manual_seed(seed), [], default_stop_ids(tok)
    specials = set(tok.special_tokens.values())
    while len(out) < limit:
        allowed = c.allowed(tok.vocab_size).nonzero().flatten().tolist()
        w = torch.tensor([special_weight if t in specials else 1.0 for t in allowed])
        t = allowed[int(torch.multinomial(w, 1, generator=g))]
        c.advance(t)
        if t in stops:
            return tok.decode(out), True
        out.append(t)
    return tok.decode(out), False


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_reply_the_auto_grammar_allows_is_text_or_valid_calls(toks, fmt):
    tok, syntax = toks[fmt], tool_syntax(fmt)
    markers = [m.strip() for m in (syntax.call_open, syntax.begin) if m.strip()]
    kinds = set()
    for seed in range(40):
        text, ended = _walk(tok, fmt, seed)
        if not ended:
            continue  # cut by the walk's length: not a whole reply
        content, calls = parse_tool_calls(text, fmt)
        for c in calls:
            jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])
        assert not any(m in content for m in markers), text  # no unreadable call left in the text
        kinds.add(("calls" if calls else "text"))
    assert kinds == {"calls", "text"}  # both shapes were drawn


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("content,calls", [("It is 12.", []), (None, [("calculator", {"expression": "6+6"})]),
                                           (None, [("weather", {"days": 3}), ("calculator", {"expression": "12*3"})])])
def test_the_auto_grammar_accepts_what_the_template_writes(toks, fmt, content, calls):
    tok = toks[fmt]
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in
             enumerate(calls)]
    msg = {"role": "assistant", "content": content} | ({"tool_calls": calls} if calls else {})
    out = apply_chat_template(tok, [{"role": "user", "content": "Hi"}, msg], return_assistant_mask=True)
    reply = [i for i, m in zip(out["input_ids"], out["assistant_mask"]) if m]
    c = _constraint(tok, fmt)
    for i in reply:
        assert c.allowed(tok.vocab_size)[i], (tok.decode(reply), tok.decode([i]))
        c.advance(i)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_after_the_call_marker_only_a_declared_call_may_follow(toks, fmt):
    """Once a call opens, arguments that are not JSON, or a tool not declared, are masked out."""
    tok, syntax = toks[fmt], tool_syntax(fmt)
    opening = (syntax.begin or syntax.call_open)
    c = _constraint(tok, fmt)
    for i in tok.encode(opening, allowed_special="all"):
        assert c.allowed(tok.vocab_size)[i]
        c.advance(i)
    prefix = tok.encode('{"name": "', allowed_special="all")
    for i in prefix:
        c.advance(i)
    allowed = c.allowed(tok.vocab_size)
    first = {tok.decode([i])[:1] for i in allowed.nonzero().flatten().tolist()}
    assert first <= {"c", "w"}  # calculator or weather, nothing else
    plain = _constraint(tok, fmt)
    assert plain.allowed(tok.vocab_size)[tok.encode("H")[0]]  # text may start a reply


def test_bare_formats_keep_text_from_starting_like_a_call(toks):
    """Llama 3.1 may write calls without <|python_tag|>: text starting with "{" would be one, so it must be a valid call."""
    tok = toks["llama3"]
    c = _constraint(tok, "llama3")
    brace = tok.encode("{")[0]
    assert c.allowed(tok.vocab_size)[brace] == False  # noqa: E712 - a bare call is not in this grammar; text may not
