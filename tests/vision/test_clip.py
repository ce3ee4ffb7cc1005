"""CLIP (acorn.vision): transformers' CLIPModel as the oracle for the model and the checkpoint,
transformers' and sentence-transformers' contrastive losses for the loss, and a tiny run on the
world's pictures through the one loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from acorn.train.embed import info_nce
from acorn.vision.clip import CLIP, CLIPConfig, TextConfig, caption_ids, load_clip, pad_captions, zero_shot
from acorn.vision.encoder import VisionConfig

TINY_VISION = dict(image_size=32, patch_size=8, d_model=32, n_layer=2, n_head=2, d_ff=64)
TINY_TEXT = dict(vocab_size=300, max_len=24, d_model=32, n_layer=1, n_head=2, d_ff=64, bos_id=256, eos_id=257,
                 pad_id=258)


def _tiny(act: str = "gelu") -> CLIP:
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(VisionConfig(**TINY_VISION, act=act), TextConfig(**TINY_TEXT, act=act), projection_dim=16))
    with torch.no_grad():  # away from the initial values (zero biases, unit gains) so that every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _captions(lengths=(5, 9, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[256] + [97 + (7 * i + j) % 26 for j in range(n)] + [257] for i, n in enumerate(lengths)]
    return pad_captions(rows, 258)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_the_checkpoint_is_a_transformers_clip_model_with_the_same_outputs(tmp_path, act):
    from transformers import CLIPModel

    model = _tiny(act)
    model.save(tmp_path / "clip")
    hf = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    pixels = torch.rand(3, 3, 32, 32)
    ids, lengths = _captions()
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        images, texts, scale = model(pixels, ids, lengths)
        ours = model.vision_model(model.vision_model.normalize(pixels), hidden_states=True)
        out = hf(input_ids=ids, attention_mask=mask, pixel_values=model.vision_model.normalize(pixels),
                 output_hidden_states=True, return_loss=True)
    torch.testing.assert_close(images, out.image_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(texts, out.text_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(scale * images @ texts.T, out.logits_per_image, atol=1e-4, rtol=0)
    # Every layer's patch tokens, which a LLaVA projector reads (its vision_feature_layer), are CLIP's.
    for a, b in zip(ours.hidden_states, out.vision_model_output.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # The training loss is CLIPModel's own (return_loss: the mean over pairs, ours the sum).
    loss, _ = info_nce(images, texts, scale, symmetric=True)
    torch.testing.assert_close(loss / 3, out.loss, atol=1e-5, rtol=0)

    again, _ = load_clip(tmp_path / "clip")  # and Acorn reads its own checkpoint back exactly
    with torch.no_grad():
        for a, b in zip(again(pixels, ids, lengths), (images, texts, scale)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_clip_model_made_by_transformers_loads(tmp_path):
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel

    torch.manual_seed(1)
    hf = CLIPModel(HFConfig(  # transformers' defaults: quick_gelu, OpenAI's
        text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, eos_token_id=257, bos_token_id=256,
                         pad_token_id=258),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2), projection_dim=16)).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, tok = load_clip(tmp_path / "hf")
    assert tok is None and model.config.vision.act == "quick_gelu"
    pixels, (ids, lengths) = torch.randn(2, 3, 32, 32), _captions((4, 6))
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        images = F.normalize(model.visual_projection(model.vision_model(pixels).pooled), dim=-1)
        texts = model.encode_text(ids, lengths)
    torch.testing.assert_close(model.scale() * images @ texts.T, out.logits_per_image, atol=1e-4, rtol=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_is_the_cross_entropy_of_the_similarity_matrix_and_sentence_transformers_loss(symmetric):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    b[2] = a[2]  # one pair exactly aligned: its row is ranked right
    loss, correct = info_nce(a, b, 14.0, symmetric=symmetric)
    logits, target = 14.0 * a @ b.T, torch.arange(6)
    by_hand = F.cross_entropy(logits, target, reduction="sum")
    if symmetric:
        by_hand = (by_hand + F.cross_entropy(logits.T, target, reduction="sum")) / 2
    torch.testing.assert_close(loss, by_hand)
    assert int(correct) == int((logits.argmax(-1) == target).sum()) >= 1
    both = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if symmetric else {}
    reference = MultipleNegativesRankingLoss(None, scale=14.0, **both).compute_loss_from_embeddings([a, b], None)
    torch.testing.assert_close(loss / 6, reference, atol=1e-5, rtol=0)


def test_zero_shot_probabilities_are_the_softmax_of_scaled_cosines():
    from acorn.tokenizer.bpe import Tokenizer

    model = CLIP(CLIPConfig(VisionConfig(**TINY_VISION), TextConfig(**{**TINY_TEXT, "vocab_size": 267}),
                            projection_dim=16)).eval()
    tok = Tokenizer.train(["a picture of one red circle"], 267)
    labels = ["a picture of one red circle", "a picture of two blue squares", "the number 7"]
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    probs = zero_shot(model, tok, pixels, labels)
    with torch.no_grad():
        images = model.encode_image(pixels.float() / 255)
        ids, lengths = pad_captions([caption_ids(tok, t, 24) for t in labels], tok.pad_id)
        texts = model.encode_text(ids, lengths)
    torch.testing.assert_close(probs, (model.scale() * images @ texts.T).softmax(-1))
    assert caption_ids(tok, "x" * 100, 24)[-1] == tok.eos_id and len(caption_ids(tok, "x" * 100, 24)) == 24


# ----------------------------------------------------------- training on the world's pictures
TINY_RUN = ["--model.vision.image_size", "32", "--model.vision.patch_size", "8", "--model.vision.d_model", "48",
            "--model.vision.n_layer", "2", "--model.vision.n_head", "2", "--model.vision.d_ff", "96",
            "--model.text.d_model", "48", "--model.text.n_layer", "1", "--model.text.n_head", "2",
            "--model.text.d_ff", "96", "--model.projection_dim", "32", "--train.micro_batch", "16",
            "--train.seq_len", "40", "--train.batch_tokens", "640", "--train.dtype", "float32",
            "--optim.warmup_steps", "5"]


@pytest.fixture(scope="module")
def pictured(tmp_path_factory):
    from acorn.data.world import generate_world

    out = tmp_path_factory.mktemp("pictured")
    generate_world(out, seed=0, size="tiny", quiet=True, images=60)
    return out


def test_a_tiny_clip_run_lowers_the_loss_and_beats_chance_on_its_pictures(pictured, tmp_path, capsys):
    from acorn.cli import main
    from acorn.vision.zero_shot import evaluate_world

    out = tmp_path / "clip"
    assert main(["clip", "train", "--world", str(pictured), "--out", str(out), "--train.max_steps", "250",
                 "--eval.every", "250", *TINY_RUN]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert "zero-shot on the eval pictures" in capsys.readouterr().out and "zs_count" in rows[-1]
    # On the shapes it trained on, counts, colours and shapes are told apart far better than chance (the
    # tiny world's ten number pictures are ten different numbers: too few to learn to read from).
    seen = evaluate_world(out / "model", pictured, "train")
    for kind in ("count", "colour", "shape"):
        assert seen[kind]["accuracy"] > seen[kind]["chance"] + 0.3, (kind, seen[kind])
    assert seen["caption"]["accuracy"] > 10 * seen["caption"]["chance"], seen["caption"]
    assert (out / "model" / "tokenizer.json").is_file() and (out / "report.md").is_file()
    # The command line: classify by captions, evaluate per kind.
    picture = next(r for r in (json.loads(x) for x in (pictured / "images" / "metadata.jsonl").read_text().splitlines())
                   if r["kind"] == "shapes" and r["split"] == "train")
    assert main(["clip", "classify", str(out / "model"), str(pictured / "images" / picture["file_name"]),
                 "--label", picture["caption"], "--label", "the number 7", "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert picture["file_name"] in printed and printed.count("%") == 2
    assert main(["clip", "eval", str(out / "model"), "--world", str(pictured)]) == 0
    assert "name_held" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(pictured, tmp_path, capsys):
    import shutil

    from acorn.cli import main
    from acorn.data.world import generate_world

    plain = tmp_path / "plain"
    generate_world(plain, seed=0, size="tiny", quiet=True)

    def fails(*args) -> str:
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("acorn: error: "), err
        return err

    assert "--images" in fails("clip", "train", "--world", str(plain), "--out", str(tmp_path / "a"))
    broken = tmp_path / "broken"
    shutil.copytree(pictured, broken)
    first = json.loads((broken / "images" / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    data = (broken / "images" / first).read_bytes()
    (broken / "images" / first).write_bytes(data[:len(data) // 2])  # cut short
    assert "corrupt" in fails("clip", "train", "--world", str(broken), "--out", str(tmp_path / "b"), *TINY_RUN)
    (broken / "images" / first).write_bytes(b"not a picture at all")
    assert "not an image" in fails("clip", "train", "--world", str(broken), "--out", str(tmp_path / "c"), *TINY_RUN)

    from PIL import Image

    from acorn.tokenizer.bpe import Tokenizer

    _tiny().save(tmp_path / "model", tokenizer=Tokenizer.train(["a"], 267))

    Image.new("RGB", (8, 8)).save(tmp_path / "x.tiff")
    assert "TIFF images are not supported" in fails("clip", "classify", str(tmp_path / "model"),
                                                    str(tmp_path / "x.tiff"), "--label", "a")
    assert "no such image file" in fails("clip", "classify", str(tmp_path / "model"), str(tmp_path / "none.png"),
                                         "--label", "a")
    assert "no config.json" in fails("clip", "eval", str(tmp_path), "--world", str(pictured))


def test_clip_train_help_lists_every_setting_with_its_default_and_meaning(capsys):
    import dataclasses

    from acorn.cli import main
    from acorn.train.clip import ClipConfig

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]

    with pytest.raises(SystemExit):
        main(["clip", "train", "--help"])
    lines = capsys.readouterr().out.split("\nsettings (")[1].splitlines()
    for key in keys(ClipConfig()):
        i = next((i for i, line in enumerate(lines) if line.strip().startswith(f"--{key} ")), None)
        assert i is not None and lines[i + 1].startswith("      "), key  # the default, then the meaning
