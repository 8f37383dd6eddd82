"""Model surgery: vocabulary padding, a teacher head over a trimmed vocabulary, embeddings copied from the teacher."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ds_distil.core.errors import UserError
from ds_distil.data.masking import IGNORE_INDEX
from ds_distil.data.vocab import VocabMap
from ds_distil.model.forward import encoder

log = logging.getLogger(__name__)


@torch.no_grad()
def init_embeddings_from_teacher(student: nn.Module, teacher: nn.Module, project: bool, rows: torch.Tensor | None = None) -> None:
    """Copy the teacher's word, position and token-type embeddings (and their LayerNorm) into the
    student. With different hidden sizes a plain copy is refused; `project` maps them onto the
    student's size with the top principal directions of the teacher's word embeddings (PCA).
    `rows`: the teacher row of each student word (a trimmed vocabulary); default: the same ids."""
    s_emb, t_emb = encoder(student).embeddings, encoder(teacher).embeddings
    hs, ht = s_emb.word_embeddings.embedding_dim, t_emb.word_embeddings.embedding_dim
    names = ("word_embeddings", "position_embeddings", "token_type_embeddings")

    def source(name: str) -> torch.Tensor:
        w = getattr(t_emb, name).weight
        return w.index_select(0, rows.to(w.device)) if name == "word_embeddings" and rows is not None else w

    if hs == ht:
        for name in names:
            src, dst = source(name), getattr(s_emb, name).weight
            n = min(src.shape[0], dst.shape[0])
            dst[:n].copy_(src[:n].float())
        if hasattr(s_emb, "LayerNorm") and hasattr(t_emb, "LayerNorm"):  # a pre-LN model's embeddings have none
            s_emb.LayerNorm.load_state_dict({k: v.float() for k, v in t_emb.LayerNorm.state_dict().items()})
        log.info("student embeddings copied from the teacher (hidden size %d)", hs)
        return
    if not project:
        raise UserError(
            f"student.embeddings=teacher needs equal hidden sizes, but the student has {hs} and the teacher {ht}; "
            "use student.embeddings=teacher-pca to project them, or random"
        )
    if hs > ht:
        raise UserError(f"cannot project {ht}-dim teacher embeddings up to a {hs}-dim student; use embeddings=random")
    # the student's vocabulary rows only: a padded teacher's extra rows (pad_vocab) are zeros
    word = source("word_embeddings")[: s_emb.word_embeddings.weight.shape[0]].float()
    mean = word.mean(0, keepdim=True)
    # top-hs right singular vectors of the centred word embeddings: the PCA basis
    _, _, v = torch.svd_lowrank(word - mean, q=hs, niter=4)
    for name in names:
        src, dst = source(name).float(), getattr(s_emb, name).weight
        n = min(src.shape[0], dst.shape[0])
        dst[:n].copy_((src[:n] - mean) @ v)
    log.info("student embeddings: teacher's projected by PCA from %d to %d dimensions", ht, hs)


@torch.no_grad()
def restrict_head(model: nn.Module, rows: torch.Tensor, pad_multiple: int = 1) -> nn.Module:
    """Give a (frozen) teacher an LM head over the vocabulary rows `rows` only, padded to
    `pad_multiple`: its logits are then those of the kept tokens, in the student's order, at a
    fraction of the full head's cost. The input embeddings keep the full vocabulary (the teacher
    still reads the original ids); the new decoder is a copy, no longer tied to them."""
    old = model.get_output_embeddings()
    k = len(rows)
    size = padded_size(k, pad_multiple)
    new = nn.Linear(old.in_features, size, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:k].copy_(old.weight.index_select(0, rows.to(old.weight.device)))
    if old.bias is not None:
        new.bias.zero_()
        new.bias[:k].copy_(old.bias.index_select(0, rows.to(old.bias.device)))
    model.set_output_embeddings(new)
    model.requires_grad_(False)
    return model


def padded_size(vocab_size: int, multiple: int) -> int:
    return -(-vocab_size // multiple) * multiple if multiple > 1 else vocab_size


def pad_vocab(model: nn.Module, multiple: int) -> nn.Module:
    """Pad the (tied) word embeddings, decoder and its bias to a multiple of `multiple` rows, in place.

    An odd vocabulary such as mBERT's 119,547 makes the LM-head GEMM's output rows unaligned, and
    cuBLAS falls back to slow kernels for it; 119,552 rows do not. The extra rows are never looked
    up (no token id reaches them) and their logits are cut off before any softmax
    (`masked_lm_forward(..., vocab=real size)`), so they get no probability mass and no gradient.
    Their content is zero and drawing it does not touch the global RNG (initialisation stays the
    same with or without padding). `unpad_vocab` undoes it for export.
    """
    vocab = model.config.vocab_size
    target = padded_size(vocab, multiple)
    if target != vocab:
        with torch.random.fork_rng(devices=[]):
            model.resize_token_embeddings(target, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[vocab:].zero_()
            bias = getattr(model.get_output_embeddings(), "bias", None)
            if bias is not None:
                bias[vocab:].zero_()
    return model


def unpad_vocab(model: nn.Module, vocab_size: int) -> nn.Module:
    """Drop the padding rows again: the model then matches its tokenizer (`len(tokenizer)` rows)."""
    if model.config.vocab_size != vocab_size:
        if model.config.vocab_size < vocab_size:
            raise UserError(f"model has {model.config.vocab_size} vocabulary rows, fewer than the tokenizer's {vocab_size}")
        model.resize_token_embeddings(vocab_size)
    return model


@dataclass
class TrimmedRun:
    """A distillation into a trimmed vocabulary, as the student side needs it."""

    vocab: int  # the student's vocabulary size
    pad_id: int  # its [PAD]
    kept: torch.Tensor  # the original (teacher) id of each student token
    id_map: torch.Tensor  # [original vocabulary] -> student id; tokens not kept -> [UNK]
    target_map: torch.Tensor  # [original vocabulary] -> student MLM target; tokens not kept -> IGNORE_INDEX (no target)
    full_head: nn.Module | None  # the teacher's LM head over every token, kept aside for the log-step metric


def prepare_trimmed_run(vmap: VocabMap, teacher, pad_id: int, unk_id: int, pad_multiple: int) -> TrimmedRun:
    """Slice the teacher's LM head to the kept rows (in place), and say what the student side needs."""
    kept = torch.from_numpy(vmap.kept)
    new_id = vmap.old_to_new(-1)
    full_head = None
    if teacher is not None:
        full_head = teacher.get_output_embeddings()
        restrict_head(teacher, kept, pad_multiple)
    return TrimmedRun(vmap.size, int(new_id[pad_id]), kept, vmap.old_to_new(int(new_id[unk_id])), vmap.old_to_new(IGNORE_INDEX),
                      full_head)
