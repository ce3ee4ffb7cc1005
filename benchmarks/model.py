"""Model benchmark: Acorn's transformer against transformers' at the same configuration.

For each size, one random Llama-layout model is built in Acorn and copied into
transformers' LlamaForCausalLM (the parameter names are the same), and both
run the same batch, taking turns, medians of several runs:

  forward            inference, no grad, weights in the dtype
  forward+backward   a training step's compute (loss.backward()), weights in
                     float32 with bf16 autocast for the bf16 rows (the way
                     training runs), plain float32 otherwise

Both use torch's scaled_dot_product_attention (transformers' default "sdpa").
Denormals are flushed for both (see GUIDE: CPUs slow down up to 30x on them).
On a CUDA machine the same runs are made on the GPU.

    python benchmarks/model.py              # CPU; CUDA too when available
    python benchmarks/model.py --quick      # the smallest size, 2 runs
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import command_line, log, machine_description, markdown_table, median_times_interleaved, today, write_section  # noqa: E402

from acorn.model.transformer import ModelConfig, Transformer  # noqa: E402

SIZES = {  # name: (config overrides, batch, sequence length)
    "nano (1M)": (dict(vocab_size=2048, n_layer=4, d_model=128, n_head=4, n_kv_head=2), 8, 256),
    "micro (5M)": (dict(vocab_size=2048, n_layer=6, d_model=256, n_head=8, n_kv_head=4), 8, 256),
    "small (28M)": (dict(vocab_size=8192, n_layer=8, d_model=512, n_head=8, n_kv_head=4), 4, 256),
}


def hf_twin(model: Transformer):
    """transformers' LlamaForCausalLM with the same config and weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hc = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
        rope_theta=c.rope_theta, attn_implementation="sdpa",
    )
    hf = LlamaForCausalLM(hc)
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def measure(size: str, device: str, dtype: torch.dtype, runs: int) -> list[list[object]]:
    overrides, batch, seq = SIZES[size]
    torch.manual_seed(0)
    cfg = ModelConfig(**overrides, max_seq_len=seq)
    acorn = Transformer(cfg).to(device)
    hf = hf_twin(acorn).to(device)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    tokens = batch * seq
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext

    rows = []
    # forward: weights in the dtype, no grad
    fa, fh = Transformer(cfg).to(device, dtype), hf_twin(acorn).to(device, dtype)
    fa.load_state_dict(acorn.state_dict())
    fa.eval(), fh.eval()

    def fwd(m, is_hf):
        def run():
            with torch.no_grad():
                (m(input_ids=x) if is_hf else m(x)).logits
            sync()
        return run

    def train(m, is_hf):
        def run():
            with autocast():
                if is_hf:  # the same loss computation as Acorn's, on transformers' logits
                    logits = m(input_ids=x).logits
                    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                else:
                    loss = m(x, targets=y).loss
            loss.backward()
            m.zero_grad(set_to_none=True)
            sync()
        return run

    for what, contenders in [
        ("forward", [("acorn", fwd(fa, False)), ("transformers", fwd(fh, True))]),
        ("forward+backward", [("acorn", train(acorn, False)), ("transformers", train(hf, True))]),
    ]:
        log(f"{size} {device} {dtype} {what}")
        res = median_times_interleaved(contenders, runs, warmup=3)
        a, h = res["acorn"][0], res["transformers"][0]
        rows.append([size, device, str(dtype).replace("torch.", ""), what, f"{tokens / a:,.0f}", f"{tokens / h:,.0f}",
                     f"{h / a:.2f}x"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smallest size, 2 runs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print instead of writing docs/BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    sizes = list(SIZES)[:1] if args.quick else list(SIZES)
    runs = 2 if args.quick else args.runs
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            for size in sizes:
                rows += measure(size, device, dtype, runs)
    table = markdown_table(
        ["model", "device", "dtype", "pass", "Acorn tokens/s", "transformers tokens/s", "Acorn speed"], rows,
        align="llllrrr",
    )
    body = f"""## Model: forward and forward+backward throughput

Command: `{command_line()}`
Date: {today()}
Machine: {machine_description(("transformers",))}

Llama-layout models (RoPE, RMSNorm, SwiGLU, GQA, tied embeddings), Acorn's
`Transformer` against transformers' `LlamaForCausalLM` holding the same weights,
on the same batch (nano and micro: 8 x 256 tokens; small: 4 x 256). Forward: no
grad, weights in the dtype. Forward+backward: float32 weights, bf16 autocast in
the bf16 rows. Medians of {runs} runs, the two taking turns, after three warm-up runs (the first runs of both are slow while memory is first touched).
"Acorn speed" is transformers' time over Acorn's.

{table}
"""
    if args.no_write:
        print(body)
    else:
        log(f"wrote {write_section('model', body)}")


if __name__ == "__main__":
    main()
