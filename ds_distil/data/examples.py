"""What every task reader returns: a `Task` of named splits of `Example`s and its label list."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ds_distil.core.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass
class Example:
    text: str | list[str]  # a sentence, or tokens for token classification
    label: str | list[str]  # a class, or one tag per token
    text_pair: str | None = None
    group: str | None = None  # task.group_column's value: rows of one group are never split across held-out splits
    # what names it in predictions: task.id_column's value, or FILE:LINE where it was read; not part of its content
    id: str | None = field(default=None, compare=False)


@dataclass
class Task:
    name: str
    kind: str  # "sequence" | "pair" | "token"
    metric: str  # "accuracy" | "f1" (seqeval, entity level)
    splits: dict[str, list[Example]]
    labels: list[str] = field(default_factory=list)
    source: str = ""
    dataset: str = ""  # the name results and the report go by (default: the data directory's name, or the hub name)
    provenance: dict = field(default_factory=dict)  # files read (path, sha256, rows, skipped), held-out split, sample

    def __post_init__(self) -> None:
        for split in SPLITS:
            if not self.splits.get(split):
                raise UserError(f"task {self.name}: no '{split}' split in {self.source}; provide {split} data")
        seen = sorted({t for ex in self.splits["train"] for t in _as_list(ex.label)})
        if len(seen) < 2 and not self.labels:
            raise UserError(f"task {self.name}: every training example in {self.source} has the label {seen[0]!r}; "
                            "a classifier needs at least two classes: check the data and the label column")
        self.labels = self.labels or seen
        self.dataset = self.dataset or Path(self.source).name or self.name
        known = set(self.labels)
        for split in ("valid", "test"):
            unseen = sorted({t for ex in self.splits[split] for t in _as_list(ex.label)} - known)
            if unseen:
                raise UserError(f"task {self.name}: labels {unseen[:5]} in the {split} split of {self.source} never occur in "
                                "training; fix the data or merge the labels")


def _as_list(label) -> list:
    return label if isinstance(label, list) else [label]
