"""Files that appear whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False, encoding: str = "utf-8") -> Path:
    """Write `data` to `path` through a hidden sibling renamed over it: a reader (or a run killed mid-write) sees
    the old content or the new one, never half of it. `fsync`: the data reaches the disk before the rename, for
    a marker that vouches for other files (a checkpoint's COMPLETE)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode(encoding) if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_lines(path: str | Path, lines, *, encoding: str = "utf-8") -> Path:
    """`atomic_write` of an iterable of lines (each written with a newline), streamed: a large file is never held whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding=encoding, newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = False, **dumps: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=indent, **dumps), fsync=fsync)
