"""Prompting strategies: answer extraction, majority vote, tree search on a toy
problem with a known answer, few-shot selection, and the strategies over the
engine (prompts through the one chat template, n samples in one request)."""

from __future__ import annotations

import pytest
import torch

from acorn.errors import AcornError
from acorn.infer import Engine
from acorn.prompting import (Example, Thought, chain_of_thought, choose_examples, extract_answer, few_shot,
                             majority_vote, self_consistency, tree_of_thoughts, tree_search, zero_shot)
from acorn.prompting.examples import engine_embedder
from acorn.prompting.strategies import COT_TRIGGER, messages, text_prompt


# ------------------------------------------------------------------ answers
@pytest.mark.parametrize("text,kw,expected", [
    ("Paris.", {}, "paris"),
    ("\n  Paris\nmore text", {}, "paris"),
    ("12 + 7 = 19. The answer is 19.\nAnswer: 21", {}, "21"),  # the last marked answer wins
    ("First 3 + 4 = 7, then 7 * 2 = 14. The answer is 14 apples.", {"numeric": True}, "14"),
    ("I think it is 1,234", {"numeric": True}, "1234"),
    ("no number here", {"numeric": True}, None),
    ("Step one: 3 + 4 = 7", {"marked": True}, None),  # unfinished reasoning
    ("", {}, None),
])
def test_extract_answer(text, kw, expected):
    assert extract_answer(text, **kw) == expected


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_reached():
    assert majority_vote(["7", None, "8", "7", "8", "9"]) == ("7", {"7": 2, "8": 2, "9": 1})
    assert majority_vote(["8", "7", "7", "8"])[0] == "8"
    assert majority_vote([None, "5", "6", "6"])[0] == "6"
    assert majority_vote([None, None]) == (None, {})


# ------------------------------------------------------------------ tree search
def test_tree_search_finds_the_word_a_prefix_scorer_leads_to():
    target, alphabet = "acorn", "acnor"
    expand = lambda frontier: [list(alphabet) for _ in frontier]
    score = lambda ts: [sum(a == b for a, b in zip("".join(t.steps), target)) for t in ts]
    best = tree_search(expand, score, lambda t: len(t.steps) == len(target), beam=2, depth=10)
    assert "".join(best.steps) == target and best.done and best.score == len(target)


def test_a_wider_beam_finds_what_greedy_search_misses():
    # The first step that looks best ("a") leads nowhere: only keeping "b" on the beam finds ("b", "a").
    values = {("a",): 1.0, ("b",): 0.5, ("a", "a"): 0.0, ("a", "b"): 0.1, ("b", "a"): 2.0, ("b", "b"): 0.2}
    expand = lambda frontier: [["a", "b"] for _ in frontier]
    score = lambda ts: [values[t.steps] for t in ts]
    done = lambda t: len(t.steps) == 2
    assert tree_search(expand, score, done, beam=1, depth=2).steps == ("a", "b")
    assert tree_search(expand, score, done, beam=2, depth=2).steps == ("b", "a")
    with pytest.raises(AcornError, match="beam >= 1"):
        tree_search(expand, score, done, beam=0)


def test_tree_search_keeps_finished_solutions_and_stops_when_all_are_finished():
    calls = []

    def expand(frontier):
        calls.append(len(frontier))
        return [["The answer is 4.", "step"] for _ in frontier]

    best = tree_search(expand, lambda ts: [len(t.steps) * (2 if "answer" in t.steps[-1] else 1) for t in ts],
                       lambda t: "answer" in t.steps[-1], beam=1, depth=5)
    assert best == Thought(("The answer is 4.",), 2, True) and calls == [1]


# ------------------------------------------------------------------ few-shot selection
def _letters(texts):
    """A stub embedder: letter counts, normalised (similar spelling = similar vector)."""
    rows = torch.zeros(len(texts), 26)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if ch.isalpha():
                rows[i, ord(ch) - 97] += 1
    return torch.nn.functional.normalize(rows, dim=-1)


POOL = [Example("aaaa", "1"), Example("bbbb", "2"), Example("aaab", "3"), Example("cccc", "4"), Example("aabb", "5")]


def test_similar_examples_are_the_nearest_most_similar_last():
    chosen = choose_examples(POOL, "aaaa", 2, by="similar", embedder=_letters)
    assert [e.input for e in chosen] == ["aabb", "aaab"]  # "aaaa" itself is never a demonstration
    assert [e.input for e in choose_examples(POOL, "cccd", 1, by="similar", embedder=_letters)] == ["cccc"]


def test_random_examples_are_seeded_per_query_and_never_the_query():
    a = choose_examples(POOL, "aaaa", 3, seed=1)
    assert a == choose_examples(POOL, "aaaa", 3, seed=1) and all(e.input != "aaaa" for e in a)
    draws = {tuple(e.input for e in choose_examples(POOL, "zz", 2, seed=s)) for s in range(10)}
    assert len(draws) > 1
    with pytest.raises(AcornError, match="pool has 4"):
        choose_examples(POOL, "aaaa", 5)
    with pytest.raises(AcornError, match="embedder"):
        choose_examples(POOL, "aaaa", 1, by="similar")


# ------------------------------------------------------------------ over the engine
@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_pretrained(checkpoint[0], device="cpu")


def test_prompts_go_through_the_one_chat_template_with_system_and_roles(engine):
    shots = [Example("The cat sat", "mat", "It sat on the mat.")]
    msgs = messages("The dog", examples=shots, system="Be brief.", cot=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == "It sat on the mat. The answer is mat." and msgs[3]["content"] == "The dog"
    assert messages("Q?", cot=True)[-1]["content"] == f"Q?\n{COT_TRIGGER}"  # zero-shot CoT trigger
    a = zero_shot(engine, "The dog", system="Be brief.", max_new_tokens=4)
    assert a.prompt_tokens == len(engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The dog"}],
        add_generation_prompt=True))
    assert text_prompt("The dog", examples=shots) == "Q: The cat sat\nA: mat\n\nQ: The dog\nA:"


def test_zero_shot_answer_is_the_engines_greedy_completion(engine):
    prompt = engine.chat_prompt([{"role": "user", "content": "The cat"}])
    (c,) = engine.generate([prompt], temperature=0.0, max_new_tokens=6)
    a = zero_shot(engine, ["The cat"], max_new_tokens=6)[0]
    assert a.text == c.text and a.answer == extract_answer(c.text)


def test_self_consistency_votes_over_n_samples_of_one_request(engine):
    a = self_consistency(engine, "The cat", n=6, cot=False, temperature=1.0, max_new_tokens=3)
    prompt = engine.chat_prompt([{"role": "user", "content": "The cat"}])
    samples = [c.text for c in engine.generate([prompt], n=6, temperature=1.0, seed=0, max_new_tokens=3)]
    assert a.samples == samples and sum(a.votes.values()) == sum(extract_answer(s) is not None for s in samples)
    assert a.answer == majority_vote(extract_answer(s) for s in samples)[0]
    with pytest.raises(AcornError, match="temperature must be > 0"):
        self_consistency(engine, "The cat", temperature=0)


def test_few_shot_and_cot_skip_a_prompt_past_the_context(engine):
    long = [Example("The quick brown fox jumps over the lazy dog " * 4, "x")] * 4
    out = few_shot(engine, ["The cat", "The dog"], long, max_new_tokens=4)
    assert [a.skipped for a in out] == [True, True] and out[0].answer is None
    assert not chain_of_thought(engine, "The cat", max_new_tokens=8).skipped


def test_tree_of_thoughts_over_the_engine_returns_one_of_its_sampled_paths(engine):
    a = tree_of_thoughts(engine, "The cat", branches=2, beam=2, depth=2, max_step_tokens=5)
    assert not a.skipped and 1 <= len(a.text.split("\n")) <= 2
    judged = tree_of_thoughts(engine, ["The cat"], value="judge", branches=2, beam=1, depth=1, max_step_tokens=4)
    assert len(judged) == 1 and judged[0].text


def test_engine_embedder_equals_embed_and_caches(engine):
    from acorn.rag.embeddings import embed

    e = engine_embedder(engine)
    got = e(["The cat sat", "A small acorn", "The cat sat"])
    want = embed(engine.model, [engine.encode("The cat sat"), engine.encode("A small acorn")])
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    assert torch.equal(got[0], got[2])


def test_cli_prompt_self_consistency_prints_votes_and_similar_examples(checkpoint, tmp_path, capsys):
    import json

    from acorn.cli import main

    pool = tmp_path / "shots.jsonl"
    pool.write_text("".join(json.dumps({"input": q, "output": "x"}) + "\n" for q in ["The cat", "A dog", "An oak"]))
    argv = ["prompt", str(checkpoint[0]), "The cat sat", "--strategy", "self-consistency", "-n", "3", "--no-cot",
            "--examples", str(pool), "--k", "2", "--select", "similar", "--max-new-tokens", "3", "--device", "cpu",
            "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["samples"]) == 3 and len(out["examples"]) == 2 and sum(out["votes"].values()) <= 3


def test_cli_prompt_few_shot_without_examples_is_one_line_exit_2(checkpoint, capsys):
    from acorn.cli import main

    assert main(["prompt", str(checkpoint[0]), "Hi", "--strategy", "few-shot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--examples" in err
