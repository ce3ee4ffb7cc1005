"""Retrieval-augmented generation end to end: index documents, ask, evaluate.

    from acorn.rag.pipeline import build_index, RAG
    build_index(["notes/"], "runs/index", embedder="runs/embed/model")
    rag = RAG("runs/index", model="runs/sft/model")       # embedder: the index's own
    a = rag.ask("Where was Kelvo Dranith born?")
    print(a.answer, [s["title"] for s in a.sources])       # "Osk", the cited chunks

Each question: retrieve k chunks (acorn.rag.retrieve), put them numbered in
the user turn (acorn.chat.context), generate greedily through the one engine,
parse the citations. When the passages do not fit the model's context, the
lowest-ranked are dropped; a question that does not fit alone is refused.
Faithfulness is checked the simplest exact way the world allows: an answer
is supported when the chunk it cites contains it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from acorn.chat.context import check_options, context_messages, parse_citations
from acorn.data.world import answer_value
from acorn.errors import AcornError
from acorn.rag.chunking import chunk_documents, read_documents
from acorn.rag.embeddings import load_embedder
from acorn.rag.index import Index
from acorn.rag.rerank import METHODS as RERANK_METHODS
from acorn.rag.rerank import rerank
from acorn.rag.retrieve import reciprocal_rank, recall_at_k, retrieve, retrieval_metrics

IDK = "I don't know."


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def _chunk_tokenizer(embedder):
    tok = getattr(embedder, "tokenizer", None)
    if tok is not None and hasattr(tok, "token_bytes"):
        return tok
    from acorn.tokenizer.bpe import Tokenizer

    return Tokenizer.from_pretrained("gpt2")  # a sentence-transformers embedder: count GPT-2 tokens


def build_index(paths, out, embedder, *, chunk_by: str = "tokens", chunk_size: int = 128, chunk_overlap: int = 16,
                metric: str = "cosine", kind: str = "exact", add: bool = False, quiet: bool = True) -> dict:
    """Chunk and embed documents into the index directory `out` (a new one, or
    with add=True appended to the existing one, whose embedder and chunking it
    keeps). embedder: a model directory or a loaded embedder. Returns a summary."""
    t0 = time.perf_counter()
    emb = load_embedder(embedder) if isinstance(embedder, (str, Path)) else embedder
    docs, skipped = read_documents(list(paths))
    existing = Index.load(out, emb.identity) if add else None
    if existing is not None:
        ch = existing.chunking
        chunk_by, chunk_size, chunk_overlap = ch["by"], ch["size"], ch["overlap"]
    elif add:
        raise AcornError(f"{out}: no index to add to; build it first without --add")
    chunks = chunk_documents(docs, chunk_by, chunk_size, chunk_overlap, _chunk_tokenizer(emb))
    vectors = emb.encode([c.text for c in chunks])
    if existing is not None:
        existing.add(chunks, vectors)
        index = existing
    else:
        index = Index(chunks, vectors, emb.identity, metric, kind,
                      {"by": chunk_by, "size": chunk_size, "overlap": chunk_overlap})
    index.save(out)
    summary = {"out": str(out), "documents": len(docs), "chunks_added": len(chunks), "chunks": len(index),
               "skipped": [f"{s.source}: {s.reason}" for s in skipped], "seconds": time.perf_counter() - t0,
               "metric": index.metric, "kind": index.kind, "embedder": emb.identity["path"]}
    if not quiet:
        print(format_build(summary))
    return summary


def format_build(s: dict) -> str:
    lines = [f"indexed {s['documents']} documents as {s['chunks_added']} chunks ({s['chunks']} in the index, "
             f"{s['kind']} {s['metric']}) with {s['embedder']} in {s['seconds']:.1f}s -> {s['out']}"]
    if s["skipped"]:
        lines.append(f"skipped {len(s['skipped'])}: " + "; ".join(s["skipped"][:10])
                     + (" ..." if len(s["skipped"]) > 10 else ""))
    return "\n".join(lines)


@dataclass
class RagAnswer:
    question: str
    text: str  # what the model wrote, citations included
    answer: str  # without the citation marks
    citations: list[int]  # passage numbers (1-based) the answer cites
    passages: list[dict]  # the chunks in the prompt, in order: number, id, title, source, start, end, text, score
    retrieve_s: float = 0.0
    generate_s: float = 0.0

    @property
    def sources(self) -> list[dict]:
        """The cited passages (the chunks a reader should check)."""
        return [self.passages[n - 1] for n in self.citations]

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.answer, "text": self.text, "citations": self.citations,
                "sources": self.sources, "passages": self.passages}


@dataclass
class RAG:
    """An index, its embedder and a chat model. index: a directory or an Index;
    model: a checkpoint directory or an Engine (None: retrieval only);
    embedder: a directory or embedder (default: the one the index records).
    rerank: retrieve this many chunks and reorder them by the chat model's judgement
    (acorn.rag.rerank, rerank_method "yes" or "likelihood") before keeping k; 0: off."""

    index: Index | str | Path
    model: object = None
    embedder: object = None
    k: int = 3
    mode: str = "hybrid"
    max_new_tokens: int = 32
    rerank: int = 0
    rerank_method: str = "yes"
    spotlight: str = "off"  # mark the passages as data (acorn.chat.context: "delimit", "datamark")
    layout: str = "user"  # "tool": the passages in a tool-role message, apart from the question (role separation)
    engine: object = field(init=False, default=None)

    def __post_init__(self):
        if isinstance(self.rerank, bool) or not isinstance(self.rerank, int) or self.rerank < 0:
            raise AcornError(f"rerank must be a number of chunks >= 0 (0: off), not {self.rerank!r}")
        if self.rerank_method not in RERANK_METHODS:
            raise AcornError(f"unknown rerank method {self.rerank_method!r}; choose one of "
                             f"{', '.join(RERANK_METHODS)}")
        check_options(self.spotlight, self.layout)
        if isinstance(self.embedder, (str, Path)):
            self.embedder = load_embedder(self.embedder)
        if not isinstance(self.index, Index):
            directory = Path(self.index)
            if self.embedder is None and self.mode != "bm25":
                built = Index.load(directory).embedder
                self.embedder = load_embedder(built["path"])
            self.index = Index.load(directory, self.embedder.identity if self.embedder is not None else None)
        if self.model is not None:
            from acorn.infer.engine import Engine

            self.engine = self.model if isinstance(self.model, Engine) else Engine.from_pretrained(self.model)

    def retrieve(self, questions: list[str], k: int | None = None):
        k = k or self.k
        if not self.rerank:
            return retrieve(self.index, self.embedder, questions, k, self.mode)
        if self.engine is None:
            raise AcornError("reranking reads the chunks with the chat model; pass --model CHECKPOINT "
                             "(or leave out --rerank)")
        pool = retrieve(self.index, self.embedder, questions, max(k, self.rerank), self.mode)
        return [rerank(self.engine, q, hits, k, self.rerank_method) for q, hits in zip(questions, pool)]

    def prompt(self, question: str, hits, engine=None, messages: list[dict] | None = None,
               max_new_tokens: int | None = None) -> tuple[list[int], list[dict]]:
        """The prompt's ids and the passages that fit the model's context: the
        conversation `messages` (default: none) then a user turn with the
        passages and the question."""
        eng = engine or self.engine
        new = max_new_tokens or self.max_new_tokens
        room = eng.model.config.max_seq_len - new
        passages = [{"number": i + 1, "id": h.chunk.id, "title": h.chunk.title, "source": h.chunk.source,
                     "start": h.chunk.start, "end": h.chunk.end, "text": h.chunk.text, "score": h.score}
                    for i, h in enumerate(hits)]
        while True:
            turns = context_messages(question, passages, self.spotlight, self.layout)
            ids = eng.chat_prompt([*(messages or []), *turns])
            if len(ids) <= room:
                return ids, passages
            if not passages:
                raise AcornError(f"the question takes {len(ids)} tokens with the prompt around it; the model's "
                                 f"context is {eng.model.config.max_seq_len} with {new} kept for "
                                 "the answer; shorten the question")
            passages = passages[:-1]

    def augment(self, messages: list[dict], engine, max_new_tokens: int) -> tuple[list[int], list[dict]]:
        """A chat conversation whose last user turn is answered from the index
        (the server's --rag): (prompt ids, passages in the prompt)."""
        last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last is None or not isinstance(messages[last].get("content"), str) or not messages[last]["content"].strip():
            raise AcornError("retrieval needs a user message with text to search for")
        question = messages[last]["content"]
        (hits,) = self.retrieve([question])
        return self.prompt(question, hits, engine, messages[:last] + messages[last + 1:], max_new_tokens)

    def ask_many(self, questions: list[str]) -> list[RagAnswer]:
        if self.engine is None:
            raise AcornError("answering needs a chat model; pass --model CHECKPOINT")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise AcornError("a question is empty; give the text to answer")
        t0 = time.perf_counter()
        hits = self.retrieve(questions)
        t_retrieve = (time.perf_counter() - t0) / max(1, len(questions))
        prompts = [self.prompt(q, h) for q, h in zip(questions, hits)]
        t0 = time.perf_counter()
        done = self.engine.generate([p for p, _ in prompts], temperature=0.0, max_new_tokens=self.max_new_tokens)
        t_generate = (time.perf_counter() - t0) / max(1, len(questions))
        out = []
        for q, (_, passages), c in zip(questions, prompts, done):
            answer, cited = parse_citations(c.text, len(passages))
            out.append(RagAnswer(q, c.text, answer, cited, passages, t_retrieve, t_generate))
        return out

    def ask(self, question: str) -> RagAnswer:
        return self.ask_many([question])[0]

    def evaluate(self, rows: list[dict], batch_size: int = 32) -> dict:
        """Rows: {"question", "answer" or "kb_answer", "relevant" or "kb_id"} (the
        world's eval/unknown_qa.jsonl as it is). Retrieval metrics when relevant
        ids are given; exact match, faithfulness and "I don't know." rate when
        answers are given and a model is loaded."""
        if not rows:
            raise AcornError("no questions to evaluate; give a JSONL file with a \"question\" per row")
        questions = [r["question"] for r in rows]
        relevant = [set(r["relevant"]) if "relevant" in r else {r["kb_id"]} if "kb_id" in r else None
                    for r in rows]
        result: dict = {"n": len(rows)}
        if all(r is not None for r in relevant):
            modes = ("bm25",) if self.embedder is None else ("dense", "bm25", "hybrid")
            result["retrieval"] = retrieval_metrics(self.index, self.embedder, questions, relevant, modes)
            if self.rerank and self.engine is not None:  # the mode's top `rerank`, reordered by the model
                hits = self.retrieve(questions, k=self.rerank)
                row = {f"recall@{k}": sum(recall_at_k(h, r, k) for h, r in zip(hits, relevant)) / len(rows)
                       for k in (1, 5)}
                row |= {"mrr": sum(reciprocal_rank(h, r) for h, r in zip(hits, relevant)) / len(rows),
                        "n": len(rows)}
                result["retrieval"][f"{self.mode}+rerank {self.rerank} ({self.rerank_method})"] = row
        golds = [r.get("kb_answer", r.get("answer")) for r in rows]
        if self.engine is not None and all(g is not None for g in golds):
            answers = []
            for s in range(0, len(questions), batch_size):
                answers += self.ask_many(questions[s:s + batch_size])
            result.update(answer_metrics(answers, golds, rows))
            result["examples"] = [a.to_json() | {"gold": g} for a, g in zip(answers[:5], golds)]
        return result


def supported(answer: RagAnswer, value: str | None = None) -> bool:
    """The answer (or the value it states) is in a passage it cites (exact, case-insensitive substring)."""
    a = _norm(answer.answer if value is None else value)
    return bool(a) and any(a in _norm(p["text"]) for p in answer.sources)


def answer_metrics(answers: list[RagAnswer], golds: list[str], docs: list[dict] | None = None) -> dict:
    """docs: the questions' rows; a fact answer in the world's sentence ("As far as I know, X was
    born in 1959.", a chat model SFT taught --fact-answers sentence) about a row's person and
    attribute counts as the value it states (acorn.data.world.answer_value)."""
    n = len(answers)
    values = [answer_value(a.answer, d.get("person"), d.get("attribute")) if d else a.answer
              for a, d in zip(answers, docs or [None] * n)]
    em = [_norm(v) == _norm(g) for v, g in zip(values, golds)]
    idk = [_norm(a.answer) == _norm(IDK) for a in answers]
    given = [(a, v) for a, v, i in zip(answers, values, idk) if not i]
    return {"exact_match": sum(em) / n, "idk_rate": sum(idk) / n,
            "cited_rate": sum(bool(a.citations) for a, _ in given) / max(1, len(given)),
            "faithfulness": sum(supported(a, v) for a, v in given) / max(1, len(given)),
            "retrieve_s": sum(a.retrieve_s for a in answers) / n, "generate_s": sum(a.generate_s for a in answers) / n}
