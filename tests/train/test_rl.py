"""GRPO and PPO (acorn.train.rl) and their rollouts (acorn.train.rollouts).

The losses are held to references on the same inputs: TRL 1.16's GRPO loss
(GRPOTrainer._compute_loss, run on a minimal trainer object) for each loss
type, values and gradients; nanochat's REINFORCE with a group-mean baseline;
GAE on a case computed by hand; PPO's clipped losses, KL estimators and
whitening against the papers' formulas written out here (TRL 1.16 no longer
ships PPO). Then the machinery: the batch layout equals running each sequence
alone, the engine samples with the weights being trained, runs learn a toy
reward, resume exactly, and refuse bad input in one line."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from acorn.errors import AcornError
from acorn.train import rl
from acorn.train.rl import (GRPOConfig, GRPOSettings, KLController, PPOConfig, PPOSettings, gae, group_advantages,
                            grpo_loss, masked_whiten, ppo_loss, ppo_rewards)
from acorn.train.rollouts import RolloutBatch, load_prompts, pad_batch, policy_forward, render_prompt


# ------------------------------------------------------------------ GRPO against TRL
def _grpo_inputs(seed=0, b=4, p=3, c=5, v=11):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, v, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, 0] = 0  # left padding
    completion_ids = torch.randint(0, v, (b, c), generator=g)
    completion_mask = torch.ones(b, c, dtype=torch.long)
    completion_mask[1, 3:] = 0  # right padding: completions of different lengths
    completion_mask[2, 1:] = 0
    logits = torch.randn(b, p + c, v, generator=g)
    old = torch.randn(b, c, generator=g) * 0.3 - 2.0
    ref = torch.randn(b, c, generator=g) * 0.3 - 2.0
    adv = torch.randn(b, generator=g)
    return prompt_ids, prompt_mask, completion_ids, completion_mask, logits, old, ref, adv


def _trl_grpo_loss(loss_type, beta, epsilon, epsilon_high, temperature, max_completion_length, inputs, logits):
    """TRL 1.16's GRPOTrainer._compute_loss on a minimal trainer: everything it reads, with the model's
    per-token log-probs taken from `logits` by TRL's own selective_log_softmax."""
    from trl import GRPOTrainer
    from trl.trainer.utils import selective_log_softmax

    def logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **_):
        kept = logits[:, -logits_to_keep - 1:-1]
        logp = selective_log_softmax(kept, input_ids[:, -logits_to_keep:], temperature)
        return logp, torch.zeros_like(logp), None

    same = lambda t, **_: t  # noqa: E731 - one process: gathering and reducing change nothing
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=logps_and_entropies, aux_loss_enabled=False, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta, loss_type=loss_type,
        epsilon_low=epsilon, epsilon_high=epsilon_high, use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=SimpleNamespace(num_processes=1, gather=same, reduce=same, gather_for_metrics=same),
        _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)))
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("loss_type,trl_type,beta,eps_high", [
    ("dapo", "dapo", 0.0, None), ("dapo", "bnpo", 0.04, 0.28), ("grpo", "grpo", 0.04, None),
    ("dr_grpo", "dr_grpo", 0.1, 0.28),
])
def test_grpo_loss_and_gradient_equal_trls(loss_type, trl_type, beta, eps_high):
    prompt_ids, prompt_mask, completion_ids, completion_mask, logits, old, ref, adv = _grpo_inputs()
    temperature, max_new = 0.7, 6
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": adv, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
    theirs_logits = logits.clone().requires_grad_()
    theirs = _trl_grpo_loss(trl_type, beta, 0.2, eps_high or 0.2, temperature, max_new, inputs, theirs_logits)
    theirs.backward()

    ours_logits = logits.clone().requires_grad_()
    model = lambda ids, attention_mask=None: SimpleNamespace(logits=ours_logits)  # noqa: E731
    batch = RolloutBatch(torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
                         completion_mask.float(), advantages=adv, old_logprobs=old, ref_logprobs=ref)
    settings = GRPOSettings(loss_type=loss_type, epsilon=0.2, epsilon_high=eps_high, beta=beta)
    out = grpo_loss(model, batch, settings=settings, temperature=temperature, max_new_tokens=max_new)
    (out.loss / out.weight).backward()  # what the one loop's step does with one micro-batch
    assert (out.loss / out.weight).item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(ours_logits.grad, theirs_logits.grad, rtol=1e-5, atol=1e-7)
    clipped = out.metrics["clip_fraction"]
    assert 0 < clipped < out.weight  # the inputs are off-policy enough that clipping acts, but not everywhere


def test_group_advantages_are_trls_group_normalisation():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [2.0, float("nan"), -1.0, 0.0]])
    mean = torch.nanmean(rewards, dim=1, keepdim=True)
    expected = (rewards - mean) / (nanstd(rewards, dim=1).unsqueeze(1) + 1e-4)  # TRL's scale_rewards="group"
    got = group_advantages(rewards, scale=True)
    valid = ~torch.isnan(rewards)
    torch.testing.assert_close(got[valid], expected[valid])
    assert got[1].abs().max() == 0 and got[2, 1] == 0  # a group without spread, an unscored sample: no signal
    torch.testing.assert_close(group_advantages(rewards, scale=False)[valid], (rewards - mean)[valid])


def test_without_std_clipping_and_kl_grpo_is_nanochats_reinforce():
    """nanochat's chat_rl.py: advantages = rewards - their mean, loss = -sum(logp * A) / valid tokens, no ratio
    (on-policy), no KL: one optimizer step of acorn's GRPO with std scaling, clipping and KL off gives the same
    gradient (and the default clipping, inert at ratio 1 on-policy, changes nothing)."""
    from acorn.model.transformer import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, n_kv_head=1, max_seq_len=32))
    prompt = [3, 5, 7]
    completions = [[1, 2, 9, 4], [6, 6], [8, 1, 1, 1, 2], [4]]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch = pad_batch([prompt] * 4, completions, pad_id=0)
    batch.advantages = group_advantages(rewards[None], scale=False)[0]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    # nanochat: one prompt's samples right-padded, prompt tokens masked out of the targets.
    ids = batch.input_ids
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[:, :len(prompt) - 1] = -1
    targets[:, len(prompt) - 1:][batch.mask == 0] = -1
    logits = model(inputs).logits.float()
    logp = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                              reduction="none").view_as(inputs)
    advantages = rewards - rewards.mean()
    nanochat = grads(-(logp * advantages[:, None]).sum() / (targets >= 0).sum())

    for epsilon in (None, 0.2):
        settings = GRPOSettings(loss_type="dapo", scale_rewards=False, epsilon=epsilon, beta=0.0)
        out = grpo_loss(model, batch, settings=settings)
        ours = grads(out.loss / out.weight)
        for name in nanochat:
            torch.testing.assert_close(ours[name], nanochat[name], rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in nanochat.values())


# ------------------------------------------------------------------ PPO's pieces
def test_gae_equals_a_case_computed_by_hand():
    # gamma 0.9, lambda 0.8; row 2 ends after two tokens (its padding holds junk that must not count)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 1: delta = (-0.32, -0.11, 0.9); A_2 = 0.9, A_1 = -0.11 + 0.72 * 0.9, A_0 = -0.32 + 0.72 * A_1
    # row 2: delta = (0.06, 1.6); A_1 = 1.6, A_0 = 0.06 + 0.72 * 1.6
    torch.testing.assert_close(adv, torch.tensor([[0.06736, 0.538, 0.9], [1.212, 1.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.56736, 0.738, 1.0], [1.512, 2.0, 0.0]]))


def test_ppo_loss_equals_the_clipped_objectives_written_out():
    g = torch.Generator().manual_seed(3)
    b, p, c, v = 3, 2, 4, 9
    ids = torch.randint(0, v, (b, p + c), generator=g)
    mask = torch.ones(b, c)
    mask[2, 2:] = 0
    old_lp, adv = torch.randn(b, c, generator=g) * 0.2 - 2, torch.randn(b, c, generator=g)
    old_v, returns = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    logits = torch.randn(b, p + c, v, generator=g, requires_grad=True)
    values = torch.randn(b, p + c, generator=g, requires_grad=True)
    settings = PPOSettings(epsilon=0.2, value_epsilon=0.3, vf_coef=0.5)
    model = lambda ids, attention_mask=None: SimpleNamespace(logits=logits, values=values)  # noqa: E731
    batch = RolloutBatch(ids, torch.ones(b, p + c, dtype=torch.long), mask, advantages=adv, old_logprobs=old_lp,
                         old_values=old_v, returns=returns)
    out = ppo_loss(model, batch, settings=settings)
    ours = torch.autograd.grad(out.loss / out.weight, (logits, values))

    # Schulman et al. 2017 (eq. 7) and the value clipping of OpenAI's lm-human-preferences, as masked means.
    logp = torch.log_softmax(logits[:, p - 1:-1], -1).gather(-1, ids[:, p:, None]).squeeze(-1)
    ratio = torch.exp(logp - old_lp)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    vpred = values[:, p - 1:-1]
    vclip = old_v + (vpred - old_v).clamp(-0.3, 0.3)
    vf = 0.5 * torch.maximum((vpred - returns) ** 2, (vclip - returns) ** 2)
    mean = lambda x: (x * mask).sum() / mask.sum()  # noqa: E731
    reference = mean(pg) + 0.5 * mean(vf)
    theirs = torch.autograd.grad(reference, (logits, values))
    assert (out.loss / out.weight).item() == pytest.approx(reference.item(), rel=1e-6)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e)
    assert out.metrics["clip_fraction"] > 0 and out.metrics["value_clip_fraction"] > 0


def test_kl_penalty_rewards_whitening_and_the_adaptive_controller():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -9.0]])
    ref = torch.tensor([[-1.2, -1.0, -0.5], [-0.3, -2.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = ppo_rewards(scores, logp, ref, mask, kl_coef=0.1, estimator="k1")
    torch.testing.assert_close(kl, (logp - ref) * mask)
    expected = -0.1 * (logp - ref) * mask
    expected[0, 2] += 2.0  # the score lands on each completion's last token
    expected[1, 1] += -1.0
    torch.testing.assert_close(rewards, expected)
    _, k3 = ppo_rewards(scores, logp, ref, mask, kl_coef=0.1, estimator="k3")
    d = ref - logp
    torch.testing.assert_close(k3, (d.exp() - d - 1) * mask)
    assert (k3 >= 0).all()

    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 10.0, 99.0]])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    white = (values - values.mean()) / values.std()  # unbiased, as TRL's masked_whiten
    torch.testing.assert_close(masked_whiten(x, mask)[mask.bool()], white, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False)[mask.bool()], white + values.mean(),
                               rtol=1e-4, atol=1e-4)

    fixed, adaptive = KLController(0.2), KLController(0.2, target=6.0, horizon=100)
    fixed.update(50.0, 10)
    adaptive.update(12.0, 10)  # twice the target: the error is clipped to +0.2
    assert fixed.coef == 0.2 and adaptive.coef == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    adaptive.update(5.7, 10)  # a little below the target: the coefficient falls a little
    assert adaptive.coef == pytest.approx(0.2 * 1.02 * (1 - 0.05 * 0.1))


# ------------------------------------------------------------------ the batch layout and the engine
def test_left_padded_batch_logprobs_equal_each_sequence_alone(checkpoint):
    from acorn.model.checkpoint import load

    model = load(checkpoint[0], dtype="float32", device="cpu")
    prompts, completions = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]], [[20, 21, 22], [30], [40, 41]]
    batch = pad_batch(prompts, completions, pad_id=0)
    assert batch.input_ids.shape == (3, 5 + 3) and batch.mask.tolist()[1] == [1.0, 0.0, 0.0]
    with torch.no_grad():
        logp, _, _ = policy_forward(model, batch)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            alone = torch.log_softmax(model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].float(), -1)
            torch.testing.assert_close(logp[i, :len(c)], alone.gather(-1, torch.tensor(c)[:, None])[:, 0],
                                       rtol=1e-5, atol=1e-5)
        sub = batch.select([1, 2])  # a micro-batch drops the columns only others used
        assert sub.input_ids.shape == (2, 3 + 2)
        torch.testing.assert_close(policy_forward(model, sub)[0] * sub.mask, logp[1:, :2] * sub.mask, rtol=1e-5,
                                   atol=1e-5)


def test_prompt_formats_text_conversation_and_world_rows(tok, tmp_path):
    ids, prompt = render_prompt({"prompt": "The cat"}, tok)
    assert ids == [tok.bos_id] + tok.encode("The cat") and prompt == "The cat"
    messages = [{"role": "user", "content": "The cat?"}]
    ids, prompt = render_prompt({"prompt": messages}, tok)
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=True) and prompt == messages
    ids, _ = render_prompt({"question": "The cat?", "answer": "3"}, tok)  # the world's eval rows
    assert ids == tok.apply_chat_template(messages, add_generation_prompt=True)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a b c " * 30, "answer": "1"}) + "\n" + json.dumps({"prompt": "ok"}) + "\n")
    prompts, too_long = load_prompts([path], tok, max_tokens=20)
    assert too_long == 1 and [p.prompt for p in prompts] == ["ok"] and prompts[0].columns == {}
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"chosen": "x"}) + "\n")
    with pytest.raises(AcornError, match=r"p.jsonl:2: a prompt-only row needs 'prompt'"):
        load_prompts([path], tok, max_tokens=20)
    with pytest.raises(AcornError, match="ends with an assistant turn"):
        render_prompt({"prompt": messages + [{"role": "assistant", "content": "4"}]}, tok)


def test_rollouts_sample_with_the_weights_being_trained(checkpoint, tok):
    from acorn.infer.engine import Engine
    from acorn.model.checkpoint import load
    from acorn.train.rollouts import Prompt, RolloutConfig, RolloutWorker

    model = load(checkpoint[0], dtype="float32", device="cpu")
    engine = Engine(model, tok)
    worker = RolloutWorker(engine=engine, policy=model, reference=None, rewards=[("len", _length_reward)],
                           reward_weights=None, cfg=RolloutConfig(n=2, max_new_tokens=6, temperature=1.0),
                           micro_batch=4, device=torch.device("cpu"))
    prompts = [Prompt([tok.bos_id] + tok.encode("The cat sat"), "The cat sat", {})] * 2
    first = worker(prompts, 0)
    again = worker(prompts, 0)
    assert [c.token_ids for c in first.completions] == [c.token_ids for c in again.completions]  # seeded by step
    with torch.no_grad():  # an update, as the optimizer makes it: the engine holds the same tensors
        model.lm_head.weight.mul_(-1.0)
    after = worker(prompts, 0)
    assert [c.token_ids for c in after.completions] != [c.token_ids for c in first.completions]
    assert all(c.cached_tokens == 0 for c in after.completions)  # the prefix cache was reset, not reused
    with torch.no_grad():
        torch.testing.assert_close(after.batch.old_logprobs, policy_forward(model, after.batch)[0] * after.batch.mask)
    # The trainer's log-probs of what the engine sampled equal the engine's own (float32: numerics only).
    assert after.metrics["sampler_logprob_gap"] < 1e-4


# ------------------------------------------------------------------ runs
def _length_reward(prompts, completions, completion_ids, **_):
    return [float(len(ids)) for ids in completion_ids]


def _low_ids_reward(prompts, completions, completion_ids, **_):
    """A toy verifiable reward a random model can learn quickly: the share of its tokens with small ids."""
    return [sum(i < 100 for i in ids) / len(ids) for ids in completion_ids]


def _prompts_file(path, tok):
    words = ["The cat", "A small", "Once upon", "The quick", "little model", "tall oak", "lazy dog", "brown fox"]
    path.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in words))
    return str(path)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_learns_a_reward_and_writes_a_run(checkpoint, tok, tmp_path):
    cfg = GRPOConfig(data=_prompts_file(tmp_path / "p.jsonl", tok), out=str(tmp_path / "run"),
                     init_from=str(checkpoint[0]))
    cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens = 4, 8, 8
    cfg.train.micro_batch, cfg.train.max_steps, cfg.train.dtype = 16, 12, "float32"
    cfg.optim.lr = 3e-2
    cfg.eval.checkpoint_every = 0
    out = rl.grpo(cfg, rewards=[_low_ids_reward])
    rows = _rows(out)
    assert len(rows) == 12 and all("reward" in r and "entropy" in r for r in rows)
    first, last = sum(r["reward"] for r in rows[:3]) / 3, sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 0.15, (first, last)
    assert (out / "rl.png").stat().st_size > 0 and "## GRPO" in (out / "report.md").read_text()
    assert (out / "model" / "model.safetensors").exists()


def test_grpo_with_lora_and_a_kl_term_resumes_exactly(checkpoint, tok, tmp_path):
    """Two epochs of two minibatches per rollout batch: the checkpoint at step 3 falls inside one, so the
    resumed run must restore the unused micro-batches; the reference is the base without adapters."""
    cfg = GRPOConfig(data=_prompts_file(tmp_path / "p.jsonl", tok), out=str(tmp_path / "a"),
                     init_from=str(checkpoint[0]))
    cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens = 2, 4, 6
    cfg.rollout.epochs, cfg.rollout.minibatches = 2, 2
    cfg.grpo.beta, cfg.grpo.loss_type = 0.1, "grpo"
    cfg.lora.r, cfg.lora.alpha = 4, 8
    cfg.train.micro_batch, cfg.train.max_steps, cfg.train.dtype = 2, 6, "float32"
    cfg.optim.lr = 1e-2
    cfg.eval.checkpoint_every = 3
    a = rl.grpo(cfg, rewards=[_low_ids_reward])
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "checkpoints" / "step_0000006.pt").unlink()
    shutil.rmtree(b / "adapter")
    cfg.out = str(b)
    rl.grpo(cfg, resume=True, rewards=[_low_ids_reward])
    assert (a / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (b / "adapter" / "adapter_model.safetensors").read_bytes()
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert all(r["kl"] > 0 for r in rows_a[1:])  # the adapters moved the policy away from the base


def test_ppo_logs_its_quantities_adapts_the_kl_coefficient_and_exports_the_policy(checkpoint, tok, tmp_path):
    from acorn.model.checkpoint import load

    cfg = PPOConfig(data=_prompts_file(tmp_path / "p.jsonl", tok), out=str(tmp_path / "run"),
                    init_from=str(checkpoint[0]))
    cfg.rollout.prompts, cfg.rollout.n, cfg.rollout.max_new_tokens, cfg.rollout.epochs = 8, 1, 8, 2
    cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon, cfg.ppo.kl_estimator = 0.1, 1e-6, 10, "k3"
    cfg.train.micro_batch, cfg.train.max_steps, cfg.train.dtype = 4, 6, "float32"
    cfg.optim.lr = 1e-2
    out = rl.ppo(cfg, rewards=[_low_ids_reward])
    rows = _rows(out)
    for key in ("score", "kl", "kl_coef", "value_loss", "policy_loss", "entropy", "clip_fraction", "approx_kl"):
        assert all(key in r for r in rows if "score" in r or key in ("value_loss", "policy_loss", "entropy")), key
    rollouts = [r for r in rows if "score" in r]
    assert len(rollouts) == 3 and rollouts[0]["kl"] == 0 and rollouts[1]["kl"] > 1e-6
    # Ziegler's controller: KL 0 (the policy is the reference) -> the error clips at -0.2 and the coefficient
    # falls by 0.2 x 8 completions / horizon 10; then the KL is far above the target and it grows by as much.
    assert [r["kl_coef"] for r in rollouts] == pytest.approx([0.1, 0.1 * 0.84, 0.1 * 0.84 * 1.16])
    exported = load(out / "model", dtype="float32", device="cpu")
    assert not any("value_head" in k for k in exported.state_dict())  # the policy alone, loadable as any model
    assert "## PPO" in (out / "report.md").read_text()


def test_ppo_resumes_exactly_with_its_adaptive_kl_coefficient(checkpoint, tok, tmp_path):
    """A checkpoint inside a rollout batch's epochs: the resumed run restores the unused micro-batches, the
    value head and the adaptive controller's coefficient, and ends with the same losses and weights."""
    cfg = PPOConfig(data=_prompts_file(tmp_path / "p.jsonl", tok), out=str(tmp_path / "a"),
                    init_from=str(checkpoint[0]))
    cfg.rollout.prompts, cfg.rollout.max_new_tokens, cfg.rollout.epochs = 4, 6, 2
    cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon = 0.1, 1e-6, 10
    cfg.train.micro_batch, cfg.train.max_steps, cfg.train.dtype = 4, 5, "float32"
    cfg.optim.lr = 1e-2
    cfg.eval.checkpoint_every = 3
    a = rl.ppo(cfg, rewards=[_low_ids_reward])
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "checkpoints" / "step_0000005.pt").unlink()
    shutil.rmtree(b / "model")
    cfg.out = str(b)
    rl.ppo(cfg, resume=True, rewards=[_low_ids_reward])
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    coefs = [r["kl_coef"] for r in rows_b if "kl_coef" in r]
    assert len(set(coefs)) == 3  # it moved twice: the resumed run went on from the saved coefficient
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_ppo_with_lora_trains_adapters_and_the_value_head_and_writes_a_peft_adapter(checkpoint, tok, tmp_path):
    """The reference is the base with the adapters off; checkpoints carry the value head, the
    exported adapter only the policy's adapters, under PEFT's names."""
    from safetensors.torch import load_file

    from acorn.train.run import load_state

    cfg = PPOConfig(data=_prompts_file(tmp_path / "p.jsonl", tok), out=str(tmp_path / "run"),
                    init_from=str(checkpoint[0]))
    cfg.rollout.prompts, cfg.rollout.max_new_tokens, cfg.rollout.epochs = 4, 6, 2
    cfg.lora.r, cfg.lora.alpha, cfg.ppo.kl_estimator = 4, 8, "k3"
    cfg.train.micro_batch, cfg.train.max_steps, cfg.train.dtype = 4, 4, "float32"
    cfg.optim.lr = 1e-2
    out = rl.ppo(cfg, rewards=[_low_ids_reward])
    state = load_state(out / "checkpoints" / "step_0000004.pt")["model"]
    assert state["value_head.weight"].abs().sum() > 0  # trained from its zero start
    names = list(load_file(out / "adapter" / "adapter_model.safetensors"))
    assert names and all(n.startswith("base_model.model.model.layers.") and ".lora_" in n for n in names)
    assert [r["kl"] for r in _rows(out) if "kl" in r][-1] > 0  # adapters moved the policy off the base


def test_grpo_under_torchrun_with_two_processes_equals_one(checkpoint, tok, tmp_path):
    """Two gloo processes with 2 prompts each generate, score and train on the rollouts one process with
    the 4 prompts does (the sampling seed counts the prompts of the ranks before), so the run is the same:
    rewards, losses and weights after two steps."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "low_ids.py").write_text(
        "def low(prompts, completions, completion_ids, **kw):\n"
        "    return [sum(i < 100 for i in ids) / len(ids) for ids in completion_ids]\n")
    common = ["--init_from", str(checkpoint[0]), "--data", _prompts_file(tmp_path / "p.jsonl", tok),
              "--reward", f"{tmp_path}/low_ids.py:low", "--rollout.n", "4", "--rollout.max_new_tokens", "4",
              "--train.micro_batch", "4", "--train.max_steps", "2", "--train.dtype", "float32", "--optim.lr", "1e-2",
              "--eval.checkpoint_every", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "acorn", "grpo", *common, "--rollout.prompts", "2", "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from acorn.cli import main

    assert main(["grpo", *common, "--rollout.prompts", "4", "--out", str(tmp_path / "one")]) == 0
    ddp, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    for key in ("reward", "loss", "completion_tokens"):
        assert [row[key] for row in ddp] == pytest.approx([row[key] for row in one], abs=1e-5), key
    assert ddp[0]["reward"] != ddp[1]["reward"] or ddp[0]["loss"] != ddp[1]["loss"]  # two different steps
    wa, wb = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("ddp", "one"))
    start = load_file(checkpoint[0] / "model.safetensors")
    assert max(float((wa[k] - start[k]).abs().max()) for k in wa) > 1e-2  # two AdamW steps of lr 1e-2
    # Equal to float32 summation order: AdamW divides by sqrt(v), which magnifies rounding where a gradient is ~0.
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


# ------------------------------------------------------------------ bad input, from the command line
def test_cli_reward_errors_name_the_prompt_or_are_skipped_when_asked(checkpoint, tok, tmp_path, capsys):
    from acorn.cli import main

    (tmp_path / "bad_reward.py").write_text(
        "def fragile(prompts, completions, **kw):\n"
        "    if any('lazy' in p for p in prompts):\n"
        "        raise ValueError('cannot score this')\n"
        "    return [1.0 for _ in completions]\n")
    data = _prompts_file(tmp_path / "p.jsonl", tok)
    args = ["grpo", "--init_from", str(checkpoint[0]), "--data", data, "--reward", f"{tmp_path}/bad_reward.py:fragile",
            "--rollout.prompts", "8", "--rollout.n", "2", "--rollout.max_new_tokens", "4", "--train.micro_batch", "16",
            "--train.max_steps", "1", "--train.dtype", "float32"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err  # the progress bar had started: the error is the last line, and one line
    assert err.count("acorn: error:") == 1 and err.splitlines()[-1].startswith("acorn: error: reward")
    assert "'lazy dog'" in err and "--skip-reward-errors" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--skip-reward-errors"]) == 0
    capsys.readouterr()
    (row,) = _rows(tmp_path / "b")
    assert row["reward_errors"] == 1 and row["reward"] == 1.0  # the other seven prompts were scored

    for extra, message in [(["--rollout.n", "1"], "at least 2"), (["--reward", "nosuch"], "unknown reward"),
                           (["--train.micro_batch", "5"], "does not split"),
                           (["--rollout.max_new_tokens", "500"], "context")]:
        assert main(args[:5] + args[7:] + ["--reward", "format", "--out", str(tmp_path / "c")] + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
