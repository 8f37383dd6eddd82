"""`ds-distil prepare` on the real Tagalog corpus with the real mBERT tokenizer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import webdataset as wds
from conftest import run_prepare

from ds_distil.data.manifest import load_manifest
from ds_distil.data.documents import BLOCK, BlockSelector
from ds_distil.data.tokenizer import load_tokenizer


def read_split(directory, split):
    """All samples of a split with plain webdataset (none of our code): [(key, ids)] in shard order."""
    manifest = json.loads((directory / "manifest.json").read_text())
    urls = [str(directory / s["name"]) for s in manifest["splits"][split]["shards"]]
    if not urls:
        return []
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False).decode()
    return [(s["__key__"], s["input_ids.npy"]) for s in ds]


def unpack_documents(rows, cls_id, sep_id, pad_id):
    """Invert the packing: strip each row's [CLS], concatenate, cut at [SEP]."""
    stream = np.concatenate([r[1:] for r in rows])
    stream = stream[stream != pad_id]
    cuts = np.flatnonzero(stream == sep_id)
    docs, start = [], 0
    for c in cuts:
        docs.append(stream[start:c])
        start = c + 1
    assert start == len(stream), "the stream must end with [SEP]"
    return docs


def squash(text):
    return "".join(text.split())


def test_mbert_tokenizer_dir_loads_cased(mbert_tokenizer_dir):
    tok = load_tokenizer(str(mbert_tokenizer_dir))
    assert tok.convert_ids_to_tokens(tok("Maynila Ñ", add_special_tokens=False)["input_ids"])[0].startswith("May")
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)
    assert len(tok) == 119547


def test_shards_decode_back_to_the_corpus(full_shards, corpus_docs, mbert_tokenizer_dir):
    manifest = load_manifest(full_shards)
    t = manifest.tokenizer
    tok = load_tokenizer(str(mbert_tokenizer_dir))
    rows = [ids for _, ids in read_split(full_shards, "train")]
    assert all(r.dtype == np.int32 and r.shape == (128,) and r[0] == t["cls_id"] for r in rows)
    docs = unpack_documents(rows, t["cls_id"], t["sep_id"], t["pad_id"])
    val_docs = unpack_documents([ids for _, ids in read_split(full_shards, "val")], t["cls_id"], t["sep_id"], t["pad_id"])
    assert len(docs) + len(val_docs) == len(corpus_docs)
    # Without document shuffling, train then val documents are the corpus in order, split by the selector.
    val = BlockSelector(0.01, 0, salt=1)
    expected_train = [d for i, d in enumerate(corpus_docs) if not val.keep(i)]
    assert len(docs) == len(expected_train)
    for ids, text in zip(docs[:2000], expected_train[:2000]):
        assert ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    # Decoded text equals the corpus text (up to whitespace) for every document without [UNK]
    # (WordPiece cannot give back what it mapped to [UNK]).
    checked = mismatched = 0
    for ids, text in zip(docs, expected_train):
        if t["unk_id"] in ids:
            continue
        checked += 1
        mismatched += squash(tok.decode(ids)) != squash(text)
    assert checked > 0.97 * len(docs)
    assert mismatched <= 20, f"{mismatched} of {checked} documents did not decode back"  # soft hyphens etc. (clean_text)


def test_manifest_counts_equal_the_shards(full_shards):
    manifest = json.loads((full_shards / "manifest.json").read_text())
    tok = manifest["tokenizer"]
    assert tok["vocab_size"] == 119547 and len(tok["vocab_sha256"]) == 64 and tok["lowercase"] is False
    assert manifest["seq_len"] == 128
    total_tokens = 0
    for split, info in manifest["splits"].items():
        samples = read_split(full_shards, split)
        assert len(samples) == info["samples"] == sum(s["samples"] for s in info["shards"])
        tokens = sum(int((ids != tok["pad_id"]).sum()) for _, ids in samples)
        assert tokens == info["tokens"] == sum(s["tokens"] for s in info["shards"])
        keys = [k for k, _ in samples]
        assert keys == [f"{split}-{i:09d}" for i in range(len(keys))]
        padded = [i for i, (_, ids) in enumerate(samples) if (ids == tok["pad_id"]).any()]
        assert padded in ([], [len(samples) - 1]), "only the last sample of a split may be padded"
        for s in info["shards"]:
            data = (full_shards / s["name"]).read_bytes()
            assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        total_tokens += tokens
    assert manifest["splits"]["train"]["samples"] > 20000
    assert (full_shards / "tokenizer" / "tokenizer.json").exists()
    assert (full_shards / "prepare_config.yaml").exists()
    assert not (full_shards / ".prepare-tmp").exists()


def test_fraction_keeps_half_the_same_half_for_the_same_seed(tmp_path, corpus, mbert_tokenizer_dir):
    def kept_docs(name, fraction, seed):
        out = tmp_path / name
        m = run_prepare(out, [corpus], mbert_tokenizer_dir, fraction=fraction, seed=seed, val_fraction=0.0, doc_shuffle_buffer=0)
        return m["documents"], m["splits"]["train"]

    full, _ = kept_docs("f100", 1.0, 0)
    half_a, split_a = kept_docs("f50a", 0.5, 0)
    half_b, split_b = kept_docs("f50b", 0.5, 0)
    n = full["train_documents"]
    assert half_a["train_documents"] + half_a["train_dropped_by_fraction"] == n
    assert abs(half_a["train_documents"] - n / 2) <= BLOCK / 2  # exactly half of every full block
    assert [s["sha256"] for s in split_a["shards"]] == [s["sha256"] for s in split_b["shards"]]
    # the selection itself: the same seed keeps the same documents, another seed others, and 50% ⊂ 80%
    sel = lambda f, seed: {i for i in range(n) if BlockSelector(f, seed, salt=2).keep(i)}
    assert len(sel(0.5, 0)) == half_a["train_documents"]
    assert sel(0.5, 0) != sel(0.5, 1)
    assert sel(0.5, 0) < sel(0.8, 0)


def test_same_input_and_seed_give_identical_shards_and_shuffle_changes_order(tmp_path, corpus, mbert_tokenizer_dir):
    lines = corpus.read_text(encoding="utf-8").splitlines()[:1500]
    src = tmp_path / "part.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    a = run_prepare(tmp_path / "a", [src], mbert_tokenizer_dir, seed=3, doc_shuffle_buffer=500, samples_per_shard=200)
    b = run_prepare(tmp_path / "b", [src], mbert_tokenizer_dir, seed=3, doc_shuffle_buffer=500, samples_per_shard=200)
    c = run_prepare(tmp_path / "c", [src], mbert_tokenizer_dir, seed=3, doc_shuffle_buffer=0, samples_per_shard=200)
    sha = lambda m: [s["sha256"] for s in m["splits"]["train"]["shards"]]
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)
    assert a["splits"]["train"]["tokens"] == c["splits"]["train"]["tokens"]  # same documents, other order


def test_jsonl_and_gzip_inputs(tmp_path, corpus_docs, mbert_tokenizer_dir):
    import gzip

    docs = corpus_docs[:300]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs[:150]), encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(docs[150:]) + "\n")
    m = run_prepare(tmp_path / "out", [tmp_path / "a.jsonl", tmp_path / "b.txt.gz"], mbert_tokenizer_dir,
                    text_field="content", val_fraction=0.0, doc_shuffle_buffer=0)
    assert m["documents"]["train_documents"] == 300
    t = m["tokenizer"]
    got = unpack_documents([ids for _, ids in read_split(tmp_path / "out", "train")], t["cls_id"], t["sep_id"], t["pad_id"])
    tok = load_tokenizer(str(mbert_tokenizer_dir))
    assert [g.tolist() for g in got] == [tok(d, add_special_tokens=False)["input_ids"] for d in docs]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_count_does_not_change_the_output(tmp_path, corpus_docs, mbert_tokenizer_dir, workers):
    src = tmp_path / "part.txt"
    src.write_text("\n".join(corpus_docs[:1200]) + "\n", encoding="utf-8")
    m = run_prepare(tmp_path / f"w{workers}", [src], mbert_tokenizer_dir, workers=workers, samples_per_shard=100)
    ref = run_prepare(tmp_path / "w3", [src], mbert_tokenizer_dir, workers=3, samples_per_shard=100)
    assert [s["sha256"] for s in m["splits"]["train"]["shards"]] == [s["sha256"] for s in ref["splits"]["train"]["shards"]]
