"""The one exception type users see: a one-line message that says what is wrong, where, and what to do."""

import re
from contextlib import contextmanager


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message on one line and exits non-zero."""


class CorruptShardError(UserError):
    """A shard could not be read back as written (truncated, corrupt, wrong sample layout)."""

    PREPARE = ("re-run `ds-distil prepare` for this corpus (or set data.skip_corrupt_shards=true to skip such shards and "
               "count them)")

    def __init__(self, shard: str, what: str, advice: str = PREPARE):
        super().__init__(f"corrupt shard {shard}: {what}; {advice}")
        self.shard, self.what, self.advice = shard, what, advice


# errno -> (what it means, what to do): the operating-system errors a run meets in practice
_OS_ADVICE = {
    "ENOSPC": ("no space left on the device", "free space there or choose another --out"),
    "EDQUOT": ("the disk quota is exceeded", "free space within the quota or choose another --out"),
    "EFBIG": ("the file is larger than allowed (a file-size limit: ulimit -f, or the file system's)", "raise the limit or write elsewhere"),
    "EACCES": ("permission denied", "choose a path you may write, or fix its permissions"),
    "EPERM": ("operation not permitted", "choose a path you may write, or fix its permissions"),
    "EROFS": ("the file system is read-only", "choose a writable --out"),
    "EBUSY": ("the path is busy (a mount point, or in use)", "choose a path that is not a mount point or in use"),
    "EMFILE": ("too many open files", "raise the limit (ulimit -n) or lower data.num_workers"),
    "ENAMETOOLONG": ("the path is too long", "choose a shorter path"),
    "EIO": ("an input/output error (a failing disk or network file system)", "check the device, then retry"),
}


def shown_path(path) -> str:
    """A path as text for a one-line message: bytes decoded as the file system does (not b'...'), control characters
    escaped, and a very long one shortened in the middle (its length said)."""
    import os

    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    text = printable(text)
    if len(text) > 200:
        text = f"{text[:80]}...{text[-80:]} ({len(text):,} characters)"
    return text


def printable(text: str) -> str:
    """`text` with control characters (NUL, newlines, escapes) written as Python escapes: a one-line message stays one
    line and puts no raw bytes on the terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def os_error_line(e: OSError) -> str:
    """An OSError as one line: the path, what the error means, what to do (outputs already written stay as they were)."""
    import errno as errno_names
    import os

    name = errno_names.errorcode.get(e.errno or 0, "")
    meaning, todo = _OS_ADVICE.get(name, (e.strerror or str(e), "check the path and retry"))
    paths = " -> ".join(shown_path(p) for p in (e.filename, e.filename2) if p is not None)
    where = f" at {paths}" if paths else ""
    code = f" ({name}, {os.strerror(e.errno)})" if name and name in _OS_ADVICE else ""
    return f"{meaning}{where}{code}; {todo}"


@contextmanager
def os_errors_at(path):
    """Around a save by a Rust binding (tokenizers', safetensors'): the OS error it reports only as text ("No space
    left on device (os error 28)", in a plain Exception or a SafetensorError) raised as the OSError it is, naming
    `path`, so the CLI gives it the one line of every OSError."""
    import os

    try:
        yield
    except OSError:
        raise
    except Exception as e:
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m is None:
            raise
        raise OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) from e
