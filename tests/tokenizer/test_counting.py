"""Token counting, bytes per token and `acorn tokenizer info` on tiny trained tokenizers."""

from __future__ import annotations

import random

import pytest

from acorn.cli import main
from acorn.errors import AcornError
from acorn.tokenizer.bpe import Tokenizer
from acorn.tokenizer.counting import (
    compare_bytes_per_token,
    count_tokens,
    describe,
    format_table,
    token_pieces,
)
from acorn.tokenizer.text import iter_text_chunks

WORDS = ["the", "river", "Oak", "stone", "berry", "straw", "naïve", "café", "über", "north", "gate", "keeper"]


def _corpus(n_lines: int = 300, seed: int = 0) -> str:
    """Text with the places chunking could go wrong: spaces before newlines,
    blank-line runs, digit runs, punctuation before newlines, multi-byte
    characters and an emoji, so a bad cut would change the count."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
        tail = rng.choice(["", ".", "!  ", "  ", " 12345", " 🙂", ",", "\t"])
        sep = rng.choice(["\n", "\n", "\n\n", "\n\n\n", "\r\n", " \n"])
        lines.append(f"{words}{tail}{sep}")
    return "".join(lines)


@pytest.fixture(scope="module")
def text() -> str:
    return _corpus()


@pytest.fixture(scope="module")
def tok(text) -> Tokenizer:
    return Tokenizer.train([text], 400)


@pytest.fixture(scope="module")
def tok_gpt2_pattern(text) -> Tokenizer:
    return Tokenizer.train([text], 400, pattern="gpt2", name="acorn-gpt2-pattern")


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return d


def _write(tmp_path, name: str, data: str | bytes):
    p = tmp_path / name
    if isinstance(data, str):
        p.write_text(data, encoding="utf-8", newline="")
    else:
        p.write_bytes(data)
    return p


# ------------------------------------------------------------------- counting
@pytest.mark.parametrize("which", ["tok", "tok_gpt2_pattern"])
def test_count_over_many_chunks_equals_encoding_the_whole_text(which, text, tmp_path, request):
    t = request.getfixturevalue(which)
    path = _write(tmp_path, "corpus.txt", text)
    pieces = list(iter_text_chunks(path, chunk_bytes=64))
    assert len(pieces) > 20  # really exercised the chunking
    assert "".join(pieces) == text
    assert count_tokens(t, path, chunk_bytes=64) == len(t.encode(text))
    assert count_tokens(t, path) == len(t.encode(text))  # one chunk


def test_a_file_without_safe_cuts_is_read_whole(tok, tmp_path):
    text = "1 2 3\n" * 200  # no newline followed by a letter anywhere
    path = _write(tmp_path, "digits.txt", text)
    assert list(iter_text_chunks(path, chunk_bytes=16)) == [text]
    assert count_tokens(tok, path, chunk_bytes=16) == len(tok.encode(text))


def test_special_token_text_counts_as_plain_text(tok, tmp_path):
    text = "the river <|end|> gate\n"
    path = _write(tmp_path, "special.txt", text)
    n = count_tokens(tok, path)
    assert n == len(tok.encode(text)) and n > 1
    assert tok.token_id("<|end|>") not in tok.encode(text)


def test_empty_file_counts_zero(tok, tmp_path):
    assert count_tokens(tok, _write(tmp_path, "empty.txt", "")) == 0


def test_undecodable_bytes_name_the_offset_from_the_file_start(tok, text, tmp_path):
    good = text.encode("utf-8")
    path = _write(tmp_path, "bad.txt", good + b"caf\xe9 au lait\n")
    with pytest.raises(AcornError, match=f"offset {len(good) + 3}\\b"):
        count_tokens(tok, path, chunk_bytes=64)
    expected = len(tok.encode((good + b"caf\xe9 au lait\n").decode("utf-8", errors="replace")))
    assert count_tokens(tok, path, "replace", chunk_bytes=64) == expected


# ------------------------------------------------------------ bytes per token
def test_bytes_per_token_rows(tok, tok_gpt2_pattern, text, tmp_path):
    a = _write(tmp_path, "a.txt", text[:5000])
    b = _write(tmp_path, "b.txt", text[5000:] + "naïve café ✓\n")
    rows = compare_bytes_per_token({"gpt4-pattern": tok, "gpt2-pattern": tok_gpt2_pattern}, [a, b], chunk_bytes=256)
    assert [r["name"] for r in rows] == ["gpt4-pattern", "gpt2-pattern"]
    n_bytes = a.stat().st_size + b.stat().st_size
    for r, t in zip(rows, [tok, tok_gpt2_pattern]):
        tokens = len(t.encode(a.read_bytes().decode())) + len(t.encode(b.read_bytes().decode()))
        assert r["vocab_size"] == t.vocab_size
        assert r["bytes"] == n_bytes
        assert r["tokens"] == tokens
        assert r["bytes_per_token"] == pytest.approx(n_bytes / tokens)
    assert rows[0]["bytes_per_token"] > 1.5  # 389 merges learned on this very text do compress it


def test_more_merges_compress_the_training_text_better(text, tmp_path):
    path = _write(tmp_path, "corpus.txt", text)
    small, big = Tokenizer.train([text], 280), Tokenizer.train([text], 600)
    rows = compare_bytes_per_token({"small": small, "big": big}, [path])
    assert rows[1]["bytes_per_token"] > rows[0]["bytes_per_token"]


def test_format_table_is_aligned():
    rows = [
        {"name": "gpt2", "vocab_size": 50257, "bytes": 1234567, "tokens": 300000, "bytes_per_token": 4.11522},
        {"name": "runs/tok", "vocab_size": 400, "bytes": 1234567, "tokens": 617283, "bytes_per_token": 2.0},
    ]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1
    assert "50,257" in lines[2] and "4.115" in lines[2] and lines[2].startswith("gpt2 ")
    assert lines[3].endswith("2.000")


# ------------------------------------------------------------------ describe
def test_describe_shows_the_vocabulary_and_how_text_splits(tok):
    out = describe(tok)
    assert f"vocab size:      {tok.vocab_size:,}" in out
    assert f"merges:          {len(tok.mergeable_ranks) - 256:,}" in out
    for s, i in tok.special_tokens.items():
        assert f"{s}={i}" in out
    assert f"<|bos|> (id {tok.bos_id})" in out
    assert tok.pattern in out
    assert str(tok.encode("strawberry")) in out
    pieces = token_pieces(tok, "Hello world, 12345!")
    assert "".join(pieces) == "Hello world, 12345!"
    assert str(pieces) in out


def test_token_pieces_keep_partial_characters_as_bytes(tok):
    pieces = token_pieces(tok, "🙂")
    joined = b"".join(p if isinstance(p, bytes) else p.encode("utf-8") for p in pieces)
    assert joined == "🙂".encode("utf-8")


# ----------------------------------------------------------------------- CLI
def test_cli_tokens_count_prints_total_and_cost(tok, tok_dir, text, tmp_path, capsys):
    a = _write(tmp_path, "a.txt", text)
    b = _write(tmp_path, "b.txt", text[:777])
    assert main(["tokens", "count", str(a), str(b), "--tokenizer", str(tok_dir), "--price-per-million", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    na, nb = len(tok.encode(text)), len(tok.encode(text[:777]))
    total = na + nb
    assert out[0].split() == [f"{na:,}", str(a)]
    assert out[1].split() == [f"{nb:,}", str(b)]
    assert out[2].lstrip().startswith(f"{total:,}  total")
    assert out[2].endswith(f"cost at $2 per million tokens: ${total * 2 / 1e6:,.4f}")


def test_cli_tokens_count_empty_file(tok_dir, tmp_path, capsys):
    p = _write(tmp_path, "empty.txt", "")
    assert main(["tokens", "count", str(p), "--tokenizer", str(tok_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["0", "total"]


def test_cli_missing_file_is_one_line_and_exit_2(tok_dir, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["tokens", "count", str(missing), "--tokenizer", str(tok_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "nope.txt" in captured.err


def test_cli_non_utf8_file_names_the_offset_and_replace_works(tok, tok_dir, tmp_path, capsys):
    data = "the river gate\n".encode() * 3 + b"caf\xe9\n"
    p = _write(tmp_path, "latin1.txt", data)
    assert main(["tokens", "count", str(p), "--tokenizer", str(tok_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"offset {15 * 3 + 3}" in err[0] and "--errors replace" in err[0]

    assert main(["tokens", "count", str(p), "--tokenizer", str(tok_dir), "--errors", "replace"]) == 0
    n = len(tok.encode(data.decode("utf-8", errors="replace")))
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == [f"{n:,}", "total"]


def test_cli_tokenizer_eval_compares_side_by_side(text, tok_dir, tmp_path, capsys):
    other = Tokenizer.train([text], 300)
    other_dir = tmp_path / "other"
    other.save(other_dir)
    p = _write(tmp_path, "corpus.txt", text)
    assert main(["tokenizer", "eval", str(tok_dir), str(p), "--compare", str(other_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "tokenizer"
    assert lines[2].startswith(str(tok_dir)) and lines[3].startswith(str(other_dir))
    bpt = [float(line.split()[-1]) for line in lines[2:]]
    assert bpt[0] > bpt[1]  # 400 tokens compress their own training text better than 300


def test_cli_tokenizer_info(tok_dir, capsys):
    assert main(["tokenizer", "info", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert "strawberry" in out and "<|assistant|>" in out
