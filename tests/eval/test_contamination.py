"""Contamination checks: lm-eval's normalisation and n-grams, exact detection
on a corpus built here (as text files and as token shards), scores on the
clean subset equal to scoring the clean documents alone, and the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from acorn.errors import AcornError
from acorn.eval import contamination

WORDS = ("acorn oak tree river stone model token cloud lamp garden bridge window paper candle harbor forest "
         "meadow pencil violin marble summer winter autumn spring ladder mirror basket pepper").split()
FILLER = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _docs() -> list[dict]:
    """Ten documents of 24-30 words (context + a one-word continuation) and
    one of 8 words, from a seeded RNG over WORDS: no 8-gram is shared by two."""
    rng = random.Random(0)
    docs = []
    for i in range(10):
        words = [rng.choice(WORDS) for _ in range(rng.randint(24, 30))]
        docs.append({"context": " ".join(words[:-1]).capitalize() + ",", "continuation": words[-1]})
    docs.append({"context": "This short one has exactly eight words", "continuation": "here"})
    return docs


def _filler(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def _words(doc: dict) -> list[str]:
    return contamination.normalize(doc["context"] + " " + doc["continuation"])


def _corpus() -> list[str]:
    """Training documents that hold: all of doc 2 (inside filler), one 13-word
    window of doc 5 in other case and punctuation, a 12-word window of doc 7
    (too short to count), 24 words of doc 8 cut in two across documents
    (n-grams do not span documents), and all of the 8-word doc 10 (too
    short to check)."""
    rng = random.Random(1)
    docs = _docs()
    w5, w7, w8 = _words(docs[5]), _words(docs[7]), _words(docs[8])
    return [
        _filler(rng, 40),
        _filler(rng, 10) + " " + docs[2]["context"] + " " + docs[2]["continuation"] + ". " + _filler(rng, 10),
        _filler(rng, 5) + " " + "! ".join(w.upper() for w in w5[3:16]) + " " + _filler(rng, 5),
        _filler(rng, 5) + " " + " ".join(w7[:12]) + " " + _filler(rng, 5),
        _filler(rng, 5) + " " + " ".join(w8[:12]),
        " ".join(w8[12:24]) + " " + _filler(rng, 5),
        docs[10]["context"] + " " + docs[10]["continuation"],
    ]


@pytest.fixture
def task_dir(tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _docs()))
    (tmp_path / "leak.yaml").write_text("task: leak\noutput_type: loglikelihood\ndata: ./docs.jsonl\n"
                                        "doc_to_text: context\ndoc_to_target: \"{{' ' + continuation}}\"\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _corpus()))
    return tmp_path


def test_words_and_ngrams_are_lm_eval_s():
    from lm_eval.decontamination.janitor import Janitor, word_ngrams

    janitor = Janitor(ngram_n=3)
    for text in ("Hello, World! It's 3.14 -- isn't it?", "ÀLSO Ünïcode; TABS\tand\nlines", "  "):
        words = contamination.normalize(text)
        assert words == janitor.normalize_string(text).split()
        assert [" ".join(g) for g in contamination.ngrams(words, 3)] == \
            list(word_ngrams(janitor.normalize_string(text), 3))


@pytest.mark.parametrize("degenerate_hash", [False, True])
def test_exactly_the_leaked_documents_are_found(task_dir, monkeypatch, degenerate_hash):
    """Documents 2 and 5 are found, with where and how much; a 12-word
    overlap and one cut across corpus documents are not; the 8-word document
    is reported as too short, not as clean. With a hash that collides on
    every n-gram sharing a last word, the word-by-word check keeps the answer."""
    if degenerate_hash:
        monkeypatch.setattr(contamination, "_BASE", np.uint64(0))
    report = contamination.check([str(task_dir / "leak.yaml")], [task_dir / "corpus.jsonl"])
    r = report["tasks"]["leak"]
    assert r["contaminated_ids"] == [2, 5] and r["too_short_ids"] == [10]
    assert (r["documents"], r["checked"], r["fraction"]) == (11, 10, 2 / 11)
    hit2, hit5 = r["overlaps"]
    n2 = len(_words(_docs()[2])) - 12
    assert (hit2["matched"], hit2["ngrams"]) == (n2, n2) and hit2["where"].endswith("corpus.jsonl #1")
    assert hit5["matched"] == 1 and hit5["example"] == " ".join(_words(_docs()[5])[3:16])
    assert hit5["where"].endswith("corpus.jsonl #2")
    # At n = 8 the short document, the 12-word window and doc 8's first part count too.
    r8 = contamination.check([str(task_dir / "leak.yaml")], [task_dir / "corpus.jsonl"], n=8)["tasks"]["leak"]
    assert r8["contaminated_ids"] == [2, 5, 7, 8, 10] and r8["too_short_ids"] == []


def test_token_shards_are_decoded_and_give_the_same_answer(task_dir, tok, tmp_path):
    from acorn.data.prepare import prepare

    tok.save(tmp_path / "tok")
    prepare([task_dir / "corpus.jsonl"], tmp_path / "tok", tmp_path / "shards", val_fraction=0.0, quiet=True,
            workers=0)
    report = contamination.check([str(task_dir / "leak.yaml")], [tmp_path / "shards"])
    r = report["tasks"]["leak"]
    assert r["contaminated_ids"] == [2, 5] and r["overlaps"][1]["where"] == f"{tmp_path / 'shards'} train #2"
    other = tmp_path / "other-tok"
    from acorn.tokenizer.bpe import Tokenizer

    Tokenizer.train(["something else entirely " * 50], 280).save(other)
    with pytest.raises(AcornError, match="is not the one its shards were made with"):
        contamination.check([str(task_dir / "leak.yaml")], [tmp_path / "shards"], tokenizer=other)


def test_scores_on_the_clean_subset_equal_scoring_the_clean_documents_alone(task_dir, checkpoint, tmp_path):
    from acorn.eval.harness import evaluate

    out = evaluate(checkpoint[0], [str(task_dir / "leak.yaml")], add_bos=False, progress=False,
                   decontaminate=[task_dir / "corpus.jsonl"])
    report = out["contamination"]["tasks"]["leak"]
    assert [s["doc_id"] for s in out["samples"]["leak"] if s["contaminated"]] == [2, 5]
    clean_docs = [d for i, d in enumerate(_docs()) if i not in (2, 5)]
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(d) + "\n" for d in clean_docs))
    (tmp_path / "clean.yaml").write_text((task_dir / "leak.yaml").read_text().replace("./docs.jsonl",
                                                                                       str(tmp_path / "clean.jsonl")))
    alone = evaluate(checkpoint[0], [str(tmp_path / "clean.yaml")], add_bos=False, progress=False)
    clean, dirty = report["scores"]["clean"], report["scores"]["contaminated"]
    assert clean["n"] == 9 and dirty["n"] == 2
    assert clean["perplexity"] == pytest.approx(alone["results"]["leak"]["perplexity"], rel=1e-5)
    assert clean["acc"] == alone["results"]["leak"]["acc"]
    assert report["scores"]["all"]["perplexity"] == pytest.approx(out["results"]["leak"]["perplexity"])


def _acorn(*args):
    return subprocess.run([sys.executable, "-m", "acorn", *map(str, args)], capture_output=True, text=True)


def test_cli_checks_splits_a_run_and_refuses_bad_input_in_one_line(task_dir, checkpoint, tmp_path):
    task = task_dir / "leak.yaml"
    r = _acorn("eval", checkpoint[0], "--tasks", task, "--add-bos", "false", "--decontaminate",
               task_dir / "corpus.jsonl", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "| leak | 11 | 10 | 2 | 0.1818 |" in r.stdout
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["contamination"]["tasks"]["leak"]["contaminated_ids"] == [2, 5]
    assert "| leak | perplexity |" in (tmp_path / "run" / "results.md").read_text()
    r = _acorn("eval", "contamination", "--tasks", task, "--corpus", task_dir / "corpus.jsonl", "--results",
               tmp_path / "run", "--out", tmp_path / "check")
    assert r.returncode == 0, r.stderr
    assert "leak: contaminated documents 2, 5" in r.stderr
    check = json.loads((tmp_path / "check" / "contamination.json").read_text())
    assert check["tasks"]["leak"]["scores"] == saved["contamination"]["tasks"]["leak"]["scores"]
    for args, message in [
        (["contamination", "--tasks", task], "give the training corpus: --corpus"),
        (["contamination", "--tasks", task, "--corpus", tmp_path / "nope.jsonl"], "nope.jsonl: no such file"),
        (["contamination", "--tasks", task, "--corpus", task_dir / "corpus.jsonl", "--ngram", 0],
         "n-gram size must be at least 1"),
        (["contamination", "--tasks", task, "--corpus", task_dir / "corpus.jsonl", "--limit", 3, "--results",
          tmp_path / "run"], "the run scored 11 documents of leak, the check 3"),
        ([checkpoint[0], "--tasks", task, "--corpus", task_dir / "corpus.jsonl"], "belong to `acorn eval contamination`"),
    ]:
        r = _acorn("eval", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
