"""The rest of an epoch on another layout: a run stopped on W ranks goes on on W' ranks with exactly the samples it has
not seen, each once.

An epoch is laid out when it begins, by the ranks, workers and micro batch running then (its *layout*; stream.py says
how). Read row by row (row j: rank 0's batch j, then rank 1's, ...), the epoch is one sequence of T x W x B *slots*, each
a sample or padding, and a run on that layout takes them in order: optimizer step k takes slots k G .. (k + 1) G with
G = W x B x A. The data position in global terms is (epoch, its layout, slots taken). Resumed on W' ranks with micro
batch B' (accumulation A', W' B' A' = G), the run goes on through the same sequence: micro batch i of rank r takes
slots origin + (i W' + r) B' .. + B' (past the epoch's end: padding), so every optimizer step takes the G slots the
uninterrupted run would have taken (the same global batch, split otherwise) and every sample of the epoch is seen once,
across any number of changes. The next epoch is laid out for the ranks running then. It is MosaicML streaming's idea (a
sample order fixed by a "canonical" node count, split over whatever ranks exist), with the canonical layout the one the
epoch began under, so nothing has to be fixed in advance.

Which sample a slot holds is computed, not stored: each old worker's shuffle depends on nothing but its seed and its
range (webdataset's buffer shuffle draws from its RNG without looking at the items), so it is replayed on sample
positions (integers), and only the samples this rank needs are read, each at its place in its shard (ShardIndex).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ds_distil.core.errors import CorruptShardError
from ds_distil.data.samples import ShardIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """What lays an epoch out: ranks, data-loader workers per rank, micro batch."""

    world_size: int
    workers: int
    batch_size: int

    @property
    def row(self) -> int:
        """Slots one micro step takes over all ranks."""
        return self.world_size * self.batch_size

    def slots(self, n_samples: int) -> int:
        """The epoch's slots: T rows of W x B (T = ceil(N / (W B)), stream.plan_rank's steps)."""
        return math.ceil(n_samples / self.row) * self.row

    @classmethod
    def of(cls, record: dict) -> Layout:
        return cls(int(record["world_size"]), int(record["workers"]), int(record["batch_size"]))

    def text(self) -> str:
        return f"{self.world_size} rank(s) x micro batch {self.batch_size}, {self.workers} worker(s)"


class SlotSource:
    """The sample position (in the epoch's sequence; None: padding) of each slot of an epoch laid out as `layout`, asked
    in increasing slot order. `dataset` is the stream's _EpochDataset of that epoch: it knows the shard order, the
    shuffle and the plan of every rank."""

    def __init__(self, dataset: Any, layout: Layout):
        self.dataset, self.layout = dataset, layout
        self.plans = [dataset.worker_plans(layout, q) for q in range(layout.world_size)]
        self.open: dict[tuple[int, int], tuple[Iterator[int | None], int]] = {}  # (rank, worker) -> (its items, next index)

    def position(self, slot: int) -> int | None:
        L = self.layout
        row, rest = divmod(slot, L.row)
        rank, b = divmod(rest, L.batch_size)
        worker = row % L.workers
        index = (row // L.workers) * L.batch_size + b  # in that worker's output: its batches are rows worker, worker + K, ...
        items, at = self.open.get((rank, worker)) or (self._items(rank, worker), 0)
        if index < at:
            raise AssertionError(f"slots must be asked in increasing order (rank {rank} worker {worker}: {index} < {at})")
        for _ in range(index - at):
            next(items)
        item = next(items)
        self.open[(rank, worker)] = (items, index + 1)
        return item

    def _items(self, rank: int, worker: int) -> Iterator[int | None]:
        plan = self.plans[rank][worker]
        yield from self.dataset.shuffled(self.dataset.positions(plan.start, plan.real), plan, rank)
        while True:  # padding, and the places of samples in shards skipped as corrupt
            yield None


class PositionReader:
    """Samples by their position in the epoch's sequence, read one by one at their place in their shard's tar; the
    shards' indexes are kept for the few shards being read (least recently used ones are dropped)."""

    def __init__(self, dataset: Any, keep: int = 16):
        self.dataset = dataset
        self.order = dataset.epoch_order()
        self.starts = np.cumsum([0] + [n for _, n in self.order]).tolist()
        self.indexes: OrderedDict[str, ShardIndex] = OrderedDict()
        self.keep = keep
        self.skipped = 0

    def read(self, position: int) -> tuple[np.ndarray, int] | None:
        k = bisect.bisect_right(self.starts, position) - 1
        path, n = self.order[k]
        try:
            if path in self.dataset.bad_shards:
                raise CorruptShardError(path, self.dataset.bad_shards[path])
            index = self.indexes.pop(path, None) or ShardIndex(path, self.dataset.seq_len, self.dataset.vocab_size, n)
            self.indexes[path] = index
            while len(self.indexes) > self.keep:
                self.indexes.popitem(last=False)
            return index.read(position - self.starts[k])
        except CorruptShardError as e:
            if not self.dataset.cfg.skip_corrupt_shards:
                raise
            self.skipped += 1
            log.warning("skipping a sample of corrupt shard %s (%d skipped by this worker): %s", path, self.skipped, e.what)
            return None
