"""Collectives and the rank split, written once: what every multi-rank part of ds-distil (claiming a directory,
streaming, validation, the loop) shares. Each works in a single process without torch.distributed too."""

from __future__ import annotations

import os


def initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size): torch.distributed's once it is initialized, else what a launcher set in the environment."""
    if initialized():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first position, count) of rank `rank`'s contiguous share of n items: sizes differ by at most one, the first
    n % world_size ranks take one more."""
    base, extra = divmod(n, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def keep_global_batch(global_batch: int, max_micro: int, world_size: int) -> tuple[int, int] | None:
    """(micro batch, accumulation) making `global_batch` on `world_size` ranks, the micro batch the largest up to
    `max_micro` that does; None where `world_size` does not divide `global_batch` (no whole number keeps it)."""
    if global_batch % world_size:
        return None
    per_rank = global_batch // world_size
    micro = max(m for m in range(1, min(max_micro, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def broadcast(box: list) -> list:
    """Rank 0's `box` (a list of picklable values) on every rank."""
    if initialized():
        import torch.distributed as dist

        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
            # and wait for every rank: rank 0 may otherwise leave (and exit) while another still receives,
            # which gloo answers with an abort in that rank ("terminate called without an active exception")
            dist.barrier()
    return box


def all_reduce(tensor):
    """Sum `tensor` over the ranks, in place (nothing to do in a single process)."""
    if initialized():
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def all_gather_objects(value) -> list:
    """Every rank's `value` (picklable), in rank order ([value] in a single process)."""
    if initialized():
        import torch.distributed as dist

        if dist.get_world_size() > 1:
            out = [None] * dist.get_world_size()
            dist.all_gather_object(out, value)
            return out
    return [value]


def barrier() -> None:
    """Wait for every rank (nothing to do in a single process)."""
    if initialized():
        import torch.distributed as dist

        if dist.get_world_size() > 1:
            dist.barrier()
