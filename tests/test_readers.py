"""Users' classification files (data/readers.py): formats, encodings, row checks with file:line, held-out
and sampled splits. Bad input is one line naming the file and line, and exit status 2 from the CLI."""

from __future__ import annotations

import os

import pytest
from conftest import run_cli

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example
from ds_distil.data.readers import ReadOptions
from ds_distil.data.tasks import load_task

GOOD = "text,label\nisa,a\ndalawa,b\ntatlo,a\n"


def make(tmp_path, train: str | bytes, ext: str = "csv", valid: str | None = GOOD, test: str = GOOD):
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"train.{ext}").write_bytes(train if isinstance(train, bytes) else train.encode())
    if valid is not None:
        (d / "valid.csv").write_text(valid)
    (d / "test.csv").write_text(test)
    return d


def refused(d, match: str, **opts) -> str:
    with pytest.raises(UserError, match=match) as e:
        load_task("csv", str(d), read=ReadOptions(**opts))
    assert "\n" not in str(e.value)  # one line
    return str(e.value)


def test_excel_csv_with_a_bom_reads(tmp_path):
    d = make(tmp_path, "\ufefftext,label\r\n\"isa, may kuwit\",a\r\n\"dalawa\nlinya\",b\r\n".encode("utf-8"))
    task = load_task("csv", str(d))
    assert task.splits["train"] == [Example("isa, may kuwit", "a"), Example("dalawa\nlinya", "b")]
    assert task.provenance["files"]["train"]["encoding"] == "utf-8-sig"


def test_utf16_tsv_json_array_and_json_lines_read(tmp_path):
    d = make(tmp_path, "text\tlabel\nisa\ta\ndalawa\tb\n".encode("utf-16"), ext="tsv")  # Excel's "Unicode text": UTF-16, tabs
    assert load_task("csv", str(d)).splits["train"] == [Example("isa", "a"), Example("dalawa", "b")]
    (d / "train.tsv").unlink()
    (d / "train.json").write_text('[\n {"text": "isa", "label": "a"},\n {"text": "dalawa", "label": "b", "id": 1}\n]\n')
    assert load_task("csv", str(d)).splits["train"] == [Example("isa", "a"), Example("dalawa", "b")]
    (d / "train.json").write_text('{"text": "isa", "label": "a"}\n{"text": "dalawa", "label": "b"}\n')  # datasets' to_json
    assert len(load_task("csv", str(d)).splits["train"]) == 2


def test_bad_rows_are_refused_with_file_and_line(tmp_path):
    d = make(tmp_path, "text,label\nisa,a\ndalawa,\ntatlo,b\n")
    refused(d, r"train.csv:3: the label \('label'\) is empty; fill it in or delete the row, or set task.skip_bad_rows=true")
    (d / "train.csv").write_text("text,label\nisa,a\ndalawa\ntatlo,b\n")
    refused(d, r"train.csv:3: has 1 field, the header has 2")
    (d / "train.csv").write_text("text,label\nisa,a\n  ,b\n")
    refused(d, r"train.csv:3: the text \('text'\) is empty")
    (d / "train.csv").unlink()
    (d / "train.jsonl").write_text('{"text": "isa", "label": "a"}\n{"text": "dalawa"}\n{"text": "tatlo", "label": "b"}\n')
    refused(d, r"train.jsonl:2: has no 'label' field")
    (d / "train.jsonl").write_text('{"text": "isa", "label": "a"}\n{"text": "dalawa", "label": "a"}\n')
    refused(d, r"train.jsonl: every training row has the label 'a' \(2 rows\); a classifier needs at least two classes")
    (d / "train.jsonl").write_text('{"text": "isa", "label": "a"}\n{"text": "dalawa", "label": "b"}\n')
    (d / "test.csv").write_text("text,label\nx,a\ny,c\n")
    refused(d, r"test.csv:3: label 'c' never occurs in the training data \(train.jsonl: a, b\)")


def test_skip_bad_rows_skips_and_counts(tmp_path):
    d = make(tmp_path, "text,label\nisa,a\ndalawa,\ntatlo\napat,b\n", test="text,label\nx,a\ny,c\nz,b\n")
    task = load_task("csv", str(d), read=ReadOptions(skip_bad_rows=True))
    assert [e.text for e in task.splits["train"]] == ["isa", "apat"] and [e.text for e in task.splits["test"]] == ["x", "z"]
    assert task.provenance["files"]["train"]["skipped"] == {"empty label": 1, "wrong number of fields": 1}
    assert task.provenance["files"]["test"]["skipped"] == {"label not in training": 1}


def test_encodings_columns_and_file_names(tmp_path):
    d = make(tmp_path, "text,label\nis\xe1,a\nb,b\n".encode("cp1252"))
    refused(d, r"train.csv:2 is not UTF-8 \(byte 0xe1\); .* task.encoding=cp1252")
    assert load_task("csv", str(d), read=ReadOptions(encoding="cp1252")).splits["train"][0].text == "isá"
    (d / "train.csv").write_text("Text;Label\nisa;a\n")
    refused(d, r"train.csv has no column 'text'; the header looks ';'-separated: .csv is read as comma-, .tsv as tab-separated")
    (d / "train.csv").write_text(GOOD)
    (d / "dev.csv").write_text(GOOD)
    refused(d, r"data has valid.csv and dev.csv for the valid split; keep one")
    (d / "dev.csv").unlink()
    (d / "valid.csv").unlink()
    refused(d, r"no validation file in .*: looked for valid.\{csv,tsv,jsonl,json\}, validation.\* and dev.\*; .*task.valid_fraction=0.1")


def test_valid_fraction_is_stratified_and_the_same_for_the_same_seed(tmp_path):
    rows = "".join(f"t{i},{'rare' if i % 5 == 0 else 'common'}\n" for i in range(100))
    d = make(tmp_path, "text,label\n" + rows, valid=None, test="text,label\nx,rare\ny,common\n")

    def held(seed):
        task = load_task("csv", str(d), read=ReadOptions(valid_fraction=0.1, seed=seed))
        assert len(task.splits["train"]) == 90
        return [(e.text, e.label) for e in task.splits["valid"]]

    first = held(0)
    assert len(first) == 10 and sum(label == "rare" for _, label in first) == 2  # 20% rare, as in train
    assert held(0) == first and held(1) != first
    with pytest.raises(UserError, match=r"task.valid_fraction=0.1 but .*valid.csv exists"):
        load_task("csv", str(make(tmp_path / "other", GOOD)), read=ReadOptions(valid_fraction=0.1))


def test_max_train_examples_is_a_seeded_stratified_sample(tmp_path):
    from ds_distil.data.sampling import sample_train

    rows = "".join(f"t{i},{'rare' if i % 10 == 0 else 'common'}\n" for i in range(200))
    small = "text,label\nx,rare\ny,common\n"
    task = load_task("csv", str(make(tmp_path, "text,label\n" + rows, valid=small, test=small)))
    a, b, c = (sample_train(task, 50, s).splits["train"] for s in (0, 0, 1))
    assert a == b and a != c and len(a) == 50
    assert sum(e.label == "rare" for e in a) == 5  # 10%, not whatever the first 50 rows hold
    assert [e.text for e in a] != [f"t{i}" for i in range(50)]
    assert sample_train(task, 50, 0).provenance["train_sample"] == {"examples": 50, "of": 200, "seed": 0, "stratified": True}


def test_cli_bad_row_is_one_line_and_exit_2(tmp_path):
    d = make(tmp_path, "text,label\nisa,a\ndalawa,\n")
    proc = run_cli("finetune", "--model", "micro", "--task", "csv", "--out", str(tmp_path / "out"), f"task.data_dir={d}",
                   env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ds-distil finetune: error: {d}/train.csv:3: the label ('label') is empty; "
                                                "fill it in or delete the row, or set task.skip_bad_rows=true to skip such rows and count them"]
    assert not (tmp_path / "out").exists()


def test_utf16_without_a_byte_order_mark_gets_an_encoding_hint_not_nul_bytes(tmp_path):
    """Valid UTF-8 as bytes (ASCII in UTF-16 is), so it was read as a header 't\\0e\\0x\\0t\\0' and refused as having no
    column 'text' with raw NUL bytes on the terminal."""
    d = make(tmp_path, "text,label\nisa,a\ndalawa,b\n".encode("utf-16-le"))
    line = refused(d, r"train\.csv looks like UTF-16-LE text without a byte-order mark \(every other byte is 0\); save it as 'CSV "
                      r"UTF-8' \(or JSON in UTF-8\), or name its encoding with task\.encoding=utf-16-le")
    assert "\0" not in line
    for name in ("valid.csv", "test.csv"):  # task.encoding is every file's: as the hint says, they all read
        (d / name).write_bytes(GOOD.encode("utf-16-le"))
    assert len(load_task("csv", str(d), read=ReadOptions(encoding="utf-16-le")).splits["train"]) == 2
    (d / "train.csv").write_bytes(b"text,label\nisa,a\nda\0lawa,b\n")
    refused(d, r"train\.csv:3 holds a NUL byte: it is not a text file")
