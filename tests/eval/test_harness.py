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


# ------------------------------------------------------------------ tasks as data
def test_a_user_task_is_a_yaml_file_with_csv_data_and_rolling_perplexity(model_dir, tmp_path):
    """A new task without Python: a CSV of texts scored by rolling
    log-likelihood; its numbers are the model's own (one window per text
    here), and a text longer than the context is split into windows that
    cover every token once."""
    from acorn.eval.harness import evaluate

    (tmp_path / "texts.csv").write_text("text\nThe cat sat on the mat.\nA small acorn grows into a tall oak tree.\n")
    (tmp_path / "mine.yaml").write_text(
        "task: my_ppl\noutput_type: loglikelihood_rolling\ndata: ./texts.csv\ndoc_to_target: text\n")
    out = evaluate(model_dir[0], [str(tmp_path / "mine.yaml")], data_dir=tmp_path / "nowhere", add_bos=False,
                   progress=False)
    res, samples = out["results"]["my_ppl"], out["samples"]["my_ppl"]
    from acorn.tokenizer.bpe import Tokenizer

    tok = Tokenizer.from_pretrained(model_dir[0])
    hf = model_dir[1]
    total_ll, total_bytes = 0.0, 0
    for s in samples:
        ids = [tok.bos_id] + tok.encode(s["target"])  # the BOS prefix conditions the first token
        with torch.no_grad():
            lp = hf(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        ll = float(lp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        assert s["output"] == pytest.approx(ll, abs=1e-4)
        total_ll, total_bytes = total_ll + ll, total_bytes + len(s["target"].encode())
    assert res["bits_per_byte"] == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-5)
    assert res["byte_perplexity"] == pytest.approx(math.exp(-total_ll / total_bytes), rel=1e-5)


def test_rolling_windows_cover_every_token_once_as_lm_eval_does(model_dir):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from acorn.eval.harness import Requests
    from acorn.infer.engine import Engine

    engine = Engine.from_pretrained(model_dir[0])
    req = Requests(engine, add_bos=False)
    req.max_len = 7
    text = "The quick brown fox jumps over the lazy dog. A small acorn grows into a tall oak tree."
    ids = req.encode(text)
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, req.prefix, 7, 1)]
    assert req.rolling_windows(text) == [(list(a), list(b)) for a, b in theirs]
    assert sum(len(b) for _, b in req.rolling_windows(text)) == len(ids)


def test_a_long_document_is_cut_from_the_left_and_counted(tok, tmp_path, eval_data):
    """With a context of 48, a 3-shot ARC prompt does not fit: it is cut from
    the left like lm-eval's (context + continuation)[-(max_length + 1):], the
    scores equal lm-eval's, and results count the cut documents."""
    from tests.conftest import random_llama

    hf = random_llama(tok.vocab_size, context=48)
    hf.save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    from acorn.eval.harness import evaluate

    ours = evaluate(tmp_path / "m", ["arc_easy"], num_fewshot=3, limit=3, data_dir=eval_data, add_bos=False,
                    progress=False)
    ref, ref_samples = _lm_eval((tmp_path / "m", hf), eval_data, tmp_path, "arc_easy", num_fewshot=3, limit=3,
                                add_bos=False, max_length=48)
    assert ours["results"]["arc_easy"]["truncated"] == 3
    for mine, theirs in zip(ours["samples"]["arc_easy"], sorted(ref_samples, key=lambda s: s["doc_id"])):
        assert mine["output"] == pytest.approx([r[0][0] for r in theirs["resps"]], abs=1e-4)


@pytest.mark.parametrize("text,message", [
    ("task: t\noutput_type: multiple_choice\ndata: x.jsonl\ndoc_to_choice: choices\nfewshot_seeed: 3\n",
     "bad.yaml:5: fewshot_seeed: unknown key"),
    ("task: t\noutput_type: guess\ndata: x.jsonl\n", "bad.yaml:2: output_type: 'guess' is not one of"),
    ("task: t\noutput_type: loglikelihood\ndata: x.jsonl\nnum_fewshot: five\n", "bad.yaml:4: num_fewshot: expected int"),
    ("task: t\noutput_type: loglikelihood\ndata: [x.jsonl\n", "bad.yaml:line 4: not valid YAML"),
    ("task: t\noutput_type: multiple_choice\ndata: x.jsonl\n", "bad.yaml:2: output_type: multiple_choice needs doc_to_choice"),
])
def test_a_malformed_task_file_names_the_key_and_the_line(tmp_path, text, message):
    from acorn.eval.tasks import load_task

    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(AcornError) as e:
        load_task(tmp_path / "bad.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_few_shot_examples_are_lm_eval_s_seeded_draws_without_the_document_itself():
    from lm_eval.api.samplers import ContextSampler

    from acorn.eval.tasks import Task, fewshot_examples

    pool = [{"i": i} for i in range(10)]
    task = Task(task="t", output_type="loglikelihood", data="x")
    ours = fewshot_examples(task, pool[:6], pool, 3, same_split=True)
    sampler = ContextSampler(pool, rnd=1234)
    assert ours == [list(sampler.sample(3, eval_doc=d)) for d in pool[:6]]
    assert all(d not in shots for d, shots in zip(pool, ours))


# ------------------------------------------------------------------ the CLI and the files
def _acorn(*args, env=None):
    return subprocess.run([sys.executable, "-m", "acorn", *map(str, args)], capture_output=True, text=True, env=env)


def test_cli_bad_input_is_one_line_and_exit_2(model_dir, eval_data, tmp_path):
    ckpt = model_dir[0]
    r = _acorn("eval", ckpt, "--tasks", "arc_easy,hellaswag", "--data-dir", eval_data)
    assert r.returncode == 2 and "unknown task 'hellaswag'; available: " in r.stderr
    listed = r.stderr.split("available: ")[1].split(" (or")[0].split(", ")
    assert {"acorn_code", "arc_challenge", "arc_easy", "gsm8k", "lambada_openai", "piqa"} <= set(listed)
    assert len(r.stderr.strip().splitlines()) == 1
    r = _acorn("eval", ckpt, "--tasks", "piqa", "--data-dir", tmp_path)
    assert r.returncode == 2 and f"{tmp_path / 'piqa.jsonl'}: the data of task piqa is missing; get it from https://" in r.stderr
    r = _acorn("eval", "compare", tmp_path)
    assert r.returncode == 2 and "results.json: missing" in r.stderr


def test_cli_writes_results_samples_table_chart_and_compares_runs(model_dir, eval_data, tmp_path):
    ckpt = model_dir[0]
    for name, shots in (("a", 0), ("b", 1)):
        r = _acorn("eval", ckpt, "--tasks", "arc_easy,lambada_openai", "--limit", 3, "--num-fewshot", shots,
                   "--data-dir", eval_data, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    cfg = results["config"]
    assert cfg["versions"] == {"arc_easy": 1.0, "lambada_openai": 1.0} and cfg["num_fewshot"] == 0
    assert cfg["limit"] == 3 and cfg["fewshot_seeds"]["arc_easy"] == 1234 and cfg["add_bos"] is False
    samples = [json.loads(x) for x in (tmp_path / "a" / "samples_arc_easy.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["prompt"] == ARC[0]["query"] + "\nAnswer:"
    acc = sum(s["scores"]["acc"] for s in samples) / 3
    assert results["results"]["arc_easy"]["acc"] == pytest.approx(acc)
    assert "| arc_easy | acc_norm |" in (tmp_path / "a" / "results.md").read_text()
    assert (tmp_path / "a" / "results.png").stat().st_size > 1000
    r = _acorn("eval", "compare", tmp_path / "a", tmp_path / "b", "--chart", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr
    header, _, *rows = r.stdout.strip().splitlines()
    assert str(tmp_path / "a") in header and str(tmp_path / "b") in header
    assert any(row.startswith("| lambada_openai | perplexity |") and row.count("|") == 5 for row in rows)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_under_torchrun_two_processes_split_the_documents_and_give_one_process_s_numbers(model_dir, eval_data,
                                                                                          tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): each process scores every
    other document, the samples are gathered, and the results and samples
    equal one process's; only rank 0 writes them."""
    import os
    import socket

    from acorn.eval.harness import shard

    assert shard(5, 0, 2) == [0, 2, 4] and shard(5, 1, 2) == [1, 3]
    args = ["eval", model_dir[0], "--tasks", "arc_easy,lambada_openai,gsm8k", "--limit", 5, "--num-fewshot", 1,
            "--data-dir", eval_data]
    r = _acorn(*args, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "acorn", *map(str, args),
                        "--out", str(tmp_path / "two")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("| arc_easy | acc |") == 1  # one table, from rank 0
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert two["config"]["processes"] == 2 and one["config"]["processes"] == 1
    assert one["results"].keys() == two["results"].keys()
    for task, res in one["results"].items():
        assert res == pytest.approx(two["results"][task], rel=1e-5)
        assert {k: v for k, v in res.items() if "perplexity" not in k} == \
            {k: v for k, v in two["results"][task].items() if "perplexity" not in k}
    for task in ("arc_easy", "lambada_openai", "gsm8k"):
        a, b = ([json.loads(x) for x in (tmp_path / d / f"samples_{task}.jsonl").read_text().splitlines()]
                for d in ("one", "two"))
        assert [s["doc_id"] for s in b] == list(range(min(5, len(DATA[task]))))
        for x, y in zip(a, b):
            # Log-likelihoods agree to float rounding (other batch neighbours), the rest exactly.
            assert x["prompt"] == y["prompt"] and x["scores"] == pytest.approx(y["scores"], abs=1e-5)
            assert x["output"] == (pytest.approx(y["output"], abs=1e-5) if task != "gsm8k" else y["output"])
