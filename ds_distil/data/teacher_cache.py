"""A teacher cache on disk: per sample and mask copy, the masked positions, their original tokens and the teacher's
sparse targets (ds_distil/distill/sparse_targets.py), so that students distil without running the teacher.

Layout (`ds-distil teacher-cache` writes it; ds_distil/distill/cache_build.py):

    CACHE/manifest.json             format, what the cache was made from and for (below), per-file sha256
    CACHE/copy{c}/{split}-{NNNNNN}.npy   one file per corpus shard and copy: a structured array, a record per sample

The training split has `data.mask_copies` copies under the static masks (data.masking=static); the held-out split,
where it is cached, one, under validation's own fixed masks (data.stream.validation_masks), so that a run from the
cache validates against it as a live run validates against the teacher.

A record is fixed-size (RECORD_FIELDS; numpy's own .npy format, read with allow_pickle=False and memory-mapped), so the
record of sample i of a split is found from the shard sample counts alone: the stream's workers read the records of
the samples they batch, in any order. Positions are each sample's masked positions in ascending order (-1 after the
last), the order in which `masking.static_positions` lists a batch's slots.

The manifest names everything a student's run must agree with, and `check` refuses a run that differs, naming the
first difference: the corpus shards (their content hash), the masking (rule, seed, probabilities, copies), the
vocabulary the targets are over (full, or a trimmed one's content hash), the teacher (weights hash and config), the
temperature, the method (sampled or top-k), K and the proposal.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ds_distil.core.config import flatten
from ds_distil.core.errors import CorruptShardError, UserError
from ds_distil.data.manifest import read_format_json, sha256_file

FORMAT = "ds-distil-teacher-cache/1"
MANIFEST = "manifest.json"
STATIC_MASKING_RULE = ("bert-80/10/10, round(p * maskable) per sample (min 1), each sample seeded by "
                       "(seed, split, its index, copy); copy = epoch % copies")


def record_dtype(max_masked: int, k: int) -> np.dtype:
    return np.dtype([("positions", "<i2", (max_masked,)), ("targets", "<i4", (max_masked,)), ("ids", "<i4", (max_masked, k)),
                     ("weights", "<f4", (max_masked, k)), ("entropy", "<f4", (max_masked,))])


def file_name(split: str, copy: int, shard_number: int) -> str:
    return f"copy{copy}/{split}-{shard_number:06d}.npy"


def corpus_fingerprint(shards_manifest) -> str:
    """The content of the corpus shards, every split: their sha256s in order (so a moved shard directory still matches)."""
    import hashlib

    splits = sorted(shards_manifest.data["splits"])
    return hashlib.sha256("|".join(s.sha256 for name in splits for s in shards_manifest.shards(name)).encode()).hexdigest()


def data_made_for(shards_manifest, cfg) -> dict[str, Any]:
    """What of the data a cache's targets depend on: the corpus shards' content, their sequence length and the static
    masks (rule, seed, probabilities, copies). `cfg`: the run's DataConfig."""
    return {"corpus_sha256": corpus_fingerprint(shards_manifest), "seq_len": shards_manifest.seq_len,
            "masking": {"rule": STATIC_MASKING_RULE, "seed": cfg.seed, "mlm_probability": cfg.mlm_probability,
                        "mask_token_prob": cfg.mask_token_prob, "random_token_prob": cfg.random_token_prob,
                        "copies": cfg.mask_copies}}


def vocab_made_for(tokenizer: dict[str, Any], vmap=None) -> dict[str, Any]:
    """The vocabulary a cache's targets are over: the shards' full one, or a trimmed one (`ds-distil vocab`)."""
    if vmap is None:
        return {"kind": "full", "size": int(tokenizer["vocab_size"]), "sha256": tokenizer["vocab_sha256"]}
    return {"kind": "trimmed", "size": int(vmap.size), "kept_sha256": vmap.content_sha256}


REBUILD = "rebuild the cache (`ds-distil teacher-cache ... --resume` redoes what is missing or damaged)"

@dataclass
class CacheFile:
    name: str
    samples: int
    sha256: str


@dataclass
class TeacherCache:
    """A finished cache directory (its manifest read and checked for completeness). Picklable: the memory maps are
    opened on first use in the process that reads (a DataLoader worker)."""

    directory: Path
    data: dict[str, Any]
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def k(self) -> int:
        return int(self.data["k"])

    @property
    def max_masked(self) -> int:
        return int(self.data["max_masked"])

    @property
    def content_sha256(self) -> str:
        """What the cache holds, not when it was written: what it was made for and every file's sha256 (a cache rebuilt
        with the same settings has the same; a run's resume fingerprint holds it)."""
        content = {key: self.data[key] for key in ("k", "max_masked", "masking", "made_for", "splits")}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def copies(self) -> int:
        return int(self.data["masking"]["copies"])

    def files(self, split: str, copy: int) -> list[CacheFile]:
        splits = self.data["splits"]
        if split not in splits:
            raise UserError(f"teacher cache {self.directory} has no '{split}' split (it has: {', '.join(splits)}); build it "
                            "with `ds-distil teacher-cache` over that split")
        return [CacheFile(**f) for f in splits[split]["copies"][copy]]

    def __getstate__(self):
        return {"directory": self.directory, "data": self.data, "_maps": {}}

    def record(self, split: str, copy: int, index: int) -> np.void:
        """The record of sample `index` of `split`, mask copy `copy`."""
        key = (split, copy)
        if key not in self._maps:
            files = self.files(split, copy)
            starts = np.cumsum([0] + [f.samples for f in files]).tolist()
            self._maps[key] = (starts, files, {})
        starts, files, opened = self._maps[key]
        i = bisect.bisect_right(starts, index) - 1
        if not 0 <= index < starts[-1]:
            raise IndexError(f"sample {index} is outside the cache's {split} split ({starts[-1]} samples)")
        if i not in opened:
            path = self.directory / files[i].name
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            expected = record_dtype(self.max_masked, self.k)
            if arr.dtype != expected or arr.shape != (files[i].samples,):
                raise CorruptShardError(str(path), f"holds {arr.shape} records of {arr.dtype}, not ({files[i].samples},) of the "
                                                   "cache's record layout", REBUILD)
            opened[i] = arr
        return opened[i][index - starts[i]]

    def batch_targets(self, split: str, copy: int, labels, indices: list[int], max_masked: int) -> dict:
        """The targets of a batch's masked slots, in the order of `masking.static_positions` (row by row, each row's
        positions ascending), as tensors teacher_ids [B x max_masked, K], teacher_weights (0 in empty slots) and
        teacher_entropy; `labels` [B, L] the batch's, `indices` its samples' (-1: padding). A sample masked otherwise
        than the cache's record says is refused."""
        import torch

        from ds_distil.data.masking import IGNORE_INDEX

        size, k = labels.shape[0] * max_masked, self.k
        ids, weights, entropy = np.zeros((size, k), np.int64), np.zeros((size, k), np.float32), np.zeros(size, np.float32)
        slot = 0
        for row, index in enumerate(indices):
            if index < 0:  # padding: nothing masked
                continue
            positions = (labels[row] != IGNORE_INDEX).nonzero().squeeze(1).numpy()
            rec = self.record(split, copy, index)
            n = len(positions)
            if not (np.array_equal(rec["positions"][:n], positions) and (n == max_masked or rec["positions"][n] == -1)
                    and np.array_equal(rec["targets"][:n], labels[row, positions].numpy())):
                raise UserError(f"teacher cache {self.directory}: sample {index} of '{split}' (copy {copy}) was masked "
                                "otherwise than this run masks it; build the cache with this run's data settings")
            ids[slot:slot + n], weights[slot:slot + n], entropy[slot:slot + n] = rec["ids"][:n], rec["weights"][:n], rec["entropy"][:n]
            slot += n
        return {"teacher_ids": torch.from_numpy(ids), "teacher_weights": torch.from_numpy(weights),
                "teacher_entropy": torch.from_numpy(entropy)}

    def verify(self, split: str, checksums: bool = True, rank: int = 0, world_size: int = 1) -> None:
        """Every file of the split's copies exists, and this rank's share (every world_size-th file) has its recorded
        sha256 (refused naming the first that does not)."""
        files = [f for copy in range(len(self.data["splits"][split]["copies"])) for f in self.files(split, copy)]
        for i, f in enumerate(files):
            path = self.directory / f.name
            if not path.is_file():
                raise UserError(f"teacher cache file {path} listed in {MANIFEST} is missing; {REBUILD}")
            if checksums and i % world_size == rank and sha256_file(path) != f.sha256:
                raise CorruptShardError(str(path), "sha256 differs from the cache's manifest", REBUILD)

    def check(self, expected: dict[str, Any], advice: str = "build a cache for this run (`ds-distil teacher-cache`), or run "
                                                               "with the live teacher (no teacher.cache)") -> None:
        """Refuse a run whose settings differ from what the cache was made for: `expected` holds the run's values of the
        manifest's `made_for` entries (a subset is enough); the first difference is named, then `advice`."""
        made = flatten(self.data["made_for"])
        for key, value in flatten(expected).items():
            if key not in made:
                raise UserError(f"teacher cache {self.directory} does not record {key}; rebuild it with this ds-distil")
            if made[key] != value:
                raise UserError(f"teacher cache {self.directory} was made for {key} = {_short(made[key])}, but this run has "
                                f"{_short(value)}; {advice}")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def load_cache(directory: str | Path) -> TeacherCache:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise UserError(f"teacher cache {directory} does not exist; build it with `ds-distil teacher-cache --out {directory} ...`")
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}: it is not a finished `ds-distil teacher-cache` output; run it again "
                        "(with --resume it keeps the files already written)")
    data = read_format_json(path, FORMAT, "rebuild the cache", "rebuild the cache with this ds-distil")
    missing = [k for k in ("k", "max_masked", "masking", "made_for", "splits") if k not in data]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}; it is damaged or not written by `ds-distil teacher-cache`")
    return TeacherCache(directory, data)
