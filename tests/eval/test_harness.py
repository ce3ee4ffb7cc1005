"""The evaluation harness against lm-evaluation-harness (its HFLM on the same
tiny random Llama, its own task machinery reading the same documents from
local JSON lines): per-document log-likelihoods within 1e-4 and identical
metrics, with the same few-shot examples; plus task YAML loading, bad input,
the CLI and the results files.

The documents are a handful written here in the fields of the files in
../shared/data/eval, so nothing is fetched and the data directory is not needed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acorn.errors import AcornError

lm_eval = pytest.importorskip("lm_eval")

ARC = [
    {"query": "Question: Which gas do plants take in from the air?", "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1},
    {"query": "Question: What is the boiling point of water at sea level?", "choices": ["50 C", "100 C", "150 C", "0 C"], "gold": 1},
    {"query": "Question: Which planet is closest to the Sun?", "choices": ["Venus", "Earth", "Mercury", "Mars"], "gold": 2},
    {"query": "Question: A cat sat on the mat. What sat on the mat?", "choices": ["a dog", "a cat", "a fox", "an oak tree"], "gold": 1},
    {"query": "Question: What grows into a tall oak tree?", "choices": ["a small acorn", "a rock", "a little model that learned to speak", "water"], "gold": 0},
    {"query": "Question: What does the quick brown fox jump over?", "choices": ["the moon", "the lazy dog", "a fence", "the mat"], "gold": 1},
]
PIQA = [
    {"query": "Question: How do I dry a wet towel?\n", "choices": ["Hang it in the sun.", "Put it in a bucket of water."], "gold": 0},
    {"query": "Question: To keep bread fresh,\n", "choices": ["store it in a sealed bag.", "leave it open on the table for a week."], "gold": 0},
    {"query": "Question: How can I open a jar with a tight lid?\n", "choices": ["Run the lid under hot water, then twist.", "Freeze the jar overnight."], "gold": 0},
    {"query": "Question: To cut paper neatly,\n", "choices": ["tear it with wet hands.", "use sharp scissors."], "gold": 1},
    {"query": "Question: How do I water a plant?\n", "choices": ["Pour water on the soil.", "Pour sand on the leaves."], "gold": 0},
]
LAMBADA = [
    {"context": "The quick brown fox jumps over the lazy", "continuation": "dog"},
    {"context": "Once upon a time there was a little model that learned to", "continuation": "speak"},
    {"context": "A small acorn grows into a tall oak", "continuation": "tree"},
    {"context": "The cat sat on the", "continuation": "mat"},
    {"context": "\"I can make it there on my own,\" she said, and then she looked at", "continuation": "Shane"},
]
GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "2 * 12 = <<2*12=24>>24 eggs.\n#### 24"},
    {"question": "Sara reads 10 pages a day. How many pages in 5 days?", "answer": "10 * 5 = <<10*5=50>>50 pages.\n#### 50"},
    {"question": "A shirt costs $1,200 cents. What is that in cents?", "answer": "It is 1,200 cents.\n#### 1,200"},
]

# lm-eval's own task YAMLs for the same files: its standard tasks read the Hub,
# so these point its `json` loader at the local copies, with the prompts of
# lm_eval/tasks/{arc,piqa,lambada,gsm8k}/*.yaml expressed in the local fields.
LM_EVAL_TASKS = {
    "arc_easy": dict(output_type="multiple_choice", doc_to_text="{{query}}\nAnswer:", doc_to_target="gold",
                     doc_to_choice="choices", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
    "piqa": dict(output_type="multiple_choice", doc_to_text="{{query}}Answer:", doc_to_target="gold",
                 doc_to_choice="choices", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}]),
    "lambada_openai": dict(output_type="loglikelihood", doc_to_text="context",
                           doc_to_target="{{' ' + continuation}}",
                           metric_list=[{"metric": "perplexity", "aggregation": "perplexity"}, {"metric": "acc"}]),
    "gsm8k": dict(output_type="generate_until", doc_to_text="Question: {{question}}\nAnswer:", doc_to_target="answer",
                  generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
                                     "temperature": 0.0, "max_gen_toks": 256},
                  metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                "ignore_case": True, "ignore_punctuation": False,
                                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
                  filter_list=[{"name": "strict-match", "filter": [
                      {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
                      {"name": "flexible-extract", "filter": [
                          {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                          {"function": "take_first"}]}]),
}
DATA = {"arc_easy": ARC, "piqa": PIQA, "lambada_openai": LAMBADA, "gsm8k": GSM8K}
FILES = {"arc_easy": "arc_easy.jsonl", "piqa": "piqa.jsonl", "lambada_openai": "lambada_openai.jsonl",
         "gsm8k": "gsm8k_test.jsonl"}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """The documents under the built-in tasks' file names, plus the same files
    with ARC's documents under arc_challenge's name."""
    d = tmp_path_factory.mktemp("evaldata")
    for task, docs in {**DATA, "arc_challenge": ARC}.items():
        name = FILES.get(task, f"{task}.jsonl")
        (d / name).write_text("".join(json.dumps(x) + "\n" for x in docs))
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    """A tiny random Llama with a context of 1024 (room for few-shot prompts)
    and the suite's tokenizer, saved as a Hugging Face checkpoint."""
    from tests.conftest import random_llama

    hf = random_llama(tok.vocab_size, context=1024, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    path = tmp_path_factory.mktemp("evalckpt")
    hf.save_pretrained(path)
    tok.save(path)
    return path, hf


def _lm_eval(model_dir, eval_data, tmp_path, task: str, *, num_fewshot: int, limit: int, add_bos: bool,
             max_length: int | None = None):
    """lm-eval's HFLM on the same model: {doc_id: (log-likelihoods or text, filtered)}, its metrics."""
    import transformers
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    path, hf = model_dir
    cfg = {"task": f"ref_{task}", "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(eval_data / FILES[task])}},
           "test_split": "test", "fewshot_split": "test", **LM_EVAL_TASKS[task]}
    tdir = tmp_path / "lm_eval_tasks"
    tdir.mkdir(exist_ok=True)
    (tdir / f"ref_{task}.yaml").write_text(yaml.safe_dump(cfg))
    hf_tok = transformers.AutoTokenizer.from_pretrained(path, add_bos_token=add_bos)
    lm = HFLM(pretrained=hf, tokenizer=hf_tok, batch_size=4, add_bos_token=add_bos, max_length=max_length)
    out = simple_evaluate(model=lm, tasks=[f"ref_{task}"], num_fewshot=num_fewshot, limit=limit,
                          task_manager=TaskManager(include_path=str(tdir), include_defaults=False),
                          log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=1234)
    return out["results"][f"ref_{task}"], out["samples"][f"ref_{task}"]


@pytest.mark.parametrize("task,shots,add_bos", [
    ("arc_easy", 2, False), ("piqa", 1, True), ("lambada_openai", 2, False), ("gsm8k", 2, True)])
def test_matches_lm_eval_on_the_same_model_and_documents(model_dir, eval_data, tmp_path, task, shots, add_bos):
    from acorn.eval.harness import evaluate

    limit = 4
    ref, ref_samples = _lm_eval(model_dir, eval_data, tmp_path, task, num_fewshot=shots, limit=limit,
                                add_bos=add_bos)
    ours = evaluate(model_dir[0], [task], num_fewshot=shots, limit=limit, data_dir=eval_data, add_bos=add_bos,
                    progress=False, batch_tokens=300)
    res, samples = ours["results"][task], ours["samples"][task]
    ref_by_doc: dict[int, dict] = {}  # generate_until logs one sample per filter
    for r in ref_samples:
        ref_by_doc.setdefault(r["doc_id"], {})[r["filter"]] = r
    assert len(samples) == len(ref_by_doc) == limit
    for mine in samples:
        theirs = ref_by_doc[mine["doc_id"]]
        first = next(iter(theirs.values()))
        # The same prompt: the same few-shot examples, delimiters and order.
        assert mine["prompt"] == first["arguments"][0][0]
        if task == "gsm8k":
            assert mine["output"] == first["resps"][0][0]
            for name in ("strict-match", "flexible-extract"):
                assert mine["extracted"][name] == theirs[name]["filtered_resps"][0]
        else:
            lls = [r[0][0] for r in first["resps"]]
            assert mine["output"] == pytest.approx(lls if task != "lambada_openai" else lls[0], abs=1e-4)
    if task == "gsm8k":
        for name in ("strict-match", "flexible-extract"):
            assert res[f"exact_match,{name}"] == ref[f"exact_match,{name}"]
    elif task == "lambada_openai":
        assert res["acc"] == ref["acc,none"]
        assert res["perplexity"] == pytest.approx(ref["perplexity,none"], rel=1e-4)
    else:
        assert res["acc"] == ref["acc,none"] and res["acc_norm"] == ref["acc_norm,none"]
