"""Run directories: who owns an --out, one writer at a time, and outputs that appear whole.

Every command that writes an `--out` claims it first (`claim`):

* **Ownership.** OUT/.ds-distil-run.json names the command (and version) that made the directory.
  A non-empty directory without it, or made by another command, is refused without --overwrite;
  outputs of the landed version (no marker) are recognised by the files only ds-distil writes.
* **Inputs.** --out may not be, contain, or lie inside one of the command's inputs.
* **One writer, readers held.** OUT/.ds-distil.lock is held with a POSIX record lock (fcntl) for as long
  as the command runs; every input directory ds-distil made (shards, vocabulary, exports, runs) is held with
  a shared lock on its own lock file, so that no command replaces or deletes it while it is read (readers
  do not block each other; the refusal names the reader's pid and command). The kernel drops it when the process dies however it dies (kill -9 included), so a
  killed run never blocks --resume; a second run is refused naming the PID and host that hold it.
  POSIX locks are what NFS supports across nodes (NFSv4 natively, v3 through lockd); a file system
  mounted without lock support gets a warning and no guard.
* **Whole outputs.** One-shot commands (prepare, export, report, build-nli) write into a
  hidden sibling `.NAME.ds-distil-new-PID` and swap it in on success (`commit`, an atomic
  renameat2 exchange where the file system has it): a failed or interrupted run leaves the old
  output as it was. The old output is then deleted if it was ds-distil's, or kept beside as
  `NAME.replaced-DATE` if it was not. distill and finetune write in place (they resume, and a user
  watches their TensorBoard and metrics there); with --overwrite they write into the sibling and swap
  it in: distill at its first complete checkpoint, finetune once its set-up succeeded (data read and
  checked, model built). finetune's final outputs (model/, predictions/, results.json) appear whole
  at the end (`swap_in`, results.json last).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ds_distil import __version__
from ds_distil.core.dist import barrier, broadcast
from ds_distil.core.errors import UserError, shown_path
from ds_distil.core.io import atomic_write
from ds_distil.core.locks import LOCK, Lock, ReadLock
from ds_distil.core.storage import TOKEN_PREFIX, check_visible_to_all_ranks

log = logging.getLogger(__name__)

MARKER = ".ds-distil-run.json"
STAGING_INFIX = ".ds-distil-new-"

# What to do with an existing output of the same command:
#   keep:       refused without --overwrite (expensive to make: shards, vocabularies)
#   replace:    replaced without asking (derived from other outputs, cheap to make again)
#   accumulate: the command adds its files to the folder (benchmark results)
#   resume:     distill, finetune: continued with --resume, replaced with --overwrite (the command refuses the rest)
POLICY = {"prepare": "keep", "finetune": "resume", "export": "replace", "report": "replace", "build-nli": "replace",
          "benchmarks": "accumulate", "distill": "resume", "vocab": "keep", "trim": "replace", "teacher-cache": "resume"}

# Files that only ds-distil writes: directories made before run markers existed still count as ours.
LEGACY = {"prepare": ("manifest.json", "prepare_config.yaml"), "distill": ("run_config.yaml", "ds_config.json"),
          "finetune": ("finetune_config.yaml",), "export": ("ds_distil_export.json",), "report": ("report.md", "report.json")}


# ------------------------------------------------------------------------------------ inputs


def check_disjoint(out: Path, inputs, command: str, may_contain_out=()) -> None:
    """Refuse an --out that is an input, contains one, or lies inside an input directory (except
    those in `may_contain_out`, e.g. report's --runs, whose results the report sits beside)."""
    o = Path(out).resolve()
    containers = {Path(p).resolve() for p in may_contain_out}
    for p in inputs:
        if p is None or not Path(p).exists():
            continue
        i = Path(p).resolve()
        if o == i:
            raise UserError(f"--out {out} is also an input of {command} ({p}); write the output somewhere else")
        if o in i.parents:
            raise UserError(f"--out {out} contains the input {p}; {command} would write over it: choose another --out")
        if i in o.parents and i not in containers:
            raise UserError(f"--out {out} lies inside the input directory {p}; choose an --out outside it")


# The most a command adds below --out (a TensorBoard event file names the host and pid; checkpoint files their rank).
ROOM_BELOW = 200


def check_path_length(out: Path) -> None:
    """Refuse an --out too long for what is written below it (PATH_MAX) or for its staging sibling's name (NAME_MAX),
    before any work: the failure would otherwise come at the first such file, in the middle of the run (or in a
    library's writer thread)."""
    path = Path(out).absolute()
    anchor = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        path_max, name_max = os.pathconf(anchor, "PC_PATH_MAX"), os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        path_max, name_max = 4096, 255
    length, longest = len(os.fsencode(path)), max((len(os.fsencode(p)) for p in path.parts), default=0)
    if length + ROOM_BELOW > path_max:
        raise UserError(f"--out {shown_path(path)} is {length:,} bytes long; with the files written below it (up to {ROOM_BELOW} "
                        f"more) it passes this file system's limit of {path_max:,} (PATH_MAX): choose a shorter --out")
    if longest + len(STAGING_INFIX) + 12 > name_max:
        raise UserError(f"--out {shown_path(path)} has a name of {longest} bytes: the staging directory beside it (its name plus "
                        f"{len(STAGING_INFIX) + 12} characters) would pass this file system's limit of {name_max} (NAME_MAX); "
                        "choose a shorter name")


# ------------------------------------------------------------------------------------- owner


def read_marker(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and "command" in data else None
    except (OSError, ValueError):
        return None


def owner(directory: Path) -> str | None:
    """The ds-distil command that made `directory`, or None."""
    marker = read_marker(directory)
    if marker:
        return str(marker["command"])
    for command, files in LEGACY.items():
        if all((directory / f).is_file() for f in files):
            return command
    return None


def _write_marker(directory: Path, command: str) -> None:
    info = {"command": command, "ds_distil_version": __version__, "host": socket.gethostname(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(directory / MARKER, json.dumps(info, indent=1) + "\n")


def _entries(directory: Path, ignore=()) -> list[str]:
    # (a visibility token of core.storage is there for a moment only, unless its run was killed)
    return sorted(e.name for e in directory.iterdir() if e.name not in (LOCK, *ignore) and not e.name.startswith(TOKEN_PREFIX))


def staging_siblings(out: Path) -> list[Path]:
    out = Path(out)
    return sorted(out.parent.glob(f".{out.name}{STAGING_INFIX}*")) if out.parent.is_dir() else []


# -------------------------------------------------------------------------------------- lock


def hold_inputs(inputs) -> list[ReadLock]:
    """Shared locks on the inputs that are directories ds-distil made (shards, vocabularies, exports, runs)."""
    dirs = [Path(p) for p in inputs if p is not None and Path(p).is_dir() and owner(Path(p)) is not None]
    return [ReadLock(d) for d in dict.fromkeys(d.resolve() for d in dirs)]


# ------------------------------------------------------------------------------------- swap


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. NFS: two renames instead
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(new: Path, final: Path) -> None:
    """Put the directory `new` at `final` in one step (an exchange where the file system has it): a reader sees the old
    `final` or the new one, never a half-written one; the old one (an earlier output of the same run) is deleted."""
    if not final.exists():
        os.rename(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # now the old content
        return
    old = final.with_name(f".{final.name}.ds-distil-old-{os.getpid()}")
    os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _aside_name(out: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = out.with_name(f"{out.name}.replaced-{stamp}"), 1
    while path.exists():
        path, n = out.with_name(f"{out.name}.replaced-{stamp}-{n}"), n + 1
    return path


# ---------------------------------------------------------------------------------- the claim


@dataclass
class RunDir:
    """A claimed --out. Write into `path`; `commit()` makes it the output (a no-op when in place)."""

    out: Path
    path: Path
    command: str
    created: bool  # we made `out` (it did not exist)
    state: str  # "new" (nothing of value there), "owned" (our own earlier output, written in place), "staging"
    old_owner: str | None = None  # of what a staging commit replaces
    locks: list = field(default_factory=list)
    readers: list = field(default_factory=list)  # ReadLocks on the inputs
    committed: bool = False
    in_place: bool = False  # distill: keeps writing after the commit
    alias: Path | None = None

    @property
    def staging(self) -> bool:
        return self.path != self.out

    def commit(self) -> Path:
        """Swap the staging directory in; the replaced output is deleted if ds-distil's, kept aside otherwise."""
        if not self.staging:
            self.committed = True
            return self.out
        _write_marker(self.path, self.command)
        staging = old = self.path
        if not _exchange(self.path, self.out):
            old = self.out.with_name(f".{self.out.name}.ds-distil-old-{os.getpid()}")
            os.rename(self.out, old)
            os.rename(self.path, self.out)
        out_lock, new_lock = self.locks  # the staging lock file now sits in OUT
        new_lock.moved_to(self.out / LOCK)
        out_lock.moved_to(old / LOCK)
        out_lock.release()
        if self.old_owner is not None or not _entries(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            aside = _aside_name(self.out)
            os.rename(old, aside)
            log.warning("--overwrite: the earlier content of %s (not written by ds-distil) was kept as %s", self.out, aside)
        self.locks = [new_lock]
        if self.in_place:
            # a run that goes on writing: files some libraries reopen by name (TensorBoard's event file)
            # must still be found under the old path until the process ends
            os.symlink(self.out.resolve(), staging)
            self.alias = staging
        self.path, self.committed = self.out, True
        return self.out

    def abort(self) -> None:
        """After a failure: remove the staging directory, and --out itself if we created it and it is empty."""
        if self.staging and not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.out.is_dir() and not _entries(self.out, ignore=(MARKER,)) and (self.created or self.state == "new"):
            self.release()
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)
            else:  # the user's empty directory: as it was
                (self.out / MARKER).unlink(missing_ok=True)

    def release(self) -> None:
        for lock in [*self.locks, *self.readers]:
            lock.release()
        self.locks, self.readers = [], []
        if self.alias is not None and self.alias.is_symlink():
            self.alias.unlink()
            self.alias = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError) and self.staging and exc.filename:  # name the output, not the staging sibling
                try:
                    inside = Path(os.fsdecode(exc.filename)).absolute().relative_to(self.path.absolute())
                except ValueError:
                    pass
                else:
                    exc.filename = f"{self.out / inside} (the new output, not yet in place)"
        self.release()


def claim(out: str | Path, command: str, *, overwrite: bool = False, inputs=(), may_contain_out=(),
          ignore=(), in_place: bool = False) -> RunDir:
    """Claim --out for `command`: check inputs and ownership, take the lock, and say where to write.

    `in_place`: write into OUT itself when it is new, empty or already this command's (distill;
    the caller decides about resuming); otherwise a staging sibling is used. `ignore`: names that
    do not make OUT count as non-empty (the SLURM script's hostfile).
    """
    out = Path(out)
    if out.is_symlink():  # swap the directory it points to, not the link
        out = out.resolve()
    check_path_length(out)
    check_disjoint(out, inputs, command, may_contain_out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    _refuse_if_not_ours(out, command, overwrite, ignore)  # before creating anything in a stranger's directory
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ds-distil-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out {out} ({e.strerror}); choose a directory you can write to") from None
    rd = RunDir(out, out, command, created, "new", in_place=in_place)
    try:
        rd.locks.append(Lock(out / LOCK, command))
        rd.readers = hold_inputs(inputs)  # what this command reads may not be replaced while it runs
        prev = _refuse_if_not_ours(out, command, overwrite, ignore)  # again, now that we hold the lock
        for stale in staging_siblings(out):  # left by a killed run of ours (a live one would hold the lock)
            if stale.is_symlink():
                stale.unlink()
            else:
                shutil.rmtree(stale, ignore_errors=True)
        empty = not _entries(out, ignore=(MARKER, *ignore))
        if in_place and (empty or (prev == command and not overwrite)):
            rd.state = "new" if empty else "owned"
            if empty or read_marker(out) is None:
                _write_marker(out, command)
            return rd
        if POLICY.get(command) == "accumulate" and (empty or prev == command):
            rd.state = "owned"
            if read_marker(out) is None:
                _write_marker(out, command)
            return rd
        if os.path.ismount(out):  # the swap below would end in EBUSY, after all the work
            raise UserError(f"--out {out} is a mount point: {command} writes its output beside --out and swaps it in, "
                            f"which a mount point cannot take; pass a directory inside it, e.g. {out / command}")
        staging = out.with_name(f".{out.name}{STAGING_INFIX}{os.getpid()}")
        staging.mkdir()
        rd.path, rd.state, rd.old_owner = staging, "staging", prev if not empty else command
        rd.locks.append(Lock(staging / LOCK, command))
        if in_place:
            _write_marker(staging, command)
        return rd
    except BaseException:
        rd.abort()
        rd.release()
        raise


def _refuse_if_not_ours(out: Path, command: str, overwrite: bool, ignore) -> str | None:
    """The owner of a non-empty OUT if this command may write there; otherwise a one-line refusal."""
    if not out.is_dir() or not _entries(out, ignore=(MARKER, *ignore)):
        return None
    prev = owner(out)
    if overwrite:
        return prev
    if prev is None:
        names = _entries(out, ignore=(MARKER, *ignore))
        listing = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"--out {out} is not empty ({listing}) and was not made by ds-distil; choose an empty or new "
                        "directory, or pass --overwrite to replace it (its content is then kept beside it as "
                        f"{out.name}.replaced-DATE)")
    if prev != command:
        raise UserError(f"--out {out} holds the output of `ds-distil {prev}`, not of {command}; choose another --out, "
                        "or pass --overwrite to replace it")
    policy = POLICY.get(command)
    if policy == "keep":
        raise UserError(f"--out {out} already holds the output of an earlier `ds-distil {command}`; pass --overwrite to "
                        "replace it (the new output is built beside it and swapped in only when complete)")
    return prev


# ------------------------------------------------------------------------------ several ranks


def claim_on_rank0(rank: int, make) -> RunDir:
    """Rank 0 claims (`make()`); every rank learns where to write, or raises the same one-line error: also where a
    rank on another host does not see the directory (core.storage), before anything is written there."""
    rd, err = None, None
    if rank == 0:
        try:
            rd = make()
        except UserError as e:
            err = str(e)
    box = broadcast([(str(rd.out), str(rd.path), rd.state) if rd else None, err])
    if box[1] is not None:
        raise UserError(box[1])
    if rank != 0:  # a view of rank 0's claim: no lock, nothing to commit
        out, path, state = box[0]
        rd = RunDir(Path(out), Path(path), "", False, state)
    try:
        check_visible_to_all_ranks(rd.path, rank, shown=rd.out)
    except UserError:
        if rank == 0:  # as it was: a directory the claim made goes again
            rd.abort()
            rd.release()
        barrier()  # before any rank exits: a launcher then stops the others (srun --kill-on-bad-exit), rank 0 mid-way
        raise
    return rd


def commit_on_rank0(rd: RunDir, rank: int) -> Path:
    """All ranks call this: rank 0 swaps the staging directory in, the others then write to OUT too."""
    err = None
    if rank == 0:
        try:
            rd.commit()
        except OSError as e:
            err = f"could not move the new run {rd.path} into place as {rd.out} ({e}); it is complete in {rd.path}"
    box = broadcast([err])
    if box[0] is not None:
        raise UserError(box[0])
    rd.path, rd.committed = rd.out, True
    return rd.out
