"""Model collapse (what each mode trains on, the tail, distinct-n, the experiment end to end)
and synthetic Q-A (the filters, the contamination check and decontamination)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from acorn.cli import main
from acorn.synth.collapse import distinct_n, tail_ids, training_docs
from acorn.synth.qa import filter_pairs, synth_qa


# ------------------------------------------------------------------ collapse
def test_what_each_mode_trains_on():
    real = [[1, 2]] * 10
    samples = [[[3]] * 10, [[4]] * 10]
    rng = random.Random(0)
    assert training_docs("replace", 2, real, samples, 0.5, rng) == [[4]] * 10
    assert training_docs("accumulate", 2, real, samples, 0.5, rng) == real + [[3]] * 10 + [[4]] * 10
    mixed = training_docs("mix", 1, real, samples, 0.2, rng)  # 10 synthetic + 2.5 -> 2 real: a fifth real
    assert mixed.count([3]) == 10 and mixed.count([1, 2]) == round(10 * 0.2 / 0.8)


def test_tail_is_the_rarest_ids_up_to_the_share():
    docs = [[1] * 90 + [2] * 6 + [3] * 3 + [4]]
    assert tail_ids(docs, 0.05) == {4, 3}  # 4 tokens of 100 <= 5%; adding 2 would make 10%
    assert tail_ids(docs, 0.001) == {4}  # always at least the rarest one


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1]], 2) == 0.0


def test_documents_of_a_chat_mixed_world_are_read_as_text(tmp_path):
    from acorn.synth.collapse import read_documents

    qa = {"messages": [{"role": "user", "content": "Where was Mivi born?"}, {"role": "assistant", "content": "Polath"}],
          "kind": "qa"}
    rows = [{"text": f"Document {i}."} for i in range(10)] + [qa]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_documents(str(tmp_path / "p.jsonl"))[-1] == "Where was Mivi born?\nPolath"


def test_collapse_end_to_end(tiny_world, world_tokenizer, tmp_path, capsys):
    out = tmp_path / "c"
    args = ["synth", "collapse", "--data", str(tiny_world / "pretrain.jsonl"), "--tokenizer", str(world_tokenizer),
            "--out", str(out), "--mode", "accumulate", "--generations", "2", "--max_docs", "40",
            "--model.vocab_size", "400", "--model.n_layer", "1", "--model.d_model", "16", "--model.n_head", "2",
            "--model.n_kv_head", "1", "--model.max_seq_len", "32", "--train.seq_len", "32", "--train.micro_batch",
            "4", "--train.batch_tokens", "128", "--train.max_steps", "2", "--sample_tokens", "8"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]
    # accumulate: each generation trains on the real 36 documents and every sample so far
    assert [r["train_docs"] for r in rows] == [36, 72, 108]
    assert all(r["val_loss"] > 0 and r["tail_loss"] > 0 and 0 < r["distinct_2"] <= 1 for r in rows)
    assert (out / "collapse.png").read_bytes()[:4] == b"\x89PNG" and (out / "gen_2" / "model").is_dir()
    capsys.readouterr()
    assert main([*args[:-1], "9"]) == 2  # another run into the same directory
    assert "holds another run's files" in capsys.readouterr().err


# ------------------------------------------------------------------ synthetic Q-A
def test_filters_drop_unanswered_duplicate_and_unverifiable_pairs():
    doc = "Ana Bell was born in Velmora in 1950."
    rows = [{"question": "Where was Ana Bell born?", "answer": "Velmora", "document": doc},
            {"question": "where was ana bell born", "answer": "Velmora", "document": doc},  # duplicate
            {"question": "When was Ana Bell born?", "answer": "I don't know.", "document": doc},
            {"question": "Who employs Ana Bell?", "answer": "Quil Labs", "document": doc},  # not in the document
            {"question": "In which year was Ana Bell born?", "answer": "1950", "document": doc},
            {"question": "Born?", "answer": "195", "document": doc},  # a part of a word does not count
            {"question": "Who?", "answer": "A", "document": doc + " A city."}]  # one letter verifies nothing
    kept, counts = filter_pairs(rows)
    assert [r["answer"] for r in kept] == ["Velmora", "1950"]
    assert counts == {"candidates": 7, "no_answer": 1, "duplicate": 1, "unverifiable": 3, "kept": 2}


def test_world_qa_is_contaminated_by_the_knowledge_base_and_decontaminated(tiny_world, tmp_path):
    s = synth_qa(tiny_world, tmp_path / "a", per_doc=5)
    f = s["filters"]
    assert f["kept"] == f["candidates"] == f["correct"] > 0
    # The knowledge base holds the unknown_eval people, whose questions world_unknown_qa asks.
    assert s["contamination"]["tasks"]["world_unknown_qa"]["contaminated"] > 0 and f["contaminated"] > 0
    assert s["contamination"]["tasks"]["world_fact_qa"]["contaminated"] == 0  # known people are not in the KB
    clean = synth_qa(tiny_world, tmp_path / "b", per_doc=5, decontaminate=True)
    assert clean["written"] == f["kept"] - f["contaminated"]
    rows = [json.loads(line) for line in (tmp_path / "b" / "qa.jsonl").read_text().splitlines()]
    from acorn.synth.qa import contamination

    pairs = [{"question": r["messages"][0]["content"], "answer": r["messages"][1]["content"]} for r in rows]
    assert contamination(pairs, ["world_unknown_qa"], tiny_world)[1] == set()


def test_model_qa_counts_add_up(chat_model, tiny_world, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["synth", "qa", "--world", str(tiny_world), "--out", str(out), "--model", str(chat_model),
                 "--limit", "2", "--per-doc", "2"]) == 0
    f = json.loads((out / "summary.json").read_text())["filters"]
    assert f["candidates"] == 4 == f["no_answer"] + f["duplicate"] + f["unverifiable"] + f["kept"]
    capsys.readouterr()
    bad = tmp_path / "docs.jsonl"
    bad.write_text(json.dumps({"text": "A person nobody knows."}) + "\n")
    assert main(["synth", "qa", "--world", str(tiny_world), "--out", str(tmp_path / "n"), "--docs", str(bad)]) == 2
    assert "not in" in capsys.readouterr().err
