"""Users' classification files, read and checked row by row.

A task directory holds one file per split:

    train.EXT, valid.EXT (or validation.EXT, dev.EXT), test.EXT     EXT: csv, tsv, jsonl, json

`.csv` is comma-separated and `.tsv` tab-separated, both with a header line and Excel/pandas
quoting; `.jsonl` has one JSON object per line; `.json` is a JSON array of objects (or JSON Lines,
which `datasets.Dataset.to_json` writes under that name). Without a validation file,
`task.valid_fraction` holds a stratified, seeded share of train out, every copy of a text on one side
(ds_distil.data.sampling, ds_distil.data.duplicates).

Every row is checked: a missing or empty label, a row with the wrong number of fields, an empty
text, a label in valid/test that training never saw; the first such row stops the run with
`FILE:LINE: what is wrong; what to do`, or, with `task.skip_bad_rows=true`, bad rows are skipped,
counted by reason and reported (log and results.json). A training set with one class is refused.

Why the standard library and not `datasets` (which reads the hub tasks): its CSV reader goes through
pandas, which turns a short row and an empty cell alike into None, keeps no line numbers (a quoted
newline shifts every later row), refuses a long row with pandas' own message and caches an Arrow copy
of the file; its JSON reader turns a missing key into None. To say which line of which file is wrong
we would have to read the file again ourselves; reading it once with `csv`/`json` is shorter.

Encodings: a byte-order mark (UTF-8, as Excel writes, UTF-16, UTF-32) is honoured and removed;
otherwise the file must be UTF-8, or be named with `task.encoding` (cp1252, latin-1, ...).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.data import sampling
from ds_distil.data.duplicates import text_key

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "dev"), "test": ("test",)}
FORMATS = (".csv", ".tsv", ".jsonl", ".json")
SKIP_HINT = "or set {prefix}skip_bad_rows=true to skip such rows and count them"


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None
    encoding: str = "auto"
    skip_bad_rows: bool = False
    valid_fraction: float | None = None
    seed: int = 0  # of the valid_fraction and test_fraction splits
    test_fraction: float | None = None
    group_column: str | None = None
    id_column: str | None = None


class BadRow(Exception):
    def __init__(self, reason: str, detail: str, fix: str):
        super().__init__(detail)
        self.reason, self.detail, self.fix = reason, detail, fix


# ------------------------------------------------------------------------------------ files


def find_split_files(directory: Path, valid_fraction: float | None, test_fraction: float | None = None) -> dict[str, Path]:
    """The file of each split; refuses ambiguity (dev.csv and valid.csv) and names what it looked for."""
    if not directory.is_dir():
        raise UserError(f"data directory {directory} does not exist; set task.data_dir=DIR to a directory with train, valid and test files")
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        paths = [directory / f"{n}{ext}" for n in names for ext in FORMATS if (directory / f"{n}{ext}").is_file()]
        if len(paths) > 1:
            raise UserError(f"{directory} has {' and '.join(p.name for p in paths)} for the {split} split; keep one")
        if paths:
            found[split] = paths[0]
    others = sorted(p.name for p in directory.iterdir() if p.is_file() and p not in found.values() and not p.name.startswith("."))
    seen = f"; found {', '.join(others[:8])}{', ...' if len(others) > 8 else ''}" if others else f"; {directory} has no other files"
    if any(p.endswith((".xlsx", ".xls", ".ods")) for p in others):
        seen += " (save spreadsheets as 'CSV UTF-8')"
    exts = "{" + ",".join(e[1:] for e in FORMATS) + "}"
    if "train" not in found:
        raise UserError(f"no train file in {directory}: looked for train.{exts}{seen}")
    if "test" not in found and test_fraction is None:
        raise UserError(f"no test file in {directory}: looked for test.{exts}{seen}; add one, or set task.test_fraction=0.1 "
                        "to hold 10% of the training rows out as the test split (stratified, seeded)")
    if "test" in found and test_fraction is not None:
        raise UserError(f"task.test_fraction={test_fraction} but {found['test']} exists; remove one of them")
    if "valid" not in found and valid_fraction is None:
        raise UserError(f"no validation file in {directory}: looked for valid.{exts}, validation.* and dev.*{seen}; add one, "
                        "or set task.valid_fraction=0.1 to hold 10% of the training rows out (stratified, seeded)")
    if "valid" in found and valid_fraction is not None:
        raise UserError(f"task.valid_fraction={valid_fraction} but {found['valid']} exists; remove one of them")
    return found


def file_record(path: Path) -> dict:
    """What results.json records about a file read: path, size, sha256."""
    data = path.read_bytes()
    return {"path": str(path.resolve()), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def decode(data: bytes, path: Path, encoding: str) -> tuple[str, str]:
    """(text, encoding used). auto: a BOM decides, else strict UTF-8 with an error naming the line."""
    if encoding != "auto":
        try:
            return data.decode(encoding), encoding
        except LookupError:
            raise UserError(f"task.encoding={encoding} is not an encoding Python knows (e.g. utf-8, cp1252, latin-1, utf-16)") from None
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise UserError(f"{path}:{line} cannot be decoded as {encoding} ({e.reason} at byte {e.start}); "
                            "set task.encoding to the file's encoding") from None
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(name), name
    if b"\0" in data:  # valid UTF-8 (ASCII text in UTF-16 is), but no text file of rows holds NUL characters
        raise UserError(_nul_bytes(data, path)) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line} is not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8, or name its encoding "
                        "with task.encoding=cp1252 (Excel on Windows) or task.encoding=latin-1") from None


def _nul_bytes(data: bytes, path: Path) -> str:
    """What a file with NUL bytes probably is: UTF-16 without a byte-order mark (every other byte 0 in ASCII text), or
    not text at all."""
    head = data[:4096]
    for name, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
        if zeros.count(0) > 0.9 * len(zeros):
            return (f"{path} looks like {name.upper()} text without a byte-order mark (every other byte is 0); save it as "
                    f"'CSV UTF-8' (or JSON in UTF-8), or name its encoding with task.encoding={name}")
    line = data[:data.index(b"\0")].count(b"\n") + 1
    return f"{path}:{line} holds a NUL byte: it is not a text file (or in an encoding that needs task.encoding=NAME)"


# ---------------------------------------------------------------------- rows: (line, fields or problem)


def _table_rows(text: str, path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, dict | BadRow]]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))  # long documents are not an error
    reader = csv.reader(io.StringIO(text, newline=""), dialect="excel-tab" if delimiter == "\t" else "excel")
    header, rows, start = None, [], 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: a row starts after the last one
            if not any(f.strip() for f in fields):
                continue  # blank lines and Excel's trailing ",,," rows
            if header is None:
                header = [f.strip() for f in fields]
                dup = [c for c, n in Counter(header).items() if n > 1]
                if dup:
                    raise UserError(f"{path}:{line}: the header names column '{dup[0]}' twice; rename one")
                continue
            if len(fields) != len(header):
                spans = f" (the row runs on to line {reader.line_num}: a quote (\") is probably never closed)" if reader.line_num > line else ""
                rows.append((line, BadRow("wrong number of fields", f"has {len(fields)} field{'s' * (len(fields) != 1)}, the header "
                                          f"has {len(header)}{spans}", "quote fields that contain the delimiter (\"a, b\") or fix the row")))
                continue
            rows.append((line, dict(zip(header, fields))))
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise UserError(f"{path}:{start}: cannot be read as {kind} ({e}); a quote (\") is "
                        "probably never closed: fix the quoting") from None
    if header is None:
        raise UserError(f"{path} is empty; it needs a header line and rows")
    return header, rows


def _json_value_rows(values: list[tuple[int, object]]) -> list[tuple[int, dict | BadRow]]:
    return [(line, v if isinstance(v, dict) else BadRow("not a JSON object", f"is {type(v).__name__}, not a JSON object",
                                                        "write one object per record, e.g. {\"text\": ..., \"label\": ...}"))
            for line, v in values]


def _jsonl_rows(text: str) -> list[tuple[int, dict | BadRow]]:
    rows = []
    for line, s in enumerate(text.splitlines(), 1):
        if not s.strip():
            continue
        try:
            rows += _json_value_rows([(line, json.loads(s))])
        except json.JSONDecodeError as e:
            rows.append((line, BadRow("invalid JSON", f"is not valid JSON ({e.msg} at column {e.colno})", "fix the line")))
    return rows


def _json_array_rows(text: str, path: Path) -> list[tuple[int, dict | BadRow]]:
    """Elements of a top-level JSON array with the line each starts on (json.load would lose it)."""
    decoder, values, i = json.JSONDecoder(), [], 0

    def skip(j: int) -> int:
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        return j

    def line_of(j: int) -> int:
        return text.count("\n", 0, j) + 1

    i = skip(i)
    if not text.startswith("[", i):
        if text.startswith("{", i):
            return _jsonl_rows(text)  # JSON Lines under a .json name, as datasets' to_json writes
        raise UserError(f"{path}:{line_of(i)}: expected a JSON array of objects ([{{...}}, ...]) or JSON Lines")
    i = skip(i + 1)
    while i < len(text) and text[i] != "]":
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file") from None
        values.append((line_of(i), value))
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i >= len(text) or text[i] != "]":
            raise UserError(f"{path}:{line_of(i)}: expected ',' or ']' after an array element; fix the file")
    if i >= len(text):
        raise UserError(f"{path}: the JSON array is never closed (no ']'); the file may be truncated")
    return _json_value_rows(values)


def read_rows(path: Path, encoding: str = "auto") -> tuple[list[str] | None, list[tuple[int, dict | BadRow]], str]:
    """(header or None for JSON, [(line, record or problem)], encoding used)."""
    text, used = decode(path.read_bytes(), path, encoding)
    if path.suffix in (".csv", ".tsv"):
        header, rows = _table_rows(text, path, "\t" if path.suffix == ".tsv" else ",")
        return header, rows, used
    rows = _jsonl_rows(text) if path.suffix == ".jsonl" else _json_array_rows(text, path)
    return None, rows, used


# --------------------------------------------------------------------------- records -> examples


def _cell(record: dict, column: str, what: str) -> str:
    if column not in record:
        raise BadRow(f"no {what}", f"has no '{column}' field", f"add the {what}")
    value = record[column]
    if isinstance(value, (list, dict)):
        raise BadRow(f"{what} not a string", f"'{column}' is a JSON {type(value).__name__}, not a string", "write it as one value")
    text = value if isinstance(value, str) else "" if value is None else json.dumps(value)  # 1 -> "1", true -> "true"
    if not text.strip():
        raise BadRow(f"empty {what}", f"the {what} ('{column}') is empty", "fill it in or delete the row")
    return text


def _check_columns(path: Path, header: list[str] | None, rows: list, opts: ReadOptions, prefix: str = "task.") -> list[str]:
    """Refuse a file without a column the settings name; returns its columns."""
    wanted = [c for c in (opts.text_column, opts.label_column, opts.text_pair_column, opts.group_column, opts.id_column) if c]
    setting = {c: prefix + name for name, c in (("id_column", opts.id_column), ("group_column", opts.group_column),
                                                ("text_pair_column", opts.text_pair_column), ("label_column", opts.label_column),
                                                ("text_column", opts.text_column)) if c}
    if header is None:  # JSON: a field missing from every record is a setting, not a row, to fix
        records = [r for _, r in rows if isinstance(r, dict)]
        header = sorted({k for r in records for k in r})
        missing = [c for c in wanted if records and not any(c in r for r in records)]
    else:
        missing = [c for c in wanted if c not in header]
    if not missing:
        return header
    col = missing[0]
    close = difflib.get_close_matches(col, header, n=1, cutoff=0.6) or [h for h in header if h.lower() == col.lower()]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if header and len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        hint += "; the header looks " + ("';'" if ";" in header[0] else "tab") + "-separated: .csv is read as comma-, .tsv as tab-separated"
    raise UserError(f"{path} has no column '{col}'{hint} (columns: {', '.join(header) or 'none'}); set {setting[col]}=NAME")


def has_column(path: Path, column: str, encoding: str = "auto") -> bool:
    """Whether a table file has `column` (a CSV/TSV header's name; a field of some JSON record)."""
    header, rows, _ = read_rows(path, encoding)
    if header is not None:
        return column in header
    return any(isinstance(r, dict) and column in r for _, r in rows)


@dataclasses.dataclass
class SplitData:
    examples: list
    record: dict  # file_record + rows, skipped by reason, encoding


def read_split(path: Path, opts: ReadOptions, known_labels: set[str] | None, train_path: Path | None, prefix: str = "task."):
    """Examples of one file, every row checked; `known_labels` (valid/test, or a model's input): labels training has,
    `train_path` where they come from (None: a model's input, whose labels are the model's). The group column (task.group_column) is required in the training file, read
    where present in the others. Without a label column (opts.label_column None) the examples have no label.
    `prefix`: of the settings a message names (task.text_column, or predict's text_column)."""
    from ds_distil.data.examples import Example

    header, rows, used = read_rows(path, opts.encoding)
    _check_columns(path, header, rows, opts if known_labels is None else dataclasses.replace(opts, group_column=None), prefix)
    examples, skipped, first_skipped = [], Counter(), {}
    for line, rec in rows:
        try:
            if isinstance(rec, BadRow):
                raise rec
            text = _cell(rec, opts.text_column, "text")
            pair = _cell(rec, opts.text_pair_column, "text") if opts.text_pair_column else None
            label = _cell(rec, opts.label_column, "label").strip() if opts.label_column else None
            row_id = _cell(rec, opts.id_column, "id").strip() if opts.id_column else f"{path.name}:{line}"
            group = None
            if opts.group_column and known_labels is None:
                group = _cell(rec, opts.group_column, "group").strip()
            elif opts.group_column and isinstance(rec.get(opts.group_column), (str, int, float)):
                group = str(rec[opts.group_column]).strip() or None
            if known_labels is not None and label is not None and label not in known_labels:
                shown = ", ".join(sorted(known_labels)[:10])
                if train_path is None:  # a model's input: the labels are the model's
                    raise BadRow("label not in the model", f"label '{label}' is not one of the model's labels ({shown})",
                                 "fix the label (a file without the label column is predicted without gold labels)")
                raise BadRow("label not in training", f"label '{label}' never occurs in the training data ({train_path.name}: {shown})",
                             "fix the label or add training rows with it")
        except BadRow as bad:
            if not opts.skip_bad_rows:
                raise UserError(f"{path}:{line}: {bad.detail}; {bad.fix}, {SKIP_HINT.format(prefix=prefix)}") from None
            skipped[bad.reason] += 1
            first_skipped.setdefault(bad.reason, line)
            continue
        examples.append(Example(text, label, pair, group, row_id))
    if skipped:
        log.warning("%s: skipped %d bad row(s) (%sskip_bad_rows): %s", path, sum(skipped.values()), prefix,
                    "; ".join(f"{n} {r} (first: line {first_skipped[r]})" for r, n in skipped.items()))
    if not examples:
        raise UserError(f"{path} has no usable rows" + (f" ({sum(skipped.values())} skipped as bad)" if skipped else "") + "; add data")
    record = {**file_record(path), "encoding": used, "rows": len(examples), "skipped": dict(skipped)}
    return SplitData(examples, record)


def read_classification(name: str, directory: Path, opts: ReadOptions, metric: str = "accuracy"):
    """A sequence (or pair) classification Task from a directory of split files."""
    from ds_distil.data.examples import Task

    files = find_split_files(directory, opts.valid_fraction, opts.test_fraction)
    train = read_split(files["train"], opts, None, None)
    labels = Counter(e.label for e in train.examples)
    if len(labels) < 2:
        (only, n), = labels.items()
        raise UserError(f"{files['train']}: every training row has the label '{only}' ({n} rows); a classifier needs at least two "
                        f"classes: check the data and task.label_column (now '{opts.label_column}')")
    splits = {"train": train.examples}
    records = {"train": train.record}
    for split in ("valid", "test"):
        if split in files:
            data = read_split(files[split], opts, set(labels), files["train"])
            splits[split], records[split] = data.examples, data.record
    provenance = {"files": records}
    total = len(splits["train"])
    grouped_by = ["text"] + ([f"group_column '{opts.group_column}'"] if opts.group_column else [])
    for split, fraction, setting in (("test", opts.test_fraction, "task.test_fraction"), ("valid", opts.valid_fraction, "task.valid_fraction")):
        if split in files:
            continue
        rows = splits["train"]
        # both fractions are shares of the training file; the validation split comes out of what the test split left
        share = fraction if len(rows) == total else min(fraction * total / len(rows), 0.99)
        kept, held = sampling.split_off(rows, [e.label for e in rows], share, opts.seed,
                                        keys=[(text_key(e), e.group) for e in rows])
        if not held:
            raise UserError(f"{files['train']}: {setting}={fraction} held out no rows: the groups that must stay together (copies "
                            f"of a text{', rows of one ' + opts.group_column if opts.group_column else ''}) are all larger than "
                            f"their class's share of {fraction:.0%}; raise {setting} or give a {split} file")
        splits["train"], splits[split] = kept, held
        provenance[f"{split}_from_train"] = {"fraction": fraction, "seed": opts.seed, "examples": len(held), "grouped_by": grouped_by}
        log.info("no %s file: held out %d of %d training rows (%s=%s, stratified, every copy of a text%s on one side, seed %d)",
                 "validation" if split == "valid" else "test", len(held), total, setting, fraction,
                 f" and every row of a {opts.group_column}" if opts.group_column else "", opts.seed)
    return Task(name, "pair" if opts.text_pair_column else "sequence", metric, splits, source=str(directory), provenance=provenance)


def read_options(task) -> ReadOptions:
    """How the `task` section of a finetune config (schema.finetune.TaskConfig) says users' files are read."""
    return ReadOptions(text_column=task.text_column, label_column=task.label_column, text_pair_column=task.text_pair_column,
                       encoding=task.encoding, skip_bad_rows=task.skip_bad_rows, valid_fraction=task.valid_fraction, seed=task.seed,
                       test_fraction=task.test_fraction, group_column=task.group_column, id_column=task.id_column)
