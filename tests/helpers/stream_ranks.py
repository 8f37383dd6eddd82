"""Run under torchrun: each rank streams batches and records what it saw (used by test_stream.py).

Every step does an all_reduce, as training would: if ranks disagreed on the number of steps,
the job would fail (gloo timeout) instead of passing.
"""

import argparse
import datetime
import hashlib
import json

import torch
import torch.distributed as dist

from ds_distil.data.manifest import load_manifest
from ds_distil.data.stream import MLMStream
from ds_distil.schema.distill import DataConfig

p = argparse.ArgumentParser()
p.add_argument("--shards", required=True)
p.add_argument("--out", required=True)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--steps", type=int, default=-1, help="stop after this many steps (-1: one whole epoch)")
p.add_argument("--resume", default=None, help="state file written by an earlier run of this script")
args = p.parse_args()

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
stream = MLMStream(load_manifest(args.shards), DataConfig(shards=args.shards, num_workers=args.workers), batch_size=args.batch_size)
if args.resume:
    with open(f"{args.resume}.rank{rank}.json") as f:
        stream.load_state_dict(json.load(f)["state"])
batches = []
it = iter(stream) if args.steps >= 0 else stream.epoch_batches()
for i, batch in enumerate(it):
    digest = hashlib.sha256(batch["input_ids"].numpy().tobytes() + batch["labels"].numpy().tobytes()).hexdigest()
    batches.append({"index": batch["index"].tolist(), "digest": digest})
    count = torch.tensor([1.0])
    dist.all_reduce(count)
    assert count.item() == dist.get_world_size()
    if i + 1 == args.steps:
        break
with open(f"{args.out}.rank{rank}.json", "w") as f:
    json.dump({"batches": batches, "state": stream.state_dict(), "steps_per_epoch": stream.steps_per_epoch}, f)
dist.barrier()
dist.destroy_process_group()
