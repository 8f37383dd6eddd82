"""Streaming shards: rank/worker split, exactly-once epochs, equal steps, exact resume, MLM masking."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

from ds_distil.core.errors import UserError
from ds_distil.data.manifest import load_manifest
from ds_distil.data.masking import IGNORE_INDEX, mask_tokens
from ds_distil.data.stream import MLMStream, plan_rank
from ds_distil.schema.distill import DataConfig

HELPER = Path(__file__).parent / "helpers" / "stream_ranks.py"


@pytest.mark.parametrize("n, world, batch, workers", itertools.product([1, 7, 100, 1001], [1, 2, 3, 8], [1, 4, 32], [1, 2, 3]))
def test_plan_covers_every_sample_once_with_equal_steps(n, world, batch, workers):
    positions, steps_seen = [], set()
    for rank in range(world):
        steps, plans = plan_rank(n, world, batch, workers, rank)
        steps_seen.add(steps)
        assert sorted(j for p in plans for j in p.batches) == list(range(steps))
        for p in plans:
            assert p.real <= len(p.batches) * batch
            positions += range(p.start, p.start + p.real)
    assert len(steps_seen) == 1
    assert sorted(positions) == list(range(n))


def stream(shards, batch_size=4, workers=2, **kw):
    cfg = DataConfig(shards=str(shards), num_workers=workers, **{k: v for k, v in kw.items() if k in DataConfig.__dataclass_fields__})
    rest = {k: v for k, v in kw.items() if k not in DataConfig.__dataclass_fields__}
    return MLMStream(load_manifest(shards), cfg, batch_size=batch_size, **rest)


def as_lists(batches):
    return [(b["index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist()) for b in batches]


def test_one_rank_two_workers_sees_every_sample_once_per_epoch_reshuffled(small_shards):
    s = stream(small_shards, batch_size=8, workers=2)
    epoch0 = list(s.epoch_batches())
    assert s.position.epoch == 1 and s.position.step == 0
    epoch1 = list(s.epoch_batches())
    n = s.n_samples
    for ep in (epoch0, epoch1):
        assert len(ep) == s.steps_per_epoch
        idx = [i for b in ep for i in b["index"].tolist() if i >= 0]
        assert sorted(idx) == list(range(n))
    order0 = [i for b in epoch0 for i in b["index"].tolist()]
    order1 = [i for b in epoch1 for i in b["index"].tolist()]
    assert order0 != order1  # a new shuffle each epoch
    assert order0 != sorted(order0)


def test_padding_slots_carry_no_targets(small_shards):
    s = stream(small_shards, batch_size=64, workers=1)
    pads = 0
    for b in s.epoch_batches():
        is_pad = b["index"] < 0
        pads += int(is_pad.sum())
        assert (b["attention_mask"][is_pad] == 0).all()
        assert (b["labels"][is_pad] == IGNORE_INDEX).all()
    assert pads == s.steps_per_epoch * 64 - s.n_samples


@pytest.mark.parametrize("workers, stop", [(0, 5), (2, 7), (3, 4)])
def test_resume_mid_epoch_continues_with_exactly_the_remaining_batches(small_shards, workers, stop):
    ref = stream(small_shards, workers=workers)
    full = as_lists(ref.epoch_batches()) + as_lists(itertools.islice(ref.epoch_batches(), 3))

    first = stream(small_shards, workers=workers)
    head = as_lists(itertools.islice(iter(first), stop))
    state = json.loads(json.dumps(first.state_dict()))  # as it would go through a checkpoint
    assert state["position"] == {"epoch": 0, "step": stop}

    second = stream(small_shards, workers=workers)
    second.load_state_dict(state)
    tail = as_lists(itertools.islice(iter(second), len(full) - stop))
    assert head + tail == full  # same samples, same order, same masking; into the next epoch too


def test_resume_mid_epoch_on_another_layout_continues_the_epoch_and_other_data_is_refused(small_shards):
    """Issue 39: 2 workers x micro batch 16 stopped at step 3, resumed with 1 worker x micro batch 8: the rest of the epoch
    is the rest of its own sequence (each sample once, in the order the first layout would have given them), the next
    epoch is laid out for the new one; another shuffle seed mid-epoch is refused."""
    ref = stream(small_shards, workers=2, batch_size=16)
    whole = [i for b in ref.epoch_batches() for i in b["index"].tolist()]
    s = stream(small_shards, workers=2, batch_size=16)
    head = [i for b in itertools.islice(iter(s), 3) for i in b["index"].tolist()]
    state = json.loads(json.dumps(s.state_dict()))
    other = stream(small_shards, workers=1, batch_size=8)
    other.load_state_dict(state)
    assert other.resharded and other.origin == 48 and other.steps_this_epoch() == (len(whole) - 48) // 8
    tail = [i for b in other.epoch_batches() for i in b["index"].tolist()]
    assert head + tail == whole  # one rank: the slot sequence is the rank's own batches, in order
    assert sorted(i for i in head + tail if i >= 0) == list(range(other.n_samples))
    fresh = stream(small_shards, workers=1, batch_size=8)
    fresh.position.epoch = 1  # the next epoch of a run on the new layout from the start
    assert not other.resharded and as_lists(itertools.islice(iter(other), 2)) == as_lists(itertools.islice(iter(fresh), 2))
    with pytest.raises(UserError, match="cannot resume mid-epoch .* on other data"):
        stream(small_shards, workers=1, batch_size=8, seed=3).load_state_dict(state)


def test_masking_rates_and_special_tokens(small_shards):
    s = stream(small_shards, batch_size=64, workers=0, shuffle=False)
    tok = load_manifest(small_shards).tokenizer
    special = torch.tensor(tok["special_ids"])
    chosen = masked = randomised = kept = maskable_total = 0
    for b in itertools.islice(s.epoch_batches(), 10):
        labels, inputs = b["labels"], b["input_ids"]
        is_target = labels != IGNORE_INDEX
        original = torch.where(is_target, labels, inputs)
        maskable = ~torch.isin(original, special)
        assert not (is_target & ~maskable).any(), "special tokens and padding are never targets"
        assert (b["attention_mask"] == (original != tok["pad_id"]).long()).all()
        per_row = is_target.sum(1)
        expected = (maskable.sum(1) * 0.15).round().clamp(min=1)
        assert torch.equal(per_row, torch.where(maskable.sum(1) > 0, expected, 0).long())
        # the same targets as a fixed-size list (what the trainer's LM heads read): one size for every batch
        n = int(is_target.sum())
        assert b["positions"].shape == b["targets"].shape == (64 * round(s.seq_len * 0.15),)
        assert torch.equal(b["positions"][:n], is_target.view(-1).nonzero().squeeze(1))
        assert torch.equal(b["targets"][:n], labels.view(-1)[is_target.view(-1)]) and (b["targets"][n:] == IGNORE_INDEX).all()
        chosen += n
        maskable_total += int(maskable.sum())
        masked += int((inputs[is_target] == tok["mask_id"]).sum())
        kept += int((inputs[is_target] == labels[is_target]).sum())
        randomised += int(((inputs[is_target] != labels[is_target]) & (inputs[is_target] != tok["mask_id"])).sum())
    assert abs(chosen / maskable_total - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(randomised / chosen - 0.1) < 0.015
    assert abs(kept / chosen - 0.1) < 0.015


def test_mask_tokens_never_draws_special_random_tokens():
    cfg = DataConfig(shards="x", mask_token_prob=0.0, random_token_prob=1.0)
    ids = torch.full((4, 64), 7)
    ids[:, 0] = 101
    out = mask_tokens(ids, torch.tensor([0, 101, 102, 103]), torch.arange(200, 300), 103, cfg, torch.Generator().manual_seed(0))
    targets = out["labels"] != IGNORE_INDEX
    assert ((out["input_ids"][targets] >= 200) & (out["input_ids"][targets] < 300)).all()
    assert not targets[:, 0].any()


def torchrun(shards, out, *extra, nproc=2, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", free_port(),
           str(HELPER), "--shards", str(shards), "--out", str(out), *map(str, extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
def test_two_ranks_two_workers_see_every_sample_exactly_once(small_shards, tmp_path):
    ranks = torchrun(small_shards, tmp_path / "epoch", "--batch-size", 4, "--workers", 2)
    n = load_manifest(small_shards).num_samples("train")
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"] == len(ranks[0]["batches"]) == len(ranks[1]["batches"])
    seen = [i for r in ranks for b in r["batches"] for i in b["index"] if i >= 0]
    assert sorted(seen) == list(range(n))
    assert set(i for b in ranks[0]["batches"] for i in b["index"]) - {-1} != set(seen)  # ranks got different samples


@pytest.mark.slow
def test_two_ranks_resume_mid_epoch_see_exactly_the_remaining_samples(small_shards, tmp_path):
    full = torchrun(small_shards, tmp_path / "full", "--batch-size", 4, "--workers", 2)
    steps = full[0]["steps_per_epoch"]
    head = torchrun(small_shards, tmp_path / "head", "--batch-size", 4, "--workers", 2, "--steps", 9)
    tail = torchrun(small_shards, tmp_path / "tail", "--batch-size", 4, "--workers", 2, "--steps", steps - 9,
                    "--resume", tmp_path / "head")
    for r in range(2):
        assert head[r]["batches"] + tail[r]["batches"] == full[r]["batches"]
        assert tail[r]["state"]["position"] == {"epoch": 0, "step": steps}


def masks_by_sample(batches) -> dict[int, tuple[list[int], list[int]]]:
    """{sample index: (input_ids, labels)} of real samples."""
    out = {}
    for b in batches:
        for i, index in enumerate(b["index"].tolist()):
            if index >= 0:
                out[index] = (b["input_ids"][i].tolist(), b["labels"][i].tolist())
    return out


def test_static_masks_are_a_function_of_the_sample_and_copy_alone(small_shards):
    """Issue 24: with data.masking=static a sample's masks do not depend on the ranks, the batch size, the workers, the
    shuffle or a resume; copy = epoch % mask_copies picks among its maskings (what a teacher cache relies on)."""
    one = stream(small_shards, batch_size=8, workers=2, masking="static", mask_copies=2)
    ref = masks_by_sample(one.epoch_batches())
    assert len(ref) == one.n_samples
    layouts = [dict(batch_size=3, workers=0), dict(batch_size=5, workers=3, shuffle=False)]
    for layout in layouts:
        assert masks_by_sample(stream(small_shards, masking="static", mask_copies=2, **layout).epoch_batches()) == ref, layout
    two = [stream(small_shards, batch_size=4, workers=1, masking="static", mask_copies=2, rank=r, world_size=2) for r in (0, 1)]
    halves = [masks_by_sample(s.epoch_batches()) for s in two]
    assert not set(halves[0]) & set(halves[1]) and {**halves[0], **halves[1]} == ref
    # resumed mid-epoch: the rest of the epoch carries the same masks
    first = stream(small_shards, batch_size=8, workers=2, masking="static", mask_copies=2)
    head = list(itertools.islice(iter(first), 3))
    second = stream(small_shards, batch_size=8, workers=2, masking="static", mask_copies=2)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = list(itertools.islice(iter(second), second.steps_per_epoch - 3))
    assert masks_by_sample(head + tail) == ref
    # the copies: epoch 1 is the second masking, epoch 2 the first again
    epoch1, epoch2 = masks_by_sample(one.epoch_batches()), masks_by_sample(one.epoch_batches())
    assert epoch2 == ref and sum(epoch1[i] != ref[i] for i in ref) > 0.9 * len(ref)
    # one copy: every epoch the same masks; dynamic masking: new ones each epoch
    single = stream(small_shards, batch_size=8, workers=2, masking="static")
    assert masks_by_sample(single.epoch_batches()) == masks_by_sample(single.epoch_batches())
    dynamic = stream(small_shards, batch_size=8, workers=2)
    assert masks_by_sample(dynamic.epoch_batches()) != masks_by_sample(dynamic.epoch_batches())
    # the masking rule's rates hold per sample as for dynamic masking: 15% of the maskable tokens, at least one
    labels = torch.tensor([lab for _, lab in ref.values()])
    assert ((labels != IGNORE_INDEX).sum(1) >= 1).all()
