"""Teacher and student models, embedding initialisation, and the masked-positions-only MLM forward.

Single-device code: nothing here imports DeepSpeed or torch.distributed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ds_distil.config import StudentConfig, TeacherConfig
from ds_distil.errors import UserError

log = logging.getLogger(__name__)

# name: (layers, hidden, ffn, heads, positions)
PRESET_SIZES = {
    "mbert": (12, 768, 3072, 12, 512),  # bert-base-multilingual-cased
    "distilmbert": (6, 768, 3072, 12, 512),  # distilbert-base-multilingual-cased's size, as a BERT
    "dbert-base": (6, 768, 3072, 12, 512),  # the paper's dBERT Base
    "dbert-tiny": (4, 312, 1200, 12, 512),  # the paper's dBERT Tiny
    "tiny": (2, 128, 256, 2, 512),  # tests and smoke runs
    "micro": (2, 64, 128, 2, 512),
}


def bert_config(preset: str | None, vocab_size: int, pad_token_id: int, dropout: float = 0.1, norm: str = "post", **sizes):
    """A BertConfig from a preset, with any of num_layers/hidden_size/intermediate_size/num_heads/max_positions overridden;
    norm="pre": the same sizes as a MegatronBertConfig (BERT with pre-LN layers, a final LayerNorm, and no
    LayerNorm on the embeddings; Xiong et al. 2020), which AutoModelFor* classes load like BERT."""
    from transformers import BertConfig, MegatronBertConfig

    layers, hidden, ffn, heads, positions = PRESET_SIZES[preset] if preset else (None,) * 5
    layers = sizes.get("num_layers") or layers
    hidden = sizes.get("hidden_size") or hidden
    ffn = sizes.get("intermediate_size") or ffn
    heads = sizes.get("num_heads") or heads
    positions = sizes.get("max_positions") or positions
    if None in (layers, hidden, ffn, heads, positions):
        raise UserError("a custom model size needs num_layers, hidden_size, intermediate_size, num_heads and max_positions")
    if hidden % heads:
        raise UserError(f"hidden_size {hidden} is not divisible by num_heads {heads}")
    return {"post": BertConfig, "pre": MegatronBertConfig}[norm](  # user input is checked by StudentConfig's Literal
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=positions, pad_token_id=pad_token_id,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, type_vocab_size=2,
    )


def _from_pretrained(name: str, what: str, **kw):
    from transformers import AutoModelForMaskedLM

    try:
        return AutoModelForMaskedLM.from_pretrained(name, **kw)
    except Exception as e:  # OSError, ValueError, and safetensors' own error for a corrupt weights file
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise UserError(
            f"cannot load {what} '{name}'{offline}: {(str(e).splitlines() or [type(e).__name__])[0][:200]}; pass a local Hugging Face "
            f"directory, or {what}.config / {what}.preset for a randomly initialised architecture"
        ) from None


def build_teacher(cfg: TeacherConfig, vocab_size: int, pad_token_id: int, pad_multiple: int = 1) -> nn.Module | None:
    """The teacher in fp32 on CPU, frozen and in eval mode (placement and casting: engine.place_teacher);
    its vocabulary rows padded to `pad_multiple` (see pad_vocab)."""
    from transformers import BertConfig, BertForMaskedLM

    if not cfg.enabled:
        return None
    if cfg.pretrained:
        model = _from_pretrained(cfg.pretrained, "teacher")
    elif cfg.config:
        path = Path(cfg.config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"teacher.config {cfg.config} does not exist; pass a BERT config.json")
        try:
            config = BertConfig.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UserError(f"teacher.config {path} is not a BERT config.json ({e})") from None
        config.pad_token_id = pad_token_id
        model = BertForMaskedLM(config)
    else:
        model = BertForMaskedLM(bert_config(cfg.preset, vocab_size, pad_token_id, dropout=0.0))
    if model.config.vocab_size != vocab_size:
        raise UserError(
            f"teacher vocabulary has {model.config.vocab_size} entries but the shards' tokenizer has {vocab_size}; "
            "the teacher, the student and the shards must share one vocabulary (prepare with the teacher's tokenizer)"
        )
    pad_vocab(model, pad_multiple)
    model.eval()
    model.requires_grad_(False)
    return model


def build_student(cfg: StudentConfig, vocab_size: int, pad_token_id: int, teacher: nn.Module | None = None,
                  pad_multiple: int = 1, teacher_rows: torch.Tensor | None = None) -> nn.Module:
    """The student: preset/sizes (random weights) or pretrained; embeddings from the teacher if asked
    (`teacher_rows`: the teacher's word-embedding row of each student token, for a trimmed
    vocabulary); vocabulary rows padded to `pad_multiple` (see pad_vocab), before any freezing."""
    from transformers import AutoModelForMaskedLM

    if cfg.pretrained:
        model = _from_pretrained(cfg.pretrained, "student", hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
        if model.config.vocab_size != vocab_size:
            hint = ("; a student trimmed to a target-language vocabulary needs student.vocab=VOCAB_DIR (the vocabulary it was "
                    "trimmed to)" if model.config.vocab_size < vocab_size and not cfg.vocab else "")
            raise UserError(f"student '{cfg.pretrained}' has vocabulary {model.config.vocab_size}, the run {vocab_size}; "
                            f"prepare the shards with its tokenizer{hint}")
    else:
        sizes = {k: getattr(cfg, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "max_positions")}
        model = AutoModelForMaskedLM.from_config(bert_config(cfg.preset, vocab_size, pad_token_id, cfg.dropout, cfg.norm, **sizes))
    if cfg.embeddings != "random":
        if teacher is None:
            raise UserError(f"student.embeddings={cfg.embeddings} needs a teacher (teacher.enabled is false)")
        init_embeddings_from_teacher(model, teacher, project=cfg.embeddings == "teacher-pca", rows=teacher_rows)
    pad_vocab(model, pad_multiple)
    if cfg.freeze_embeddings:
        encoder(model).embeddings.requires_grad_(False)
        # BERT ties the output projection to the word embeddings: it is frozen with them.
    return model


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


def count_parameters(model: nn.Module | None) -> dict[str, int]:
    if model is None:
        return {"total": 0, "trainable": 0, "embeddings": 0}
    emb = sum(p.numel() for p in encoder(model).embeddings.parameters())
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "embeddings": emb,
    }


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
