"""acorn.LLM (vLLM's idiom) and `acorn generate` with several samples and logprobs."""

from dataclasses import replace

import pytest

import acorn
from acorn.cli import main
from acorn.infer import Engine, RequestOutput

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(checkpoint):
    return acorn.LLM(str(checkpoint[0]), device="cpu")


def test_generate_returns_one_request_output_per_prompt_with_n_outputs(llm, checkpoint):
    prompts = ["The cat sat on", "Once"]
    outs = llm.generate(prompts, acorn.SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=2))
    assert [type(o) for o in outs] == [RequestOutput, RequestOutput]
    assert [o.prompt for o in outs] == prompts
    assert [len(o.outputs) for o in outs] == [3, 3] and [c.index for c in outs[0].outputs] == [0, 1, 2]
    assert all(len(c.token_ids) <= 6 for o in outs for c in o.outputs)
    engine = Engine.from_pretrained(checkpoint[0], device="cpu")
    assert outs[1].prompt_token_ids == engine.encode("Once")
    # Greedy through the LLM equals the engine's own greedy.
    (out,) = llm.generate("The cat sat on", max_tokens=8, **GREEDY)
    assert out.outputs[0].token_ids == engine.generate("The cat sat on", max_new_tokens=8, **GREEDY)[0].token_ids


def test_generate_takes_one_sampling_params_per_prompt(llm):
    prompts = ["The cat sat on", "Once", "A small acorn"]
    params = [acorn.SamplingParams(max_tokens=4, **GREEDY),
              acorn.SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=7, ignore_eos=True),
              acorn.SamplingParams(max_tokens=5, num_beams=3, n=2, ignore_eos=True)]
    outs = llm.generate(prompts, params)
    assert [len(o.outputs) for o in outs] == [1, 3, 2] and [o.prompt for o in outs] == prompts
    for out, prompt, p in zip(outs[::2], prompts[::2], params[::2]):
        assert [c.token_ids for c in out.outputs] == [c.token_ids for c in llm.generate(prompt, p)[0].outputs]
    assert len(outs[0].outputs[0].token_ids) == 4 and outs[2].outputs[0].score is not None
    # Sample j of a prompt draws seed + j + the samples of the prompts before it (here one).
    alone = llm.generate(prompts[1], replace(params[1], seed=8))[0]
    assert [c.token_ids for c in outs[1].outputs] == [c.token_ids for c in alone.outputs]
    with pytest.raises(acorn.AcornError, match="2 SamplingParams for 3 prompts"):
        llm.generate(prompts, params[:2])


def test_chat_takes_one_conversation_or_several(llm):
    conv = [{"role": "user", "content": "hello"}]
    one = llm.chat(conv, max_tokens=5, temperature=0)
    two = llm.chat([conv, conv + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]],
                   max_tokens=5, temperature=0)
    assert len(one) == 1 and len(two) == 2
    assert two[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    assert two[1].prompt_token_ids != two[0].prompt_token_ids


def test_stream_concatenates_to_the_generated_text(llm):
    text = "".join(llm.stream("The quick brown fox", max_tokens=12, **GREEDY))
    assert text == llm.generate("The quick brown fox", max_tokens=12, **GREEDY)[0].outputs[0].text


def test_cli_generate_with_n_prints_every_sample(checkpoint, capsys):
    path = str(checkpoint[0])
    assert main(["generate", path, "--prompt", "The cat", "-n", "3", "--seed", "4", "--max-new-tokens", "5",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert [line.startswith("--- sample ") for line in out.splitlines()].count(True) == 3


def test_cli_generate_logprobs_prints_one_line_per_token(checkpoint, capsys):
    path = str(checkpoint[0])
    assert main(["generate", path, "The cat", "--logprobs", "2", "--max-new-tokens", "4", "--temperature", "0",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 1 + 1  # the text, then at least one token line (a stop token may end it early)
    assert all(len(line.split()) >= 2 for line in lines[1:])


def test_cli_generate_without_a_prompt_is_one_line_exit_2(checkpoint, capsys):
    assert main(["generate", str(checkpoint[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt" in err


def test_beam_search_runs_through_generate_and_the_cli(checkpoint, capsys):
    from acorn.infer.beam import beam_search

    engine = Engine.from_pretrained(checkpoint[0], device="cpu")
    outs = engine.generate("The cat sat on", max_new_tokens=8, num_beams=3, n=2, ignore_eos=True)
    beams = beam_search(engine.model, engine.encode("The cat sat on"), num_beams=3, max_new_tokens=8,
                        vocab_size=engine.tokenizer.vocab_size, num_return=2)
    assert [c.token_ids for c in outs] == [b.token_ids for b in beams]
    assert [c.score for c in outs] == [b.score for b in beams] and outs[0].score >= outs[1].score
    assert main(["generate", str(checkpoint[0]), "--prompt", "The cat sat on", "--num-beams", "3", "-n", "2",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count(", score ") == 2


@pytest.mark.parametrize("extra", [dict(logit_bias={1: 5.0}), dict(repetition_penalty=1.3),
                                   dict(logits_processors=[lambda p, o, x: x])])
def test_beam_search_refuses_logits_processors_it_would_ignore(extra):
    with pytest.raises(acorn.AcornError, match="beam search"):
        acorn.SamplingParams(num_beams=2, **extra)
