"""Structured outputs (acorn.infer.structured): a random tiny Llama sampled at
temperature 1.5 still writes text that parses and validates, because every
token it could pick is checked against the grammar first.

The oracles: jsonschema for JSON Schema, re.fullmatch for regexes (the
patterns here mean the same in Python and in Rust's regex syntax), and the
tokenizer's own bytes for the unit tests of the mask. The model rambles, so
the schemas bound every string, number and array, and the budgets leave room
to finish; the model's context is 128 tokens."""

import json
import re

import jsonschema
import pytest
import torch

from acorn.errors import AcornError
from acorn.infer import Engine
from acorn.infer.structured import _compiled, build_constraint

PROMPTS = ["The cat", "A small acorn", "Once upon a time"]
SEEDS = range(4)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "height": {"type": "number", "minimum": 0, "maximum": 3},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "student"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog", "owl"]}, "legs": {"type": "integer", "minimum": 0,
                                                                              "maximum": 8}},
            "required": ["kind", "legs"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["pet"],
    "additionalProperties": False,
}
INTS = {"type": "array", "items": {"type": "integer", "minimum": -99, "maximum": 99}, "minItems": 1, "maxItems": 5}
ENUM = {"enum": ["red", "green", 7, True, None]}
SCHEMAS = {"person": PERSON, "nested": NESTED, "ints": INTS, "enum": ENUM}


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


def _stop_ids(tok):
    return frozenset({tok.eos_id, tok.special_tokens["<|end|>"]})


# ------------------------------------------------------------ through the engine
@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_outputs_validate(engine, name):
    schema = SCHEMAS[name]
    texts = []
    for seed in SEEDS:
        for c in engine.generate(PROMPTS, temperature=1.5, seed=seed, max_new_tokens=110,
                                 guided={"json_schema": schema}):
            assert c.finish_reason == "stop", c.text
            assert c.token_ids[-1] in engine.stop_token_ids  # ended by a stop token, allowed only at the end
            jsonschema.validate(json.loads(c.text), schema)
            texts.append(c.text)
    assert len(set(texts)) > 1  # sampled, not one forced answer


def test_schema_as_json_text_and_plain_engine(checkpoint):
    """A schema given as JSON text, on the plain (unpaged) loop: the same hook."""
    engine = Engine.from_pretrained(checkpoint[0], device="cpu", paged=False)
    for c in engine.generate(PROMPTS, temperature=1.5, seed=5, max_new_tokens=110,
                             guided={"json_schema": json.dumps(NESTED)}):
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), NESTED)


def test_unconstrained_output_is_not_json(engine):
    """The control: the same model and seeds without the constraint do not write JSON."""
    for seed in SEEDS:
        for c in engine.generate(PROMPTS, temperature=1.5, seed=seed, max_new_tokens=40):
            with pytest.raises(ValueError):
                json.loads(c.text)


def test_n_samples_each_valid(engine):
    out = engine.generate("The cat", temperature=1.5, seed=3, n=3, max_new_tokens=110, guided={"json_schema": PERSON})
    assert [c.index for c in out] == [0, 1, 2]
    for c in out:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), PERSON)
    assert len({c.text for c in out}) > 1  # each sample from the start state, not a copy of the first


def test_json_object(engine):
    # A random model rarely picks the closing quote among ~250 allowed tokens;
    # a bias towards '"' and '}' lets objects finish. A bias must not override
    # the mask: '}' is favoured by +6 at the first step, where only '{' fits.
    bias = {engine.tokenizer.encode('"')[0]: 6.0, engine.tokenizer.encode("}")[0]: 6.0}
    nonempty = 0
    for seed in SEEDS:
        for c in engine.generate(PROMPTS, temperature=1.5, seed=seed, max_new_tokens=110,
                                 guided={"json_object": True}, logit_bias=bias):
            assert c.finish_reason == "stop", c.text
            assert isinstance(json.loads(c.text), dict)
            nonempty += c.text != "{}"
    assert nonempty > 0


def test_regex(engine):
    rx = r"[A-Z][a-z]{2,5} (19|20)[0-9]{2}"
    for temperature in (1.5, 0.0):
        for c in engine.generate(PROMPTS, temperature=temperature, seed=1, max_new_tokens=40, guided={"regex": rx}):
            assert c.finish_reason == "stop"
            assert re.fullmatch(rx, c.text), c.text


def test_choice(engine):
    choices = ["yes", "no", "maybe so"]
    seen = set()
    for seed in SEEDS:
        for c in engine.generate(PROMPTS, temperature=1.5, seed=seed, max_new_tokens=20, guided={"choice": choices}):
            assert c.finish_reason == "stop"
            assert c.text in choices
            seen.add(c.text)
    assert len(seen) > 1


def test_no_stop_token_ends_when_complete(engine):
    """With ignore_eos the sequence has no stop ids: the engine ends it when
    the grammar can take nothing more, without a stop token."""
    for c in engine.generate(PROMPTS, temperature=1.5, seed=0, max_new_tokens=20, ignore_eos=True,
                             guided={"choice": ["yes", "no"]}):
        assert c.finish_reason == "stop"
        assert c.text in ("yes", "no")
        assert not set(c.token_ids) & engine.stop_token_ids


def test_lark_grammar(engine):
    grammar = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,2}/'
    for seed in SEEDS:
        for c in engine.generate(PROMPTS, temperature=1.5, seed=seed, max_new_tokens=80, guided={"grammar": grammar}):
            assert c.finish_reason == "stop"
            assert re.fullmatch(r"\([0-9]{1,2}(\+[0-9]{1,2})*\)", c.text), c.text


@pytest.mark.parametrize("guided, problem", [
    ({"json_schema": {"type": "foo"}}, "Invalid type: foo"),
    ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 1}}, "minimum"),
    ({"json_schema": {"properties": {"a": {"$ref": "#/nope"}}}}, "nope"),
    ({"json_schema": "{not json"}, "not valid JSON"),
    ({"regex": "a(b"}, "unclosed group"),
    ({"regex": "(?<=a)b"}, "look-around"),
    ({"grammar": "start: foo"}, "unknown name"),
    ({"choice": []}, "non-empty list"),
    ({"json_object": "yes"}, "must be True"),
])
def test_bad_specs_raise_one_line(engine, guided, problem):
    with pytest.raises(AcornError, match=re.escape(problem)) as e:
        engine.generate("The cat", max_new_tokens=5, guided=guided)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------ the mask itself
def _allowed_ids(constraint, n):
    return torch.nonzero(constraint.allowed(n))[:, 0].tolist()


def test_choice_mask_allows_only_prefixes(tok):
    choices = [b"yes", b"no"]
    c = build_constraint({"choice": ["yes", "no"]}, tok, _stop_ids(tok))
    allowed = _allowed_ids(c, tok.vocab_size)
    assert allowed
    for i in allowed:
        b = tok.token_bytes(i)
        assert b and any(ch.startswith(b) for ch in choices), b
    # every token that is a prefix is allowed (y, n, and merged ones if the vocabulary has them)
    prefixes = [i for i in range(tok.vocab_size) if not tok.is_special(i)
                and any(ch.startswith(tok.token_bytes(i)) for ch in choices)]
    assert allowed == prefixes


def test_stop_ids_only_when_complete(tok):
    """Stop ids are banned until the text is complete, then they are all that
    is left; a chat model's end-of-turn token works the same as EOS, and an
    EOS that is not one of the sequence's stop ids is never allowed."""
    end = tok.special_tokens["<|end|>"]
    c = build_constraint({"choice": ["yes"]}, tok, frozenset({end}))
    ids = tok.encode("yes")
    for t in ids:
        assert end not in _allowed_ids(c, tok.vocab_size)
        assert not c.done()
        c.advance(t)
    assert _allowed_ids(c, tok.vocab_size) == [end]
    assert c.done()
    c.advance(end)
    assert c.done()
    fresh = c.fresh()  # back at the start
    assert not fresh.done()
    assert _allowed_ids(fresh, tok.vocab_size) == _allowed_ids(build_constraint({"choice": ["yes"]}, tok), tok.vocab_size)


def test_stop_token_that_is_text(tok):
    """A stop id the grammar could read as text ('a' here) still ends the
    sequence, so it is allowed only where the text may end."""
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    c = build_constraint({"regex": "[ab]+"}, tok, frozenset({a}))
    assert _allowed_ids(c, tok.vocab_size) == [b]
    c.advance(b)
    assert set(_allowed_ids(c, tok.vocab_size)) == {a, b}
    assert not c.done()  # more may follow
    c.advance(a)
    assert c.done()


def test_mask_size_follows_the_engine(tok):
    """The model's vocabulary may be padded beyond the tokenizer's: the extra ids are never allowed."""
    c = build_constraint({"regex": "[a-z ]+"}, tok, _stop_ids(tok))
    base = c.allowed(tok.vocab_size)
    padded = c.allowed(tok.vocab_size + 13)
    assert padded.shape == (tok.vocab_size + 13,) and padded.dtype == torch.bool
    assert torch.equal(padded[:tok.vocab_size], base) and not padded[tok.vocab_size:].any()
    assert torch.equal(c.allowed(200), base[:200])


def test_token_outside_mask_raises(tok):
    c = build_constraint({"regex": "[0-9]+"}, tok, _stop_ids(tok))
    with pytest.raises(AcornError, match="does not fit"):
        c.advance(tok.encode("x")[0])
    c = build_constraint({"regex": "[0-9]+"}, tok, _stop_ids(tok))
    with pytest.raises(AcornError, match="before the text was complete"):
        c.advance(tok.eos_id)


def test_llguidance_tokenizer_built_once(tok):
    assert _compiled(tok) is _compiled(tok)
    a = build_constraint({"regex": "[0-9]+"}, tok)
    b = build_constraint({"regex": "[0-9]+"}, tok)
    assert a._start is b._start  # the compiled start state is shared; each constraint advances its own copy
    a.advance(tok.encode("1")[0])
    assert not b.is_complete() and a.is_complete()


@pytest.mark.parametrize("extra", [dict(num_beams=2), dict(min_new_tokens=3)])
def test_guided_refuses_beams_and_a_minimum_length(extra):
    from acorn.infer import SamplingParams

    with pytest.raises(AcornError, match="cannot be combined"):
        SamplingParams(guided={"regex": "[ab]+"}, **extra)
