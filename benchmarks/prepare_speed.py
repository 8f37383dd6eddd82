"""Preparation throughput: `ds-distil prepare` against the tokenizer's own batch encode, same corpus, same run.

    python -m benchmarks.prepare_speed [--corpus FILE] [--tokenizer DIR] [--repeats 3]

Baselines: (1) `backend_tokenizer.encode_batch(all documents)`: the Rust tokenizer on all cores, the
fastest a single call gets, and a lower bound of what tokenization alone costs; (2) the
transformers `tokenizer(list_of_documents)` call. Ours includes reading, document selection,
packing, tar writing, checksums and the manifest. Median of --repeats runs each.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_out_argument, command_line, device_info, header, versions, write_report

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--corpus", default=str(DATA / "corpus" / "tl_corpus_combined.txt"))
    p.add_argument("--tokenizer", default=str(DATA / "mbert_tokenizer"))
    p.add_argument("--repeats", type=int, default=3)
    add_out_argument(p, "--out-dir")
    args = p.parse_args()

    from ds_distil.data.shards import prepare
    from ds_distil.data.tokenizer import load_tokenizer
    from ds_distil.schema.prepare import PrepareConfig

    docs = [line.strip() for line in open(args.corpus, encoding="utf-8") if line.strip()]
    tok = load_tokenizer(args.tokenizer)
    os.environ.pop("TOKENIZERS_PARALLELISM", None)  # let the baseline use every core
    rows = []
    t, enc = timed(lambda: tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False), args.repeats)
    n_tokens = sum(len(e.ids) for e in enc)
    rows.append({"method": "baseline: backend_tokenizer.encode_batch(all docs), Rust threads on all cores", "seconds": t, "tokens": n_tokens})
    t, _ = timed(lambda: tok(docs, add_special_tokens=False)["input_ids"], args.repeats)
    rows.append({"method": "baseline: transformers tokenizer(all docs)", "seconds": t, "tokens": n_tokens})
    manifest = None
    for workers in (1, os.cpu_count()):
        with tempfile.TemporaryDirectory() as tmp:
            def run():
                return prepare(PrepareConfig(out=tmp, input=[args.corpus], tokenizer=args.tokenizer, workers=workers, overwrite=True))
            t, manifest = timed(run, args.repeats)
        # content tokens (no [CLS]/[SEP]) so the comparison with the baselines is like for like
        content = sum(s["tokens"] - s["samples"] for s in manifest["splits"].values()) - sum(manifest["documents"][f"{k}_documents"] for k in ("train", "val"))
        rows.append({"method": f"ds-distil prepare, {workers} tokenizer process(es): read, select, tokenize, pack, write shards", "seconds": t, "tokens": content})
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    shards = [(split, s) for split, info in manifest["splits"].items() for s in info["shards"]]
    result = {
        "what": "prepare_speed", "date": datetime.date.today().isoformat(), "device": device_info(), "versions": versions(),
        "config": {"corpus": args.corpus, "corpus_bytes": Path(args.corpus).stat().st_size, "documents": len(docs),
                   "tokenizer": args.tokenizer, "seq_len": manifest["seq_len"], "samples_per_shard": manifest["config"]["samples_per_shard"],
                   "repeats": args.repeats},
        "rows": rows,
        "shards": [{"split": split, "name": s["name"], "samples": s["samples"], "bytes": s["bytes"]} for split, s in shards],
    }
    base = rows[0]["tokens_per_s"]
    md = header("Preparation throughput", result, command_line("benchmarks.prepare_speed"))
    md += (f"Corpus: {result['config']['corpus_bytes'] / 2**20:.1f} MiB, {len(docs):,} documents, {n_tokens:,} tokens "
           f"(mBERT WordPiece); seq_len {manifest['seq_len']}. Median of {args.repeats} runs; wall-clock, process start excluded.\n\n")
    md += "| method | seconds | tokens/s | vs encode_batch |\n|---|---:|---:|---:|\n"
    for r in rows:
        md += f"| {r['method']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x |\n"
    md += f"\nShards written: {len(shards)}: " + ", ".join(f"{s['name']} {s['samples']} samples {s['bytes'] / 2**20:.1f} MiB" for _, s in shards) + "\n"
    paths = write_report("prepare_speed", result, md, Path(args.out))
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
