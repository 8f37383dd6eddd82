"""Samples read back from a shard, each checked as it is read: the member is a sample's `.npy` (no pickle), an
int32[seq_len] of ids inside the vocabulary. A shard that is not so (truncated, corrupt, another layout) is one
line naming it (CorruptShardError), whoever reads it: the training stream, validation, `ds-distil vocab`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ds_distil.core.errors import CorruptShardError
from ds_distil.data.manifest import SAMPLE_KEY


def decode(shard: str, fname: str, data: bytes, seq_len: int, vocab_size: int) -> tuple[np.ndarray, int]:
    """(ids, the sample's index in its split) of one tar member."""
    if not fname.endswith("." + SAMPLE_KEY):
        raise CorruptShardError(shard, f"unexpected member {fname!r}")
    try:
        ids = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise CorruptShardError(shard, f"sample {fname} is not a valid .npy ({e})") from None
    if ids.shape != (seq_len,) or ids.dtype != np.int32 or ids.min() < 0 or ids.max() >= vocab_size:
        raise CorruptShardError(shard, f"sample {fname} is not int32[{seq_len}] ids below {vocab_size}")
    return ids, int(fname[fname.index("-") + 1 : fname.index(".")])


def read_shard(path: str | Path, seq_len: int, vocab_size: int, samples: int, skip: int = 0,
               take: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Samples skip .. skip + take of a shard the manifest says holds `samples`, as (ids, index in the split). A tar
    that cannot be read, or ends early, raises CorruptShardError."""
    from webdataset.tariterators import tar_file_iterator

    shard = str(path)
    take = samples - skip if take is None else take
    got = 0
    try:
        with open(shard, "rb") as f:
            for i, member in enumerate(tar_file_iterator(f)):
                if got == take:
                    break
                if i < skip:
                    continue
                yield decode(shard, member["fname"], member["data"], seq_len, vocab_size)
                got += 1
                if got == take:
                    break
    except CorruptShardError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, ...: the tar itself is broken
        raise CorruptShardError(shard, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if got < take:
        raise CorruptShardError(shard, f"ended after {skip + got} samples, the manifest says {samples} (truncated?)")


class ShardIndex:
    """Where each sample of a shard lies in its tar (the members `read_shard` yields, in its order), for reading single
    samples by their place in the shard: the rest of an epoch resumed on another layout reads scattered samples."""

    def __init__(self, path: str | Path, seq_len: int, vocab_size: int, samples: int):
        import re
        import tarfile

        self.shard, self.seq_len, self.vocab_size = str(path), seq_len, vocab_size
        meta = re.compile(r"__[^/]*__($|/)")  # what webdataset's tar_file_iterator skips
        self.members: list[tuple[str, int, int]] = []
        try:
            with tarfile.open(self.shard, mode="r:") as tar:  # headers only: member data is seeked over, not read
                for info in tar:
                    name = info.name
                    if not info.isreg() or ("/" not in name and name.startswith("__") and name.endswith("__")) or meta.match(name):
                        continue
                    self.members.append((name, info.offset_data, info.size))
        except Exception as e:  # tarfile.ReadError, EOFError, ...: the tar itself is broken
            raise CorruptShardError(self.shard, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if len(self.members) < samples:
            raise CorruptShardError(self.shard, f"ended after {len(self.members)} samples, the manifest says {samples} (truncated?)")

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Sample `i` of the shard, checked as `read_shard` checks it."""
        name, offset, size = self.members[i]
        with open(self.shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise CorruptShardError(self.shard, f"sample {name} is cut short (truncated?)")
        return decode(self.shard, name, data, self.seq_len, self.vocab_size)
