"""manifest.json: what a prepared shard directory holds, and the checks made before streaming it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from ds_distil.core.checked import Checked, Count, InsideName, NonEmpty, Positive, Sha256, read_checked
from ds_distil.core.errors import CorruptShardError, UserError

FORMAT = "ds-distil-shards/1"
MANIFEST = "manifest.json"
SAMPLE_KEY = "input_ids.npy"  # the one file of every sample: int32[seq_len] token ids (np.save, no pickle)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Shard(Checked):
    name: InsideName
    samples: Count
    tokens: Count
    bytes: Count
    sha256: Sha256


class _Split(Checked):
    shards: list[_Shard]


class _Tokenizer(Checked):
    vocab_size: Positive
    vocab_sha256: Sha256
    pad_id: Count
    mask_id: Count
    special_ids: list[Count]
    unk_id: Count | None = None
    cls_id: Count | None = None
    sep_id: Count | None = None

    @model_validator(mode="after")
    def _ids_in_vocabulary(self):
        ids = [self.pad_id, self.mask_id, self.unk_id, self.cls_id, self.sep_id, *self.special_ids]
        if any(i is not None and i >= self.vocab_size for i in ids):
            raise ValueError(f"a special token id is not below vocab_size {self.vocab_size}")
        return self


class ShardsManifest(Checked):
    """What the readers of a shard directory rely on (its manifest.json, written by `ds-distil prepare`)."""

    seq_len: Annotated[int, Field(ge=2, le=1 << 20)]
    tokenizer: _Tokenizer
    splits: dict[NonEmpty, _Split]

    @model_validator(mode="after")
    def _has_train(self):
        if "train" not in self.splits:
            raise ValueError("no 'train' split")
        return self


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    samples: int
    tokens: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    directory: Path
    data: dict[str, Any]

    @property
    def seq_len(self) -> int:
        return int(self.data["seq_len"])

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.data["tokenizer"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / "tokenizer"

    def shards(self, split: str) -> list[ShardInfo]:
        splits = self.data["splits"]
        if split not in splits:
            raise UserError(f"{self.directory / MANIFEST} has no split '{split}' (it has: {', '.join(splits)})")
        return [
            ShardInfo(self.directory / s["name"], int(s["samples"]), int(s["tokens"]), int(s["bytes"]), s["sha256"])
            for s in splits[split]["shards"]
        ]

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def check_tokenizer(self, vocab_sha256: str, vocab_size: int, what: str = "the tokenizer in use") -> None:
        """Refuse shards made with another vocabulary than `what`."""
        tok = self.tokenizer
        if tok["vocab_sha256"] != vocab_sha256 or int(tok["vocab_size"]) != vocab_size:
            raise UserError(
                f"{self.directory / MANIFEST} was made with tokenizer '{tok['name']}' (vocab {tok['vocab_size']}, "
                f"sha256 {tok['vocab_sha256'][:12]}) but {what} has vocab {vocab_size}, sha256 {vocab_sha256[:12]}; "
                "re-run `ds-distil prepare` with the model's tokenizer"
            )

    def verify(self, split: str, checksums: bool, rank: int = 0, world_size: int = 1, skip_corrupt: bool = False,
               all_checksums: bool = False) -> dict[str, str]:
        """Every shard exists with its recorded size; with `checksums`, this rank's share is hashed too
        (every shard with `all_checksums`). A bad shard stops here, or with `skip_corrupt` is returned
        ({path: what is wrong}) for the stream to skip."""
        bad = {}
        for i, shard in enumerate(self.shards(split)):
            if not shard.path.is_file():
                if skip_corrupt:
                    bad[str(shard.path)] = "missing"
                    continue
                raise UserError(f"shard {shard.path} listed in {MANIFEST} is missing; re-run `ds-distil prepare`")
            size = shard.path.stat().st_size
            problem = None
            if size != shard.bytes:
                problem = f"{size} bytes on disk, {shard.bytes} in the manifest (truncated?)"
            elif checksums and (all_checksums or i % world_size == rank) and sha256_file(shard.path) != shard.sha256:
                problem = "sha256 differs from the manifest"
            if problem and not skip_corrupt:
                raise CorruptShardError(str(shard.path), problem)
            if problem:
                bad[str(shard.path)] = problem
        return bad


def load_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise UserError(f"shard directory {directory} does not exist; create it with `ds-distil prepare --out {directory} ...`")
    if not path.is_file():
        from ds_distil.core.rundir import staging_siblings

        partial = " (an interrupted `prepare` left it incomplete)" if staging_siblings(directory) else ""
        raise UserError(
            f"{directory} has no {MANIFEST}{partial}; it is not a finished `ds-distil prepare` output: run prepare again"
        )
    data = read_checked(path, FORMAT, ShardsManifest, "it is damaged or not written by `ds-distil prepare`: re-run prepare",
                        "re-run `ds-distil prepare`")
    return Manifest(directory, data)
