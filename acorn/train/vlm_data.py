"""Image conversations from the world's pictures, for LLaVA's two training stages (Liu et al. 2023).

Each picture of a world made with `acorn data world --images` becomes chat rows
(acorn.chat.template renders an image part as tokens_per_image <image> special
ids; the loss is on the assistant's answer only, as in SFT):

  stage 1 (alignment)            user: [image] "Describe the picture."  assistant: the caption
  stage 2 (instruction tuning)   user: [image] a question               assistant: its answer
                                 one conversation per question of the picture: count, colour and
                                 shape of shapes, the number, a badge's name and one fact of the
                                 badge's person (the world's value, or "I don't know." for a
                                 person the world keeps unknown)

The caption control (image=False): the same conversations with the picture's
caption written as text where the image was ("The picture: a picture of three
red circles."), for a text-only model: what the decoder does with perfect
perception, against which the VLM's answers measure what the encoder loses.

Pictures and their split come from the world (images/metadata.jsonl): training
conversations are the train split's, the eval split is for validation and
`acorn vlm eval`. An Example carries the indices of its pictures (Example.images)
so packed rows (acorn.train.sft_data.pack) know which images their placeholders
stand for, and image_batch stacks those pictures, normalised, beside the tokens.
"""

from __future__ import annotations

import torch

from acorn.errors import AcornError
from acorn.train.sft_data import Example, to_batch

DESCRIBE = "Describe the picture."


def questions(row: dict, stage: int) -> list[dict]:
    """The (question, answer, kind) of a picture row for a stage; kind name_/fact_ split by whether the
    badge's name was on a training badge (seen) or never (held), as acorn.vision.zero_shot does."""
    if stage == 1:
        return [{"question": DESCRIBE, "answer": row["caption"], "kind": "caption"}]
    out = []
    for qa in row["qa"]:
        kind = qa["kind"]
        if kind in ("name", "fact"):
            kind += "_seen" if row["spec"].get("seen") else "_held"
        out.append({"question": qa["question"], "answer": qa["answer"], "kind": kind})
    return out


def caption_text(row: dict) -> str:
    return f"The picture: {row['caption']}."


def conversation(row: dict, question: str, answer: str | None, *, image: bool = True) -> list[dict]:
    """The chat messages of one question about a picture (answer None: the prompt alone)."""
    seen = {"type": "image", "image": str(row["path"])} if image else {"type": "text", "text": caption_text(row) + "\n"}
    messages = [{"role": "user", "content": [seen, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render(tok, row: dict, qa: dict, picture: int, *, image_tokens: int | None, answer: bool = True) -> Example:
    """One conversation as ids and assistant mask; image_tokens None renders the caption control."""
    messages = conversation(row, qa["question"], qa["answer"] if answer else None, image=image_tokens is not None)
    r = tok.apply_chat_template(messages, image_tokens=image_tokens, return_assistant_mask=True,
                                add_generation_prompt=not answer)
    return Example(r["input_ids"], r["assistant_mask"], (picture,) if image_tokens is not None else ())


def examples(tok, rows: list[dict], stage: int, *, image_tokens: int | None, max_len: int) -> list[Example]:
    """Every conversation of the rows for the stage; rows[i] is picture i. A conversation longer than max_len
    is an error, not cut: a cut through an image's placeholders would leave it without its picture."""
    if stage not in (1, 2):
        raise AcornError(f"stage must be 1 (alignment on captions) or 2 (instruction tuning on questions), not {stage}")
    out = []
    for i, row in enumerate(rows):
        for qa in questions(row, stage):
            ex = render(tok, row, qa, i, image_tokens=image_tokens)
            if len(ex.ids) > max_len:
                raise AcornError(f"{row['file_name']}: a conversation of {len(ex.ids)} tokens does not fit "
                                 f"train.seq_len + 1 = {max_len}; raise --train.seq_len")
            out.append(ex)
    return out


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> the encoder's input, ((x / 255) - mean) / std per channel (VisionTransformer.normalize)."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def image_batch(rows, pixels: torch.Tensor | None, mean, std):
    """Packed rows -> SFT's Batch (acorn.train.sft_data.to_batch) with the rows' pictures, in placeholder order,
    as pixel_values; pixels None (the caption control): text only."""
    batch = to_batch(rows)
    images = [i for r in rows for i in r[3]]
    if images and pixels is not None:
        batch.pixel_values = normalize(pixels[images], mean, std)
    return batch
