"""Host memory of streaming: peak RSS of one epoch over the corpus, against the corpus repeated 10 times.

    python -m benchmarks.stream_memory [--repeat 10] [--workers 2] [--batch-size 32]

Each epoch runs in a fresh process; peak RSS is that process's maximum resident set plus the
largest of its DataLoader workers' (getrusage). If memory grew with the corpus, the 10x row would
show it. Preparation of both corpora is measured the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import add_out_argument, command_line, device_info, header, versions, write_report

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

CHILD = r"""
import json, resource, sys, time
from ds_distil.schema.distill import DataConfig
from ds_distil.data.manifest import load_manifest
from ds_distil.data.stream import MLMStream
shards, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stream = MLMStream(load_manifest(shards), DataConfig(shards=shards, num_workers=workers), batch_size=batch)
t0 = time.perf_counter(); n = 0
for b in stream.epoch_batches():
    n += int((b["index"] >= 0).sum())
dt = time.perf_counter() - t0
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"samples": n, "seconds": dt, "main_peak_rss_mib": self_kb / 1024, "worker_peak_rss_mib": child_kb / 1024}))
"""

PREP_CHILD = r"""
import json, resource, sys, time
from ds_distil.core.config import PrepareConfig
from ds_distil.data.shards import prepare
t0 = time.perf_counter()
m = prepare(PrepareConfig(out=sys.argv[1], input=[sys.argv[2]], tokenizer=sys.argv[3], overwrite=True))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "train_samples": m["splits"]["train"]["samples"], "shards": len(m["splits"]["train"]["shards"]),
                  "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--corpus", default=str(DATA / "corpus" / "tl_corpus_combined.txt"))
    p.add_argument("--tokenizer", default=str(DATA / "mbert_tokenizer"))
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    add_out_argument(p)
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / f"corpus_x{args.repeat}.txt"
        text = Path(args.corpus).read_bytes()
        with open(big, "wb") as f:
            for _ in range(args.repeat):
                f.write(text)
        for label, src in (("corpus x1", args.corpus), (f"corpus x{args.repeat}", str(big))):
            shards = str(Path(tmp) / label.replace(" ", "_"))
            prep = child(PREP_CHILD, shards, src, args.tokenizer)
            epoch = child(CHILD, shards, str(args.workers), str(args.batch_size))
            rows.append({"input": label, "input_mib": Path(src).stat().st_size / 2**20, "prepare": prep, "stream_epoch": epoch})
            print(label, json.dumps(rows[-1]))
    result = {"what": "stream_memory", "date": datetime.date.today().isoformat(), "device": device_info(), "versions": versions(),
              "config": vars(args), "rows": rows}
    md = header("Host memory of preparing and streaming: corpus once vs repeated", result, command_line("benchmarks.stream_memory"))
    md += (f"One full epoch per row, micro batch {args.batch_size}, {args.workers} DataLoader workers, default shuffle buffer; "
           "peak RSS in MiB (main process; largest worker).\n\n")
    md += "| input | MiB | train samples | prepare s | prepare peak RSS main / worker | epoch s | samples/s | stream peak RSS main / worker |\n"
    md += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    for r in rows:
        pr, ep = r["prepare"], r["stream_epoch"]
        md += (f"| {r['input']} | {r['input_mib']:.1f} | {ep['samples']:,} | {pr['seconds']:.1f} | {pr['main_peak_rss_mib']:.0f} / {pr['worker_peak_rss_mib']:.0f} "
               f"| {ep['seconds']:.1f} | {ep['samples'] / ep['seconds']:,.0f} | {ep['main_peak_rss_mib']:.0f} / {ep['worker_peak_rss_mib']:.0f} |\n")
    paths = write_report("stream_memory", result, md, Path(args.out))
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
