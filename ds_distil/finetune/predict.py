"""`ds-distil predict --model DIR --input FILE --out FILE`: a finetuned classifier's predictions for every row of a file.

The model is a finetune run's DIR/model: its ds_distil_task.json says the task's kind, labels, columns and max_length,
so the file is read as the training files were (data/inputs.py: the same readers and checks), unless the settings say
otherwise; a Hugging Face classification directory from elsewhere works too, with its columns given. Rows are batched
by length on one rank or N (`infer`), and FILE gets one JSON line per row, in the input's order, with the class
probabilities and logits (the format is finetune/inference.py's, the same as a finetune run's predictions/*.jsonl):
what a later task-distillation run reads as its teacher's predictions. Where the input has gold labels, they are
written beside the predictions and scored.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from ds_distil.core.dist import barrier
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write_lines
from ds_distil.data.inputs import ModelInput, read_input
from ds_distil.finetune.features import encode
from ds_distil.finetune.inference import argmax, infer, jsonl, records
from ds_distil.finetune.model import auto_class
from ds_distil.finetune.model_dir import SPEC
from ds_distil.finetune.scoring import evaluate, interval
from ds_distil.runtime import engine as eng
from ds_distil.schema.finetune import PredictConfig

log = logging.getLogger(__name__)


def labels_of(config: dict, model_dir: Path) -> list[str]:
    id2label = config.get("id2label") or {}
    try:
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        labels = []
    if len(labels) < 2:
        raise UserError(f"{model_dir}/config.json names no labels (id2label); pass a finetuned classifier, e.g. a finetune run's DIR/model")
    return labels


def model_input(model_dir: Path, cfg: PredictConfig) -> tuple[ModelInput, dict]:
    """How `model_dir`'s inputs are read: its ds_distil_task.json, under the settings the user gave; and that record."""
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir} is not a model directory (no config.json); pass a finetune run's DIR/model")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    spec = json.loads((model_dir / SPEC).read_text(encoding="utf-8")) if (model_dir / SPEC).is_file() else {}
    labels = labels_of(config, model_dir)
    arch = " ".join(config.get("architectures") or [])
    if "TokenClassification" not in arch and "SequenceClassification" not in arch:
        raise UserError(f"--model {model_dir} is not a classifier ({arch or 'no architectures in config.json'}); pass a "
                        "finetune run's DIR/model")
    token = "TokenClassification" in arch
    kind = spec.get("kind") or ("token" if token else "pair" if cfg.text_pair_column else "sequence")
    if spec and spec.get("labels") != labels:
        raise UserError(f"{model_dir}: {SPEC} and config.json name different labels; the directory was changed after "
                        "finetuning: finetune it again")
    if kind == "sequence" and cfg.text_pair_column:
        raise UserError(f"text_pair_column={cfg.text_pair_column}: the model {model_dir} was finetuned on single texts, not pairs")
    text = cfg.text_column or spec.get("text_column") or ("tokens" if kind == "token" else "text")
    pair = cfg.text_pair_column or spec.get("text_pair_column")
    label = cfg.label_column or spec.get("label_column") or ("tags" if kind == "token" else "label")
    m = ModelInput(kind, tuple(labels), text, pair, label, cfg.id_column or spec.get("id_column"), cfg.encoding, cfg.skip_bad_rows)
    return m, spec


def load(model_dir: Path, kind: str, spec: dict, device, dtype=None, max_length: int | None = None):
    """(model on `device` in inference mode, its tokenizer, the max_length its inputs are cut at: `max_length`, else the
    one it was finetuned with, within its position embeddings); `dtype`: None keeps the saved weights' fp32."""
    from ds_distil.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    try:
        net = auto_class(kind).from_pretrained(str(model_dir)).to(device)
    except Exception as e:  # OSError, ValueError, safetensors' own error for a corrupt file
        raise UserError(f"cannot load the model in {model_dir}: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    if dtype is not None:
        net = net.to(dtype)
    limit = getattr(net.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return net.eval(), tokenizer, min(max_length or spec.get("max_length") or min(tokenizer.model_max_length, 512), limit)


def _check_out(out: Path, input_path: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass the file to write, e.g. {out / 'predictions.jsonl'}")
    if out.resolve() == input_path.resolve():
        raise UserError(f"--out {out} is the --input file; write the predictions to another file")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it, or choose another file")


def run_predict(model: str, input_path: str, out: str, cfg: PredictConfig, overwrite: bool = False) -> dict | None:
    """Predict every row of `input_path` into `out`; returns (on rank 0) what the summary shows, None on other ranks."""
    model_dir, inp, out_path = Path(model), Path(input_path), Path(out)
    _check_out(out_path, inp, overwrite)
    m, spec = model_input(model_dir, cfg)
    examples, record = read_input(inp, m)  # bad input fails before anything is loaded
    d = eng.init_distributed()
    net, tokenizer, max_length = load(model_dir, m.kind, spec, d.device, max_length=cfg.max_length)
    feats = encode(m.kind, list(m.labels), examples, tokenizer, max_length)
    if d.rank == 0:
        log.info("predict: %s rows of %s with %s (%s classification, %d labels, max_length %d), %d rank(s) on %s", f"{len(feats):,}", inp,
                 model_dir, m.kind, len(m.labels), max_length, d.world_size, d.device)
    logits = infer(net, feats, cfg.batch_size, tokenizer.pad_token_id, d.rank, d.world_size, d.device, "predict")
    found = None
    if d.rank == 0:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_lines(out_path, jsonl(records(m.kind, list(m.labels), examples, feats, logits)))
        found = _summary(m, spec, examples, feats, logits, record, max_length, inp, out_path)
    barrier()
    return found


def _summary(m: ModelInput, spec: dict, examples, feats, logits, record: dict, max_length: int, inp: Path, out: Path) -> dict:
    preds = argmax(logits)
    predicted = Counter(m.labels[p] for f in feats for p in (
        [preds[f["index"]][w] for w in f["words"]] if m.kind == "token" else [preds[f["index"]]]))
    found = {"rows": len(feats), "input": str(inp), "out": str(out), "kind": m.kind, "labels": list(m.labels),
             "predicted": {lab: predicted[lab] for lab in m.labels}, "truncated": sum(f["truncated"] for f in feats),
             "max_length": max_length, "skipped": record.get("skipped", {})}
    if record["labelled"]:
        metric = spec.get("metric") or ("f1" if m.kind == "token" and all(lab == "O" or lab[:2] in ("B-", "I-") for lab in m.labels)
                                        else "accuracy")
        task = SimpleNamespace(kind=m.kind, labels=list(m.labels), metric=metric)
        ev = evaluate(task, preds, feats)
        found["gold"] = {"metric": metric, "score": ev["score"], "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
                         "interval95": interval(task, preds, feats)}
    return found


def summary_lines(found: dict) -> list[str]:
    unit = "words" if found["kind"] == "token" else "rows"
    total = max(sum(found["predicted"].values()), 1)
    lines = [f"predicted {found['rows']:,} rows of {found['input']}: " + " | ".join(
        f"{lab} {n:,} ({n / total:.1%})" for lab, n in found["predicted"].items()) + f" of the {unit}"]
    if found["truncated"]:
        lines.append(f"  {found['truncated']:,} rows cut at max_length {found['max_length']} (marked \"truncated\" in the output)")
    if "gold" in found:
        g = found["gold"]
        accuracy = f" | accuracy {g['accuracy']:.4f}" if g["metric"] != "accuracy" else ""
        lines.append(f"  against the file's gold labels: {g['metric']} {g['score']:.4f} (95% interval {g['interval95'][0]:.4f} to "
                     f"{g['interval95'][1]:.4f}){accuracy} | macro-F1 {g['macro_f1']:.4f}")
    text = "words" if found["kind"] == "token" else "text"
    lines.append(f"wrote {found['out']} (one JSON line per row: id, {text}, gold, predicted, probabilities, logits, truncated)")
    return lines
