"""Downstream task readers: Hatespeech Filipino (CSV), NER (IOB2), POS (CoNLL-U), NLI pairs, users' files.

Every reader returns a `Task`: named splits of examples plus the label list (from the training
split, in sorted order, so label ids are stable). Local files are read by us (line-precise
errors; classification files through `data/readers.py`, which checks every row); hub datasets
through `datasets`. Labels in valid/test that training never saw, a missing split, a missing
column, a training set of one class and a broken IOB2 sequence are refused with one line naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write
from ds_distil.data.examples import SPLITS, Example, Task
from ds_distil.data.readers import ReadOptions
from ds_distil.schema.finetune import TASK_NAMES

SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "validation", "dev"), "test": ("test",)}


def default_data_dir() -> Path:
    return Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


# --------------------------------------------------------------------------------- file readers


def _split_files(directory: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_ALIASES.items():
        for name in names:
            for suffix in suffixes:
                if (directory / f"{name}{suffix}").is_file():
                    found.setdefault(split, directory / f"{name}{suffix}")
    return found


def read_table(path: Path) -> list[dict]:
    """Rows of a .csv (header line) or .jsonl file."""
    try:
        if path.suffix == ".jsonl":
            rows = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
            return rows
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 ({e}); convert it first") from None


def table_task(name: str, directory: Path, read: ReadOptions) -> Task:
    """A classification task from DIR/{train,valid|validation|dev,test}.{csv,tsv,jsonl,json}, every row checked."""
    from ds_distil.data.readers import read_classification

    return read_classification(name, directory, read)


def _provenance(*paths: Path) -> dict:
    from ds_distil.data.readers import file_record

    return {"files": {p.name: file_record(p) for p in paths}}


def read_iob2(path: Path) -> list[Example]:
    """Sentences of an IOB2 file: `index token tag ...` (tab-separated) or `token tag` per line, blank line between."""
    sentences, tokens, tags, start = [], [], [], [0]

    def flush(lineno):
        if tokens:
            check_iob2(tags, f"{path}:{lineno}")
            sentences.append(Example(list(tokens), list(tags), id=f"{path.name}:{start[0]}"))
            tokens.clear()
            tags.clear()

    lines = _read_utf8(path).splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            flush(lineno)
            continue
        if line.startswith("#"):
            continue
        if not tokens:
            start[0] = lineno
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) >= 3 and cols[0].isdigit():
            token, tag = cols[1], cols[2]
        elif len(cols) >= 2:
            token, tag = cols[0], cols[-1]
        else:
            raise UserError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
        tokens.append(token)
        tags.append(tag)
    flush(len(lines))
    return sentences


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line} is not valid UTF-8; convert the file (e.g. iconv -f latin1 -t utf-8 {path.name})") from None


def check_iob2(tags: list[str], where: str) -> None:
    """Refuse an I- tag that does not continue a B-/I- of the same type."""
    prev = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and not tag.startswith(("B-", "I-")):
            raise UserError(f"{where}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            raise UserError(f"{where}: broken IOB2 sequence: {tag!r} at token {i + 1} follows {prev!r}; an I- tag must continue "
                            "a B-/I- of the same type")
        prev = tag


def read_conllu_upos(path: Path) -> list[Example]:
    """Sentences of a CoNLL-U file as (forms, UPOS tags); multiword-token ranges and empty nodes skipped."""
    sentences, forms, tags, start = [], [], [], 0
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            if forms:
                sentences.append(Example(forms, tags, id=f"{path.name}:{start}"))
                forms, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise UserError(f"{path}:{lineno}: a CoNLL-U token line has 10 tab-separated columns, this has {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue
        if not forms:
            start = lineno
        forms.append(cols[1])
        tags.append(cols[3])
    if forms:
        sentences.append(Example(forms, tags, id=f"{path.name}:{start}"))
    return sentences


def carve(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off a seeded `fraction` of `examples`: (rest, carved)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = max(1, round(fraction * len(examples)))
    carved = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in carved], [e for i, e in enumerate(examples) if i in carved]


# ----------------------------------------------------------------------------------- the tasks


# the columns of the named table tasks (text, second text, label); the csv task's come from the config
FIXED_COLUMNS = {"hatespeech": ("text", None, "label"), "nli": ("premise", "hypothesis", "label")}
TOKEN_COLUMNS = ("tokens", None, "tags")  # a token task's words and tags as JSON fields (ds-distil predict's input)


def columns(name: str, read: ReadOptions) -> tuple[str, str | None, str]:
    """(text, second text, label) columns task `name` reads its rows from (token tasks: their JSON fields)."""
    if name in ("pos", "ner"):
        return TOKEN_COLUMNS
    return FIXED_COLUMNS.get(name, (read.text_column, read.text_pair_column, read.label_column))


def _fixed(name: str, read: ReadOptions) -> ReadOptions:
    text, pair, label = FIXED_COLUMNS[name]
    return dataclasses.replace(read, text_column=text, label_column=label, text_pair_column=pair)


def hatespeech(data_dir: Path | None = None, hub: bool = False, read: ReadOptions = ReadOptions()) -> Task:
    if hub:
        return _hub_classification("hatespeech", "hate_speech_filipino", None, "text", "label")
    read = _fixed("hatespeech", read)
    return table_task("hatespeech", Path(data_dir or default_data_dir() / "hatespeech"), read)


def pos(data_dir: Path | None = None, seed: int = 0) -> Task:
    """UD Tagalog UPOS. Local: NewsCrawl dev is the training data (10% of it, seeded, held out for
    validation), NewsCrawl test the test set: UD Tagalog has no larger training treebank."""
    d = Path(data_dir or default_data_dir() / "ud_pos")
    train_file, test_file = d / "tl_newscrawl-ud-dev.conllu", d / "tl_newscrawl-ud-test.conllu"
    files = _split_files(d, (".conllu",))
    if files.keys() >= {"train", "test"}:
        splits = {s: read_conllu_upos(p) for s, p in files.items()}
    elif train_file.is_file() and test_file.is_file():
        splits = {"test": read_conllu_upos(test_file)}
        splits["train"], splits["valid"] = carve(read_conllu_upos(train_file), 0.1, seed)
    else:
        raise UserError(f"task pos: {d} has neither train/test .conllu files nor the UD Tagalog NewsCrawl dev/test files")
    if "valid" not in splits:
        splits["train"], splits["valid"] = carve(splits["train"], 0.1, seed)
    read = files.values() if files.keys() >= {"train", "test"} else (train_file, test_file)
    return Task("pos", "token", "accuracy", splits, source=str(d), provenance=_provenance(*read))


def ner(data_dir: Path | None = None, hub: bool = False, seed: int = 0) -> Task:
    """NER in IOB2, entity-level F1. Hub: TLUnified-NER. Local: DIR/{train,valid,test}.iob2, or
    (like ../shared/data/uner_ner, evaluation-sized) all *.iob2 files pooled and split 80/10/10 by seed."""
    if hub:
        return _hub_tokens("ner", "ljvmiranda921/tlunified-ner", "tokens", "ner_tags")
    d = Path(data_dir or default_data_dir() / "uner_ner")
    files = _split_files(d, (".iob2", ".conll", ".txt"))
    if files.keys() >= {"train", "test"}:
        read = list(files.values())
        splits = {s: read_iob2(p) for s, p in files.items()}
        if "valid" not in splits:
            splits["train"], splits["valid"] = carve(splits["train"], 0.1, seed)
    else:
        read = sorted(d.glob("*.iob2"))
        pooled = [ex for p in read for ex in read_iob2(p)]
        if not pooled:
            raise UserError(f"task ner: no .iob2 files in {d}; set task.data_dir=DIR to a directory with train/valid/test.iob2")
        rest, test = carve(pooled, 0.1, seed)
        train, valid = carve(rest, 1 / 9, seed + 1)
        splits = {"train": train, "valid": valid, "test": test}
    return Task("ner", "token", "f1", splits, source=str(d), provenance=_provenance(*read))


def nli(data_dir: Path | None = None, hub: bool = False, read: ReadOptions = ReadOptions()) -> Task:
    """Sentence-pair classification (entailment / contradiction). Hub: NewsPH-NLI. Local: a
    directory of train/valid/test CSVs with premise, hypothesis, label (`ds-distil tasks build-nli` makes one)."""
    if hub:
        return _hub_classification("nli", "jcblaisecruz02/newsph-nli", None, "premise", "label", text_pair="hypothesis")
    if data_dir is None:
        raise UserError("task nli: set task.data_dir=DIR to a directory with train/valid/test CSVs (make them with `ds-distil tasks build-nli`), or task.hub=true")
    return table_task("nli", Path(data_dir), _fixed("nli", read))


def _hub_load(name: str, config: str | None):
    try:
        import datasets

        return datasets.load_dataset(name, config)
    except Exception as e:
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise UserError(f"cannot load dataset {name} from the hub{offline}: {str(e).splitlines()[0][:200]}; "
                        "use local files with task.data_dir=DIR") from None


def _hub_splits(ds) -> dict:
    out = {}
    for split, names in SPLIT_ALIASES.items():
        for n in names:
            if n in ds:
                out[split] = ds[n]
                break
    return out


def _label_names(dataset, column):
    feature = dataset.features[column]
    feature = getattr(feature, "feature", feature)
    return getattr(feature, "names", None)


def _hub_classification(task: str, name: str, config: str | None, text: str, label: str, text_pair: str | None = None) -> Task:
    ds = _hub_load(name, config)
    splits = {}
    for split, d in _hub_splits(ds).items():
        names = _label_names(d, label)
        splits[split] = [Example(r[text], names[r[label]] if names else str(r[label]), r[text_pair] if text_pair else None,
                                 id=f"{name}/{split}:{i}") for i, r in enumerate(d)]
    return Task(task, "pair" if text_pair else "sequence", "accuracy", splits, source=name, dataset=name)


def _hub_tokens(task: str, name: str, tokens: str, tags: str) -> Task:
    ds = _hub_load(name, None)
    splits = {}
    for split, d in _hub_splits(ds).items():
        names = _label_names(d, tags)
        splits[split] = [Example(list(r[tokens]), [names[t] if names else str(t) for t in r[tags]], id=f"{name}/{split}:{i}")
                         for i, r in enumerate(d)]
    return Task(task, "token", "f1", splits, source=name, dataset=name)


TASKS = TASK_NAMES


def load_task(name: str, data_dir: str | None = None, hub: bool = False, seed: int = 0, read: ReadOptions = ReadOptions(),
              dataset: str | None = None) -> Task:
    """`seed` chooses the held-out splits of pos/ner; `read` says how users' classification files are
    read; `dataset` names the data in results and the report (default: the directory's name)."""
    d = Path(data_dir).resolve() if data_dir else None  # resolved: `.` is named after the directory
    if name == "hatespeech":
        task = hatespeech(d, hub, read)
    elif name == "pos":
        task = pos(d, seed)
    elif name == "ner":
        task = ner(d, hub, seed)
    elif name == "nli":
        task = nli(d, hub, read)
    elif name == "csv":
        if d is None:
            raise UserError("task csv: set task.data_dir=DIR to a directory with train, valid (or dev) and test files (.csv, .tsv, .jsonl, .json)")
        task = table_task("csv", d, read)
    else:
        raise UserError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    if dataset:
        task.dataset = dataset
    return task


# ------------------------------------------------------------------------- NewsPH-NLI-style builder


def _sentences(article: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", article.strip())
    return [p.strip() for p in parts if len(p.split()) >= 3]


def read_articles(path: Path, column: str = "article") -> list[str]:
    """The `column` of every row of a CSV (or JSONL) of news articles."""
    if not path.is_file():
        raise UserError(f"articles file {path} does not exist")
    rows = read_table(path)
    if rows and column not in rows[0]:
        raise UserError(f"{path} has no column '{column}' (columns: {', '.join(rows[0])}); set --column")
    return [r[column] for r in rows]


def build_nli(articles: Iterable[str], seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1,
              max_pairs_per_article: int = 2) -> dict[str, list[dict]]:
    """NewsPH-NLI-style pairs (Cruz et al. 2021): a premise is the first sentences of an article;
    its entailment hypothesis is a later sentence of the same article, its contradiction hypothesis
    a sentence of another article. Balanced (one of each per premise), no pair drawn twice, and
    split by article (no article in two splits). Deterministic for a seed."""
    rng = random.Random(seed)
    unique = dict.fromkeys(" ".join(a.split()) for a in articles)  # the same article twice would leak across splits
    docs = [s for s in (_sentences(a) for a in unique) if len(s) >= 3]
    if len(docs) < 10:
        raise UserError(f"build-nli needs at least 10 articles of 3+ sentences, got {len(docs)}")
    order = list(range(len(docs)))
    rng.shuffle(order)
    # every split needs 2+ articles: a contradiction hypothesis comes from another article of the same split
    n_test, n_valid = max(2, round(test_fraction * len(docs))), max(2, round(valid_fraction * len(docs)))
    if len(docs) - n_test - n_valid < 2:
        raise UserError(f"build-nli: {len(docs)} articles of 3+ sentences leave fewer than 2 for training after {n_test} test "
                        f"and {n_valid} validation articles; give more articles")
    split_of = {i: ("test" if k < n_test else "valid" if k < n_test + n_valid else "train") for k, i in enumerate(order)}
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[tuple[str, str]] = set()
    pools = {s: [j for j in order if split_of[j] == s] for s in SPLITS}
    for i in order:
        split = split_of[i]
        pool = [j for j in pools[split] if j != i]
        for _ in range(max_pairs_per_article):
            cut = rng.randrange(1, len(docs[i]) - 1)
            premise = " ".join(docs[i][:cut])
            entail = rng.choice(docs[i][cut:])
            other = docs[rng.choice(pool)]
            contra = rng.choice(other)
            if (premise, entail) in seen or (premise, contra) in seen:
                continue  # drawn before: skip both, so the set stays balanced
            seen.update({(premise, entail), (premise, contra)})
            out[split].append({"premise": premise, "hypothesis": entail, "label": "entailment"})
            out[split].append({"premise": premise, "hypothesis": contra, "label": "contradiction"})
    return out


def write_nli(pairs: dict[str, list[dict]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs.items():
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=["premise", "hypothesis", "label"])
        w.writeheader()
        w.writerows(rows)
        atomic_write(out_dir / f"{split}.csv", text.getvalue())
