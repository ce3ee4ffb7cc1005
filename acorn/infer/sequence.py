"""Per-request state: one sample of a request from its prompt to its Completion.

A request asks for n samples of one prompt; each sample is a SequenceState:
its token ids, its sampler's generator, and its text so far. Turning ids into
text that may be shown while generation goes on has two rules (as vLLM and
transformers' TextStreamer keep them):

  whole characters  a UTF-8 character split over several byte tokens is shown
                    once all its bytes are out (the tokenizer's StreamDecoder)
  stop strings      text that could be the beginning of a stop string is held
                    back until it either completes the stop string (and is cut
                    there, with all that follows) or cannot any more

What the engine hands out is plain data: a StepOutput per sample per step (the
increment, as vLLM's step() reports it), and on a sample's last step its
Completion, which stays readable after the engine has forgotten the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from acorn.chat.tools import held_back
from acorn.infer.sampling import SamplingParams


@dataclass
class Completion:
    prompt_tokens: int
    token_ids: list[int]  # every generated id, including the stop token that ended it
    text: str  # the decoded output, without a stop token and cut before a stop string
    # "stop" (stop token or string) | "length" (max_new_tokens or the context) | "abort" | "error" (see error)
    finish_reason: str
    tool_calls: list[dict] = field(default_factory=list)  # chat(tools=...): OpenAI-style calls, removed from text
    index: int = 0  # which of the n samples of its prompt
    cached_tokens: int = 0  # prompt tokens served by the prefix cache
    # With SamplingParams.logprobs: per generated token {"token_id", "logprob", "top_logprobs": [(id, logprob), ...]}
    logprobs: list[dict] | None = None
    score: float | None = None  # beam search: the length-penalised log-probability
    error: str | None = None  # finish_reason "error": why the sample failed (one line: the problem and the fix)


@dataclass
class StepOutput:
    """What one Engine.step() produced for one sample of a request: the new
    part since its previous step, and on its last step the whole Completion."""

    request_id: str
    index: int  # which of the request's n samples
    token_ids: list[int]  # sampled in this step: one, or several when speculative drafts were kept
    text: str  # the text that may be shown now (whole characters; a possible stop string held back)
    logprobs: list[dict] | None = None  # with SamplingParams.logprobs: one entry per id in token_ids
    finish_reason: str | None = None  # set on the sample's last step: "stop" | "length" | "error"
    completion: Completion | None = None  # the whole sample, on its last step

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class SequenceState:
    """One sample in flight: its ids, its sampler state and its text so far.

    push() takes each new token and returns the text that may be shown now:
    complete UTF-8 only (StreamDecoder), and never a prefix of a stop string,
    which is held back until it either completes (and is cut) or cannot."""

    def __init__(self, prompt: list[int], params: SamplingParams, stop_ids: frozenset[int],
                 generator: torch.Generator, decoder, max_len: int, index: int = 0):
        self.prompt = prompt
        self.params = params
        self.stop_ids = stop_ids
        self.generator = generator
        self.decoder = decoder
        self.max_len = max_len
        self.index = index
        self.output: list[int] = []
        self.text = ""  # emitted so far
        self.pending = ""  # decoded but held back: it may be the start of a stop string
        self.finish_reason: str | None = None
        self.error: str | None = None  # why it failed, with finish_reason "error"
        self.logprobs: list[dict] | None = [] if params.logprobs is not None else None
        self.cached_tokens = 0
        self.constraint = None  # structured output: which tokens may come next (acorn.infer.structured)

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
        if len(self.output) < self.params.min_new_tokens:
            stop = ()  # stop strings count only once min_new_tokens are out (as vLLM)
        hits = [i for i in (self.pending.find(s) for s in stop) if i >= 0]
        if hits:
            self.finish_reason = "stop"
            return self._emit(min(hits), drop_rest=True)
        if self.finished:
            return self._emit(len(self.pending))
        return self._emit(len(self.pending) - held_back(self.pending, stop))

    def fail(self, message: str) -> None:
        """End the sample with an error (no token this step): finish_reason
        "error", and `message` on its Completion. What was shown stays shown."""
        self.finish_reason, self.error = "error", message

    def push_end(self) -> str:
        """Release the held-back text of a sequence that ends without a stop token."""
        self.pending += self.decoder.flush()
        return self._emit(len(self.pending))

    def _emit(self, n: int, drop_rest: bool = False) -> str:
        out, self.pending = self.pending[:n], ("" if drop_rest else self.pending[n:])
        self.text += out
        return out

    def step_output(self, request_id: str, start: int, text: str) -> StepOutput:
        """The StepOutput of the tokens from output[start:] on, whose new text is `text`."""
        logprobs = list(self.logprobs[start:]) if self.logprobs is not None else None
        return StepOutput(request_id, self.index, self.output[start:], text, logprobs, self.finish_reason,
                          self.completion() if self.finished else None)

    def completion(self) -> Completion:
        # Copies, not the live lists: a Completion stays as it was when made.
        return Completion(prompt_tokens=len(self.prompt), token_ids=list(self.output), text=self.text,
                          finish_reason=self.finish_reason or "length", index=self.index,
                          cached_tokens=self.cached_tokens,
                          logprobs=list(self.logprobs) if self.logprobs is not None else None, error=self.error)

    def fork(self, index: int, generator: torch.Generator, decoder) -> "SequenceState":
        """A sibling sample of the same prompt (n > 1), before any output."""
        child = SequenceState(self.prompt, self.params, self.stop_ids, generator, decoder, self.max_len, index)
        child.constraint = self.constraint.fresh() if self.constraint is not None else None
        return child
