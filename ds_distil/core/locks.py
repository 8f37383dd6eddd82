"""Locks on run directories: one writer (an exclusive POSIX record lock on DIR/.ds-distil.lock, with its holder's
pid, host, command and start written in it) and readers of inputs (shared locks on the same file). POSIX (fcntl) locks
belong to the process and vanish when it dies however it dies, so a killed run never blocks --resume; they are what NFS
supports across nodes. A refusal names the holder: the record of a writer, or the pid and command line the kernel
reports for a reader. core/rundir.py uses these for every --out and every input it holds.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from ds_distil.core.errors import UserError

log = logging.getLogger(__name__)

LOCK = ".ds-distil.lock"


class Lock:
    """An exclusive POSIX record lock on PATH, with the holder's pid/host/command written in it.

    fcntl locks belong to the process (not inherited by forked DataLoader/tokenizer workers) and
    vanish when it dies, so no stale lock survives a kill. Caveat of POSIX locks: closing *any*
    descriptor of the file in this process drops the lock, so nothing else here opens it.
    """

    def __init__(self, path: Path, command: str):
        self.path, self.fd = Path(path), None
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(self.path, fd) if e.errno in (errno.EAGAIN, errno.EACCES) else ""
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise UserError(f"{self.path.parent} is in use by another ds-distil run ({holder}); "
                                    "wait for it to finish, or choose another --out") from None
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    log.warning("the file system of %s does not support locks (%s): nothing stops a second run from "
                                "writing the same directory at the same time", self.path.parent, e.strerror)
                    return
                raise
            try:  # the holder may have deleted the file as we opened it: then lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                          "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
                return
            os.close(fd)
        raise UserError(f"could not lock {self.path}: it keeps being replaced; is another run starting there?")

    def moved_to(self, path: Path) -> None:
        self.path = Path(path)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # while still locked: a waiter then finds the file gone and retries
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class ReadLock:
    """A shared POSIX record lock on an input directory's lock file, held while a command reads the directory: a
    command that would replace or delete it (its exclusive `Lock`) is refused meanwhile, naming the reader; readers
    do not block each other. Where the lock cannot be taken (a directory this user may not write, a file system
    without locks) the input is read unguarded, as before."""

    def __init__(self, directory: Path):
        self.path, self.fd = Path(directory) / LOCK, None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(self.path, fd) if e.errno in (errno.EAGAIN, errno.EACCES) else ""
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{directory} is being written by another ds-distil run ({holder}); wait for it to finish "
                                "before reading it") from None
            log.warning("the file system of %s does not support locks (%s): nothing stops another command from "
                        "replacing it while this one reads it", directory, e.strerror)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the file stays: other readers may hold it
            self.fd = None


def _holder(path: Path, fd: int | None = None) -> str:
    try:
        h = json.loads(path.read_text())
        return f"`ds-distil {h['command']}`, pid {h['pid']} on host {h['host']}, since {h['since']}; lock file {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pid = _conflicting_pid(fd) if fd is not None else None
    if pid:  # a reader (shared locks carry no record of their own): the kernel names one
        try:
            cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
        except OSError:
            cmd = ""
        if not cmd:
            return f"read by pid {pid} on another host (see the lock's holders there); lock file {path}"
        return f"read by pid {pid} on host {socket.gethostname()}, since {_process_start(pid)}: `{cmd[:160]}`; lock file {path}"
    return f"lock file {path}"


def _process_start(pid: int) -> str:
    """When a local process started (/proc/PID/stat's start time after boot), or "?"."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return "?"
    return datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK")).isoformat(timespec="seconds")


def _conflicting_pid(fd: int) -> int | None:
    """The pid of a lock that keeps us from locking `fd` exclusively (fcntl F_GETLK), or None."""
    import struct

    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock, native layout
        kind, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None
