"""The masked-positions-only MLM forward: the encoder over the whole sequence, the LM head only where it is needed."""

from __future__ import annotations

import torch
from torch import nn

from ds_distil.core.errors import UserError


def encoder(model: nn.Module) -> nn.Module:
    for name in ("bert", "roberta", "xlm_roberta"):
        if hasattr(model, name):
            return getattr(model, name)
    raise UserError(f"{type(model).__name__} is not a BERT/RoBERTa masked LM; ds-distil needs one of those")


def mlm_head(model: nn.Module) -> nn.Module:
    for name in ("cls", "lm_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise UserError(f"{type(model).__name__} has no MLM head (cls / lm_head)")


def masked_lm_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                      vocab: int | None = None):
    """Encoder over the whole sequence, LM head only at `positions` (flat indices into batch x length).

    Returns (logits [M, vocab], last hidden states [batch, length, hidden]). Gathering before the
    head avoids the batch x length x vocab logits tensor (2 GB in fp32 for 32 x 128 x 119,547).
    `vocab` cuts the logits of a padded vocabulary (`pad_vocab`) back to the real tokens.
    """
    hidden = encoder(model)(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    logits = mlm_head(model)(picked)
    if vocab is not None and vocab < logits.shape[-1]:
        logits = logits[:, :vocab]
    return logits, hidden


class MaskedLM(nn.Module):
    """The trained model as DeepSpeed sees it: forward(input_ids, attention_mask, positions) ->
    (logits at the masked positions over the real vocabulary, last hidden states). Its state dict
    is the HF model's under `model.`."""

    def __init__(self, model: nn.Module, vocab: int | None = None):
        super().__init__()
        self.model = model
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor):
        return masked_lm_forward(self.model, input_ids, attention_mask, positions, self.vocab)
