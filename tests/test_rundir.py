"""Run directories: owned, one writer at a time, outputs swapped in whole, inputs never overwritten.

Issue 14, cases 1, 4 and 5 (prepare, report, build-nli here; distill and export in test_checkpoint_safety.py).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port, one_line_error, run_cli, tree

from ds_distil.core.errors import UserError
from ds_distil.core.rundir import LOCK, MARKER, claim, owner


@pytest.fixture
def small_corpus(tmp_path, corpus_docs) -> Path:
    src = tmp_path / "in" / "part.txt"
    src.parent.mkdir()
    src.write_text("\n".join(corpus_docs[:300]) + "\n", encoding="utf-8")
    return src


def prepare(out, src, tok, *extra):
    return run_cli("prepare", "--input", str(src), "--tokenizer", str(tok), "--out", str(out), "--workers", "1", *extra)


# ------------------------------------------------------------------------------------ case 1


def test_foreign_shards_in_out_survive_prepare(tmp_path, small_corpus, mbert_tokenizer_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train-0.tar").write_bytes(b"a user's own WebDataset shard")
    (out / "val-000000.tar").write_bytes(b"another")
    before = tree(out)
    one_line_error(prepare(out, small_corpus, mbert_tokenizer_dir), "not empty", "train-0.tar", "--overwrite")
    assert tree(out) == before
    # with --overwrite the new output takes the place, and the user's files are kept beside it, not deleted
    assert prepare(out, small_corpus, mbert_tokenizer_dir, "--overwrite").returncode == 0
    assert owner(out) == "prepare" and (out / "manifest.json").is_file()
    aside = list(tmp_path.glob("mine.replaced-*"))
    assert len(aside) == 1 and tree(aside[0]) == before


def test_prepare_marks_its_output_and_refuses_another_commands(tmp_path, small_corpus, mbert_tokenizer_dir):
    out = tmp_path / "shards"
    assert prepare(out, small_corpus, mbert_tokenizer_dir).returncode == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "prepare" and marker["ds_distil_version"]
    assert not (out / LOCK).exists()  # released
    articles = tmp_path / "articles.csv"
    articles.write_text("article\n" + "".join(f'"Una ito ay {i}. Pangalawa ito ay dito. Pangatlo ito ay doon. Pang-apat ito ay {i}."\n' for i in range(20)))
    one_line_error(run_cli("tasks", "build-nli", "--articles", str(articles), "--out", str(out)), "output of `ds-distil prepare`")
    assert run_cli("tasks", "build-nli", "--articles", str(articles), "--out", str(tmp_path / "nli")).returncode == 0
    assert owner(tmp_path / "nli") == "build-nli" and (tmp_path / "nli" / "train.csv").is_file()


# ------------------------------------------------------------------------------------ case 4


def test_failed_overwrite_leaves_the_old_output_byte_identical(tmp_path, small_corpus, corpus_docs, mbert_tokenizer_dir):
    out = tmp_path / "shards"
    assert prepare(out, small_corpus, mbert_tokenizer_dir, "--samples-per-shard", "50").returncode == 0
    before = tree(out)
    # fails late: shards of the new run are already written when line 290 turns out not to be UTF-8
    bad = tmp_path / "bad.txt"
    bad.write_bytes(("\n".join(corpus_docs[:289]) + "\n").encode() + "Pilipinas \xf1\n".encode("latin-1"))
    one_line_error(prepare(out, bad, mbert_tokenizer_dir, "--overwrite", "--samples-per-shard", "50", "--doc-shuffle-buffer", "0"),
                   "bad.txt:290", "not valid UTF-8")
    # fails early: a bad config value, a missing input
    one_line_error(prepare(out, small_corpus, mbert_tokenizer_dir, "--overwrite", "--seq-len", "4"), "seq_len")
    one_line_error(prepare(out, tmp_path / "nope.txt", mbert_tokenizer_dir, "--overwrite"), "does not exist")
    assert tree(out) == before
    assert not list(tmp_path.glob(".shards.ds-distil-*")), "a failed run leaves no staging directory"
    # and a good one replaces it
    assert prepare(out, small_corpus, mbert_tokenizer_dir, "--overwrite", "--seq-len", "64").returncode == 0
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 64


def test_out_equal_to_inside_or_holding_the_input_is_refused(tmp_path, small_corpus, mbert_tokenizer_dir):
    before = tree(small_corpus.parent)
    one_line_error(prepare(small_corpus.parent, small_corpus.parent, mbert_tokenizer_dir), "also an input")
    one_line_error(prepare(small_corpus.parent, small_corpus, mbert_tokenizer_dir, "--overwrite"), "contains the input")
    one_line_error(prepare(small_corpus.parent / "shards", small_corpus.parent, mbert_tokenizer_dir), "inside the input directory")
    assert tree(small_corpus.parent) == before


def test_unwritable_out_is_one_line(tmp_path, small_corpus, mbert_tokenizer_dir):
    (tmp_path / "a-file").write_text("x")
    one_line_error(prepare(tmp_path / "a-file" / "out", small_corpus, mbert_tokenizer_dir), "cannot write to --out")
    one_line_error(prepare(tmp_path / "a-file", small_corpus, mbert_tokenizer_dir), "is a file")


# ------------------------------------------------------------------------------------ case 5


def test_second_concurrent_run_is_refused_while_the_first_finishes(tmp_path, corpus, mbert_tokenizer_dir):
    out = tmp_path / "shards"
    first = subprocess.Popen([sys.executable, "-m", "ds_distil", "prepare", "--input", str(corpus), "--tokenizer",
                              str(mbert_tokenizer_dir), "--out", str(out), "--workers", "1"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".shards.ds-distil-new-*/train-*.tar")):  # the first run is writing
        assert first.poll() is None and time.time() < deadline, "the first run ended before the second could start"
        time.sleep(0.05)
    second = prepare(out, corpus, mbert_tokenizer_dir, "--overwrite")
    line = one_line_error(second, "in use by another ds-distil run", f"pid {first.pid}", "prepare")
    assert os.uname().nodename in line
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert (out / "manifest.json").is_file() and owner(out) == "prepare"


def test_a_killed_holder_leaves_no_lock(tmp_path):
    """fcntl locks die with their process: a run killed with SIGKILL never blocks the next one."""
    out = tmp_path / "run"
    code = ("import sys, time\nfrom ds_distil.core.rundir import claim\n"
            "rd = claim(sys.argv[1], 'distill', in_place=True)\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"in use by another ds-distil run .*pid {holder.pid}"):
        claim(out, "distill", in_place=True)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK).exists()  # the file stays; the lock is gone
    with claim(out, "distill", in_place=True) as rd:
        assert rd.path == out and rd.state == "new"


# ---------------------------------------------------------------------------- other commands


def test_report_and_build_nli_own_their_outputs(tmp_path):
    runs = tmp_path / "ft"
    result = {"model": "m", "task": "hatespeech", "metric": "accuracy", "score": 0.5, "valid_score": 0.5, "train_runtime_s": 1.0, "seed": 1}
    (runs / "hatespeech" / "seed1").mkdir(parents=True)
    (runs / "hatespeech" / "seed1" / "results.json").write_text(json.dumps(result))
    inputs = tree(runs)
    assert run_cli("report", "--runs", str(runs), "--out", str(runs / "report")).returncode == 0  # beside the results: fine
    assert owner(runs / "report") == "report"
    assert run_cli("report", "--runs", str(runs), "--out", str(runs / "report")).returncode == 0  # derived: replaced
    one_line_error(run_cli("report", "--runs", str(runs), "--out", str(runs)), "also an input")
    one_line_error(run_cli("report", "--runs", str(runs), "--out", str(runs / "hatespeech")), "contains the input")
    assert {k: v for k, v in tree(runs).items() if not k.startswith("report/")} == inputs
    # a user's folder is not a report's
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("x")
    one_line_error(run_cli("report", "--runs", str(runs), "--out", str(mine)), "not empty", "todo.txt")


def test_report_on_broken_results_is_one_line(tmp_path):
    for i, text in enumerate(["", "{\"model\": ", "[1, 2]"]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "results.json").write_text(text)
        one_line_error(run_cli("report", "--runs", str(d), "--out", str(tmp_path / f"rep{i}")), "results.json")
        assert not (tmp_path / f"rep{i}").exists()


def test_claim_keeps_what_it_did_not_write_on_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with claim(out, "report", overwrite=True) as rd:
        assert rd.staging and rd.path != out
        (rd.path / "report.md").write_text("new")
        rd.commit()
    assert (out / "report.md").read_text() == "new" and not (out / "precious.txt").exists()
    aside = list(tmp_path.glob("out.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "precious.txt").read_text() == "keep me"
    assert not (aside[0] / LOCK).exists()  # nothing of ours left in the user's files
    # an exception inside leaves the output as it was and no staging directory
    with pytest.raises(RuntimeError):
        with claim(out, "report") as rd:
            (rd.path / "report.md").write_text("half")
            raise RuntimeError("boom")
    assert (out / "report.md").read_text() == "new" and not list(tmp_path.glob(".out.ds-distil-*"))


def test_a_failed_first_run_leaves_no_directory_or_marker(tmp_path):
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "new", "prepare"):
            raise RuntimeError("bad input found after the claim")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "empty", "distill", in_place=True):
            raise RuntimeError("bad input found after the claim")
    assert list((tmp_path / "empty").iterdir()) == []


def test_commit_without_an_atomic_exchange_still_swaps(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is missing (NFS), two renames do the swap."""
    import ds_distil.core.rundir as rundir

    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    out = tmp_path / "rep"
    for text in ("first", "second"):
        with claim(out, "report") as rd:
            (rd.path / "report.md").write_text(text)
            rd.commit()
    assert (out / "report.md").read_text() == "second" and owner(out) == "report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # nothing left beside it


def test_two_ranks_get_rank0s_refusal_and_then_its_claim(tmp_path):
    out = tmp_path / "run"
    code = "import sys, time\nfrom ds_distil.core.rundir import claim\nclaim(sys.argv[1], 'distill', in_place=True)\nprint('held', flush=True)\ntime.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           str(ROOT / "tests" / "helpers" / "claim_ranks.py"), str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = sorted(l for l in proc.stdout.splitlines() if l.startswith("rank "))
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr[-2000:]
    assert lines[0].startswith("rank 0 refused: ") and f"pid {holder.pid}" in lines[0]
    assert lines[1] == lines[0].replace("rank 0", "rank 1", 1)  # the same line on the other rank
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert sorted(l for l in proc.stdout.splitlines() if l.startswith("rank ")) == [f"rank 0 writes {out}", f"rank 1 writes {out}"], proc.stderr[-2000:]


def test_shards_a_running_distillation_reads_are_not_replaced_and_readers_share(tmp_path, small_shards, small_corpus,
                                                                                  mbert_tokenizer_dir):
    """Issue 25, class 2: `prepare --out SHARDS --overwrite` once replaced the shards a distillation was reading (its later
    epochs read other text, both exit 0). Readers hold a shared lock: the writer is refused naming the reader."""
    import shutil

    from ds_distil.core.rundir import hold_inputs

    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    before = tree(shards)
    run = tmp_path / "run"
    reader = subprocess.Popen([sys.executable, "-m", "ds_distil", "distill", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out",
                               str(run), f"data.shards={shards}", "data.num_workers=0", "data.verify_checksums=false",
                               "train.max_steps=100000", "checkpoint.every_steps=0", f"deepspeed.config={ROOT / 'ds_configs' / 'zero2-fp32.json'}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "MASTER_PORT": free_port()})
    try:
        deadline = time.time() + 180
        while not (run / "run_config.yaml").exists():  # it has claimed its --out and holds its inputs
            assert reader.poll() is None and time.time() < deadline, reader.stderr.read()[-2000:]
            time.sleep(0.1)
        second = hold_inputs([shards])  # another reader is welcome
        assert len(second) == 1 and second[0].fd is not None
        line = one_line_error(prepare(shards, small_corpus, mbert_tokenizer_dir, "--overwrite"), f"{shards} is in use",
                              f"read by pid {reader.pid} on host {socket.gethostname()}, since 20", "ds_distil distill")
        started = datetime.datetime.fromisoformat(re.search(r", since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d): ", line).group(1))
        assert abs((started - datetime.datetime.now()).total_seconds()) < 600, line  # the reader's own start, minutes ago
        assert "\n" not in line
        for lock in second:
            lock.release()
    finally:
        reader.send_signal(signal.SIGKILL)
        reader.wait()
    assert {k: v for k, v in tree(shards).items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
    assert prepare(shards, small_corpus, mbert_tokenizer_dir, "--overwrite").returncode == 0  # nobody reads it now
