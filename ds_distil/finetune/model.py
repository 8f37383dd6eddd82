"""The model a finetuning run trains and its tokenizer: a hub name or HF directory (pretrained encoder, new
classifier head), an architecture preset, or a config.json file (random weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Task
from ds_distil.data.tasks import default_data_dir
from ds_distil.model.info import loading_summary
from ds_distil.schema.finetune import FT_PRESETS, TaskConfig

log = logging.getLogger(__name__)


def tokenizer_for(model: str, cfg: TaskConfig):
    from ds_distil.data.tokenizer import load_tokenizer, probe

    if model in FT_PRESETS or is_architecture_file(model):
        name = cfg.tokenizer or str(default_data_dir() / "mbert_tokenizer")
        tok = load_tokenizer(name)
        probe(tok, name)
        return tok
    path = Path(model)
    if path.is_dir() and not any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")):
        raise UserError(f"model directory {model} has no tokenizer files; save the tokenizer with the model "
                        "(tokenizer.save_pretrained(dir)) or export it with `ds-distil export`")
    tok = load_tokenizer(cfg.tokenizer or model)
    probe(tok, cfg.tokenizer or model)
    return tok


def is_architecture_file(model: str) -> bool:
    return model.endswith(".json") and Path(model).is_file()


def auto_class(kind: str):
    """The transformers Auto class of a task kind: token classification, or sequence (and pair) classification."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if kind == "token" else AutoModelForSequenceClassification


def build_model(model: str, task: Task, tokenizer):
    """A hub name or HF directory (pretrained encoder, new classifier head), or random weights: an
    architecture preset or a config.json file (any size: e.g. an exported student's, for its From Scratch row).
    The config carries the task's labels (id2label, label2id), so that the saved model names its classes."""
    from transformers import RobertaConfig

    from ds_distil.model.build import PRESET_SIZES, bert_config

    auto = auto_class(task.kind)
    labels = {"num_labels": len(task.labels), "id2label": dict(enumerate(task.labels)), "label2id": {l: i for i, l in enumerate(task.labels)}}
    if model == "tagalog-roberta":
        # RoBERTa-base's architecture (Tagalog-RoBERTa base); its BPE vocabulary is not reachable
        # offline, so the embedding table takes the tokenizer in use. Random weights: for speed.
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id, **labels)
        return auto.from_config(config)
    if model in PRESET_SIZES:
        config = bert_config(model, len(tokenizer), tokenizer.pad_token_id)
        config.update(labels)
        return auto.from_config(config)
    if is_architecture_file(model):
        from transformers import AutoConfig

        spec = json.loads(Path(model).read_text())
        if "model_type" not in spec:
            raise UserError(f"{model} has no 'model_type'; pass a Hugging Face config.json (e.g. a model directory's)")
        if spec.get("vocab_size") != len(tokenizer):
            raise UserError(f"{model} has vocab_size {spec.get('vocab_size')} but the tokenizer has {len(tokenizer)} tokens; "
                            "set task.tokenizer to the tokenizer this architecture was made for")
        for k in ("architectures", "id2label", "label2id", "num_labels", "_name_or_path"):
            spec.pop(k, None)
        config = AutoConfig.for_model(**spec, **labels)
        return auto.from_config(config)
    try:
        net, info = auto.from_pretrained(model, output_loading_info=True, **labels)
    except Exception as e:  # OSError, ValueError, and safetensors' own error for a corrupt weights file
        raise UserError(f"cannot load model '{model}': {(str(e).splitlines() or [type(e).__name__])[0][:200]}; pass a local Hugging Face directory, "
                        f"a hub name, or an architecture preset ({', '.join(FT_PRESETS)})") from None
    line, incomplete = loading_summary(info, model)  # in place of transformers' key table (see ds_distil/core/quiet.py)
    (log.warning if incomplete else log.info)(line)
    return net
