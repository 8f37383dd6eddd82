"""A transfer set for task distillation: rows without labels that a teacher labels and the student learns from by KD
alone (TinyBERT's augmented data, TextBrewer's unlabelled data; finetune/teacher.py gives them their targets).

Two sources: `task.transfer_file`, a file in the task's own format read as its training file is (data/inputs.py: the
same readers and checks; gold labels in it are kept aside, never trained on, to measure the teacher's agreement), or
`task.transfer_from_train=N`, N training rows whose labels are held back (seeded by task.seed, stratified by label for
classification; every class keeps a labelled row), the setting of a study that compares the student on the labelled
rest with and without the teacher's labels on them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example, Task
from ds_distil.data.inputs import ModelInput, read_input
from ds_distil.data.readers import ReadOptions
from ds_distil.data.sampling import random_indices, stratified_indices
from ds_distil.data.tasks import columns


@dataclasses.dataclass
class Transfer:
    """The transfer rows (label None: what the student trains on) and what is known of them."""

    examples: list[Example]
    gold: list | None  # their gold labels (a class, or tags per word), where the source has them; else None
    source: dict  # {"setting", "rows", ...}: what results.json records


def hold_back(task: Task, n: int, seed: int) -> tuple[Task, Transfer]:
    """`task.transfer_from_train=N`: the task with N of its training rows moved out, and those rows without labels."""
    train = task.splits["train"]
    if n >= len(train):
        raise UserError(f"task.transfer_from_train={n} leaves no labelled training rows (the training split has {len(train):,}"
                        f"{' after task.max_train_examples' if 'train_sample' in task.provenance else ''}); hold back fewer")
    if task.kind == "token":
        held = set(random_indices(len(train), n, seed))
    else:  # keep_one: every class keeps a labelled row, so the student alone still sees them all
        held = set(stratified_indices([e.label for e in train], n, seed, keep_one=True))
    kept = [e for i, e in enumerate(train) if i not in held]
    moved = [e for i, e in enumerate(train) if i in held]
    source = {"setting": f"task.transfer_from_train={n}", "rows": len(moved), "of": len(train), "seed": seed,
              "stratified": task.kind != "token"}
    provenance = {**task.provenance, "transfer_from_train": source}
    out = dataclasses.replace(task, splits={**task.splits, "train": kept}, provenance=provenance)
    return out, Transfer([dataclasses.replace(e, label=None) for e in moved], [e.label for e in moved], source)


def read_file(path: str | Path, task: Task, read: ReadOptions) -> Transfer:
    """`task.transfer_file`: its rows read with the task's columns (labels optional, and unknown ones refused as for
    any file of the task)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task.transfer_file={path} does not exist or is not a file; pass a file of rows in the task's format")
    text, pair, label = columns(task.name, read)
    m = ModelInput(task.kind, tuple(task.labels), text, pair, label, read.id_column, read.encoding, read.skip_bad_rows)
    try:
        examples, record = read_input(path, m)
    except UserError as e:
        raise UserError(f"task.transfer_file: {e}") from None
    gold = [e.label for e in examples] if record["labelled"] else None
    source = {"setting": f"task.transfer_file={path}", **{k: record[k] for k in ("path", "sha256", "rows", "skipped") if k in record},
              "labelled": record["labelled"]}
    return Transfer([dataclasses.replace(e, label=None) for e in examples], gold, source)
