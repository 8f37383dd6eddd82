import re
from dataclasses import dataclass, field

import pytest

from ds_distil.core.config import ConfigError, from_dict, load, load_dict, save, to_dict
from ds_distil.schema.distill import DataConfig
from ds_distil.schema.prepare import PrepareConfig


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    tags: list[str] = field(default_factory=list)


def test_unknown_key_is_refused_with_its_dotted_name_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.stepz' \(did you mean 'inner\.steps'\?\)"):
        from_dict(Outer, {"inner": {"stepz": 3}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"inner": {"steps": "ten"}}, "inner.steps"),
        ({"inner": {"steps": 2.5}}, "inner.steps"),
        ({"inner": {"steps": True}}, "inner.steps"),  # a bool is not an int
        ({"flag": 1}, "flag"),
        ({"inner": 3}, "inner"),
        ({"tags": {"a": 1}}, "tags"),
    ],
)
def test_wrong_types_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        from_dict(Outer, data)


def test_overrides_are_typed_and_win_over_yaml(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("inner:\n  lr: 0.001\n  steps: 5\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nflag: true\n")
    cfg = load(Outer, [child], ["inner.steps=7", "inner.name=null", "tags=[a, b]"])
    assert cfg == Outer(inner=Inner(lr=0.001, steps=7, name=None), flag=True, tags=["a", "b"])
    assert isinstance(cfg.inner.lr, float)


def test_int_is_accepted_for_float_and_resolved_config_round_trips(tmp_path):
    cfg = from_dict(Outer, {"inner": {"lr": 1}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    save(cfg, tmp_path / "resolved.yaml")
    assert load(Outer, [tmp_path / "resolved.yaml"]) == cfg


def test_missing_file_bad_yaml_and_bad_override_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_dict([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_dict([bad])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_dict([], ["no_equals_sign"])


def test_section_validation_names_the_problem():
    with pytest.raises(ConfigError, match="fraction must be in"):
        from_dict(PrepareConfig, {"out": "x", "fraction": 1.5})
    with pytest.raises(ConfigError, match="missing config key 'shards'"):
        from_dict(DataConfig, {})
    assert to_dict(from_dict(DataConfig, {"shards": "d"}))["mlm_probability"] == 0.15


def test_a_section_given_in_part_keeps_the_fields_own_defaults():
    from ds_distil.schema.finetune import FinetuneConfig

    cfg = from_dict(FinetuneConfig, {"train": {"seed": 7}})
    assert cfg.train.seed == 7 and cfg.train.lr == 5e-5 and cfg.train.adam_betas == [0.9, 0.999]  # finetuning's, not distillation's


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    from ds_distil.schema.finetune import FinetuneConfig

    # YAML 1.1 (PyYAML) would read 5e-5 as a string; the command line and YAML files read it as a float
    cfg = load(FinetuneConfig, [], ["train.lr=5e-5", "train.adam_eps=1E-6", "train.weight_decay=0"])
    assert cfg.train.lr == 5e-5 and isinstance(cfg.train.lr, float) and cfg.train.adam_eps == 1e-6
    (tmp_path / "ft.yaml").write_text("train:\n  lr: 1e-4\n  max_steps: 10\ntask:\n  dataset_name: 1e5\n")
    cfg = load(FinetuneConfig, [tmp_path / "ft.yaml"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 10
    with pytest.raises(ConfigError, match=re.escape("config key 'train.max_steps': expected int | null, got 1000.0")):
        load(FinetuneConfig, [], ["train.max_steps=1e3"])  # a float where an int is wanted is still refused


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint.keep=0", "keep must be >= 1"),  # issue 14 case 2: keep=0 deleted the final checkpoint
        ("checkpoint.every_steps=-1", "every_steps must be >= 0"),
        ("log.every_steps=0", "every_steps must be >= 1"),
        ("log.eval_every_steps=-1", "eval_every_steps and eval_max_samples must be >= 0"),  # a check once shadowed
        ("log.eval_max_samples=-2", "eval_every_steps and eval_max_samples must be >= 0"),
        ("log.peak_tflops=0", "peak_tflops must be > 0"),
        ("train.lr=-0.001", "lr must be > 0"),
        ("train.lr=0", "lr must be > 0"),
        ("train.max_steps=0", "max_steps must be >= 1"),
        ("train.max_steps=-5", "max_steps must be >= 1"),
        ("train.adam_betas=[0.9]", "adam_betas"),
    ],
)
def test_distill_values_out_of_range_are_refused_naming_the_section(override, message):
    from ds_distil.schema.distill import DistillConfig

    with pytest.raises(ConfigError, match=message) as e:
        load(DistillConfig, [], ["data.shards=d", "teacher.preset=tiny", override])
    assert override.split(".")[0] in str(e.value)


def test_finetune_max_train_examples_zero_is_refused_not_everything():
    from ds_distil.schema.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="max_train_examples must be >= 2"):
        from_dict(FinetuneConfig, {"task": {"max_train_examples": 0}})
    assert from_dict(FinetuneConfig, {"task": {"max_train_examples": 5}}).task.max_train_examples == 5


# ---------------------------------------------------------------------------------------------
# Issue 37: no NaN or infinity where a number is meant; no key given twice.


@pytest.mark.parametrize("override", ["cache.temperature=.nan", "cache.proposal_temperature=.nan", "cache.temperature=.inf",
                                      "loss.a_kl=.nan", "loss.a_mlm=.inf", "loss.a_relations=.nan", "train.lr=-.inf",
                                      "train.adam_betas=[0.9, .nan]", "cache.max_gib=1e400"])
def test_nan_and_infinities_are_refused_in_every_float_key(override):
    """The hostile pass: a NaN temperature was a multinomial traceback, an infinite one a cache every student of which
    stopped on NaN, a NaN loss weight blamed on train.lr two steps later. Every float key of every command's config
    refuses them, optional ones (float | None) and lists included."""
    from ds_distil.schema.cache import TeacherCacheConfig
    from ds_distil.schema.distill import DistillConfig

    cls = TeacherCacheConfig if override.startswith("cache.") else DistillConfig
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}(\[1\])?': expected a finite number, got -?(nan|inf)"):
        from_dict(cls, load_dict([], ["data.shards=x", "teacher.preset=tiny", override]))


def test_a_float_field_may_allow_nan_and_infinities_explicitly():
    from ds_distil.core.config import setting

    @dataclass
    class Limits:
        ceiling: float = setting("no ceiling: .inf", default=float("inf"), nonfinite=True)
        floor: float = 0.0

    assert from_dict(Limits, {"ceiling": float("inf")}).ceiling == float("inf")
    with pytest.raises(ConfigError, match="'floor': expected a finite number"):
        from_dict(Limits, {"floor": float("-inf")})


def test_a_yaml_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """Two `train:` sections in a --config file (or `ranks` twice in a study): the second used to win silently."""
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\ndata:\n  shards: x\ntrain:\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=rf"config file {re.escape(str(path))} line 5 is not valid YAML: the key 'train' is given "
                                          r"twice, at lines 1 and 5 \(the second would silently replace the first\): keep one"):
        load_dict([path])
    path.write_text("data: {shards: x, shards: y}\n")
    with pytest.raises(ConfigError, match="the key 'shards' is given twice on line 1"):
        load_dict([path])
    # a merge key (<<) brings defaults that the mapping may override: that is what it is for
    path.write_text("defaults: &d {lr: 0.001, max_steps: 5}\ntrain:\n  <<: *d\n  lr: 0.002\n")
    assert load_dict([path])["train"] == {"lr": 0.002, "max_steps": 5}
