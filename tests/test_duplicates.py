"""Exact duplicates and leakage (data/duplicates.py), and held-out splits that keep every copy of a text, and
every row of a group, on one side (data/sampling.py through the csv reader)."""

from __future__ import annotations

from collections import Counter

import pytest

from ds_distil.data import duplicates
from ds_distil.data.examples import Example, Task
from ds_distil.data.readers import ReadOptions
from ds_distil.data.tasks import load_task


def test_copies_within_and_across_splits_are_counted_and_warned():
    train = [Example("Ang ganda  NITO", "pos"), Example("ang ganda nito", "pos"), Example("ang ganda nito ", "neg"),
             Example("pangit", "neg"), Example("sakto lang", "pos"), Example("Sakto\tlang", "pos")]
    valid = [Example("PANGIT", "neg"), Example("bago ito", "pos"), Example("iba pa", "neg"), Example("iba pa", "neg")]
    test = [Example("sakto lang", "pos"), Example("iba  pa", "neg"), Example("wala", "neg")]
    task = Task("csv", "sequence", "accuracy", {"train": train, "valid": valid, "test": test})
    rep = duplicates.report(task)
    # train: 6 rows, 3 distinct texts (case, inner and outer spaces, tabs ignored); one of them with two labels
    assert rep["splits"]["train"] == {"rows": 6, "distinct": 3, "duplicate_rows": 3, "duplicate_share": 0.5, "most_copies": 3,
                                      "conflicting_labels": 1}
    assert rep["splits"]["valid"]["duplicate_rows"] == 1 and rep["splits"]["test"]["duplicate_rows"] == 0
    assert rep["across"]["valid_in_train"] == {"rows": 1, "share": 0.25, "distinct": 1}
    assert rep["across"]["test_in_train"] == {"rows": 1, "share": pytest.approx(1 / 3), "distinct": 1}
    assert rep["across"]["test_in_valid"]["rows"] == 1
    warned = duplicates.warnings(rep, steps=40)
    # training and validation are more than 20% repeats: a warning each, training's with the steps the repeats take
    assert warned[0].startswith("3 of the 6 training rows (50.0%) repeat an earlier row (3 distinct texts, one of them 3 times; ")
    assert "about 20 of the run's 40 optimizer steps go to texts the model has seen already" in warned[0]
    assert warned[1].startswith("1 of the 4 validation rows (25.0%) repeat an earlier row") and "counts a text once per copy" in warned[1]
    assert all("task.dedup=drop keeps one copy of each text in training and in validation" in w for w in warned[:2])
    assert len(warned) == 5 and warned[2].startswith("1 of the 4 validation rows (25.0%; 1 distinct texts) also occur in training")
    assert "task.dedup=drop" in warned[2]

    dropped = duplicates.drop(task)  # training: one copy per text, none of the held-out texts; validation: one copy; test untouched
    assert [e.text for e in dropped.splits["train"]] == ["Ang ganda  NITO"]
    assert dropped.splits["valid"] == valid[:3] and dropped.splits["test"] == test
    assert dropped.provenance["dedup_dropped"] == {"train_duplicates": 2, "train_in_valid_or_test": 3, "train_rows_left": 1,
                                                   "valid_duplicates": 1, "valid_rows_left": 3, "test": "kept as it is"}
    after = duplicates.report(dropped)
    assert after["across"]["valid_in_train"]["rows"] == after["across"]["test_in_train"]["rows"] == 0
    assert after["splits"]["valid"]["duplicate_rows"] == 0
    assert [w.split(" also occur in ")[1].split(" ")[0] for w in duplicates.warnings(after)] == ["validation"]


def test_pairs_are_copies_only_when_both_texts_match():
    ex = [Example("a", "x", "b"), Example("A", "x", "b "), Example("a", "y", "c")]
    task = Task("nli", "pair", "accuracy", {"train": ex, "valid": ex[:1], "test": ex[2:]})
    rep = duplicates.report(task)
    assert rep["splits"]["train"]["distinct"] == 2 and rep["across"]["test_in_train"]["rows"] == 1


def _write(d, name, rows, header="text,label"):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))


def test_valid_fraction_keeps_every_copy_of_a_text_on_one_side(tmp_path):
    # 40 texts, text i repeated 1 + i % 7 times (varying case), 'rare' for every 4th text: 157 rows
    rows = [(f"Text {i}" if k % 2 else f"text   {i}", "rare" if i % 4 == 0 else "common") for i in range(40) for k in range(1 + i % 7)]
    d = tmp_path / "tweets"
    _write(d, "train.csv", rows)
    _write(d, "test.csv", [("x", "rare"), ("y", "common")])

    def split(seed):
        task = load_task("csv", str(d), read=ReadOptions(valid_fraction=0.2, seed=seed))
        keys = {s: {duplicates.text_key(e) for e in task.splits[s]} for s in ("train", "valid")}
        assert not keys["train"] & keys["valid"]  # no copy of a held-out text stayed in training
        assert len(task.splits["train"]) + len(task.splits["valid"]) == len(rows)
        assert task.provenance["valid_from_train"]["grouped_by"] == ["text"]
        return task

    task = split(0)
    held = len(task.splits["valid"])
    assert abs(held - 0.2 * len(rows)) <= 7  # whole groups: within one group of the asked share
    labels = Counter(e.label for e in task.splits["valid"])
    assert labels["rare"] >= 1 and labels["common"] >= 1  # stratified by the groups' labels
    assert duplicates.report(task)["across"]["valid_in_train"]["rows"] == 0
    assert split(0).splits["valid"] == task.splits["valid"] and split(1).splits["valid"] != task.splits["valid"]


def _pairs_dir(tmp_path, n_docs=30):
    """NLI-like rows: each document's premise appears in 2-5 rows with different hypotheses; 'doc' names it."""
    rows = []
    for doc in range(n_docs):
        for h in range(2 + doc % 4):
            rows.append((f"premise {doc}", f"hypothesis {doc}-{h}", "entailment" if h % 2 else "contradiction", f"d{doc}"))
    d = tmp_path / "nli"
    _write(d, "train.csv", rows, header="premise,hypothesis,label,doc")
    return d, rows


def test_test_fraction_and_group_column_never_split_a_group(tmp_path):
    d, rows = _pairs_dir(tmp_path)
    opts = dict(text_column="premise", text_pair_column="hypothesis", group_column="doc", valid_fraction=0.15, test_fraction=0.2)
    task = load_task("csv", str(d), read=ReadOptions(**opts, seed=3))
    groups = {s: {e.group for e in task.splits[s]} for s in ("train", "valid", "test")}
    assert not groups["train"] & groups["valid"] and not groups["train"] & groups["test"] and not groups["valid"] & groups["test"]
    assert sum(len(v) for v in task.splits.values()) == len(rows)
    for split, share in (("test", 0.2), ("valid", 0.15)):
        held = task.provenance[f"{split}_from_train"]
        assert held["fraction"] == share and held["seed"] == 3 and held["grouped_by"] == ["text", "group_column 'doc'"]
        assert abs(len(task.splits[split]) - share * len(rows)) <= 5  # whole documents of 2-5 rows
    rep = duplicates.report(task)
    assert all(o["rows"] == 0 for o in rep["groups_across"].values())
    again = load_task("csv", str(d), read=ReadOptions(**opts, seed=3))
    assert again.splits == task.splits and load_task("csv", str(d), read=ReadOptions(**opts, seed=4)).splits["test"] != task.splits["test"]
    # split by row instead, the same documents land on both sides: what the group column prevents
    by_row = load_task("csv", str(d), read=ReadOptions(**{**opts, "group_column": None}, seed=3))
    assert {e.text_pair for e in by_row.splits["test"]}.isdisjoint(e.text_pair for e in by_row.splits["train"])
    assert {e.text for e in by_row.splits["test"]} & {e.text for e in by_row.splits["train"]}


def test_groups_shared_by_given_files_are_warned_and_missing_test_is_explained(tmp_path):
    from ds_distil.core.errors import UserError

    d, rows = _pairs_dir(tmp_path, 10)
    _write(d, "test.csv", [("premise 0", "another", "entailment", "d0"), ("new premise", "new", "contradiction", "d99")],
           header="premise,hypothesis,label,doc")
    task = load_task("csv", str(d), read=ReadOptions(text_column="premise", text_pair_column="hypothesis", group_column="doc",
                                                     valid_fraction=0.2))
    rep = duplicates.report(task)
    assert rep["groups_across"]["test_in_train"] == {"rows": 1, "share": 0.5, "distinct": 1}
    assert any("belong to 1 groups (task.group_column) that also occur in training" in w for w in duplicates.warnings(rep))
    with pytest.raises(UserError, match=r"task.test_fraction=0.1 but .*test.csv exists"):
        load_task("csv", str(d), read=ReadOptions(text_column="premise", text_pair_column="hypothesis", valid_fraction=0.1, test_fraction=0.1))
    (d / "test.csv").unlink()
    with pytest.raises(UserError, match=r"no test file in .*; add one, or set task.test_fraction=0.1"):
        load_task("csv", str(d), read=ReadOptions(text_column="premise", text_pair_column="hypothesis", valid_fraction=0.1))
    with pytest.raises(UserError, match=r"train.csv:2: .*'doc'.* is empty"):
        _write(d, "train.csv", [("p", "h", "entailment", ""), ("q", "h", "contradiction", "x")], header="premise,hypothesis,label,doc")
        load_task("csv", str(d), read=ReadOptions(text_column="premise", text_pair_column="hypothesis", group_column="doc",
                                                  valid_fraction=0.1, test_fraction=0.1))


def test_fractions_must_leave_training_rows():
    from ds_distil.core.config import ConfigError, load
    from ds_distil.schema.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="valid_fraction \\+ test_fraction must leave rows for training"):
        load(FinetuneConfig, [], ["task.valid_fraction=0.5", "task.test_fraction=0.5"])
    assert load(FinetuneConfig, [], ["task.test_fraction=0.2", "task.group_column=doc"]).task.test_fraction == 0.2


def test_a_held_out_split_that_no_whole_group_fits_is_refused_in_one_line(tmp_path):
    from ds_distil.core.errors import UserError

    d = tmp_path / "few"
    _write(d, "train.csv", [("same a", "x")] * 10 + [("same b", "y")] * 10 + [("other", "x")] * 3 + [("more", "y")] * 3)
    _write(d, "test.csv", [("t", "x"), ("u", "y")])
    with pytest.raises(UserError, match=r"train.csv: task.valid_fraction=0.05 held out no rows: .* raise task.valid_fraction"):
        load_task("csv", str(d), read=ReadOptions(valid_fraction=0.05))
    assert len(load_task("csv", str(d), read=ReadOptions(valid_fraction=0.3)).splits["valid"]) == 6  # 4 rows a class: 3 copies fit


def test_dedup_drop_removing_every_training_row_says_so(tmp_path):
    """task.dedup=drop on a training file that holds only the test texts: once "no 'train' split in DIR" (train.csv had
    80 rows)."""
    import pytest

    from ds_distil.core.errors import UserError

    rows = [(f"text {i}", "a" if i % 2 else "b") for i in range(6)]
    d = tmp_path / "leaky"
    _write(d, "train.csv", rows + rows[:2])
    _write(d, "valid.csv", rows[:3])
    _write(d, "test.csv", rows[3:])
    task = load_task("csv", str(d))
    with pytest.raises(UserError, match=r"task.dedup=drop removed every one of the 8 training rows of .*leaky \(8 also in validation "
                                        r"or test, 0 repeats\): the training file holds the held-out texts; .*task.dedup=keep"):
        duplicates.drop(task)
