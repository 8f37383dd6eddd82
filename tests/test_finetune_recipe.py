"""The finetuning recipe follows the model (schema/commands.py finetune_config): random weights get
configs/finetune/blank.yaml, pretrained encoders configs/finetune/pretrained.yaml, and the user's own files and
keys win over either, key by key."""

from __future__ import annotations

import pytest
from conftest import ROOT

from ds_distil.core.config import ConfigError, read_yaml
from ds_distil.schema import commands

BLANK = read_yaml(ROOT / "configs" / "finetune" / "blank.yaml")
PRETRAINED = read_yaml(ROOT / "configs" / "finetune" / "pretrained.yaml")


def resolve(*argv):
    args = commands.build_parser().parse_args(["finetune", "--task", "csv", "--out", "x", *argv])
    return commands.finetune_config(args)


def test_a_preset_with_random_weights_gets_the_blank_recipe_without_flags(tmp_path):
    assert BLANK["train"]["lr"] != PRETRAINED["train"]["lr"]  # the test can tell them apart
    cfg, recipe = resolve("--model", "dbert-tiny")
    assert recipe["name"] == "blank" and recipe["file"].endswith("configs/finetune/blank.yaml")
    assert recipe["why"] == "'dbert-tiny' has random weights" and recipe["yours"] == {}
    assert cfg.train.lr == BLANK["train"]["lr"] and cfg.task.max_length == BLANK["task"]["max_length"]
    assert recipe["applied"]["train.lr"] == BLANK["train"]["lr"]
    # a config.json is random weights too
    arch = tmp_path / "config.json"
    arch.write_text('{"model_type": "bert"}')
    assert resolve("--model", str(arch))[1]["name"] == "blank"


def test_a_pretrained_directory_gets_the_pretrained_recipe_and_user_keys_win(tmp_path):
    model = tmp_path / "student"
    model.mkdir()
    cfg, recipe = resolve("--model", str(model))
    assert recipe["name"] == "pretrained" and cfg.train.lr == PRETRAINED["train"]["lr"]
    assert resolve("--model", "bert-base-multilingual-cased")[1]["name"] == "pretrained"  # a hub name
    # key=value wins over the recipe; the rest of the recipe stays
    cfg, recipe = resolve("--model", str(model), "train.lr=5e-5")
    assert cfg.train.lr == 5e-5 and recipe["yours"] == {"train.lr": 5e-5} and "train.lr" not in recipe["applied"]
    assert cfg.task.max_length == PRETRAINED["task"]["max_length"]
    # so does the user's own --config file, and an explicit recipe or none
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  epochs: 7\n")
    cfg, recipe = resolve("--model", "dbert-tiny", "--config", str(mine))
    assert cfg.train.epochs == 7 and cfg.train.lr == BLANK["train"]["lr"] and recipe["yours"] == {"train.epochs": 7}
    cfg, recipe = resolve("--model", "dbert-tiny", "recipe=pretrained")
    assert recipe["name"] == "pretrained" and cfg.train.lr == PRETRAINED["train"]["lr"]
    cfg, recipe = resolve("--model", "dbert-tiny", "recipe=none")
    assert recipe["name"] == "none" and cfg.train.lr == 5e-5 and cfg.task.max_length == 128  # the defaults
    with pytest.raises(ConfigError, match="config key 'recipe'"):
        resolve("--model", "dbert-tiny", "recipe=fast")


def test_the_recipe_line_says_what_was_set_and_what_the_user_kept():
    from ds_distil.finetune.train import recipe_line

    _, recipe = resolve("--model", "tiny", "train.lr=0.001")
    line = recipe_line(recipe)
    assert line.startswith("recipe: blank (") and "because 'tiny' has random weights: task.max_length=auto" in line
    assert "; yours kept: train.lr=0.001 (recipe=blank|pretrained|none chooses another)" in line
