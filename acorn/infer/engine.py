"""The inference engine: autoregressive generation with a KV cache.

A decoder-only model predicts one token at a time; generating n tokens means
n forward passes. Recomputing the whole sequence each time costs O(n^2) work
per token (every token attends to every earlier one, all over again). But a
token's keys and values never change once computed, so the engine keeps them
(the KV cache) and runs:

  prefill  the prompt, all its tokens in one forward pass, which fills the cache
  decode   one new token per step; only that token goes through the model and
           attends to the cached keys/values: O(n) per token instead of O(n^2)

Two ways to hold the cache, one loop of requests over them:

  paged (the default)  the serving engine (Kwon et al. 2023, vLLM): KV memory
           in fixed-size blocks with per-request block tables (acorn.infer.paged),
           a scheduler that admits and retires requests between steps
           (continuous batching, chunked prefill, preemption; acorn.infer.scheduler)
           and prefix caching. add_request() / step() / abort() are that loop
           (step() returns a StepOutput per sample that moved: new ids, text,
           log-probs, and the Completion once it ends); generate() and
           stream() drive it like any other client.
  plain (paged=False)  the textbook version: a batch of prompts left-padded
           into one tensor, prefilled together, each step concatenating the new
           keys/values onto a contiguous per-row cache (acorn.model.transformer.KVCache); a
           finished row is dropped. Kept as the reference the paged path is
           tested against, for ALiBi models, and for beam search.

Everything else is shared: a request's sampling state and text
(acorn.infer.sequence: stop tokens, stop strings held back until they
resolve, whole UTF-8 characters), the sampling step (acorn.infer.sampling),
and the API: generate(), stream(), chat(), score(). The CLI, evaluation, the
server, RAG and agents all go through Engine.

Images (LLaVA, acorn.vision.llava): given a Llava, the engine steps its
decoder (model.language) and runs its vision encoder once per request for the
feature rows that take the image placeholders' place (acorn.infer.multimodal:
chunked prefill, preemption and the prefix cache, keyed by each image's
digest, work as for text). chat() takes image parts in the messages;
add_request/generate/stream take images=[...] for a prompt of ids.

The engine runs the model it is given in eval mode (no dropout) for each
forward pass and puts every module's training flag back afterwards, so a
trainer can hand it the policy it is training (RL rollouts) and go on
training.
"""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from acorn import hardware
from acorn.errors import AcornError
from acorn.infer.paged import BlockManager, PagedKV
from acorn.infer.multimodal import RequestImages, request_images
from acorn.infer.sampling import (NON_FINITE, GenerationError, SamplingParams, non_finite_rows, plain_argmax, sample,
                                  token_logprobs)
from acorn.infer.scheduler import Request, Scheduler
from acorn.infer.sequence import Completion, SequenceState, StepOutput
from acorn.model import lora


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


@contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode (dropout off) for a forward pass, then every
    module's training flag as it was: an engine handed a model that is being
    trained must not leave it in eval mode (nor turn on a submodule that was
    deliberately left in eval)."""
    # A model whose root is in eval mode was put there by model.eval() (or
    # loaded so): skip the walk over every module, ~70 us a step.
    training = [m for m in model.modules() if m.training] if model.training else []
    for m in training:
        m.training = False
    try:
        yield model
    finally:
        for m in training:
            m.training = True


def default_stop_ids(tokenizer, extra: Sequence[int] = ()) -> frozenset[int]:
    """The ids that end a generation unless told otherwise: the tokenizer's
    end-of-sequence token, the end-of-turn tokens of its chat format (any
    known format whose stop tokens the vocabulary holds), and `extra` (e.g.
    the eos_token_id list of a checkpoint's generation_config.json)."""
    from acorn.chat.formats import FORMATS

    ids = set(extra)
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    for fmt in FORMATS.values():
        if fmt.name == tokenizer.chat_format or fmt.eos_token in tokenizer.special_tokens:
            ids.update(tokenizer.special_tokens[t] for t in fmt.stop_tokens if t in tokenizer.special_tokens)
    return frozenset(ids)


def chat_format_of(tokenizer) -> str | None:
    """The tokenizer's chat format by name, or recognised by its special tokens."""
    from acorn.chat.formats import FORMATS

    if tokenizer.chat_format in FORMATS:
        return tokenizer.chat_format
    for fmt in FORMATS.values():
        if all(t in tokenizer.special_tokens for t in fmt.stop_tokens):
            return fmt.name
    return None


class Engine:
    """A model and its tokenizer, and the generation loop over them.

    paged: run on the paged KV pool with continuous batching (default), or on
        the plain contiguous cache (False; also what ALiBi models use).
    kv_cache_memory: bytes for the paged pool; default: room for max_num_seqs
        requests at the model's full context, capped at 1 GiB (at least one
        full context).
    block_size: tokens per KV block.
    max_num_seqs: most requests in one step.
    max_num_batched_tokens: most tokens in one step (decodes + prefill chunks);
        a longer prompt is prefilled in chunks of at most this many tokens.
    prefix_caching: share the KV blocks of common prompt prefixes.
    kv_cache_dtype: "auto" (the model's dtype) or "int8" (per-head scales; half
        of bf16's memory, a quarter of fp32's).
    speculative: a drafter for speculative decoding (acorn.infer.speculative:
        PromptLookup(k) or DraftModel(small_model, k)); from_pretrained builds
        one from speculative_model="ngram" or a checkpoint directory.
    lora_adapters: {name: PEFT adapter directory}: many LoRA adapters on one
        base (S-LoRA). Each is loaded unmerged (acorn.model.lora.load_adapter);
        a request picks one with SamplingParams.lora, and requests for different
        adapters run in the same batch, each token applying its own. A request
        without one runs the model as it is (the base, or its active adapter).
        The prefix cache never shares blocks across adapters (cache_salt).
    pack_weights: lay the model's linear weights out for fast inference
        (acorn.model.packed: q/k/v and gate/up fused into one matmul each,
        bf16 weights pre-packed for oneDNN's AMX/AVX512-BF16 kernels on CPU).
        The packed copies are a cache beside the weights, rebuilt when they
        change (a training step); False leaves the model as it is.
    int8_head: run the output head from an int8 copy of its weights (one scale per row)
        where the activations are bf16 on CPU, as llama.cpp's Q8_0 / Q4_0 files keep their
        head at 8 bits (acorn.model.packed.pack). Changes the logits slightly; pays with
        compile_decode (50M int8 model: 0.66x -> 0.76-0.82x llama.cpp's Q8_0 speed, 0.97x
        once the compiled step lost its Python; docs/BENCHMARKS.md, llamacpp), where a bf16
        head is a large share of a small model's step. Needs pack_weights.

    model may be a Llava (acorn.vision.llava): self.model is then its decoder,
    self.vision_model the whole, and requests may carry images.
    compile_decode: run a step in which one request alone decodes one token (no
        LoRA adapter, no speculative draft) as a torch.compile'd graph with
        static shapes (acorn.infer.compiled: the context padded to a bucket of
        256, 512, ... tokens, the weights frozen in); every other step runs
        eagerly. 1.4-2.3x faster per token for a 50M model on CPU (0.93-1.07x
        llama.cpp's speed at every precision: docs/BENCHMARKS.md, llamacpp), but the first
        step of each bucket compiles (7-27 s on 2 cores; docs/BENCHMARKS.md,
        decode-compile), so it pays in a long-lived process, not a short run.
        The paged engine only (paged=False ignores it).
    """

    def __init__(self, model, tokenizer, *, device=None, stop_token_ids: Sequence[int] = (), paged: bool = True,
                 kv_cache_memory: int | None = None, block_size: int = 16, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 512, prefix_caching: bool = True, kv_cache_dtype: str = "auto",
                 speculative=None, lora_adapters: dict | None = None, pack_weights: bool = True,
                 compile_decode: bool = False, int8_head: bool = False):
        if int8_head and not pack_weights:
            raise AcornError("int8_head runs the head from a packed int8 copy: it needs pack_weights=True")
        if device is not None:
            model = model.to(device)
        # A vision-language model: the loop steps its decoder; the encoder makes the image rows.
        self.vision_model = model if hasattr(model, "image_features") and hasattr(model, "language") else None
        if self.vision_model is not None:
            model = self.vision_model.language
        self.images_encoded = 0  # images that went through the vision encoder
        if lora_adapters:
            from acorn.model import quant

            for directory in lora_adapters.values():  # every directory checked before any layer changes
                lora.read_adapter_config(directory)
            active = lora.active_adapter(model)  # loading must not switch what a plain request runs
            for name, directory in lora_adapters.items():
                lora.load_adapter(model, directory, name=name, dtype=quant.float_dtype(model))
            lora.set_active(model, active)
        if pack_weights:
            from acorn.model import packed

            packed.pack(model, int8_head=int8_head)
        self.adapters = lora.adapter_names(model)  # what SamplingParams.lora may name
        self.model = model  # its training flag is left alone: see eval_mode()
        self.tokenizer = tokenizer
        self.device = model.device
        self.stop_token_ids = default_stop_ids(tokenizer, stop_token_ids)
        self.chat_format = chat_format_of(tokenizer)
        hardware.flush_denormals(self.device)
        cfg = model.config
        self.paged = paged and cfg.positions != "alibi"
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise AcornError("max_num_seqs and max_num_batched_tokens must be at least 1")
        self.dtype = next(model.parameters()).dtype
        if kv_cache_dtype not in ("auto", "int8"):
            raise AcornError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; choose auto (the model's dtype) or int8")
        self.kv_cache_dtype = kv_cache_dtype
        per_token = PagedKV.bytes_per_token(cfg, self.dtype, kv_cache_dtype)
        if kv_cache_memory is None:
            kv_cache_memory = max(min(max_num_seqs * cfg.max_seq_len * per_token, 1 << 30), cfg.max_seq_len * per_token)
        self.block_size = block_size
        self.num_blocks = max(1, int(kv_cache_memory // (per_token * block_size)))
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.prefix_caching = prefix_caching
        # The paged path's memory, allocated here, once: the pool of KV blocks,
        # their bookkeeping, and the scheduler that hands them out.
        self.kv = self.blocks = self.scheduler = None
        if self.paged:
            self.blocks = BlockManager(self.num_blocks, block_size, prefix_caching=prefix_caching)
            self.kv = PagedKV(cfg, self.num_blocks, block_size, dtype=self.dtype, device=self.device,
                              kv_dtype=kv_cache_dtype)
            self.scheduler = Scheduler(self.blocks, max_num_seqs=max_num_seqs,
                                       max_num_batched_tokens=max_num_batched_tokens)
        self._groups: dict[str, list[Request]] = {}  # request id -> its n Requests
        self._next_id = 0
        self.computed_tokens = 0  # tokens that went through the model on the paged path
        self.speculative = speculative
        self.drafted_tokens = self.accepted_tokens = 0
        if speculative is not None:
            if not self.paged:
                raise AcornError("speculative decoding runs on the paged engine (paged=True)")
            speculative.vocab_size = tokenizer.vocab_size
        self.compiled = None  # the batch-1 decode step's compiled graphs (compile_decode)
        if compile_decode and self.paged:
            from acorn.infer.compiled import CompiledDecode

            self.compiled = CompiledDecode(model, self.kv, vocab=tokenizer.vocab_size)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device="auto", speculative_model=None,
                        num_speculative_tokens: int = 4, **options) -> "Engine":
        """A checkpoint directory (acorn.load) with its tokenizer files beside the weights.
        speculative_model: "ngram" (prompt lookup) or a draft checkpoint with the same tokenizer.
        options: the engine's keyword arguments (paged, kv_cache_memory, lora_adapters, ...)."""
        from acorn.model.checkpoint import load
        from acorn.tokenizer.bpe import Tokenizer

        for directory in (options.get("lora_adapters") or {}).values():  # a bad adapter fails before the base loads
            lora.read_adapter_config(directory)

        from acorn.vision.llava import is_llava_dir, load_llava

        if is_llava_dir(path):  # a vision-language model: Llava and its tokenizer
            model, tokenizer = load_llava(path, device=device, dtype=dtype)
            if tokenizer is None:
                raise AcornError(f"{path}: no tokenizer files beside the weights; save the model with its tokenizer")
        else:
            model, tokenizer = load(path, dtype=dtype, device=device), Tokenizer.from_pretrained(path)
        decoder = getattr(model, "language", model)
        if tokenizer.vocab_size > decoder.config.vocab_size:
            raise AcornError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{decoder.config.vocab_size}; they do not belong together")
        if speculative_model is not None:
            from acorn.infer.speculative import DraftModel, PromptLookup

            if speculative_model == "ngram":
                options["speculative"] = PromptLookup(num_speculative_tokens)
            else:
                draft = load(speculative_model, dtype=decoder.dtype, device=decoder.device)
                if Tokenizer.from_pretrained(speculative_model).vocab_size != tokenizer.vocab_size:
                    raise AcornError(f"the draft model {speculative_model} has a different tokenizer than {path}; "
                                     "speculative decoding needs the same vocabulary")
                options["speculative"] = DraftModel(draft, num_speculative_tokens)
        return cls(model, tokenizer, stop_token_ids=_generation_config_eos(Path(path)), **options)

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
        """A conversation rendered with the chat template, ending in the assistant's turn header.
        Each image part becomes tokens_per_image placeholders (message_images lists the images);
        on a text-only model an image part is an AcornError."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools,
                                                  image_tokens=self.tokens_per_image)

    @property
    def tokens_per_image(self) -> int | None:
        """Placeholder tokens per image; None for a text-only model."""
        return self.vision_model.config.tokens_per_image if self.vision_model is not None else None

    def prepare_images(self, prompt_ids: Sequence[int], images=None) -> RequestImages | None:
        """A request's images (file paths, bytes, PIL images) checked against its prompt's
        placeholders and decoded; None without images. AcornError for images sent to a
        text-only model, a placeholder count that is not tokens_per_image per image, or
        bytes that are no image. The server calls it in the request's thread (a 400)."""
        if isinstance(images, RequestImages):
            return images
        vision = self.vision_model
        return request_images(list(prompt_ids), images,
                              image_token_id=vision.config.image_token_id if vision is not None else None,
                              tokens_per_image=self.tokens_per_image,
                              image_size=vision.config.vision.image_size if vision is not None else None)

    def _image_features(self, images: RequestImages) -> Tensor:
        """The request's feature rows (N * T, d), computed on first use and kept on it."""
        if images.features is None:
            vision = self.vision_model
            with eval_mode(vision):
                pixels = vision.vision.normalize(images.pixels.to(self.device).float() / 255.0)
                features = vision.image_features(pixels)
            images.features = features.reshape(-1, features.shape[-1]).to(self.dtype)
            self.images_encoded += images.pixels.shape[0]
        return images.features

    def validate_prompt(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise AcornError with one clear line if this request cannot run: an
        empty prompt, one past the model's context (or the KV pool), token ids
        outside the vocabulary. The server calls it in the request's own
        thread, to answer 400 before queueing."""
        model_vocab = self.model.config.vocab_size
        if any(not 0 <= i < model_vocab for i in prompt_ids):
            raise AcornError(f"prompt token ids must be in 0..{model_vocab - 1}")
        # Beam search runs on the plain cache, whatever the engine: no pool to fit.
        if self.paged and params.num_beams == 1 and len(prompt_ids) + 1 > self.kv_capacity:
            raise AcornError(f"the prompt has {len(prompt_ids)} tokens but the KV cache holds {self.kv_capacity}; "
                             f"give the engine more kv_cache_memory")
        if not prompt_ids:
            raise AcornError("the prompt is empty and the tokenizer has no BOS token to start from; give some text")
        max_len = self.model.config.max_seq_len
        if len(prompt_ids) >= max_len:
            raise AcornError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {max_len}")
        vocab = self.tokenizer.vocab_size
        bad = [i for i in (*params.logit_bias, *params.stop_token_ids) if not 0 <= i < vocab]
        if bad:
            raise AcornError(f"token id {bad[0]} in logit_bias/stop_token_ids is outside the vocabulary (0..{vocab - 1})")
        if params.lora is not None and params.lora not in self.adapters:
            raise AcornError(f"no LoRA adapter named {params.lora!r}; this engine has "
                             f"{', '.join(self.adapters) or 'none'} (load them with Engine(lora_adapters=...))")

    @property
    def kv_capacity(self) -> int:
        """Tokens the paged KV pool holds."""
        return self.num_blocks * self.block_size

    def _new_state(self, prompt: list[int], params: SamplingParams, seed_offset: int = 0,
                   index: int = 0) -> SequenceState:
        self.validate_prompt(prompt, params)
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.stop_token_ids)
        seq = SequenceState(prompt, params, stop_ids, self._generator(params, seed_offset),
                            self.tokenizer.stream_decoder(), self.model.config.max_seq_len, index)
        if params.guided is not None:
            from acorn.infer.structured import build_constraint

            seq.constraint = build_constraint(params.guided, self.tokenizer, stop_ids)
        return seq

    def _generator(self, params: SamplingParams, offset: int) -> torch.Generator:
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
        return torch.Generator(self.device).manual_seed(seed + offset)

    # ------------------------------------------------------------ sampling
    def _sample(self, logits: Tensor, seqs: list[SequenceState], argmax: Tensor | None = None) -> list[str]:
        """One token for each sequence from its logits row (raw model logits,
        cut to the tokenizer's vocabulary); returns each one's new text.

        A row that is not finite (NaN weights, an overflow) can give no token:
        that sequence fails (finish_reason "error") and the others go on.
        argmax: for one sequence, a compiled step's (argmax, row is finite)
        (acorn.infer.compiled), taken as the token when sampling would pick
        the plain argmax: no eager op on the logits at all."""
        if argmax is not None:
            s, = seqs
            if s.constraint is None and s.logprobs is None and plain_argmax(s.params, len(s.output), s.stop_ids):
                token, finite = argmax.tolist()
                if finite:
                    return [s.push(token)]
        bad = non_finite_rows(logits)
        if bool(bad.any()):
            keep = [i for i, b in enumerate(bad.tolist()) if not b]
            out = [""] * len(seqs)
            for i, b in enumerate(bad.tolist()):
                if b:
                    seqs[i].fail(NON_FINITE)
            if keep:
                texts = self._sample(logits[torch.tensor(keep, device=logits.device)], [seqs[i] for i in keep])
                for i, text in zip(keep, texts):
                    out[i] = text
            return out
        raw = logits
        guided = [i for i, s in enumerate(seqs) if s.constraint is not None]
        if guided:  # structured output: only the tokens that keep the text valid
            allowed = torch.stack([seqs[i].constraint.allowed(logits.shape[-1]) for i in guided]).to(logits.device)
            logits = logits.clone()
            rows = torch.tensor(guided, device=logits.device)
            logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
        nxt = sample(logits, [s.params for s in seqs], [s.output for s in seqs], [s.generator for s in seqs],
                     prompts=[s.prompt for s in seqs], stop_ids=[s.stop_ids for s in seqs])
        want = [i for i, s in enumerate(seqs) if s.logprobs is not None]
        if want:
            rows = torch.tensor(want, device=logits.device)
            k = max(seqs[i].params.logprobs for i in want)
            chosen, top_ids, top_lps = token_logprobs(raw[rows], nxt[rows], k)
            for j, i in enumerate(want):
                kk = seqs[i].params.logprobs
                seqs[i].logprobs.append({
                    "token_id": int(nxt[i]), "logprob": float(chosen[j]),
                    "top_logprobs": list(zip(top_ids[j, :kk].tolist(), top_lps[j, :kk].tolist())),
                })
        out = []
        for s, t in zip(seqs, nxt.tolist()):
            if s.constraint is not None:
                s.constraint.advance(t)
            out.append(s.push(t))
            if s.constraint is not None and not s.finished and s.constraint.done() and not s.stop_ids:
                s.finish_reason = "stop"  # complete, and no stop token to end it with
                out[-1] += s.push_end()
        return out

    # ------------------------------------------------------------ the paged loop
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, seed_offset: int = 0, images=None, **overrides) -> str:
        """Queue a request (params.n samples of one prompt) for step(); returns its id.

        With a seed, sample j draws with seed + seed_offset + j. images: one per
        tokens_per_image placeholders of the prompt, in order (see prepare_images)."""
        if not self.paged:
            raise AcornError("add_request() needs the paged engine (paged=True)")
        params = SamplingParams.merge(params, overrides)
        if params.num_beams > 1:
            raise AcornError("beam search runs through generate(), not the continuous-batching loop")
        ids = self.encode(prompt)
        if request_id is None:
            request_id, self._next_id = f"req-{self._next_id}", self._next_id + 1
        elif request_id in self._groups:
            raise AcornError(f"request id {request_id!r} is already in use")
        first = self._new_state(ids, params, seed_offset)
        images = self.prepare_images(ids, images)
        first.max_len = min(first.max_len, self.kv_capacity)  # one request alone always fits the pool
        seqs = [first] + [first.fork(j, self._generator(params, seed_offset + j), self.tokenizer.stream_decoder())
                          for j in range(1, params.n)]
        group = [Request(request_id, s.prompt, s, output=s.output, cache_salt=params.lora, images=images)
                 for s in seqs]
        group[0].forks = group[1:]  # they start from the first one's prefill
        self.scheduler.add(group[0])
        self._groups[request_id] = group
        return request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; False if it is unknown or done."""
        group = self._groups.pop(request_id, None)
        if group is None:
            return False
        for req in group:
            if req.state.finish_reason is None:
                req.state.finish_reason = "abort"
            self.scheduler.finish(req)
            if self.speculative is not None:
                self.speculative.release(req)
        return True

    def has_unfinished(self) -> bool:
        return self.paged and self.scheduler.num_unfinished > 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt prefix, so no later request reuses keys
        and values computed before now: call it after the model's weights
        change (an RL update), or before a measurement that must not hit the
        cache. Refused while requests are in flight: their blocks were
        computed with the old weights and would be registered again."""
        if not self.paged:
            return  # the plain cache lives only as long as one generate()
        if self.has_unfinished():
            raise AcornError(f"reset_prefix_cache() with {self.scheduler.num_unfinished} requests in flight; "
                             "let them finish or abort() them first")
        self.blocks.reset_prefix_cache()

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """One forward pass of the running batch. Returns a StepOutput for
        every sample that made progress: its new token ids, text and
        log-probs, and on its last step its finish reason and Completion
        (the engine forgets a finished request; its Completion is the record)."""
        from acorn.infer.paged import StepInput, attention_window, paged_forward

        kv, sched = self.kv, self.scheduler
        pieces = sched.schedule()
        if not pieces:
            return []
        if self.adapters:  # each adapter's tokens one contiguous slice of the step: no sorting in the layers
            pieces.sort(key=lambda piece: piece[0].state.params.lora or "")
        drafts = self._draft(pieces) if self.speculative is not None else {}
        inputs, wanted, loras = [], [], []  # wanted: (request, its first logits row, draft or None)
        features, feature_rows = [], []  # image rows of the placeholders this step covers, and their step rows
        n_rows = n_tokens = 0
        for req, n in pieces:
            c, draft = req.num_computed, drafts.get(req)
            if req.images is not None:
                lo, hi = req.images.span(c, c + n)
                if lo < hi:
                    features.append(self._image_features(req.images)[lo:hi])
                    feature_rows += [n_tokens + p - c for p in req.images.positions[lo:hi]]
            new = req.tokens[c:c + n] + (draft.tokens if draft is not None else [])
            n_tokens += len(new)
            wants = 0 if c + n < len(req.prompt) + len(req.output) else 1 + (len(draft.tokens) if draft else 0)
            inputs.append((req.table, c, new, wants))
            loras += [req.state.params.lora] * len(new)  # each token applies its request's adapter
            if wants:
                wanted.append((req, n_rows, draft))
                n_rows += wants
        with eval_mode(self.model):
            argmax = None  # the compiled step's greedy token (CompiledDecode)
            if not features and self._static(pieces, drafts):
                (table, c, new, _), = inputs
                logits, argmax = self.compiled(new[0], c, table)
                logits = logits[:, :self.tokenizer.vocab_size]
            else:
                step = StepInput.build(inputs, self.block_size, attention_window(self.model.config), self.device)
                images = (torch.cat(features), torch.tensor(feature_rows, device=self.device)) if features else None
                logits = paged_forward(self.model, step, kv, self._adapter_index(loras),
                                       images)[:, :self.tokenizer.vocab_size]
        self.computed_tokens += n_tokens
        for req, n in pieces:
            if req not in drafts:  # a checked draft counts its kept tokens below
                sched.computed(req, n)
        # A request whose prompt is now computed starts its siblings (n > 1) from its blocks.
        rows, reqs, deltas = [], [], {}
        starts = {req: len(req.output) for req, _, _ in wanted}  # where this step's tokens begin
        for req, row, draft in wanted:
            if draft is not None:
                deltas[req] = self._check(req, draft, logits[row:row + 1 + len(draft.tokens)])
                continue
            rows.append(row)
            reqs.append(req)
            for child in req.forks:
                if self._fork(req, child):
                    rows.append(row)
                    reqs.append(child)
                    starts[child] = 0
                else:  # no block to fork into: it queues and recomputes (mostly from the prefix cache)
                    sched.add(child)
            req.forks = []
        if reqs:
            sampled = logits if rows == list(range(logits.shape[0])) else logits[torch.tensor(rows, device=logits.device)]
            deltas.update(zip(reqs, self._sample(sampled, [r.state for r in reqs], argmax if len(reqs) == 1 else None)))
        for req in deltas:
            if req.state.finished:
                self._retire(req)
        return [req.state.step_output(req.request_id, starts[req], text) for req, text in deltas.items()]

    def _static(self, pieces, drafts) -> bool:
        """Whether this step runs the compiled graph (acorn.infer.compiled): compile_decode is
        on and one request alone decodes one token, with no adapter and no draft, and the
        weights are the graphs' (or packed anew)."""
        if self.compiled is None or len(pieces) != 1 or drafts or self.adapters:
            return False
        req, n = pieces[0]
        return n == 1 and req.remaining == 1 and self.compiled.ready()

    def _adapter_index(self, loras: Sequence[str | None]) -> tuple[Tensor, list] | None:
        """(index, names) for lora.use_adapters: item i applies names[index[i]]; None when no
        item asks for an adapter (the model then runs as it is). An item without one gets
        the model's active adapter (names[0]), as it would alone."""
        if not any(loras):
            return None
        names = [lora.active_adapter(self.model), *sorted({n for n in loras if n is not None})]
        position = {n: i for i, n in enumerate(names) if i}
        return torch.tensor([position.get(n, 0) for n in loras]), names

    def _retire(self, req: Request) -> None:
        req.state.cached_tokens = req.cached_tokens  # every Completion is made from the state
        if req.state.finish_reason == "error":
            # Its keys and values may hold NaN: out of the prefix cache, and wiped before reuse.
            self.kv.clear(self.blocks.forget(req.table))
        self.scheduler.finish(req)
        if self.speculative is not None:
            self.speculative.release(req)
        group = self._groups.get(req.request_id)
        if group is not None and all(r.state.finished for r in group):
            del self._groups[req.request_id]

    # ------------------------------------------------------------ speculative decoding
    def _draft(self, pieces) -> dict:
        """Draft tokens for the decoding requests that can take them (and the KV slots to check them)."""
        from acorn.infer.speculative import speculates

        drafts = {}
        for req, n in pieces:
            seq = req.state
            if n != 1 or req.remaining != 1 or req.forks or not speculates(seq.params):
                continue
            # Never draft past the request's end: max_new_tokens and the context.
            room = min(seq.params.max_new_tokens - len(seq.output), seq.max_len - len(req.tokens)) - 1
            if room < 1:
                continue
            draft = self.speculative.propose(req, req.tokens, seq.params, seq.generator)
            if len(draft.tokens) > room:
                draft.tokens = draft.tokens[:room]
                draft.probs = draft.probs[:room] if draft.probs is not None else None
            if draft.tokens and self.blocks.allocate(req.table, req.num_computed + 1 + len(draft.tokens)):
                drafts[req] = draft
        return drafts

    def _check(self, req, draft, logits: Tensor) -> str:
        """Verify a request's draft against the target's logits (k + 1 rows);
        push the tokens that come out; returns their text."""
        from acorn.infer.sampling import sampling_probs
        from acorn.infer.speculative import verify

        seq = req.state
        if bool(non_finite_rows(logits).any()):
            seq.fail(NON_FINITE)
            return ""
        greedy = seq.params.temperature == 0
        target = logits if greedy else sampling_probs(logits.float(), [seq.params] * logits.shape[0])
        tokens, kept = verify(target, draft, greedy, seq.generator)
        self.scheduler.computed(req, 1 + kept)  # the last token and the kept drafts are in the pool
        self.drafted_tokens += len(draft.tokens)
        self.accepted_tokens += kept
        text = ""
        for t in tokens:
            if seq.finished:
                break
            text += seq.push(t)
        return text

    def _fork(self, parent, child) -> bool:
        try:
            table, fresh = self.blocks.fork(parent.table, parent.num_computed)
        except MemoryError:
            return False
        if fresh is not None:
            self.kv.copy_block(parent.table[len(table) - 1], fresh, parent.num_computed % self.block_size)
        child.table, child.hashes, child.num_computed = table, list(parent.hashes), parent.num_computed
        child.cached_tokens = parent.cached_tokens
        self.scheduler.start_running(child)
        return True

    def _run(self, jobs: list[tuple[list[int], SamplingParams, int, RequestImages | None]]) -> list[Completion]:
        """(prompt ids, params, seed offset, images) each as one request, continuously
        batched; their Completions in request order, samples in index order."""
        ids = [self.add_request(p, params, seed_offset=offset, images=images) for p, params, offset, images in jobs]
        mine, done = set(ids), {}
        want = sum(params.n for _, params, _, _ in jobs)
        try:
            while len(done) < want:
                outs = self.step()
                if not outs and not self.scheduler.running:
                    raise AcornError("the engine cannot make progress: a waiting request does not fit the KV cache")
                done.update({(o.request_id, o.index): o.completion for o in outs
                             if o.completion is not None and o.request_id in mine})
        finally:
            for r in ids:
                self.abort(r)
        return [done[r, j] for r, (_, params, _, _) in zip(ids, jobs) for j in range(params.n)]

    def _run_plain(self, jobs: list[tuple[list[int], SamplingParams, int, None]]) -> list[Completion]:
        """The same on the plain cache: every sample a row of one static batch."""
        seqs = [self._new_state(p, params, offset + j, j) for p, params, offset, _ in jobs for j in range(params.n)]
        for _ in self._steps(seqs):
            pass
        return [s.completion() for s in seqs]

    # ------------------------------------------------------------ the plain loop
    @torch.inference_mode()
    def _steps(self, seqs: list[SequenceState]) -> Iterator[list[str]]:
        """Prefill all sequences together, then decode one token per step,
        yielding each sequence's new text after every step ('' for finished ones)."""
        model = self.model
        width = max(len(s.prompt) for s in seqs)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s.prompt)) + s.prompt for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs], device=self.device)
        # One adapter per row: a (B, 1) index broadcasts over the row's tokens.
        index, names = self._adapter_index([s.params.lora for s in seqs]) or (None, [])
        index = None if index is None else index[:, None]
        # Without padding, no mask: the model then uses the fused causal attention kernel.
        with eval_mode(model), lora.use_adapters(model, index, names):
            out = model(ids, attention_mask=None if bool(mask.all()) else mask, use_cache=True, last_only=True)
        # A model's vocabulary may be padded past the tokenizer's (to a multiple
        # of 64, for fast matmuls): those ids have no text, so they are never sampled.
        vocab = self.tokenizer.vocab_size
        cache, logits = out.cache, out.logits[:, -1, :vocab]
        live = list(range(len(seqs)))  # rows of the cache -> index into seqs
        while True:
            deltas = [""] * len(seqs)
            for i, d in zip(live, self._sample(logits, [seqs[i] for i in live])):
                deltas[i] = d
            yield deltas
            keep = [r for r, i in enumerate(live) if not seqs[i].finished]
            if not keep:
                return
            nxt = torch.tensor([seqs[live[r]].output[-1] for r in keep], device=self.device)
            if len(keep) < len(live):
                cache = _select_rows(cache, torch.tensor(keep, device=self.device))
                live = [live[r] for r in keep]
                index = None if index is None else index[keep]
            # Per forward pass: the caller runs between our yields.
            with eval_mode(model), lora.use_adapters(model, index, names):
                out = model(nxt[:, None], cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1, :vocab]

    # ------------------------------------------------------------ the API
    def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]] | Sequence[int],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *, images=None,
                 **overrides) -> list[Completion]:
        """params.n Completions per prompt (prompt-major order). params: one
        SamplingParams for all prompts, or one per prompt (as vLLM's
        LLM.generate); overrides apply to each. On the paged engine all
        prompts are continuously batched; on the plain one they run as one
        static batch. With a seed, sample j of prompt i draws with seed + j +
        the number of samples of the prompts before it (i * n when all ask
        for n: so n copies of a prompt give n different samples, and the
        first matches stream() with the same seed). images: for one prompt its
        list of images, for several a list (or None) per prompt."""
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts, images = [prompts], None if images is None else [images]
        per_prompt = self._params_per_prompt(params, overrides, len(prompts))
        encoded = [self.encode(p) for p in prompts]
        if images is not None and len(images) != len(prompts):
            raise AcornError(f"images for {len(images)} prompts but {len(prompts)} prompts; give one list per prompt")
        prepared = [self.prepare_images(ids, im) for ids, im in zip(encoded, images or [None] * len(prompts))]
        if any(im is not None and (not self.paged or p.num_beams > 1) for im, p in zip(prepared, per_prompt)):
            raise AcornError("images run on the paged engine's sampling loop: not with paged=False or beam search")
        offsets = itertools.accumulate((p.n for p in per_prompt), initial=0)
        jobs = list(zip(encoded, per_prompt, offsets, prepared))
        beams = {i: self._beam(ids, p) for i, (ids, p, _, _) in enumerate(jobs) if p.num_beams > 1}
        sampled = [job for i, job in enumerate(jobs) if i not in beams]
        run = self._run if self.paged else self._run_plain
        completions = iter(run(sampled) if sampled else [])
        out = []
        for i, (_, p, _, _) in enumerate(jobs):
            out.extend(beams[i] if i in beams else itertools.islice(completions, p.n))
        _raise_if_failed(out)
        return out

    @staticmethod
    def _params_per_prompt(params, overrides: dict, n_prompts: int) -> list[SamplingParams]:
        if params is None or isinstance(params, SamplingParams):
            return [SamplingParams.merge(params, overrides)] * n_prompts
        params = list(params)
        if len(params) != n_prompts:
            raise AcornError(f"{len(params)} SamplingParams for {n_prompts} prompts; give one for all, "
                             "or one per prompt")
        return [SamplingParams.merge(p, overrides) for p in params]

    def _beam(self, prompt: list[int], params: SamplingParams) -> list[Completion]:
        from acorn.infer.beam import beam_search

        seq = self._new_state(prompt, params)  # validates the prompt; its stop ids
        max_new = min(params.max_new_tokens, self.model.config.max_seq_len - len(prompt))
        with eval_mode(self.model), lora.use_adapter(self.model, params.lora):  # every beam the request's adapter
            beams = beam_search(self.model, prompt, num_beams=params.num_beams, max_new_tokens=max_new,
                                vocab_size=self.tokenizer.vocab_size, stop_ids=seq.stop_ids,
                                length_penalty=params.length_penalty, early_stopping=params.early_stopping,
                                num_return=params.n, min_new_tokens=params.min_new_tokens)
        out = []
        for j, beam in enumerate(beams):
            s = SequenceState(prompt, params, seq.stop_ids, seq.generator, self.tokenizer.stream_decoder(),
                              seq.max_len, j)
            for t in beam.token_ids:
                if not s.finished:
                    s.push(t)
            c = s.completion()
            c.score = beam.score
            out.append(c)
        return out

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *, images=None,
               **overrides) -> Iterator[str]:
        """The text of one completion as it is generated, in pieces that are
        whole characters and never run past a stop string. The generator's
        return value is the Completion (`c = yield from engine.stream(...)`).
        Closing the iterator early aborts the request and frees its memory."""
        params = SamplingParams.merge(params, overrides)
        if params.n != 1 or params.num_beams != 1:
            raise AcornError("stream() produces one sample; use generate() for n > 1 or beam search")
        if not self.paged:
            if self.prepare_images(self.encode(prompt), images) is not None:
                raise AcornError("images run on the paged engine's sampling loop: not with paged=False")
            seq = self._new_state(self.encode(prompt), params)
            for (delta,) in self._steps([seq]):
                if delta:
                    yield delta
            _raise_if_failed([seq.completion()])
            return seq.completion()
        rid = self.add_request(prompt, params, images=images)
        completion = None
        try:
            while completion is None:
                for out in self.step():
                    if out.request_id == rid:
                        if out.text:
                            yield out.text
                        completion = out.completion
        finally:
            self.abort(rid)
        _raise_if_failed([completion])
        return completion

    def chat(self, messages: list[dict], params: SamplingParams | None = None, *,
             tools: list[dict] | None = None, **overrides) -> Completion:
        """The assistant's next turn. It ends at the chat format's end-of-turn
        token (among the default stop ids). With tools, tool calls in the reply
        are parsed into Completion.tool_calls and removed from its text. Image parts
        ({"type": "image", "image": path, bytes or PIL image}) need a vision model."""
        from acorn.chat.template import message_images

        params = SamplingParams.merge(params, overrides)
        if params.n != 1:
            raise AcornError("chat() returns one reply; for n > 1 use acorn.LLM.chat or generate(chat_prompt(...))")
        (completion,) = self.generate([self.chat_prompt(messages, tools=tools)], params,
                                      images=[message_images(messages)])
        if tools:
            self.parse_tools(completion)
        return completion

    def parse_tools(self, completion: Completion) -> Completion:
        """Move the tool calls in a completion's text into completion.tool_calls."""
        if self.chat_format is not None:
            from acorn.chat.tools import parse_tool_calls

            completion.text, completion.tool_calls = parse_tool_calls(completion.text, self.chat_format)
        return completion

    # ------------------------------------------------------------ accounting
    def stats(self) -> dict:
        """KV memory and scheduler figures (for logs, benchmarks and /metrics)."""
        per_token = PagedKV.bytes_per_token(self.model.config, self.dtype, self.kv_cache_dtype)
        out = {"paged": self.paged, "block_size": self.block_size, "num_blocks": self.num_blocks,
               "kv_bytes_per_token": per_token, "kv_cache_bytes": self.num_blocks * self.block_size * per_token}
        if self.paged:
            b, s = self.blocks, self.scheduler
            out.update(blocks_in_use=b.num_used, blocks_cached=len(b.evictable), running=len(s.running),
                       waiting=len(s.waiting), preemptions=s.preemptions, prefix_hit_tokens=b.hit_tokens,
                       prefix_query_tokens=b.query_tokens, computed_tokens=self.computed_tokens,
                       images_encoded=self.images_encoded)
        if self.compiled is not None:
            out.update(compiled_graphs=len(self.compiled.graphs), compile_seconds=self.compiled.compile_seconds)
        if self.speculative is not None:
            out.update(drafted_tokens=self.drafted_tokens, accepted_tokens=self.accepted_tokens,
                       acceptance_rate=self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None)
        return out

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
        # Every continuation shares the prompt's ids: one request, the prompt run once.
        ctx = conts[0][0]
        scored = iter(self.loglikelihood([(ctx, [c for _, c in conts if c])])[0])
        return [next(scored)[0] if cont else 0.0 for _, cont in conts]

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *,
                      batch_tokens: int = 8192, progress=None) -> list[list[tuple[float, bool]]]:
        """For each request (context ids, [continuation ids, ...]): per
        continuation, the summed log-probability of its tokens after the
        context, and whether greedy decoding would have produced it (each of
        its tokens the argmax): what log-likelihood evaluation asks of a model.

        A multiple-choice question is one context and several answers, so the
        context goes through the model once, and its KV cache is shared by all
        the answers, which run after it as one batch (lm-evaluation-harness
        runs context + answer once per answer instead). Requests are sorted by
        length and batched up to about batch_tokens padded tokens.

        Contexts and continuations must be non-empty and each context +
        continuation fit the model's context window; the caller truncates
        (acorn.eval does it as lm-evaluation-harness does). progress(n) is
        called with the number of continuations each batch finished."""
        reqs = [([int(i) for i in ctx], [[int(i) for i in c] for c in conts]) for ctx, conts in requests]
        for ctx, conts in reqs:
            if not ctx or any(not c for c in conts):
                raise AcornError("loglikelihood needs a non-empty context and non-empty continuations")
            longest = len(ctx) + max(map(len, conts), default=0) - 1
            if longest > self.model.config.max_seq_len:
                raise AcornError(f"a context + continuation of {longest + 1} tokens does not fit the model's "
                                 f"context of {self.model.config.max_seq_len}; truncate the context")
        out: list[list[tuple[float, bool]]] = [[] for _ in reqs]
        order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + max(map(len, reqs[i][1]), default=0)))
        batches, batch, ctx_w, cont_w, rows = [], [], 0, 0, 0
        for i in order:  # longest first: a batch's first request sets its width
            ctx, conts = reqs[i]
            w, cw, r = max(ctx_w, len(ctx)), max([cont_w, *map(len, conts)]), rows + len(conts)
            if batch and (len(batch) + 1) * w + r * cw > batch_tokens:
                batches.append(batch)
                batch, w, cw, r = [], len(ctx), max(map(len, conts), default=0), len(conts)
            batch.append(i)
            ctx_w, cont_w, rows = w, cw, r
        for batch in batches + [batch] * bool(batch):
            self._loglikelihood_batch([reqs[j] for j in batch], [out[j] for j in batch])
            if progress is not None:
                progress(sum(len(reqs[j][1]) for j in batch))
        return out

    def _loglikelihood_batch(self, reqs: list[tuple[list[int], list[list[int]]]],
                             outs: list[list[tuple[float, bool]]]) -> None:
        """One batch of loglikelihood(): the contexts (left-padded) in one
        forward pass that keeps their KV cache and the logits of their last
        token, which predict every continuation's first token; then every
        continuation but its last token (right-padded) in one forward pass
        over that cache, each row reading its own context's keys and values."""
        from acorn.model.transformer import KVCache

        dev = self.device
        width = max(len(ctx) for ctx, _ in reqs)
        ids = torch.tensor([[0] * (width - len(ctx)) + ctx for ctx, _ in reqs], device=dev)
        mask = torch.tensor([[0] * (width - len(ctx)) + [1] * len(ctx) for ctx, _ in reqs], device=dev)
        with eval_mode(self.model):
            first = self.model(ids, attention_mask=None if bool(mask.all()) else mask, use_cache=True,
                               last_only=True)
        first_lp = first.logits[:, -1].float().log_softmax(-1)  # (B, V)
        owner = [b for b, (_, conts) in enumerate(reqs) for _ in conts]
        conts = [c for _, cs in reqs for c in cs]
        heads = torch.tensor([c[0] for c in conts], device=dev)
        lp0 = first_lp[owner, heads]
        greedy0 = first_lp[owner].argmax(-1) == heads
        totals, greedy = lp0.tolist(), greedy0.tolist()
        rest = [r for r, c in enumerate(conts) if len(c) > 1]
        if rest:
            w = max(len(conts[r]) for r in rest) - 1
            inp = torch.tensor([conts[r][:-1] + [0] * (w - len(conts[r]) + 1) for r in rest], device=dev)
            m = torch.tensor([[1] * (len(conts[r]) - 1) + [0] * (w - len(conts[r]) + 1) for r in rest], device=dev)
            rows = torch.tensor([owner[r] for r in rest], device=dev)
            cache = first.cache
            past = KVCache(keys=[k.index_select(0, rows) for k in cache.keys],
                           values=[v.index_select(0, rows) for v in cache.values],
                           mask=cache.mask.index_select(0, rows), positions=cache.positions.index_select(0, rows))
            with eval_mode(self.model):
                hidden = self.model(inp, attention_mask=m, cache=past, hidden_only=True).hidden
                # The vocabulary-sized head only where a continuation token is
                # predicted, not at the padding: it is most of a small model's cost.
                lp = self.model.logits(hidden[m.bool()]).float().log_softmax(-1)
            targets = torch.tensor([t for r in rest for t in conts[r][1:]], device=dev)
            token_lp = lp.gather(1, targets[:, None])[:, 0]
            hit = lp.argmax(-1) == targets
            start = 0
            for r in rest:
                n = len(conts[r]) - 1
                totals[r] += float(token_lp[start:start + n].sum())
                greedy[r] = greedy[r] and bool(hit[start:start + n].all())
                start += n
        r = 0
        for (_, cs), out in zip(reqs, outs):
            for _ in cs:
                out.append((totals[r], bool(greedy[r])))
                r += 1


def _raise_if_failed(completions) -> None:
    """The synchronous API (generate, stream, chat) raises where a sample failed:
    a caller gets the reason, never a Completion that is quietly garbage. The
    step() loop reports it instead (finish_reason "error" and Completion.error),
    so a server fails that request alone."""
    for c in completions:
        if c is not None and c.finish_reason == "error":
            raise GenerationError(c.error)


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
