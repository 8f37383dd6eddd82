"""Streaming prepared shards to the ranks: split, shuffle, MLM masking, equal steps, exact resume.

How an epoch is laid out (all of it is a pure function of seed, epoch, world size, workers and
micro-batch size, which is what makes resuming exact):

* The shards are put in a seeded per-epoch order and read as one sequence of N samples.
* Rank r gets a contiguous range of about N / W of them (sizes differ by at most one). Every rank
  runs the same T = ceil(N / (W * B)) steps; the few slots left over at the end of a rank's last
  batches are padding samples (all [PAD], no MLM target), so every real sample is seen exactly
  once per epoch and no rank waits for another at the epoch's end.
* Rank batch j comes from DataLoader worker j % K. Each worker owns a contiguous part of the
  rank's range, reads it with webdataset's tar reader (whole shards mostly, a boundary shard
  from an offset), shuffles it in a bounded buffer seeded by (seed, epoch, rank, worker), and
  fills its batches; its padding slots come last.
* The MLM masking of rank batch j is drawn from a generator seeded by (seed, epoch, rank, j).

The position is (epoch, batches delivered in that epoch). A worker resumes by replaying its
tar range and shuffle buffer up to the samples it had already produced (no masking or
collation), so no sample is repeated or skipped. We split shards by sample ranges rather than
with `wds.split_by_node` because whole-shard splitting cannot give equal steps or
exactly-once epochs when the shard count is not a multiple of ranks x workers.

Resumed on another layout (ranks, workers, micro batch), the rest of the epoch is the rest of the
epoch's own sequence of slots, split for the new ranks (ds_distil/data/reshard.py); the position
then also holds the epoch's layout and where in its sequence this process began (`origin`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ds_distil.core.dist import rank_share, rank_world
from ds_distil.core.errors import CorruptShardError, UserError
from ds_distil.data.manifest import Manifest
from ds_distil.data.masking import mask_tokens, max_masked_per_sample, static_positions
from ds_distil.data.reshard import Layout, PositionReader, SlotSource
from ds_distil.data.samples import read_shard
from ds_distil.data.teacher_cache import TeacherCache, data_made_for
from ds_distil.schema.distill import DataConfig

log = logging.getLogger(__name__)

ERROR_KEY = "__worker_error__"  # a one-line error raised in a data-loader worker, handed over as data


def derive_seed(*parts) -> int:
    """A 64-bit seed from the parts (seed, epoch, rank, a name, ...): every random choice of the stream and of
    validation's fixed masks is a pure function of what it is for."""
    return int.from_bytes(hashlib.sha256("-".join(map(str, parts)).encode()).digest()[:8], "little")


VAL_MASK_SEED = 20240917  # fixed: not data.seed, so that runs with other training seeds see the same validation masks


def validation_masks(ids: np.ndarray, index: int, special_ids: torch.Tensor, random_ids: torch.Tensor, mask_id: int,
                     cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of one held-out sample: its masks depend on its index in the split alone (validation's, and
    a teacher cache's held-out copy)."""
    g = torch.Generator().manual_seed(derive_seed(VAL_MASK_SEED, "val-mask", index) % 2**63)
    out = mask_tokens(torch.from_numpy(ids.astype(np.int64))[None], special_ids, random_ids, mask_id, cfg, g)
    return out["input_ids"][0], out["labels"][0]


def static_masks(ids: torch.Tensor, indices: list[int], copy: int, split_seed: int, special_ids: torch.Tensor,
                 random_ids: torch.Tensor, mask_id: int, cfg: DataConfig) -> dict[str, torch.Tensor]:
    """data.masking=static: each sample [B, L] masked on its own by a generator seeded by (the split's seed, its index in
    the split, the copy): the same masks whatever the ranks, batch size, workers or resume, and what a teacher cache
    holds targets for (padding rows, index -1, have nothing to mask)."""
    rows = [mask_tokens(ids[i:i + 1], special_ids, random_ids, mask_id, cfg,
                        torch.Generator().manual_seed(derive_seed(split_seed, "static-mask", index, copy) % 2**63))
            for i, index in enumerate(indices)]
    return {key: torch.cat([r[key] for r in rows]) for key in rows[0]}


# ------------------------------------------------------------------------------------ the layout


@dataclass(frozen=True)
class WorkerPlan:
    start: int  # first position (in the epoch's sample sequence) this worker reads
    real: int  # real samples it reads
    batches: list[int]  # the rank batch indices it produces, in order


def plan_rank(n_samples: int, world_size: int, batch_size: int, workers: int, rank: int) -> tuple[int, list[WorkerPlan]]:
    """Steps per epoch T and each worker's share of rank `rank` (see the module docstring)."""
    steps = math.ceil(n_samples / (world_size * batch_size))
    rank_start, rank_real = rank_share(n_samples, world_size=world_size, rank=rank)
    plans, offset = [], rank_start
    for k in range(workers):
        batches = list(range(k, steps, workers))
        real = sum(min(batch_size, max(0, rank_real - j * batch_size)) for j in batches)
        plans.append(WorkerPlan(offset, real, batches))
        offset += real
    return steps, plans


@dataclass
class StreamPosition:
    epoch: int = 0
    step: int = 0  # batches delivered to this rank in `epoch`


# ------------------------------------------------------------------------------------ one epoch


class _EpochDataset(IterableDataset):
    """One rank's batches of one epoch, from batch `start_step` on; with `segment` (origin, the epoch's layout), the rest
    of an epoch laid out otherwise, from slot `origin` of its sequence (reshard.py). Plain data: picklable."""

    def __init__(self, stream: MLMStream, epoch: int, start_step: int, segment: tuple[int, Layout] | None = None):
        self.shards = [(str(s.path), s.samples) for s in stream.shards]
        self.n_samples = stream.n_samples
        self.segment = segment
        self.cfg = stream.cfg
        self.split_seed = stream.seed
        self.shuffle = stream.shuffle
        self.epoch, self.start_step = epoch, start_step
        self.rank, self.world_size = stream.rank, stream.world_size
        self.batch_size, self.workers = stream.batch_size, stream.workers
        self.seq_len, self.vocab_size = stream.seq_len, stream.vocab_size
        self.pad_id, self.mask_id = stream.pad_id, stream.mask_id
        self.special_ids = stream.special_ids
        self.random_ids = stream.random_ids
        self.max_masked = stream.max_masked
        self.bad_shards = stream.bad_shards  # found corrupt at start (skip_corrupt_shards): not read at all
        self.skipped_shards = 0
        self.cache, self.split = stream.cache, stream.split

    # -- reading

    def epoch_order(self) -> list[tuple[str, int]]:
        if not self.shuffle:
            return self.shards
        perm = np.random.default_rng(derive_seed(self.split_seed, self.epoch, "shards")).permutation(len(self.shards))
        return [self.shards[i] for i in perm]

    def _read_range(self, start: int, count: int) -> Iterator[tuple[np.ndarray, int]]:
        """Samples at positions [start, start+count) of the epoch's sequence, as (ids, index in split).

        Each sample is checked as it is read (.npy of int32[seq_len], ids inside the vocabulary), so a
        corrupt shard is named here, or with skip_corrupt_shards the rest of it is skipped and counted.
        """
        for path, n, _, skip, take in self._spans(start, count):
            got = 0
            try:
                if path in self.bad_shards:
                    raise CorruptShardError(path, self.bad_shards[path])
                for sample in read_shard(path, self.seq_len, self.vocab_size, n, skip, take):
                    yield sample
                    got += 1
            except CorruptShardError as e:
                if not self.cfg.skip_corrupt_shards:
                    raise
                self.skipped_shards += 1
                log.warning("skipping the rest of corrupt shard %s (%d samples; %d shard(s) skipped by this worker): %s",
                            path, take - got, self.skipped_shards, e.what)

    def worker_plans(self, layout: Layout, rank: int) -> list[WorkerPlan]:
        """Each worker's share of rank `rank` of this epoch laid out as `layout`."""
        return plan_rank(self.n_samples, layout.world_size, layout.batch_size, layout.workers, rank)[1]

    def positions(self, start: int, count: int) -> Iterator[int]:
        """The positions `_read_range(start, count)` reads, without reading: those of shards known to be corrupt
        (skipped) left out."""
        for path, _, first, skip, take in self._spans(start, count):
            if path not in self.bad_shards:
                yield from range(first + skip, first + skip + take)

    def _spans(self, start: int, count: int) -> Iterator[tuple[str, int, int, int, int]]:
        """Positions [start, start+count) of the epoch's sequence, shard by shard: (shard, its samples, the position of
        its first sample, samples of it skipped, samples of it taken). What `_read_range` reads and `positions` counts."""
        pos = 0
        for path, n in self.epoch_order():
            if count <= 0:
                return
            if pos + n > start:
                skip = max(0, start - pos)
                take = min(n - skip, count)
                yield path, n, pos, skip, take
                count -= take
            pos += n

    def shuffled(self, items: Iterator, plan: WorkerPlan, rank: int) -> Iterator:
        """A worker's items in the order the worker hands them out: webdataset's buffer shuffle, seeded by (seed, epoch,
        rank, the worker's range). It draws without looking at the items, so samples and their positions come out in the
        same order."""
        if not self.shuffle:
            return items
        from webdataset.filters import _shuffle

        rng = random.Random(derive_seed(self.split_seed, self.epoch, rank, plan.start, "buffer"))
        size = min(self.cfg.shuffle_buffer, max(plan.real, 1))
        return _shuffle(items, bufsize=size, initial=size, rng=rng)

    def _worker_items(self, plan: WorkerPlan) -> Iterator[tuple[np.ndarray, int] | None]:
        """The worker's slots in order: its real samples (shuffled), then None for padding."""
        items = self.shuffled(self._read_range(plan.start, plan.real), plan, self.rank)
        n = 0
        for item in items:
            n += 1
            yield item
        while n < len(plan.batches) * self.batch_size:  # padding, and samples of skipped corrupt shards
            n += 1
            yield None

    # -- masking, collation

    def _static_masks(self, ids: torch.Tensor, indices: list[int]) -> dict[str, torch.Tensor]:
        return static_masks(ids, indices, self.epoch % self.cfg.mask_copies, self.split_seed, self.special_ids, self.random_ids,
                            self.mask_id, self.cfg)


    def _batch(self, items: list, step: int, slot: int | None = None) -> dict[str, torch.Tensor]:
        pad = (np.full(self.seq_len, self.pad_id, dtype=np.int32), -1)
        decoded = [pad if it is None else it for it in items]
        ids = torch.from_numpy(np.stack([d[0] for d in decoded]).astype(np.int64))
        if self.cfg.masking == "static":
            batch = self._static_masks(ids, [d[1] for d in decoded])
        else:  # dynamic masks of a batch of the rest of a resharded epoch: seeded by its first slot
            parts = (self.rank, step) if slot is None else ("slot", slot)
            g = torch.Generator().manual_seed(derive_seed(self.split_seed, self.epoch, *parts, "mask") % 2**63)
            batch = mask_tokens(ids, self.special_ids, self.random_ids, self.mask_id, self.cfg, g)
        batch["attention_mask"] = (ids != self.pad_id).long()
        batch["index"] = torch.tensor([d[1] for d in decoded], dtype=torch.long)
        batch["positions"], batch["targets"] = static_positions(batch["labels"], self.max_masked)
        if self.cache is not None:
            batch.update(self.cache.batch_targets(self.split, self.epoch % self.cfg.mask_copies, batch["labels"],
                                                  [d[1] for d in decoded], self.max_masked))
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        physical, n_physical = (info.id, info.num_workers) if info else (0, 1)
        assert n_physical == self.workers, "the DataLoader must have the stream's worker count"
        if self.segment is not None:
            yield from self._segment(physical)
            return
        steps, plans = plan_rank(self.n_samples, self.world_size, self.batch_size, self.workers, self.rank)
        # DataLoader always starts its round-robin at worker 0; the next batch due is start_step.
        plan = plans[(self.start_step + physical) % self.workers]
        done = sum(1 for j in plan.batches if j < self.start_step)
        items = self._worker_items(plan)
        try:
            for _ in range(done * self.batch_size):  # replay: read and shuffle, no masking or collation
                next(items)
            for j in plan.batches[done:]:
                yield self._batch([next(items) for _ in range(self.batch_size)], j)
        except UserError as e:  # a corrupt shard or cache file, a cache masked otherwise than this run
            # Raised in a DataLoader worker, it would reach the main process as a RuntimeError wrapping a
            # traceback; handed over as data, the main process raises the same one-line error as the start-up check.
            yield {ERROR_KEY: (e.shard, e.what, e.advice) if isinstance(e, CorruptShardError) else (str(e),)}

    def _segment(self, physical: int) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's batches of the rest of an epoch laid out otherwise: batch i (from start_step on, every workers-th
        one: the DataLoader's round-robin starts at worker 0) holds slots origin + (i W + rank) B .. + B of the epoch's
        sequence."""
        origin, layout = self.segment
        end = layout.slots(self.n_samples)
        steps = math.ceil((end - origin) / (self.world_size * self.batch_size))
        slots, reader = SlotSource(self, layout), PositionReader(self, keep=max(16, 2 * layout.world_size * layout.workers))
        try:
            for i in range(self.start_step + physical, steps, self.workers):
                first = origin + (i * self.world_size + self.rank) * self.batch_size
                places = [slots.position(f) if f < end else None for f in range(first, first + self.batch_size)]
                yield self._batch([None if p is None else reader.read(p) for p in places], i, slot=first)
        except UserError as e:
            yield {ERROR_KEY: (e.shard, e.what, e.advice) if isinstance(e, CorruptShardError) else (str(e),)}


# ---------------------------------------------------------------------------------- the stream


class MLMStream:
    """Batches for one rank, epoch after epoch, with a position that can be saved and restored.

    `for batch in stream` runs forever (the trainer decides when to stop); `epoch_batches()` runs to
    the end of the current epoch. Each batch has input_ids, attention_mask, labels (MLM targets,
    IGNORE_INDEX elsewhere), index (the sample's index in its split, -1 for padding), and positions /
    targets: the masked tokens as a fixed-size list (see static_positions).
    """

    def __init__(
        self,
        manifest: Manifest,
        cfg: DataConfig,
        batch_size: int,
        split: str = "train",
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool | None = None,
        tokenizer=None,
        keep_ids: torch.Tensor | None = None,
        cache: TeacherCache | None = None,
    ):
        if rank is None or world_size is None:
            rank, world_size = rank_world()
        if batch_size < 1:
            raise UserError(f"micro batch size must be >= 1, got {batch_size}")
        self.manifest, self.cfg, self.split = manifest, cfg, split
        if tokenizer is not None:
            from ds_distil.data.tokenizer import vocab_hash

            manifest.check_tokenizer(vocab_hash(tokenizer), len(tokenizer), what=f"tokenizer '{tokenizer.name_or_path}'")
        self.shards = manifest.shards(split)
        self.n_samples = sum(s.samples for s in self.shards)
        if self.n_samples == 0:
            raise UserError(f"{manifest.directory} has no '{split}' samples; prepare more data (or a larger val_fraction)")
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.workers = max(cfg.num_workers, 1)
        self.shuffle = cfg.shuffle if shuffle is None else shuffle
        self.seed = derive_seed(cfg.seed, split)
        tok = manifest.tokenizer
        self.seq_len, self.vocab_size = manifest.seq_len, int(tok["vocab_size"])
        self.pad_id, self.mask_id = int(tok["pad_id"]), int(tok["mask_id"])
        self.special_ids = torch.tensor(tok["special_ids"], dtype=torch.long)
        self.random_ids = _ordinary_ids(manifest)
        self.keep_ids = keep_ids
        if keep_ids is not None:  # a trimmed student vocabulary: random replacements only from tokens it has
            self.random_ids = self.random_ids[keep_ids[self.random_ids]]
        self.max_masked = max_masked_per_sample(self.seq_len, cfg.mlm_probability)
        self.cache = cache  # batches carry the cache's teacher targets of their masked slots
        if cache is not None:
            if cfg.masking != "static":
                raise UserError(f"a teacher cache holds targets for static masks; set data.masking=static (and "
                                f"data.mask_copies={cache.copies}, as the cache was built)")
            cache.check(data_made_for(manifest, cfg))
        self.steps_per_epoch, _ = plan_rank(self.n_samples, world_size, batch_size, self.workers, rank)
        self.position = StreamPosition()
        self.layout = Layout(world_size, self.workers, batch_size)
        self.epoch_layout = self.layout  # the layout the current epoch began under (reshard.py)
        self.origin = 0  # the slot of the epoch's sequence this process's part of the epoch began at
        self._live = None  # the DataLoader iterator batches come from now
        self.bad_shards = self._verify(rank, world_size)

    def _verify(self, rank: int, world_size: int) -> dict[str, str]:
        """Shard sizes (all) and checksums (this rank's share) against the manifest. A bad shard stops the
        run here with the same line as mid-stream, or with skip_corrupt_shards is skipped by every rank:
        the ranks share what they found (each hashed only its share)."""
        cfg = self.cfg
        dist = torch.distributed
        shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size
        bad = self.manifest.verify(self.split, checksums=cfg.verify_checksums, rank=rank, world_size=world_size,
                                   skip_corrupt=cfg.skip_corrupt_shards,
                                   all_checksums=cfg.skip_corrupt_shards and world_size > 1 and not shared)
        if cfg.skip_corrupt_shards and shared and world_size > 1:
            found = [None] * world_size
            dist.all_gather_object(found, bad)
            bad = {k: v for part in found for k, v in part.items()}
        if bad and rank == 0:
            for path, what in bad.items():
                log.warning("skip_corrupt_shards: skipping corrupt shard %s (%s); its samples become padding, each epoch "
                            "keeps its step count", path, what)
        return bad

    @property
    def resharded(self) -> bool:
        """The current epoch goes on on another layout than it began under (or from a slot that is not a row of ours)."""
        return self.epoch_layout != self.layout or self.origin != 0

    def steps_this_epoch(self) -> int:
        """This rank's micro batches of the current epoch from `origin` (all of it: steps_per_epoch)."""
        if not self.resharded:
            return self.steps_per_epoch
        return math.ceil((self.epoch_layout.slots(self.n_samples) - self.origin) / self.layout.row)

    def consumed(self) -> int:
        """Slots of the current epoch's sequence taken by all ranks so far: the position in global terms."""
        return self.origin + self.position.step * self.layout.row

    def epoch_progress(self) -> float:
        """The epoch and the fraction of it taken, e.g. 1.25."""
        return self.position.epoch + self.consumed() / self.epoch_layout.slots(self.n_samples)

    def loader(self, epoch: int, start_step: int) -> DataLoader:
        dataset = _EpochDataset(self, epoch, start_step, (self.origin, self.epoch_layout) if self.resharded else None)
        k = self.cfg.num_workers
        # Its own generator: creating a DataLoader iterator draws a seed, and from the global RNG that
        # would shift dropout after a resume. (Our data does not depend on worker seeds.)
        return DataLoader(dataset, batch_size=None, num_workers=k, prefetch_factor=4 if k else None,
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed % 2**63))

    def epoch_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; the position advances as batches are handed out."""
        pos = self.position
        if pos.step < self.steps_this_epoch():
            self._live = iter(self.loader(pos.epoch, pos.step))
            for batch in self._live:
                if ERROR_KEY in batch:
                    args = batch[ERROR_KEY]
                    raise CorruptShardError(*args) if len(args) == 3 else UserError(*args)
                pos.step += 1
                yield batch
        pos.epoch, pos.step = pos.epoch + 1, 0
        self.epoch_layout, self.origin = self.layout, 0  # the next epoch is laid out for the ranks running now

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from self.epoch_batches()

    def abandon(self) -> None:
        """Kill this rank's data-loader workers now, for a process that stops while waiting for them (one stuck in a
        read answers no gentler signal, and the interpreter would wait for it at exit). The stream cannot be used
        afterwards. torch has no public handle on the workers: this reads the DataLoader iterator's own list."""
        it, self._live = self._live, None
        workers = getattr(it, "_workers", None) or []
        if getattr(it, "_worker_pids_set", False):  # else torch's SIGCHLD handler takes the kill for a crash and raises
            from torch.utils.data._utils.signal_handling import _remove_worker_pids

            _remove_worker_pids(id(it))
            it._worker_pids_set = False
        for w in workers:
            if w.is_alive():
                w.kill()
        for w in workers:
            w.join(timeout=5)

    def read(self, start: int, count: int) -> Iterator[tuple[np.ndarray, int]]:
        """Samples at positions [start, start + count) of the split in shard order (never shuffled),
        as (ids, index in the split), checked as training reads them. For held-out evaluation."""
        dataset = _EpochDataset(self, 0, 0)
        dataset.shuffle = False
        return dataset._read_range(start, count)

    def _layout(self) -> dict:
        shard_ids = hashlib.sha256("".join(s.sha256 for s in self.shards).encode()).hexdigest()
        return {"world_size": self.world_size, "workers": self.workers, "batch_size": self.batch_size, "seed": self.cfg.seed,
                "shuffle": self.shuffle, "split": self.split, "shards_sha256": shard_ids}

    def state_dict(self) -> dict:
        """position: (epoch, batches this rank took since `origin`); layout: this process's; epoch_layout: the one the
        epoch began under. The slots taken, `origin + step x world_size x batch_size`, are the same on every rank."""
        return {"position": asdict(self.position), "layout": self._layout(), "origin": self.origin,
                "epoch_layout": asdict(self.epoch_layout)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` (of this or any other layout) stopped. Ranks, workers and micro batch may differ: the
        rest of the epoch is then the rest of its own sequence, split for this layout; the data itself (seed, shuffle,
        split, shards) may not, mid-epoch."""
        pos = StreamPosition(**state["position"])
        saved = state["layout"]
        now = self._layout()
        fixed = ("seed", "shuffle", "split", "shards_sha256")
        changed = {k: (saved[k], now[k]) for k in fixed if k in saved and saved[k] != now[k]}
        consumed = int(state.get("origin", 0)) + pos.step * Layout.of(saved).row
        if consumed and changed:
            raise UserError(f"cannot resume mid-epoch (epoch {pos.epoch}, {consumed} slots of it taken) on other data {changed} "
                            "(saved, now); resume with the run's data.seed, data.shuffle and shards")
        epoch_layout = Layout.of(state.get("epoch_layout", saved))  # a checkpoint from before: its epoch began on its layout
        if epoch_layout == self.layout and consumed % self.layout.row == 0:  # this epoch's own layout: the plain path
            self.origin, self.position = 0, StreamPosition(pos.epoch, consumed // self.layout.row)
        else:
            self.origin, self.position = consumed, StreamPosition(pos.epoch, 0)
        self.epoch_layout = epoch_layout


def _ordinary_ids(manifest: Manifest) -> torch.Tensor:
    """Ids a random replacement may draw: every vocabulary entry but special and [unusedN] tokens."""
    from ds_distil.data.tokenizer import load_tokenizer

    vocab = load_tokenizer(str(manifest.tokenizer_dir)).get_vocab()
    special = set(manifest.tokenizer["special_ids"])
    unused = re.compile(r"^\[unused\d+\]$")
    return torch.tensor(sorted(i for t, i in vocab.items() if i not in special and not unused.match(t)), dtype=torch.long)
