"""A study's time estimate comes from this machine (a probe step in the precisions its stages resolve to), a long one
says so and why before it starts, and the runner relays the running stage's progress."""

from __future__ import annotations

import io
import re

import pytest
import torch
from conftest import ROOT, run_cli

from ds_distil.schema.study import EstimatesProbe, load_study
from ds_distil.study import estimate
from ds_distil.study.relay import Relay, latest_progress

DEMO = ROOT / "configs" / "studies" / "demo.yaml"


def _estimator(monkeypatch, precisions, here, reference):
    monkeypatch.setattr(estimate, "probe_step_seconds", lambda dtype, max_seconds=10.0: here[dtype])
    study = load_study(DEMO)
    study.estimates = {"teacher": 3.0, "prepare/*": 1.0, "*": 2.0}
    study.estimates_probe = reference
    return estimate.Estimator(study, precisions, torch.device("cpu"))


def test_estimates_scale_by_the_probe_in_each_stages_precision(monkeypatch):
    ref = EstimatesProbe(machine="the reference", precision="bf16", fp32_s=0.2, bf16_s=0.1)
    e = _estimator(monkeypatch, {"teacher": "bf16", "prepare/f100": None, "finetune/x": "fp32"}, {"fp32": 0.4, "bf16": 0.3}, ref)
    assert e.stage("teacher").minutes == pytest.approx(3.0 * 0.3 / 0.1)       # bf16 here against bf16 there
    assert e.stage("prepare/f100").minutes == pytest.approx(1.0 * 0.4 / 0.2)  # no training: fp32 on both sides
    assert e.stage("finetune/x").minutes == pytest.approx(2.0 * 0.4 / 0.1)    # fp32 here against the bf16 it was measured in
    assert "scaled by a probe step (bf16 0.300 s, fp32 0.400 s here against bf16 0.100 s there" in e.source()


@pytest.mark.parametrize("probe, message", [
    ("{machine: m, precision: bf16, fp32_s: 0.2}", "config section 'estimates_probe': precision bf16 needs bf16_s"),
    ("{machine: m, precision: fp32, fp32_s: -0.2}", "config section 'estimates_probe': fp32_s must be a positive number of seconds"),
    ("{machine: m, precision: fp32, fp32_s: 0.2, bf16: 0.1}", "unknown config key 'estimates_probe.bf16' (did you mean 'estimates_probe.bf16_s'?)"),
])
def test_bad_probe_figures_are_one_line_naming_the_key(probe, message, tmp_path):
    study = tmp_path / "study.yaml"
    text = DEMO.read_text()
    start = text.index("estimates_probe:")
    end = text.index("\n", text.index("bf16_s:", start))
    study.write_text(text[:start] + f"estimates_probe: {probe}" + text[end:])
    proc = run_cli("experiment", str(study), "--out", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_without_probe_figures_the_studys_estimates_stand_and_say_so(monkeypatch):
    e = _estimator(monkeypatch, {"teacher": "bf16"}, {"fp32": 1.0, "bf16": 1.0}, None)
    assert e.stage("teacher").minutes == 3.0 and not e.stage("teacher").scaled
    assert "as written (no probe figures in the study" in e.source()


def test_a_long_estimate_names_emulated_bf16_and_the_slower_machine(monkeypatch):
    monkeypatch.setenv("DS_DISTIL_CPU_BF16", "0")
    ref = EstimatesProbe(machine="AMD EPYC 2 cores", precision="fp32", fp32_s=0.2)
    e = _estimator(monkeypatch, {"teacher": "bf16", "finetune/x": "fp32"}, {"fp32": 0.6, "bf16": 36.0}, ref)
    stages = [e.stage("teacher"), e.stage("finetune/x")]
    assert stages[0].minutes == pytest.approx(3.0 * 36.0 / 0.2)
    why = e.why_long(stages)
    assert "1 stage(s) (e.g. teacher) are set to bf16, which this CPU only emulates (60x the fp32 time in the probe)" in why
    assert "set their deepspeed.config and teacher.dtype to auto" in why and "the longest stage is teacher" in why


@pytest.mark.parametrize("native, expected", [("1", "bf16"), ("0", "fp32")])
def test_the_demo_plan_shows_each_stages_precision_on_this_kind_of_cpu(native, expected, tmp_path, data_dir):
    proc = run_cli("experiment", str(DEMO), "--out", str(tmp_path / "demo"), "--dry-run", env={"DS_DISTIL_CPU_BF16": native})
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[1]: ln for ln in proc.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", ln)}
    assert lines["teacher"].endswith(f", {expected})")                        # the teacher's pretraining
    assert lines["distill/student-2x128"].endswith(f", {expected}, teacher {expected})")
    assert lines["finetune/student-2x128/hatespeech/seed42"].endswith(f", {expected})")
    assert lines["vocab"].endswith("min)")                                     # no training: no precision
    assert re.search(r"stages to run; estimated \d+ min", proc.stdout)


def test_the_newest_progress_line_of_a_stage_log_is_relayed(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("12:00:01 INFO ds_distil.distill.setup: distill: 1 rank(s)\n"
                   "12:00:31 INFO ds_distil.core.progress: distill: 10/150 steps (7%) | loss 7.1 | 0.33 steps/s | ETA 7:04\n"
                   "12:00:40 INFO ds_distil.distill.loop: step 15/150 | loss 7.0000 | lr 1.00e-03 | 900 tokens/s\n"
                   "12:00:41 WARNING something else: not progress\n")
    assert latest_progress(log) == "step 15/150 | loss 7.0000 | lr 1.00e-03 | 900 tokens/s"
    out = io.StringIO()
    relay = Relay(out, every_s=0.0)
    relay.poll([("teacher", log)])
    relay.poll([("teacher", log)])  # unchanged: said once
    assert out.getvalue() == "    teacher: step 15/150 | loss 7.0000 | lr 1.00e-03 | 900 tokens/s\n"
    assert latest_progress(tmp_path / "missing.log") is None
