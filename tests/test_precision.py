"""`auto` precision follows what the CPU can do (bf16 only where it is native), and forcing bf16 where it is emulated
costs one warning with the measured factor."""

from __future__ import annotations

import logging

import pytest
import torch

from ds_distil.core.config import from_dict
from ds_distil.core.errors import UserError
from ds_distil.runtime import precision
from ds_distil.runtime.engine import DS_CONFIGS, build_ds_config, resolve_ds_json, teacher_dtype
from ds_distil.schema.distill import DistillConfig

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_warning(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


@pytest.mark.parametrize("native, json_name, dtype", [("1", "zero2-bf16.json", torch.bfloat16), ("0", "zero2-fp32.json", torch.float32)])
def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(monkeypatch, native, json_name, dtype):
    monkeypatch.setenv(precision.CPU_BF16_ENV, native)
    assert precision.cpu_bf16_native() is (native == "1")
    assert resolve_ds_json("auto", CPU).endswith(json_name)
    assert teacher_dtype("auto", CPU) == dtype
    ds = build_ds_config(_config("auto"), 1, 10, CPU)
    assert ds.get("bf16", {}).get("enabled", False) is (native == "1")


def test_the_cpu_answer_comes_from_torchs_cpuinfo_when_not_forced(monkeypatch):
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert precision.cpu_bf16_native() is expected
        assert precision.auto_precision(CPU) == ("bf16" if expected else "fp32")


def test_a_bad_override_is_one_line(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(UserError, match="DS_DISTIL_CPU_BF16='yes': use 1"):
        precision.cpu_bf16_native()


def test_forced_bf16_on_a_cpu_without_it_warns_once_with_the_measured_factor(monkeypatch, caplog):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    with caplog.at_level(logging.WARNING, logger="ds_distil.runtime.precision"):
        assert teacher_dtype("bf16", CPU) == torch.bfloat16  # the user's choice is kept ...
        build_ds_config(_config(str(DS_CONFIGS / "zero2-bf16.json")), 1, 10, CPU)  # ... and said once, not again for the student
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("the teacher (teacher.dtype) runs in bf16, but this CPU has no native bf16 (no AVX-512 BF16 or AMX")
    assert "bf16 matmuls run " in line and " fp32 here (a 256^3 product: " in line and "use fp32" in line
    assert "\n" not in line


def test_no_warning_where_bf16_is_native_or_not_chosen(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.warn_if_emulated("the teacher", torch.bfloat16, CPU) is None
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.warn_if_emulated("the teacher", torch.float32, CPU) is None
    assert precision.warn_if_emulated("the teacher", torch.bfloat16, torch.device("cuda", 0)) is None


def test_the_probe_times_both_dtypes():
    probe = precision.matmul_factor(n=64)
    assert probe["float32"] > 0 and probe["bfloat16"] > 0
    assert probe["factor"] == pytest.approx(probe["bfloat16"] / probe["float32"])


def _config(ds_json: str) -> DistillConfig:
    return from_dict(DistillConfig, {"data": {"shards": "s"}, "teacher": {"preset": "tiny"}, "deepspeed": {"config": ds_json}})
