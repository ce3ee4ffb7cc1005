"""Tokenizer files: reading the formats tokenizers ship in, writing Hugging Face's.

Byte-level BPE (GPT-2, 2019) exists in three file formats with the same
content: tiktoken's rank file (token bytes -> rank, base64), GPT-2's
vocab.json + merges.txt, and Hugging Face's tokenizer.json. In the last two a
byte is written as a printable character (GPT-2's `bytes_to_unicode`, so that
no token contains a space or a control character) and the merges are listed
in the order learned.

The three are interchangeable when the merge order is the id order: then
"apply the lowest-ranked merge" (Hugging Face) and "merge into the lowest-id
token" (tiktoken) pick the same pair every time. `_check_merges` verifies it,
and such files are encoded natively by tiktoken. Whatever cannot be expressed
that way (SentencePiece/Metaspace, WordPiece, Unigram, byte fallback, merges
out of order) runs on the `tokenizers` library behind `HFEncoding`, an object
with the part of tiktoken.Encoding's API that `Tokenizer` uses.

Saving writes tokenizer.json, tokenizer_config.json and special_tokens_map.json
so that `transformers.AutoTokenizer.from_pretrained(dir)` encodes identically.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import tiktoken

from acorn.errors import AcornError
from acorn.fileio import read_json, write_json
from acorn.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, resolve_pattern

GPT2_RANKS = Path(__file__).parent / "assets" / "gpt2.tiktoken.gz"
LOOKED_FOR = "tokenizer.json, vocab.json + merges.txt, or one *.tiktoken file"
# transformers' own value for "no length limit" (VERY_LARGE_INTEGER).
NO_MAX_LENGTH = int(1e30)
# Bytes that never occur in UTF-8; a vocabulary may leave them out (gpt-neox
# does) without changing how any str encodes.
NEVER_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])


class NotNative(Exception):
    """The file is valid but tiktoken cannot express it; the reason says why."""


# ------------------------------------------------------------ byte <-> char
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters: printable Latin-1 bytes
    stand for themselves, the other 68 are shifted to U+0100 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_str(b: bytes) -> str:
    return "".join(BYTE_TO_CHAR[x] for x in b)


def token_bytes(s: str) -> bytes | None:
    """The bytes a byte-level token string stands for; None if it is not one."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return None


# -------------------------------------------------------------------- BPE
def bpe(ranks: dict[bytes, int], piece: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's algorithm, using only ranks below max_rank: merge the adjacent
    pair whose concatenation has the lowest rank (leftmost on ties) until none is left."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, at = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list behind tiktoken ranks: BPE on a token's bytes with only
    lower ranks allowed stops exactly one merge short, at the two parts."""
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = bpe(ranks, tok, rank)
        if len(parts) != 2:
            raise AcornError(
                f"token {tok!r} (rank {rank}) is not one merge of lower-ranked tokens, so these ranks are not "
                "a byte-level BPE; re-train the tokenizer"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _check_merges(ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]]) -> None:
    """Raise NotNative unless tiktoken on `ranks` encodes exactly as these merges do."""
    last = -1
    for i, (a, b) in enumerate(merges):
        rank = ranks[a + b]
        if rank <= last:
            raise NotNative(f"merge {i} ({a + b!r}) has id {rank}, not above the previous merge's {last}")
        if bpe(ranks, a + b, rank) != [a, b]:
            raise NotNative(f"merge {i} ({a!r} + {b!r}) is not the pair lower-ranked merges reach")
        last = rank


# ------------------------------------------------------------------ loading
def load_tokenizer(
    path: str | os.PathLike, *, pattern: str | None = None, special_tokens: dict[str, int] | None = None
) -> Tokenizer:
    """Load a tokenizer directory or file, or the built-in 'gpt2'. Never fetches anything.

    pattern, special_tokens: for tiktoken rank files, which store neither
    (default: GPT-4's split pattern and no special tokens).
    """
    p = Path(path)
    if not p.exists():
        if str(path) == "gpt2":
            return _load_gpt2()
        raise AcornError(f"{p}: no such file or directory; give a tokenizer directory or file ({LOOKED_FOR}), or 'gpt2'")
    folder = p if p.is_dir() else p.parent
    name = p.name if p.is_dir() else p.stem
    if p.is_dir():
        p = _pick_file(p)
    config = _read_config(folder)
    if p.name == "vocab.json" or p.name == "merges.txt":
        tok = _load_vocab_merges(folder / "vocab.json", folder / "merges.txt", config, name)
    elif p.suffix == ".json":
        tok = _load_tokenizer_json(p, config, name)
    elif _looks_like_tiktoken(p):
        ranks = read_tiktoken_ranks(p)
        specials = special_tokens if special_tokens is not None else config["added_special"]
        tok = Tokenizer(ranks, specials, resolve_pattern(pattern or GPT4_PATTERN), name=name)
    elif p.suffix == ".model":
        raise AcornError(f"{p}: SentencePiece .model files are not read directly; convert it to tokenizer.json with "
                         "transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
    else:
        raise AcornError(f"{p}: unknown tokenizer format; give {LOOKED_FOR}")
    tok.bos_token = config["bos"] or tok.bos_token
    tok.eos_token = config["eos"] or tok.eos_token
    tok.pad_token = config["pad"] or tok.pad_token
    tok.chat_template = config["chat_template"]
    tok.chat_format = config["chat_format"]
    return tok


def _load_gpt2() -> Tokenizer:
    ranks = _parse_tiktoken(gzip.decompress(GPT2_RANKS.read_bytes()), GPT2_RANKS)
    eot = "<|endoftext|>"
    return Tokenizer(ranks, {eot: 50256}, GPT2_PATTERN, name="gpt2", bos_token=eot, eos_token=eot)


def _pick_file(folder: Path) -> Path:
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder / "vocab.json"
    ranks = sorted(folder.glob("*.tiktoken"))
    if len(ranks) == 1:
        return ranks[0]
    if len(ranks) > 1:
        raise AcornError(f"{folder}: several .tiktoken files ({', '.join(r.name for r in ranks)}); point at one of them")
    raise AcornError(f"{folder}: no tokenizer files found (looked for {LOOKED_FOR}); point at a tokenizer directory")


def _looks_like_tiktoken(p: Path) -> bool:
    if p.suffix == ".tiktoken":
        return True
    with open(p, "rb") as f:
        return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\s*", f.readline()) is not None


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one 'base64(token bytes) rank' per line."""
    return _parse_tiktoken(Path(path).read_bytes(), path)


def _parse_tiktoken(data: bytes, path) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise AcornError(f"{path}:{lineno}: not a 'base64token rank' line; is this a tiktoken file?") from None
    if len(set(ranks.values())) != len(ranks):
        raise AcornError(f"{path}: two tokens share a rank; the rank file is corrupt")
    return ranks


def _read_config(folder: Path) -> dict:
    """bos/eos/pad, chat template and added special tokens from tokenizer_config.json
    and special_tokens_map.json, when present."""
    cfg = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    smap = read_json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}

    def content(v):  # a token is written as "text" or as an AddedToken dict
        return v.get("content") if isinstance(v, dict) else v

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{name, template}, ...]: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():  # transformers >= 4.43 writes it apart
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    added = [{"id": int(i), **t} for i, t in (cfg.get("added_tokens_decoder") or {}).items()]
    return {
        "bos": content(cfg.get("bos_token") or smap.get("bos_token")),
        "eos": content(cfg.get("eos_token") or smap.get("eos_token")),
        "pad": content(cfg.get("pad_token") or smap.get("pad_token")),
        "chat_template": template,
        "chat_format": cfg.get("acorn_chat_format"),
        "added": added,
        "added_special": {t["content"]: t["id"] for t in added if t.get("special", True)},
    }


def _load_vocab_merges(vocab_path: Path, merges_path: Path, config: dict, name: str) -> Tokenizer:
    """GPT-2's two files. Vocabulary entries that are neither a byte nor a merge
    (GPT-2's <|endoftext|>) are special tokens."""
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict):
        raise AcornError(f"{vocab_path}: expected a JSON object token -> id; is this a vocab.json?")
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = _merges([ln for ln in lines if ln and not ln.startswith("#version")], vocab, merges_path)
    made = {a + b for a, b in merges}
    added = [dict(t) for t in config["added"]]
    known = {t["content"] for t in added}
    for s, i in vocab.items():
        b = token_bytes(s)
        if s not in known and (b is None or len(b) > 1 and s not in made):
            added.append({"id": i, "content": s, "special": True})
    eot = "<|endoftext|>" if [t["content"] for t in added] == ["<|endoftext|>"] else None
    try:
        return _native(vocab, merges, added, GPT2_PATTERN, False, name, bos_token=eot, eos_token=eot)
    except NotNative as why:
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        return _fallback(json.loads(tk.to_str()) | {"added_tokens": _added_json(added)}, name, str(why))


def _load_tokenizer_json(path: Path, config: dict, name: str) -> Tokenizer:
    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise AcornError(f"{path}: no 'model' object; this is not a Hugging Face tokenizer.json")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind not in ("BPE", "WordPiece", "WordLevel", "Unigram"):
        raise AcornError(f"{path}: unknown tokenizer model type {kind!r}; Acorn reads BPE, WordPiece, WordLevel "
                         "and Unigram tokenizer.json files")
    added = data.get("added_tokens") or []
    try:
        pattern, nfc = _byte_level_shape(data)
        return _native(model["vocab"], _merges(model["merges"], model["vocab"], path), added, pattern, nfc, name)
    except NotNative as why:
        try:
            return _fallback(data, name, str(why))
        except Exception as e:  # the Rust library's own complaint about the file
            raise AcornError(f"{path}: the tokenizers library cannot read it ({e}); is the file complete?") from None


def _merges(raw: list, vocab: dict[str, int], where) -> list[tuple[str, str]]:
    """Merges written as "a b" or ["a", "b"], each checked against the vocabulary."""
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]
    for m in merges:
        if len(m) != 2 or m[0] not in vocab or m[1] not in vocab or m[0] + m[1] not in vocab:
            raise AcornError(f"{where}: merge {' '.join(m)!r} names tokens missing from the vocabulary; the merges "
                             "and the vocabulary do not belong together")
    return merges


def _byte_level_shape(data: dict) -> tuple[str, bool]:
    """(split pattern, NFC?) when the pipeline is byte-level BPE as tiktoken runs it."""
    model, pre, norm, dec = data["model"], data.get("pre_tokenizer"), data.get("normalizer"), data.get("decoder")
    if model.get("type", "BPE") != "BPE":
        raise NotNative(f"model type {model['type']}")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise NotNative(f"model.{key} is set")
    if model.get("byte_fallback"):
        raise NotNative("byte_fallback")
    # unk_token and ignore_merges need no check: `_native` requires every byte
    # that UTF-8 uses to have a token, and every token to be reachable by merges.
    norms = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    if any(n.get("type") != "NFC" for n in norms):
        raise NotNative(f"normalizer {norm}")
    if not dec or dec.get("type") != "ByteLevel":
        raise NotNative(f"decoder {dec and dec.get('type')}")
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        raise NotNative("pre-tokenizer is not ByteLevel without prefix space")
    if len(steps) == 1 and steps[0].get("use_regex", True):
        return GPT2_PATTERN, bool(norms)
    if len(steps) == 2 and not steps[1].get("use_regex", True):
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex") if split.get("type") == "Split" else None
        if regex is not None and split.get("behavior") == "Isolated" and not split.get("invert"):
            return regex, bool(norms)
    raise NotNative(f"pre-tokenizer {json.dumps(pre)[:200]}")


def _native(vocab: dict[str, int], merges, added: list[dict], pattern: str, nfc: bool, name: str, **kw) -> Tokenizer:
    """Byte-level BPE on tiktoken, or NotNative if that would change any id."""
    added_ids = {t["id"] for t in added}
    made = {a + b for a, b in merges}
    if len(made) != len(merges):
        raise NotNative("two merges make the same token")
    ranks = {}
    for s, i in vocab.items():
        b = token_bytes(s)
        if i in added_ids and (b is None or len(b) > 1 and s not in made):
            continue  # only the added token (neox's <|endoftext|>); a byte or merge keeps its place in BPE
        if b is None:
            raise NotNative(f"vocabulary entry {s!r} is not byte-level")
        ranks[b] = i
    byte_merges = [(token_bytes(a), token_bytes(b)) for a, b in merges]
    stray = [b for b in ranks if len(b) > 1 and token_str(b) not in made]
    if stray:
        raise NotNative(f"{len(stray)} tokens (e.g. {stray[0]!r}) are neither bytes nor merges")
    missing = set(range(256)) - {b[0] for b in ranks if len(b) == 1} - NEVER_IN_UTF8
    if missing:  # Hugging Face drops such bytes silently; tiktoken would fail
        raise NotNative(f"bytes {sorted(missing)[:5]} have no token")
    _check_merges(ranks, byte_merges)
    for t in added:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise NotNative(f"added token {t['content']!r} strips or matches single words")
    specials = {t["content"]: t["id"] for t in added if t.get("special")}
    plain_added = [t for t in added if not t.get("special")]
    try:
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens={t["content"]: t["id"] for t in added})
    except Exception as e:  # a regex fancy-regex cannot compile, clashing ids
        raise NotNative(f"tiktoken refused it ({e})") from None
    if nfc or plain_added:
        enc = AddedTokensEncoding(enc, nfc=nfc, added=added)
    return Tokenizer(ranks, specials, pattern, name=name, encoding=enc, **kw)


class AddedTokensEncoding:
    """tiktoken plus the two things Hugging Face does before BPE, in its order:
    cut the text at added tokens (leftmost-longest; non-normalized tokens on
    the raw text first), normalize the pieces between (NFC), cut those at the
    normalized added tokens, and byte-pair-encode what is left."""

    def __init__(self, enc: tiktoken.Encoding, *, nfc: bool, added: list[dict]):
        self.inner, self.nfc, self.added = enc, nfc, added
        self.n_vocab = enc.n_vocab
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        # (special?, normalized?) -> {text as matched: id}; normalized tokens are
        # matched in their normalized form, as `tokenizers` does.
        self._words: dict[tuple[bool, bool], dict[str, int]] = {}
        for t in added:
            norm = bool(t.get("normalized", not t.get("special")))
            text = self._normalize(t["content"]) if norm else t["content"]
            self._words.setdefault((bool(t.get("special")), norm), {})[text] = t["id"]
        self.decode_bytes = enc.decode_bytes
        self.decode_single_token_bytes = enc.decode_single_token_bytes

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self.nfc else text

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)

    def encode(self, text: str, *, allowed_special=(), disallowed_special=()) -> list[int]:
        allowed = set(self.special_tokens.values()) if allowed_special == "all" else {
            self.special_tokens[s] for s in allowed_special if s in self.special_tokens}

        def words(normalized: bool) -> dict[str, int]:
            special = {s: i for s, i in self._words.get((True, normalized), {}).items() if i in allowed}
            return self._words.get((False, normalized), {}) | special

        raw, norm = words(False), words(True)
        raw_re, norm_re = _literal_re(tuple(sorted(raw))), _literal_re(tuple(sorted(norm)))
        ids: list[int] = []
        for piece, tid in _cut(text, raw_re, raw):
            if tid is not None:
                ids.append(tid)
                continue
            for sub, tid2 in _cut(self._normalize(piece), norm_re, norm):
                ids.append(tid2) if tid2 is not None else ids.extend(self.inner.encode_ordinary(sub))
        return ids


@lru_cache(maxsize=64)
def _literal_re(words: tuple[str, ...]) -> re.Pattern | None:
    # Longest first: at the leftmost position that matches, the longest word wins.
    words = sorted((w for w in words if w), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, words))) if words else None


def _cut(text: str, rx: re.Pattern | None, ids: dict[str, int]):
    """Yield (piece, None) for text between matches and (word, id) for matches."""
    start = 0
    for m in rx.finditer(text) if rx else ():
        if m.start() > start:
            yield text[start:m.start()], None
        yield m.group(), ids[m.group()]
        start = m.end()
    if start < len(text):
        yield text[start:], None


# ----------------------------------------------------------- the fallback
class HFEncoding:
    """tiktoken.Encoding's API over a `tokenizers.Tokenizer`, for the files
    tiktoken cannot express. Special tokens are plain text unless allowed:
    one copy of the tokenizer runs with `encode_special_tokens = True`."""

    def __init__(self, data: dict, reason: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.data, self.why_not_native = data, reason
        text = json.dumps(data)
        self.tk, self.plain = HFTokenizer.from_str(text), HFTokenizer.from_str(text)
        self.plain.encode_special_tokens = True
        self.special_tokens = {t.content: i for i, t in self.tk.get_added_tokens_decoder().items() if t.special}
        self.n_vocab = max(self.tk.get_vocab(with_added_tokens=True).values()) + 1
        self._bytes: dict[int, bytes] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, *, allowed_special=(), disallowed_special=()) -> list[int]:
        if allowed_special == "all" or set(allowed_special) >= set(self.special_tokens):
            return self.tk.encode(text, add_special_tokens=False).ids
        allowed = {s: self.special_tokens[s] for s in allowed_special if s in self.special_tokens}
        # A subset of specials: cut at them here, encode the rest as plain text.
        ids: list[int] = []
        for piece, tid in _cut(text, _literal_re(tuple(sorted(allowed))), allowed):
            ids.append(tid) if tid is not None else ids.extend(self.encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids) -> bytes:
        return self.tk.decode(list(ids), skip_special_tokens=False).encode("utf-8")

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        """A token's bytes, for streaming: exact for byte-level and byte-fallback
        (<0xAB>) tokens; else the piece with ▁ as a space (WordPiece: a space
        before each word, none before ##), which may differ from decode()."""
        if token_id not in self._bytes:
            s = self.tk.id_to_token(token_id) or ""
            if token_id in self.special_tokens.values():
                b = s.encode()
            elif (m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", s)) and self.data["model"].get("byte_fallback"):
                b = bytes([int(m.group(1), 16)])
            elif (self.data.get("decoder") or {}).get("type") == "ByteLevel" and token_bytes(s) is not None:
                b = token_bytes(s)
            elif self.data["model"].get("type") == "WordPiece":  # words are joined by spaces, ## continues one
                b = (s[2:] if s.startswith("##") else " " + s).encode()
            else:
                b = s.replace("▁", " ").encode()
            self._bytes[token_id] = b
        return self._bytes[token_id]


def _fallback(data: dict, name: str, reason: str) -> Tokenizer:
    enc = HFEncoding(data, reason)
    # No tiktoken split pattern: `tokenizers` runs its own pre-tokenizer.
    return Tokenizer(None, enc.special_tokens, "", name=name, encoding=enc)


def _added_json(added: list[dict]) -> list[dict]:
    """Added tokens as tokenizer.json writes them."""
    return [
        {"id": t["id"], "content": t["content"], "single_word": bool(t.get("single_word")),
         "lstrip": bool(t.get("lstrip")), "rstrip": bool(t.get("rstrip")),
         "normalized": bool(t.get("normalized", not t.get("special"))), "special": bool(t.get("special"))}
        for t in sorted(added, key=lambda t: t["id"])
    ]


# ------------------------------------------------------------------- saving
def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike, *, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise AcornError(f"{out}: exists and is not a directory; choose another --out")
    specials = [{"id": i, "content": s, "special": True, "normalized": False} for s, i in tok.special_tokens.items()]
    enc = tok.encoding
    if isinstance(enc, HFEncoding):  # what tiktoken cannot express is written back as it was read
        data = enc.data
    else:  # added tokens as imported (gpt-neox's runs of spaces), else Acorn's specials
        data = _byte_level_json(tok.mergeable_ranks, tok.pattern, nfc=getattr(enc, "nfc", False),
                                added=getattr(enc, "added", None) or specials)
    write_json(out / "tokenizer.json", data)
    named = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token),
                               ("pad_token", tok.pad_token)) if v}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "model_max_length": model_max_length or NO_MAX_LENGTH,
        # The ids decode to exactly the text; transformers must not tidy spaces.
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(t.pop("id")): t for t in _added_json(specials)},
    }
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    if tok.chat_format:
        config["acorn_chat_format"] = tok.chat_format
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "special_tokens_map.json", named)
    return out


def _byte_level_json(ranks: dict[bytes, int], pattern: str, *, nfc: bool, added: list[dict]) -> dict:
    """tokenizer.json for byte-level BPE: split by the pattern, map bytes to
    characters, apply the merges recovered from the ranks."""
    from tokenizers import Regex

    try:  # transformers would fail later, on the user's side
        Regex(pattern)
    except Exception as e:
        raise AcornError(f"split pattern {pattern!r} does not compile in tokenizers' regex engine ({e}); "
                         "train with a pattern both engines read (e.g. 'gpt4')") from None
    merges = recover_merges(ranks)
    vocab = {token_str(b): i for b, i in sorted(ranks.items(), key=lambda kv: kv[1])}
    for t in added:  # tokenizers renumbers an added token that is not in the model's vocabulary
        vocab.setdefault(t["content"], t["id"])
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_json(added),
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            # Onig (tokenizers' regex engine) understands the possessive ?+ and ++
            # of GPT-4's pattern; tests/tokenizer/test_files.py checks the splits agree.
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{token_str(a)} {token_str(b)}" for a, b in merges],
        },
    }
