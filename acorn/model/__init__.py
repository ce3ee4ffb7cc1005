"""The model: one decoder-only transformer and what it is stored and run as.

transformer.py is the network (ModelConfig presets, the one forward pass with
public embed / blocks / logits pieces); rope.py the rotary positions and their
long-context scalings; quant.py int8 / int4 / NF4 weight quantization;
lora.py LoRA / QLoRA adapters in PEFT's layout; checkpoint.py Hugging Face
checkpoints both ways (load, save, model info, quantizing a checkpoint);
gguf.py the GGUF file llama.cpp runs (export only).
"""

from acorn.model.transformer import PRESETS, ModelConfig, Transformer, build
from acorn.model.checkpoint import load, save

__all__ = ["PRESETS", "ModelConfig", "Transformer", "build", "load", "save"]
