"""The rows a finetuned model predicts (`ds-distil predict`): one file, read and checked as finetuning reads its own.

A sequence or pair model reads .csv, .tsv, .jsonl or .json through data/readers.py (every row checked, FILE:LINE
errors, task.skip_bad_rows's counting), with the columns it was trained on unless told otherwise. A token model reads
.conllu (UPOS), IOB2 (.iob2, .conll, .txt) or JSON (.jsonl, .json) records whose text field is a list of words (or a
string, split on white space) and whose label field, where present, a list of tags. Gold labels are optional: a file
without the label column is predicted without them; with it, every label must be one the model has (a file made for
another model is refused in one line, naming the first label it does not know).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example
from ds_distil.data.readers import FORMATS, BadRow, ReadOptions, file_record, has_column, read_rows, read_split
from ds_distil.data.tasks import read_conllu_upos, read_iob2

log = logging.getLogger(__name__)

TOKEN_FILES = (".conllu", ".iob2", ".conll", ".txt")


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """What a model reads: its kind ("sequence", "pair", "token"), its labels, and how its rows are read."""

    kind: str
    labels: tuple[str, ...]
    text_column: str
    text_pair_column: str | None = None
    label_column: str = "label"
    id_column: str | None = None
    encoding: str = "auto"
    skip_bad_rows: bool = False


def read_input(path: Path, m: ModelInput) -> tuple[list[Example], dict]:
    """(examples, a record of the file: path, sha256, rows, skipped, labelled) of the file `path` for model input `m`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if m.kind != "token":
        if suffix not in FORMATS:
            raise UserError(f"--input {path}: a {m.kind} classification model reads {', '.join(FORMATS)} files (a CoNLL-U or IOB2 "
                            "file is for a token classification model)")
        labelled = has_column(path, m.label_column, m.encoding)
        opts = ReadOptions(text_column=m.text_column, label_column=m.label_column if labelled else None,
                           text_pair_column=m.text_pair_column, encoding=m.encoding, skip_bad_rows=m.skip_bad_rows, id_column=m.id_column)
        data = read_split(path, opts, set(m.labels), None, prefix="")
        return data.examples, {**data.record, "labelled": labelled}
    if suffix in TOKEN_FILES:
        examples = read_conllu_upos(path) if suffix == ".conllu" else read_iob2(path)
        skipped = Counter()
    elif suffix in (".jsonl", ".json"):
        examples, skipped = _word_records(path, m)
    else:
        raise UserError(f"--input {path}: a token classification model reads .conllu, IOB2 ({', '.join(TOKEN_FILES[1:])}) or "
                        "JSON Lines of word lists (text_column: the words, label_column: their tags)")
    kept = []
    for e in examples:
        unknown = sorted({t for t in e.label or [] if t not in m.labels})
        if unknown and not m.skip_bad_rows:
            where = path.with_name(e.id) if e.id and e.id.startswith(path.name + ":") else f"{path} ({e.id})"
            raise UserError(f"{where}: tag '{unknown[0]}' is not one of the model's labels ({', '.join(m.labels[:12])}); the file "
                            "is not for this model, or fix the tag (or set skip_bad_rows=true to skip such sentences and count them)")
        if unknown:
            skipped["tag not in the model"] += 1
        else:
            kept.append(e)
    if skipped:
        log.warning("%s: skipped %d bad row(s) (skip_bad_rows): %s", path, sum(skipped.values()),
                    "; ".join(f"{n} {r}" for r, n in skipped.items()))
    if not kept:
        raise UserError(f"{path} has no usable rows" + (f" ({sum(skipped.values())} skipped as bad)" if skipped else "") + "; add data")
    labelled = any(e.label is not None for e in kept)
    return kept, {**file_record(path), "rows": len(kept), "skipped": dict(skipped), "labelled": labelled}


def _word_records(path: Path, m: ModelInput) -> tuple[list[Example], Counter]:
    """Sentences of a JSON file: `text_column` a list of words (or a string split on white space), `label_column`
    (where the file has it) a list of tags, one per word."""
    _, rows, _ = read_rows(path, m.encoding)
    records = [r for _, r in rows if isinstance(r, dict)]
    if records and not any(m.text_column in r for r in records):
        fields = sorted({k for r in records for k in r})
        raise UserError(f"{path} has no field '{m.text_column}' (fields: {', '.join(fields) or 'none'}); set text_column=NAME to "
                        "the field holding each sentence's words")
    labelled = any(m.label_column in r for r in records)
    examples, skipped = [], Counter()
    for line, rec in rows:
        try:
            if isinstance(rec, BadRow):
                raise rec
            words = rec.get(m.text_column)
            words = words.split() if isinstance(words, str) else words
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise BadRow("no words", f"'{m.text_column}' is not a list of words", "write the sentence's words as a list of strings")
            tags = rec.get(m.label_column) if labelled else None
            if labelled and (not isinstance(tags, list) or len(tags) != len(words)):
                raise BadRow("tags do not fit", f"'{m.label_column}' is not a list of {len(words)} tags, one per word",
                             "give one tag per word")
            row_id = str(rec[m.id_column]) if m.id_column and m.id_column in rec else f"{path.name}:{line}"
            examples.append(Example(words, [str(t) for t in tags] if tags is not None else None, id=row_id))
        except BadRow as bad:
            if not m.skip_bad_rows:
                raise UserError(f"{path}:{line}: {bad.detail}; {bad.fix}, or set skip_bad_rows=true to skip such rows and count "
                                "them") from None
            skipped[bad.reason] += 1
    return examples, skipped
