"""Inference: the one engine every consumer of generation goes through.

    from acorn.infer import Engine, SamplingParams
    engine = Engine.from_pretrained("runs/ckpt")
    engine.generate(["Once upon a time"], max_new_tokens=50, temperature=0.8, top_p=0.95)

engine.py holds the generation loop (prefill, then decode with the KV cache),
sampling.py the step from logits to the next token.
"""

from acorn.infer.engine import Completion, Engine
from acorn.infer.sampling import SamplingParams, sample

__all__ = ["Completion", "Engine", "SamplingParams", "sample"]
