"""What a resume may change comes from the schema: a field marked changeable (`setting(..., resume=True)`) is
accepted, any other is refused naming it, and the refusal lists what may change, from the same marks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from ds_distil.core.config import flat_fields, from_dict
from ds_distil.core.errors import UserError
from ds_distil.distill.resume import changeable, changeable_text, check, fingerprint
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


def test_derived_facts_are_compared_after_the_settings():
    saved, now = fp(BASE), fingerprint(BASE, MANIFEST, 1, {"zero_optimization": {"stage": 2}}, "rule")
    check(saved, now, "step00000010", derived=False)  # no setting changed
    with pytest.raises(UserError, match="--resume would change world_size from 2 to 1"):
        check(saved, now, "step00000010", derived=True)
