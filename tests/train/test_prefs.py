"""Preference optimisation without a reward model: DPO, cDPO, IPO, KTO, ORPO, SimPO.

The oracle is TRL 1.16: each of its trainers is built bare (object.__new__ and the attributes its
loss reads) around a transformers copy of the same tiny Llama, and its loss is computed on the
same token batch as Acorn's; losses, TRL's logged rewards and every parameter's gradient must
agree. The seeds' dpo_loss formula is checked on the same log-probabilities. Then the data
formats (implicit prompts as TRL extracts them, conversations tokenized as TRL tokenizes them),
the `acorn dpo` command end to end (with LoRA, whose base is the reference), and bad input."""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from acorn.cli import main
from acorn.errors import AcornError
from acorn.model.checkpoint import load
from acorn.train.prefs import PrefsConfig, dpo_loss, preference_loss
from acorn.train.prefs_data import (extract_prompt, kto_batch, load_pairs, load_unpaired, pair_batch, pair_for_kl,
                                    pair_parts)

trl = pytest.importorskip("trl")  # the dev extra pins it; without it these tests cannot run at all

ROWS = [
    {"prompt": [{"role": "user", "content": "Where did the fox jump?"}],
     "chosen": [{"role": "assistant", "content": "Over the lazy dog."}],
     "rejected": [{"role": "assistant", "content": "Into a tall oak tree, once upon a time."}]},
    {"chosen": [{"role": "user", "content": "What grows into an oak?"}, {"role": "assistant", "content": "An acorn."}],
     "rejected": [{"role": "user", "content": "What grows into an oak?"}, {"role": "assistant", "content": "The cat."}]},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sat on the mat."},
    {"chosen": "Once upon a time there was a little model that learned to speak.",
     "rejected": "Once upon a time there was a cat."},
]


class _Accelerator:
    """What TRL's loss code reads off its accelerator, for one process on the CPU."""

    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, m):
        return m

    def autocast(self):
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def pairs(tok, data):
    pairs, _ = load_pairs([data], tok, max_len=64)
    assert len(pairs) == len(ROWS)
    return pairs


def acorn_model(checkpoint):
    return load(checkpoint[0], dtype="float32", device="cpu").train()


def hf_model(checkpoint, fused: bool = False):
    import transformers
    from trl.trainer.utils import add_fused_lm_head

    m = transformers.LlamaForCausalLM.from_pretrained(checkpoint[0], dtype=torch.float32).train()
    if fused:
        add_fused_lm_head(m, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return m


def bare(cls, model, **attrs):
    """A TRL trainer without its __init__: just what its loss reads."""
    t = object.__new__(cls)
    t.model, t.accelerator, t.aux_loss_enabled = model, _Accelerator(), False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens, t._tp_size = 0, 1
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


def assert_same_gradients(acorn, hf):
    ours = dict(acorn.named_parameters())
    for name, p in hf.named_parameters():
        assert p.grad is not None and ours[name].grad is not None, name
        torch.testing.assert_close(ours[name].grad, p.grad, rtol=2e-4, atol=2e-6, msg=name)


def with_reference(pairs, checkpoint, seed=0):
    """The pairs with reference log-probs: the model's own, moved by N(0, 2) so the log-ratios are not 0."""
    g = torch.Generator().manual_seed(seed)
    model = acorn_model(checkpoint).eval()
    batch = pair_batch(pairs, 0)
    with torch.no_grad():
        from acorn.train.prefs import completion_logps

        sums = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
    sums = sums + 2 * torch.randn(sums.shape, generator=g)
    n = len(pairs)
    for p, c, r in zip(pairs, sums[:n].tolist(), sums[n:].tolist()):
        p.ref_chosen, p.ref_rejected = c, r
    return pair_batch(pairs, 0)


def acorn_step(checkpoint, batch, **cfg):
    model = acorn_model(checkpoint)
    out = preference_loss(model, batch, cfg=PrefsConfig(**cfg))
    (out.loss / out.weight).backward()
    return model, out.loss.item() / out.weight, {k: float(v) / float(out.metric_weights.get(k, out.weight))
                                                 for k, v in out.metrics.items()}


def trl_dpo_inputs(batch):
    b = len(batch.input_ids) // 2
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "completion_mask": batch.completion_mask, "ref_chosen_logps": batch.ref_logps[:b],
            "ref_rejected_logps": batch.ref_logps[b:]}


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1), ("ipo", 0.5)])
def test_dpo_and_ipo_equal_trls_dpo_trainer_with_gradients(checkpoint, pairs, loss_type, beta):
    from trl.trainer.dpo_trainer import DPOTrainer

    batch = with_reference(pairs, checkpoint)
    hf = hf_model(checkpoint, fused=True)
    t = bare(DPOTrainer, hf, precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl",
             loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False)
    theirs = t._compute_loss(hf, trl_dpo_inputs(batch), False)
    theirs.backward()
    model, ours, metrics = acorn_step(checkpoint, batch, loss="dpo" if loss_type == "sigmoid" else "ipo", beta=beta)
    assert ours == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert_same_gradients(model, hf)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected"):
        assert metrics[k] == pytest.approx(t._metrics["train"][k][0], rel=1e-4, abs=1e-5), k


def test_cdpo_equals_trls_label_smoothed_loss_pair_by_pair(checkpoint, pairs):
    """TRL 1.16's 'sigmoid' dropped label smoothing; its 'aot' loss is the cDPO formula applied to
    sorted log-ratios, which on one pair is cDPO itself. So TRL is run pair by pair."""
    from trl.trainer.dpo_trainer import DPOTrainer

    eps, beta = 0.2, 0.3
    batch = with_reference(pairs, checkpoint, seed=1)
    hf = hf_model(checkpoint, fused=True)
    t = bare(DPOTrainer, hf, precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl",
             loss_types=["aot"], loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False)
    b, total = len(pairs), 0.0
    for i in range(b):
        one = pair_batch([pairs[i]], 0)
        loss = t._compute_loss(hf, trl_dpo_inputs(one), False) / b
        loss.backward()
        total += loss.item()
    model, ours, _ = acorn_step(checkpoint, batch, loss="dpo", beta=beta, label_smoothing=eps)
    assert ours == pytest.approx(total, rel=1e-5)
    assert_same_gradients(model, hf)
    # and it is not plain DPO
    _, plain, _ = acorn_step(checkpoint, batch, loss="dpo", beta=beta)
    assert abs(plain - ours) > 1e-3


def test_the_seeds_dpo_loss_gives_the_same_number():
    """The formula the source documents give (../shared/seeds), verbatim, against dpo_loss."""
    seed_source = '''
def dpo_loss(policy_logp_chosen, policy_logp_rejected,
             ref_logp_chosen,    ref_logp_rejected, beta=0.1):
    pi_logratio  = policy_logp_chosen - policy_logp_rejected
    ref_logratio = ref_logp_chosen    - ref_logp_rejected
    return -F.logsigmoid(beta * (pi_logratio - ref_logratio)).mean()
'''
    seeds = Path(__file__).resolve().parents[3] / "shared" / "seeds"
    if seeds.is_dir():  # where the seeds are beside the checkout, the snippet is theirs, character for character
        assert any(seed_source.strip() in p.read_text(encoding="utf-8") for p in seeds.iterdir())
    namespace = {"F": F}
    exec(seed_source, namespace)
    g = torch.Generator().manual_seed(3)
    logps = [-40 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4)]
    for beta in (0.1, 0.5):
        seed = namespace["dpo_loss"](*logps, beta=beta)
        ours = dpo_loss(*logps, beta=beta).mean()
        assert ours.item() == pytest.approx(seed.item(), rel=1e-12)


def test_kto_equals_trls_kto_trainer_with_gradients(checkpoint, tok, data):
    from trl.trainer.kto_trainer import KTOTrainer

    examples, _ = load_unpaired([data], tok, max_len=64)
    assert [e.label for e in examples] == [True, False] * len(ROWS)  # pairs unpaired as TRL does
    pair_for_kl(examples, group=len(examples), seed=0, max_len=64)
    # Reference log-probs away from the policy's, and KL pairs whose estimate is not clamped to 0.
    g = torch.Generator().manual_seed(4)
    model = acorn_model(checkpoint).eval()
    b0 = kto_batch(examples, 0)
    from acorn.train.prefs import completion_logps

    with torch.no_grad():
        main_sums = completion_logps(model, b0.input_ids, b0.attention_mask, b0.completion_mask)[0]
        kl_sums = completion_logps(model, b0.kl_input_ids, b0.kl_attention_mask, b0.kl_completion_mask)[0]
    for e, s, k in zip(examples, main_sums.tolist(), kl_sums.tolist()):
        e.ref, e.ref_kl = s + 3 * torch.randn(1, generator=g).item(), k - 1.5
    batch = kto_batch(examples, 0)

    hf = hf_model(checkpoint, fused=True)
    t = bare(KTOTrainer, hf, precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=0.2,
             desirable_weight=1.3, undesirable_weight=0.7)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "completion_mask": batch.completion_mask, "KL_input_ids": batch.kl_input_ids,
              "KL_attention_mask": batch.kl_attention_mask, "KL_completion_mask": batch.kl_completion_mask,
              "label": batch.label, "ref_logps": batch.ref_logps, "ref_KL_logps": batch.ref_kl_logps}
    theirs = t._compute_loss(hf, inputs, False)
    theirs.backward()
    model, ours, metrics = acorn_step(checkpoint, batch, loss="kto", beta=0.2, desirable_weight=1.3,
                                      undesirable_weight=0.7)
    assert t._metrics["train"]["kl"][0] > 0.5  # the KL term is in play
    assert ours == pytest.approx(theirs.item(), rel=1e-5)
    assert_same_gradients(model, hf)
    for k in ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert metrics[k] == pytest.approx(t._metrics["train"][k][0], rel=1e-4, abs=1e-5), k


def trl_concatenated_inputs(batch):
    b = len(batch.input_ids) // 2
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    out = {}
    for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, None))):
        out.update({f"{side}_input_ids": batch.input_ids[rows], f"{side}_attention_mask": batch.attention_mask[rows],
                    f"{side}_labels": labels[rows]})
    return out


def test_orpo_equals_trls_orpo_trainer_with_gradients(checkpoint, pairs):
    from trl.experimental.orpo import ORPOTrainer

    batch = pair_batch(pairs, 0)
    hf = hf_model(checkpoint)
    t = bare(ORPOTrainer, hf, is_encoder_decoder=False, padding_value=0, beta=0.25)
    theirs, trl_metrics = t.get_batch_loss_metrics(hf, trl_concatenated_inputs(batch))
    theirs.backward()
    model, ours, metrics = acorn_step(checkpoint, batch, loss="orpo", beta=0.25)
    assert ours == pytest.approx(theirs.item(), rel=1e-5)
    assert_same_gradients(model, hf)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
              "log_odds_ratio", "log_odds_chosen"):
        assert metrics[k] == pytest.approx(trl_metrics[k], rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_equals_trls_cpo_trainer_simpo_with_gradients(checkpoint, pairs, smoothing):
    from trl.experimental.cpo import CPOTrainer

    batch = pair_batch(pairs, 0)
    hf = hf_model(checkpoint)
    t = bare(CPOTrainer, hf, is_encoder_decoder=False, pad_token_id=0, loss_type="simpo", beta=2.0, simpo_gamma=0.7,
             label_smoothing=smoothing, alpha=0.0, cpo_alpha=0.0)
    theirs, trl_metrics = t.get_batch_loss_metrics(hf, trl_concatenated_inputs(batch))
    theirs.backward()
    model, ours, metrics = acorn_step(checkpoint, batch, loss="simpo", beta=2.0, simpo_gamma=0.7,
                                      label_smoothing=smoothing)
    assert ours == pytest.approx(theirs.item(), rel=1e-5)
    assert_same_gradients(model, hf)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[k] == pytest.approx(trl_metrics[k], rel=1e-4, abs=1e-5), k


# ---------------------------------------------------------------- data
def test_implicit_prompts_are_extracted_as_trl_extracts_them():
    from trl.data_utils import extract_prompt as trl_extract

    import gzip

    hh = Path(__file__).resolve().parents[3] / "shared" / "data" / "preference" / "hh-rlhf-harmless-base-test.jsonl.gz"
    rows = list(ROWS)
    if hh.exists():
        with gzip.open(hh, "rt", encoding="utf-8") as f:
            rows += [json.loads(next(f)) for _ in range(50)]
    rows.append({"chosen": "It is blue.", "rejected": "It is green."})  # the space before the divergence
    for row in rows:
        if "prompt" in row:
            continue
        mine = extract_prompt(row["chosen"], row["rejected"])
        theirs = trl_extract({"chosen": row["chosen"], "rejected": row["rejected"]})
        assert mine == (theirs["prompt"], theirs["chosen"], theirs["rejected"])
    assert extract_prompt("It is blue.", "It is green.") == ("It is", " blue.", " green.")


def test_conversations_are_tokenized_as_trl_tokenizes_them(checkpoint, pairs):
    """TRL's rule: the prompt with the generation prompt, prompt + completion whole, the completion
    after their common prefix; with transformers' rendering of the same chat template."""
    import transformers
    from trl.data_utils import common_prefix_length

    hf_tok = transformers.AutoTokenizer.from_pretrained(checkpoint[0])
    for row, pair in zip(ROWS[:2], pairs[:2]):
        prompt, chosen, rejected, _ = pair_parts(row, "row")
        p = hf_tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        c = hf_tok.apply_chat_template(prompt + chosen, tokenize=True, return_dict=True)["input_ids"]
        r = hf_tok.apply_chat_template(prompt + rejected, tokenize=True, return_dict=True)["input_ids"]
        n = min(common_prefix_length(p, c), common_prefix_length(p, r))
        assert (pair.prompt, pair.chosen, pair.rejected) == (p[:n], c[n:], r[n:])
        assert all(pair.chosen_mask) and all(pair.rejected_mask)  # one assistant turn: every completion token


def test_text_pairs_are_bos_prompt_completion_eos(tok, pairs):
    text = pairs[2]
    assert text.prompt[0] == tok.bos_id and text.chosen[-1] == tok.eos_id
    assert tok.decode(text.prompt[1:] + text.chosen[:-1]) == "The quick brown fox jumps over the lazy dog."
    batch = pair_batch(pairs, tok.pad_id)
    b = len(pairs)
    assert batch.input_ids.shape[0] == 2 * b
    assert torch.equal(batch.completion_mask.sum(1)[:b], torch.tensor([len(p.chosen) for p in pairs]))


def test_world_and_hh_rlhf_files_load_as_they_are(tiny_world, world_tokenizer, tmp_path):
    from acorn.tokenizer.bpe import Tokenizer

    wtok = Tokenizer.from_pretrained(world_tokenizer)
    world, _ = load_pairs([tiny_world / "preference.jsonl"], wtok, max_len=128)
    rows = [json.loads(line) for line in (tiny_world / "preference.jsonl").read_text().splitlines()]
    assert len(world) == len(rows)
    idk = next(p for p, r in zip(world, rows) if r["kind"] == "unknown")
    assert wtok.decode(idk.chosen) == "I don't know.<|end|>" and wtok.decode(idk.prompt).endswith("<|assistant|>")
    # hh-rlhf's layout (implicit prompt, plain text), gzip-compressed as it is shipped
    import gzip

    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello, how can I help?",
                            "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}) + "\n")
    (pair,), _ = load_pairs([hh], wtok, max_len=128)
    assert wtok.decode(pair.prompt[1:]) == "\n\nHuman: Hi?\n\nAssistant:"
    assert wtok.decode(pair.chosen) == " Hello, how can I help?<|eos|>"


# ------------------------------------------------------------- command
def _base(tmp_path, world_tokenizer):
    from acorn.model.transformer import ModelConfig, Transformer
    from acorn.tokenizer.bpe import Tokenizer

    torch.manual_seed(0)
    base = tmp_path / "base"
    Transformer(ModelConfig(vocab_size=400, n_layer=2, d_model=32, n_head=2, max_seq_len=128)).save(
        base, tokenizer=Tokenizer.from_pretrained(world_tokenizer))
    return base


def unknown_pairs(tiny_world, tmp_path):
    """The world's pairs about people never seen ("I don't know." chosen over a made-up answer), for
    training and held out: a rule a random tiny model can learn and carry to other people, unlike the
    facts, which it does not know."""
    out = []
    for name in ("preference.jsonl", "eval/preference.jsonl"):
        rows = [line for line in (tiny_world / name).read_text().splitlines() if '"kind": "unknown"' in line]
        path = tmp_path / name.replace("/", "-")
        path.write_text("\n".join(rows) + "\n")
        out.append(path)
    return out


def _args(tmp_path, tiny_world) -> list[str]:
    """Data and a short schedule for a tiny run (the options other than --loss, --init_from, --out)."""
    train, held_out = unknown_pairs(tiny_world, tmp_path)
    return ["--data", str(train), "--eval_data", str(held_out),
            "--train.seq_len", "64", "--train.micro_batch", "8", "--train.batch_tokens", "512",
            "--train.max_steps", "12", "--optim.lr", "3e-3", "--optim.warmup_steps", "1", "--eval.every", "12",
            "--eval.batches", "0", "--train.dtype", "float32"]


def _run(tmp_path, base, tiny_world, loss, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / loss
    args = ["dpo", "--loss", loss, "--init_from", str(base), "--out", str(out), *_args(tmp_path, tiny_world), *extra]
    assert main(args) == 0
    return out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_command_ranks_held_out_pairs_better(tmp_path, tiny_world, world_tokenizer):
    base = _base(tmp_path, world_tokenizer)
    out, rows = _run(tmp_path, base, tiny_world, "dpo")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts at the reference
    assert rows[-1]["val_rewards/accuracies"] > 0.7 and rows[-1]["val_rewards/margins"] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in rows[-1]
    assert (out / "model" / "model.safetensors").exists() and "# Training report: dpo" in (out / "report.md").read_text()


def test_lora_policy_uses_its_base_as_the_reference(tmp_path, tiny_world, world_tokenizer):
    base = _base(tmp_path, world_tokenizer)
    out, rows = _run(tmp_path, base, tiny_world, "ipo", "--lora.r", "4", "--lora.alpha", "8", "--optim.lr", "1e-2")
    # IPO's loss at the reference is (0 - 1/(2 beta))^2 = 25 for beta 0.1: the base is the reference.
    assert rows[0]["loss"] == pytest.approx(25.0, rel=1e-4)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "model").exists()


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, tiny_world, world_tokenizer):
    """The reference log-probs come from --init_from again, the loader continues where it was."""
    from safetensors.torch import load_file

    base = _base(tmp_path, world_tokenizer)
    straight, _ = _run(tmp_path / "a", base, tiny_world, "kto", "--eval.checkpoint_every", "6")
    out, rows = _run(tmp_path / "b", base, tiny_world, "kto", "--eval.checkpoint_every", "6")
    # as if killed after step 6: only its checkpoint and metrics remain
    (out / "checkpoints" / "step_0000012.pt").unlink()
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    import shutil

    shutil.rmtree(out / "model")
    args = ["dpo", "--resume", "--loss", "kto", "--init_from", str(base), "--out", str(out),
            *_args(tmp_path / "b", tiny_world)]
    assert main(args) == 0
    a, b = load_file(straight / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 12


def test_adapters_off_is_the_base_model(checkpoint, pairs):
    from acorn.model import lora
    from acorn.train.prefs import adapters_off, completion_logps

    model = acorn_model(checkpoint).eval()
    batch = pair_batch(pairs, 0)
    with torch.no_grad():
        base = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
        lora.add_lora(model, r=4, alpha=8, targets=["all-linear"])
        for layer in lora.lora_layers(model).values():
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)  # a trained adapter: not zero
        adapted = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
        with adapters_off(model):
            off = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
        again = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)[0]
    assert torch.allclose(off, base, atol=1e-5) and not torch.allclose(adapted, base, atol=1e-2)
    assert torch.equal(again, adapted)  # switched back on afterwards


@pytest.mark.parametrize("loss", ["kto", "orpo", "simpo"])
def test_other_methods_run_from_the_command_line(tmp_path, tiny_world, world_tokenizer, loss):
    base = _base(tmp_path, world_tokenizer)
    _, rows = _run(tmp_path, base, tiny_world, loss)
    assert rows[-1]["loss"] < rows[0]["loss"] and "val_loss" in rows[-1]
    assert "rewards/chosen" in rows[-1] and "rewards/rejected" in rows[-1]


# ------------------------------------------------------------ bad input
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_world, world_tokenizer, capsys, tok):
    base = _base(tmp_path, world_tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    capsys.readouterr()
    assert main(["dpo", "--init_from", str(base), "--data", str(bad), "--out", str(tmp_path / "x"),
                 "--train.seq_len", "64"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "'chosen' and 'rejected'" in err and len(err.strip().splitlines()) == 1

    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps(r) + "\n" for r in [ROWS[2], {**ROWS[2], "rejected": ROWS[2]["chosen"]},
                                                           {**ROWS[3], "rejected": ROWS[3]["chosen"]}]))
    with pytest.warns(UserWarning, match=rf"2 pair\(s\) with chosen identical to rejected skipped .*{same.name}:2"):
        kept, stats = load_pairs([same], tok, max_len=64)
    assert len(kept) == 1 and stats.identical == 2

    assert main(["dpo", "--loss", "orpo", "--reference", str(base), "--init_from", str(base), "--data", str(same),
                 "--out", str(tmp_path / "y"), "--train.seq_len", "64"]) == 2
    assert "no reference" in capsys.readouterr().err
    with pytest.raises(AcornError, match="'label' must be true"):
        load_unpaired([_write(tmp_path / "k.jsonl", {"prompt": "a", "completion": "b", "label": "yes"})], tok, max_len=9)


def _write(path, row):
    path.write_text(json.dumps(row) + "\n")
    return path
