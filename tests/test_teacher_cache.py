"""The teacher cache (issue 24): built once over prepared shards, read back by the stream with each batch's masked
slots; a cache made for other data, masks or settings is refused; an interrupted build resumes to the same bytes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_prepare

from ds_distil.core.errors import CorruptShardError, UserError
from ds_distil.data.manifest import load_manifest
from ds_distil.data.stream import MLMStream
from ds_distil.data.teacher_cache import load_cache
from ds_distil.model.build import build_teacher
from ds_distil.model.forward import MaskedLM
from ds_distil.schema.distill import DataConfig, TeacherConfig

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}


def build_args(out, shards) -> list[str]:
    """`ds-distil teacher-cache` as these tests build their cache (a tiny random teacher, K = 8, 2 mask copies)."""
    return [sys.executable, "-m", "ds_distil", "teacher-cache", "--out", str(out), f"data.shards={shards}", "data.num_workers=0",
            "data.mask_copies=2", "teacher.preset=tiny", "cache.k=8", "cache.batch_size=16"]


def build(out, shards, *extra) -> subprocess.CompletedProcess:
    """The command in a process of its own (it starts torch.distributed, which must not live on in the test process)."""
    return subprocess.run([*build_args(out, shards), *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def few_shards(tmp_path_factory, corpus, mbert_tokenizer_dir):
    """300 real documents in shards of 40 samples: a cache of mBERT's vocabulary costs the teacher's head and the draws
    over 119,547 tokens per masked position."""
    out = tmp_path_factory.mktemp("few") / "shards"
    run_prepare(out, [corpus], mbert_tokenizer_dir, max_docs=300, samples_per_shard=40, val_fraction=0.05, seed=1)
    return out


@pytest.fixture(scope="module")
def built(few_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "tiny"
    done = build(out, few_shards)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def stream_with(shards, cache, batch_size=8, **data):
    cfg = DataConfig(**{"shards": str(shards), "num_workers": 0, "masking": "static", "mask_copies": 2, **data})
    return MLMStream(load_manifest(shards), cfg, batch_size=batch_size, rank=0, world_size=1, cache=cache)


def test_the_stream_reads_back_the_cached_targets_of_each_masked_slot(built, few_shards):
    """Round trip: each slot of a batch carries the targets the builder drew for that sample's masked position. The
    entropy a record holds is the teacher's at that position, recomputed here from the stream's own batch: the cache's
    masks, positions and slot order are the stream's."""
    cache = load_cache(built)
    cache.verify("train")
    manifest = load_manifest(few_shards)
    assert cache.k == 8 and cache.copies == 2
    torch.manual_seed(42)  # the builder's seed (TeacherCacheConfig.seed): the same random teacher
    teacher = MaskedLM(build_teacher(TeacherConfig(preset="tiny"), int(manifest.tokenizer["vocab_size"]),
                                     int(manifest.tokenizer["pad_id"]), 1).eval(), int(manifest.tokenizer["vocab_size"]))
    s = stream_with(few_shards, cache)
    for epoch in range(2):  # copy 0, then copy 1
        for b in list(s.epoch_batches())[:3]:
            filled = b["targets"] != -100
            assert b["teacher_ids"].shape == (len(b["targets"]), 8)
            assert (b["teacher_weights"][~filled] == 0).all() and torch.allclose(b["teacher_weights"][filled].sum(-1),
                                                                                 torch.ones(int(filled.sum())))
            with torch.no_grad():
                logits = teacher(b["input_ids"], b["attention_mask"], b["positions"]).logits
            p = F.log_softmax(logits / 2.0, dim=-1)
            assert torch.allclose(b["teacher_entropy"][filled], -(p.exp() * p).sum(-1)[filled], atol=1e-4)
            # the records, read straight from the files, in the slot order
            slot = 0
            for row, index in enumerate(b["index"].tolist()):
                if index < 0:
                    continue
                rec = cache.record("train", epoch, index)
                n = int((rec["positions"] >= 0).sum())
                assert np.array_equal(b["teacher_ids"][slot:slot + n].numpy(), rec["ids"][:n])
                slot += n


def test_a_top_k_cache_holds_the_teachers_k_most_probable_tokens_renormalised(built, few_shards, tmp_path):
    """cache.method=top_k (the biased comparison of the quality study): the same masks and slots as the sampled cache,
    each slot the teacher's k most probable tokens at T with their probabilities renormalised, and the manifest says so."""
    out = tmp_path / "topk"
    done = build(out, few_shards, "cache.method=top_k", "cache.splits=[train]", "data.mask_copies=1")
    assert done.returncode == 0, done.stderr[-3000:]
    cache = load_cache(out)
    assert cache.data["made_for"]["method"] == "top_k" and load_cache(built).data["made_for"]["method"] == "sampled"
    manifest = load_manifest(few_shards)
    vocab = int(manifest.tokenizer["vocab_size"])
    torch.manual_seed(42)
    teacher = MaskedLM(build_teacher(TeacherConfig(preset="tiny"), vocab, int(manifest.tokenizer["pad_id"]), 1).eval(), vocab)
    b = next(iter(stream_with(few_shards, cache, mask_copies=1).epoch_batches()))
    filled = b["targets"] != -100
    with torch.no_grad():
        log_p = F.log_softmax(teacher(b["input_ids"], b["attention_mask"], b["positions"]).logits / 2.0, dim=-1)[filled]
    top, ids = log_p.topk(8, dim=-1)
    assert torch.equal(b["teacher_ids"][filled], ids)
    assert torch.allclose(b["teacher_weights"][filled], F.softmax(top, dim=-1), atol=1e-5)
    refused = build(tmp_path / "no", few_shards, "cache.method=top_k", "cache.proposal_temperature=4.0")
    assert refused.returncode == 2 and "proposal_temperature is for method sampled" in refused.stderr


def test_a_cache_for_other_data_or_masks_is_refused_in_one_line(built, few_shards):
    cache = load_cache(built)
    with pytest.raises(UserError, match="was made for masking.seed = 0, but this run has 5; build a cache for this run"):
        stream_with(few_shards, cache, seed=5)
    with pytest.raises(UserError, match="was made for masking.mlm_probability = 0.15, but this run has 0.2"):
        stream_with(few_shards, cache, mlm_probability=0.2)
    with pytest.raises(UserError, match="was made for masking.copies = 2, but this run has 3"):
        stream_with(few_shards, cache, mask_copies=3)
    with pytest.raises(UserError, match="set data.masking=static"):
        MLMStream(load_manifest(few_shards), DataConfig(shards=str(few_shards), num_workers=0), batch_size=8, rank=0,
                  world_size=1, cache=cache)


def test_a_damaged_or_unfinished_cache_is_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    first = json.loads((copy / "manifest.json").read_text())["splits"]["train"]["copies"][0][0]["name"]
    data = bytearray((copy / first).read_bytes())
    data[-5] ^= 0xFF
    (copy / first).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"corrupt shard {copy / first}: sha256 differs"):
        load_cache(copy).verify("train")
    (copy / "manifest.json").unlink()
    with pytest.raises(UserError, match="not a finished `ds-distil teacher-cache` output"):
        load_cache(copy)


def test_a_record_masked_otherwise_is_refused_in_one_line_from_a_data_loader_worker(built, few_shards, tmp_path):
    """A cache file whose record disagrees with the run's masks (rewritten here) is refused with the one-line error,
    not a worker's traceback, when the stream reads it in a DataLoader worker."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    first = json.loads((copy / "manifest.json").read_text())["splits"]["train"]["copies"][0][0]["name"]
    records = np.load(copy / first, allow_pickle=False)
    records["positions"][:, 0] += 1
    np.save(copy / first, records, allow_pickle=False)
    with pytest.raises(UserError) as e:
        for _ in stream_with(few_shards, load_cache(copy), num_workers=2, shuffle=False).epoch_batches():
            pass
    assert "was masked otherwise than this run masks it; build the cache with this run's data settings" in str(e.value)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_an_interrupted_build_resumes_to_the_same_bytes(built, few_shards, tmp_path):
    """A build that stopped after some files (here: files removed, one left half-written) resumes with --resume: the
    files kept are not redone, the others come out byte for byte as an uninterrupted build's."""
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(built, out)
    (out / "manifest.json").unlink()
    names = sorted(p.relative_to(out).as_posix() for p in out.glob("copy*/*.npy"))
    kept = {n: (out / n).stat().st_mtime_ns for n in names[::2]}
    for n in names[1::2]:
        (out / n).unlink()
    (out / f"{names[1]}").write_bytes(b"half")  # a file without its record: redone
    refused = build(out, few_shards)
    assert refused.returncode == 2 and "holds part of a teacher cache; pass --resume" in refused.stderr
    other = build(out, few_shards, "--resume", "cache.k=16")  # the kept files were drawn with K = 8
    assert other.returncode == 2 and "was made for k = 8, but this run has 16; resume with the settings the build began" in other.stderr
    assert build(out, few_shards, "--resume").returncode == 0
    for n in names:
        assert (out / n).read_bytes() == (built / n).read_bytes(), n
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())  # not redone
    assert json.loads((out / "manifest.json").read_text())["splits"] == json.loads((built / "manifest.json").read_text())["splits"]
    # what a run's resume fingerprint holds: the content, not the manifest's bytes (its creation time differs)
    assert (out / "manifest.json").read_bytes() != (built / "manifest.json").read_bytes()
    assert load_cache(out).content_sha256 == load_cache(built).content_sha256


def test_two_ranks_build_the_same_cache_as_one(built, few_shards, tmp_path):
    """torchrun, 2 ranks: each writes the files of its shards (shard i on rank i % 2); the draws are seeded by shard
    and copy, so the files and the manifest's records are one rank's, byte for byte."""
    from conftest import free_port

    out = tmp_path / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), "-m"]
    proc = subprocess.run([*launch, *build_args(out, few_shards)[2:]], cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.relative_to(built).as_posix() for p in built.glob("copy*/*.npy"))
    assert names == sorted(p.relative_to(out).as_posix() for p in out.glob("copy*/*.npy")) and len(names) > 2
    for n in names:
        assert (out / n).read_bytes() == (built / n).read_bytes(), n
    assert json.loads((out / "manifest.json").read_text())["splits"] == json.loads((built / "manifest.json").read_text())["splits"]


def test_validation_against_the_caches_held_out_copy_estimates_the_live_teachers_kl(built, few_shards):
    """The cache's held-out copy is masked as validation masks: the same student validated against it and against the
    live teacher gives the same MLM figures exactly, and a KL within the sampled estimate's noise of the exact one."""
    from ds_distil.distill import evaluate
    from ds_distil.distill.objectives import KD
    from ds_distil.distill.teacher import CachedTeacher, LiveTeacher
    from ds_distil.model.build import build_student
    from ds_distil.schema.distill import LossConfig, StudentConfig

    cache = load_cache(built)
    assert "val" in cache.data["splits"] and len(cache.data["splits"]["val"]["copies"]) == 1
    manifest = load_manifest(few_shards)
    vocab, pad = int(manifest.tokenizer["vocab_size"]), int(manifest.tokenizer["pad_id"])
    torch.manual_seed(42)  # the builder's random teacher
    teacher = build_teacher(TeacherConfig(preset="tiny"), vocab, pad, 1).eval()
    student = MaskedLM(build_student(StudentConfig(preset="micro", dropout=0.0), vocab, pad), vocab)
    kd = KD(LossConfig())
    kd.bind(teacher.config, student.model.config)
    cfg = DataConfig(shards=str(few_shards), num_workers=0, masking="static", mask_copies=2)
    cpu = torch.device("cpu")
    live = evaluate.build(manifest, cfg, 0, 8, cpu, kd, 0, 1, teacher=LiveTeacher(teacher, vocab, kd.teacher, 2.0))(student)
    cached = evaluate.build(manifest, cfg, 0, 8, cpu, kd, 0, 1, teacher=CachedTeacher(), cache=cache)(student)
    for key in ("val/mlm_loss", "val/perplexity", "val/mlm_accuracy", "val/masked_tokens", "val/samples"):
        assert cached[key] == live[key], key
    assert "val/top1_agreement" in live and "val/top1_agreement" not in cached
    # 8 draws per masked token on the held-out split's ~230 tokens: measured 0.00868 against 0.00960 (9.5%); without the
    # entropy term it would be the cross-entropy (~11.7), with misaligned slots another teacher's figure
    assert cached["val/kl"] == pytest.approx(live["val/kl"], rel=0.2), (cached["val/kl"], live["val/kl"])


def test_a_build_killed_mid_way_resumes_to_the_same_cache(built, few_shards, tmp_path):
    """SIGKILL once the first file is recorded: no manifest (not a cache yet), the finished files are kept by --resume
    and the rest come out byte for byte as an uninterrupted build's."""
    import signal
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen(build_args(out, few_shards), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob("copy*/*.sha256")):
        assert proc.poll() is None and time.time() < deadline, f"the build ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="not a finished `ds-distil teacher-cache` output"):
        load_cache(out)
    done = build(out, few_shards, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.relative_to(built).as_posix() for p in built.glob("copy*/*.npy"))
    assert names == sorted(p.relative_to(out).as_posix() for p in out.glob("copy*/*.npy"))
    for n in names:
        assert (out / n).read_bytes() == (built / n).read_bytes(), n
    assert json.loads((out / "manifest.json").read_text())["splits"] == json.loads((built / "manifest.json").read_text())["splits"]


# ---------------------------------------------------------------------------------------------
# Issue 37: a cache's files are untrusted, whatever sha256 its manifest records for them.


def _edit(d, dotted, value):
    """d with `dotted` (a.b.0.c) set to value (a list's next index appends); the value DELETE removes the key."""
    *path, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node = d
    for part in path:
        node = node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(last, int) and last == len(node):
        node.append(value)
    else:
        node[last] = value


DELETE = object()
BAD_MANIFESTS = [  # (field, value, what the one line says)
    ("k", "abc", "k: input should be a valid integer (found 'abc')"),
    ("k", 0, "k: input should be greater than or equal to 1"),
    ("k", 10**12, "k: input should be less than or equal to 1048576"),
    ("max_masked", 10**12, "max_masked: input should be less than or equal to 32767"),
    ("max_masked", -1, "max_masked: input should be greater than or equal to 1"),
    ("max_masked", 129, "max_masked 129 is more than the sequence length 128"),
    ("k,made_for.k,made_for.seq_len,max_masked", (1 << 20, 1 << 20, 1000, 500), "k 1048576 x max_masked 500 make records of 4,194,"),
    ("masking.copies", DELETE, "no 'masking.copies'"),
    ("made_for.k", 9, "k 8 and masking.copies 2 differ from made_for's (9, 2)"),
    ("made_for.vocab.size", "many", "made_for.vocab.size: input should be a valid integer"),
    ("made_for.method", "dense", "made_for.method: input should be 'sampled' or 'top_k'"),
    ("splits.train.copies", [], "splits.train.copies: list should have at least 1 item"),
    ("splits.train.copies", "abc", "splits.train.copies: input should be a valid list"),
    ("splits.train.copies.0", [], "splits.train.copies[0]: list should have at least 1 item"),
    ("splits.train.copies.1", DELETE, "splits.train has 1 mask copies, masking.copies says 2"),
    ("splits.train.copies.1.0.samples", 39, "the mask copies of splits.train list different files or sample counts"),
    ("splits.train.copies.0.0.samples", -1, "splits.train.copies[0][0].samples: input should be greater than or equal to 0"),
    ("splits.train.copies.0.0.sha256", "0" * 63, "splits.train.copies[0][0].sha256: string should match pattern"),
    ("splits.train.copies.0.0.name", "/etc/passwd", "splits.train.copies[0][0].name: names a file outside its directory"),
    ("splits.train.copies.0.0.name", "../../s/train-000000.tar", "splits.train.copies[0][0].name: names a file outside"),
    ("splits.val.copies.1", None, "splits.val.copies[1]: input should be a valid list"),
    ("splits.test", {"copies": []}, "splits.test: input should be 'train' or 'val'"),
    ("splits.train", DELETE, "no 'train' split (a cache is for training)"),
    ("teacher.config.model_type", DELETE, "no 'teacher.config.model_type'"),
    ("teacher.config.hidden_size", "x", "teacher.config.hidden_size: input should be a valid integer (found 'x')"),
]


@pytest.mark.parametrize("field,value,message", BAD_MANIFESTS, ids=[f"{f}={v if v is not DELETE else 'missing'}"[:40]
                                                                     for f, v, _ in BAD_MANIFESTS])
def test_a_damaged_cache_manifest_is_one_line_before_any_file_it_names_is_opened(built, tmp_path, monkeypatch, field, value, message):
    """Each field a reader relies on, wrong: the run's cache check (setup._open_cache: load, then hash every file) refuses
    it naming the field, before it hashes, maps or opens any file the manifest names (the hostile pass saw /etc/passwd
    hashed three times)."""
    import shutil

    from ds_distil.data import teacher_cache
    from ds_distil.distill.setup import _open_cache
    from ds_distil.schema.distill import DistillConfig

    copy = tmp_path / "cache"
    shutil.copytree(built, copy)
    data = json.loads((copy / "manifest.json").read_text())
    for f, v in zip(field.split(","), value if "," in field else [value]):  # several fields: consistent but too big
        _edit(data, f, v)
    (copy / "manifest.json").write_text(json.dumps(data))
    opened = []
    monkeypatch.setattr(teacher_cache, "sha256_file", lambda p: opened.append(p))
    monkeypatch.setattr(teacher_cache, "open_records", lambda p, *a: opened.append(p))
    cfg = DistillConfig(data=DataConfig(shards="x"), teacher=TeacherConfig(cache=str(copy)))
    with pytest.raises(UserError) as e:
        _open_cache(cfg, 0, 1)
    assert str(e.value).startswith(f"{copy / 'manifest.json'}: ") and message in str(e.value), str(e.value)
    assert "rebuild the cache" in str(e.value) and "\n" not in str(e.value) and opened == []


def _first_train_file(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    return manifest, manifest["splits"]["train"]["copies"][0][0]


def _rewrite(cache_dir, records=None, raw: bytes | None = None):
    """Replace the first training file of copy 0, and record its new sha256 in the manifest (as a hand edit would)."""
    from ds_distil.data.manifest import sha256_file

    manifest, entry = _first_train_file(cache_dir)
    path = cache_dir / entry["name"]
    if raw is not None:
        path.write_bytes(raw)
    else:
        np.save(path, records, allow_pickle=True)
    entry["sha256"] = sha256_file(path)
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    return path


def _batches(cache_dir, shards):
    cache = load_cache(cache_dir)
    cache.verify("train")  # every sha256 matches: only the contents are wrong
    for _ in stream_with(shards, cache, shuffle=False).epoch_batches():
        pass


@pytest.mark.parametrize("field,value,message", [
    ("weights", -1.0, "a weight that is negative, NaN or infinite"),
    ("weights", np.nan, "a weight that is negative, NaN or infinite"),
    ("weights", 1e30, "weights that are not a distribution (each in [0, 1], summing to 1 per slot"),
    ("weights", 0.5, "weights that are not a distribution"),
    ("ids", 10**9, "a token id outside the cache's vocabulary of 119,547"),
    ("ids", -5, "a token id outside the cache's vocabulary"),
    ("entropy", np.inf, "an entropy that is negative, NaN or infinite"),
])
def test_cached_targets_are_checked_where_they_are_read(built, few_shards, tmp_path, field, value, message):
    """A cache file edited after the build (its sha256 recorded again): the first batch holding a bad slot is refused,
    naming the file and the sample, instead of training a student on it (weights of -1 once trained to a KL of -58)."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(built, copy)
    _, entry = _first_train_file(copy)
    records = np.load(copy / entry["name"], allow_pickle=False)
    n = int((records["positions"][3] >= 0).sum())
    records[field][3, n - 1] = value  # sample 3's last masked slot
    path = _rewrite(copy, records)
    with pytest.raises(CorruptShardError) as e:
        _batches(copy, few_shards)
    assert str(e.value).startswith(f"corrupt shard {path}: sample 3 of 'train' (copy 0) has {message}"), str(e.value)


@pytest.mark.parametrize("damage,message", [
    ("object", "holds records of another layout, not the manifest's 40 records"),
    ("shape", "holds shape (39,), not the manifest's 40 records"),
    ("truncated", "bytes, its header and the manifest make"),
    ("not npy", "is not a .npy file of cache records"),
])
def test_a_cache_file_of_another_layout_or_size_is_refused_before_it_is_mapped(built, few_shards, tmp_path, damage, message):
    """The .npy header and the file's size are checked before the file is memory-mapped (an object array, which numpy
    cannot map, was a traceback; a truncated file one from mmap), and nothing in it is unpickled."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(built, copy)
    _, entry = _first_train_file(copy)
    good = (copy / entry["name"]).read_bytes()
    records = np.load(copy / entry["name"], allow_pickle=False)
    if damage == "object":
        objects = np.empty(40, dtype=object)
        objects[:] = [{"ids": i} for i in range(40)]
        path = _rewrite(copy, objects)
    elif damage == "shape":
        path = _rewrite(copy, records[:39])
    else:
        path = _rewrite(copy, raw=good[: len(good) - 100] if damage == "truncated" else b"not a numpy file at all")
    with pytest.raises(CorruptShardError) as e:
        _batches(copy, few_shards)
    assert str(e.value).startswith(f"corrupt shard {path}: ") and message in str(e.value), str(e.value)


def test_a_stop_signal_ends_the_build_with_75_a_message_and_no_half_written_file(built, few_shards, tmp_path):
    """SIGTERM (SLURM's preemption) during a build: the message says what is kept and how to go on, exit 75, no temporary
    file left, the finished files whole (test_a_build_killed_mid_way_resumes_to_the_same_cache: --resume keeps them)."""
    import signal
    import time

    out = tmp_path / "stopped"
    proc = subprocess.Popen(build_args(out, few_shards), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob("copy*/*.sha256")):
        assert proc.poll() is None and time.time() < deadline, f"the build ended before it could be stopped: {proc.stderr.read()[-2000:]}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 75, err[-2000:]
    assert "received SIGTERM: teacher-cache stops now (the files finished so far are kept" in err and "--resume" in err
    assert "Traceback" not in err and not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    kept = [p for p in out.glob("copy*/*.npy") if p.with_name(p.name + ".sha256").is_file()]
    assert kept and all(p.read_bytes() == (built / p.relative_to(out)).read_bytes() for p in kept)  # what --resume keeps


def test_a_cache_too_big_is_refused_with_its_size_before_anything_is_written(few_shards, tmp_path, monkeypatch):
    """The size is estimated (and logged) before the teacher is built: a K that stores more per masked position than the
    whole distribution, more than cache.max_gib, or more than the disk has free, is one line and nothing is written."""
    import shutil

    from ds_distil.data.teacher_cache import record_bytes, record_dtype
    from ds_distil.distill import cache_build
    from ds_distil.schema.cache import SamplingConfig

    assert record_bytes(19, 8) == record_dtype(19, 8).itemsize
    huge = build(tmp_path / "huge", few_shards, "cache.k=100000")
    assert huge.returncode == 2 and "cache.k=100000 stores more per masked position (100000 ids and weights" in huge.stderr
    assert re.search(r"teacher-cache: \d+ records \(train \d+, val \d+\) of 14843\.9 KiB \(K = 100000 draws at each of 19 masked "
                     r"slots\): ~\d\.\d\d GiB on disk", huge.stderr), huge.stderr  # the estimate, first
    assert not list((tmp_path / "huge").glob("copy*"))
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(UserError, match=r"this cache would take ~1\.31 GiB \(100,000 records of 13\.7 KiB.*more than cache.max_gib=1; lower"):
        cache_build._check_size(d, {"train": 100_000}, 19, SamplingConfig(k=91, max_gib=1.0), 119547, False, 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(UserError, match=rf"needs ~14\.8 MiB more, and the file system of {d} has 1\.0 MiB free"):
        cache_build._check_size(d, {"train": 1000, "val": 10}, 19, SamplingConfig(k=100), 119547, False, 0)
