"""Resume is exact or refused: what a distillation checkpoint's fingerprint holds (the comparison itself is
ds_distil/runtime/resume.py's, shared with finetuning).

Every setting of the run config is recorded in the checkpoint (trainer_state.json, "resume") and compared on
--resume, except those the schema marks as changeable (`setting(..., resume=True)` in schema/distill.py: they
change neither the samples a rank sees, nor how they are masked, nor the arithmetic). A difference is refused
naming the key, the old value and the new one. Beside the config, derived facts are compared: the world size,
the shards' content (their checksums in the manifest, not their path, so a moved shard directory resumes), the
masking rule and the resolved DeepSpeed JSON.
"""

from __future__ import annotations

import hashlib

from ds_distil.core.config import flatten, to_dict
from ds_distil.runtime import resume as common
from ds_distil.runtime.resume import saved_fingerprint  # noqa: F401 - distill's callers read it from here
from ds_distil.schema.distill import DistillConfig

DERIVED = ("world_size", "shards.content_sha256", "shards.seq_len", "shards.vocab_sha256", "data.masking_rule",
           "deepspeed.resolved_json_sha256", "student.vocab_kept_sha256")  # not typed by the user: follow from the data, ranks, JSON

HINTS = {"deepspeed.resolved_json_sha256": " (the JSON, its precision or its ZeRO stage differ: a one-rank fp32 checkpoint made "
                                          "before deepspeed.zero_stage=auto ran ZeRO-2; pass deepspeed.zero_stage=2)"}


def changeable() -> list[str]:
    """The config keys a resumed run may change (the schema's resume=True fields)."""
    return common.changeable(DistillConfig)


def changeable_text() -> str:
    """`changeable()` for a message: a section whose every key may change as `section.*`."""
    return common.changeable_text(DistillConfig)


def fingerprint(cfg: DistillConfig, manifest, world_size: int, ds_config: dict, masking_rule: str) -> dict:
    """The flat {setting: value} a resumed run must match."""
    may_change = set(changeable())
    fp = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in may_change}
    shards = manifest.shards("train")
    fp["world_size"] = world_size
    fp["shards.content_sha256"] = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()
    fp["shards.seq_len"] = manifest.seq_len
    fp["shards.vocab_sha256"] = manifest.tokenizer["vocab_sha256"]
    fp["data.masking_rule"] = masking_rule
    fp["deepspeed.resolved_json_sha256"] = common.ds_json_sha256(ds_config)
    return fp


def check(saved: dict, now: dict, checkpoint: str, derived: bool) -> None:
    """Refuse a resume whose settings differ from the checkpoint's: the config keys (derived=False; checked first,
    so the message names what the user changed), or the derived ones."""
    common.check(saved, now, checkpoint, derived=derived, derived_keys=DERIVED, cls=DistillConfig,
                 settings_file="RUN/run_config.yaml", hints=HINTS)
