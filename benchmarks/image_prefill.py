"""What an image costs the engine (issue 20, item 5): tokens per image, and the time of a
prefill with an image against the same prompt without it.

A random LLaVA (acorn.vision.llava) with the default vision encoder (VisionConfig: 64x64
pixels in 8x8 patches) and a decoder preset, in an Engine with prefix caching off (every
run computes the whole prompt). Timed, medians of --runs, interleaved:

  text    the prompt's text alone (a user turn)
  image   the same turn with one image: tokens_per_image more positions, plus the vision
          encoder and projector run once for the request
  encoder the encoder + projector alone (Llava.image_features on one image)

Prints one table; writes nothing (run it on a quiet machine: timings on a shared one are noise).

    python benchmarks/image_prefill.py                       # decoder preset micro, CPU
    python benchmarks/image_prefill.py --preset small --device cuda
    python benchmarks/image_prefill.py --tokens-only         # no timing: tokens per image only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TEXT = "Describe the picture: how many shapes, which colours, and what is written on it? " * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="micro", help="the decoder's ModelConfig preset (default micro)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default 1)")
    ap.add_argument("--tokens-only", action="store_true", help="report tokens per image, time nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import io

    from PIL import Image

    from acorn.infer import Engine, SamplingParams
    from acorn.model.transformer import ModelConfig
    from acorn.tokenizer.bpe import Tokenizer
    from acorn.vision.encoder import VisionConfig
    from acorn.vision.llava import IMAGE_TOKEN, Llava, LlavaConfig

    tok = Tokenizer.train([TEXT * 20], 300, chat_format="acorn", special_tokens=[IMAGE_TOKEN])
    torch.manual_seed(0)
    text_cfg = ModelConfig.from_preset(args.preset, vocab_size=max(tok.vocab_size, 512))
    cfg = LlavaConfig(vision=VisionConfig(image_size=args.image_size, patch_size=args.patch_size),
                      text=text_cfg, image_token_id=tok.special_tokens[IMAGE_TOKEN])
    dtype = getattr(torch, args.dtype)
    model = Llava(cfg).to(device=args.device, dtype=dtype).eval()
    engine = Engine(model, tok, prefix_caching=False, max_num_batched_tokens=4096)
    buf = io.BytesIO()
    Image.new("RGB", (args.image_size, args.image_size), (200, 40, 40)).save(buf, format="PNG")
    picture = buf.getvalue()
    text_msgs = [{"role": "user", "content": TEXT}]
    image_msgs = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": TEXT}]}]
    n_text, n_image = len(engine.chat_prompt(text_msgs)), len(engine.chat_prompt(image_msgs))
    print(f"tokens per image: {engine.tokens_per_image} ({args.image_size}x{args.image_size} pixels in "
          f"{args.patch_size}x{args.patch_size} patches); prompt {n_text} tokens without the image, {n_image} with it")
    if args.tokens_only:
        return

    one = SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True)  # a prefill and its first token
    pixels = model.vision.normalize(torch.rand(1, 3, args.image_size, args.image_size, device=args.device))

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    jobs = {"text": lambda: engine.chat(text_msgs, one), "image": lambda: engine.chat(image_msgs, one),
            "encoder": lambda: torch.inference_mode()(model.image_features)(pixels.to(dtype))}
    for fn in jobs.values():  # warm up
        fn()
    times = {k: [] for k in jobs}
    for _ in range(args.runs):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"decoder {args.preset} ({text_cfg.n_layer} layers, d_model {text_cfg.d_model}), {args.dtype} on "
          f"{args.device}, medians of {args.runs}:")
    print(f"  prefill without the image  {med['text']:8.2f} ms  ({n_text} tokens)")
    print(f"  prefill with the image     {med['image']:8.2f} ms  ({n_image} tokens; {med['image'] / med['text']:.2f}x)")
    print(f"  of which the encoder       {med['encoder']:8.2f} ms  (vision encoder + projector, one image)")


if __name__ == "__main__":
    main()
