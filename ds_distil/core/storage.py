"""Shared or node-local storage: is a directory that every rank writes to the same directory on every host?

A multi-node run writes its --out from every rank (DeepSpeed's checkpoint: each rank its own optimizer shard), so the
directory must be on a file system every node mounts (NFS, Lustre, GPFS, the cluster's home or project space), not a
node-local disk (/tmp, /scratch, /dev/shm) that merely has the same path on each node: there each node would keep
its own part of every checkpoint, and the run would end up with none complete. Path names cannot tell the two apart;
a file can: rank 0 writes a token into the directory, every rank looks for it after a barrier.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from ds_distil.core.dist import all_gather_objects, broadcast, initialized
from ds_distil.core.errors import UserError, shown_path
from ds_distil.core.net import host_name

TOKEN_PREFIX = ".ds-distil-visible-"
# a network file system may show another client's new file a moment late (attribute caches): look again for this long
# before calling the directory invisible; a directory that is visible costs nothing of it
LOOK_AGAIN_S = 3.0


def _sees(path: Path, token: str) -> bool:
    deadline = time.monotonic() + LOOK_AGAIN_S
    while True:
        try:
            if (path / (TOKEN_PREFIX + token)).read_text() == token:
                return True
        except (OSError, UnicodeDecodeError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_visible_to_all_ranks(path: Path, rank: int, shown: Path | None = None, what: str = "--out") -> None:
    """Every rank sees the directory `path` that rank 0 made, or every rank raises the same one-line UserError naming
    the host(s) that do not (and `shown`, the user's name for it: --out where `path` is its staging sibling). Nothing
    to do in a single process. Called by every rank."""
    if not initialized():
        return
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return
    token = None
    if rank == 0:
        token = secrets.token_hex(8)
        try:
            (path / (TOKEN_PREFIX + token)).write_text(token)
        except OSError:
            token = None  # rank 0 cannot write there: the claim says so (it wrote there first); skip the check
    token = broadcast([token])[0]  # (with a barrier: the file exists before anyone looks)
    if token is None:
        return
    seen = all_gather_objects((host_name(), _sees(path, token)))
    if rank == 0:
        (path / (TOKEN_PREFIX + token)).unlink(missing_ok=True)
    blind: dict[str, list[int]] = {}
    for r, (host, ok) in enumerate(seen):
        if not ok:
            blind.setdefault(host, []).append(r)
    if blind:
        hosts = "; ".join(f"host {h} (rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))})" for h, rs in blind.items())
        raise UserError(f"{what} {shown_path(shown or path)} is not visible from {hosts}, but rank 0 made it on host {seen[0][0]}: it is on "
                        "a disk that not every node mounts (like /tmp or a node's scratch), where each node would keep its "
                        f"own part of the output; put {what} on a file system every node mounts at the same path (e.g. the "
                        "cluster's shared home or project space)")
