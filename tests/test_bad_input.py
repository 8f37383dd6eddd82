"""Bad input: a one-line error naming the file and what to do, a non-zero exit, nothing half-written taken as good."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from ds_distil.config import DataConfig
from ds_distil.data import MLMStream, load_manifest
from ds_distil.errors import CorruptShardError, UserError


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def prepare_args(out, *inputs, tok):
    return ["prepare", "--input", *map(str, inputs), "--tokenizer", str(tok), "--out", str(out)]


def test_missing_input(tmp_path, mbert_tokenizer_dir):
    one_line_error(run_cli(*prepare_args(tmp_path / "o", tmp_path / "nope.txt", tok=mbert_tokenizer_dir)), "nope.txt", "does not exist")
    assert not (tmp_path / "o").exists()


def test_empty_input(tmp_path, mbert_tokenizer_dir):
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    one_line_error(run_cli(*prepare_args(tmp_path / "o", tmp_path / "empty.txt", tok=mbert_tokenizer_dir)), "empty.txt", "no documents")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_non_utf8_line_names_file_and_line_and_can_be_skipped(tmp_path, corpus_docs, mbert_tokenizer_dir):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("\n".join(corpus_docs[:5]) + "\n").encode() + "Pilipinas ñ\n".encode("latin-1") + b"ok pa rin\n")
    one_line_error(run_cli(*prepare_args(tmp_path / "o", bad, tok=mbert_tokenizer_dir)), "latin1.txt:6", "not valid UTF-8", "--skip-bad-lines")
    ok = run_cli(*prepare_args(tmp_path / "o", bad, tok=mbert_tokenizer_dir), "--skip-bad-lines", "--val-fraction", "0")
    assert ok.returncode == 0, ok.stderr
    assert load_manifest(tmp_path / "o").data["documents"] == {"bad_lines_skipped": 1, "train_documents": 6}


def test_jsonl_without_the_text_field(tmp_path, mbert_tokenizer_dir):
    (tmp_path / "a.jsonl").write_text('{"text": "isa"}\n{"body": "dalawa"}\n')
    one_line_error(run_cli(*prepare_args(tmp_path / "o", tmp_path / "a.jsonl", tok=mbert_tokenizer_dir)), "a.jsonl:2", "'text'")


def test_existing_output_needs_overwrite(tmp_path, corpus_docs, mbert_tokenizer_dir):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(corpus_docs[:50]))
    assert run_cli(*prepare_args(tmp_path / "o", src, tok=mbert_tokenizer_dir)).returncode == 0
    one_line_error(run_cli(*prepare_args(tmp_path / "o", src, tok=mbert_tokenizer_dir)), "--overwrite")
    assert run_cli(*prepare_args(tmp_path / "o", src, tok=mbert_tokenizer_dir), "--overwrite").returncode == 0


def test_hub_dataset_offline_gives_the_way_out(tmp_path, mbert_tokenizer_dir):
    proc = run_cli("prepare", "--hf-dataset", "oscar-corpus/OSCAR-2301", "--hf-config", "tl", "--text-field", "text",
                   "--tokenizer", str(mbert_tokenizer_dir), "--out", str(tmp_path / "o"), env={"HF_HUB_OFFLINE": "1"})
    one_line_error(proc, "oscar-corpus/OSCAR-2301", "--input")


def test_hub_tokenizer_offline(tmp_path, corpus):
    proc = run_cli("prepare", "--input", str(corpus), "--tokenizer", "bert-base-multilingual-cased", "--out", str(tmp_path / "o"),
                   env={"HF_HUB_OFFLINE": "1"})
    one_line_error(proc, "bert-base-multilingual-cased", "local tokenizer directory")


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, corpus, mbert_tokenizer_dir):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "ds_distil", *prepare_args(out, corpus, tok=mbert_tokenizer_dir), "--samples-per-shard", "300"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # shards go into a hidden sibling of --out (swapped in when complete): wait for the first one there
    while not list(tmp_path.glob(".o.ds-distil-new-*/train-*.tar")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be interrupted"
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tar")) if out.exists() else True, "no shard may sit where finished shards go"
    with pytest.raises(UserError, match="interrupted"):
        load_manifest(out)
    proc = run_cli("inspect", "--shards", str(out))
    one_line_error(proc, "no manifest.json", "run prepare again")
    # running it again works and cleans up what the killed run left
    assert run_cli(*prepare_args(out, corpus, tok=mbert_tokenizer_dir), "--max-docs", "200").returncode == 0
    assert not list(tmp_path.glob(".o.ds-distil-*")) and (out / "manifest.json").exists()


@pytest.fixture
def shards_copy(small_shards, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(small_shards, dst)
    return dst


def test_truncated_shard_is_named_before_training_starts(shards_copy):
    victim = sorted(shards_copy.glob("train-*.tar"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError, match=f"{victim.name}.*truncated"):
        MLMStream(load_manifest(shards_copy), DataConfig(shards=str(shards_copy)), batch_size=4)
    one_line_error(run_cli("inspect", "--shards", str(shards_copy)), victim.name, "re-run `ds-distil prepare`")


def corrupt_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes((i * 37 + 11) % 256 for i in range(4096))
    path.write_bytes(bytes(data))


def test_corrupt_shard_found_by_checksum_at_start(shards_copy):
    victim = sorted(shards_copy.glob("train-*.tar"))[1]
    corrupt_middle(victim)
    with pytest.raises(CorruptShardError, match=f"{victim.name}: sha256 differs"):
        MLMStream(load_manifest(shards_copy), DataConfig(shards=str(shards_copy)), batch_size=4)


def test_corrupt_shard_found_mid_stream_is_named_or_skipped_when_asked(shards_copy, caplog):
    victim = sorted(shards_copy.glob("train-*.tar"))[1]
    corrupt_middle(victim)
    manifest = load_manifest(shards_copy)
    cfg = dict(shards=str(shards_copy), verify_checksums=False, num_workers=0, shuffle=False)
    with pytest.raises(CorruptShardError, match=f"corrupt shard .*{victim.name}"):
        for _ in MLMStream(manifest, DataConfig(**cfg), batch_size=4).epoch_batches():
            pass
    stream = MLMStream(manifest, DataConfig(**cfg, skip_corrupt_shards=True), batch_size=4)
    with caplog.at_level(logging.WARNING):
        batches = list(stream.epoch_batches())
    assert len(batches) == stream.steps_per_epoch  # the epoch still has its full number of steps
    seen = sum(int((b["index"] >= 0).sum()) for b in batches)
    assert 0 < stream.n_samples - seen <= manifest.shards("train")[1].samples
    assert any("skipping the rest of corrupt shard" in r.message and victim.name in r.message for r in caplog.records)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "train-000000.tar").write_bytes(b"")
    one_line_error(run_cli("inspect", "--shards", str(tmp_path)), "no manifest.json")


def test_manifest_of_another_tokenizer_is_refused(shards_copy, tmp_path):
    tiny = tmp_path / "tiny_tok"
    tiny.mkdir()
    (tiny / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "isa", "dalawa"]) + "\n")
    line = one_line_error(run_cli("inspect", "--shards", str(shards_copy), "--tokenizer", str(tiny)), "vocab 7", "re-run `ds-distil prepare`")
    assert "119547" in line
