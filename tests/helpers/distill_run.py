"""Run a distillation through the library (as `ds-distil distill` does) and record probes for the tests.

--merge-ranks K (single process only): feed the loop the concatenation of the batches that
ranks 0..K-1 of a K-rank job would get, so a 1-rank run sees exactly the global batches of a
K-rank run. --probe FILE: rank 0 saves the teacher's parameter digest before and after training,
the trained student's parameters and its logits on a fixed input. --objective-extra: train with the test
objective of extra_objective.py (registered here only, as a contributor's new objective would be), and save
the engine's state dict keys in the probe. --resume: continue the run in --out (on any number of ranks).
--stop-at-step N: ask the loop to stop at step N (SIGUSR1 to this process while it takes step N, as SLURM would: a
checkpoint, exit 75). --record FILE: each rank appends the sample indices of every micro batch it trains on to
FILE.rank{R}.jsonl, with the epoch and optimizer step. --dump-loaded / --dump-saved FILE: the engine's whole state
(runtime.universal.full_state, gathered from every rank) after set-up (what a resume loaded) / at the end (what the
last checkpoint saved).
"""

import argparse
import dataclasses
import hashlib
import json
import os
import signal

import torch

from ds_distil.cli import setup_logging
from ds_distil.core.config import load
from ds_distil.data.stream import MLMStream
from ds_distil.distill.export import export_student
from ds_distil.distill.loop import fit
from ds_distil.distill.setup import setup
from ds_distil.distill.teacher import LiveTeacher
from ds_distil.runtime.engine import close_distributed
from ds_distil.schema.distill import DistillConfig

p = argparse.ArgumentParser()
p.add_argument("--config", action="append", required=True)
p.add_argument("--out", required=True)
p.add_argument("--merge-ranks", type=int, default=1)
p.add_argument("--probe", default=None)
p.add_argument("--objective-extra", action="store_true")
p.add_argument("--resume", action="store_true")
p.add_argument("--stop-at-step", type=int, default=None)
p.add_argument("--record", default=None)
p.add_argument("--dump-loaded", default=None)
p.add_argument("--dump-saved", default=None)
p.add_argument("overrides", nargs="*")
args = p.parse_args()

setup_logging()  # the console lines `ds-distil distill` prints
cfg = load(DistillConfig, args.config, args.overrides)
if args.objective_extra:
    import extra_objective

    extra_objective.register()
    cfg.loss = dataclasses.replace(cfg.loss, objective=extra_objective.NAME)
c = setup(cfg, args.out, resume=args.resume)


def dump(path):
    from ds_distil.runtime.universal import full_state

    state = full_state(c.engine)  # every rank: it gathers
    if c.dist.rank == 0:
        torch.save(state, path)


if args.dump_loaded:
    dump(args.dump_loaded)


def digest(module):
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


if args.merge_ranks > 1:
    assert c.dist.world_size == 1
    k = args.merge_ranks
    streams = [MLMStream(c.stream.manifest, cfg.data, cfg.train.micro_batch_size // k, rank=r, world_size=k,
                         keep_ids=c.stream.keep_ids, cache=c.stream.cache) for r in range(k)]

    def merged():
        for parts in zip(*(iter(s) for s in streams)):
            batch = {key: torch.cat([b[key] for b in parts]) for key in parts[0]}
            # positions are flat indices into each part's batch x length: shift them into the merged batch
            offset = parts[0]["input_ids"].numel()
            batch["positions"] = torch.cat([b["positions"] + r * offset for r, b in enumerate(parts)])
            yield batch

    c.batches = merged()

if args.stop_at_step is not None or args.record:
    inner = c.batches
    log = open(f"{args.record}.rank{c.dist.rank}.jsonl", "a") if args.record else None

    def watched():
        fired = False
        for batch in inner:
            if args.stop_at_step is not None and c.state.step == args.stop_at_step - 1 and c.dist.rank == 0 and not fired:
                os.kill(os.getpid(), signal.SIGUSR1)  # the loop finishes this step, checkpoints it and stops
                fired = True
            if log is not None:
                log.write(json.dumps({"epoch": c.stream.position.epoch, "step": c.state.step + 1, "index": batch["index"].tolist()}) + "\n")
                log.flush()
            yield batch

    c.batches = watched()

teacher = c.teacher.model if isinstance(c.teacher, LiveTeacher) else None
teacher_before = digest(teacher) if teacher is not None else None
status = fit(c)
assert status in (0, 75), status
if args.dump_saved:
    dump(args.dump_saved)
if c.dist.rank == 0 and status == 0:
    export_student(c.checkpoints.run_dir)
    if args.probe:
        student = c.engine.module.model.eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, 5000, (2, 16), generator=g)
        with torch.no_grad():
            logits = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[..., : c.engine.module.vocab]
        torch.save({
            "teacher_before": teacher_before,
            "teacher_after": digest(teacher) if teacher is not None else None,
            "student": {k: v.detach().clone() for k, v in student.state_dict().items()},
            "ids": ids, "logits": logits, "engine_keys": sorted(c.engine.module.state_dict()),
            "objective": {k: v.detach().clone() for k, v in c.engine.module.state_dict().items() if k.startswith("objective.")},
        }, args.probe)
close_distributed()  # every rank leaves together (as `ds-distil distill` does), whatever its status
raise SystemExit(status)
