"""Elastic resume (issue 39): a run stopped on W ranks continues on W' ranks, its state exact, its global batch kept,
every sample of the epoch seen once. Real multi-process runs on CPU (gloo), a trimmed vocabulary so that steps are cheap.

One 2-rank run stopped at step 3 (`stopped`) is the start of every case: the chain 2 -> 3 -> 2 -> 1 -> 2 (fp32: state
compared bit for bit at every change, sample indices recorded, the end compared with the uninterrupted run), the
2 -> 1 continuity and kill -9 case, and the refusals. The bf16 chain 1 -> 2 -> 3 -> 2 -> 1 runs on its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port, one_line_error, run_cli, run_prepare

from ds_distil.runtime.checkpoint import MARKER, latest_tag, verify

HELPER = ROOT / "tests" / "helpers" / "distill_run.py"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("elastic")]  # the module's runs share one stopped run
FP32, BF16 = (str(ROOT / "ds_configs" / f"zero2-{p}.json") for p in ("fp32", "bf16"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus, mbert_tokenizer_dir) -> tuple[Path, Path]:
    """86 training samples in 11 shards of 8, and a vocabulary trimmed to them (22k rows: a step takes ~0.2 s)."""
    from ds_distil.data.vocab import build_vocab
    from ds_distil.schema.vocab import VocabConfig

    root = tmp_path_factory.mktemp("elastic-data")
    run_prepare(root / "shards", [corpus], mbert_tokenizer_dir, max_docs=100, samples_per_shard=8, val_fraction=0.1, seed=1)
    build_vocab(VocabConfig(shards=str(root / "shards"), out=str(root / "vocab"), report_data="none"))
    return root / "shards", root / "vocab"


def common(data, **extra) -> list[str]:
    """Two epochs at a global batch of 6 (micro 3 x 2 ranks), dropout off, static masks: the global batches of an epoch
    are the same however its steps are split over ranks, so the runs may be compared with the uninterrupted one.
    TinyBERT's objective: its projection (64 -> 128) is trained state of its own that every change must carry."""
    shards, vocab = data
    values = {"data.shards": shards, "student.vocab": vocab, "loss.objective": "tinybert", "data.num_workers": 2,
              "data.verify_checksums": False, "data.shuffle_buffer": 16, "data.masking": "static", "student.dropout": 0.0,
              "train.micro_batch_size": 3,
              "train.grad_accum_steps": 1, "train.epochs": 2, "train.max_steps": "null", "checkpoint.every_steps": 0,
              "checkpoint.keep": 2, "log.every_steps": 1, "log.eval_every_steps": 0, "log.eval_max_samples": 8,
              "deepspeed.config": FP32, **extra}
    return ["--config", SMOKE, *(f"{k}={v}" for k, v in values.items())]


def launch(ranks: int, out: Path, args: list[str], *flags: str, stopped: bool = False) -> subprocess.CompletedProcess:
    """The test helper (as `ds-distil distill` runs) on `ranks` CPU ranks; `stopped`: stopped for requeue by
    --stop-at-step (exit 75; under torchrun, which exits 1, every rank's 75)."""
    start = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", free_port()]
             if ranks > 1 else [sys.executable])
    proc = subprocess.run([*start, str(HELPER), "--out", str(out), *flags, *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=600)
    if not stopped:
        ok = proc.returncode == 0
    elif ranks == 1:
        ok = proc.returncode == 75
    else:
        # torchrun: exit 1, a rank's 75 in its report (it ends the others once one exits), no rank's traceback
        ok = proc.returncode == 1 and re.search(r"exitcode\s*: 75 ", proc.stderr) and not re.search(r"\[rank\d+\]: Traceback", proc.stderr)
    assert ok, f"exit {proc.returncode}: " + proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def assert_same_state(saved: Path, loaded: Path) -> int:
    """Weights, fp32 master weights, Adam moments and step of every trained parameter (gathered whole), the LR schedule
    and DeepSpeed's counters: bit for bit. Returns the number of tensor elements compared."""
    a, b = torch.load(saved), torch.load(loaded)
    assert a["params"].keys() == b["params"].keys() and len(a["params"]) > 10
    assert {"objective.projection.weight", "objective.projection.bias"} <= a["params"].keys()
    elements = 0
    for name, entry in a["params"].items():
        assert entry.keys() == b["params"][name].keys() == {"weight", "fp32", "exp_avg", "exp_avg_sq", "step"}, name
        for key, value in entry.items():
            if key == "step":
                assert value == b["params"][name][key] and value > 0, name
            else:
                assert value.dtype == b["params"][name][key].dtype and torch.equal(value, b["params"][name][key]), (name, key)
                elements += value.numel()
    for key in ("lr_scheduler", "lr", "global_steps", "skipped_steps"):
        assert a[key] == b[key], key
    if a["loss_scale"] is not None and b["loss_scale"] is not None:
        assert a["loss_scale"] == b["loss_scale"]
    return elements


def records(base: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(base.parent.glob(base.name + ".rank*.jsonl")) for line in f.read_text().splitlines()]


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss/total"] for r in metric_lines(run) if "loss/total" in r}


def student(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "student" / "model.safetensors")


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run, its sample indices recorded."""
    out = tmp_path_factory.mktemp("whole") / "run"
    launch(2, out, common(data), "--record", str(out.parent / "indices"))
    return out


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> Path:
    """The same run stopped at step 3 (a checkpoint of 2 ZeRO-2 ranks, mid-epoch), its state at the save dumped."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    launch(2, out, common(data), "--stop-at-step", "3", "--record", str(out.parent / "indices"),
           "--dump-saved", str(out.parent / "saved3.pt"), stopped=True)
    assert latest_tag(out / "checkpoints") == "step00000003"
    return out


def copy_of(stopped: Path, dst: Path) -> Path:
    shutil.copytree(stopped, dst)
    for f in stopped.parent.glob("*"):
        if f.is_file():
            shutil.copy2(f, dst.parent / f.name)
    return dst


def test_a_run_changing_ranks_four_times_loads_its_state_exactly_sees_every_sample_once_and_ends_as_the_whole_run(
        data, whole, stopped, tmp_path):
    """fp32: 2 ranks (ZeRO-2, 2 workers) stopped at step 3 -> 3 ranks (1 worker, micro batch 3 -> 2) to step 6 -> 2 ranks
    (1 worker) to 9 -> 1 rank (no ZeRO, accumulation 2) to 12 -> 2 ranks to the end of the second epoch. Every change
    loads what the last one saved bit for bit (2 -> 3 and 3 -> 2 through DeepSpeed's universal checkpoint, 2 -> 1 and
    1 -> 2 through ours); the first epoch's samples are each trained on once, in the global batches of the uninterrupted
    run; the second epoch is whole; the end equals the uninterrupted run to fp32 rounding."""
    run = copy_of(stopped, tmp_path / "run")
    rec = str(tmp_path / "indices")
    compared = []
    chain = [(3, 6, {"data.num_workers": 1}), (2, 9, {"data.num_workers": 1}), (1, 12, {}), (2, None, {})]
    for i, (ranks, stop, extra) in enumerate(chain, 1):
        flags = ["--resume", "--record", rec, "--dump-loaded", str(tmp_path / f"loaded{i}.pt")]
        if stop is not None:
            flags += ["--stop-at-step", str(stop), "--dump-saved", str(tmp_path / f"saved{i}.pt")]
        proc = launch(ranks, run, common(data, **extra), *flags, stopped=stop is not None)
        before = tmp_path / (f"saved{i - 1}.pt" if i > 1 else "saved3.pt")
        compared.append(assert_same_state(before, tmp_path / f"loaded{i}.pt"))
        if i == 1:
            assert "resumed on 3 rank(s) (was 2): accumulation 1, micro batch 3 -> 2, same global batch 6" in proc.stderr
            assert "converting checkpoint step00000003 (2 rank(s), ZeRO stage 2) to its universal form for 3 rank(s)" in proc.stderr
        if i == 3:
            assert "resumed on 1 rank(s) (was 2): accumulation 1 -> 2, same global batch 6" in proc.stderr
    print(f"elements compared bit for bit at each change: {compared}")

    events = [r for r in metric_lines(run) if r.get("event") == "resumed"]
    assert [(e["step"], e["world_size"], e["was_world_size"], e["accumulation"], e["global_batch"]) for e in events] == [
        (3, 3, 2, 1, 6), (6, 2, 3, 1, 6), (9, 1, 2, 2, 6), (12, 2, 1, 1, 6)]
    assert not (run / "checkpoints" / "universal").exists() or not any((run / "checkpoints" / "universal").iterdir())

    # coverage: every sample once per epoch, across the changes; each step's global batch as in the uninterrupted run
    n = json.loads((data[0] / "manifest.json").read_text())["splits"]["train"]["samples"]
    seen = records(tmp_path / "indices")  # the stopped run's, copied with it, and the chain's
    for epoch in (0, 1):
        counts = Counter(i for r in seen if r["epoch"] == epoch for i in r["index"] if i >= 0)
        assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}, (epoch, counts.most_common(3))
    print(f"coverage: {n} samples, each seen once in epoch 0 (over 5 layouts) and once in epoch 1")

    def batches(rs):
        by_step = {}
        for r in rs:
            by_step.setdefault(r["step"], []).extend(i for i in r["index"] if i >= 0)
        return {s: sorted(v) for s, v in by_step.items()}

    assert batches(seen) == batches(records(whole.parent / "indices"))
    assert losses(run) == pytest.approx(losses(whole), rel=1e-4)
    a, b = student(whole), student(run)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_bf16_zero2_state_is_exact_across_one_two_and_three_ranks(data, tmp_path):
    """bf16 (ZeRO-2 on every rank count, also one): 1 -> 2 -> 3 -> 2 -> 1, one step each, through DeepSpeed's universal
    checkpoint: bf16 weights, fp32 master weights, moments and step bit for bit after every change."""
    run, args = tmp_path / "run", common(data, **{"deepspeed.config": BF16, "data.num_workers": 1, "train.grad_accum_steps": 2})
    launch(1, run, args, "--stop-at-step", "1", "--dump-saved", str(tmp_path / "saved0.pt"), stopped=True)
    compared = []
    for i, ranks in enumerate((2, 3, 2, 1), 1):
        launch(ranks, run, args, "--resume", "--stop-at-step", str(i + 1), "--dump-loaded", str(tmp_path / f"loaded{i}.pt"),
               "--dump-saved", str(tmp_path / f"saved{i}.pt"), stopped=True)
        compared.append(assert_same_state(tmp_path / f"saved{i - 1}.pt", tmp_path / f"loaded{i}.pt"))
    weights = torch.load(tmp_path / "saved0.pt")["params"]
    assert all(e["weight"].dtype == torch.bfloat16 and e["fp32"].dtype == torch.float32 for e in weights.values())
    print(f"bf16 elements compared bit for bit at each change: {compared}")


@pytest.fixture(scope="module")
def seeds(data, tmp_path_factory) -> list[Path]:
    """The uninterrupted 2-rank run with two other data seeds (other sample orders and masks): the seed spread."""
    outs = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"seed{seed}") / "run"
        launch(2, out, common(data, **{"data.seed": seed}))
        outs.append(out)
    return outs


def mean_loss(run: Path, steps: range) -> float:
    ls = losses(run)
    return sum(ls[s] for s in steps) / len(steps)


def test_two_to_one_continues_within_the_seed_spread_and_a_kill_during_the_resharded_resume_changes_nothing(
        data, whole, stopped, seeds, tmp_path):
    """2 -> 1 at step 3: the rest of the first epoch in the whole run's global batches (its losses equal, to rounding),
    the second laid out for one rank (other batches): its mean loss over the second epoch within the spread of the whole
    run's over data seeds. A second copy is killed (-9) while it converts the checkpoint, resumed and killed again once it
    trains (before its first checkpoint), then resumed again: bit for bit what the first resume gave, one `resumed` line
    in its metrics."""
    one = launch(1, copy_of(stopped, tmp_path / "one" / "run"), common(data), "--resume").stderr
    assert "resumed on 1 rank(s) (was 2): accumulation 1 -> 2, same global batch 6" in one
    epoch = 15  # optimizer steps per epoch: ceil(86 / 6)
    first, second = range(4, epoch + 1), range(epoch + 1, 2 * epoch + 1)
    ls_one, ls_whole = losses(tmp_path / "one" / "run"), losses(whole)
    for s in first:
        assert ls_one[s] == pytest.approx(ls_whole[s], rel=1e-4), s
    runs = [whole, *seeds]
    means = [mean_loss(r, second) for r in runs]
    spread = max(means) - min(means)
    gap = abs(mean_loss(tmp_path / "one" / "run", second) - means[0])
    print(f"second epoch mean loss: 2->1 {mean_loss(tmp_path / 'one' / 'run', second):.4f}, whole run over data seeds "
          f"{[round(m, 4) for m in means]} (spread {spread:.4f}); |2->1 - whole| = {gap:.4f}")
    assert gap <= spread

    killed = copy_of(stopped, tmp_path / "killed" / "run")
    converted = killed / "checkpoints" / "universal"

    def trained_past_3() -> bool:
        try:
            return any(s > 3 for s in losses(killed))
        except (OSError, ValueError):  # not written yet, or a line being written
            return False

    for point in (lambda: converted.is_dir() and any(converted.iterdir()), trained_past_3):  # converting; training on
        cmd = [sys.executable, str(HELPER), "--out", str(killed), "--resume", *common(data)]
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not point():
            assert proc.poll() is None and time.time() < deadline, "the resume ended before the point it was to be killed at"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert latest_tag(killed / "checkpoints") == "step00000003" and not (killed / "student").exists()
    launch(1, killed, common(data), "--resume")
    a, b = student(tmp_path / "one" / "run"), student(killed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(killed) == ls_one
    assert [r["step"] for r in metric_lines(killed) if r.get("event")] == [3]
    assert not any(converted.iterdir())  # the universal form is dropped once a newer checkpoint exists


def test_what_cannot_change_is_still_refused_and_another_global_batch_needs_the_key(data, whole, stopped, tmp_path):
    """4 ranks cannot keep the global batch 6: refused in one line naming the nearest (4 and 8) and the key; another
    objective or vocabulary: refused as ever; with train.allow_global_batch_change the run continues at global batch 4,
    its LR schedule by samples. A checkpoint missing ranks' optimizer files is named damaged, each missing file named."""
    run = copy_of(stopped, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")}
    four = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port", free_port(),
                           "-m", "ds_distil", "distill", "--out", str(run), "--resume", *common(data)],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert four.returncode != 0
    line = next(li for li in four.stderr.splitlines() if "error:" in li)
    for needle in ("--resume on 4 rank(s) cannot keep the global batch 6", "the nearest global batches 4 rank(s) can run are 4 and 8",
                   "train.allow_global_batch_change=true", "dividing 6 (1, 2, 3, 6)"):
        assert needle in line, line
    other = shutil.copytree(data[1], tmp_path / "other-vocab")
    one_line_error(run_cli("distill", "--out", str(run), "--resume", *common(data, **{"loss.objective": "mlm", "teacher.enabled": False,
                                                                                        "student.vocab": other}), env=ENV),
                   "--resume would change teacher.enabled from True to False", "(and 2 more: ", "student.vocab", "loss.objective")
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")} == before  # refused before anything is written

    changed = launch(1, run, common(data, **{"train.allow_global_batch_change": True, "train.micro_batch_size": 2,
                                             "train.grad_accum_steps": 2}), "--resume", "--stop-at-step", "5", stopped=True).stderr
    assert "resumed on 1 rank(s) (was 2): accumulation 1 -> 2, micro batch 3 -> 2, global batch 6 -> 4" in changed
    assert ("global batch 6 -> 4: LR schedule continued by samples (3 steps of 6 samples = 4 steps of 4 of 45); the run now "
            "ends at step 44") in changed
    lr, lr_whole = ({r["step"]: r["lr"] for r in metric_lines(r_) if "lr" in r} for r_ in (run, whole))
    # after step 5: 3 x 6 + 2 x 4 = 26 samples, where the whole run (steps of 6) is between its steps 4 and 5
    assert min(lr_whole[4], lr_whole[5]) * 0.97 <= lr[5] <= max(lr_whole[4], lr_whole[5]) * 1.03, (lr, lr_whole)

    # a 2-rank checkpoint without rank 1's optimizer partition
    tag = run / "checkpoints" / "step00000003"
    (next(tag.glob("*zero_pp_rank_1_mp_rank_00_optim_states.pt"))).unlink()
    (tag / "rng_rank1.pt").unlink()
    assert verify(tag) == ("rng_rank1.pt, rank 1's optimizer states (zero_pp_rank_1_mp_rank_00_optim_states.pt) are missing")
    assert (tag / MARKER).exists()


def test_a_study_run_again_on_other_ranks_keeps_its_stages_global_batch(tmp_path, data_dir):
    """`ds-distil experiment` (dry run): the study began on 2 ranks (DIR/.experiment/ranks.json); run on 1, its distill
    and finetune stages get the micro batch and accumulation that keep their global batch; on 3 the teacher's global
    batch of 32 cannot be kept: refused before anything runs."""
    out = tmp_path / "study"
    (out / ".experiment").mkdir(parents=True)
    (out / ".experiment" / "study.json").write_text(json.dumps({"name": "demo"}))
    (out / ".experiment" / "ranks.json").write_text(json.dumps({"ranks": 2}))
    study = str(ROOT / "configs" / "studies" / "demo.yaml")
    proc = run_cli("experiment", study, "--out", str(out), "--dry-run", "ranks=1", env=ENV)
    assert proc.returncode == 0, proc.stderr
    commands = [line.strip() for line in proc.stdout.splitlines() if line.startswith("    ")]
    teacher = next(c for c in commands if "--out " + str(out / "teacher") + " " in c + " ")
    assert teacher.endswith("train.micro_batch_size=16 train.grad_accum_steps=2"), teacher  # 16 x 1 x 2 ranks = 16 x 2 x 1
    finetunes = [c for c in commands if c.startswith("ds-distil finetune ")]
    assert finetunes and all("train.grad_accum_steps=2" in c for c in finetunes), finetunes[:2]
    assert not any("train.grad_accum_steps" in c for c in commands if c.startswith(("ds-distil prepare", "ds-distil vocab")))
    same = run_cli("experiment", study, "--out", str(out), "--dry-run", "ranks=2", env=ENV)
    assert same.returncode == 0 and "train.grad_accum_steps" not in same.stdout
    three = run_cli("experiment", study, "--out", str(out), "--dry-run", "--launcher", "srun", "ranks=3", env=ENV)
    one_line_error(three, "it began on 2 rank(s) and stage teacher has a global batch of 32", "3 rank(s) cannot keep")


def test_a_teacher_cache_build_finished_on_another_number_of_ranks_is_the_same_cache(data, tmp_path):
    """`teacher-cache --resume` keeps every file whose sha256 record matches and redoes the rest, each drawn by its own
    shard and copy whichever rank takes it: a build of 1 rank stopped half-way and finished by 2 is the 1-rank build byte
    for byte, its finished files untouched."""
    shards, vocab = data
    args = [f"data.shards={shards}", f"vocab={vocab}", "teacher.preset=tiny", "cache.k=4", "data.num_workers=0", "data.mask_copies=2"]
    whole = tmp_path / "whole"
    done = run_cli("teacher-cache", "--out", str(whole), *args, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    part = shutil.copytree(whole, tmp_path / "part")
    (part / "manifest.json").unlink()
    names = sorted(p.relative_to(whole).as_posix() for p in whole.glob("copy*/*.npy"))
    kept = {n: (part / n).stat().st_mtime_ns for n in names[: len(names) // 2]}
    for n in names[len(names) // 2:]:  # the second mask copy and the held-out split: shards of both ranks
        (part / n).unlink()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), "-m",
                          "ds_distil", "teacher-cache", "--out", str(part), "--resume", *args],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for n in names:
        assert (part / n).read_bytes() == (whole / n).read_bytes(), n
    assert {n: (part / n).stat().st_mtime_ns for n in kept} == kept  # not redone
    assert json.loads((part / "manifest.json").read_text())["splits"] == json.loads((whole / "manifest.json").read_text())["splits"]
