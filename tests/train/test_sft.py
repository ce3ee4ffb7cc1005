"""Supervised fine-tuning: the loss mask, packing without cross-document
attention, both input formats, and the `acorn sft` command end to end."""

from __future__ import annotations

import json

import pytest
import torch

from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.transformer import ModelConfig, Transformer
from acorn.tokenizer.bpe import Tokenizer
from acorn.train.sft_data import IGNORE, pack, render_example, to_batch

CONVS = [
    {"messages": [{"role": "user", "content": "Where was Ana born?"}, {"role": "assistant", "content": "Orla."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3 + 3?"},
                  {"role": "assistant", "content": "6"}]},
    {"prompt": "The capital of Orla is", "completion": " Vesk."},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = " ".join(f"Where was person{i} born? In city{i % 7}. 2 + {i} = {i + 2}." for i in range(400))
    return Tokenizer.train([text], 400)


def trained_text(tok, ids, targets) -> str:
    return tok.decode([t for t in targets if t != IGNORE])


def test_loss_is_only_on_what_the_assistant_writes(tok):
    rows = pack([render_example(c, tok) for c in CONVS[:2]], 64, tok.pad_id)
    batch = to_batch(rows)
    text = trained_text(tok, batch.x[0].tolist(), batch.y[0].tolist())
    assert text == "Orla.<|end|>4<|end|>6<|end|>"
    assert "Where" not in text and "<|assistant|>" not in text  # the prompt and role headers are not trained


def test_prompt_completion_trains_the_completion(tok):
    ex = render_example(CONVS[2], tok)
    y = to_batch(pack([ex], 32, tok.pad_id)).y[0].tolist()
    assert trained_text(tok, None, y) == " Vesk.<|eos|>"


def test_a_text_row_trains_every_token_of_its_document(tok):
    """Pretraining documents mixed into SFT (replay): BOS + text + EOS, the loss on all but BOS,
    so the row's loss is the document's pretraining loss."""
    ex = render_example({"text": "The capital of Orla is Vesk."}, tok)
    assert ex.ids == tok.encode("The capital of Orla is Vesk.", add_bos=True, add_eos=True)
    y = to_batch(pack([ex], 32, tok.pad_id)).y[0].tolist()
    assert trained_text(tok, None, y) == "The capital of Orla is Vesk.<|eos|>"


def test_packed_row_trains_exactly_like_separate_conversations(tok):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=400, n_layer=2, d_model=32, n_head=2, max_seq_len=128)).eval()
    examples = [render_example(c, tok) for c in CONVS]
    packed = to_batch(pack(examples, 120, tok.pad_id))
    assert packed.x.shape[0] == 1 and packed.document_ids[0].max() == 2  # all three in one row
    logits = model(packed.x, document_ids=packed.document_ids).logits
    nll = torch.nn.functional.cross_entropy(logits[0], packed.y[0], ignore_index=IGNORE, reduction="sum")
    total, count = 0.0, 0
    for ex in examples:
        alone = to_batch(pack([ex], len(ex.ids) - 1, tok.pad_id))
        lg = model(alone.x).logits
        total += torch.nn.functional.cross_entropy(lg[0], alone.y[0], ignore_index=IGNORE, reduction="sum")
        count += int((alone.y != IGNORE).sum())
    assert count == int((packed.y != IGNORE).sum())
    assert torch.allclose(nll, total, atol=1e-4)
    # Without document ids the later conversations would see the earlier ones.
    leaky = torch.nn.functional.cross_entropy(model(packed.x).logits[0], packed.y[0], ignore_index=IGNORE, reduction="sum")
    assert not torch.allclose(leaky, total, atol=1e-2)


def test_bad_rows(tok):
    with pytest.raises(AcornError, match="needs 'messages'"):
        render_example({"input": "hi"}, tok)
    with pytest.raises(AcornError, match="text must be a string"):
        render_example({"text": ["hi"]}, tok)
    with pytest.raises(AcornError, match="must be strings"):
        render_example({"prompt": ["a"], "completion": "b"}, tok)


def test_sft_command_end_to_end(tok, tmp_path, capsys):
    torch.manual_seed(0)
    base = tmp_path / "base"
    Transformer(ModelConfig(vocab_size=400, n_layer=2, d_model=32, n_head=2, max_seq_len=64)).save(base, tokenizer=tok)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(CONVS[i % 3]) + "\n" for i in range(60)))
    out = tmp_path / "sft"
    args = ["sft", "--init_from", str(base), "--data", str(data), "--out", str(out), "--train.seq_len", "48",
            "--train.micro_batch", "4", "--train.batch_tokens", "192", "--epochs", "10", "--optim.lr", "3e-3",
            "--optim.warmup_steps", "2", "--eval.every", "5", "--eval.batches", "2", "--train.dtype", "float32"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert "val_loss" in rows[-1]
    tuned = Tokenizer.from_pretrained(out / "model")
    assert tuned.special_tokens == tok.special_tokens  # the tokenizer travels with the model
    capsys.readouterr()
    assert main(["sft", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "--init_from" in capsys.readouterr().err
