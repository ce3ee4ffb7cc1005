"""acorn.LLM: offline batch generation in vLLM's idiom.

    import acorn
    llm = acorn.LLM("runs/sft")
    outs = llm.generate(["Once upon a time", "The capital of"], acorn.SamplingParams(temperature=0.8, n=2))
    for out in outs:
        print(out.prompt, [c.text for c in out.outputs])
    llm.chat([{"role": "user", "content": "Hi!"}], acorn.SamplingParams(max_tokens=64))
    for piece in llm.stream("Once upon a time", max_tokens=50):
        print(piece, end="", flush=True)

One RequestOutput per prompt (or conversation), each holding its n
Completions in `.outputs`, as vLLM's LLM.generate returns. Everything runs on
one Engine (paged KV cache, continuous batching, prefix caching), so all the
prompts of one call are batched together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from acorn.errors import AcornError
from acorn.infer.engine import Engine
from acorn.infer.sampling import SamplingParams
from acorn.infer.sequence import Completion


@dataclass
class RequestOutput:
    prompt: str | None  # the text prompt (None when given as token ids)
    prompt_token_ids: list[int]
    outputs: list[Completion] = field(default_factory=list)  # the n samples (or beams), in order

    @property
    def num_cached_tokens(self) -> int:
        return self.outputs[0].cached_tokens if self.outputs else 0


class LLM:
    """A checkpoint directory (Acorn or Hugging Face) loaded into an Engine.

    dtype/device: as acorn.load; engine options (kv_cache_memory, block_size,
    max_num_seqs, max_num_batched_tokens, prefix_caching, paged, compile_decode)
    pass through."""

    def __init__(self, model, *, dtype=None, device="auto", **engine_options):
        self.engine = model if isinstance(model, Engine) else Engine.from_pretrained(
            model, dtype=dtype, device=device, **engine_options)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *, images=None,
                 **overrides) -> list[RequestOutput]:
        """sampling_params: one for every prompt, or a list with one per prompt.
        images (a vision model): for one prompt its list of images, for several a list per prompt."""
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts, images = [prompts], None if images is None else [images]
        encoded = [self.engine.encode(p) for p in prompts]
        completions = self.engine.generate(encoded, sampling_params, images=images, **overrides)
        outs = [RequestOutput(p if isinstance(p, str) else None, ids) for p, ids in zip(prompts, encoded)]
        # Prompt-major order, each prompt's samples (or beams) numbered from 0:
        # a 0 starts the next prompt's, whatever n each prompt asked for.
        i = -1
        for c in completions:
            i += c.index == 0
            outs[i].outputs.append(c)
        return outs

    def chat(self, messages: list[dict] | Sequence[list[dict]], sampling_params: SamplingParams | None = None, *,
             tools: list[dict] | None = None, **overrides) -> list[RequestOutput]:
        """One conversation (a list of messages) or several; each gets the
        assistant's next turn, rendered with the tokenizer's chat template.
        With tools, tool calls are parsed into each Completion's tool_calls.
        Image parts in the messages need a vision model (as Engine.chat)."""
        from acorn.chat.template import message_images

        if not messages:
            raise AcornError("chat() needs at least one message")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        prompts = [self.engine.chat_prompt(list(c), tools=tools) for c in conversations]
        outs = self.generate(prompts, sampling_params, images=[message_images(c) for c in conversations], **overrides)
        if tools:
            for out in outs:
                for c in out.outputs:
                    self.engine.parse_tools(c)
        return outs

    def stream(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None = None, *, images=None,
               **overrides) -> Iterator[str]:
        """The text of one completion, piece by piece as it is generated."""
        return self.engine.stream(prompt, sampling_params, images=images, **overrides)
