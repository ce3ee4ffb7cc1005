"""Core tokenizer: training equals a pure-Python reference BPE, round trips,
special tokens, streaming decode, and the error messages."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import acorn.tokenizer.bpe as tokmod
import acorn.tokenizer.text as textmod
from acorn.chat.formats import FORMATS
from acorn.cli import main
from acorn.errors import AcornError
from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, Tokenizer

N_SPECIAL = len(FORMATS["acorn"].special_tokens)


# ------------------------------------------------------------ reference BPE
def reference_bpe(text: str, n_merges: int, pattern: str) -> list[bytes]:
    """The textbook algorithm, slow and obvious: the oracle for rustbpe.

    Pairs are counted over every adjacent position of every regex chunk,
    weighted by how often the chunk occurs (overlaps count: "aaa" has the pair
    (a, a) twice). The most frequent pair is merged left to right. Ties go to
    the pair with the smallest (left id, right id) — rustbpe's rule, and the
    one Acorn documents. Returns the bytes of each new token in merge order.
    """
    words = [(list(c.encode("utf-8")), n) for c, n in Counter(regex.findall(pattern, text)).items()]
    vocab = {i: bytes([i]) for i in range(256)}
    new_tokens = []
    for new_id in range(256, 256 + n_merges):
        counts: Counter = Counter()
        for w, n in words:
            for pair in zip(w, w[1:]):
                counts[pair] += n
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        vocab[new_id] = vocab[a] + vocab[b]
        new_tokens.append(vocab[new_id])
        merged = []
        for w, n in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append((out, n))
        words = merged
    return new_tokens


def reference_encode(text: str, new_tokens: list[bytes], pattern: str) -> list[bytes]:
    """Encode by replaying merges in the order learned; returns token bytes."""
    rank = {t: 256 + i for i, t in enumerate(new_tokens)}
    out = []
    for chunk in regex.findall(pattern, text):
        parts = [bytes([x]) for x in chunk.encode("utf-8")]
        while len(parts) > 1:
            cands = [(rank.get(parts[i] + parts[i + 1], 1 << 60), i) for i in range(len(parts) - 1)]
            r, i = min(cands)
            if r == 1 << 60:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out.extend(parts)
    return out


def _merged_tokens(tok: Tokenizer) -> list[bytes]:
    by_rank = sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])
    return [b for b, r in by_rank if r >= 256]


def _corpora() -> list[str]:
    rng = random.Random(0)
    out = [
        "aaaa aaa aa a bbbb ab ab ba abab",
        "the cat sat on the mat. The hat! 12345 6789 can't won't I'm\n\n  indented\tTabs\r\n" * 4,
        "naïve café — 日本語のテキスト, emoji 😀😀 and ñ. " * 5,
        "def f(x):\n    return x ** 2  # square\n\n" * 6,
    ]
    for _ in range(4):
        out.append("".join(rng.choice("ab c\nxé1") for _ in range(400)))
    return out


@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN], ids=["gpt4", "gpt2"])
@pytest.mark.parametrize("text", _corpora())
def test_trained_merges_equal_reference_bpe(text, pattern):
    n_merges = 80
    tok = Tokenizer.train([text], 256 + n_merges + N_SPECIAL, pattern=pattern)
    expected = reference_bpe(text, n_merges, pattern)
    assert _merged_tokens(tok) == expected
    # Encoding with tiktoken over those ranks equals replaying the merges.
    got = [tok.token_bytes(i) for i in tok.encode(text)]
    assert got == reference_encode(text, expected, pattern)


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc d\n1é😀")), min_size=1, max_size=200))
def test_reference_equality_property(text):
    tok = Tokenizer.train([text], 256 + 30 + N_SPECIAL)
    assert _merged_tokens(tok) == reference_bpe(text, 30, GPT4_PATTERN)


def test_vocab_size_counts_special_tokens_and_specials_come_last():
    text = " ".join(f"word{i} thing{i % 7}" for i in range(2000))
    tok = Tokenizer.train([text], 600)
    assert tok.vocab_size == 600
    assert sorted(tok.special_tokens.values()) == list(range(600 - N_SPECIAL, 600))
    assert max(tok.mergeable_ranks.values()) == 600 - N_SPECIAL - 1


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_piecewise_feeding_does_not_change_training(monkeypatch, tmp_path, pattern):
    # Trailing spaces before newlines, blank-line runs and digits: the places a
    # careless cut would change the chunks (GPT-2's \s++$ rule in particular).
    lines = [f"line {i} says {'hello  ' if i % 3 else 'goodbye'}\n{'' if i % 5 else chr(10) * 2}to {i * 7}.\n"
             for i in range(3000)]
    text = "".join(lines) + "\n\n\n  end\n"
    whole = Tokenizer.train([text], 700, pattern=pattern)
    monkeypatch.setattr(textmod, "CHUNK_BYTES", 997)
    assert len(list(textmod.split_for_training(text))) > 50
    assert Tokenizer.train([text], 700, pattern=pattern).mergeable_ranks == whole.mergeable_ranks
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    assert len(list(textmod.iter_text_chunks(path))) > 50
    assert Tokenizer.train([path], 700, pattern=pattern).mergeable_ranks == whole.mergeable_ranks


# ----------------------------------------------------------------- encoding
@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = ("The quick brown fox jumps over the lazy dog. 0123456789 " * 50) + "日本語 😀 café\n" * 20
    return Tokenizer.train([text], 700)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_representable(tok, data):
    ids = [tok.mergeable_ranks[bytes([b])] for b in data]
    assert tok.decode_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_stream_decoder_never_emits_broken_utf8(tok, text):
    # Encode byte by byte so every multi-byte character is split across ids.
    ids = [tok.mergeable_ranks[bytes([b])] for b in text.encode("utf-8")]
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_stream_decoder_flushes_unfinished_character(tok):
    emoji = "😀".encode("utf-8")
    dec = tok.stream_decoder()
    assert dec.push_many(tok.mergeable_ranks[bytes([b])] for b in emoji[:3]) == ""
    assert dec.flush() == "\ufffd"


def test_special_token_text_is_plain_text_unless_allowed(tok):
    text = "hi <|end|><|assistant|> there"
    plain = tok.encode(text)
    assert not any(tok.is_special(i) for i in plain)
    assert tok.decode(plain) == text
    allowed = tok.encode(text, allowed_special="all")
    assert tok.token_id("<|end|>") in allowed and tok.token_id("<|assistant|>") in allowed
    only_end = tok.encode(text, allowed_special={"<|end|>"})
    assert tok.token_id("<|end|>") in only_end and tok.token_id("<|assistant|>") not in only_end


def test_bos_eos_and_batch(tok):
    ids = tok.encode("abc", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id == tok.token_id("<|bos|>")
    assert ids[-1] == tok.eos_id == tok.token_id("<|eos|>")
    texts = ["one", "two <|end|>", "", "three 😀"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, allowed_special="all")[1] == tok.encode(texts[1], allowed_special="all")
    assert tok.decode(ids, skip_special=True) == "abc"


def test_encode_batch_on_threads_equals_encoding_one_by_one(tok):
    rng = random.Random(1)
    words = ["fox", "<|end|>", "😀", "12345", " ", "\n", "日本", "the"]
    texts = ["".join(rng.choice(words) for _ in range(rng.randrange(0, 400))) for _ in range(600)]
    texts[7] = "x" * 100_000  # one long text among short ones
    assert sum(map(len, texts)) > tokmod._PARALLEL_MIN_CHARS
    for allowed in ((), "all"):
        expected = [tok.encode(t, allowed_special=allowed) for t in texts]
        assert tok.encode_batch(texts, allowed_special=allowed, num_threads=3) == expected


def test_extra_special_tokens_and_formats():
    text = " ".join(f"word{i} thing{i % 7}" for i in range(2000))
    t = Tokenizer.train([text], 400, chat_format="chatml", special_tokens=["<|mine|>"])
    assert "<|im_start|>" in t.special_tokens and "<|mine|>" in t.special_tokens
    assert t.special_tokens["<|mine|>"] == 399
    assert t.eos_token == "<|endoftext|>"


def test_small_corpus_warns_and_leaves_no_id_holes():
    with pytest.warns(UserWarning, match="only supports"):
        t = Tokenizer.train(["hello world " * 50], 400)
    assert t.vocab_size < 400
    assert sorted([*t.mergeable_ranks.values(), *t.special_tokens.values()]) == list(range(t.vocab_size))


def test_train_from_jsonl_field(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "alpha beta"}\n{"text": "gamma delta"}\n', encoding="utf-8")
    t = Tokenizer.train([p], 300)
    assert t.decode(t.encode("alpha gamma")) == "alpha gamma"
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "zebra zebra zebra"}]}\n' * 3, encoding="utf-8")
    t = Tokenizer.train([chats], 300)
    assert b"zebra" in t.mergeable_ranks  # trained on the message contents
    with pytest.raises(AcornError, match="no string field 'body'"):
        Tokenizer.train([p], 300, text_field="body")


# ------------------------------------------------------------------- errors
def test_error_vocab_too_small():
    with pytest.raises(AcornError, match=r"too small.*--vocab-size 267"):
        Tokenizer.train(["abc"], 260)


def test_error_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(AcornError, match="empty"):
        Tokenizer.train([tmp_path / "empty.txt"], 300)


def test_error_bad_pattern():
    with pytest.raises(AcornError, match="does not compile"):
        Tokenizer.train(["abc"], 300, pattern="(unclosed")


def test_error_undecodable_bytes_names_file_and_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"hello caf\xe9 world")
    with pytest.raises(AcornError, match=r"latin1.txt: bytes at offset 9 .*convert the file to UTF-8"):
        Tokenizer.train([p], 300)
    t = Tokenizer.train([p], 300, errors="replace")
    assert t.vocab_size <= 300


def test_error_ids_out_of_range(tok):
    with pytest.raises(AcornError, match="outside"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenizer", "train", "{missing}", "--out", "{out}"], "no such file"),
        (["tokenizer", "train", "{corpus}", "--out", "{out}", "--vocab-size", "100"], "too small"),
        (["tokenizer", "train", "{latin1}", "--out", "{out}"], "offset 3"),
        (["tokenizer", "train", "{corpus}", "--out", "{out}", "--pattern", "("], "does not compile"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "corpus.txt").write_text("some text here " * 20)
    (tmp_path / "latin1.txt").write_bytes(b"abc\xff")
    paths = {
        "missing": str(tmp_path / "nope.txt"),
        "out": str(tmp_path / "tok"),
        "corpus": str(tmp_path / "corpus.txt"),
        "latin1": str(tmp_path / "latin1.txt"),
    }
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("acorn: error: ") and message in err


def test_cli_decode_rejects_non_integers(tmp_path, capsys):
    # The ids are checked before the tokenizer is loaded, so no tokenizer is needed.
    code = main(["tokenizer", "decode", str(tmp_path / "missing"), "12", "x"])
    assert code == 2
    assert "ids must be integers" in capsys.readouterr().err
