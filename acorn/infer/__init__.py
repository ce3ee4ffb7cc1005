"""Inference: the one engine every consumer of generation goes through.

    from acorn.infer import Engine, SamplingParams
    engine = Engine.from_pretrained("runs/ckpt")
    engine.generate(["Once upon a time"], max_new_tokens=50, temperature=0.8, top_p=0.95)

engine.py holds the generation loop (prefill, then decode with the KV cache),
sequence.py a request's per-sample state and what the engine hands out
(StepOutput, Completion), paged.py the paged KV blocks and prefix cache,
scheduler.py continuous batching, sampling.py the step from logits to the
next token, beam.py beam search, llm.py the vLLM-style acorn.LLM front end.
"""

from acorn.infer.engine import Engine
from acorn.infer.llm import LLM, RequestOutput
from acorn.infer.sampling import GenerationError, SamplingParams, sample
from acorn.infer.sequence import Completion, StepOutput

__all__ = ["Completion", "Engine", "GenerationError", "LLM", "RequestOutput", "SamplingParams", "StepOutput", "sample"]
