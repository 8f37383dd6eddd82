"""`ds-distil trim`: an existing model over a target-language vocabulary (`ds-distil vocab`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ds_distil.core.errors import UserError, os_errors_at
from ds_distil.data.vocab import load_vocab_map


def trim_embeddings(model, kept: np.ndarray):
    """Keep the rows `kept` of the word embeddings (and the tied decoder and its bias), in that order."""
    emb = model.get_input_embeddings()
    if int(kept.max()) >= emb.weight.shape[0]:
        raise UserError(f"the model has {emb.weight.shape[0]} vocabulary rows, fewer than the vocabulary's original ids need")
    idx = torch.from_numpy(kept)
    head = model.get_output_embeddings()
    old_w = emb.weight.detach().clone()
    old_head_w = head.weight.detach().clone() if head is not None and head.weight is not emb.weight else None
    old_b = head.bias.detach().clone() if head is not None and getattr(head, "bias", None) is not None else None
    with torch.random.fork_rng(devices=[]):
        model.resize_token_embeddings(len(kept), mean_resizing=False)  # shrinks (keeps the tying), then:
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(old_w[idx])
        head = model.get_output_embeddings()
        if old_head_w is not None:
            head.weight.copy_(old_head_w[idx])
        if old_b is not None:
            head.bias.copy_(old_b[idx])
    return model


def trim_model(model_dir: str, vocab_dir: str, out: str, overwrite: bool = False) -> Path:
    """`ds-distil trim`: a pretrained model directory -> the same model over the kept vocabulary."""
    from transformers import AutoModelForMaskedLM

    from ds_distil.data.tokenizer import load_tokenizer, vocab_hash

    vmap = load_vocab_map(vocab_dir)
    src = Path(model_dir)
    try:
        tok = load_tokenizer(model_dir)
    except UserError as e:
        raise UserError(f"cannot check {model_dir} against the vocabulary: {e}") from None
    if vocab_hash(tok) != vmap.source["vocab_sha256"]:
        raise UserError(f"{model_dir}'s tokenizer (vocab {len(tok)}, sha256 {vocab_hash(tok)[:12]}) is not the one vocabulary "
                        f"{vocab_dir} was chosen from (sha256 {vmap.source['vocab_sha256'][:12]})")
    try:
        model = AutoModelForMaskedLM.from_pretrained(str(src))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {model_dir}: {str(e).splitlines()[0][:200]}") from None
    trim_embeddings(model, vmap.kept)
    from ds_distil.core.rundir import claim

    with claim(out, "trim", overwrite=overwrite, inputs=[model_dir, vocab_dir]) as rd:
        with os_errors_at(rd.path):
            model.save_pretrained(str(rd.path), safe_serialization=True)
            load_tokenizer(vocab_dir).save_pretrained(str(rd.path))
        rd.commit()
    return Path(out)
