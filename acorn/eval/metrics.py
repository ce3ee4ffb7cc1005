"""Scoring a document, and aggregating scores over a task: the formulas of
lm-evaluation-harness (lm_eval/api/task.py ConfigurableTask.process_results,
lm_eval/api/metrics.py, lm_eval/filters/extraction.py), written out.

  multiple choice   acc: the choice with the highest log-likelihood is the
                    gold one; acc_norm: the same after dividing each
                    log-likelihood by the choice's length in characters (so
                    long answers are not penalised for having more tokens)
  loglikelihood     acc: greedy decoding would produce the target;
                    perplexity: exp(-mean log-likelihood) over documents
  rolling           word_perplexity / byte_perplexity: exp(-sum ll / sum
                    words or bytes); bits_per_byte: -sum ll / sum bytes / ln 2
  generate_until    exact_match of the extracted answer (a regex filter)
                    against the target, after removing ignored patterns
  code_exec         pass@k: the chance that at least one of k samples drawn
                    from a document's n passes its tests, estimated without
                    bias from the c of n that passed (Chen et al. 2021,
                    "Evaluating Large Language Models Trained on Code", 2.1)
"""

from __future__ import annotations

import math
import re
import string


def argmax(values: list[float]) -> int:
    """The first index of the largest value (numpy.argmax's tie rule)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def multiple_choice(lls: list[float], choices: list[str], gold: int) -> dict:
    norm = [ll / len(c) for ll, c in zip(lls, choices)]
    return {"acc": float(argmax(lls) == gold), "acc_norm": float(argmax(norm) == gold)}


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = "[invalid]") -> str:
    """lm-eval's RegexFilter followed by take_first: the group_select-th match
    (-1: the last); of a match with several groups, the first non-empty one."""
    found = re.findall(pattern, text)
    if not found:
        return fallback
    match = found[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


def exact_match(prediction: str, reference: str, *, regexes_to_ignore=(), ignore_case=False,
                ignore_punctuation=False) -> float:
    """As HF evaluate's exact_match (lm_eval.api.metrics.exact_match_hf_evaluate)."""
    for pattern in regexes_to_ignore or ():
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return float(prediction == reference)


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), Chen et al.'s unbiased estimator of pass@k
    from n samples of which c passed. Computed as their product form,
    1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the huge
    binomials (C(200, 100) ~ 1e58) whose ratio loses precision."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every draw of k samples holds a passing one
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def aggregate(metric: str, values: list) -> float:
    """One number for a task from the documents' scores."""
    if not values:
        return float("nan")
    if metric == "perplexity":
        return math.exp(-sum(values) / len(values))
    if metric in ("word_perplexity", "byte_perplexity"):
        return math.exp(-sum(ll for ll, _ in values) / sum(n for _, n in values))
    if metric == "bits_per_byte":
        return -sum(ll for ll, _ in values) / sum(n for _, n in values) / math.log(2)
    return sum(values) / len(values)


def stderr(metric: str, values: list) -> float | None:
    """Standard error of a mean metric (sample standard deviation / sqrt(n),
    lm-eval's mean_stderr); None for the corpus-level ones."""
    if metric in ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte") or len(values) < 2:
        return None
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1) / len(values))
