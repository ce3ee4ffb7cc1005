"""Retrieved passages in a user turn, and the citations in the answer.

Retrieval-augmented generation (Lewis et al. 2020) puts the passages a
retriever found into the prompt; the answer names the passage it used with a
bracketed number, as chat-with-your-docs products do ("1957 [2]"). This is the
one format: the world's RAG conversations (acorn.data.world.rag_sft_rows)
teach it and acorn.rag.answer prompts with it, so what the model learned is
what it is asked.
"""

from __future__ import annotations

import re

INSTRUCTION = "Answer from the passages and cite the one you used as [n]; if they do not say, answer: I don't know."
_CITATION = re.compile(r"\[(\d{1,3})\]")


def context_message(question: str, passages: list[dict]) -> str:
    """The user turn: numbered passages ({"title", "text"}), the question, the rule.
    Passage i (from 0) is cited as [i + 1]."""
    lines = ["Passages:"]
    for i, p in enumerate(passages, 1):
        title = p.get("title")
        lines.append(f"[{i}] {title}: {p['text']}" if title else f"[{i}] {p['text']}")
    return "\n".join([*lines, "", f"Question: {question}", INSTRUCTION])


def cite(answer: str, number: int) -> str:
    """An answer with its citation appended: cite("1957", 2) == "1957 [2]"."""
    return f"{answer} [{number}]"


def parse_citations(text: str, n_passages: int | None = None) -> tuple[str, list[int]]:
    """(the answer without its citation marks, the cited passage numbers in order
    of first mention). Numbers outside 1..n_passages (when given) are dropped
    from the list (a made-up citation cites nothing) but still removed from the text."""
    cited: list[int] = []
    for m in _CITATION.finditer(text):
        n = int(m.group(1))
        if n not in cited and (n_passages is None or 1 <= n <= n_passages):
            cited.append(n)
    clean = " ".join(_CITATION.sub(" ", text).split())
    clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)  # "1957 [2]." -> "1957."
    return clean, cited
