"""The engine against transformers' generate, against recomputation without a
cache, and its stop rules, streaming, scoring, chat and CLI.

The tiny tokenizer and random Llama checkpoint are conftest.py's. The engine
here is the default (paged, continuous batching); test_paged.py holds the
paged path to the plain one. A scripted stand-in
model that says a fixed token sequence tests the rules that need exact output
(stop strings, split characters, chat turns).
"""

import io

import pytest
import torch

from acorn.cli import main
from acorn.errors import AcornError
from acorn.infer import Engine, SamplingParams
from acorn.model.transformer import KVCache, ModelConfig, ModelOutput

PROMPTS = ["The quick brown fox", "Once", "A small acorn grows into a tall", "The cat sat on"]


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


GREEDY = dict(temperature=0, ignore_eos=True)


# ------------------------------------------------------- against transformers
@torch.no_grad()
def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # never stop early: all n tokens are compared
    x = torch.tensor([ids])
    out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                      pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_batched_greedy_equals_transformers_generate_one_by_one(engine, checkpoint):
    _, hf = checkpoint
    outs = engine.generate(PROMPTS, max_new_tokens=20, **GREEDY)
    assert len({len(engine.encode(p)) for p in PROMPTS}) == len(PROMPTS)  # different lengths: left padding
    for prompt, c in zip(PROMPTS, outs):
        ids = engine.encode(prompt)
        assert c.prompt_tokens == len(ids) and c.finish_reason == "length"
        assert len(set(c.token_ids)) >= 5  # a varied continuation, not one token repeated
        assert c.token_ids == _hf_greedy(hf, ids, 20)
        assert c.text == engine.tokenizer.decode(c.token_ids)


@torch.no_grad()
def test_cached_decoding_equals_recomputing_without_a_cache(engine):
    outs = engine.generate(PROMPTS, max_new_tokens=6, **GREEDY)
    for prompt, c in zip(PROMPTS, outs):
        ids = engine.encode(prompt)
        for _ in range(6):
            ids.append(int(engine.model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert c.token_ids == ids[-6:]


def test_rows_that_finish_early_leave_the_others_unchanged(engine):
    """A row dropped from the batch (and the padding only it needed) must not change the rest."""
    solo = [engine.generate(p, max_new_tokens=12, **GREEDY)[0].token_ids for p in PROMPTS]
    longest = max(range(len(PROMPTS)), key=lambda i: len(PROMPTS[i]))
    # A token the longest prompt says early that no other row says: it alone stops early.
    others = {t for i, ids in enumerate(solo) if i != longest for t in ids}
    stop = next(t for t in solo[longest][1:6] if t not in others)
    params = SamplingParams(max_new_tokens=12, stop_token_ids=[stop], **GREEDY)
    batch = engine.generate(PROMPTS, params)
    assert batch[longest].finish_reason == "stop" and batch[longest].token_ids[-1] == stop
    assert len(batch[longest].token_ids) < 12
    for i, c in enumerate(batch):
        assert c.token_ids == engine.generate(PROMPTS[i], params)[0].token_ids
        if i != longest:
            assert c.token_ids == solo[i] and c.finish_reason == "length"


# ---------------------------------------------------------------- stopping
def test_stop_token_ids_stop_and_are_not_in_the_text(engine):
    full = engine.generate(PROMPTS[0], max_new_tokens=20, **GREEDY)[0]
    stop = full.token_ids[4]
    c = engine.generate(PROMPTS[0], max_new_tokens=20, stop_token_ids=[stop], **GREEDY)[0]
    first = full.token_ids.index(stop)
    assert c.token_ids == full.token_ids[:first + 1]
    assert c.finish_reason == "stop"
    assert c.text == engine.tokenizer.decode(full.token_ids[:first])


def test_stop_strings_cut_the_text_before_them(engine):
    full = engine.generate(PROMPTS[2], max_new_tokens=20, **GREEDY)[0]
    text = full.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert len(stop) == 3
    c = engine.generate(PROMPTS[2], max_new_tokens=20, stop=[stop, "never appears"], **GREEDY)[0]
    assert c.finish_reason == "stop"
    assert c.text == text[:text.find(stop)]
    assert len(c.token_ids) < 20  # generation ended there, it was not only cut afterwards


def test_max_new_tokens_gives_length(engine):
    c = engine.generate(PROMPTS[1], max_new_tokens=7, **GREEDY)[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 7


def test_generation_stops_at_the_models_context(engine):
    c = engine.generate(PROMPTS[0], max_new_tokens=500, **GREEDY)[0]
    assert c.finish_reason == "length"
    assert c.prompt_tokens + len(c.token_ids) == engine.model.config.max_seq_len


# ---------------------------------------------------------- scripted model
class Scripted(torch.nn.Module):
    """A stand-in model that answers any (single) prompt with `script`, one
    token per step (then repeats its last token). It records the prompts."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, n_layer=1, d_model=8, n_head=1, max_seq_len=256)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.script, self.prompts = script, []

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, *, attention_mask=None, positions=None, cache=None, use_cache=False,
                last_only=False):
        b, t = input_ids.shape
        assert b == 1
        if cache is None:
            self.prompts.append(input_ids[0].tolist())
            step = 0
        else:
            step = cache.length + t - len(self.prompts[-1])
        length = (cache.length if cache is not None else 0) + t
        logits = torch.zeros(1, 1, self.config.vocab_size)
        logits[0, 0, self.script[min(step, len(self.script) - 1)]] = 100.0
        new = KVCache(mask=torch.ones(1, length, dtype=torch.bool), positions=torch.arange(length)[None])
        return ModelOutput(logits=logits, cache=new if use_cache else None)


def _scripted(tok, text: str) -> Engine:
    return Engine(Scripted(tok.encode(text, allowed_special="all"), tok.vocab_size), tok, paged=False)


def test_streaming_never_breaks_a_character(tok):
    text = "naïve 🌰 café — 日本"
    ids = tok.encode(text)
    # The tokenizer saw only ASCII, so these characters are split into byte tokens.
    assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)
    eng = Engine(Scripted(ids + [tok.eos_id], tok.vocab_size), tok, paged=False)
    deltas = list(eng.stream("x"))
    assert all("\ufffd" not in d and d for d in deltas)
    assert "".join(deltas) == text
    assert "🌰" in deltas  # the four bytes arrive as one whole character
    assert eng.generate("x")[0].text == text


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streaming_holds_back_a_possible_stop_string_and_releases_it_when_it_is_not(tok):
    eng = _scripted(tok, "ab ST op STOP cd<|eos|>")
    deltas = list(eng.stream("x", stop=["STOP"]))
    assert "".join(deltas) == "ab ST op "
    assert not any("STOP" in d or "cd" in d for d in deltas)
    gen = eng.stream("x", stop=["STOP"])
    completion = None
    try:
        while True:
            next(gen)
    except StopIteration as e:
        completion = e.value
    assert completion.text == "ab ST op " and completion.finish_reason == "stop"


def test_the_tokenizers_stop_tokens_stop_by_default(tok):
    eng = _scripted(tok, "hello<|eos|> world")
    c = eng.generate("x", max_new_tokens=30)[0]
    assert c.text == "hello" and c.finish_reason == "stop" and c.token_ids[-1] == tok.eos_id
    c = eng.generate("x", max_new_tokens=30, ignore_eos=True)[0]
    assert c.text.startswith("hello<|eos|> world") and c.finish_reason == "length"


def test_ids_past_the_tokenizers_vocabulary_are_never_sampled(tok):
    """A model whose vocabulary is padded past the tokenizer's: its favourite id has no text."""
    eng = Engine(Scripted([tok.vocab_size + 3], tok.vocab_size + 8), tok, paged=False)
    for params in (dict(temperature=0), dict(temperature=1.0, seed=0)):
        c = eng.generate("x", max_new_tokens=5, ignore_eos=True, **params)[0]
        assert len(c.token_ids) == 5 and max(c.token_ids) < tok.vocab_size

def test_stream_equals_generate(engine):
    for params in (dict(**GREEDY), dict(temperature=0.9, top_p=0.9, seed=3, ignore_eos=True)):
        text = "".join(engine.stream(PROMPTS[0], max_new_tokens=15, **params))
        assert text == engine.generate(PROMPTS[0], max_new_tokens=15, **params)[0].text


def test_seeded_sampling_is_reproducible_and_seeds_matter(engine):
    def run(seed):
        return [c.token_ids for c in engine.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=seed)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    # Row i samples with seed + i: the same prompt twice gives two different samples.
    a, b = engine.generate([PROMPTS[0], PROMPTS[0]], max_new_tokens=10, temperature=1.5, seed=0, ignore_eos=True)
    assert a.token_ids != b.token_ids


# ------------------------------------------------------------------- score
@torch.no_grad()
def test_score_is_the_sum_of_log_probabilities_of_a_manual_forward(engine, checkpoint):
    _, hf = checkpoint
    prompt, conts = "The cat sat", [" on the mat", " over the lazy dog", "!"]
    scores = engine.score(prompt, conts)
    for cont, s in zip(conts, scores):
        ctx = engine.encode(prompt)
        ids = engine.encode(prompt + cont)
        assert ids[:len(ctx)] == ctx
        logp = engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        expected = sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids)))
        assert s == pytest.approx(expected, abs=1e-4)
        hf_logp = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
        assert s == pytest.approx(sum(float(hf_logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids))), abs=1e-3)
    assert scores[0] != scores[1]
    # The prompt's trailing space belongs to the continuation, as in lm-evaluation-harness.
    assert engine.score("The cat sat ", ["on the mat"])[0] == pytest.approx(scores[0], abs=1e-5)


# -------------------------------------------------------------------- chat
def test_chat_renders_the_template_and_stops_at_the_end_of_turn(tok):
    eng = _scripted(tok, "Hi there<|end|>and more")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    c = eng.chat(messages, max_new_tokens=40)
    assert eng.model.prompts[-1] == tok.apply_chat_template(messages, add_generation_prompt=True)
    assert c.text == "Hi there" and c.finish_reason == "stop"
    assert c.token_ids[-1] == tok.token_id("<|end|>")


def test_chat_with_tools_parses_the_call(tok):
    eng = _scripted(tok, '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}<|/tool_call|><|end|>')
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    c = eng.chat([{"role": "user", "content": "Weather in Paris?"}], tools=tools)
    assert c.text == "" and c.finish_reason == "stop"
    assert [t["function"]["name"] for t in c.tool_calls] == ["get_weather"]
    assert c.tool_calls[0]["function"]["arguments"] == '{"city": "Paris"}'


# --------------------------------------------------------------------- CLI
def test_cli_generate_prints_the_completion(engine, checkpoint, capsys):
    path, _ = checkpoint
    argv = ["generate", str(path), "The cat", "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu"]
    assert main(argv) == 0
    expected = engine.generate("The cat", max_new_tokens=8, temperature=0)[0].text
    assert capsys.readouterr().out == expected + "\n"


def test_cli_chat_reads_piped_stdin_and_keeps_or_resets_history(engine, checkpoint, capsys, monkeypatch):
    path, _ = checkpoint
    flags = ["--max-new-tokens", "6", "--temperature", "0", "--device", "cpu"]
    first = engine.chat([{"role": "user", "content": "hello"}], max_new_tokens=6, temperature=0).text
    second = engine.chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                          {"role": "user", "content": "hello"}], max_new_tokens=6, temperature=0).text
    assert first != second

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhello\n/exit\n"))
    assert main(["chat", str(path), *flags]) == 0
    out = capsys.readouterr().out
    assert out.count("you> ") == 3 and first in out and second in out

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nhello\n"))  # ends with EOF, no /exit
    assert main(["chat", str(path), *flags]) == 0
    out = capsys.readouterr().out
    assert out.count(first) >= 2 and second not in out.replace(first, "")


@pytest.mark.parametrize("argv", [["generate", "/no/such/checkpoint", "hi"], ["chat", "/no/such/checkpoint"]])
def test_cli_bad_checkpoint_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acorn: error: ")


# ------------------------------------------- the seams its clients use (RL, agents, the server)
def test_step_outputs_add_up_to_the_completion_that_generate_returns(engine):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, n=2, logprobs=2, ignore_eos=True)
    rid = engine.add_request(PROMPTS[2], params)
    pieces, last = {0: [], 1: []}, {}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == rid and out.token_ids
            assert len(out.logprobs) == len(out.token_ids)  # one entry per new token
            assert (out.completion is not None) == out.finished  # the whole sample comes with its last step
            pieces[out.index].append(out)
            if out.finished:
                last[out.index] = out.completion
    expected = engine.generate(PROMPTS[2], params)  # also proves the finished request left nothing behind
    for j in (0, 1):
        outs = pieces[j]
        assert [o.finish_reason for o in outs] == [None] * (len(outs) - 1) + ["length"]
        assert [t for o in outs for t in o.token_ids] == last[j].token_ids == expected[j].token_ids
        assert "".join(o.text for o in outs) == last[j].text == expected[j].text
        assert [e for o in outs for e in o.logprobs] == last[j].logprobs == expected[j].logprobs
    assert last[0].token_ids != last[1].token_ids  # two samples, not one reported twice


def test_step_text_holds_back_a_stop_string_and_the_completion_is_cut(engine):
    full = engine.generate(PROMPTS[0], max_new_tokens=20, **GREEDY)[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    engine.add_request(PROMPTS[0], max_new_tokens=20, stop=[stop], **GREEDY)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert "".join(o.text for o in outs) == outs[-1].completion.text == full[:full.find(stop)]
    assert outs[-1].finish_reason == "stop" and all(stop not in o.text for o in outs)


def test_validate_prompt_refuses_what_add_request_would_and_queues_nothing(engine):
    params = SamplingParams()
    engine.validate_prompt(engine.encode("The cat"), params)  # a good one passes
    ctx = engine.model.config.max_seq_len
    for ids, p, match in [([], params, "empty"), ([1] * ctx, params, "context"),
                          ([engine.model.config.vocab_size], params, "token ids"),
                          ([1, 2], SamplingParams(logit_bias={10**6: 1.0}), "logit_bias")]:
        with pytest.raises(AcornError, match=match):
            engine.validate_prompt(ids, p)
        with pytest.raises(AcornError, match=match):
            engine.add_request(ids, p)
    assert not engine.has_unfinished()


def test_the_kv_pool_is_allocated_when_the_engine_is_made(checkpoint):
    paged = Engine.from_pretrained(checkpoint[0], device="cpu", block_size=4)
    assert paged.kv.nbytes() == paged.stats()["kv_cache_bytes"] and paged.stats()["blocks_in_use"] == 0
    plain = Engine.from_pretrained(checkpoint[0], device="cpu", paged=False)
    assert plain.kv is None and "blocks_in_use" not in plain.stats()


def test_reset_prefix_cache_forgets_every_prefix_and_changes_no_output(checkpoint):
    engine = Engine.from_pretrained(checkpoint[0], device="cpu", block_size=4)
    prompt = "Once upon a time there was a little model that learned to speak."
    first = engine.generate(prompt, max_new_tokens=8, **GREEDY)[0]
    again = engine.generate(prompt, max_new_tokens=8, **GREEDY)[0]
    assert first.cached_tokens == 0 and again.cached_tokens > 0  # the cache was in use
    engine.reset_prefix_cache()
    assert engine.stats()["blocks_cached"] == 0
    after = engine.generate(prompt, max_new_tokens=8, **GREEDY)[0]
    assert after.cached_tokens == 0 and after.token_ids == first.token_ids == again.token_ids
    rid = engine.add_request(prompt, max_new_tokens=8)
    with pytest.raises(AcornError, match="in flight"):  # its blocks would be registered again
        engine.reset_prefix_cache()
    engine.abort(rid)
    engine.reset_prefix_cache()


@pytest.mark.parametrize("paged", [True, False])
def test_a_model_in_training_stays_in_training_and_generates_without_dropout(engine, paged):
    from acorn.model.transformer import Transformer

    cfg = ModelConfig.from_dict({**engine.model.config.to_dict(), "dropout": 0.5})
    model = Transformer(cfg)
    model.load_state_dict(engine.model.state_dict())
    model.train()
    frozen = model.model.norm.eval()  # a part the trainer keeps in eval stays so
    modes = [m.training for m in model.modules()]
    trained = Engine(model, engine.tokenizer, paged=paged)
    outs = trained.generate(PROMPTS, max_new_tokens=10, **GREEDY)
    # Dropout at 0.5 would change greedy tokens; off, they are the checkpoint's own.
    assert _ids(outs) == _ids(engine.generate(PROMPTS, max_new_tokens=10, **GREEDY))
    assert "".join(trained.stream(PROMPTS[0], max_new_tokens=10, **GREEDY)) == outs[0].text
    assert trained.score("The cat sat", [" on the mat"]) == pytest.approx(engine.score("The cat sat", [" on the mat"]))
    assert [m.training for m in model.modules()] == modes and model.training and not frozen.training


def _ids(completions):
    return [c.token_ids for c in completions]
