"""Tokenizer import/export against the reference libraries.

Every imported tokenizer must give the ids `tokenizers` (or tiktoken) gives on
the same files; every saved one must load in transformers and encode the same.
All fixtures are made here: tiny tokenizers trained in the test.
"""

import base64
import json
import random

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import AddedToken

from acorn.cli import main
from acorn.errors import AcornError
from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, Tokenizer
from acorn.tokenizer.files import (
    AddedTokensEncoding, HFEncoding, bytes_to_unicode, load_tokenizer, recover_merges, save_tokenizer, token_str,
)

FRAGMENTS = [
    "Hello, world! It's 2024; we'll see. DON'T 'S 'LL",
    "def f(x):\n\treturn x**2  # square\r\n",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "emoji 👩‍👩‍👧‍👦 🇫🇷 😀😀 ✨",
    "e\u0301 a\u0300\u0316 n\u0303 \u1100\u1161\u11a8 \u00c5 \u212b >\u0338",
    "    spaces     and\t\ttabs\n\n\n",
    "x = [1, 2, 3]; y = {'a': 1}\n",
    "Ünïcödé ﬁ ℌ ½ ² ١٢٣ ๑๒ ΑΒΓ αβγ Кириллица",
    "   \u00a0\u2003 nbsp\u3000ideographic",
    "1234567890 3.14159 -42 0x1F",
    "\r\n\r\n  \r\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "                         twenty-five spaces then   x",
]
MIXED = "".join(FRAGMENTS) + "<|endoftext|> between <|endoftext|>"

# Arbitrary unicode, and text made of the characters where splitting rules are subtle.
TRICKY = st.text(st.sampled_from(list(" \t\n\r\u00a0\u3000abcXé'sdt\u0301\u0338>日😀1234,.!-_")), max_size=60)
TEXTS = st.one_of(st.text(max_size=80), TRICKY)
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def corpus() -> str:
    rng = random.Random(0)
    return "".join(rng.choice(FRAGMENTS) + rng.choice([" ", "\n", ""]) for _ in range(300))


def train_hf(pre_tokenizer, normalizer=None, vocab_size=500) -> HF:
    """A tiny byte-level BPE trained by `tokenizers` itself."""
    tk = HF(models.BPE())
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    if normalizer:
        tk.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([corpus()], trainer)
    return tk


def load_tokenizer_cached(path, _cache={}):
    if path not in _cache:  # property tests run many examples on one tokenizer
        _cache[path] = load_tokenizer(path)
    return _cache[path]


def hf_ids(tk: HF, text: str, specials: bool = False) -> list[int]:
    tk.encode_special_tokens = not specials
    return tk.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """name -> (directory with tokenizer.json, the reference tokenizers.Tokenizer)."""
    root = tmp_path_factory.mktemp("hf")
    split = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    made = {
        "bytelevel": train_hf(pre_tokenizers.ByteLevel(add_prefix_space=False)),
        "split": train_hf(split),
        "nfc": train_hf(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFC()),
    }
    # gpt-neox's shape: NFC, plus runs of spaces as non-special, normalized added tokens.
    added = train_hf(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFC())
    added.add_tokens([AddedToken(" " * n, normalized=True) for n in range(2, 9)])
    added.add_tokens([AddedToken("Ω", normalized=True), AddedToken("Å", normalized=True),
                      AddedToken("raw!", normalized=False), AddedToken("w!x", normalized=False)])
    added.add_special_tokens(["<|pad|>"])
    made["added"] = added
    # Not byte-level: these must go through the `tokenizers` fallback.
    wp = HF(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator([corpus()], trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"],
                                                                  show_progress=False))
    made["wordpiece"] = wp
    uni = HF(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.train_from_iterator([corpus()], trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"],
                                                                 unk_token="<unk>", show_progress=False))
    made["unigram"] = uni
    out = {}
    for name, tk in made.items():
        (root / name).mkdir()
        tk.save(str(root / name / "tokenizer.json"))
        out[name] = (root / name, tk)
    return out


NATIVE = ["bytelevel", "split", "nfc", "added"]
FALLBACK = ["wordpiece", "unigram"]


# ------------------------------------------------------------------ imports
@pytest.mark.parametrize("name", NATIVE + FALLBACK)
def test_tokenizer_json_import_matches_tokenizers(hf_files, name):
    path, ref = hf_files[name]
    tok = load_tokenizer(path)
    assert (tok.mergeable_ranks is not None) == (name in NATIVE), getattr(tok.encoding, "why_not_native", "")
    assert tok.encode(MIXED) == hf_ids(ref, MIXED)
    assert tok.encode(MIXED, allowed_special="all") == hf_ids(ref, MIXED, specials=True)
    assert tok.encode_batch([MIXED, "abc"]) == [hf_ids(ref, MIXED), hf_ids(ref, "abc")]
    assert tok.decode(tok.encode(MIXED)) == ref.decode(hf_ids(ref, MIXED), skip_special_tokens=False)
    assert tok.vocab_size == ref.get_vocab_size(with_added_tokens=True)


def test_added_tokens_are_really_exercised(hf_files):
    # The fixture must hit the interesting cases, or the equality above proves little.
    path, ref = hf_files["added"]
    tok = load_tokenizer(path)
    assert isinstance(tok.encoding, AddedTokensEncoding) and tok.encoding.nfc
    added_ids = {ref.token_to_id(" " * n) for n in range(2, 9)} | {ref.token_to_id("Å"), ref.token_to_id("raw!")}
    text = "a      b \u212b A\u030a raw!x w!x <|pad|> " + MIXED
    ids = tok.encode(text)
    assert ids == hf_ids(ref, text)
    assert len(added_ids & set(ids)) >= 3
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|pad|>": ref.token_to_id("<|pad|>")}
    assert ref.token_to_id("<|pad|>") not in ids and ref.token_to_id("<|pad|>") in tok.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special="all") == hf_ids(ref, text, specials=True)
    only_pad = text.replace("<|endoftext|>", "")
    assert tok.encode(only_pad, allowed_special={"<|pad|>"}) == hf_ids(ref, only_pad, specials=True)


@pytest.mark.parametrize("name", NATIVE + FALLBACK)
@PROPS
@given(text=TEXTS)
def test_tokenizer_json_import_property(hf_files, name, text):
    path, ref = hf_files[name]
    assert load_tokenizer_cached(path).encode(text) == hf_ids(ref, text)


def test_vocab_merges_import_matches_tokenizers(hf_files, tmp_path):
    _, ref = hf_files["bytelevel"]
    ref.model.save(str(tmp_path))  # writes vocab.json + merges.txt
    tok = load_tokenizer(tmp_path)
    assert tok.mergeable_ranks is not None
    # <|endoftext|> is in vocab.json but is neither a byte nor a merge: a special token.
    assert tok.special_tokens == {"<|endoftext|>": 0} and tok.eos_token == "<|endoftext|>"
    plain = HF(models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert tok.encode(MIXED) == plain.encode(MIXED).ids
    assert load_tokenizer(tmp_path / "vocab.json").encode(FRAGMENTS[2]) == plain.encode(FRAGMENTS[2]).ids


def test_merges_out_of_id_order_fall_back_and_still_match(hf_files, tmp_path):
    # Swap the ids of two merged tokens: tiktoken's "lowest id first" no longer
    # matches the merge order, so the check must send this to `tokenizers`.
    path, _ = hf_files["bytelevel"]
    data = json.loads((path / "tokenizer.json").read_text())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    a, b = ["".join(m if isinstance(m, list) else m.split(" ")) for m in (merges[0], merges[5])]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok.encoding, HFEncoding) and "merge" in tok.encoding.why_not_native
    ref = HF.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.encode(MIXED) == hf_ids(ref, MIXED)


def test_merge_that_lower_merges_never_reach_falls_back(tmp_path):
    # "abc" is made from a + bc, but BPE reaches ab + c first: Hugging Face stops
    # at [ab, c] while tiktoken would still merge ab + c into abc.
    vocab = {c: b for b, c in bytes_to_unicode().items()} | {"ab": 256, "bc": 257, "abc": 258}
    data = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "b c", "a bc"]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok.encoding, HFEncoding) and "not the pair" in tok.encoding.why_not_native
    ref = HF.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.encode("abc xbc") == ref.encode("abc xbc").ids == [256, 99, 32, 120, 257]


def test_config_variants(hf_files, tmp_path):
    # transformers writes tokens as AddedToken dicts, named template lists, or chat_template.jinja.
    path, _ = hf_files["split"]
    (tmp_path / "tokenizer.json").write_text((path / "tokenizer.json").read_text())
    config = {"eos_token": {"content": "<|endoftext|>", "special": True},
              "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_id == 0 and tok.chat_template == "D"
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "chat_template.jinja").write_text("J")
    assert load_tokenizer(tmp_path / "tokenizer.json").chat_template == "J"


def test_tiktoken_file_import_matches_tiktoken(tmp_path):
    acorn = Tokenizer.train([corpus()], 400)
    lines = [f"{base64.b64encode(b).decode()} {r}" for b, r in acorn.mergeable_ranks.items()]
    (tmp_path / "mine.tiktoken").write_text("\n".join(lines) + "\n")
    ref = tiktoken.Encoding("ref", pat_str=GPT4_PATTERN, mergeable_ranks=acorn.mergeable_ranks, special_tokens={})
    for path in (tmp_path, tmp_path / "mine.tiktoken"):
        tok = load_tokenizer(path)
        assert tok.mergeable_ranks == acorn.mergeable_ranks and tok.special_tokens == {}
        assert tok.encode(MIXED) == ref.encode_ordinary(MIXED)
    tok = load_tokenizer(tmp_path, pattern="gpt2", special_tokens={"<|x|>": 400})
    ref2 = tiktoken.Encoding("r2", pat_str=GPT2_PATTERN, mergeable_ranks=acorn.mergeable_ranks,
                             special_tokens={"<|x|>": 400})
    assert tok.encode(MIXED + "<|x|>", allowed_special="all") == ref2.encode(MIXED + "<|x|>", allowed_special="all")


@pytest.fixture(scope="module")
def gpt2_reference(tmp_path_factory):
    """`tokenizers` on vocab.json + merges.txt derived from the bundled GPT-2 ranks,
    with its own GPT-2 regex (so the pattern is checked too)."""
    gpt2 = load_tokenizer("gpt2")
    d = tmp_path_factory.mktemp("gpt2files")
    vocab = {token_str(b): r for b, r in gpt2.mergeable_ranks.items()} | {"<|endoftext|>": 50256}
    (d / "vocab.json").write_text(json.dumps(vocab))
    merges = recover_merges(gpt2.mergeable_ranks)
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{token_str(a)} {token_str(b)}\n" for a, b in merges))
    ref = HF(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.decoder = decoders.ByteLevel()
    return gpt2, ref, d


def test_builtin_gpt2_matches_tokenizers(gpt2_reference):
    gpt2, ref, d = gpt2_reference
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256 and gpt2.pattern == GPT2_PATTERN
    assert gpt2.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert gpt2.encode(MIXED) == ref.encode(MIXED).ids
    assert load_tokenizer(d).encode(MIXED) == ref.encode(MIXED).ids


@PROPS
@given(text=TEXTS)
def test_builtin_gpt2_property(gpt2_reference, text):
    gpt2, ref, _ = gpt2_reference
    assert gpt2.encode(text) == ref.encode(text).ids


def test_one_megabyte_import_matches_tokenizers(hf_files):
    rng = random.Random(1)
    pieces = [rng.choice(FRAGMENTS)[rng.randint(0, 5):] for _ in range(14000)]
    text = "".join(p + rng.choice([" ", "\n", "\r\n", "\t", "  ", ""]) for p in pieces)
    text = (text * (1_000_000 // len(text) + 1))[:1_000_000]
    for name in ("added", "split"):
        path, ref = hf_files[name]
        assert load_tokenizer(path).encode(text) == hf_ids(ref, text)


# ------------------------------------------------------------------- saving
@pytest.fixture(scope="module")
def acorn_saved(tmp_path_factory):
    tok = Tokenizer.train([corpus()], 600, chat_format="chatml")
    tok.chat_template = tok.chat_template or "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    d = save_tokenizer(tok, tmp_path_factory.mktemp("acorn") / "tok")
    from transformers import AutoTokenizer

    return tok, AutoTokenizer.from_pretrained(str(d)), d


def test_saved_tokenizer_loads_in_transformers(acorn_saved):
    tok, hf, d = acorn_saved
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        json.loads((d / name).read_text())  # valid JSON
    assert hf.encode(MIXED, add_special_tokens=False) == tok.encode(MIXED, allowed_special="all")
    chat = "<|im_start|>user\nhi 😀<|im_end|>\n<|endoftext|>"
    assert hf.encode(chat, add_special_tokens=False) == tok.encode(chat, allowed_special="all")
    assert all(hf.convert_tokens_to_ids(s) == i for s, i in tok.special_tokens.items())
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert hf.chat_template == tok.chat_template
    assert len(hf) == tok.vocab_size


@PROPS
@given(text=TEXTS)
def test_saved_tokenizer_property(acorn_saved, text):
    tok, hf, _ = acorn_saved
    ids = tok.encode(text, allowed_special="all")  # transformers always matches special tokens
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == tok.decode(ids)


@given(ids=st.lists(st.integers(0, 599), max_size=30))
@settings(max_examples=100, deadline=None)
def test_saved_tokenizer_decodes_any_ids_alike(acorn_saved, ids):
    tok, hf, _ = acorn_saved  # including ids that split a character's bytes
    assert hf.decode(ids) == tok.decode(ids)


@PROPS
@given(text=st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=80) | TRICKY)
def test_gpt4_pattern_splits_the_same_in_onig(text):
    # tokenizers' regex engine (Onig) must read the possessive ?+ and ++ as
    # Python's `regex` does, or saved files would split differently. (Only
    # assigned characters: `regex` knows newer Unicode than Onig and tiktoken,
    # which agree with each other there; the id tests above cover that case.)
    onig = pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated")
    assert [p for p, _ in onig.pre_tokenize_str(text)] == regex.findall(GPT4_PATTERN, text)


def test_save_load_round_trip(acorn_saved, tmp_path):
    tok, _, d = acorn_saved
    back = load_tokenizer(d)
    assert back.mergeable_ranks == tok.mergeable_ranks and back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern and back.chat_template == tok.chat_template
    assert (back.chat_format, back.bos_token, back.eos_token, back.pad_token) == \
        (tok.chat_format, tok.bos_token, tok.eos_token, tok.pad_token)
    assert Tokenizer.from_pretrained(back.save(tmp_path / "again")).mergeable_ranks == tok.mergeable_ranks


def test_builtin_gpt2_saved_loads_in_transformers(tmp_path, gpt2_reference):
    from transformers import AutoTokenizer

    gpt2 = gpt2_reference[0]
    hf = AutoTokenizer.from_pretrained(str(save_tokenizer(gpt2, tmp_path)))
    assert hf.encode(MIXED, add_special_tokens=False) == gpt2.encode(MIXED, allowed_special="all")
    assert load_tokenizer(tmp_path).mergeable_ranks == gpt2.mergeable_ranks


@pytest.mark.parametrize("name", ["added", "unigram"])
def test_imported_tokenizers_save_and_reload(hf_files, name, tmp_path):
    from transformers import AutoTokenizer

    path, ref = hf_files[name]
    tok = load_tokenizer(path)
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "a      b \u212b raw!x " + MIXED
    assert again.encode(text) == tok.encode(text) == hf_ids(ref, text)
    assert hf.encode(text, add_special_tokens=False) == hf_ids(ref, text, specials=True)
    assert again.special_tokens == tok.special_tokens


def test_bytes_to_unicode_is_gpt2s():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256 and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("A")] == "A"


# ------------------------------------------------------------------- errors
def _corrupt(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "tokenizer.json").write_text('{"model": {"type": "Quantum", "vocab": {}}}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "mismatch").mkdir()
    (tmp_path / "mismatch" / "vocab.json").write_text('{"a": 0, "b": 1}')
    (tmp_path / "mismatch" / "merges.txt").write_text("#version: 0.2\na b\n")
    return {
        "nope": "no such file or directory", "empty": "no tokenizer files found", "bad": "not valid JSON",
        "weird": "unknown tokenizer model type 'Quantum'", "mismatch": "do not belong together",
    }


def test_errors_name_the_problem(tmp_path):
    for sub, msg in _corrupt(tmp_path).items():
        with pytest.raises(AcornError, match=msg):
            load_tokenizer(tmp_path / sub)


def test_cli_reports_errors_on_one_line(tmp_path, capsys):
    for sub, msg in _corrupt(tmp_path).items():
        assert main(["tokenizer", "info", str(tmp_path / sub)]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
