"""The DeepSpeed config is filled from the run config: one source for batch sizes and the optimizer."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from ds_distil.core.config import from_dict, load
from ds_distil.core.errors import UserError
from ds_distil.runtime.engine import build_ds_config, resolve_ds_json, teacher_dtype, total_steps
from ds_distil.schema.distill import DistillConfig

CPU = torch.device("cpu")


def cfg(perf=None, **train):
    return from_dict(DistillConfig, {"data": {"shards": "x"}, "teacher": {"preset": "micro"}, "train": train,
                                     "deepspeed": {"config": str(ROOT / "ds_configs" / "zero2-fp16.json")}, "perf": perf or {}})


def test_global_batch_is_derived_and_optimizer_schedule_come_from_the_run_config():
    c = cfg(micro_batch_size=16, grad_accum_steps=4, lr=3e-4, grad_clip=0.5, warmup_ratio=0.1)
    ds = build_ds_config(c, world_size=8, num_steps=1000, device=CPU)
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
        build_ds_config(c, 1, 10, CPU)


def test_total_steps_from_epochs_or_max_steps():
    assert total_steps(cfg(epochs=3, grad_accum_steps=2).train, micro_steps_per_epoch=100) == 150
    assert total_steps(cfg(max_steps=7).train, micro_steps_per_epoch=100) == 7


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("prepare-"):
            continue
        c = load(DistillConfig, [path])
        assert c.deepspeed.config == "auto" or (ROOT / c.deepspeed.config).is_file(), f"{path.name}: {c.deepspeed.config} missing"
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        json.loads(path.read_text())


@pytest.mark.parametrize("bf16, expected", [(True, "zero2-bf16.json"), (False, "zero2-fp16.json")])
def test_auto_precision_is_bf16_on_gpus_that_have_it_fp16_on_older_ones_fp32_on_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    gpu = torch.device("cuda", 0)
    assert resolve_ds_json("auto", gpu).endswith(expected)
    assert teacher_dtype("auto", gpu) == (torch.bfloat16 if bf16 else torch.float16)
    assert resolve_ds_json("auto", CPU).endswith("zero2-fp32.json") and teacher_dtype("auto", CPU) == torch.float32
    assert Path(resolve_ds_json("auto", gpu)).is_file() and Path(resolve_ds_json("auto", CPU)).is_file()  # the shipped JSONs
    assert resolve_ds_json("my.json", gpu) == "my.json"  # an explicit choice is kept


def test_fused_adamw_goes_to_torch_through_the_deepspeed_json():
    assert build_ds_config(cfg(), 1, 10, CPU)["optimizer"]["params"]["fused"] is True  # auto: on where torch has it
    off = build_ds_config(cfg(perf={"fused_adamw": False}), 1, 10, CPU)["optimizer"]["params"]
    assert "fused" not in off and off["torch_adam"] is True
