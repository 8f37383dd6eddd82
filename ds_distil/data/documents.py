"""The documents `ds-distil prepare` tokenizes: read from local files (.txt, .jsonl, .gz of either, directories of them)
or streamed from a Hugging Face dataset, the validation documents held out, a --fraction of the training documents
kept, and a bounded, seeded shuffle buffer. data/shards.py tokenizes, packs and writes them.

Document selection is by blocks of 1000 consecutive documents: in each block a seeded permutation ranks the documents
and those ranked below round(fraction * 1000) are kept. So a fraction keeps exactly that share of every full block, the
choice does not depend on how long the corpus is (streamed datasets have no known length), and for one seed the 50%
subset lies inside the 80% one.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ds_distil.core.errors import UserError
from ds_distil.data.lines import bounded_lines, split_long
from ds_distil.schema.prepare import PrepareConfig

log = logging.getLogger(__name__)

BLOCK = 1000
SHUFFLE_CHARS = 256 << 20  # text the document shuffle buffer may hold
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


# ----------------------------------------------------------------------------------------- input


def input_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.name.removesuffix(".gz").endswith(TEXT_SUFFIXES))
            if not found:
                raise UserError(f"input directory {p} holds no .txt/.jsonl(.gz) files; pass the files themselves")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"input {p} does not exist; pass existing .txt/.jsonl(.gz) files with --input")
    return files


def _read_lines(path: Path, cfg: PrepareConfig, stats: Counter) -> Iterator[str]:
    """Documents of one local file: one per line (.txt) or the text field of one JSON object per line.
    Lines are read at most cfg.max_line_bytes at a time (data/lines.py): a longer text line is cut
    into several documents, a longer JSON line is skipped (it cannot be parsed in pieces); both counted."""
    is_json = path.name.removesuffix(".gz").endswith((".jsonl", ".json"))
    opener = gzip.open if path.suffix == ".gz" else open
    n_docs, lineno, in_long = 0, 1, False
    try:
        with opener(path, "rb") as f:
            for raw, continues in bounded_lines(f, cfg.max_line_bytes):
                stats["bytes_read"] += len(raw)
                where, long_line = lineno, continues or in_long
                if long_line and not in_long:
                    stats["long_lines_skipped" if is_json else "long_lines_split"] += 1
                    log.warning("%s:%d is longer than max_line_bytes=%d: %s", path, lineno, cfg.max_line_bytes,
                                "skipped (a JSON line cannot be cut)" if is_json else "cut into several documents")
                in_long = continues
                if not continues:
                    lineno += 1
                if long_line and is_json:
                    continue
                try:
                    line = raw.decode("utf-8")
                    text = _json_text(line, cfg.text_field) if is_json else line
                except (UnicodeDecodeError, ValueError) as e:
                    if cfg.skip_bad_lines:
                        stats["bad_lines_skipped"] += 1
                        continue
                    what = "is not valid UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
                    raise UserError(
                        f"{path}:{where} {what}; convert the file (e.g. iconv -f latin1 -t utf-8) "
                        "or pass --skip-bad-lines to skip such lines"
                    ) from None
                text = text.strip()
                if not text:
                    stats["empty_skipped"] += 1
                    continue
                n_docs += 1
                yield text
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}; check the file (a truncated .gz?)") from None
    if n_docs == 0:
        raise UserError(f"input {path} holds no documents (empty, or only blank lines); check the path")


def _json_text(line: str, field_name: str) -> str:
    if not line.strip():
        return ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(field_name), str):
        raise ValueError(f"has no string field '{field_name}' (set --text-field)")
    return obj[field_name]


def _hf_documents(cfg: PrepareConfig, stats: Counter) -> Iterator[str]:
    """Stream a Hugging Face dataset (e.g. OSCAR's Tagalog split) without downloading it whole."""
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=cfg.hf_split, streaming=True)
        it = iter(ds)
        first = next(it, None)
    except Exception as e:  # the hub raises many types; all mean "cannot get it from here"
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(
            f"cannot stream dataset {cfg.hf_dataset} (config {cfg.hf_config}, split {cfg.hf_split}){offline}: {msg}; "
            "run where the hub is reachable (and accept the dataset's terms, e.g. `huggingface-cli login` for OSCAR), "
            "or pass local text files with --input"
        ) from None
    if first is None:
        raise UserError(f"dataset {cfg.hf_dataset} split {cfg.hf_split} is empty")
    if cfg.text_field not in first:
        raise UserError(f"dataset {cfg.hf_dataset} has no field '{cfg.text_field}' (fields: {', '.join(first)}); set --text-field")
    for ex in _chain_first(first, it):
        text = (ex.get(cfg.text_field) or "").strip()
        if not text:
            stats["empty_skipped"] += 1
            continue
        if len(text) > cfg.max_line_bytes:
            stats["long_lines_split"] += 1
            yield from split_long(text, cfg.max_line_bytes)
            continue
        yield text


def _chain_first(first, rest):
    yield first
    yield from rest


def iter_documents(cfg: PrepareConfig, files: list[Path], stats: Counter) -> Iterator[str]:
    if cfg.hf_dataset:
        yield from _hf_documents(cfg, stats)
        return
    for path in files:
        yield from _read_lines(path, cfg, stats)



# ------------------------------------------------------------------------------------- selection


class BlockSelector:
    """keep(i) for the i-th document: exactly round(fraction * BLOCK) of every BLOCK, seeded."""

    def __init__(self, fraction: float, seed: int, salt: int):
        self.quota = round(fraction * BLOCK)
        self.seed, self.salt = seed, salt
        self._block, self._ranks = -1, None

    def keep(self, i: int) -> bool:
        block, pos = divmod(i, BLOCK)
        if block != self._block:
            perm = np.random.default_rng([self.seed, self.salt, block]).permutation(BLOCK)
            self._ranks = np.empty(BLOCK, dtype=np.int64)
            self._ranks[perm] = np.arange(BLOCK)
            self._block = block
        return bool(self._ranks[pos] < self.quota)


def select_documents(docs: Iterator[str], cfg: PrepareConfig, stats: Counter) -> Iterator[tuple[str, str]]:
    """(split, text): validation chosen first, then --fraction applied to the training documents."""
    val = BlockSelector(cfg.val_fraction, cfg.seed, salt=1)
    frac = BlockSelector(cfg.fraction, cfg.seed, salt=2)
    n_train = 0
    kept = 0
    for i, text in enumerate(docs):
        if cfg.val_fraction > 0 and val.keep(i):
            split = "val"
        else:
            selected = frac.keep(n_train)
            n_train += 1
            if not selected:
                stats["train_dropped_by_fraction"] += 1
                continue
            split = "train"
        stats[f"{split}_documents"] += 1
        yield split, text
        kept += 1
        if cfg.max_docs is not None and kept >= cfg.max_docs:
            return


def shuffle_buffer(items: Iterator[tuple[str, str]], size: int, seed: int, max_chars: int = SHUFFLE_CHARS) -> Iterator:
    """Seeded buffer shuffle of (split, text) items: at most `size` documents and `max_chars` characters
    are held (the second bound only matters for corpora of huge documents, and changes nothing otherwise)."""
    if size <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buf, chars = [], 0
    for item in items:
        if len(buf) < size and chars + len(item[1]) <= max_chars:
            buf.append(item)
            chars += len(item[1])
            continue
        if not buf:
            yield item
            continue
        k = rng.randrange(len(buf))
        buf[k], item = item, buf[k]
        chars += len(buf[k][1]) - len(item[1])
        yield item
        while chars > max_chars and len(buf) > 1:  # a large document came in: let out random others
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            out = buf.pop()
            chars -= len(out[1])
            yield out
    rng.shuffle(buf)
    yield from buf
