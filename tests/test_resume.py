"""What a resume may change comes from the schema: a field marked changeable (`setting(..., resume=True)`) is
accepted, any other is refused naming it, and the refusal lists what may change, from the same marks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from ds_distil.core.config import flat_fields, from_dict
from ds_distil.core.errors import UserError
from ds_distil.distill.resume import changeable, changeable_text, check, fingerprint, recorded
from ds_distil.schema.distill import DistillConfig

MANIFEST = SimpleNamespace(shards=lambda split: [SimpleNamespace(sha256="ab" * 32)], seq_len=128,
                           tokenizer={"vocab_sha256": "cd" * 32})
BASE = from_dict(DistillConfig, {"data": {"shards": "shards"}, "teacher": {"preset": "tiny"}})


def fp(cfg):
    return fingerprint(cfg, MANIFEST, 2, {"zero_optimization": {"stage": 2}}, "rule")


def changed(key: str):
    """BASE with one field set to a value it never has (the fingerprint compares values, not their validity)."""
    cfg = copy.deepcopy(BASE)
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, "<changed>")
    return cfg


@pytest.mark.parametrize("key", list(flat_fields(DistillConfig)))
def test_a_resume_that_changes_one_field_is_accepted_iff_the_schema_says_it_may(key):
    saved = fp(BASE)
    if key in changeable():
        check(saved, fp(changed(key)), "step00000010", derived=False)
    else:
        with pytest.raises(UserError, match=rf"--resume would change {key} from .* to '<changed>' against checkpoint step00000010"):
            check(saved, fp(changed(key)), "step00000010", derived=False)


def test_the_refusal_lists_what_may_change_from_the_schema():
    with pytest.raises(UserError) as e:
        check(fp(BASE), fp(changed("train.lr")), "step00000010", derived=False)
    assert str(e.value).endswith(f"Changeable on resume: {changeable_text()}")
    assert "log.*" in changeable_text() and "checkpoint.*" in changeable_text() and "data.shards" in changeable_text()
    assert "train.lr" not in changeable_text() and "data.shuffle_buffer" not in changeable_text()


def test_a_checkpoint_recording_a_field_that_may_change_now_resumes():
    """Checkpoints of 64e7063 and before recorded log.eval_every_steps (it was not on the hand-kept list) while the
    refusal said log.* may change: such a checkpoint resumes with another value now."""
    saved = {**fp(BASE), "log.eval_every_steps": 500, "log.eval_max_samples": 2048}
    now = fp(changed("log.eval_every_steps"))
    check(saved, now, "step00000010", derived=False)
    assert "log.eval_every_steps" not in now


def test_derived_facts_are_compared_after_the_settings_and_the_layout_may_change():
    saved = fp(BASE)
    other_ranks = fingerprint(BASE, MANIFEST, 1, {"zero_optimization": {"stage": 2}}, "rule")
    for derived in (False, True):  # issue 39: another number of ranks resumes (elastic.py keeps the global batch)
        check(saved, other_ranks, "step00000010", derived=derived)
    other_data = SimpleNamespace(shards=lambda split: [SimpleNamespace(sha256="ef" * 32)], seq_len=128,
                                 tokenizer={"vocab_sha256": "cd" * 32})
    now = fingerprint(BASE, other_data, 2, {"zero_optimization": {"stage": 2}}, "rule")
    check(saved, now, "step00000010", derived=False)  # no setting changed
    with pytest.raises(UserError, match="--resume would change shards.content_sha256"):
        check(saved, now, "step00000010", derived=True)


def ds(stage=2, micro=4, accum=1, world=2, total=100, bf16=False):
    return {"train_batch_size": micro * accum * world, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "zero_optimization": {"stage": stage, "overlap_comm": False}, "bf16": {"enabled": bf16},
            "scheduler": {"type": "WarmupDecayLR",
                          "params": {"total_num_steps": total, "warmup_num_steps": total // 10, "warmup_max_lr": 1e-3}}}


def test_the_deepspeed_json_is_compared_without_what_follows_from_the_layout():
    saved = recorded(fingerprint(BASE, MANIFEST, 2, ds(), "rule"))
    assert "deepspeed.resolved_json_sha256" not in saved  # the whole JSON (layout included) is no longer recorded
    # 1 rank: accumulation 2, the schedule's length as the epochs make it, no ZeRO (auto's choice for one fp32 rank)
    check(saved, fingerprint(BASE, MANIFEST, 1, ds(stage=0, accum=2, world=1, total=97), "rule"), "step00000010", derived=True)
    with pytest.raises(UserError, match="deepspeed.json_sha256 .* precision"):
        check(saved, fingerprint(BASE, MANIFEST, 1, ds(world=1, bf16=True), "rule"), "step00000010", derived=True)
    with pytest.raises(UserError, match="warmup_max_lr|deepspeed.json_sha256"):
        other = ds()
        other["scheduler"]["params"]["warmup_max_lr"] = 2e-3
        check(saved, fingerprint(BASE, MANIFEST, 2, other, "rule"), "step00000010", derived=True)


def test_a_checkpoint_from_before_elastic_resume_resumes_on_its_own_layout_only():
    """Its fingerprint holds the whole resolved JSON: the same layout matches it, another is refused with the way on."""
    old = {k: v for k, v in fingerprint(BASE, MANIFEST, 2, ds(), "rule").items() if k != "deepspeed.json_sha256"}
    check(old, fingerprint(BASE, MANIFEST, 2, ds(), "rule"), "step00000010", derived=True)
    with pytest.raises(UserError, match="written before elastic resume resumes on its own number of ranks"):
        check(old, fingerprint(BASE, MANIFEST, 1, ds(accum=2, world=1), "rule"), "step00000010", derived=True)


def test_finetune_still_refuses_another_number_of_ranks():
    """Elastic resume is distillation's: finetuning's comparison (the same runtime/resume.py, without distill's layout
    keys) refuses a change of world size, naming the run's own settings."""
    from ds_distil.finetune.setup import DERIVED
    from ds_distil.runtime import resume as common
    from ds_distil.schema.finetune import FinetuneConfig

    saved, now = {"train.lr": 0.002, "world_size": 2}, {"train.lr": 0.002, "world_size": 1}
    args = {"derived_keys": DERIVED, "cls": FinetuneConfig, "settings_file": "DIR/finetune_config.yaml"}
    common.check(saved, now, "step00000004", derived=False, **args)  # no setting changed
    with pytest.raises(UserError, match=r"--resume would change world_size from 2 to 1 .*\(DIR/finetune_config.yaml\)"):
        common.check(saved, now, "step00000004", derived=True, **args)
