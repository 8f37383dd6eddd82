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

from ds_distil.core.errors import UserError
from ds_distil.model.forward import encoder
from ds_distil.model.surgery import init_embeddings_from_teacher, pad_vocab
from ds_distil.schema.distill import StudentConfig, TeacherConfig

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


def weights_sha256(model: nn.Module) -> str:
    """A model's weights (names, dtypes, shapes, bytes): what a teacher cache's targets came from."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def count_parameters(model: nn.Module | None) -> dict[str, int]:
    if model is None:
        return {"total": 0, "trainable": 0, "embeddings": 0}
    emb = sum(p.numel() for p in encoder(model).embeddings.parameters())
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "embeddings": emb,
    }


