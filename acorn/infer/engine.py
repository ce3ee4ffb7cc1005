"""The inference engine: autoregressive generation with a KV cache.

A decoder-only model predicts one token at a time; generating n tokens means
n forward passes. Recomputing the whole sequence each time costs O(n^2) work
per token (every token attends to every earlier one, all over again). But a
token's keys and values never change once computed, so the engine keeps them
(the KV cache, acorn.model.KVCache) and runs:

  prefill  the prompt, all its tokens in one forward pass, which fills the cache
  decode   one new token per step; only that token goes through the model and
           attends to the cached keys/values: O(n) per token instead of O(n^2)

A batch of prompts of different lengths is left-padded so every row's last
token sits in the last column (that is where the next-token logits are read);
the attention mask hides the padding and positions count real tokens only, so
a padded row computes exactly what it would alone. A row that finishes (stop
token, stop string, max_new_tokens) is dropped from the batch and its cache,
so it costs nothing afterwards.

This is the one generation loop in Acorn: generate(), stream(), chat(), the
CLI, the server and evaluation all go through Engine. It is the first version;
the parts a serving engine adds (Kwon et al. 2023, vLLM; nano-vllm) slot in
around the same per-request state (_Sequence) and step function (_steps):
paged KV blocks and prefix caching replace the concatenated cache, a scheduler
admits and retires sequences between steps (continuous batching), and
speculative decoding proposes several tokens per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from acorn.errors import AcornError
from acorn.infer.sampling import SamplingParams, sample


@dataclass
class Completion:
    prompt_tokens: int
    token_ids: list[int]  # every generated id, including the stop token that ended it
    text: str  # the decoded output, without a stop token and cut before a stop string
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens or the model's context)
    tool_calls: list[dict] = field(default_factory=list)  # chat(tools=...): OpenAI-style calls, removed from text


class _Sequence:
    """One request in flight: its ids, its sampler state and its text so far.

    push() takes each new token and returns the text that may be shown now:
    complete UTF-8 only (StreamDecoder), and never a prefix of a stop string,
    which is held back until it either completes (and is cut) or cannot."""

    def __init__(self, prompt: list[int], params: SamplingParams, stop_ids: frozenset[int],
                 generator: torch.Generator, decoder, max_len: int):
        self.prompt = prompt
        self.params = params
        self.stop_ids = stop_ids
        self.generator = generator
        self.decoder = decoder
        self.max_len = max_len
        self.output: list[int] = []
        self.text = ""  # emitted so far
        self.pending = ""  # decoded but held back: it may be the start of a stop string
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> str:
        self.output.append(token_id)
        stop = self.params.stop
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
            new = self.decoder.flush()
        else:
            new = self.decoder.push(token_id)
            if len(self.output) >= self.params.max_new_tokens or len(self.prompt) + len(self.output) >= self.max_len:
                self.finish_reason = "length"
                new += self.decoder.flush()
        self.pending += new
        # A stop string always starts inside `pending`: any text that could
        # begin one was held back, so searching the pending text suffices.
        hits = [i for i in (self.pending.find(s) for s in stop) if i >= 0]
        if hits:
            self.finish_reason = "stop"
            return self._emit(min(hits), drop_rest=True)
        if self.finished:
            return self._emit(len(self.pending))
        return self._emit(len(self.pending) - _held_back(self.pending, stop))

    def _emit(self, n: int, drop_rest: bool = False) -> str:
        out, self.pending = self.pending[:n], ("" if drop_rest else self.pending[n:])
        self.text += out
        return out

    def completion(self) -> Completion:
        return Completion(prompt_tokens=len(self.prompt), token_ids=list(self.output), text=self.text,
                          finish_reason=self.finish_reason or "length")


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _select_rows(cache, rows: Tensor):
    """The cache of some rows of the batch (the ones still generating)."""
    cache.keys = [k.index_select(0, rows) for k in cache.keys]
    cache.values = [v.index_select(0, rows) for v in cache.values]
    cache.mask = cache.mask.index_select(0, rows)
    cache.positions = cache.positions.index_select(0, rows)
    # Columns that are padding in every remaining row (the left padding of a
    # longer prompt that has finished) hold nothing anyone attends to.
    real = cache.mask.any(0)
    start = int(real.long().argmax()) if bool(real.any()) else 0
    if start:
        cache.keys = [k[:, :, start:] for k in cache.keys]
        cache.values = [v[:, :, start:] for v in cache.values]
        cache.mask, cache.positions = cache.mask[:, start:], cache.positions[:, start:]
    return cache


def default_stop_ids(tokenizer, extra: Sequence[int] = ()) -> frozenset[int]:
    """The ids that end a generation unless told otherwise: the tokenizer's
    end-of-sequence token, the end-of-turn tokens of its chat format (any
    known format whose stop tokens the vocabulary holds), and `extra` (e.g.
    the eos_token_id list of a checkpoint's generation_config.json)."""
    from acorn.chat_formats import FORMATS

    ids = set(extra)
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    for fmt in FORMATS.values():
        if fmt.name == tokenizer.chat_format or fmt.eos_token in tokenizer.special_tokens:
            ids.update(tokenizer.special_tokens[t] for t in fmt.stop_tokens if t in tokenizer.special_tokens)
    return frozenset(ids)


def chat_format_of(tokenizer) -> str | None:
    """The tokenizer's chat format by name, or recognised by its special tokens."""
    from acorn.chat_formats import FORMATS

    if tokenizer.chat_format in FORMATS:
        return tokenizer.chat_format
    for fmt in FORMATS.values():
        if all(t in tokenizer.special_tokens for t in fmt.stop_tokens):
            return fmt.name
    return None


class Engine:
    """A model and its tokenizer, and the generation loop over them."""

    def __init__(self, model, tokenizer, *, device=None, stop_token_ids: Sequence[int] = ()):
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.device
        self.stop_token_ids = default_stop_ids(tokenizer, stop_token_ids)
        self.chat_format = chat_format_of(tokenizer)
        if self.device.type == "cpu":
            # Tiny activations decay into denormal floats, which x86 CPUs
            # process up to 30x slower; flushing them to zero changes nothing visible.
            torch.set_flush_denormal(True)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device="auto") -> "Engine":
        """A checkpoint directory (acorn.load) with its tokenizer files beside the weights."""
        from acorn.checkpoint import load
        from acorn.tokenizer import Tokenizer

        model = load(path, dtype=dtype, device=device)
        tokenizer = Tokenizer.from_pretrained(path)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise AcornError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size}; they do not belong together")
        return cls(model, tokenizer, stop_token_ids=_generation_config_eos(Path(path)))

    # ------------------------------------------------------------ prompts
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Text to ids, with the BOS token a model trained by Acorn saw at the
        start of every document; id lists pass through unchanged."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            bos = self.tokenizer.bos_id
            return [bos, *ids] if bos is not None else ids
        ids = [int(i) for i in prompt]
        vocab = self.model.config.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise AcornError(f"prompt token ids must be in 0..{vocab - 1}")
        return ids

    def chat_prompt(self, messages: list[dict], *, tools: list[dict] | None = None) -> list[int]:
        """A conversation rendered with the chat template, ending in the assistant's turn header."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)

    def _sequence(self, prompt: list[int], params: SamplingParams, seed_offset: int = 0) -> _Sequence:
        if not prompt:
            raise AcornError("the prompt is empty and the tokenizer has no BOS token to start from; give some text")
        max_len = self.model.config.max_seq_len
        if len(prompt) >= max_len:
            raise AcornError(f"the prompt has {len(prompt)} tokens; the model's context is {max_len}")
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.stop_token_ids)
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
        generator = torch.Generator(self.device).manual_seed(seed + seed_offset)
        return _Sequence(prompt, params, stop_ids, generator, self.tokenizer.stream_decoder(), max_len)

    # ------------------------------------------------------------ the loop
    @torch.inference_mode()
    def _steps(self, seqs: list[_Sequence]) -> Iterator[list[str]]:
        """Prefill all sequences together, then decode one token per step,
        yielding each sequence's new text after every step ('' for finished ones)."""
        model = self.model
        width = max(len(s.prompt) for s in seqs)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s.prompt)) + s.prompt for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs], device=self.device)
        # Without padding, no mask: the model then uses the fused causal attention kernel.
        out = model(ids, attention_mask=None if bool(mask.all()) else mask, use_cache=True, last_only=True)
        # A model's vocabulary may be padded past the tokenizer's (to a multiple
        # of 64, for fast matmuls): those ids have no text, so they are never sampled.
        vocab = self.tokenizer.vocab_size
        cache, logits = out.cache, out.logits[:, -1, :vocab]
        live = list(range(len(seqs)))  # rows of the cache -> index into seqs
        while True:
            rows = [seqs[i] for i in live]
            nxt = sample(logits, [s.params for s in rows], [s.output for s in rows],
                         [s.generator for s in rows], prompts=[s.prompt for s in rows])
            deltas = [""] * len(seqs)
            for i, tok in zip(live, nxt.tolist()):
                deltas[i] = seqs[i].push(tok)
            yield deltas
            keep = [r for r, i in enumerate(live) if not seqs[i].finished]
            if not keep:
                return
            if len(keep) < len(live):
                rows_t = torch.tensor(keep, device=self.device)
                cache, nxt = _select_rows(cache, rows_t), nxt[rows_t]
                live = [live[r] for r in keep]
            out = model(nxt[:, None], cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1, :vocab]

    # ------------------------------------------------------------ the API
    def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]] | Sequence[int],
                 params: SamplingParams | None = None, **overrides) -> list[Completion]:
        """One Completion per prompt, generated as one batch. With a seed, row i
        samples with seed + i (so n copies of a prompt give n different samples,
        and row 0 matches stream() with the same seed)."""
        params = SamplingParams.merge(params, overrides)
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            return []
        seqs = [self._sequence(self.encode(p), params, i) for i, p in enumerate(prompts)]
        for _ in self._steps(seqs):
            pass
        return [s.completion() for s in seqs]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               **overrides) -> Iterator[str]:
        """The text of one completion as it is generated, in pieces that are
        whole characters and never run past a stop string. The generator's
        return value is the Completion (`c = yield from engine.stream(...)`)."""
        params = SamplingParams.merge(params, overrides)
        seq = self._sequence(self.encode(prompt), params)
        for (delta,) in self._steps([seq]):
            if delta:
                yield delta
        return seq.completion()

    def chat(self, messages: list[dict], params: SamplingParams | None = None, *,
             tools: list[dict] | None = None, **overrides) -> Completion:
        """The assistant's next turn. It ends at the chat format's end-of-turn
        token (among the default stop ids). With tools, tool calls in the reply
        are parsed into Completion.tool_calls and removed from its text."""
        params = SamplingParams.merge(params, overrides)
        (completion,) = self.generate([self.chat_prompt(messages, tools=tools)], params)
        if tools and self.chat_format is not None:
            from acorn.chat import parse_tool_calls

            completion.text, completion.tool_calls = parse_tool_calls(completion.text, self.chat_format)
        return completion

    @torch.inference_mode()
    def score(self, prompt: str | Sequence[int], continuations: Sequence[str]) -> list[float]:
        """Sum of log P(continuation tokens | prompt) for each continuation: the
        log-likelihood that multiple-choice evaluation compares.

        Tokenised as lm-evaluation-harness does: the prompt's trailing spaces
        move to the continuation ("The sky is" + " blue", not "The sky is " +
        "blue", which BPE would tokenise unnaturally), and the continuation's
        tokens are those of prompt + continuation after the prompt's tokens."""
        conts = []
        for c in continuations:
            if isinstance(prompt, str):
                context = prompt.rstrip()
                c = prompt[len(context):] + c
                ctx, whole = self.encode(context), self.encode(context + c)
                cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else self.tokenizer.encode(c)
            else:
                ctx, cont = self.encode(prompt), self.tokenizer.encode(c)
            if not ctx:
                start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
                if start is None:
                    raise AcornError("the prompt is empty and the tokenizer has no BOS/EOS token to condition on")
                ctx = [start]
            conts.append((ctx, cont))
        if not conts:
            return []
        rows = [ctx + cont for ctx, cont in conts]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        logprobs = self.model(ids, attention_mask=mask).logits.float().log_softmax(-1)
        scores = []
        for b, (ctx, cont) in enumerate(conts):
            n = len(cont)
            if n == 0:
                scores.append(0.0)
                continue
            # Logits at position t predict token t + 1: the continuation's
            # tokens are the last n columns, predicted by the n columns before.
            pred = logprobs[b, width - n - 1: width - 1]
            target = torch.tensor(cont, device=self.device)[:, None]
            scores.append(float(pred.gather(1, target).sum()))
        return scores


def _generation_config_eos(directory: Path) -> list[int]:
    """eos_token_id from generation_config.json (an id or a list: Llama 3
    instruct lists its end-of-turn tokens there)."""
    path = directory / "generation_config.json"
    try:
        value = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value] if isinstance(value, list) else []
