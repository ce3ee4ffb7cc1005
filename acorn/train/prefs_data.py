"""Preference data: pairs (and KTO's unpaired examples) -> token ids with completion masks, in batches.

The formats are TRL's, as people already have them (one JSON object per line; .jsonl or .jsonl.gz):

  explicit prompt   {"prompt": P, "chosen": C, "rejected": R}
  implicit prompt   {"chosen": C, "rejected": R}: the prompt is their common beginning (TRL's
                    extract_prompt): the leading messages they share, or for text the leading
                    characters, a space just before the divergence going to the completions
  unpaired (KTO)    {"prompt": P, "completion": C, "label": true | false}

where each of P, C, R is plain text (a string) or a conversation (a list of {"role", "content"}
messages, tool calls included; a row's "tools" go to the template). Optional: "margin" (a number,
for the reward model's margin loss). Other keys are ignored, so the world's preference.jsonl
(explicit, conversational, with kind/person/attribute) and the hh-rlhf pairs in
../shared/data/preference (implicit plain text, "\\n\\nHuman: ... \\n\\nAssistant: ...") are read as they are.
KTO reads pairs too, unpaired as TRL unpairs them: chosen -> label true, rejected -> label false.

Rendering, TRL's rule: the prompt is rendered alone (a conversation with the chat template's
generation prompt; text as BOS + text) and prompt + completion whole (a conversation through the
template; text as acorn.model.heads.sequence_ids renders it, BOS + text + EOS), and the completion
is what follows the tokens the two share, so a template that renders the prompt differently alone,
or tokens that merge across the boundary, cannot shift it. The completion mask is 1 on the
completion's tokens, and for conversations only on those the template marks as the assistant's
({% generation %}: never a tool result or the next role header; acorn.chat.template).

Bad input: a row without chosen/rejected (or prompt/completion/label) is an AcornError naming the
file and line; a pair whose chosen equals its rejected teaches nothing and is counted, skipped and
warned about; a prompt that fills the whole length leaves nothing to train on and is dropped
(counted); longer sequences keep their start (TRL's keep_start).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from acorn.errors import AcornError
from acorn.fileio import expand_inputs, read_jsonl
from acorn.model.heads import sequence_ids

SUFFIXES = (".jsonl", ".gz")


# ------------------------------------------------------------------- rows
def is_conversation(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _check_part(value, name: str, where: str) -> None:
    if not (isinstance(value, str) or is_conversation(value)):
        raise AcornError(f"{where}: {name!r} must be a string or a list of {{'role', 'content'}} messages, "
                         f"not {type(value).__name__}")


def extract_prompt(chosen, rejected) -> tuple:
    """TRL's implicit prompt: the longest common beginning of chosen and rejected (messages, or
    characters); a space right before the divergence belongs to the completions. When one is a
    prefix of the other the prompt stops one element short, so neither completion is empty."""
    n = min(len(chosen), len(rejected))
    idx = next((i for i in range(n) if chosen[i] != rejected[i]), None)
    if idx is None:
        idx = max(n - 1, 0)
    elif idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    return chosen[:idx], chosen[idx:], rejected[idx:]


def pair_parts(row, where: str) -> tuple:
    """(prompt, chosen, rejected, margin) of a preference row, with the implicit prompt extracted."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise AcornError(f"{where}: a preference row needs 'chosen' and 'rejected' (and optionally 'prompt'); "
                         f"it has {keys or 'no fields'}")
    chosen, rejected = row["chosen"], row["rejected"]
    _check_part(chosen, "chosen", where)
    _check_part(rejected, "rejected", where)
    if is_conversation(chosen) != is_conversation(rejected):
        raise AcornError(f"{where}: 'chosen' and 'rejected' must both be text or both be conversations")
    prompt = row.get("prompt")
    # TRL's maybe_extract_prompt: a prompt of the other kind than the completions (a text prompt
    # beside conversations that repeat it) means the prompt is implicit after all.
    if prompt is None or is_conversation(prompt) != is_conversation(chosen):
        if chosen == rejected:
            return None, chosen, rejected, row.get("margin")
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if is_conversation(row["chosen"]) and not prompt:
            raise AcornError(f"{where}: chosen and rejected share no leading messages, so there is no prompt; "
                             "give an explicit 'prompt'")
    else:
        _check_part(prompt, "prompt", where)
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise AcornError(f"{where}: 'margin' must be a number, not {margin!r}")
    return prompt, chosen, rejected, margin


def unpaired_parts(row, where: str) -> list[tuple]:
    """[(prompt, completion, label)] of a KTO row; a preference pair gives two (TRL's unpairing)."""
    if isinstance(row, dict) and "chosen" in row and "rejected" in row:
        prompt, chosen, rejected, _ = pair_parts(row, where)
        return [(prompt, chosen, True), (prompt, rejected, False)]
    if not isinstance(row, dict) or not {"prompt", "completion", "label"} <= set(row):
        keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise AcornError(f"{where}: an unpaired (KTO) row needs 'prompt', 'completion' and 'label' (or a preference "
                         f"pair: 'chosen' and 'rejected'); it has {keys or 'no fields'}")
    _check_part(row["prompt"], "prompt", where)
    _check_part(row["completion"], "completion", where)
    if is_conversation(row["prompt"]) != is_conversation(row["completion"]):
        raise AcornError(f"{where}: 'prompt' and 'completion' must both be text or both be conversations")
    if not isinstance(row["label"], bool):
        raise AcornError(f"{where}: 'label' must be true (desirable) or false (undesirable), not {row['label']!r}")
    return [(row["prompt"], row["completion"], row["label"])]


def read_rows(paths):
    """(where, row) for every line of the files (directories and globs expanded), `where` = file:line."""
    for path in expand_inputs(paths, SUFFIXES, any_file=False):
        for i, row in enumerate(read_jsonl(path), 1):
            yield f"{path}:{i}", row


# --------------------------------------------------------------- rendering
def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading items a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render(tok, prompt, completion, tools=None) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, whole sequence ids, trained-token mask over the whole sequence); see the module docstring."""
    if is_conversation(prompt) or is_conversation(completion):
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tools=tools)
        r = tok.apply_chat_template(list(prompt) + list(completion), tools=tools, return_assistant_mask=True)
        return prompt_ids, r["input_ids"], r["assistant_mask"]
    prompt_ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt)
    ids = sequence_ids(tok, prompt + completion)
    return prompt_ids, ids, [1] * len(ids)


@dataclass
class Pair:
    """One preference pair as ids: the shared prompt, then each completion with its trained-token mask."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_mask: list[int]
    rejected_mask: list[int]
    margin: float | None = None
    ref_chosen: float | None = None  # the reference model's log-probabilities, filled once before training
    ref_rejected: float | None = None


@dataclass
class Unpaired:
    """One KTO example, with the mismatched completion its KL estimate uses (`pair_for_kl`)."""

    prompt: list[int]
    completion: list[int]
    mask: list[int]
    label: bool
    kl_completion: list[int] = field(default_factory=list)
    kl_mask: list[int] = field(default_factory=list)
    ref: float | None = None
    ref_kl: float | None = None


@dataclass
class LoadStats:
    identical: int = 0  # chosen == rejected: skipped
    truncated: int = 0  # cut to max_len, keeping the start
    prompt_too_long: int = 0  # the prompt alone fills max_len: dropped
    nothing_trained: int = 0  # no assistant token in a completion: dropped
    first_identical: str = ""

    def describe(self) -> str:
        parts = [f"{self.truncated} cut to the length limit" if self.truncated else "",
                 f"{self.prompt_too_long} dropped (the prompt alone fills the length limit)" if self.prompt_too_long else "",
                 f"{self.nothing_trained} dropped (no assistant tokens to train on)" if self.nothing_trained else ""]
        return ", ".join(p for p in parts if p)


def _split(prompt_len: int, ids: list[int], mask: list[int], max_len: int) -> tuple[list[int], list[int]]:
    ids, mask = ids[:max_len], mask[:max_len]
    return ids[prompt_len:], mask[prompt_len:]


def load_pairs(paths, tok, *, max_len: int) -> tuple[list[Pair], LoadStats]:
    """Every preference pair of the files, rendered; identical pairs are skipped with a warning."""
    pairs, stats = [], LoadStats()
    for where, row in read_rows(paths):
        prompt, chosen, rejected, margin = pair_parts(row, where)
        if chosen == rejected:
            stats.identical += 1
            stats.first_identical = stats.first_identical or where
            continue
        tools = row.get("tools")
        p_ids, c_ids, c_mask = render(tok, prompt, chosen, tools)
        _, r_ids, r_mask = render(tok, prompt, rejected, tools)
        n = min(common_prefix(p_ids, c_ids), common_prefix(p_ids, r_ids))
        if n >= max_len:
            stats.prompt_too_long += 1
            continue
        stats.truncated += len(c_ids) > max_len or len(r_ids) > max_len
        chosen_ids, chosen_mask = _split(n, c_ids, c_mask, max_len)
        rejected_ids, rejected_mask = _split(n, r_ids, r_mask, max_len)
        if not any(chosen_mask) or not any(rejected_mask):
            stats.nothing_trained += 1
            continue
        pairs.append(Pair(p_ids[:n], chosen_ids, rejected_ids, chosen_mask, rejected_mask,
                          None if margin is None else float(margin)))
    _warn_identical(stats)
    if not pairs:
        raise AcornError("no preference pairs to train on in " + ", ".join(map(str, paths)) +
                         (f" ({stats.describe()})" if stats.describe() else ""))
    return pairs, stats


def _warn_identical(stats: LoadStats) -> None:
    if stats.identical:
        warnings.warn(f"{stats.identical} pair(s) with chosen identical to rejected skipped (they carry no "
                      f"preference; the first at {stats.first_identical})", stacklevel=3)


def load_unpaired(paths, tok, *, max_len: int) -> tuple[list[Unpaired], LoadStats]:
    """Every KTO example of the files (pairs unpaired), rendered."""
    out, stats = [], LoadStats()
    for where, row in read_rows(paths):
        if isinstance(row, dict) and "chosen" in row and "rejected" in row and row["chosen"] == row["rejected"]:
            stats.identical += 1
            stats.first_identical = stats.first_identical or where
            continue
        for prompt, completion, label in unpaired_parts(row, where):
            p_ids, ids, mask = render(tok, prompt, completion, row.get("tools"))
            n = common_prefix(p_ids, ids)
            if n >= max_len:
                stats.prompt_too_long += 1
                continue
            stats.truncated += len(ids) > max_len
            completion_ids, completion_mask = _split(n, ids, mask, max_len)
            if not any(completion_mask):
                stats.nothing_trained += 1
                continue
            out.append(Unpaired(p_ids[:n], completion_ids, completion_mask, label))
    _warn_identical(stats)
    if not out:
        raise AcornError("no KTO examples to train on in " + ", ".join(map(str, paths)) +
                         (f" ({stats.describe()})" if stats.describe() else ""))
    return out, stats


def pair_for_kl(examples: list[Unpaired], group: int, seed: int, max_len: int) -> None:
    """KTO's KL estimate compares the policy and the reference on mismatched (prompt, completion)
    pairs. As TRL builds them: in groups of `group` examples (a seeded order), each prompt gets the
    completion of the example before it in its group (the first the last's). Fixed here, before
    training, so their reference log-probabilities are computed once like the others."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), group):
        idx = order[start:start + group]
        for k, i in enumerate(idx):
            j = idx[k - 1]  # k = 0 takes the last of the group
            ex, other = examples[i], examples[j]
            room = max_len - len(ex.prompt)
            ex.kl_completion, ex.kl_mask = other.completion[:room], other.mask[:room]


# ----------------------------------------------------------------- batches
@dataclass
class PairBatch:
    """B pairs as one (2B, T) batch, TRL's layout: the B chosen sequences, then the B rejected ones,
    each prompt + completion, right-padded."""

    input_ids: Tensor  # (2B, T)
    attention_mask: Tensor  # (2B, T) 1 on real tokens
    completion_mask: Tensor  # (2B, T) 1 on the trained completion tokens
    ref_logps: Tensor | None = None  # (2B,) the reference's summed log-probabilities, chosen then rejected
    margin: Tensor | None = None  # (B,) for the reward model's margin loss


@dataclass
class KTOBatch:
    input_ids: Tensor  # (B, T) prompt + completion
    attention_mask: Tensor
    completion_mask: Tensor
    label: Tensor  # (B,) bool: desirable
    kl_input_ids: Tensor  # (B, T') prompt + another example's completion
    kl_attention_mask: Tensor
    kl_completion_mask: Tensor
    ref_logps: Tensor | None = None  # (B,)
    ref_kl_logps: Tensor | None = None  # (B,)


def _pad(rows: list[list[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def sequences(prompts, completions, masks, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded (ids, attention mask, completion mask) of prompt + completion rows."""
    ids = [p + c for p, c in zip(prompts, completions)]
    return (_pad(ids, pad_id), _pad([[1] * len(r) for r in ids], 0),
            _pad([[0] * len(p) + m for p, m in zip(prompts, masks)], 0))


def pair_batch(pairs: list[Pair], pad_id: int) -> PairBatch:
    prompts = [p.prompt for p in pairs] * 2
    ids, attention, completion = sequences(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                           [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs], pad_id)
    ref = None
    if all(p.ref_chosen is not None for p in pairs):
        ref = torch.tensor([p.ref_chosen for p in pairs] + [p.ref_rejected for p in pairs], dtype=torch.float32)
    margin = None
    if all(p.margin is not None for p in pairs):
        margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return PairBatch(ids, attention, completion, ref, margin)


def kto_batch(examples: list[Unpaired], pad_id: int) -> KTOBatch:
    prompts = [e.prompt for e in examples]
    ids, attention, completion = sequences(prompts, [e.completion for e in examples], [e.mask for e in examples], pad_id)
    kl_ids, kl_attention, kl_completion = sequences(prompts, [e.kl_completion for e in examples],
                                                    [e.kl_mask for e in examples], pad_id)
    ref = ref_kl = None
    if all(e.ref is not None for e in examples):
        ref = torch.tensor([e.ref for e in examples], dtype=torch.float32)
        ref_kl = torch.tensor([e.ref_kl for e in examples], dtype=torch.float32)
    return KTOBatch(ids, attention, completion, torch.tensor([e.label for e in examples]), kl_ids, kl_attention,
                    kl_completion, ref, ref_kl)
