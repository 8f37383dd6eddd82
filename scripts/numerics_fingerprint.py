"""Fingerprint the numerics of distillation: run four fixed-seed CPU distillations and hash what they produced.

For a refactor that must not move the numbers: run it before and after, and compare the JSON it prints.
The runs are the smoke config (tiny teacher, micro student, fp32 ZeRO-2), 20 optimizer steps, validation at
steps 10 and 20, on 1 rank and on 2 ranks (torchrun), with the full mBERT vocabulary and with the corpus's
trimmed vocabulary (`ds-distil vocab`). Per run it records the sha256 of the exported model.safetensors and of
metrics.jsonl with the keys that depend on the clock or the machine's load removed (time, throughput, memory,
validation seconds), keys sorted.

    python scripts/numerics_fingerprint.py --work /tmp/nf [--keep-resumable]

Everything is written under --work (shards, vocabulary, runs) and the fingerprint to WORK/fingerprint.json.
--keep-resumable also leaves WORK/resumable: the 1-rank full-vocabulary run with its step-20 checkpoint removed,
so that a later checkout can `--resume` it from step 10 (a run directory made before a change, continued after it)
and export the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DS_DISTIL_DATA", ROOT.parent / "shared" / "data"))
CLOCK_KEYS = ("time", "val/seconds", "cpu/rss_gib")
CLOCK_PREFIXES = ("throughput/", "gpu/")
RUN_SETTINGS = ["train.max_steps=20", "checkpoint.every_steps=10", "log.every_steps=5", "log.eval_every_steps=10",
                "log.eval_max_samples=64", "data.num_workers=1"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalised_metrics(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows.append({k: v for k, v in sorted(r.items()) if k not in CLOCK_KEYS and not k.startswith(CLOCK_PREFIXES)})
    return rows


def ds_distil(args: list[str], ranks: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if ranks == 1:
        cmd = [sys.executable, "-m", "ds_distil", *args]
    else:
        with socket.socket() as s:  # a port the OS finds free, for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(port),
               "-m", "ds_distil", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def fingerprint(run: Path) -> dict:
    rows = normalised_metrics(run / "metrics.jsonl")
    return {"student_safetensors_sha256": sha256(run / "student" / "model.safetensors"),
            "metrics_sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
            "metrics_lines": len(rows), "final_loss": next((r["loss/total"] for r in reversed(rows) if "loss/total" in r), None),
            "final_val_mlm_loss": next((r["val/mlm_loss"] for r in reversed(rows) if "val/mlm_loss" in r), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--keep-resumable", action="store_true")
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shards, vocab = work / "shards", work / "vocab"
    if not (shards / "manifest.json").is_file():
        ds_distil(["prepare", "--input", str(DATA / "corpus" / "tl_corpus_combined.txt"), "--tokenizer", str(DATA / "mbert_tokenizer"),
                   "--out", str(shards), "--seq-len", "128", "--max-docs", "3000", "--workers", "1"])
    if not (vocab / "vocab_map.json").is_file():
        ds_distil(["vocab", "--shards", str(shards), "--out", str(vocab), "report_data=none"])
    result = {}
    for ranks in (1, 2):
        for name, extra in (("full", []), ("trimmed", [f"student.vocab={vocab}"])):
            run = work / "runs" / f"{name}-{ranks}rank"
            shutil.rmtree(run, ignore_errors=True)
            ds_distil(["distill", "--config", "configs/smoke.yaml", "--out", str(run), f"data.shards={shards}", *RUN_SETTINGS, *extra],
                      ranks)
            result[f"{name}-{ranks}rank"] = fingerprint(run)
            (work / f"{name}-{ranks}rank.metrics.json").write_text(json.dumps(normalised_metrics(run / "metrics.jsonl"), indent=1))
    if a.keep_resumable:
        src, dst = work / "runs" / "full-1rank", work / "resumable"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)
        shutil.rmtree(dst / "checkpoints" / "step00000020")
        shutil.rmtree(dst / "student")
        (dst / "checkpoints" / "latest").write_text("step00000010")
        # the metrics a resumed run must reproduce are the uninterrupted run's
    (work / "fingerprint.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
