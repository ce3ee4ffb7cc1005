"""From a completion to an answer, and from many answers to one.

Self-consistency (Wang et al. 2022, "Self-Consistency Improves Chain of
Thought Reasoning in Language Models") samples several reasoning paths and
keeps the answer most of them reach. That needs two small pieces, kept here
so they can be tested on their own: extract_answer() finds the final answer
in a free-text completion, majority_vote() picks the most frequent one.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

# The phrasings a chain of thought ends with, most specific first. The text
# after the marker, up to the end of its line, is the answer.
_MARKERS = re.compile(r"(?:the answer is|answer:)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize(text: str) -> str:
    """Compare answers without case, surrounding space, commas in numbers or a final full stop."""
    text = " ".join(text.strip().lower().rstrip(".").split())
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def extract_answer(text: str, *, numeric: bool = False, marked: bool = False) -> str | None:
    """The final answer in a completion, normalised; None when there is none.

    The last "The answer is X" / "Answer: X" line wins (a chain of
    thought may restate an intermediate result earlier); without a marker the
    completion's first non-empty line is the answer (direct answering).
    numeric: keep only the last number of that answer ("19 apples" -> "19"),
    or of the whole text when no marker is found. marked: only a marked
    answer counts (None without a marker: the reasoning is not finished)."""
    if not text or not text.strip():
        return None
    found = None
    for line in text.splitlines():
        m = _MARKERS.search(line)
        if m and m.group(1).strip():
            found = m.group(1)
    if marked and found is None:
        return None
    if numeric:
        numbers = _NUMBER.findall(found if found is not None else text)
        return normalize(numbers[-1]) if numbers else None
    if found is None:
        found = next(line for line in text.splitlines() if line.strip())
    return normalize(found) or None


def majority_vote(answers: Iterable[str | None]) -> tuple[str | None, Counter]:
    """(the most frequent answer, the counts). None answers (nothing
    extracted) do not vote; a tie goes to the answer reached first, so the
    result does not depend on dictionary order. (None, empty) when no answer."""
    counts: Counter = Counter()
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] += 1
        first.setdefault(a, i)
    if not counts:
        return None, counts
    return min(counts, key=lambda a: (-counts[a], first[a])), counts
