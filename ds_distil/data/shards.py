"""`ds-distil prepare`: raw text -> tokenized, packed, fixed-length WebDataset shards + manifest.json.

The pipeline streams; nothing is held for the whole corpus:

    documents (local files or a streamed HF dataset)
      -> split: validation documents held out (seeded, independent of --fraction)
      -> --fraction: a deterministic subset of the training documents
      -> a bounded document shuffle buffer (seeded)
      -> tokenized in worker processes, chunk by chunk, order kept
      -> packed: [CLS] d1 [SEP] d2 [SEP] ... cut every seq_len tokens; a document that does not fit
         continues in the next sample after its [CLS], so no token is wasted; only the last sample of
         a split is padded
      -> tar shards, tokenizer/, manifest.json (last) written into a staging sibling of --out that is
         swapped in whole when complete (ds_distil.core.rundir).

Document selection is by blocks of 1000 consecutive documents: in each block a seeded permutation
ranks the documents and those ranked below round(fraction * 1000) are kept. So a fraction keeps
exactly that share of every full block, the choice does not depend on how long the corpus is
(streamed datasets have no known length), and for one seed the 50% subset lies inside the 80% one.
"""

from __future__ import annotations

import collections
import datetime
import gzip
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ds_distil import __version__
from ds_distil.core.config import save, to_dict
from ds_distil.core.errors import UserError, os_errors_at
from ds_distil.core.io import atomic_write_json
from ds_distil.core.progress import Progress
from ds_distil.core.rundir import claim
from ds_distil.data.lines import bounded_lines, split_long
from ds_distil.data.manifest import FORMAT, MANIFEST, SAMPLE_KEY
from ds_distil.data.tokenizer import load_tokenizer, probe, tokenizer_info
from ds_distil.schema.prepare import PrepareConfig

log = logging.getLogger(__name__)

BLOCK = 1000
CHUNK_DOCS = 256  # documents per tokenizer task
CHUNK_CHARS = 1 << 20  # ... and at most this much text (the tokenizer needs ~150 bytes per token)
SHUFFLE_CHARS = 256 << 20  # text the document shuffle buffer may hold
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


# ----------------------------------------------------------------------------------------- input


def _input_files(paths: list[str]) -> list[Path]:
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


# ---------------------------------------------------------------------------------- tokenization

_worker_tok = None


def _init_worker(tokenizer) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one Rust thread per worker process
    _worker_tok = tokenizer


def _encode(texts: list[str]) -> list[np.ndarray]:
    encodings = _worker_tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def _chunks(items: Iterator[tuple[str, str]], n: int) -> Iterator[tuple[list[str], list[str]]]:
    """Up to n documents, and up to CHUNK_CHARS characters: what one tokenizer task holds in memory."""
    splits, texts, chars = [], [], 0
    for split, text in items:
        splits.append(split)
        texts.append(text)
        chars += len(text)
        if len(texts) == n or chars >= CHUNK_CHARS:
            yield splits, texts
            splits, texts, chars = [], [], 0
    if texts:
        yield splits, texts


def tokenize_chunks(items: Iterator[tuple[str, str]], tokenizer, workers: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Tokenize (split, text) items in chunks over `workers` processes; order is kept and at most
    2 * workers chunks are in flight, so memory does not grow with the corpus."""
    if workers <= 1:
        _init_worker(tokenizer)
        for splits, texts in _chunks(items, CHUNK_DOCS):
            yield splits, _encode(texts)
        return
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending: collections.deque = collections.deque()
        for splits, texts in _chunks(items, CHUNK_DOCS):
            pending.append((splits, pool.apply_async(_encode, (texts,))))
            if len(pending) >= 2 * workers:
                s, r = pending.popleft()
                yield s, r.get()
        while pending:
            s, r = pending.popleft()
            yield s, r.get()


# ------------------------------------------------------------------------------- packing, writing


class _HashingFile(io.RawIOBase):
    """A write-only file that keeps the sha256 and size of what went through it."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


def encode_sample(ids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, ids, allow_pickle=False)
    return buf.getvalue()


@dataclass
class ShardWriter:
    """Writes one split's samples into numbered tar shards in the staging directory."""

    staging: Path
    split: str
    samples_per_shard: int
    pad_id: int
    shards: list[dict] = field(default_factory=list)
    _tar: object = None
    _raw: object = None
    _hash: _HashingFile | None = None
    _n: int = 0
    _tokens: int = 0
    _index: int = 0  # global sample index within the split: the sample key

    def write(self, rows: np.ndarray) -> None:
        try:
            self._write(rows)
        except OSError as e:  # a full disk, a file-size limit: name the shard; the staging directory is discarded
            self._abandon()
            raise OSError(e.errno, e.strerror, str(self.staging / self._name)) from None

    def _abandon(self) -> None:
        """Let go of a shard whose write failed without writing to it again (tarfile's close at garbage collection would
        try, and print a traceback)."""
        if self._tar is not None:
            tarstream = self._tar.tarstream
            tarstream.closed = True
            if hasattr(tarstream.fileobj, "closed"):
                tarstream.fileobj.closed = True
            try:
                self._raw.close()
            except OSError:
                pass
        self._tar = None

    def _write(self, rows: np.ndarray) -> None:
        import webdataset as wds

        for row in rows:
            if self._tar is None:
                name = f"{self.split}-{len(self.shards):06d}.tar"
                self._raw = open(self.staging / name, "wb")
                self._hash = _HashingFile(self._raw)
                # fixed mtime and owner: the same input and seed give byte-identical shards
                self._tar = wds.TarWriter(self._hash, mtime=0, user="ds-distil", group="ds-distil", encoder=False)
                self._name = name
            self._tar.write({"__key__": f"{self.split}-{self._index:09d}", SAMPLE_KEY: encode_sample(row)})
            self._index += 1
            self._n += 1
            self._tokens += int(np.count_nonzero(row != self.pad_id))
            if self._n == self.samples_per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self.shards.append(
            {"name": self._name, "samples": self._n, "tokens": self._tokens, "bytes": self._hash.size, "sha256": self._hash.sha.hexdigest()}
        )
        self._tar, self._n, self._tokens = None, 0, 0

    def close(self) -> None:
        if self._tar is not None:
            try:
                self._close_shard()
            except OSError as e:
                self._abandon()
                raise OSError(e.errno, e.strerror, str(self.staging / self._name)) from None


class Packer:
    """Packs token streams into rows of seq_len: [CLS] + seq_len-1 tokens of `doc [SEP] doc [SEP] ...`."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
        self.body = seq_len - 1
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.pending = np.empty(0, dtype=np.int32)

    def add(self, docs: list[np.ndarray]) -> np.ndarray:
        """Append documents; return the full rows now available (shape [n, seq_len])."""
        sep = np.array([self.sep_id], dtype=np.int32)
        parts = [self.pending]
        for d in docs:
            parts += [d, sep]
        stream = np.concatenate(parts)
        n = len(stream) // self.body
        self.pending = stream[n * self.body :].copy()
        return self._with_cls(stream[: n * self.body].reshape(n, self.body))

    def finish(self) -> np.ndarray:
        """The last, padded row (if any tokens are left)."""
        if len(self.pending) == 0:
            return np.empty((0, self.body + 1), dtype=np.int32)
        row = np.full(self.body, self.pad_id, dtype=np.int32)
        row[: len(self.pending)] = self.pending
        self.pending = np.empty(0, dtype=np.int32)
        return self._with_cls(row[None])

    def _with_cls(self, body: np.ndarray) -> np.ndarray:
        return np.concatenate([np.full((len(body), 1), self.cls_id, dtype=np.int32), body], axis=1)


# ----------------------------------------------------------------------------------------- main


UNK_WARNING = 0.05  # mBERT leaves ~0.1% of Tagalog as [UNK]; a corpus past 5% is in another script, mis-decoded or binary


def prepare(cfg: PrepareConfig) -> dict:
    """Run the preparation; returns the manifest written to cfg.out/manifest.json."""
    if not cfg.input and not cfg.hf_dataset:
        raise UserError("nothing to prepare: pass --input FILE... or --hf-dataset NAME")
    if cfg.input and cfg.hf_dataset:
        raise UserError("pass either --input or --hf-dataset, not both")
    files = _input_files(cfg.input) if cfg.input else []  # fail on a missing input before touching the output
    tokenizer = load_tokenizer(cfg.tokenizer)
    probe(tokenizer, cfg.tokenizer)
    info = tokenizer_info(tokenizer, cfg.tokenizer)
    out = Path(cfg.out)
    inputs = [Path(p) for p in cfg.input] + files + ([Path(cfg.tokenizer)] if Path(cfg.tokenizer).exists() else [])
    with claim(out, "prepare", overwrite=cfg.overwrite, inputs=inputs) as rd:
        manifest = _prepare_into(rd.path, cfg, files, tokenizer, info)
        rd.commit()
    return manifest


def _prepare_into(staging: Path, cfg: PrepareConfig, files: list[Path], tokenizer, info: dict) -> dict:
    """Write shards, tokenizer, config and (last) manifest.json into `staging`, the claimed output."""
    workers = cfg.workers or os.cpu_count() or 1

    stats: Counter = Counter()
    writers = {s: ShardWriter(staging, s, cfg.samples_per_shard, info["pad_id"]) for s in ("train", "val")}
    packers = {s: Packer(cfg.seq_len, info["cls_id"], info["sep_id"], info["pad_id"]) for s in ("train", "val")}
    sizes = {p: p.stat().st_size for p in files}
    total_bytes = sum(sizes.values()) if files else None
    bar = Progress(total_bytes, "prepare", "B", unit_scale=True)
    log.info("prepare: tokenizer %s (vocab %d), seq_len %d, %d tokenizer processes", cfg.tokenizer, info["vocab_size"], cfg.seq_len, workers)

    docs = select_documents(iter_documents(cfg, files, stats), cfg, stats)
    docs = shuffle_buffer(docs, cfg.doc_shuffle_buffer, cfg.seed)
    tokens = unknown = 0
    for splits, encoded in tokenize_chunks(docs, tokenizer, workers):
        by_split: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for split, ids in zip(splits, encoded):
            if len(ids) == 0:
                stats["untokenizable_skipped"] += 1  # e.g. only control characters
                stats[f"{split}_documents"] -= 1
                continue
            by_split[split].append(ids)
            tokens += len(ids)
            unknown += int(np.count_nonzero(ids == info["unk_id"])) if info["unk_id"] is not None else 0
        for split, ids in by_split.items():
            if ids:
                writers[split].write(packers[split].add(ids))
        if total_bytes is not None:
            bar.update(stats["bytes_read"] - bar.n)
        else:
            bar.update(len(splits))
    bar.close()
    for split in ("train", "val"):
        writers[split].write(packers[split].finish())
        writers[split].close()
    if not writers["train"].shards:
        raise UserError(f"no training documents left in {', '.join(cfg.input) or cfg.hf_dataset} after selection; check the input and --fraction")
    if tokens and unknown / tokens > UNK_WARNING:
        log.warning("%.1f%% of the corpus's %s tokens are [UNK] (the tokenizer %s has no piece for them): a model learns little "
                    "from such shards. Is it the corpus's language and script, is the text decoded right (not binary, not another "
                    "encoding), are its words under the tokenizer's length limit (WordPiece: 100 characters)?",
                    100 * unknown / tokens, f"{tokens:,}", cfg.tokenizer)

    # The manifest last: only with it is the directory a finished output (and then it is swapped in whole).
    with os_errors_at(staging / "tokenizer"):
        tokenizer.save_pretrained(str(staging / "tokenizer"))
    save(cfg, staging / "prepare_config.yaml")
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ds_distil_version": __version__,
        "tokenizer": info,
        "seq_len": cfg.seq_len,
        "sample": {SAMPLE_KEY: f"int32[{cfg.seq_len}] token ids, numpy .npy (no pickle)", "__key__": "<split>-<index:09d>"},
        "packing": "[CLS] + seq_len-1 tokens of the stream 'doc [SEP] doc [SEP] ...'; documents continue across "
        "samples; only the last sample of a split is padded with pad_id",
        "documents": dict(sorted((k, v) for k, v in stats.items() if k != "bytes_read")),
        "source": {"hf_dataset": cfg.hf_dataset, "hf_config": cfg.hf_config, "hf_split": cfg.hf_split}
        if cfg.hf_dataset
        else {"files": [{"path": str(p), "bytes": n} for p, n in sizes.items()]},
        "splits": {
            s: {
                "samples": sum(x["samples"] for x in w.shards),
                "tokens": sum(x["tokens"] for x in w.shards),
                "bytes": sum(x["bytes"] for x in w.shards),
                "shards": w.shards,
            }
            for s, w in writers.items()
        },
        "config": to_dict(cfg),
    }
    atomic_write_json(staging / MANIFEST, manifest, ensure_ascii=False)
    return manifest
