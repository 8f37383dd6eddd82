"""Exact duplicates and leakage between splits, on normalised text.

Two examples are copies when their text (and, for pairs, their second text) are equal after
normalising: Unicode NFKC, case folded, runs of white space made one space, ends stripped. Token
tasks compare their words joined by spaces. Nothing fuzzier: "word for word, up to case and spacing".

`report(task)` counts, per split, the rows, the distinct texts, the rows that repeat an earlier one
and the texts that carry more than one label; across splits, the validation and test rows whose text
also occurs in training (leakage: a held-out score that rewards memorising) and the test rows whose
text occurs in validation. `warnings(report)` says so in one line per leak, and in one line per split
whose rows are more than REPEAT_WARN_SHARE repeats (training: with the optimizer steps they take). `drop(task)`
(`task.dedup=drop`) keeps one copy of each text in training and in validation, and removes from training every
text that occurs in validation or test; test is left as it is, so that its scores stay comparable with other
runs on the same files.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter, defaultdict

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example, Task
from ds_distil.schema.finetune import REPEAT_WARN_SHARE

NORMALISATION = "Unicode NFKC, case folded, white space collapsed"
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(example: Example) -> tuple[str, ...]:
    """What makes two examples copies: the normalised text (and second text of a pair)."""
    text = " ".join(example.text) if isinstance(example.text, list) else example.text
    return (normalise(text),) if example.text_pair is None else (normalise(text), normalise(example.text_pair))


def _label(example: Example):
    return tuple(example.label) if isinstance(example.label, list) else example.label


def _within(examples: list[Example]) -> dict:
    keys = [text_key(e) for e in examples]
    labels: dict[tuple, set] = defaultdict(set)
    for k, e in zip(keys, examples):
        labels[k].add(_label(e))
    distinct = len(labels)
    copies = Counter(keys)
    return {"rows": len(examples), "distinct": distinct, "duplicate_rows": len(examples) - distinct,
            "duplicate_share": (len(examples) - distinct) / max(len(examples), 1),
            "most_copies": max(copies.values(), default=0),
            "conflicting_labels": sum(len(v) > 1 for v in labels.values())}


def _overlap(held: list[Example], seen: set, key=text_key) -> dict:
    keys = [key(e) for e in held]
    rows = sum(k in seen for k in keys)
    return {"rows": rows, "share": rows / max(len(held), 1), "distinct": len({k for k in keys if k in seen})}


PAIRS = (("valid_in_train", "valid", "train"), ("test_in_train", "test", "train"), ("test_in_valid", "test", "valid"))


def _across(task: Task, key) -> dict:
    seen = {s: {key(e) for e in task.splits[s]} - {None} for s in ("train", "valid")}
    return {name: _overlap(task.splits[held], seen[other], key) for name, held, other in PAIRS}


def report(task: Task) -> dict:
    """Duplicates within each split and texts shared across splits (see the module's docstring); with a group
    column (task.group_column), the rows whose group also occurs in another split."""
    out = {"normalisation": NORMALISATION,
           "splits": {s: _within(task.splits[s]) for s in ("train", "valid", "test")},
           "across": _across(task, text_key)}
    if any(e.group is not None for e in task.splits["train"]):
        out["groups_across"] = _across(task, lambda e: e.group)
    if "dedup_dropped" in task.provenance:
        out["dropped"] = task.provenance["dedup_dropped"]
    return out


NAMES = {"train": "training", "valid": "validation", "test": "test"}


DEDUP = ("task.dedup=drop keeps one copy of each text in training and in validation, and drops the training rows whose "
         "text is in validation or test (test stays as it is)")


def repeat_warnings(rep: dict, steps: int | None = None) -> list[str]:
    """One line per split whose rows are more than REPEAT_WARN_SHARE repeats of an earlier row; for training, with the
    share of the run's `steps` (optimizer steps) they take."""
    out = []
    for split, v in rep["splits"].items():
        if v["duplicate_share"] <= REPEAT_WARN_SHARE:
            continue
        head = (f"{v['duplicate_rows']:,} of the {v['rows']:,} {NAMES[split]} rows ({v['duplicate_share']:.1%}) repeat an earlier "
                f"row ({v['distinct']:,} distinct texts, one of them {v['most_copies']:,} times; {NORMALISATION})")
        if split == "train":
            cost = f"about {round(steps * v['duplicate_share']):,} of the run's {steps:,} optimizer steps" if steps else "that share of the steps"
            out.append(f"{head}: {cost} go to texts the model has seen already, and the most copied texts weigh most in "
                       f"what it learns; {DEDUP}")
        elif split == "valid":
            out.append(f"{head}: the validation score counts a text once per copy, and what is chosen on validation (train.keep=best, "
                       f"the bag of words' model) leans to the most copied texts; {DEDUP}")
        else:
            out.append(f"{head}: the test score counts a text once per copy; task.dedup=drop leaves test as it is, so that its scores "
                       "compare with other runs on the same file: to score each text once, remove the copies from the test file")
    return out


def warnings(rep: dict, steps: int | None = None) -> list[str]:
    """One line per held-out split that shares texts (or groups) with training, or test with validation; one line per
    split of more than REPEAT_WARN_SHARE repeats (repeat_warnings)."""
    out = repeat_warnings(rep, steps)
    for name, held, other in PAIRS:
        o = rep["across"][name]
        n = rep["splits"][held]["rows"]
        if o["rows"]:
            why = (f"the {NAMES[held]} score rewards memorising them and overstates what the model does on new text; "
                   "task.dedup=drop removes them from training" if other == "train" else
                   "the validation score is no independent estimate of the test score, and what is chosen on validation "
                   "(the bag of words' model) was chosen on them")
            out.append(f"{o['rows']:,} of the {n:,} {NAMES[held]} rows ({o['share']:.1%}; {o['distinct']:,} distinct texts) also occur in "
                       f"{NAMES[other]} ({NORMALISATION}): {why}")
        g = rep.get("groups_across", {}).get(name)
        if g and g["rows"]:
            out.append(f"{g['rows']:,} of the {n:,} {NAMES[held]} rows ({g['share']:.1%}) belong to {g['distinct']:,} groups "
                       f"(task.group_column) that also occur in {NAMES[other]}: split the files by group, or give only a training "
                       "file and let task.valid_fraction / task.test_fraction split it by group")
    return out


def _first_copies(examples: list[Example], exclude: set = frozenset()) -> tuple[list[Example], int, int]:
    """(the first copy of each text not in `exclude`, repeats dropped, rows dropped for `exclude`)."""
    seen, kept, repeats, excluded = set(), [], 0, 0
    for e in examples:
        k = text_key(e)
        if k in exclude:
            excluded += 1
        elif k in seen:
            repeats += 1
        else:
            seen.add(k)
            kept.append(e)
    return kept, repeats, excluded


def drop(task: Task) -> Task:
    """`task.dedup=drop`: training keeps the first copy of each text and none of the texts in validation or test;
    validation keeps the first copy of each text; test stays as it is."""
    held = {text_key(e) for s in ("valid", "test") for e in task.splits[s]}
    train, repeats, leaked = _first_copies(task.splits["train"], held)
    if not train:  # said here: Task would only see an empty training split
        raise UserError(f"task.dedup=drop removed every one of the {len(task.splits['train']):,} training rows of {task.source or task.name} "
                        f"({leaked:,} also in validation or test, {repeats:,} repeats): the training file holds the held-out texts; "
                        "give training data of its own, or set task.dedup=keep")
    valid, valid_repeats, _ = _first_copies(task.splits["valid"])
    dropped = {"train_duplicates": repeats, "train_in_valid_or_test": leaked, "train_rows_left": len(train),
               "valid_duplicates": valid_repeats, "valid_rows_left": len(valid), "test": "kept as it is"}
    return dataclasses.replace(task, splits={**task.splits, "train": train, "valid": valid},
                               provenance={**task.provenance, "dedup_dropped": dropped})
