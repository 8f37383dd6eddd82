"""The DeepSpeed config is filled from the run config: one source for batch sizes and the optimizer."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from ds_distil.core.config import ConfigError, from_dict, load
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
def test_auto_precision_is_bf16_on_gpus_that_have_it_fp16_on_older_ones_fp32_on_a_cpu_without_bf16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    gpu = torch.device("cuda", 0)
    assert resolve_ds_json("auto", gpu).endswith(expected)
    assert teacher_dtype("auto", gpu) == (torch.bfloat16 if bf16 else torch.float16)
    monkeypatch.setenv("DS_DISTIL_CPU_BF16", "0")  # a CPU without native bf16 (tests/test_precision.py: the CPU rule)
    assert resolve_ds_json("auto", CPU).endswith("zero2-fp32.json") and teacher_dtype("auto", CPU) == torch.float32
    assert Path(resolve_ds_json("auto", gpu)).is_file() and Path(resolve_ds_json("auto", CPU)).is_file()  # the shipped JSONs
    assert resolve_ds_json("my.json", gpu) == "my.json"  # an explicit choice is kept


def test_fused_adamw_goes_to_torch_through_the_deepspeed_json():
    assert build_ds_config(cfg(), 1, 10, CPU)["optimizer"]["params"]["fused"] is True  # auto: on where torch has it
    off = build_ds_config(cfg(perf={"fused_adamw": False}), 1, 10, CPU)["optimizer"]["params"]
    assert "fused" not in off and off["torch_adam"] is True


def fp32(**deepspeed):
    return from_dict(DistillConfig, {"data": {"shards": "x"}, "teacher": {"preset": "micro"},
                                     "deepspeed": {"config": str(ROOT / "ds_configs" / "zero2-fp32.json"), **deepspeed}})


def test_one_fp32_rank_runs_without_zero_and_several_ranks_or_half_precision_keep_the_jsons_stage():
    assert build_ds_config(fp32(), 1, 10, CPU)["zero_optimization"]["stage"] == 0
    assert build_ds_config(fp32(), 2, 10, CPU)["zero_optimization"]["stage"] == 2
    assert build_ds_config(cfg(), 1, 10, CPU)["zero_optimization"]["stage"] == 2  # fp16: the JSON's, until a GPU measures it
    assert build_ds_config(fp32(zero_stage=2), 1, 10, CPU)["zero_optimization"]["stage"] == 2  # the user's choice wins
    assert build_ds_config(fp32(zero_stage=0), 4, 10, CPU)["zero_optimization"]["stage"] == 0
    with pytest.raises(ConfigError, match="deepspeed': zero_stage must be 0, 1, 2 or auto, got 3"):
        fp32(zero_stage=3)


def test_clipped_adamw_clips_as_torch_does_and_skips_a_step_whose_gradients_are_not_finite():
    from ds_distil.runtime.optimizer import ClippedAdamW

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    opt = ClippedAdamW(ours.parameters(), max_norm=0.5, lr=0.1, weight_decay=0.01)
    ref = torch.optim.AdamW(theirs.parameters(), lr=0.1, weight_decay=0.01)
    for step in range(3):
        for m in (ours, theirs):
            m.zero_grad()
            (m(torch.full((2, 4), 3.0 + step)) ** 2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        assert norm > 0.5  # so clipping acts
        opt.step()
        ref.step()
        assert not opt.overflow and float(opt._global_grad_norm) == pytest.approx(float(norm))
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    before = [p.detach().clone() for p in ours.parameters()]
    state = {k: v.clone() for k, v in opt.state[ours.weight].items()}
    ours.zero_grad()
    (ours(torch.tensor([[float("nan"), 1.0, 1.0, 1.0]])) ** 2).sum().backward()
    opt.step()
    assert opt.overflow and all(torch.equal(a, b) for a, b in zip(ours.parameters(), before))
    assert all(torch.equal(v, opt.state[ours.weight][k]) for k, v in state.items())  # moments and step count untouched


ENGINE_SCRIPT = """
import os, sys
import torch
from ds_distil.runtime import engine as eng
from ds_distil.schema.distill import TrainConfig

d = eng.init_distributed()
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
train = TrainConfig(micro_batch_size=2, max_steps=10, lr=0.1, warmup_ratio=0.0)
engine = eng.initialize(model, eng.ds_config_from(train, sys.argv[1], 1, 10), 0.0)
x = torch.ones(2, 4)
before, lr = [p.detach().clone() for p in model.parameters()], engine.get_lr()[0]
loss = engine(x).sum() * float("nan")
engine.backward(loss)
engine.step()
nan_kept = all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
nan_lr = engine.get_lr()[0]
for _ in range(3):  # DeepSpeed's warm-up gives the first two steps a rate of 0
    engine.backward(engine(x).sum())
    engine.step()
moved = not all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
print(engine.zero_optimization_stage(), engine.skipped_steps, nan_kept, nan_lr == lr, moved, engine.get_lr()[0] != lr,
      float(engine.get_global_grad_norm()) > 0, engine.enable_backward_allreduce)
"""


def test_a_one_rank_fp32_engine_skips_a_non_finite_step_holds_the_schedule_and_then_trains(tmp_path):
    """What DeepSpeed's ZeRO optimizer does, without ZeRO: the NaN step leaves the weights and the schedule, and is counted."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, str(ROOT / "ds_configs" / "zero2-fp32.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-8:] == ["0", "1", "True", "True", "True", "True", "True", "False"]
    assert not (tmp_path / "ext").exists()  # one process: no DeepSpeed op built, no build lock waited on


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "holds a JSON list, not an object of DeepSpeed settings"),
    ('{"fp16": [true]}', "fp16: input should be an object"),
    ('{"fp16": {"enabled": "yes"}}', "fp16.enabled: input should be a valid boolean (found 'yes')"),
    ('{"fp16": {"enabled": true}, "bf16": {"enabled": true}}', "enables both fp16 and bf16: enable one"),
    ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage: input should be less than or equal to 3"),
    ('{"bf16": {"enabled": true, "loss_scale": NaN}}', "is not valid JSON (NaN is not a JSON number)"),
])
def test_a_deepspeed_json_is_checked_before_deepspeed_reads_it(tmp_path, text, message):
    """A JSON holding a list was an AttributeError traceback; the parts we read (precision, ZeRO stage) are checked."""
    bad = tmp_path / "ds.json"
    bad.write_text(text)
    c = cfg()
    c.deepspeed.config = str(bad)
    with pytest.raises(UserError) as e:
        build_ds_config(c, 1, 10, CPU)
    assert message in str(e.value) and str(bad) in str(e.value) and "ds_configs/" in str(e.value), str(e.value)


def test_a_precision_the_device_lacks_is_one_line_before_deepspeed_sees_it(monkeypatch):
    """fp16 on a CPU without fp16 hardware (this one: AMD EPYC): DeepSpeed's own test, asked before initialize, whose
    refusal was a ValueError traceback from inside deepspeed.initialize."""
    from deepspeed.accelerator import get_accelerator

    from ds_distil.runtime.engine import check_precision_supported, initialize

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)
    ds = build_ds_config(cfg(), 1, 10, CPU)
    with pytest.raises(UserError, match=r"the DeepSpeed config enables fp16, which this device \(\w+\) does not support; pass "
                                        r"deepspeed.config=ds_configs/zero2-fp32.json \(or zero2-bf16.json\), or deepspeed.config=auto"):
        initialize(torch.nn.Linear(2, 2), ds, 0.0)
    check_precision_supported(build_ds_config(fp32(), 1, 10, CPU))  # fp32: nothing to support
