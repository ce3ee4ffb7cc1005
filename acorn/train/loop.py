"""The one training loop: a fit loop around one accumulation step, for any loss.

Every trainer is a config, a model, a loader and a loss function handed to
`fit` (pretraining and SFT today; DPO, a reward model, distillation and RL
the same way); none carries a copy of the loop:

    run = open_run(...)                         # acorn.train.run: output dir, resume, DDP / FSDP2, config.yaml
    for step in range(run.start_step, max_steps):
        lr = schedule(step)                     # warmup, then cosine (or WSD)
        micro_batches = [next(loader) ...]      # `accumulation` of them: a large batch from small ones
        train_step(model, micro_batches, loss_fn, optimizers)
            # backward each micro-batch's loss; every item weighs the same; NaN guard; clip; update
        log, evaluate, checkpoint               # metrics.jsonl, progress bar, checkpoints/step_N.pt
        (Ctrl-C: stop at the next step boundary, checkpoint, say from which step --resume goes on)
    run.finish()                                # model/ (Hugging Face format), loss.png, report.md

The loss function: `loss_fn(model, batch) -> LossOutput(loss, weight, metrics)`.
It gets the model as trained (wrapped for DDP / FSDP2 / torch.compile: call
it, do not reach into it) and one micro-batch from the loader, its tensors
already on the device, under autocast. It returns
- loss: the SUM over its items (tokens, pairs, sequences) of the per-item
  loss, a 0-dim tensor to backpropagate. Sums, not means, because every item
  of a step must weigh the same however the items fall into micro-batches and
  processes (SFT masks and pairs make the counts differ), and the step can
  only divide by the step's total once it has seen every micro-batch: it
  divides the gradients then, as torchtune does.
- weight: how many items the sum is over (int or 0-dim tensor).
- metrics: other sums over the same items to log as means, e.g. the number
  of pairs ranked right, logged as an accuracy.
- metric_weights: for a metric that is a sum over other items than the loss's
  (KTO's rewards of the desirable examples only), how many: it is logged as
  its sum over the step divided by theirs.
The logged `loss` is loss / weight over the whole step. How each trainer fits:
- pretraining and SFT (`acorn.train.pretrain.next_token_loss`): cross-entropy
  summed over the trained tokens (targets != -100), weight = those tokens.
- DPO and its kin: the batch holds chosen and rejected sequences; the frozen
  reference model's log-probabilities come in the batch or from a reference
  the loss closes over (functools.partial(dpo_loss, reference=ref, beta=0.1),
  run under torch.no_grad()); loss = sum over pairs of -logsigmoid(beta *
  margin), weight = pairs, metrics = {"accuracy": pairs ranked right}.
- a reward model: the same pairs through a scalar head, loss = sum of
  -logsigmoid(r_chosen - r_rejected), weight = pairs.
- distillation: the teacher (closed over, no grad) gives logits; loss = sum
  over tokens of KL(teacher || student), weight = tokens.
- RL (PPO, GRPO; acorn.train.rl): the loader generates rollouts with the
  current policy through the engine and yields them as micro-batches (tokens,
  old log-probabilities, advantages); loss = sum over tokens (or completions)
  of the clipped policy-gradient term, weight = their number. A loader with a
  pop_metrics() method adds what it measured (rewards, KL, rollout time) to
  the step's row.

The evaluation function: `evaluate(model) -> dict` of metrics for the row of
that step (`val_loss` is plotted and reported). `fit` calls it on every process
(FSDP2 needs them all for a forward), in eval mode, under torch.no_grad() and
autocast, without torch.compile's wrapper (DDP / FSDP2 kept), every
cfg.eval.every steps, at the last step and when time runs out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from acorn import hardware
from acorn.errors import AcornError
from acorn.train.optim import lr_multiplier, set_lr
from acorn.train.run import Dist, open_run, progress


# ----------------------------------------------------------------- config
@dataclass
class LoopConfig:
    seq_len: int = 256  # tokens per training row (at most model.max_seq_len)
    micro_batch: int = 16  # sequences per forward pass, per process
    batch_tokens: int = 16384  # tokens per optimizer step, all processes: accumulation = this / (micro x seq x world)
    max_steps: int = 1000  # optimizer steps; the learning-rate schedule spans them
    max_minutes: float | None = None  # stop early when this much time has passed (the schedule still uses max_steps)
    # fit_minutes: max_steps is then a first guess, re-set (the schedule with it) from the run's own pace
    # every REFIT_EVERY steps through its first half; a resumed run keeps its max_steps.
    fit_minutes: float | None = None  # end at this many minutes: max_steps re-set from the run's own pace as it goes
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # compute precision; auto: bf16 where fast
    compile: bool = False  # torch.compile the model
    pack_documents: bool = False  # rows start at document boundaries; no attention across documents
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2)
    nan_patience: int = 5  # consecutive non-finite steps before giving up

    LIMITS: ClassVar[dict[str, str]] = {"seq_len": ">= 1", "micro_batch": ">= 1", "batch_tokens": ">= 1",
                                        "max_steps": ">= 0", "max_minutes": "> 0", "fit_minutes": "> 0",
                                        "nan_patience": ">= 1"}


@dataclass
class EvalConfig:
    every: int = 100  # evaluate every this many steps (and at the end); 0: never
    batches: int = 20  # validation micro-batches per evaluation
    log_every: int = 10  # kept so older config files load; every step is logged to metrics.jsonl
    checkpoint_every: int = 250  # save a checkpoint every this many steps (and at the end); 0: only at the end

    LIMITS: ClassVar[dict[str, str]] = {"every": ">= 0", "batches": ">= 1", "log_every": ">= 1",
                                        "checkpoint_every": ">= 0"}


REFIT_EVERY = 25  # steps between re-plans of a time-fitted run (LoopConfig.fit_minutes)
REFIT_WARMUP = 3  # steps not timed for the speed (compilation, the first allocations): their time still counts


def refit_steps(done: int, elapsed: float, minutes: float, warm: tuple[int, float]) -> int:
    """The step count that ends a run at `minutes` (LoopConfig.fit_minutes): `done` steps taken
    in `elapsed` seconds, at the seconds per step since `warm` = (steps, seconds) at the end of
    the warm-up, so a compilation counts as time spent and not as the pace; evaluations and
    checkpoints between are part of the pace. At least one step more than done."""
    per_step = (elapsed - warm[1]) / max(1, done - warm[0])
    return done + max(1, int((60 * minutes - elapsed) / per_step))


def accumulation(batch_tokens: int, micro_batch: int, seq_len: int, world: int = 1) -> int:
    """Micro-batches per process per optimizer step: the step's tokens over what
    one forward pass of every process holds (at least one)."""
    return max(1, round(batch_tokens / (micro_batch * seq_len * world)))


# ------------------------------------------------------- the loss contract
@dataclass
class LossOutput:
    """One micro-batch's loss; see the module docstring for the contract."""

    loss: Tensor  # sum over the items, with a graph
    weight: Tensor | int  # how many items
    metrics: dict[str, Tensor | float] = field(default_factory=dict)  # more sums over the same items
    metric_weights: dict[str, Tensor | int] = field(default_factory=dict)  # a metric's own item count, if not weight


LossFn = Callable[[nn.Module, Any], LossOutput]


@dataclass
class StepOutput:
    loss: float  # mean over the step's items, all micro-batches and processes
    grad_norm: float  # before clipping
    weight: float  # the step's items (trained tokens for next-token losses)
    metrics: dict[str, float]  # the loss function's metrics, means over the same items
    skipped: bool  # the loss or the gradient was not finite: no update


# ----------------------------------------------------------------- the step
def train_step(model: nn.Module, micro_batches: list, loss_fn: LossFn, optimizers: list[torch.optim.Optimizer], *,
               device: torch.device, autocast: Callable = contextlib.nullcontext, grad_clip: float | None = None,
               world: int = 1) -> StepOutput:
    """One optimizer step over this process's micro-batches:

    1. each micro-batch: loss_fn under autocast, then backward; gradients add up.
       Under DDP they are all-reduced once, after the last (no_sync on the others).
    2. sum the losses, weights and metrics over micro-batches and processes.
    3. divide the gradients by the step's weight: every item weighs the same.
    4. clip the global gradient norm: one bad batch cannot blow up the weights.
    5. a loss or gradient that is not finite: drop the gradients, skip the update
       (the caller decides how many in a row it tolerates).
    6. optimizer step.
    """
    sums, keys, own = None, [], []
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast():
                out = loss_fn(model, to_device(batch, device))
            out.loss.backward()
        keys, own = list(out.metrics), list(out.metric_weights)
        row = torch.stack([_scalar(v, device) for v in (out.loss, out.weight, *out.metrics.values(),
                                                         *out.metric_weights.values())])
        sums = row if sums is None else sums + row
    if world > 1:
        tdist.all_reduce(sums)
    loss_sum, weight, *rest = sums.tolist()
    metric_sums, metric_counts = rest[:len(keys)], dict(zip(own, rest[len(keys):]))
    n = max(weight, 1.0)  # a step with no trained item has a zero gradient and loss 0

    # DDP and FSDP2 average gradients over processes: undo that, divide by the items instead.
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(world / n)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf")))
    loss = loss_sum / n
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if not skipped:  # a non-finite loss or gradient would poison the weights
        for o in optimizers:
            o.step()
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    # A metric over items of its own that none of this step had is left out (not logged as 0).
    metrics = {k: v / (metric_counts[k] if k in metric_counts else n) for k, v in zip(keys, metric_sums)
               if metric_counts.get(k, 1) > 0}
    return StepOutput(loss, grad_norm, weight, metrics, skipped)


def _scalar(value, device) -> Tensor:
    return torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, device=device).float()


def to_device(batch, device: torch.device):
    """The batch with its tensors on the device: a tensor, or a dataclass, dict, list or tuple of them."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------ interrupts
class StopOnInterrupt:
    """Ctrl-C (SIGINT) during fit as a request to stop at the next step boundary
    with a checkpoint, instead of an exception at an arbitrary point (mid-update,
    mid-write), which would lose everything since the last checkpoint. A second
    Ctrl-C stops at once, without one. Only the main thread can take signals:
    elsewhere the default behaviour stays."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        elif threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the previous one was not Python's

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: the handler may run inside a print (the progress bar's) to the same stream.
        os.write(2, b"\ninterrupted: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once, "
                    b"without one)\n")

    def agreed(self, dist: Dist, device: torch.device) -> bool:
        """Whether any process was interrupted: all processes stop at the same step
        (a checkpoint is collective under FSDP2, and DDP steps are in lockstep)."""
        if dist.world == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item())


def _agree_min(value: int, dist: Dist, device: torch.device) -> int:
    """The smallest of every process's `value` (DDP steps are in lockstep: one step count for all)."""
    if dist.world == 1:
        return value
    t = torch.tensor([value], device=device, dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return int(t.item())


def _stop_with_checkpoint(run, step: int, saved: int, loader, stage: str) -> None:
    """Save the `step` steps done (unless a checkpoint holds them already), say how to
    go on, and raise KeyboardInterrupt (acorn's command line then exits with 130)."""
    if run.bar is not None:
        run.bar.close()
    if step > saved:
        run.checkpoint(step, loader)
        done = f"checkpoint saved at step {step} ({run.out / 'checkpoints' / f'step_{step:07d}.pt'})"
    elif step:
        done = f"the checkpoint of step {step} holds everything done"
    else:
        done = "no step had finished: nothing to save"
    if run.dist.main:
        # The run's own config.yaml: the command that continues it, whoever started it (acorn speedrun too).
        again = f"acorn {stage} --config {run.out / 'config.yaml'} --resume" if stage in ("pretrain", "sft") \
            else "the same command with --resume"
        how = f"`{again}` continues from step {step}" if step else "run the command again to start"
        print(f"\ninterrupted at step {step}: {done}; {how}", flush=True)
    raise KeyboardInterrupt


# ------------------------------------------------------------------ fit
def fit(cfg, model: nn.Module, loader, loss_fn: LossFn, *, device: torch.device, dist: Dist,
        evaluate: Callable[[nn.Module], dict] | None = None, tokenizer=None, resume: bool = False,
        stage: str = "train") -> Path:
    """Train `model` to minimise `loss_fn` on `loader` for cfg.train.max_steps steps; returns the run directory.

    cfg: a stage's config with out, model, optim (OptimConfig), train (LoopConfig) and eval (EvalConfig).
    loader: this process's micro-batches, forever (next()), with state_dict() / load_state_dict()
        so that a resumed run continues with the batch it would have seen.
    loss_fn, evaluate: see the module docstring. tokenizer: saved with the model.
    """
    with StopOnInterrupt() as stop:  # Ctrl-C: a checkpoint at the next step boundary (see _fit's loop)
        return _fit(cfg, model, loader, loss_fn, device=device, dist=dist, evaluate=evaluate, tokenizer=tokenizer,
                    resume=resume, stage=stage, stop=stop)


def _fit(cfg, model: nn.Module, loader, loss_fn: LossFn, *, device: torch.device, dist: Dist,
         evaluate: Callable[[nn.Module], dict] | None, tokenizer, resume: bool, stage: str,
         stop: StopOnInterrupt) -> Path:
    run = open_run(cfg, model, loader, dist, resume=resume)
    train = cfg.train
    dtype = hardware.resolve_dtype(train.dtype, device)
    autocast = functools.partial(hardware.autocast, device, dtype)
    accum = accumulation(train.batch_tokens, train.micro_batch, train.seq_len, dist.world)
    tokens_per_step = accum * train.micro_batch * train.seq_len * dist.world
    peak = hardware.peak_flops(device, dtype)
    flops_per_token = run.raw_model.config.flops_per_token(train.seq_len)
    if dist.main:
        n_params = run.raw_model.num_params()
        trained = sum(p.numel() for p in {id(p): p for p in run.raw_model.parameters() if p.requires_grad}.values())
        print(f"{stage}: {n_params / 1e6:.2f}M parameters"
              f"{f' ({trained / 1e6:.3f}M trained, the rest frozen)' if trained < n_params else ''}, "
              f"{dtype} on {device}"
              f"{f' x {dist.world}' if dist.world > 1 else ''}; {train.max_steps} steps of "
              f"{tokens_per_step:,} tokens ({train.micro_batch} x {train.seq_len} x {accum} accumulation"
              f"{f' x {dist.world} processes' if dist.world > 1 else ''})"
              f"{f', their number fitted to {train.fit_minutes:g} min as it goes' if train.fit_minutes else ''}",
              flush=True)

    run.bar = progress(run.start_step, train.max_steps, dist.main)
    run.model.train()
    t_start = time.perf_counter()
    bad_steps = 0
    max_steps = train.max_steps  # fit_minutes re-sets it from the measured pace
    refit = train.fit_minutes is not None and run.start_step == 0
    warm = None  # (steps, seconds) when the warm-up ended
    try:
        saved = run.start_step  # the step of the newest checkpoint on disk
        step = run.start_step - 1
        while step + 1 < max_steps:
            step += 1
            # Ctrl-C asks to stop here, between steps, where the weights, the optimizers, the
            # loader and the RNGs all belong to the same step: a checkpoint of them resumes exactly.
            if stop.agreed(dist, device):
                _stop_with_checkpoint(run, step, saved, loader, stage)
            t0 = time.perf_counter()
            set_lr(run.optimizers, lr_multiplier(step, max_steps, cfg.optim), cfg.optim)
            micro_batches = [next(loader) for _ in range(accum)]
            s = train_step(run.model, micro_batches, loss_fn, run.optimizers, device=device, autocast=autocast,
                           grad_clip=cfg.optim.grad_clip, world=dist.world)
            if s.skipped:
                bad_steps += 1
                if dist.main:
                    print(f"step {step}: loss {s.loss} / grad norm {s.grad_norm} not finite; step skipped", flush=True)
                if bad_steps >= train.nan_patience:
                    raise AcornError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (last at step {step}); lower "
                        f"--optim.lr (now {cfg.optim.lr}), check the data, or use --train.dtype float32"
                    )
                continue
            bad_steps = 0
            tok_s = tokens_per_step / (time.perf_counter() - t0)
            row = {"step": step + 1, "loss": s.loss, "lr": run.optimizers[-1].param_groups[0]["lr"],
                   "grad_norm": s.grad_norm, "tokens": (step + 1) * tokens_per_step, "tok_s": tok_s,
                   "mfu": flops_per_token * tok_s / (peak * dist.world) if peak else None, **s.metrics}
            if hasattr(loader, "pop_metrics"):  # what the loader measured making these batches (RL: rollouts)
                row.update(loader.pop_metrics())
            elapsed = time.perf_counter() - t_start
            if refit and warm is None and step + 1 >= REFIT_WARMUP:
                warm = (step + 1, elapsed)
            elif refit and warm and (step + 1) % REFIT_EVERY == 0 and step + 1 <= max_steps // 2:
                max_steps = _agree_min(refit_steps(step + 1, elapsed, train.fit_minutes, warm), dist, device)
                run.bar.total = max_steps
                run.bar.refresh()
            last = step + 1 == max_steps
            out_of_time = train.max_minutes is not None and elapsed > 60 * train.max_minutes
            if evaluate is not None and cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or last or out_of_time):
                # A compiled model evaluates uncompiled: a forward under no_grad, and the last,
                # shorter validation batch, would each compile another graph (20-30 s apiece
                # on a 2-core CPU) for a few batches every cfg.eval.every steps.
                evaluated = getattr(run.model, "_orig_mod", run.model)
                evaluated.eval()
                with torch.no_grad(), autocast():
                    row.update(evaluate(evaluated))
                run.model.train()
            run.log(row)
            if (cfg.eval.checkpoint_every and (step + 1) % cfg.eval.checkpoint_every == 0) or last or out_of_time:
                run.checkpoint(step + 1, loader)
                saved = step + 1
            if out_of_time:
                if dist.main:
                    print(f"\nstopping at step {step + 1}: --train.max_minutes {train.max_minutes} reached", flush=True)
                break
    except BaseException:
        run.bar.close()  # the error that follows starts on a line of its own
        raise
    run.finish(tokenizer, time.perf_counter() - t_start, stage)
    return run.out


