"""RL rollouts: prompts in, scored samples out, through the one engine, served to the one loop.

What GRPO and PPO share (acorn.train.rl holds what differs: advantages and
losses). One iteration of the outer loop:

  1. prompts   the next `prompts` rows of this process's share of the data
               (shuffled each pass; under torchrun each rank has its own rows
               and generates its own rollouts);
  2. generate  n samples of each with the Engine, which holds the policy
               itself: the same parameter tensors the optimizer updates, so
               there are no weights to copy in. What must go after an update
               is the prefix cache, whose keys and values the old weights
               computed: it is reset before every batch;
  3. score     the reward functions (acorn.train.rewards), per completion;
  4. log-probs one forward of the policy (old_logprobs: the ratio's
               denominator), the reference (for the KL term) and the value
               head (PPO), without gradients, under the training autocast, so
               the first inner step starts at ratio 1 whatever numerics the
               engine sampled with. Fully on-policy (one epoch, one
               minibatch) skips the policy's: the loss uses its own detached
               log-probs, as TRL does;
  5. advantages: the method's own (rl.py);
  6. the batch is served `epochs` times, shuffled, in micro-batches of
     train.micro_batch sequences; fit takes `accumulation` of them per
     optimizer step, so each pass is `minibatches` steps.

The layout of a batch is TRL's: prompts left-padded, completions
right-padded after them, so completion token t of every row sits in the same
column and every per-token tensor is (rows, completion width).

The loader keeps a batch until it is used up, and its state (the unused
micro-batches included) goes into each checkpoint, so a resumed run continues
with exactly the rollouts it would have trained on.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.fileio import read_jsonl


@dataclass
class RolloutConfig:
    prompts: int = 8  # prompts per rollout batch, per process
    n: int = 8  # samples per prompt (GRPO's group size G; PPO usually 1)
    max_new_tokens: int = 64
    temperature: float = 1.0  # the policy's log-probs are of logits / temperature, as sampled
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_prompt_tokens: int = 0  # 0: the model's context minus max_new_tokens; longer prompts are left out (counted)
    epochs: int = 1  # passes over each rollout batch (GRPO's mu, PPO's ppo_epochs)
    minibatches: int = 1  # optimizer steps per pass: the batch split in this many


# ------------------------------------------------------------------ prompts
@dataclass
class Prompt:
    ids: list[int]  # what the engine continues
    prompt: str | list  # as the data gave it: what reward functions see
    columns: dict  # the row's other fields (the world's `answer`, a JSON `schema`, ...)


def render_prompt(row: dict, tok, where: str = "") -> tuple[list[int], str | list]:
    """A prompt-only row -> (token ids, the prompt as given). TRL's formats:
    `prompt` as text (BOS + text, no template) or as a conversation (chat
    template, ending in the assistant's turn header); the world's eval rows
    (`question`) count as a one-turn conversation."""
    prompt = row.get("prompt")
    if prompt is None and isinstance(row.get("question"), str):
        prompt = [{"role": "user", "content": row["question"]}]
    if isinstance(prompt, str):
        return ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt), prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        if prompt[-1]["role"] == "assistant":
            raise AcornError(f"{where}: the prompt ends with an assistant turn; a prompt-only row ends where the "
                             "model should start writing (drop the answer, or put it in another column)")
        return tok.apply_chat_template(prompt, add_generation_prompt=True, tools=row.get("tools")), prompt
    raise AcornError(f"{where}: a prompt-only row needs 'prompt' (text, or a list of chat messages with 'role' and "
                     f"'content'); it has {', '.join(map(str, row)) or 'no fields'}")


def load_prompts(paths, tok, *, max_tokens: int) -> tuple[list[Prompt], int]:
    """Every row of the JSONL files as a Prompt; returns them and how many were
    left out for being longer than max_tokens."""
    prompts, too_long = [], 0
    for path in paths:
        for i, row in enumerate(read_jsonl(path), 1):
            if not isinstance(row, dict):
                raise AcornError(f"{path}:{i}: a row is a JSON object, not {type(row).__name__}")
            ids, prompt = render_prompt(row, tok, where=f"{path}:{i}")
            if len(ids) > max_tokens:
                too_long += 1
                continue
            prompts.append(Prompt(ids, prompt, {k: v for k, v in row.items() if k != "prompt"}))
    if not prompts:
        raise AcornError(f"no prompts of at most {max_tokens} tokens in {', '.join(map(str, paths))}")
    return prompts, too_long


# ------------------------------------------------------------------ batches
@dataclass
class RolloutBatch:
    """Sampled sequences and what the loss needs of each completion token.
    Per-token tensors are (rows, C): column t is completion token t."""

    input_ids: Tensor  # (B, P + C) prompts left-padded to P, completions right-padded to C
    attention_mask: Tensor  # (B, P + C) 1 at real tokens
    mask: Tensor  # (B, C) 1.0 at completion tokens: what is trained on
    advantages: Tensor | None = None  # (B,) one per sequence (GRPO) or (B, C) one per token (PPO)
    old_logprobs: Tensor | None = None  # (B, C) log pi_old; None: on-policy, the loss detaches its own
    ref_logprobs: Tensor | None = None  # (B, C) the reference's, for a KL term
    old_values: Tensor | None = None  # (B, C) PPO: the value head's at sampling time
    returns: Tensor | None = None  # (B, C) PPO: the value head's targets

    @property
    def completion_width(self) -> int:
        return self.mask.shape[1]

    def select(self, rows: Tensor | list[int]) -> "RolloutBatch":
        """Some rows, without the columns that are padding in all of them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        attn = self.attention_mask[rows]
        width = self.completion_width
        prompt_width = attn.shape[1] - width
        first = int(attn[:, :prompt_width].any(0).long().argmax())  # the first prompt column any row uses
        used = max(1, int(self.mask[rows].sum(1).max()))  # the longest completion among them
        cols = slice(first, prompt_width + used)
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif f.name in ("input_ids", "attention_mask"):
                out[f.name] = t[rows][:, cols]
            elif t.dim() == 2:
                out[f.name] = t[rows][:, :used]
            else:
                out[f.name] = t[rows]
        return RolloutBatch(**out)


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> RolloutBatch:
    """Prompt ids and completion ids -> a RolloutBatch in TRL's layout (no advantages yet)."""
    p_width, c_width = max(map(len, prompts)), max(map(len, completions))
    ids, attn, mask = [], [], []
    for p, c in zip(prompts, completions):
        left, right = p_width - len(p), c_width - len(c)
        ids.append([pad_id] * left + p + c + [pad_id] * right)
        attn.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        mask.append([1.0] * len(c) + [0.0] * right)
    return RolloutBatch(torch.tensor(ids), torch.tensor(attn), torch.tensor(mask))


# ------------------------------------------------------------------ log-probs
def completion_logprobs(logits: Tensor, input_ids: Tensor, width: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Log-probability of each of the last `width` tokens under the logits
    that predicted it (the position before), and the entropy of that
    distribution (no gradient: it is logged, not trained). Float32, over
    logits / temperature: the distribution the engine sampled from before any
    top-k / top-p cut, as TRL computes it."""
    logits = logits[:, -width - 1:-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, input_ids[:, -width:, None]).squeeze(-1) - log_z
    with torch.no_grad():
        entropy = log_z - (logits.softmax(-1) * logits).sum(-1)
    return logp, entropy


def policy_forward(model: nn.Module, batch: RolloutBatch, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """(log-probs, entropies, values or None), each (B, C), for the completions
    of a batch: one call of the model as trained (a Transformer, or PPO's
    policy with its value head, whose output also carries `values`)."""
    attn = batch.attention_mask
    out = model(batch.input_ids, attention_mask=None if bool(attn.all()) else attn)
    width = batch.completion_width
    logp, entropy = completion_logprobs(out.logits, batch.input_ids, width, temperature)
    values = getattr(out, "values", None)
    return logp, entropy, None if values is None else values[:, -width - 1:-1].float()


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model under a policy trained as LoRA adapters: TRL's reference
    when the policy is a PEFT model (no second copy of the weights)."""
    from acorn.model import lora

    active = lora.active_adapter(model)
    lora.set_active(model, None)
    try:
        yield model
    finally:
        lora.set_active(model, active)


# ------------------------------------------------------------------ one rollout batch
@dataclass
class Rollout:
    """One rollout batch before advantages: the padded batch with its log-probs,
    and per completion its reward (nan: unscored) and the engine's Completion."""

    batch: RolloutBatch
    rewards: Tensor  # (N,) float
    completions: list
    prompts: list[Prompt]  # one per completion
    metrics: dict[str, float] = field(default_factory=dict)


class RolloutWorker:
    """Makes rollout batches: generate (engine), score (rewards), log-probs (policy, reference, values).

    policy: the module being trained (its parameters are the engine's); reference: a frozen
    model, "adapters" (the policy's base without its LoRA adapters) or None (no KL term).
    rewards: [(name, function)] with weights. needs_old_logprobs: False when fully on-policy."""

    def __init__(self, *, engine, policy: nn.Module, reference, rewards, reward_weights, cfg: RolloutConfig,
                 micro_batch: int, device: torch.device, autocast: Callable = nullcontext, seed: int = 0,
                 rank: int = 0, skip_reward_errors: bool = False, needs_old_logprobs: bool = True):
        self.engine, self.policy, self.reference = engine, policy, reference
        self.rewards, self.reward_weights, self.skip_reward_errors = rewards, reward_weights, skip_reward_errors
        self.cfg, self.micro_batch, self.device, self.autocast = cfg, micro_batch, device, autocast
        self.seed, self.rank, self.needs_old_logprobs = seed, rank, needs_old_logprobs

    def sampling_params(self, iteration: int, prompts: int = 0):
        from acorn.infer.sampling import SamplingParams

        c = self.cfg
        # A seed per (run seed, iteration): rollouts are a function of the weights and the step, so a
        # resumed run samples what the uninterrupted one did. The engine draws sample j of prompt i with
        # seed + i * n + j; rank r's prompts come after the `prompts` of each rank before it in the step's
        # global batch, so they start r * prompts * n further on: the samples are those one process with
        # every rank's prompts would draw (torchrun with k processes trains on the same rollouts as one).
        seed = hash((self.seed, iteration)) % 2**62 + self.rank * prompts * c.n
        return SamplingParams(n=c.n, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
                              top_p=c.top_p, seed=seed, logprobs=0)

    def __call__(self, prompts: list[Prompt], iteration: int) -> Rollout:
        t0 = time.perf_counter()
        self.engine.reset_prefix_cache()  # the weights changed since these blocks were computed
        completions = self.engine.generate([p.ids for p in prompts], self.sampling_params(iteration, len(prompts)))
        t1 = time.perf_counter()
        each = [p for p in prompts for _ in range(self.cfg.n)]
        scores = score_completions(each, completions, self.rewards, self.reward_weights, group=self.cfg.n,
                                   skip_errors=self.skip_reward_errors)
        t2 = time.perf_counter()
        tok = self.engine.tokenizer
        pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
        batch = pad_batch([p.ids for p in each], [c.token_ids for c in completions], pad)
        if self.needs_old_logprobs or getattr(self.policy, "value_head", None) is not None:
            batch.old_logprobs, batch.old_values = self.forward(self.policy, batch)
        if self.reference is not None:
            with adapters_disabled(self.policy) if self.reference == "adapters" else nullcontext():
                ref = self.policy if self.reference == "adapters" else self.reference
                batch.ref_logprobs, _ = self.forward(ref, batch)
        t3 = time.perf_counter()

        rewards = torch.tensor(scores.rewards, dtype=torch.float32)
        lengths = batch.mask.sum(1)
        metrics = {"reward": nanmean(rewards), "reward_std": nanstd(rewards),
                   **{f"reward/{k}": nanmean(torch.tensor(v)) for k, v in scores.per_function.items()},
                   "completion_tokens": float(lengths.mean()),
                   "truncated": sum(c.finish_reason == "length" for c in completions) / len(completions),
                   "reward_errors": float(len(scores.failed_prompts)),
                   "rollout_tokens": float(lengths.sum()), "batch_tokens": float(batch.attention_mask.sum()),
                   "rollout_generate_s": t1 - t0, "rollout_score_s": t2 - t1,
                   "rollout_logprob_s": t3 - t2}
        metrics["rollout_tok_s"] = metrics["rollout_tokens"] / max(t1 - t0, 1e-9)
        if batch.old_logprobs is not None and self.cfg.temperature == 1.0:
            # The engine's own log-probs of what it sampled against the trainer's: the
            # training-inference mismatch (numerics, dtype, kernels); ~0 in float32.
            engine_lp = torch.zeros_like(batch.mask)
            for i, c in enumerate(completions):
                engine_lp[i, :len(c.logprobs)] = torch.tensor([e["logprob"] for e in c.logprobs])
            metrics["sampler_logprob_gap"] = float(((engine_lp - batch.old_logprobs).abs() * batch.mask).sum()
                                                   / batch.mask.sum())
        return Rollout(batch, rewards, completions, each, metrics)

    @torch.no_grad()
    def forward(self, model: nn.Module, batch: RolloutBatch) -> tuple[Tensor, Tensor | None]:
        """Log-probs (and values, for a model that has them) of every completion, a micro-batch at a time."""
        from acorn.train.loop import to_device

        n, width = batch.mask.shape
        logps, values = torch.zeros(n, width), None
        for start in range(0, n, self.micro_batch):
            rows = list(range(start, min(n, start + self.micro_batch)))
            part = to_device(batch.select(rows), self.device)
            with self.autocast():
                lp, _, v = policy_forward(model, part, self.cfg.temperature)
            w = lp.shape[1]
            logps[rows, :w] = lp.cpu() * part.mask.cpu()
            if v is not None:
                values = torch.zeros(n, width) if values is None else values
                values[rows, :w] = v.cpu() * part.mask.cpu()
        return logps, values


def score_completions(prompts: list[Prompt], completions: list, rewards, weights, *, group: int = 1,
                      skip_errors: bool = False):
    """acorn.train.rewards.score over engine Completions, one prompt each, in TRL's
    terms: conversational prompts get their completion as an assistant message."""
    from acorn.train.rewards import score

    texts = [[{"role": "assistant", "content": c.text}] if isinstance(p.prompt, list) else c.text
             for p, c in zip(prompts, completions)]
    columns = {k: [p.columns.get(k) for p in prompts] for k in dict.fromkeys(k for p in prompts for k in p.columns)}
    return score(rewards, weights, [p.prompt for p in prompts], texts, [c.token_ids for c in completions], columns,
                 group=group, skip_errors=skip_errors)


def nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def nanstd(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.std()) if x.numel() > 1 else 0.0


# ------------------------------------------------------------------ the loader fit runs
class RolloutLoader:
    """The loader the one loop (acorn.train.loop.fit) runs for RL: micro-batches
    of rollouts, a new rollout batch whenever the last one is used up.

    make_batch(prompts, iteration) -> (RolloutBatch with advantages, metrics) is
    the method's step 1-5; it may have state_dict()/load_state_dict() (PPO's
    adaptive KL coefficient), saved with the loader's."""

    def __init__(self, prompts: list[Prompt], make_batch, *, prompts_per_batch: int, micro_batch: int,
                 epochs: int = 1, seed: int = 0, rank: int = 0, world: int = 1):
        if len(prompts) < prompts_per_batch * world:
            raise AcornError(f"{len(prompts)} prompts for rollout batches of {prompts_per_batch} prompts x "
                             f"{world} processes; lower --rollout.prompts or add data")
        self.prompts, self.make_batch = prompts, make_batch
        self.per_batch, self.micro_batch, self.epochs = prompts_per_batch, micro_batch, epochs
        self.seed, self.rank, self.world = seed, rank, world
        self.iteration, self.data_epoch, self.cursor = 0, 0, 0
        self._order = self._permutation()
        self.queue: list[RolloutBatch] = []
        self.metrics: dict[str, float] = {}

    def _permutation(self) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + self.data_epoch).shuffle(order)
        return order

    def next_prompts(self) -> list[Prompt]:
        span = self.per_batch * self.world
        if self.cursor + span > len(self._order):
            self.data_epoch, self.cursor = self.data_epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.cursor:self.cursor + span]
        self.cursor += span
        return [self.prompts[i] for i in idx[self.rank * self.per_batch:(self.rank + 1) * self.per_batch]]

    def __iter__(self):
        return self

    def __next__(self) -> RolloutBatch:
        if not self.queue:
            self.refill()
        return self.queue.pop(0)

    def refill(self) -> None:
        batch, metrics = self.make_batch(self.next_prompts(), self.iteration)
        n = batch.mask.shape[0]
        if n % self.micro_batch:
            raise AcornError(f"a rollout batch of {n} sequences does not split into micro-batches of "
                             f"{self.micro_batch}; make --rollout.prompts x --rollout.n a multiple of "
                             "--train.micro_batch")
        for epoch in range(self.epochs):
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.iteration, epoch)) % 2**62)
            order = torch.randperm(n, generator=g)
            self.queue += [batch.select(rows) for rows in order.split(self.micro_batch)]
        self.iteration += 1
        self.metrics = metrics

    def pop_metrics(self) -> dict[str, float]:
        """The newest rollout batch's metrics, once (fit logs them with the step that made it),
        averaged over processes."""
        metrics, self.metrics = self.metrics, {}
        if self.world > 1 and metrics:
            keys = sorted(metrics)
            t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64,
                             device="cuda" if tdist.get_backend() == "nccl" else "cpu")
            tdist.all_reduce(t)
            metrics = dict(zip(keys, (t / self.world).tolist()))
        return metrics

    def state_dict(self) -> dict:
        state = {"iteration": self.iteration, "data_epoch": self.data_epoch, "cursor": self.cursor,
                 "queue": [dataclasses.asdict(b) for b in self.queue], "metrics": dict(self.metrics)}
        if hasattr(self.make_batch, "state_dict"):
            state["method"] = self.make_batch.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.data_epoch, self.cursor = state["iteration"], state["data_epoch"], state["cursor"]
        self._order = self._permutation()
        self.queue = [RolloutBatch(**b) for b in state["queue"]]
        self.metrics = dict(state.get("metrics", {}))
        if "method" in state:
            self.make_batch.load_state_dict(state["method"])
