"""Bad input: a one-line error naming the file and what to do, a non-zero exit, nothing half-written taken as good."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, one_line_error, run_cli

from ds_distil.core.errors import CorruptShardError, UserError
from ds_distil.data.manifest import load_manifest
from ds_distil.data.stream import MLMStream
from ds_distil.schema.distill import DataConfig


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


@pytest.mark.parametrize("name", ["keep #2", "keep\nnext"], ids=["hash", "newline"])
def test_a_flag_value_is_the_path_typed_not_what_yaml_reads(tmp_path, corpus_docs, mbert_tokenizer_dir, name):
    """`--out "keep #2" --overwrite` once replaced `keep` (YAML read `#2` as a comment): a flag's value is literal."""
    src = tmp_path / "a.txt"
    src.write_text("\n".join(corpus_docs[:50]))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("not ds-distil's")
    proc = run_cli(*prepare_args(tmp_path / name, src, tok=mbert_tokenizer_dir), "--overwrite", "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / name / "manifest.json").is_file() and (keep / "mine.txt").read_text() == "not ds-distil's"
    assert sorted(p.name for p in keep.iterdir()) == ["mine.txt"]


def test_an_override_yaml_would_change_is_refused_and_a_quoted_one_is_literal():
    from ds_distil.core.config import ConfigError, load_dict

    with pytest.raises(ConfigError, match="the value of data.shards reads as YAML 'keep', not 'keep #2'.*quote it"):
        load_dict([], ["data.shards=keep #2"])
    assert load_dict([], ["data.shards='keep #2'", "train.lr=1e-4", "data.shards2=a#b"]) == {
        "data": {"shards": "keep #2", "shards2": "a#b"}, "train": {"lr": 1e-4}}
    from ds_distil.schema.study import overrides_of  # a study's string values reach the command as the strings they are

    assert overrides_of({"data": {"shards": "runs/a #1", "seed": 3}, "model_name": "007"}) == [
        'data.shards="runs/a #1"', "data.seed=3", 'model_name="007"']
    assert load_dict([], overrides_of({"data": {"shards": "runs/a #1"}})) == {"data": {"shards": "runs/a #1"}}


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


# ---------------------------------------------------------------------------------------------
# Issue 14: cases 7 and 9, and the tracebacks that became one line.


def test_tokenizer_that_cannot_tokenize_is_refused(tmp_path, corpus_docs, mbert_tokenizer_dir):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(corpus_docs[:50]))
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    one_line_error(run_cli(*prepare_args(tmp_path / "o1", src, tok=only_config)), "only_config", "probe sentence", "[UNK]")
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    one_line_error(run_cli(*prepare_args(tmp_path / "o2", src, tok=empty)), "cannot load tokenizer", "vocab.txt or tokenizer.json")
    broken = tmp_path / "broken_tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    one_line_error(run_cli(*prepare_args(tmp_path / "o3", src, tok=broken)), "cannot load tokenizer", "broken_tok")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_long_lines_are_read_in_bounded_pieces_and_counted(tmp_path, corpus_docs, mbert_tokenizer_dir):
    import io

    from ds_distil.data.lines import bounded_lines

    words = " ".join(corpus_docs[:2000]).split()
    long_line = " ".join(words)[: 300_000] + " Ñ" * 10  # one line of ~300 KB
    limit = 4096

    class Recording(io.BytesIO):
        largest = 0

        def readline(self, size=-1):
            assert 0 < size <= limit + 1, size  # never an unbounded read
            line = super().readline(size)
            Recording.largest = max(Recording.largest, len(line))
            return line

    pieces = list(bounded_lines(Recording(f"short one\n{long_line}\nlast\n".encode()), limit))
    assert Recording.largest <= limit + 1
    assert all(len(p) <= limit + 1 for p, _ in pieces) and [c for _, c in pieces].count(False) == 3
    assert b"".join(p + (b" " if c else b"") for p, c in pieces).decode() == f"short one\n{long_line}\nlast\n"

    src = tmp_path / "long.txt"
    src.write_text("\n".join(corpus_docs[:20]) + "\n" + long_line + "\n" + "\n".join(corpus_docs[20:40]) + "\n", encoding="utf-8")
    proc = run_cli(*prepare_args(tmp_path / "o", src, tok=mbert_tokenizer_dir), "--max-line-bytes", str(limit), "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "long.txt:21 is longer than max_line_bytes=4096: cut into several documents" in proc.stderr
    docs = load_manifest(tmp_path / "o").data["documents"]
    assert docs["long_lines_split"] == 1 and docs["train_documents"] > 40 + len(long_line.encode()) // limit
    (tmp_path / "long.jsonl").write_text('{"text": "isang maikling linya dito"}\n' + json.dumps({"text": long_line}) + "\n")
    proc = run_cli(*prepare_args(tmp_path / "oj", tmp_path / "long.jsonl", tok=mbert_tokenizer_dir), "--max-line-bytes", str(limit),
                   "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_manifest(tmp_path / "oj").data["documents"] == {"long_lines_skipped": 1, "train_documents": 1}


def test_corrupt_shard_in_a_dataloader_worker_is_the_start_up_line(shards_copy):
    victim = sorted(shards_copy.glob("train-*.tar"))[1]
    corrupt_middle(victim)
    at_start = one_line_error(run_cli("inspect", "--shards", str(shards_copy), "data.num_workers=1"), victim.name)
    in_worker = one_line_error(run_cli("inspect", "--shards", str(shards_copy), "--batches", "1000", "data.num_workers=2",
                                       "data.verify_checksums=false", "data.shuffle=false"), victim.name)
    assert in_worker.split(": ")[0] == at_start.split(": ")[0]  # "ds-distil inspect: error: corrupt shard ..."
    assert "corrupt shard" in in_worker and "skip_corrupt_shards" in in_worker and "Traceback" not in in_worker


def test_skip_corrupt_shards_also_skips_what_the_start_up_check_finds(shards_copy, caplog):
    victim = sorted(shards_copy.glob("train-*.tar"))[1]
    corrupt_middle(victim)
    manifest = load_manifest(shards_copy)
    stream = MLMStream(manifest, DataConfig(shards=str(shards_copy), num_workers=0, skip_corrupt_shards=True), batch_size=4)
    assert str(victim) in stream.bad_shards
    batches = list(stream.epoch_batches())
    assert len(batches) == stream.steps_per_epoch
    assert stream.n_samples - sum(int((b["index"] >= 0).sum()) for b in batches) == manifest.shards("train")[1].samples


def test_damaged_manifest_is_one_line(shards_copy):
    data = json.loads((shards_copy / "manifest.json").read_text())
    del data["splits"]
    (shards_copy / "manifest.json").write_text(json.dumps(data))
    one_line_error(run_cli("inspect", "--shards", str(shards_copy)), "no 'splits'", "re-run prepare")


def test_latin1_task_files_are_one_line(tmp_path):
    from ds_distil.data.tasks import read_conllu_upos, read_iob2

    (tmp_path / "a.conllu").write_bytes(b"# sent_id = 1\n" + "1\tMaynila\xf1\t_\tPROPN\t_\t_\t0\troot\t_\t_\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"a\.conllu:2 is not valid UTF-8"):
        read_conllu_upos(tmp_path / "a.conllu")
    (tmp_path / "a.iob2").write_bytes("Maynila\xf1\tB-LOC\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"a\.iob2:1 is not valid UTF-8"):
        read_iob2(tmp_path / "a.iob2")


@pytest.mark.parametrize("n_articles", [10, 12, 14])
def test_build_nli_from_few_articles(tmp_path, n_articles):
    articles = tmp_path / "a.csv"
    articles.write_text("article\n" + "".join(f'"Una ito ay {i}. Pangalawa ito ay dito. Pangatlo ito ay doon. Pang-apat ito ay {i}."\n'
                                              for i in range(n_articles)))
    proc = run_cli("tasks", "build-nli", "--articles", str(articles), "--out", str(tmp_path / "nli"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for split in ("train", "valid", "test"):
        assert len((tmp_path / "nli" / f"{split}.csv").read_text().splitlines()) > 1, split


def test_corrupt_weights_in_a_model_directory_is_one_line(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = tmp_path / "model"
    BertForMaskedLM(BertConfig(vocab_size=119547, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)).save_pretrained(str(model))
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:5000])
    from ds_distil.model.build import _from_pretrained

    with pytest.raises(UserError, match="cannot load teacher .*model"):
        _from_pretrained(str(model), "teacher")


def test_a_study_whose_yaml_alias_holds_itself_is_one_line(tmp_path):
    study = tmp_path / "loop.yaml"
    study.write_text("name: loop\nteacher: {source: pretrain}\ndistill:\n  settings: &s\n    again: *s\n")
    one_line_error(run_cli("experiment", str(study), "--out", str(tmp_path / "o"), "--dry-run"), "loop.yaml", "refers to the node that holds it")


@pytest.mark.parametrize(("errno_name", "needle"), [("ENOSPC", "no space left on the device"), ("EFBIG", "larger than allowed"),
                                                    ("EBUSY", "not a mount point"), ("EACCES", "permission denied")])
def test_operating_system_errors_are_one_line_naming_the_path(errno_name, needle, monkeypatch, capsys):
    """Whatever command meets them (here a stand-in handler raising what the OS would: a small tmpfs, ulimit -f, a
    busy mount point): one line with the path, the meaning and what to do, exit 1, no traceback."""
    import errno
    import os

    from ds_distil import cli

    def handler(args):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), "/data/out/shard-000003.tar")

    monkeypatch.setitem(cli.HANDLERS, "inspect", handler)
    assert cli.main(["inspect", "--shards", "/data/shards"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("ds-distil inspect: error: ") and needle in err and "/data/out/shard-000003.tar" in err and errno_name in err


def test_a_file_size_limit_met_while_writing_shards_is_one_line_and_keeps_the_old_output(tmp_path, corpus_docs, mbert_tokenizer_dir):
    """ulimit -f (RLIMIT_FSIZE) for real: the shard write fails with EFBIG (Python ignores SIGXFSZ); the earlier output
    stays as it was."""
    import resource

    src = tmp_path / "a.txt"
    src.write_text("\n".join(corpus_docs[:3000]))
    out = tmp_path / "shards"
    assert run_cli(*prepare_args(out, src, tok=mbert_tokenizer_dir), "--val-fraction", "0").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "ds_distil", *prepare_args(out, src, tok=mbert_tokenizer_dir), "--overwrite",
                           "--val-fraction", "0", "--samples-per-shard", "100000"], capture_output=True, text=True, cwd=ROOT, preexec_fn=limit,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "larger than allowed" in lines[0] and "EFBIG" in lines[0] and "Traceback" not in proc.stderr
    assert "train-000000.tar" in lines[0]  # the shard being written
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 5 MiB tmpfs mounted for the test (root only: elsewhere the stand-in test above covers the message)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): the stand-in test covers ENOSPC and EBUSY")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def os_error_line(proc, *needles) -> str:
    """A command stopped by the operating system: exit 1, one 'error:' line holding every needle, no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".ds-distil.lock"}


def test_a_full_disk_and_a_busy_mount_point_are_one_line_each_and_keep_the_old_output(small_tmpfs, tmp_path, corpus_docs,
                                                                                      mbert_tokenizer_dir):
    """For real: a prepare --overwrite that fills a small tmpfs (ENOSPC, in the tokenizer's files, a Rust error, or a
    shard) is one line, exit 1, the earlier output byte for byte as it was, no staging directory left; a prepare whose
    --out is the mount point itself (it used to end in EBUSY once the work was done) is refused before it starts."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("\n".join(corpus_docs[:200]))
    big.write_text("\n".join(corpus_docs))
    out = small_tmpfs / "shards"
    assert run_cli(*prepare_args(out, small, tok=mbert_tokenizer_dir), "--val-fraction", "0").returncode == 0
    before = _files(small_tmpfs)
    # the old output takes 3 of the 5 MiB: a new one of the same text fills the disk in the tokenizer's files (a Rust
    # error, not an OSError), one of the whole corpus in its shards
    for text, where in ((small, f"{out}/tokenizer"), (big, f"{out}/train-")):
        proc = run_cli(*prepare_args(out, text, tok=mbert_tokenizer_dir), "--val-fraction", "0", "--overwrite")
        # the path in the output it was writing (not the staging sibling, gone by now)
        os_error_line(proc, "no space left on the device", "ENOSPC", f"at {where}", "(the new output, not yet in place)")
        assert _files(small_tmpfs) == before and [p.name for p in small_tmpfs.iterdir()] == ["shards"]

    # the mount point itself as --out: the new output cannot be swapped in for it (EBUSY, once all the work was
    # done): refused before any work, the mount point left as it was
    shutil.rmtree(out)
    one_line_error(run_cli(*prepare_args(small_tmpfs, small, tok=mbert_tokenizer_dir)), str(small_tmpfs), "is a mount point",
                   f"{small_tmpfs}/prepare")
    assert list(small_tmpfs.iterdir()) == []
    (small_tmpfs / "mine.txt").write_text("a file of the user's")
    one_line_error(run_cli(*prepare_args(small_tmpfs, small, tok=mbert_tokenizer_dir), "--overwrite"), "is a mount point")
    assert [p.name for p in small_tmpfs.iterdir()] == ["mine.txt"]
    assert not [p for p in small_tmpfs.parent.iterdir() if p.name.startswith(".small")]  # no staging sibling left


def test_a_study_with_more_local_ranks_than_cores_is_refused_before_it_starts(tmp_path):
    proc = run_cli("experiment", str(ROOT / "configs" / "studies" / "demo.yaml"), "--out", str(tmp_path / "o"), "--dry-run", "ranks=100000")
    one_line_error(proc, "ranks 100,000 would start 100,000 processes per stage", "--launcher srun")
    assert not (tmp_path / "o").exists()


def test_the_micro_batch_estimate_grows_with_the_batch_as_the_step_does():
    """Linear in the batch (it once counted the masked positions of every sequence once per sequence: a batch of 1e20
    "needed" 3e44 GiB), and of the size the layers and heads of a real step hold: dBERT Tiny, batch 32, sequences of
    128, 20 masked per sequence, mBERT's vocabulary, fp32: 4 x 32 x 128 x 312 x (34 + 5 x 12 x 128 / 312) x 2 bytes of
    activations and 4 x 640 x 119,547 x 4 of logits."""
    from transformers import BertConfig

    from ds_distil.runtime.memory import micro_batch_bytes

    tiny = BertConfig(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
    one = micro_batch_bytes(tiny, 32, 128, 32 * 20, 119547, 4)
    assert one == pytest.approx(4 * 32 * 128 * 312 * (34 + 5 * 12 * 128 / 312) * 2 + 4 * 640 * 119547 * 4)
    assert micro_batch_bytes(tiny, 64, 128, 64 * 20, 119547, 4) == pytest.approx(2 * one)


# ---------------------------------------------------------------------------------------------
# Issue 37: every file we read is untrusted; OS errors in one line; nothing silently accepted.


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["splits"]["train"]["shards"][0].update(name="/etc/passwd"), "splits.train.shards[0].name: names a file outside"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="../other/train-000000.tar"), "splits.train.shards[0].name: names a file"),
    (lambda m: m["splits"]["train"]["shards"][0].update(samples="40"), "splits.train.shards[0].samples: input should be a valid integer"),
    (lambda m: m["splits"]["train"]["shards"][0].update(sha256="abc"), "splits.train.shards[0].sha256: string should match pattern"),
    (lambda m: m.update(seq_len=1), "seq_len: input should be greater than or equal to 2"),
    (lambda m: m["tokenizer"].update(pad_id=10**9), "tokenizer: a special token id is not below vocab_size 119547"),
    (lambda m: m["tokenizer"].pop("mask_id"), "no 'tokenizer.mask_id'"),
    (lambda m: m.pop("splits"), "no 'splits'"),
])
def test_a_damaged_shard_manifest_is_one_line_before_a_shard_is_opened(shards_copy, monkeypatch, edit, message):
    from ds_distil.data import manifest as manifest_module

    data = json.loads((shards_copy / "manifest.json").read_text())
    edit(data)
    (shards_copy / "manifest.json").write_text(json.dumps(data))
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: pytest.fail(f"{p} was hashed"))
    with pytest.raises(UserError) as e:
        load_manifest(shards_copy).verify("train", checksums=True)
    assert str(e.value).startswith(f"{shards_copy / 'manifest.json'}: {message}") and str(e.value).endswith("re-run prepare"), str(e.value)


def test_a_write_that_fills_the_disk_is_enospc_naming_the_file_and_leaves_no_temporary(small_tmpfs):
    """What the teacher cache writes its files with (core.io.atomic_file, the bytes np.save writes): a full disk was
    "296 requested and 62 written; check the path and retry" and an 86 KB temporary file left on the full disk."""
    import numpy as np

    from ds_distil.core.errors import os_error_line
    from ds_distil.core.io import atomic_file

    target = small_tmpfs / "copy0" / "train-000000.npy"
    target.parent.mkdir()
    records = np.zeros(6 << 20, dtype=np.uint8)  # 6 MiB on a 5 MiB file system
    with pytest.raises(OSError) as e:
        with atomic_file(target) as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(records))
            f.write(records.data)
    line = os_error_line(e.value)
    assert line.startswith(f"no space left on the device at {target} (ENOSPC"), line
    assert list(target.parent.iterdir()) == []  # neither the file nor its temporary


def test_an_out_too_long_for_its_files_is_refused_before_any_work_and_paths_are_text(tmp_path):
    """A 4,031-character finetune --out got as far as TensorBoard's writer thread (a traceback) and then "the path is too
    long at b'...'": refused at the claim now, the path shown as text, shortened."""
    import errno
    import os

    from ds_distil.core.errors import os_error_line
    from ds_distil.core.rundir import claim

    long_out = tmp_path.joinpath(*["d" * 200] * 20)
    with pytest.raises(UserError, match=r"--out /\S{70,80}\.\.\.d{80} \(4,\d{3} characters\) is 4,\d{3} bytes long; with the files written "
                                        r"below it \(up to 200 more\) it passes this file system's limit of 4,096 \(PATH_MAX\)"):
        claim(long_out, "finetune")
    assert not (tmp_path / ("d" * 200)).exists()
    with pytest.raises(UserError, match=r"has a name of 250 bytes: the staging directory beside it"):
        claim(tmp_path / ("n" * 250), "finetune")
    line = os_error_line(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsencode(str(long_out))))
    assert "b'" not in line and f"at {str(long_out)[:80]}..." in line and "ENAMETOOLONG" in line


def test_tensorboards_writer_thread_failing_is_one_warning_not_a_traceback(tmp_path, capfd, caplog):
    """The event file cannot be written (here: its path passes PATH_MAX): the main thread gets the error at the start
    (Metrics flushes), the writer thread's own report is one warning line."""
    import os
    import threading

    from ds_distil.core.quiet import quiet_writer_threads
    from ds_distil.runtime.metrics import Metrics

    deep = tmp_path
    while len(os.fsencode(str(deep))) < 4096 - 250:
        deep = deep / ("t" * 200)
    deep = deep / ("t" * (4096 - 30 - len(os.fsencode(str(deep)))))  # room for "/tensorboard", not for its event file
    deep.mkdir(parents=True)
    before = threading.excepthook
    quiet_writer_threads()
    try:
        with caplog.at_level(logging.WARNING):
            with pytest.raises(OSError) as e:
                Metrics(deep, enabled=True, tensorboard=True, total_steps=1, start_step=0)
            for t in threading.enumerate():  # the writer thread reports after it hands the error over
                if type(t).__name__ == "_AsyncWriterThread":
                    t.join(10)
    finally:
        threading.excepthook = before
    assert e.value.errno == 36  # ENAMETOOLONG
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    warned = [r.getMessage() for r in caplog.records if "TensorBoard's event writer stopped" in r.getMessage()]
    assert len(warned) == 1 and "the path is too long at" in warned[0] and "b'" not in warned[0], warned


def test_an_error_line_puts_no_control_characters_on_the_terminal(monkeypatch, capsys):
    from ds_distil import cli

    def handler(args):
        raise UserError("x.csv has no column 'text' (columns: t\0e\0x\0t\0, a\nb)")

    monkeypatch.setitem(cli.HANDLERS, "inspect", handler)
    assert cli.main(["inspect", "--shards", "/data/shards"]) == 2
    err = capsys.readouterr().err
    assert err == "ds-distil inspect: error: x.csv has no column 'text' (columns: t\\x00e\\x00x\\x00t\\x00, a\\nb)\n"


def test_a_corpus_that_is_mostly_unk_is_warned_about(tmp_path, corpus_docs, mbert_tokenizer_dir, caplog):
    """One long 'a'-run per line (words over WordPiece's 100 characters): 296 samples of [CLS] [UNK] [SEP] were made
    without a word; a real corpus (~0.1% [UNK] under mBERT) is not warned about."""
    from conftest import run_prepare

    src, real = tmp_path / "aaa.txt", tmp_path / "real.txt"
    src.write_text(("a" * 4000 + "\n") * 300)
    real.write_text("\n".join(corpus_docs[:200]))
    with caplog.at_level(logging.WARNING):
        run_prepare(tmp_path / "o", [src], mbert_tokenizer_dir, val_fraction=0.0, workers=1)
        warned = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
        assert len(warned) == 1 and re.match(r"100\.0% of the corpus's 300 tokens are \[UNK\] \(the tokenizer .* has no piece", warned[0])
        caplog.clear()
        run_prepare(tmp_path / "o2", [real], mbert_tokenizer_dir, val_fraction=0.0, workers=1)
        assert not [r for r in caplog.records if "[UNK]" in r.getMessage()]
