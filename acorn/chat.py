"""Chat templates: a conversation (system, user, assistant, tool) to tokens.

Each chat format names the special tokens it needs; `Tokenizer.train` reserves
them, so a tokenizer trained for a format can render it.
(The renderer and the templates are filled in below this table.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    name: str
    special_tokens: tuple[str, ...]
    bos_token: str
    eos_token: str
    pad_token: str
    stop_tokens: tuple[str, ...]
    template: str = ""


FORMATS: dict[str, ChatFormat] = {
    "acorn": ChatFormat(
        name="acorn",
        special_tokens=(
            "<|bos|>", "<|eos|>", "<|pad|>",
            "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
            "<|tool_call|>", "<|/tool_call|>", "<|tool_output|>", "<|/tool_output|>",
        ),
        bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        stop_tokens=("<|end|>", "<|eos|>"),
    ),
    "chatml": ChatFormat(
        name="chatml",
        special_tokens=(
            "<|endoftext|>", "<|im_start|>", "<|im_end|>",
            "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
        ),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
    ),
    "llama3": ChatFormat(
        name="llama3",
        special_tokens=(
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
        ),
        bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>",
        stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
    ),
}
