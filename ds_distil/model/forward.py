"""The masked-positions-only MLM forward: the encoder over the whole sequence, the LM head only where it is needed,
and what intermediate-layer objectives read (hidden states, a layer's attention queries, keys and values)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ds_distil.core.errors import UserError


class Outputs(NamedTuple):
    """What a model gives an objective for a batch."""

    logits: torch.Tensor  # [M, vocab] at the masked positions
    hidden: dict[int, torch.Tensor] = {}  # layer -> hidden states [B, L, H] (0: the embeddings' output, -1: the last layer's)
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # layer (1..) -> its queries, keys, values [B, L, H]


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


def layer_qkv(model: nn.Module, layer: int, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer `layer`'s (1-based) self-attention queries, keys and values [B, L, H] (all heads side by side, before the
    split into heads), recomputed from the layer's input with the layer's own projections: what its attention
    kernel computed, while the kernel itself (SDPA, flash) stays as it is and never has to return its maps. A
    pre-LN layer (MegatronBERT's `attention.ln`) normalises its input first, as its forward does."""
    attention = encoder(model).encoder.layer[layer - 1].attention
    x = attention.ln(layer_input) if hasattr(attention, "ln") else layer_input
    return attention.self.query(x), attention.self.key(x), attention.self.value(x)


def masked_lm_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                      vocab: int | None = None, hidden_layers: tuple[int, ...] = (), qkv_layers: tuple[int, ...] = ()) -> Outputs:
    """Encoder over the whole sequence, LM head only at `positions` (flat indices into batch x length).

    Returns the logits [M, vocab], the hidden states of `hidden_layers` (0 is the embeddings' output, i the output
    of layer i, -1 the last layer's) and the queries, keys and values of `qkv_layers` (1-based). Gathering before
    the head avoids the batch x length x vocab logits tensor (2 GB in fp32 for 32 x 128 x 119,547). `vocab` cuts
    the logits of a padded vocabulary (`pad_vocab`) back to the real tokens. The last layer's states cost nothing
    extra; any other layer, and any queries/keys/values (recomputed from their layer's input), make the encoder
    return every layer's states.
    """
    every = any(layer != -1 for layer in hidden_layers) or bool(qkv_layers)
    out = encoder(model)(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=every, return_dict=True)
    last = out.last_hidden_state
    picked = last.reshape(-1, last.shape[-1]).index_select(0, positions)
    logits = mlm_head(model)(picked)
    if vocab is not None and vocab < logits.shape[-1]:
        logits = logits[:, :vocab]
    hidden = {layer: last if layer == -1 else out.hidden_states[layer] for layer in hidden_layers}
    # hidden_states[i - 1] is layer i's input (the embeddings' output for layer 1)
    qkv = {layer: layer_qkv(model, layer, out.hidden_states[layer - 1]) for layer in qkv_layers}
    return Outputs(logits, hidden, qkv)


class MaskedLM(nn.Module):
    """A masked LM as the step calls it: forward(input_ids, attention_mask, positions, hidden_layers=(), qkv_layers=())
    -> `Outputs` (logits at the masked positions over the real vocabulary, hidden states, queries/keys/values). Its
    state dict is the HF model's under `model.`."""

    def __init__(self, model: nn.Module, vocab: int | None = None):
        super().__init__()
        self.model = model
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, hidden_layers: tuple[int, ...] = (),
                qkv_layers: tuple[int, ...] = ()) -> Outputs:
        return masked_lm_forward(self.model, input_ids, attention_mask, positions, self.vocab, hidden_layers, qkv_layers)
