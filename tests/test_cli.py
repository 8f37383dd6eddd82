"""The CLI surface: every subcommand has --help, shipped presets load, the demo says where its data is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from ds_distil.cli import build_parser
from ds_distil.core.config import load
from ds_distil.schema.prepare import PrepareConfig

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_has_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "usage: ds-distil " + command in proc.stdout


def test_help_lists_every_settable_key_with_its_default():
    ft = run_cli("finetune", "--help").stdout
    for line in ("train.lr=5e-05", "task.valid_fraction=null", "task.max_train_examples=null", "task.skip_bad_rows=false",
                 "eval_batch_size=64", "--verbose"):
        assert line in ft, line
    assert "peak learning rate (float)" in ft and "train.adam_betas=[0.9, 0.999]" in ft  # finetuning's defaults, not distillation's
    distill = run_cli("distill", "--help").stdout
    assert "train.lr=0.0005" in distill and "loss.temperature=2.0" in distill and "data.shards=..." in distill
    assert "data.mlm_probability=0.15" in run_cli("inspect", "--help").stdout
    assert "--seq-len SEQ_LEN" in run_cli("prepare", "--help").stdout


def test_verbose_is_accepted_before_and_after_the_command():
    base = ["--model", "m", "--task", "csv", "--out", "o"]
    assert build_parser().parse_args(["finetune", "--verbose", *base]).verbose is True
    assert build_parser().parse_args(["--verbose", "finetune", *base]).verbose is True
    assert not hasattr(build_parser().parse_args(["finetune", *base]), "verbose")  # main() reads it as False


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "ds-distil"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ds-distil ")


def test_prepare_flags_yaml_and_overrides_resolve_to_one_config(tmp_path):
    from ds_distil.schema.commands import config_from_args

    (tmp_path / "p.yaml").write_text("seq_len: 256\nfraction: 0.8\ntokenizer: t\n")
    args = build_parser().parse_args(["prepare", "--config", str(tmp_path / "p.yaml"), "--out", "o", "--input", "a.txt", "b.txt",
                                      "--fraction", "0.5", "--skip-bad-lines", "seed=4"])
    cfg = config_from_args(args, PrepareConfig)
    assert cfg == PrepareConfig(out="o", input=["a.txt", "b.txt"], tokenizer="t", seq_len=256, fraction=0.5, seed=4, skip_bad_lines=True)


def test_bad_flag_value_is_a_one_line_error(tmp_path):
    proc = run_cli("prepare", "--out", str(tmp_path), "--input", "x.txt", "--seq-len", "many")
    assert proc.returncode == 2 and "--seq-len: expected int, got 'many'" in proc.stderr  # the flag, as typed


def test_shipped_prepare_presets_load():
    for path in sorted((ROOT / "configs").glob("prepare-*.yaml")):
        cfg = load(PrepareConfig, [path], ["out=x"])
        assert cfg.tokenizer


def test_demo_without_data_says_where_to_point_it(tmp_path):
    env = {**os.environ, "DS_DISTIL_DATA": str(tmp_path / "nowhere"), "DEMO_OUT": str(tmp_path / "demo")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "DS_DISTIL_DATA" in proc.stderr and "--hf-dataset oscar-corpus/OSCAR-2301" in proc.stderr


def test_help_imports_neither_torch_nor_transformers():
    """`ds-distil --help` and every command's --help answer from the schemas (ds_distil/schema/): no torch, no
    transformers, no deepspeed imported for a help text."""
    code = ("import sys\nfrom ds_distil.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
