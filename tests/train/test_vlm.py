"""The VLM stages (issue 20, item 3): <image> added to a trained tokenizer and model, image
conversations packed with their pictures, the two stages and the caption control through the one
loop, and greedy exact match per question kind."""

from __future__ import annotations

import json

import pytest
import torch

from acorn.model.transformer import ModelConfig, Transformer, resize_vocab
from acorn.train.sft_data import IGNORE, pack
from acorn.vision.llava import IMAGE_TOKEN, add_image_token
from acorn.vision.encoder import VisionConfig

TINY_VISION = dict(image_size=32, patch_size=8, d_model=32, n_layer=2, n_head=2, d_ff=64)


@pytest.fixture(scope="module")
def pictured(tmp_path_factory):
    from acorn.data.world import generate_world

    out = tmp_path_factory.mktemp("pictured")
    generate_world(out, seed=0, size="tiny", quiet=True, images=60)
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory, pictured):
    """(chat model directory, CLIP directory): a tiny decoder with a BPE of the world's text, a tiny CLIP."""
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.vision.clip import CLIP, CLIPConfig, TextConfig

    texts = [json.loads(line)["text"] for line in (pictured / "pretrain.jsonl").read_text().splitlines()]
    tok = Tokenizer.train(texts, 400)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("parts")
    # init_std 0.3: a random decoder whose output the image rows can move (at 0.02 it is near uniform whatever
    # they are, and a projector trained into a frozen one would learn nothing)
    Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=256,
                            init_std=0.3)).save(out / "chat", tokenizer=tok)
    CLIP(CLIPConfig(VisionConfig(**TINY_VISION), TextConfig(vocab_size=300, max_len=24, d_model=32, n_layer=1,
                                                            n_head=2, d_ff=64, bos_id=256, eos_id=257, pad_id=258),
                    projection_dim=16)).save(out / "clip")
    return out / "chat", out / "clip"


# ---------------------------------------------------------------- the image token
@pytest.mark.parametrize("tied", [True, False])
def test_the_image_token_is_appended_and_every_old_id_keeps_its_meaning(tok, tmp_path, tied):
    from acorn.tokenizer.bpe import Tokenizer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=16, n_head=2,
                                    tie_embeddings=tied))
    ids = torch.tensor([tok.encode("the cat sat") + [tok.eos_id]])
    before = model(ids).logits
    old_rows = model.model.embed_tokens.weight.detach().clone()
    new_tok, image_id = add_image_token(tok, model)

    assert image_id == tok.vocab_size and new_tok.vocab_size == tok.vocab_size + 1
    assert model.config.vocab_size == tok.vocab_size + 1 == model.lm_head.weight.shape[0]
    assert {k: v for k, v in new_tok.special_tokens.items() if k != IMAGE_TOKEN} == tok.special_tokens
    assert new_tok.encode("the cat <image>") == tok.encode("the cat <image>")  # typed text stays text
    assert new_tok.encode("<image>", allowed_special="all") == [image_id]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    torch.testing.assert_close(model.model.embed_tokens.weight[:image_id], old_rows)
    torch.testing.assert_close(model.model.embed_tokens.weight[image_id], old_rows.mean(0))
    torch.testing.assert_close(model(ids).logits[..., :image_id], before)  # old ids: the same model
    assert add_image_token(new_tok, model)[1] == image_id and model.config.vocab_size == image_id + 1  # once only

    new_tok.save(tmp_path / "tok")
    back = Tokenizer.from_pretrained(tmp_path / "tok")
    assert back.special_tokens == new_tok.special_tokens and back.vocab_size == new_tok.vocab_size
    msgs = [{"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "Hi"}]}]
    assert back.apply_chat_template(msgs, image_tokens=3).count(image_id) == 3


def test_a_vocabulary_is_never_shrunk(tok):
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=16, n_head=2))
    with pytest.raises(Exception, match="cannot shrink"):
        resize_vocab(model, tok.vocab_size - 1)


# ------------------------------------------------------------------ the data
def _llava(chat_dir, clip_dir):
    from acorn.config import load
    from acorn.train.vlm import VLMConfig, load_vlm

    cfg = load(VLMConfig, None, ["--clip", str(clip_dir), "--model", str(chat_dir)])
    model, tok = load_vlm(cfg, torch.device("cpu"))
    return model.eval(), tok


def test_image_conversations_train_the_answer_and_pack_with_their_pictures(pictured, parts):
    from acorn.train.vlm_data import examples, image_batch
    from acorn.vision.images import load_pixels
    from acorn.vision.zero_shot import read_world_images

    model, tok = _llava(*parts)
    rows = read_world_images(pictured, "train")[:6]
    n = model.config.tokens_per_image
    captions = examples(tok, rows, 1, image_tokens=n, max_len=256)
    assert len(captions) == len(rows)
    for ex, row in zip(captions, rows):
        assert ex.ids.count(model.config.image_token_id) == n and ex.images == (rows.index(row),)
        assert tok.decode([i for i, m in zip(ex.ids, ex.mask) if m]) == row["caption"] + "<|end|>"
    asked = examples(tok, rows, 2, image_tokens=n, max_len=256)
    assert len(asked) == sum(len(r["qa"]) for r in rows)

    # Three conversations packed in one row read their own pictures: the loss is the sum of theirs alone.
    pixels = load_pixels([r["path"] for r in rows], model.config.vision.image_size)
    v = model.config.vision
    with torch.no_grad():
        for p in model.projector.parameters():  # away from init so the pictures move the logits
            p.add_(0.5 * torch.randn_like(p))
    packed = image_batch(pack(captions[:3], 256, tok.pad_id), pixels, v.image_mean, v.image_std)
    assert packed.x.shape[0] == 1 and packed.pixel_values.shape[0] == 3
    with torch.no_grad():
        together = model(packed.x, pixel_values=packed.pixel_values, targets=packed.y,
                         document_ids=packed.document_ids).loss * (packed.y != IGNORE).sum()
        alone = 0.0
        for ex in captions[:3]:
            b = image_batch(pack([ex], len(ex.ids) - 1, tok.pad_id), pixels, v.image_mean, v.image_std)
            alone += model(b.x, pixel_values=b.pixel_values, targets=b.y).loss * (b.y != IGNORE).sum()
        swapped = image_batch(pack(captions[:3], 256, tok.pad_id), pixels.flip(0)[3:], v.image_mean, v.image_std)
        wrong = model(swapped.x, pixel_values=swapped.pixel_values, targets=swapped.y,
                      document_ids=swapped.document_ids).loss * (swapped.y != IGNORE).sum()
    torch.testing.assert_close(together, alone, atol=1e-3, rtol=1e-5)
    assert abs(float(wrong - together)) > 1e-3  # other pictures, another loss: the pictures are read


def test_a_conversation_too_long_for_a_row_is_refused_not_cut(pictured, parts):
    from acorn.errors import AcornError
    from acorn.train.vlm_data import examples
    from acorn.vision.zero_shot import read_world_images

    model, tok = _llava(*parts)
    with pytest.raises(AcornError, match="raise --train.seq_len"):
        examples(tok, read_world_images(pictured, "train")[:2], 1, image_tokens=model.config.tokens_per_image,
                 max_len=20)


# ------------------------------------------------------------ scoring and chance
class _Oracle(torch.nn.Module):
    """Logits that put the next token of known conversations on top, except at the positions told to be wrong."""

    def __init__(self, full: torch.Tensor, wrong: dict[int, int], config=None):
        super().__init__()
        self.full, self.wrong, self.config = full, wrong, config
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen_pixels, self.offset = None, 0  # the conversations come in order, in batches

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, pixel_values=None, **kwargs):
        self.seen_pixels = pixel_values
        b, t = input_ids.shape
        rows = range(self.offset, self.offset + b)
        assert torch.equal(input_ids, self.full[rows.start:rows.stop, :t])
        nxt = self.full[rows.start:rows.stop, 1 : t + 1].clone()
        for row, pos in self.wrong.items():
            if row in rows:
                nxt[row - self.offset, pos] = (nxt[row - self.offset, pos] + 1) % 500
        self.offset += b
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, 500).float()})()


def test_greedy_exact_match_needs_every_answer_token_and_the_end_of_turn(pictured, parts):
    from acorn.eval.vlm import answer_hits, question_items
    from acorn.train.vlm_data import render
    from acorn.vision.zero_shot import read_world_images

    _, tok = _llava(*parts)
    rows = read_world_images(pictured, "eval")
    items = question_items(rows)[:4]
    exs = [render(tok, rows[i], qa, i, image_tokens=None) for i, qa in items]
    width = max(len(e.ids) for e in exs)
    full = torch.tensor([e.ids + [tok.pad_id] * (width - len(e.ids)) for e in exs])
    last = [max(j for j, m in enumerate(e.mask) if m) for e in exs]  # the end-of-turn token
    first = [min(j for j, m in enumerate(e.mask) if m) for e in exs]
    # Row 1 errs on its end of turn, row 2 on its first answer token, row 3 just before the answer (the prompt,
    # which is not scored): logits at position p predict token p + 1.
    wrong = {1: last[1] - 1, 2: first[2] - 1, 3: first[3] - 2}
    hits = answer_hits(_Oracle(full, wrong), tok, rows, items, image_tokens=None, batch_size=2)
    assert hits == [True, False, False, True]


def test_chance_and_the_per_kind_limit(pictured):
    from acorn.data import world_images as W
    from acorn.eval.vlm import chance, question_items
    from acorn.vision.zero_shot import read_world_images, world_people

    rows = read_world_images(pictured, "eval")
    odds = chance(pictured)
    assert odds["count"] == 1 / 5 and odds["colour"] == 1 / 6 and odds["number"] == 1 / 100
    assert odds["name_seen"] == 1 / len(world_people(pictured)) and 0 < odds["fact"] < 1
    items = question_items(rows, limit=1)
    kinds = [qa["kind"] for _, qa in items]
    assert len(kinds) == len(set(kinds)) and {"count", "colour", "shape", "number"} <= set(kinds)
    assert set(kinds) <= {k for ks in W.QA_KINDS.values() for k in ks} | {"name_seen", "name_held", "fact_seen",
                                                                           "fact_held"}


# ------------------------------------------------------------------ the CLI
def test_vlm_train_refuses_what_it_cannot_run_in_one_line(pictured, parts, tmp_path, capsys):
    from acorn.cli import main
    from acorn.data.world import generate_world

    chat, clip = parts
    cases = [
        (["--world", str(pictured), "--model", str(chat)], "pass --clip CLIP_DIR"),
        (["--world", str(pictured), "--clip", str(clip), "--model", str(chat), "--stage", "3"], "stage"),
        (["--world", str(pictured), "--clip", str(clip), "--model", str(chat), "--train_encoder", "true"],
         "stage 2"),
        (["--world", str(pictured), "--model", str(chat), "--images", "caption"], "--stage 2"),
        (["--world", str(pictured), "--model", str(chat), "--images", "caption", "--stage", "2", "--train_encoder",
          "true"], "without --train_encoder"),
        (["--world", str(pictured), "--model", str(chat), "--images", "words"], "images"),
        (["--world", str(pictured), "--clip", str(clip), "--model", str(chat), "--init_from", str(chat),
          "--stage", "2"], "--init_from is a whole VLM"),
    ]
    plain = tmp_path / "plain"
    generate_world(plain, seed=0, size="tiny", quiet=True)
    cases.append((["--world", str(plain), "--clip", str(clip), "--model", str(chat)], "no pictures"))
    for args, message in cases:
        assert main(["vlm", "train", "--out", str(tmp_path / "run"), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_vlm_train_help_lists_every_setting(capsys):
    from acorn.cli import main

    with pytest.raises(SystemExit):
        main(["vlm", "train", "--help"])
    out = capsys.readouterr().out
    for key in ("--stage INT", "--clip STR", "--model STR", "--init_from STR", "--train_encoder", "--images",
                "--optim.lr", "--train.seq_len", "--eval.every"):
        assert key in out, key


# ---------------------------------------------------------- the stages, end to end
TINY_RUN = ["--train.seq_len", "128", "--train.micro_batch", "4", "--train.batch_tokens", "512",
            "--optim.warmup_steps", "2", "--optim.lr", "3e-3", "--eval.every", "100", "--eval.batches", "2"]


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_stage_1_trains_the_projector_alone_and_stage_2_the_decoder_too(pictured, parts, tmp_path):
    from acorn.cli import main
    from acorn.model.checkpoint import load
    from acorn.vision.clip import load_clip
    from acorn.vision.llava import load_llava

    chat, clip = parts
    vision = _state(load_clip(clip)[0].vision_model)
    decoder = _state(load(chat, device="cpu"))
    assert main(["vlm", "train", "--stage", "1", "--clip", str(clip), "--model", str(chat), "--world",
                 str(pictured), "--out", str(tmp_path / "s1"), "--train.max_steps", "30", *TINY_RUN, "--optim.lr", "1e-2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-5:]) < sum(r["loss"] for r in rows[:5]) - 0.5  # captions are learnt
    s1, tok = load_llava(tmp_path / "s1" / "model", device="cpu", dtype="float32")
    assert IMAGE_TOKEN in tok.special_tokens and s1.config.image_token_id == tok.special_tokens[IMAGE_TOKEN]
    assert not _changed(vision, s1.vision)
    after = s1.language.state_dict()
    assert after.keys() == decoder.keys()
    for k, v in decoder.items():  # the decoder is frozen: every old weight and vocabulary row as it was
        assert torch.equal(after[k][: len(v)] if v.dim() else after[k], v), k

    projector = _state(s1.projector)
    assert main(["vlm", "train", "--stage", "2", "--init_from", str(tmp_path / "s1" / "model"), "--world",
                 str(pictured), "--out", str(tmp_path / "s2"), "--train.max_steps", "4", *TINY_RUN]) == 0
    s2, _ = load_llava(tmp_path / "s2" / "model", device="cpu", dtype="float32")
    assert not _changed(vision, s2.vision)
    assert _changed(projector, s2.projector) and _changed(_state(s1.language), s2.language)
    assert main(["vlm", "train", "--stage", "2", "--init_from", str(tmp_path / "s1" / "model"), "--world",
                 str(pictured), "--out", str(tmp_path / "s2e"), "--train_encoder", "true", "--train.max_steps", "2",
                 *TINY_RUN]) == 0
    assert _changed(vision, load_llava(tmp_path / "s2e" / "model", device="cpu", dtype="float32")[0].vision)


def test_the_caption_control_is_a_text_model_and_vlm_eval_scores_both(pictured, parts, tmp_path, capsys):
    from acorn.cli import main

    chat, clip = parts
    assert main(["vlm", "train", "--stage", "2", "--images", "caption", "--model", str(chat), "--world",
                 str(pictured), "--out", str(tmp_path / "control"), "--train.max_steps", "2", *TINY_RUN]) == 0
    capsys.readouterr()
    assert main(["vlm", "eval", str(tmp_path / "control" / "model"), "--world", str(pictured), "--prefill-runs",
                 "2", "--out", str(tmp_path / "control.json")]) == 0
    out = capsys.readouterr().out
    assert "caption in the prompt" in out and "count (1-5)" in out and "tokens per image" not in out
    result = json.loads((tmp_path / "control.json").read_text())
    assert result["questions"] == sum(r["n"] for r in result["accuracy"].values()) > 0
    assert main(["vlm", "train", "--stage", "1", "--clip", str(clip), "--model", str(chat), "--world",
                 str(pictured), "--out", str(tmp_path / "s1"), "--train.max_steps", "1", *TINY_RUN]) == 0
    capsys.readouterr()
    assert main(["vlm", "eval", str(tmp_path / "s1" / "model"), "--world", str(pictured), "--limit", "2",
                 "--prefill-runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "tokens per image: 16" in out and "image prompt" in out


def test_teacher_forced_greedy_match_is_the_engines_greedy_generation(pictured, parts):
    """The eval's scoring path against the one engine: the tokens the engine generates greedily
    are exactly the tokens the teacher-forced check accepts, and one token off is refused."""
    from acorn.eval.vlm import greedy_match
    from acorn.infer.engine import Engine
    from acorn.infer.sampling import SamplingParams
    from acorn.model.checkpoint import load
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.train.vlm_data import conversation
    from acorn.vision.zero_shot import read_world_images

    chat, _ = parts
    model, tok = load(chat, device="cpu"), Tokenizer.from_pretrained(chat)
    rows = read_world_images(pictured, "eval")[:4]
    prompts = [tok.apply_chat_template(conversation(r, r["qa"][0]["question"], None, image=False),
                                       add_generation_prompt=True) for r in rows]
    done = Engine(model, tok).generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    sequences = [p + c.token_ids for p, c in zip(prompts, done)]
    masks = [[0] * len(p) + [1] * len(c.token_ids) for p, c in zip(prompts, done)]
    assert all(len(c.token_ids) == 5 for c in done)
    assert greedy_match(model, sequences, masks, tok.pad_id) == [True] * 4
    off = [s[:-1] + [(s[-1] + 1) % tok.vocab_size] for s in sequences]
    assert greedy_match(model, off, masks, tok.pad_id) == [False] * 4


def test_teacher_forced_greedy_match_is_the_engines_greedy_generation_with_pictures(pictured, parts):
    """The same for a VLM: the engine prefills the picture's rows and decodes greedily; the
    teacher-forced check, given the same pictures, accepts exactly those tokens."""
    from acorn.eval.vlm import greedy_match
    from acorn.infer.engine import Engine
    from acorn.infer.sampling import SamplingParams
    from acorn.train.vlm_data import normalize, render
    from acorn.vision.images import load_pixels
    from acorn.vision.zero_shot import read_world_images

    model, tok = _llava(*parts)
    with torch.no_grad():  # away from init so the pictures move the tokens
        for p in model.projector.parameters():
            p.add_(0.5 * torch.randn_like(p))
    rows = read_world_images(pictured, "eval")[:4]
    v = model.config.vision
    prompts = [render(tok, r, r["qa"][0], 0, image_tokens=model.config.tokens_per_image, answer=False).ids
               for r in rows]
    done = Engine(model, tok).generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
                                       images=[[r["path"]] for r in rows])
    sequences = [p + c.token_ids for p, c in zip(prompts, done)]
    masks = [[0] * len(p) + [1] * len(c.token_ids) for p, c in zip(prompts, done)]
    pixels = normalize(load_pixels([r["path"] for r in rows], v.image_size), v.image_mean, v.image_std)
    assert greedy_match(model, sequences, masks, tok.pad_id, pixels) == [True] * 4
    other = greedy_match(model, sequences, masks, tok.pad_id, pixels.flip(0))
    assert other != [True] * 4  # other pictures, other tokens: the check reads the pictures
