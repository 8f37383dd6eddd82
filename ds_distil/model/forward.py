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
                      vocab: int | None = None, hidden_layers: tuple[int, ...] = ()):
    """Encoder over the whole sequence, LM head only at `positions` (flat indices into batch x length).

    Returns (logits [M, vocab], {layer: hidden states [batch, length, hidden]} for `hidden_layers`: 0 is the
    embeddings' output, i the output of layer i, -1 the last layer's). Gathering before the head avoids the
    batch x length x vocab logits tensor (2 GB in fp32 for 32 x 128 x 119,547). `vocab` cuts the logits of a
    padded vocabulary (`pad_vocab`) back to the real tokens. The last layer's states cost nothing extra; any
    other layer makes the encoder return every layer's.
    """
    every = any(layer != -1 for layer in hidden_layers)
    out = encoder(model)(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=every, return_dict=True)
    last = out.last_hidden_state
    picked = last.reshape(-1, last.shape[-1]).index_select(0, positions)
    logits = mlm_head(model)(picked)
    if vocab is not None and vocab < logits.shape[-1]:
        logits = logits[:, :vocab]
    return logits, {layer: last if layer == -1 else out.hidden_states[layer] for layer in hidden_layers}


class MaskedLM(nn.Module):
    """A masked LM as the step calls it: forward(input_ids, attention_mask, positions, hidden_layers=()) ->
    (logits at the masked positions over the real vocabulary, {layer: hidden states}). Its state dict is the HF
    model's under `model.`."""

    def __init__(self, model: nn.Module, vocab: int | None = None):
        super().__init__()
        self.model = model
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, hidden_layers: tuple[int, ...] = ()):
        return masked_lm_forward(self.model, input_ids, attention_mask, positions, self.vocab, hidden_layers)
