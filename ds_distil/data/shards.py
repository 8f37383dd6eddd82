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

Reading, holding out, selecting and shuffling the documents is data/documents.py's job; this module tokenizes,
packs and writes them.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import logging
import multiprocessing as mp
import os
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
from ds_distil.data.documents import input_files, iter_documents, select_documents, shuffle_buffer
from ds_distil.data.manifest import FORMAT, MANIFEST, SAMPLE_KEY
from ds_distil.data.tokenizer import load_tokenizer, probe, tokenizer_info
from ds_distil.schema.prepare import PrepareConfig

log = logging.getLogger(__name__)

CHUNK_DOCS = 256  # documents per tokenizer task
CHUNK_CHARS = 1 << 20  # ... and at most this much text (the tokenizer needs ~150 bytes per token)


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
    files = input_files(cfg.input) if cfg.input else []  # fail on a missing input before touching the output
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
