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
last), the order in which `masking.static_positions` lists a batch's slots. A slot's weights are a distribution (each in
[0, 1], summing to 1) for top-k targets and for draws at T; draws from a flatter proposal carry importance weights
(finite, >= 0).

Nothing is trusted because its sha256 matches the manifest beside it: the manifest is checked against its schema
(`CacheManifest`: types, ranges, file names inside the cache) before any file is opened, a file's .npy header and size
before it is memory-mapped, and the targets a batch reads (ids, weights, entropies) where they are read.

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
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ds_distil.core.checked import Checked, Count, InsideName, NonEmpty, Positive, PositiveFloat, Sha256, read_checked
from ds_distil.core.config import flatten
from ds_distil.core.errors import CorruptShardError, UserError
from ds_distil.data.manifest import sha256_file
from ds_distil.schema.cache import MAX_K

FORMAT = "ds-distil-teacher-cache/1"
MANIFEST = "manifest.json"
STATIC_MASKING_RULE = ("bert-80/10/10, round(p * maskable) per sample (min 1), each sample seeded by "
                       "(seed, split, its index, copy); copy = epoch % copies")


MAX_MASKED = int(np.iinfo(np.int16).max)  # positions are int16


def record_dtype(max_masked: int, k: int) -> np.dtype:
    return np.dtype([("positions", "<i2", (max_masked,)), ("targets", "<i4", (max_masked,)), ("ids", "<i4", (max_masked, k)),
                     ("weights", "<f4", (max_masked, k)), ("entropy", "<f4", (max_masked,))])


def record_bytes(max_masked: int, k: int) -> int:
    """`record_dtype(max_masked, k).itemsize`, computed without building the type (a huge K would not fit one)."""
    return max_masked * (2 + 4 + 8 * k + 4)


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
DAMAGED = f"it is damaged or not written by `ds-distil teacher-cache`: {REBUILD}"


# ------------------------------------------------------------------------------ the manifest's schema


class _CacheFile(Checked):
    name: InsideName
    samples: Count
    sha256: Sha256


class _Split(Checked):
    copies: Annotated[list[Annotated[list[_CacheFile], Field(min_length=1)]], Field(min_length=1)]


class _Masking(Checked):
    copies: Positive


class _Vocab(Checked):
    kind: Literal["full", "trimmed"]
    size: Positive


class _MadeFor(Checked):
    seq_len: Positive
    masking: _Masking
    vocab: _Vocab
    temperature: PositiveFloat
    method: Literal["sampled", "top_k"]
    k: Positive
    proposal_temperature: PositiveFloat


class _TeacherArchitecture(Checked):
    """What a cached run builds the teacher's config from (distill/setup.py), without the teacher."""

    model_type: NonEmpty
    vocab_size: Positive
    hidden_size: Positive
    num_hidden_layers: Positive
    num_attention_heads: Positive
    intermediate_size: Positive


class _Teacher(Checked):
    config: _TeacherArchitecture


class CacheManifest(Checked):
    """What the readers of a teacher cache rely on, checked before any of its files is opened."""

    k: Annotated[int, Field(ge=1, le=MAX_K)]
    max_masked: Annotated[int, Field(ge=1, le=MAX_MASKED)]
    masking: _Masking
    made_for: _MadeFor
    teacher: _Teacher
    splits: dict[Literal["train", "val"], _Split]

    @model_validator(mode="after")
    def _consistent(self):
        made, train = self.made_for, self.splits.get("train")
        problem = None
        if train is None:
            problem = "no 'train' split (a cache is for training)"
        elif made.k != self.k or made.masking.copies != self.masking.copies:
            problem = f"k {self.k} and masking.copies {self.masking.copies} differ from made_for's ({made.k}, {made.masking.copies})"
        elif self.max_masked > made.seq_len:
            problem = f"max_masked {self.max_masked} is more than the sequence length {made.seq_len}"
        elif record_bytes(self.max_masked, self.k) >= 2**31:  # numpy's limit on one record's layout
            problem = f"k {self.k} x max_masked {self.max_masked} make records of {record_bytes(self.max_masked, self.k):,} bytes"
        elif len(train.copies) != self.masking.copies:
            problem = f"splits.train has {len(train.copies)} mask copies, masking.copies says {self.masking.copies}"
        elif "val" in self.splits and len(self.splits["val"].copies) != 1:
            problem = f"splits.val has {len(self.splits['val'].copies)} mask copies, not 1"
        else:
            for name, split in self.splits.items():
                samples = [[f.samples for f in copy] for copy in split.copies]
                if any(s != samples[0] for s in samples):
                    problem = f"the mask copies of splits.{name} list different files or sample counts"
        if problem:
            raise ValueError(problem)
        return self


def exact_weights(made_for: dict[str, Any]) -> bool:
    """Whether each slot's weights are a distribution (in [0, 1], summing to 1): top-k's renormalised probabilities,
    or draws from the teacher at T itself (frequencies). A flatter proposal gives importance weights (finite, >= 0, of
    mean 1 over draws) instead."""
    return made_for["method"] == "top_k" or made_for["proposal_temperature"] == made_for["temperature"]


def open_records(path: Path, dtype: np.dtype, samples: int) -> np.ndarray:
    """A cache file's records, memory-mapped once its .npy header says what the manifest does (the record layout,
    `samples` records, in C order) and the file has exactly that size: a truncated, padded or foreign file is refused
    before it is mapped, and nothing in it is unpickled."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy version {version} is not one numpy writes for records")
            shape, fortran, found = read(f)
            offset = f.tell()
    except (ValueError, SyntaxError) as e:  # not .npy, a header that does not parse
        raise CorruptShardError(str(path), f"is not a .npy file of cache records ({e})", REBUILD) from None
    if found != dtype or shape != (samples,) or fortran:
        what = "records of another layout" if found != dtype else f"shape {shape}{' in Fortran order' if fortran else ''}"
        raise CorruptShardError(str(path), f"holds {what}, not the manifest's {samples} records of {dtype.itemsize:,} bytes", REBUILD)
    size, expected = path.stat().st_size, offset + samples * dtype.itemsize
    if size != expected:
        raise CorruptShardError(str(path), f"is {size:,} bytes, its header and the manifest make {expected:,} (truncated?)", REBUILD)
    if samples == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(samples,))


# --------------------------------------------------------------------------------------- the cache

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
            opened[i] = open_records(self.directory / files[i].name, record_dtype(self.max_masked, self.k), files[i].samples)
        return opened[i][index - starts[i]]

    def file_of(self, split: str, copy: int, index: int) -> Path:
        starts, files, _ = self._maps[(split, copy)]
        return self.directory / files[bisect.bisect_right(starts, index) - 1].name

    def batch_targets(self, split: str, copy: int, labels, indices: list[int], max_masked: int) -> dict:
        """The targets of a batch's masked slots, in the order of `masking.static_positions` (row by row, each row's
        positions ascending), as tensors teacher_ids [B x max_masked, K], teacher_weights (0 in empty slots) and
        teacher_entropy; `labels` [B, L] the batch's, `indices` its samples' (-1: padding). A sample masked otherwise
        than the cache's record says is refused."""
        import torch

        from ds_distil.data.masking import IGNORE_INDEX

        size, k = labels.shape[0] * max_masked, self.k
        ids, weights, entropy = np.zeros((size, k), np.int64), np.zeros((size, k), np.float32), np.zeros(size, np.float32)
        slot, owners = 0, []  # owners: (first slot, sample) of each record read, to name the one that is wrong
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
            owners.append((slot, index))
            slot += n
        self._check_targets(split, copy, ids[:slot], weights[:slot], entropy[:slot], owners)
        return {"teacher_ids": torch.from_numpy(ids), "teacher_weights": torch.from_numpy(weights),
                "teacher_entropy": torch.from_numpy(entropy)}

    def _check_targets(self, split: str, copy: int, ids: np.ndarray, weights: np.ndarray, entropy: np.ndarray,
                       owners: list[tuple[int, int]]) -> None:
        """The targets read for a batch's slots are what the format allows (a file damaged or edited after the build, its
        sha256 recorded again, would otherwise train a student on them): ids in the cache's vocabulary, weights finite
        and >= 0 (in [0, 1] and summing to 1 per slot where `exact_weights`), entropies finite and >= 0."""
        made = self.data["made_for"]
        vocab, tol = int(made["vocab"]["size"]), 1e-3
        checks = [((ids < 0) | (ids >= vocab)).any(1), f"a token id outside the cache's vocabulary of {vocab:,}",
                  ~np.isfinite(weights).all(1) | (weights < 0).any(1), "a weight that is negative, NaN or infinite",
                  ~np.isfinite(entropy) | (entropy < -tol), "an entropy that is negative, NaN or infinite"]
        if exact_weights(made):
            checks += [(weights > 1 + tol).any(1) | (np.abs(weights.sum(1) - 1) > tol),
                       "weights that are not a distribution (each in [0, 1], summing to 1 per slot, as this cache's method "
                       "makes them)"]
        for bad, what in zip(checks[::2], checks[1::2]):
            if bad.any():
                first = int(bad.argmax())
                index = owners[bisect.bisect_right([o[0] for o in owners], first) - 1][1]
                raise CorruptShardError(str(self.file_of(split, copy, index)), f"sample {index} of '{split}' (copy {copy}) has "
                                        f"{what}: the file was changed after the build", REBUILD)

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
    data = read_checked(path, FORMAT, CacheManifest, DAMAGED, "rebuild the cache with this ds-distil")
    return TeacherCache(directory, data)
