"""The DeepSpeed config is filled from the run config: one source for batch sizes and the optimizer."""

import json

import pytest

from ds_distil.config import DistillConfig, from_dict, load
from ds_distil.engine import build_ds_config, total_steps
from ds_distil.errors import UserError
from conftest import ROOT


def cfg(**train):
    return from_dict(DistillConfig, {"data": {"shards": "x"}, "teacher": {"preset": "micro"}, "train": train,
                                     "deepspeed": {"config": str(ROOT / "ds_configs" / "zero2-fp16.json")}})


def test_global_batch_is_derived_and_optimizer_schedule_come_from_the_run_config():
    c = cfg(micro_batch_size=16, grad_accum_steps=4, lr=3e-4, grad_clip=0.5, warmup_ratio=0.1)
    ds = build_ds_config(c, world_size=8, num_steps=1000)
    assert ds["train_batch_size"] == 16 * 4 * 8
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 3e-4
    assert ds["scheduler"]["params"] == {"total_num_steps": 1000, "warmup_min_lr": 0.0, "warmup_max_lr": 3e-4,
                                         "warmup_num_steps": 100, "warmup_type": "linear"}
    assert ds["zero_optimization"]["stage"] == 2 and ds["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_a_batch_size_in_the_deepspeed_json_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    c = cfg()
    c.deepspeed.config = str(bad)
    with pytest.raises(UserError, match="train_batch_size: these come from the run config"):
        build_ds_config(c, 1, 10)


def test_total_steps_from_epochs_or_max_steps():
    assert total_steps(cfg(epochs=3, grad_accum_steps=2).train, micro_steps_per_epoch=100) == 150
    assert total_steps(cfg(max_steps=7).train, micro_steps_per_epoch=100) == 7


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("prepare-"):
            continue
        c = load(DistillConfig, [path])
        assert (ROOT / c.deepspeed.config).is_file(), f"{path.name}: {c.deepspeed.config} missing"
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        json.loads(path.read_text())
