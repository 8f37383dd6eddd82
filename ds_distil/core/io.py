"""Files that appear whole or not at all."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


@contextmanager
def atomic_file(path: str | Path, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file written through a hidden sibling renamed over `path` at the end: a reader (or a run killed mid-write)
    sees the old content or the new one, never half of it. `fsync`: the data reaches the disk before the rename, for a
    marker that vouches for other files (a checkpoint's COMPLETE).

    If the write fails (a full disk, a file-size limit) or is interrupted (a signal's SystemExit), the sibling is removed
    and `path` keeps what it had; an OSError that names no file (a short write) is raised again naming `path`, so the
    one-line error says where. Write with the file's own `write` (numpy's `tofile` reports a full disk without its errno)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the directory itself is gone or read-only: nothing of ours is left in it
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False, encoding: str = "utf-8") -> Path:
    """Write `data` to `path` whole or not at all (`atomic_file`)."""
    with atomic_file(path, fsync=fsync) as f:
        f.write(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def atomic_write_lines(path: str | Path, lines, *, encoding: str = "utf-8") -> Path:
    """Lines (each written with a newline) to `path` whole or not at all (`atomic_file`), streamed: a large file is never
    held whole."""
    with atomic_file(path) as f:
        for line in lines:
            f.write((line + "\n").encode(encoding))
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = False, **dumps: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=indent, **dumps), fsync=fsync)
