"""Heads on the transformer's final hidden states other than the next-token head: a reward model.

A reward model (Stiennon et al. 2020, "Learning to summarize from human feedback";
Ouyang et al. 2022, InstructGPT) is the language model with its vocabulary head
replaced by one linear layer d_model -> 1, read at the last token of a sequence:

    r(x, y) = w . h_T,   h_T = the final hidden state (after the last norm) at the
                               last token that is not padding

It reads the whole conversation (prompt and answer) and gives one number; trained on
preference pairs so that r(chosen) > r(rejected) (acorn.train.reward), it stands in
for the people who judged them, e.g. as PPO's reward.

The layout is transformers' sequence classifier with num_labels = 1
(LlamaForSequenceClassification, GPT2ForSequenceClassification, ...): the backbone's
tensors, then `score.weight` (1, d_model) without bias, and the pooled position found
as transformers finds it, the rightmost token that is not config.pad_token_id (so left
and right padding both work). `save` writes that checkpoint (acorn.model.checkpoint,
`score=`), and transformers' AutoModelForSequenceClassification gives the same scores.

What a reward model reads (`sequence_ids`): a conversation, rendered with the
tokenizer's chat template (acorn.chat.template), or a plain text as BOS + text + EOS
(as SFT and DPO render plain text), or token ids as they are. Training (the pairs of
acorn.train.prefs_data) and scoring render through this one function.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from acorn.errors import AcornError
from acorn.model.transformer import Transformer


def sequence_ids(tok, item) -> list[int]:
    """What a reward model reads, as token ids: a conversation (a list of messages) through the
    chat template, a text as BOS + text + EOS (where the tokenizer has them), ids as they are."""
    if isinstance(item, (list, tuple)) and item and all(isinstance(i, int) and not isinstance(i, bool) for i in item):
        return list(item)
    if tok is None:
        raise AcornError("this reward model has no tokenizer; give token ids, or load it with its tokenizer")
    if isinstance(item, str):
        return ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(item) + (
            [tok.eos_id] if tok.eos_id is not None else [])
    if isinstance(item, (list, tuple)) and item and all(isinstance(m, dict) for m in item):
        return list(tok.apply_chat_template(list(item)))
    raise AcornError(f"cannot score {type(item).__name__} {str(item)[:60]!r}: give a text, a conversation (a list "
                     "of {'role', 'content'} messages) or a list of token ids")


def last_token_index(input_ids: Tensor, attention_mask: Tensor | None, pad_id: int | None) -> Tensor:
    """Each row's pooled position, as transformers' sequence classifiers choose it: the rightmost
    token that is not pad_id; without a pad id, the last attended position (right padding)."""
    t = input_ids.shape[1]
    if pad_id is not None:
        positions = torch.arange(t, device=input_ids.device)
        return (positions * (input_ids != pad_id)).argmax(-1)
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), t - 1, device=input_ids.device, dtype=torch.long)
    return attention_mask.long().sum(-1).clamp(min=1) - 1


def tokenizer_fingerprint(tok) -> str:
    """A digest of a tokenizer's vocabulary: every token's bytes and the special tokens' names.
    Two tokenizers with the same digest turn every text into the same ids."""
    h = hashlib.sha256()
    for i in range(tok.vocab_size):
        h.update(tok.token_bytes(i) + b"\x00")
    for name, i in sorted(tok.special_tokens.items()):
        h.update(f"{name}={i}\n".encode())
    return h.hexdigest()


class RewardModel(nn.Module):
    """A transformer and a scalar head read at each sequence's last real token (module docstring).

    forward(input_ids, attention_mask) -> (B,) float32 rewards. score(items) -> list[float]
    renders and batches texts, conversations or ids with the tokenizer the model was trained
    with. The head is called `head` here (`score` is the method) and written as transformers'
    `score.weight`."""

    def __init__(self, transformer: Transformer, *, pad_id: int | None, tokenizer=None):
        super().__init__()
        self.transformer = transformer
        self.head = nn.Linear(transformer.config.d_model, 1, bias=False, device=transformer.device,
                              dtype=transformer.dtype)
        # transformers initialises a new score layer with N(0, initializer_range); so does Acorn.
        nn.init.normal_(self.head.weight, 0.0, transformer.config.init_std)
        self.pad_id = pad_id
        self.tokenizer = tokenizer

    @classmethod
    def from_causal_lm(cls, transformer: Transformer, tokenizer) -> "RewardModel":
        """A new reward model on a language model's backbone (its LM head stays, unused). The pad id
        is the tokenizer's, else its EOS (as TRL pads), so the saved config has one for transformers."""
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        return cls(transformer, pad_id=pad, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device="auto") -> "RewardModel":
        """A reward model saved by `save` (or any transformers XForSequenceClassification with one
        label and a family Acorn runs), with the tokenizer files beside it."""
        from acorn.model.checkpoint import load_classifier
        from acorn.tokenizer.bpe import Tokenizer

        transformer, score, hf = load_classifier(path, dtype=dtype, device=device)
        if score.shape[0] != 1:
            raise AcornError(f"{path}: the classifier has {score.shape[0]} labels; a reward model has one score "
                             "(num_labels 1)")
        try:
            tok = Tokenizer.from_pretrained(path)
        except AcornError as e:
            raise AcornError(f"{path}: no tokenizer beside the reward model ({e}); save it with its tokenizer") from None
        model = cls(transformer, pad_id=hf.get("pad_token_id"), tokenizer=tok)
        with torch.no_grad():
            model.head.weight.copy_(score)
        return model.eval()

    # What the training loop and the run machinery read off a model.
    @property
    def config(self):
        return self.transformer.config

    @property
    def model(self) -> nn.Module:
        """The backbone (embeddings, blocks, norm): what FSDP2 shards block by block."""
        return self.transformer.model

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def num_params(self) -> int:
        """The backbone and the head (an LM head the backbone still carries is not counted)."""
        lm_head = self.transformer.lm_head.weight
        tied = lm_head is self.transformer.model.embed_tokens.weight
        return self.transformer.num_params() - (0 if tied else lm_head.numel()) + self.head.weight.numel()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = self.transformer(input_ids, attention_mask=attention_mask, hidden_only=True).hidden
        last = last_token_index(input_ids, attention_mask, self.pad_id)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled).squeeze(-1).float()

    # ---- using it
    def check_tokenizer(self, tok) -> None:
        """An AcornError when `tok` does not turn text into the ids this model was trained on: scores
        of another vocabulary's ids would be numbers about other tokens."""
        mine = self.tokenizer
        if mine is None:
            if tok.vocab_size > self.config.vocab_size:
                raise AcornError(f"the tokenizer has {tok.vocab_size} tokens but the reward model's vocabulary is "
                                 f"{self.config.vocab_size}; use the tokenizer the reward model was trained with")
            return
        if mine.vocab_size != tok.vocab_size or tokenizer_fingerprint(mine) != tokenizer_fingerprint(tok):
            raise AcornError(f"the reward model's tokenizer (vocabulary {mine.vocab_size}) differs from this one "
                             f"(vocabulary {tok.vocab_size}): the same text would be other ids; train the reward "
                             "model from a checkpoint with the policy's tokenizer")

    @torch.no_grad()
    def score(self, items, *, batch_size: int = 16) -> list[float]:
        """One reward per item: a text, a conversation (list of messages) or a list of token ids."""
        rows = [sequence_ids(self.tokenizer, item) for item in items]
        limit = self.config.max_seq_len
        for i, r in enumerate(rows):
            if len(r) > limit:
                raise AcornError(f"item {i} is {len(r)} tokens, longer than the reward model's context ({limit}); "
                                 "shorten it")
            if r and max(r) >= self.config.vocab_size:
                raise AcornError(f"item {i} has token id {max(r)}, outside the reward model's vocabulary "
                                 f"({self.config.vocab_size}); use the reward model's tokenizer")
        was_training = self.training
        self.eval()
        out: list[float] = []
        pad = self.pad_id if self.pad_id is not None else 0
        try:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                width = max(len(r) for r in chunk)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=self.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=self.device)
                out += self(ids, mask).tolist()
        finally:
            self.train(was_training)
        return out

    def save(self, directory, *, tokenizer=None, dtype=None) -> Path:
        """A transformers sequence-classifier checkpoint (module docstring) with the tokenizer."""
        from acorn.model.checkpoint import save

        return save(self.transformer, directory, tokenizer=tokenizer or self.tokenizer, dtype=dtype,
                    score=self.head.weight, pad_id=self.pad_id)
