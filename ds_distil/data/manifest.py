"""manifest.json: what a prepared shard directory holds, and the checks made before streaming it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    data = read_format_json(path, FORMAT, "re-run `ds-distil prepare`")
    _check_fields(path, data)
    return Manifest(directory, data)


def read_format_json(path: Path, fmt: str, remedy: str, format_remedy: str | None = None) -> dict[str, Any]:
    """A manifest file of ours: JSON holding {"format": fmt, ...}, or a one-line refusal ending with `remedy`
    (`format_remedy` for a file of another format)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {remedy}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} has format {got!r}, expected {fmt!r}; {format_remedy or remedy}")
    return data


def _check_fields(path: Path, data: dict) -> None:
    """The fields every reader relies on, so that a damaged or hand-edited manifest is one line, not a KeyError later."""
    problem = None
    splits, tok = data.get("splits"), data.get("tokenizer")
    if not isinstance(data.get("seq_len"), int):
        problem = "no seq_len"
    elif not isinstance(tok, dict) or any(k not in tok for k in ("vocab_size", "vocab_sha256", "pad_id", "mask_id", "special_ids")):
        problem = "no complete 'tokenizer' entry"
    elif not isinstance(splits, dict) or "train" not in splits:
        problem = "no 'splits' with a 'train' split"
    else:
        for name, split in splits.items():
            shards = split.get("shards") if isinstance(split, dict) else None
            if not isinstance(shards, list) or any(not isinstance(s, dict) or not {"name", "samples", "tokens", "bytes", "sha256"} <= s.keys() for s in shards):
                problem = f"split '{name}' without a complete shard list"
                break
    if problem:
        raise UserError(f"{path} has {problem}; it is damaged or not written by `ds-distil prepare`: re-run prepare")
