"""Task distillation's targets: what a finetuned teacher says of every training and transfer row, from the live
teacher (`teacher=DIR`) or from its predictions (`teacher_predictions=FILE`), checked against the task.

Both sources become the same prediction lines (finetune/inference.py's format, what `ds-distil predict` writes): the live
teacher runs once, frozen, over the training rows and then the transfer rows, exactly as `ds-distil predict` runs over a
file (predict.load, then `infer`'s batches by length, then `records`), and its lines are read by the same code as a
file's. So a live teacher and the predictions file `ds-distil predict` wrote of the same rows (same batch size and
precision) give the same targets, bit for bit, and the same student. The teacher's outputs do not change during training
(frozen, in eval mode, the same rows every epoch), so one pass before the first step is all the teaching costs.

A line gives a row's text (`text`, and `text_pair` for pairs; `words` for token tasks) and its `logits` (taken as they
are) or `probabilities` (a dict label -> p in the task's label order, or a list in that order; their logarithms serve as
logits, which is the same softened distribution at any temperature); per word for token tasks, null for a word the
teacher did not see (cut by its max_length): such a word has no teacher target. Rows are matched by their text, the
first line of a text wins. Every line is checked (labels and their order, the task's kind, one value per label, per word
one entry per word, no NaN, no negative or unnormalised probabilities) and every row must have its line: a refusal names
the first mismatch in one line.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example, Task
from ds_distil.data.transfer import Transfer
from ds_distil.finetune import predict
from ds_distil.finetune.features import encode
from ds_distil.finetune.inference import infer, records
from ds_distil.finetune.model_dir import SPEC
from ds_distil.runtime.precision import auto_precision

log = logging.getLogger(__name__)

PROB_TOLERANCE = 1e-3  # a row's probabilities sum to 1 within this (float32 softmax, a writer's rounding)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Source:
    """A teacher source, checked before anything heavy runs: the live teacher's directory (its config: kind, labels), or a
    predictions file read and every line of it checked."""

    setting: str  # "teacher=DIR" or "teacher_predictions=FILE": how refusals and the console name it
    path: Path
    spec: dict = field(default_factory=dict)  # the live teacher's ds_distil_task.json, where it has one
    table: dict | None = None  # a file's lines: text key -> logits
    ids: dict = field(default_factory=dict)  # a file's lines: id -> where (a refusal's hint)

    @property
    def live(self) -> bool:
        return self.table is None


@dataclass
class Targets:
    """The teacher's logits of every training row and transfer row, in the order of each list (sequence tasks: [labels];
    token tasks: [words, labels], NaN for a word without a teacher target), and what the console and results.json say."""

    train: list[torch.Tensor]
    transfer: list[torch.Tensor]
    record: dict

    def sha256(self) -> str:
        h = hashlib.sha256()
        for z in [*self.train, *self.transfer]:
            h.update(z.numpy().tobytes())
        return h.hexdigest()


def open_source(teacher: str | None, predictions: str | None, task: Task) -> Source | None:
    """The source the config names (None: no task distillation), refused in one line where it does not fit the task."""
    if teacher:
        return Source(f"teacher={teacher}", Path(teacher), spec=check_teacher(Path(teacher), task))
    if predictions:
        path = Path(predictions)
        if not path.is_file():
            raise UserError(f"teacher_predictions={path} does not exist or is not a file; write it with `ds-distil predict --model "
                            "TEACHER --input TRAIN_FILE --out FILE`")
        src = Source(f"teacher_predictions={path}", path, table={})
        _read_lines(src, task)
        return src
    return None


def check_teacher(path: Path, task: Task) -> dict:
    """A finetuned classifier of this task's kind and labels, in the task's order (its config.json, ds_distil_task.json)."""
    where = f"teacher={path}"
    if not (path / "config.json").is_file():
        raise UserError(f"{where} is not a model directory (no config.json); pass a finetuned classifier, e.g. a finetune run's DIR/model")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        spec = json.loads((path / SPEC).read_text(encoding="utf-8")) if (path / SPEC).is_file() else {}
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read its config.json or {SPEC} ({e}); pass a finetune run's DIR/model") from None
    arch = " ".join(config.get("architectures") or [])
    token = "TokenClassification" in arch
    if not token and "SequenceClassification" not in arch:
        raise UserError(f"{where} is not a classifier ({arch or 'no architectures in config.json'}); pass a finetuned classifier "
                        "of this task, e.g. a finetune run's DIR/model")
    kind = spec.get("kind") or ("token" if token else task.kind if task.kind != "token" else "sequence")
    if kind != task.kind:
        raise UserError(f"{where} is a {kind} classifier but task {task.name} is {task.kind} classification: the teacher must be "
                        "finetuned on this task")
    _check_labels(predict.labels_of(config, path), task, where, "its labels (config.json's id2label)")
    return spec


def _check_labels(labels: list[str], task: Task, where: str, what: str) -> None:
    if labels == list(task.labels):
        return
    if sorted(labels) == sorted(task.labels):
        raise UserError(f"{where}: {what} name the task's labels in another order ({', '.join(labels)}; task {task.name}: "
                        f"{', '.join(task.labels)}); the teacher's outputs must follow the task's label order")
    raise UserError(f"{where}: {what} ({', '.join(labels[:12])}) are not task {task.name}'s ({', '.join(task.labels[:12])}): "
                    "a teacher of another task or label set")


# ------------------------------------------------------------------------------------------- lines


def _read_lines(src: Source, task: Task) -> None:
    """Every line of a predictions file parsed and checked into src.table."""
    try:
        text = src.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{src.setting}: cannot read it as UTF-8 text ({e})") from None
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{src.path}:{lineno}"
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not a JSON line; the file must hold one JSON object per row (what `ds-distil predict` "
                            "writes)") from None
        _add(src, rec, where, task)
        n += 1
    if not n:
        raise UserError(f"{src.setting} holds no predictions; write it with `ds-distil predict`")


def _add(src: Source, rec, where: str, task: Task) -> None:
    key, z = parse(rec, where, task)
    src.table.setdefault(key, z)  # the first line of a text wins
    if isinstance(rec.get("id"), str):
        src.ids.setdefault(rec["id"], where)


def parse(rec, where: str, task: Task) -> tuple[tuple, torch.Tensor]:
    """(the row's text key, its logits) of one prediction line, refused in one line where it does not fit the task."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: a prediction line is a JSON object (text or words, and logits or probabilities)")
    if task.kind == "token":
        if "words" not in rec:
            other = " (a whole text's prediction: another task type)" if "text" in rec else ""
            raise UserError(f"{where}: no 'words'{other}; task {task.name} labels words: a line is {{\"words\": [...], \"logits\": "
                            "[[...], ...]}, one entry per word")
        words = rec["words"]
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise UserError(f"{where}: 'words' is not a list of words")
        key = tuple(words)
    else:
        if "words" in rec:
            raise UserError(f"{where}: a prediction per word ('words': another task type) but task {task.name} is {task.kind} "
                            "classification: a line is {\"text\": ..., \"logits\": [...]}")
        if not isinstance(rec.get("text"), str):
            raise UserError(f"{where}: no 'text' (the row's text, by which it is matched to the task's rows)")
        pair = rec.get("text_pair")
        if (task.kind == "pair") != isinstance(pair, str):
            raise UserError(f"{where}: {'no' if task.kind == 'pair' else 'a'} 'text_pair': task {task.name} is {task.kind} "
                            "classification (another task type)")
        key = (rec["text"], pair)
    return key, _values(rec, where, task, len(key) if task.kind == "token" else None)


def _values(rec: dict, where: str, task: Task, words: int | None) -> torch.Tensor:
    """The line's logits as a float32 [labels] (or [words, labels], NaN rows for null words) tensor."""
    labels, probs = list(task.labels), rec.get("probabilities")
    use = "logits" if rec.get("logits") is not None else "probabilities"
    raw = rec.get(use)
    if raw is None:
        raise UserError(f"{where}: neither 'logits' nor 'probabilities'; give the teacher's class scores of the row")
    for p in (probs if words is not None and isinstance(probs, list) else [probs]):
        if isinstance(p, dict):  # names the labels: checked even where the logits are what is used
            _check_labels(list(p), task, where, "the probabilities")
    rows = raw if words is not None else [raw]
    if words is not None and (not isinstance(rows, list) or len(rows) != words):
        raise UserError(f"{where}: '{use}' has {len(rows) if isinstance(rows, list) else 'no list of'} entries for {words} words; "
                        "give one per word (null for a word the teacher did not see)")
    out = torch.full((len(rows), len(labels)), math.nan, dtype=torch.float32)
    for w, v in enumerate(rows):
        if v is None and words is not None:
            continue
        if isinstance(v, dict):
            _check_labels(list(v), task, where, f"the {use}")
            v = list(v.values())
        if not isinstance(v, list) or len(v) != len(labels) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise UserError(f"{where}: '{use}'{f' of word {w + 1}' if words is not None else ''} is not {len(labels)} numbers, one per "
                            f"label of task {task.name} ({', '.join(labels[:12])})")
        t = torch.tensor(v, dtype=torch.float64)
        word = f" of word {w + 1}" if words is not None else ""
        if not torch.isfinite(t).all():
            raise UserError(f"{where}: a NaN or infinite value in '{use}'{word}; the teacher's output is broken: predict again")
        if use == "probabilities":
            if (t < 0).any():
                raise UserError(f"{where}: a negative probability ({t.min().item():g}){word}; probabilities are in [0, 1]")
            if abs(t.sum().item() - 1.0) > PROB_TOLERANCE:
                raise UserError(f"{where}: the probabilities{word} sum to {t.sum().item():.6g}, not 1; give a distribution (or logits)")
            t = t.clamp_min(torch.finfo(torch.float32).tiny).log()  # log p: the same softened distribution at every T
        out[w] = t.float()
    return out if words is not None else out[0]


# ------------------------------------------------------------------------------------------- targets


def targets(src: Source, task: Task, pool: list[Example], transfer: Transfer | None, batch_size: int, dtype: str, d) -> Targets:
    """The teacher's logits of every row of task.splits["train"] and of the transfer set (the live teacher runs over
    `pool`, the training split those rows came from, then over the transfer rows, as `ds-distil predict` would over
    their files)."""
    t0, live = time.perf_counter(), src.live
    rows = transfer.examples if transfer else []
    if live:
        src.table = {}
        _live_lines(src, task, [("training", pool), ("transfer", rows)], batch_size, dtype, d)
    train = _match(src, task, task.splits["train"], "training")
    moved = _match(src, task, rows, "transfer")
    if live:
        src.table = None  # the lines were for this pass only
    record = {"source": "live teacher" if live else "predictions file", "setting": src.setting, "path": str(src.path.resolve()),
              **({"teacher_dtype": dtype} if live else {}), "pass_s": time.perf_counter() - t0,
              "train": summary(train, [e.label for e in task.splits["train"]], task)}
    if transfer:
        record["transfer"] = {**summary(moved, transfer.gold, task), "source": transfer.source}
    return Targets(train, moved, record)


def teacher_dtype(setting: str, device: torch.device) -> str:
    """kd.teacher_dtype: auto is bf16 where the device has it natively, else fp16 on a GPU, fp32 on a CPU."""
    return auto_precision(device) if setting == "auto" else setting


def _live_lines(src: Source, task: Task, groups: list[tuple[str, list[Example]]], batch_size: int, dtype: str, d) -> None:
    net, tok, max_length = predict.load(src.path, task.kind, src.spec, d.device, DTYPES[dtype])
    labels = list(task.labels)
    for name, examples in groups:
        if not examples:
            continue
        feats = encode(task.kind, labels, examples, tok, max_length)
        logits = infer(net, feats, batch_size, tok.pad_token_id, d.rank, d.world_size, d.device, f"teacher on the {name} rows")
        for e, rec in zip(examples, records(task.kind, labels, examples, feats, logits)):
            _add(src, rec, f"{src.setting} ({name} row {e.id})", task)
    del net
    gc.collect()
    if d.device.type == "cuda":
        torch.cuda.empty_cache()


def _key(e: Example, kind: str) -> tuple:
    return tuple(e.text) if kind == "token" else (e.text, e.text_pair)


def _match(src: Source, task: Task, examples: list[Example], what: str) -> list[torch.Tensor]:
    out, missing = [], []
    for e in examples:
        z = src.table.get(_key(e, task.kind))
        if z is None:
            missing.append(e)
        elif task.kind == "token" and len(z) != len(e.text):
            raise UserError(f"{src.setting}: its line of {e.id} has {len(z)} words, the row has {len(e.text)}")
        out.append(z)
    if missing:
        e = missing[0]
        text = " ".join(e.text) if task.kind == "token" else e.text
        hint = f" (its line by id, {src.ids[e.id]}, has another text)" if e.id in src.ids else ""
        raise UserError(f"{src.setting} has no prediction for {len(missing):,} of the {len(examples):,} {what} rows, the first {e.id} "
                        f"({text[:60]!r}){hint}; predict every training and transfer row (rows are matched by their text)")
    return out


def summary(logits: list[torch.Tensor], gold: list | None, task: Task) -> dict:
    """Of the teacher on some rows: its labels' shares (argmax), its mean confidence (the top probability at T = 1) and,
    where gold labels are known, its agreement with them; per word for token tasks (words without a target left out)."""
    labels = list(task.labels)
    predicted, agree, units, confidence = Counter(), 0, 0, 0.0
    for i, z in enumerate(logits):
        z = z if task.kind == "token" else z[None]
        seen = ~torch.isnan(z[:, 0])
        top = torch.softmax(z[seen], -1).max(-1)
        confidence += top.values.sum().item()
        ids = top.indices.tolist()
        predicted.update(labels[k] for k in ids)
        units += len(ids)
        if gold is not None:
            g = gold[i] if task.kind == "token" else [gold[i]]
            agree += sum(labels[k] == lab for k, lab in zip(ids, [lab for lab, s in zip(g, seen.tolist()) if s]))
    out = {"rows": len(logits), "units": units, "unit": "words" if task.kind == "token" else "rows",
           "class_balance": {lab: predicted[lab] / max(units, 1) for lab in labels}, "mean_confidence": confidence / max(units, 1),
           "agreement": agree / max(units, 1) if gold is not None else None}
    if task.kind == "token":
        out["words_without_target"] = sum(int(torch.isnan(z[:, 0]).sum()) for z in logits)
    return out


def lines(record: dict, alpha: float, temperature: float) -> list[str]:
    """What the console says of the teaching, before the first step."""
    r = record
    how = f"{r['setting']} ({r['source']}{', ' + r['teacher_dtype'] if 'teacher_dtype' in r else ''})"
    out = [f"task distillation: the student learns from {how}: loss = {alpha:g} * CE(gold) + {1 - alpha:g} * {temperature:g}^2 * "
           f"KL(teacher || student) at T = {temperature:g}, per {r['train']['unit'][:-1]}; transfer rows: the KL term alone; the "
           f"teacher's targets in {r['pass_s']:.1f} s"]
    out.append("  " + _summary_line("labelled training rows", r["train"], "gold labels"))
    if "transfer" in r:
        t = r["transfer"]
        out.append("  " + _summary_line(f"transfer set ({t['source']['setting']}), learnt by KD alone", t, "gold labels"))
    return out


def _summary_line(name: str, s: dict, gold: str) -> str:
    top = sorted(s["class_balance"].items(), key=lambda kv: -kv[1])
    balance = " | ".join(f"{lab} {share:.1%}" for lab, share in top[:6]) + (f" | {len(top) - 6} more" if len(top) > 6 else "")
    agree = f"agreement with their {gold} {s['agreement']:.4f}; " if s["agreement"] is not None else "no gold labels; "
    words = f" ({s['units']:,} words{_without(s)})" if s["unit"] == "words" else ""
    return (f"{name}: {s['rows']:,} rows{words}: teacher {agree}mean confidence {s['mean_confidence']:.3f}; "
            f"its labels (argmax): {balance}")


def _without(s: dict) -> str:
    n = s.get("words_without_target")
    return f"; {n:,} cut by the teacher's max_length, no target" if n else ""
