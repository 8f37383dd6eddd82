"""`ds-distil teacher-cache`: run the frozen teacher once over prepared shards and store, per sample and mask copy, its
sparse targets at the masked positions (format: ds_distil/data/teacher_cache.py; targets: sparse_targets.py).

A command of its own, not a flag of `distill`: its output is a directory of its own kind that many runs read (Tables
2, 3 and 5 of a study, every seed), it is built on 1..N ranks like a run, and a study makes it a stage of its own.

Work is split by corpus shard (shard i on rank i % world_size), each rank writing whole cache files: a file is written
beside its final name and renamed, then a small record of its sha256 is written; `--resume` keeps every file whose
record matches and redoes the rest (the draws are seeded by the shard and copy, so a redone file is the same bytes).
Rank 0 writes manifest.json last, after every rank's files: only then is the directory a cache.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ds_distil.core import rundir
from ds_distil.core.checked import read_json
from ds_distil.core.dist import all_gather_objects, barrier, broadcast
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_file, atomic_write, atomic_write_json
from ds_distil.core.progress import Progress
from ds_distil.data.manifest import load_manifest, sha256_file
from ds_distil.data.masking import IGNORE_INDEX, static_positions
from ds_distil.data.samples import read_shard
from ds_distil.data.stream import MLMStream, derive_seed, static_masks, validation_masks
from ds_distil.data.teacher_cache import (FORMAT, MANIFEST, TeacherCache, data_made_for, file_name, load_cache, record_bytes,
                                          record_dtype, vocab_made_for)
from ds_distil.data.vocab import load_vocab_map
from ds_distil.distill import sparse_targets
from ds_distil.model.build import build_teacher, weights_sha256
from ds_distil.model.forward import MaskedLM
from ds_distil.model.surgery import prepare_trimmed_run
from ds_distil.runtime import engine as eng
from ds_distil.schema.cache import TeacherCacheConfig

log = logging.getLogger(__name__)


def build_cache(cfg: TeacherCacheConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    if resume and overwrite:
        raise UserError("--resume continues the cache in --out, --overwrite replaces it: pass one of them")
    d = eng.init_distributed()
    inputs = [Path(p) for p in (cfg.data.shards, cfg.vocab, cfg.teacher.pretrained, cfg.teacher.config) if p and Path(p).exists()]
    rd = rundir.claim_on_rank0(d.rank, lambda: rundir.claim(out, "teacher-cache", overwrite=overwrite, inputs=inputs, in_place=True))
    try:
        path = _build(cfg, rd, resume, d)
    except BaseException:
        if d.rank == 0:
            rd.abort()
            rd.release()
        raise
    if d.rank == 0:
        rd.release()
    return path


def _build(cfg: TeacherCacheConfig, rd: rundir.RunDir, resume: bool, d) -> Path:
    directory = rd.path
    if (directory / MANIFEST).exists() and not resume:
        raise UserError(f"{directory} is a finished teacher cache; pass --overwrite to build it again")
    if any(directory.glob("copy*/*.npy")) and not resume:
        raise UserError(f"{directory} holds part of a teacher cache; pass --resume to finish it (the files already "
                        "written are kept), or --overwrite to start again")
    manifest = load_manifest(cfg.data.shards)
    data_cfg = dataclasses.replace(cfg.data, masking="static")
    tok = manifest.tokenizer
    vocab, pad = int(tok["vocab_size"]), int(tok["pad_id"])
    vmap = load_vocab_map(cfg.vocab) if cfg.vocab else None
    if vmap is not None:
        vmap.check_shards(manifest)
    s = cfg.cache
    present = [name for name in s.splits if name in manifest.data["splits"] and manifest.num_samples(name) > 0]
    if "train" not in present:
        raise UserError(f"cache.splits {s.splits} has no training split with samples in {manifest.directory}: a cache is for "
                        "training; keep train in cache.splits")
    keep_ids = vmap.is_kept() if vmap is not None else None
    # the stream's own masking parameters (its random replacement tokens follow the vocabulary)
    streams = {split: MLMStream(manifest, data_cfg, batch_size=s.batch_size, split=split, rank=0, world_size=1, shuffle=False,
                                keep_ids=keep_ids) for split in present}
    copies = {split: data_cfg.mask_copies if split == "train" else 1 for split in present}  # held-out: validation's masks, once
    _check_size(directory, {split: manifest.num_samples(split) * copies[split] for split in present},
                streams["train"].max_masked, s, vmap.size if vmap is not None else vocab, resume, d.rank)
    torch.manual_seed(cfg.seed)  # a randomly initialised teacher (preset, config): the one a run with train.seed = seed builds
    teacher = build_teacher(cfg.teacher, vocab, pad, 1)
    teacher_sha = weights_sha256(teacher)
    t_vocab = vocab
    if vmap is not None:
        t_vocab = prepare_trimmed_run(vmap, teacher, pad, int(tok["unk_id"]), 1).vocab
    teacher_config = teacher.config.to_dict()
    teacher = eng.place_teacher(teacher, d.device, eng.teacher_dtype(cfg.teacher.dtype, d.device))
    lm = MaskedLM(teacher, t_vocab)
    made_for = {**data_made_for(manifest, data_cfg), "vocab": vocab_made_for(tok, vmap), "teacher_sha256": teacher_sha,
                "temperature": s.temperature, "method": s.method, "k": s.k,
                "proposal_temperature": s.proposal_temperature or s.temperature}
    _same_build(directory, {**made_for, "splits": s.splits}, resume, d.rank)

    splits = {}
    for split in present:
        stream, shards = streams[split], manifest.shards(split)
        mine = [(copy, i) for copy in range(copies[split]) for i in range(len(shards)) if i % d.world_size == d.rank]
        bar = Progress(sum(shards[i].samples for _, i in mine), f"teacher-cache {split}", "sample", enabled=d.rank == 0)
        t0, done = time.perf_counter(), {}
        for copy, i in mine:
            name = file_name(split, copy, i)
            done[name] = _done_record(directory, name) if resume else None
            if done[name] is None:  # the bar moves per batch: a file of 4,096 samples is minutes of teacher passes
                done[name] = _write_file(directory, name, shards[i], copy, stream, lm, s, d.device, data_cfg, bar)
            else:
                bar.update(shards[i].samples)
        bar.close()
        if d.rank == 0:
            log.info("teacher-cache %s: %d files in %.0f s", split, len(mine), time.perf_counter() - t0)
        found = {k: v for part in all_gather_objects(done) for k, v in part.items()}
        splits[split] = {"copies": [[{"name": file_name(split, c, i), "samples": shards[i].samples,
                                      "sha256": found[file_name(split, c, i)]} for i in range(len(shards))]
                                    for c in range(copies[split])]}
    barrier()
    if d.rank == 0:
        atomic_write_json(directory / MANIFEST, {
            "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "k": s.k, "max_masked": stream.max_masked,
            "masking": made_for["masking"], "made_for": made_for, "teacher": {"source": dataclasses.asdict(cfg.teacher),
                                                                               "config": teacher_config},
            "shards": str(Path(cfg.data.shards).resolve()), "splits": splits}, fsync=True)
        rd.commit()
    barrier()
    return rd.out


def _check_size(directory: Path, records: dict[str, int], max_masked: int, s, vocab: int, resume: bool, rank: int) -> None:
    """Say what the cache will take before anything is written, and refuse (every rank, rank 0's verdict) a K that would
    store more per masked position than the teacher's whole distribution, a cache larger than cache.max_gib, or one the
    file system under --out has no room for. `records`: per split, samples x mask copies."""
    problem = None
    if rank == 0:
        n = sum(records.values())
        each = record_bytes(max_masked, s.k)
        total = n * each
        kept = sum(p.stat().st_size for p in directory.glob("copy*/*.npy")) if resume else 0  # what --resume keeps, at most
        free = shutil.disk_usage(directory).free
        log.info("teacher-cache: %s records (%s) of %.1f KiB (K = %d draws at each of %d masked slots): ~%s on disk%s",
                 f"{n:,}", ", ".join(f"{k} {v:,}" for k, v in records.items()), each / 1024, s.k, max_masked, _gib(total),
                 f", ~{_gib(total - kept)} of it still to write" if kept else "")
        if 8 * s.k > 4 * vocab:
            problem = (f"cache.k={s.k} stores more per masked position ({s.k} ids and weights, {8 * s.k:,} bytes) than the teacher's "
                       f"whole distribution over the {vocab:,}-token vocabulary ({4 * vocab:,} bytes); a K of 16 to 128 is what "
                       "sampled targets are for: lower cache.k")
        elif total > s.max_gib * 2**30:
            problem = (f"this cache would take ~{_gib(total)} ({n:,} records of {each / 1024:,.1f} KiB: K = {s.k} x {max_masked} "
                       f"masked slots), more than cache.max_gib={s.max_gib:g}; lower cache.k or data.mask_copies, or raise "
                       "cache.max_gib to build it")
        elif total - kept > free:
            problem = (f"this cache needs ~{_gib(total - kept)} more, and the file system of {directory} has {_gib(free)} free; "
                       "free space there or choose another --out")
    problem = broadcast([problem])[0]
    if problem:
        raise UserError(problem)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _same_build(directory: Path, settings: dict, resume: bool, rank: int) -> None:
    """The files a --resume keeps must come from the same settings: build.json records them at the start of a build,
    and a resume with other settings (another teacher, K, T, masking, corpus, vocabulary) is refused naming the first
    difference, before anything is written."""
    record = directory / "build.json"
    if resume and record.is_file():
        began = read_json(record, "start again with --overwrite")
        if not isinstance(began, dict):
            raise UserError(f"{record} holds {type(began).__name__}, not the settings a build began with; start again with --overwrite")
        TeacherCache(directory, {"made_for": began}).check(
            settings, advice="resume with the settings the build began with, or start again with --overwrite")
    elif rank == 0:
        atomic_write_json(record, settings, fsync=True)
    barrier()


def _done_record(directory: Path, name: str) -> str | None:
    """The sha256 of a cache file written whole by an earlier (interrupted) build, or None to redo it."""
    path, record = directory / name, directory / f"{name}.sha256"
    try:
        sha = record.read_text().strip()
    except OSError:
        return None
    return sha if path.is_file() and sha256_file(path) == sha else None


@torch.no_grad()
def targets(lm: MaskedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, s,
            generator: torch.Generator | None) -> sparse_targets.SparseTargets:
    """The teacher's sparse targets at a batch's real masked slots (`positions`): what the builder stores per batch, and
    what the throughput benchmark times as the cost of building a cache."""
    logits = lm(input_ids, attention_mask, positions).logits
    if s.method == "sampled":
        return sparse_targets.sampled(logits, s.k, s.temperature, s.proposal_temperature, generator)
    return sparse_targets.top_k(logits, s.k, s.temperature)


@torch.no_grad()
def _write_file(directory: Path, name: str, shard, copy: int, stream: MLMStream, lm: MaskedLM, s, device, data_cfg,
                bar: Progress) -> str:
    m = stream.max_masked
    records = np.zeros(shard.samples, dtype=record_dtype(m, s.k))
    records["positions"] = -1
    g = torch.Generator(device=device).manual_seed(derive_seed(data_cfg.seed, "cache-draws", name) % 2**63)
    samples = read_shard(shard.path, stream.seq_len, stream.vocab_size, shard.samples)
    row = 0
    while row < shard.samples:
        chunk = [next(samples) for _ in range(min(s.batch_size, shard.samples - row))]
        ids = torch.from_numpy(np.stack([c[0] for c in chunk]).astype(np.int64))
        if stream.split == "train":
            masked = static_masks(ids, [c[1] for c in chunk], copy, stream.seed, stream.special_ids, stream.random_ids,
                                  stream.mask_id, data_cfg)
        else:  # validation's masks (distill/evaluate.py), so that a cached run validates on what it caches
            rows = [validation_masks(c[0], c[1], stream.special_ids, stream.random_ids, stream.mask_id, data_cfg) for c in chunk]
            masked = {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}
        positions, _ = static_positions(masked["labels"], m)
        positions = positions[: int((masked["labels"] != IGNORE_INDEX).sum())]  # the real slots come first; no padding rows
        t = targets(lm, masked["input_ids"].to(device), (ids != stream.pad_id).long().to(device), positions.to(device), s, g)
        t_ids, t_weights, t_entropy = t.ids.cpu().numpy(), t.weights.cpu().numpy(), t.entropy.cpu().numpy()
        slot = 0
        for r in range(len(chunk)):
            pos = (masked["labels"][r] != IGNORE_INDEX).nonzero().squeeze(1)
            n = len(pos)
            rec = records[row + r]
            rec["positions"][:n] = pos.numpy()
            rec["targets"][:n] = masked["labels"][r, pos].numpy()
            rec["ids"][:n], rec["weights"][:n], rec["entropy"][:n] = t_ids[slot:slot + n], t_weights[slot:slot + n], t_entropy[slot:slot + n]
            slot += n
        row += len(chunk)
        bar.update(len(chunk))
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:  # np.save's bytes, written by the file itself: a full disk is ENOSPC naming the file
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(records))
        f.write(records.data)
    sha = sha256_file(path)
    atomic_write(directory / f"{name}.sha256", sha + "\n")
    return sha


def describe(path: Path) -> str:
    data = load_cache(path).data
    files = [f for split in data["splits"].values() for copy in split["copies"] for f in copy]
    size = sum((path / f["name"]).stat().st_size for f in files)
    samples = sum(f["samples"] for f in files)
    return (f"{len(files)} files, {samples:,} sample records ({data['masking']['copies']} mask copies), {size / 2**20:.1f} MiB "
            f"({size / max(samples, 1) / 1024:.2f} KiB per sample record, K = {data['k']})")
