"""Resume is exact or refused: what a distillation checkpoint's fingerprint holds (the comparison itself is
ds_distil/runtime/resume.py's, shared with finetuning).

Every setting of the run config is recorded in the checkpoint (trainer_state.json, "resume") and compared on
--resume, except those the schema marks as changeable (`setting(..., resume=True)` in schema/distill.py): the ones
that change neither the samples, nor how they are masked, nor the arithmetic, and the layout of the run: its number
of ranks, micro batch, accumulation and data-loader workers (a resume on another layout keeps the global batch and
the epoch's sample order: distill/elastic.py, data/reshard.py), and how it was launched. A difference is refused
naming the key, the old value and the new one. Beside the config, derived facts are compared: the shards' content
(their checksums in the manifest, not their path, so a moved shard directory resumes), the masking rule and the
DeepSpeed JSON (precision, ZeRO and the rest, less what follows from the layout: batch sizes, the LR schedule's
length, the ZeRO stage `auto` picks for the number of ranks).
"""

from __future__ import annotations

import hashlib
import json

from ds_distil.core.config import flatten, to_dict
from ds_distil.runtime import resume as common
from ds_distil.runtime.resume import saved_fingerprint  # noqa: F401 - distill's callers read it from here
from ds_distil.schema.distill import DistillConfig

DS_LAYOUT = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "checkpoint")  # follow from the split
DERIVED = ("world_size", "shards.content_sha256", "shards.seq_len", "shards.vocab_sha256", "data.masking_rule",
           "deepspeed.resolved_json_sha256", "deepspeed.json_sha256", "student.vocab_kept_sha256")  # follow from the data, ranks, JSON
LAYOUT = ("world_size",)  # derived, and may change on --resume
LEGACY_JSON = "deepspeed.resolved_json_sha256"  # checkpoints from before elastic resume: the whole JSON, layout included

HINTS = {LEGACY_JSON: " (the JSON, its precision, its ZeRO stage or the run's layout differ; a checkpoint written before "
                      "elastic resume resumes on its own number of ranks, micro batch and accumulation only: resume it so "
                      "once, and its next checkpoint resumes on any)",
         "deepspeed.json_sha256": " (the JSON's precision, ZeRO settings or optimizer differ)"}


def changeable() -> list[str]:
    """The config keys a resumed run may change (the schema's resume=True fields)."""
    return common.changeable(DistillConfig)


def json_sha256(ds_config: dict) -> str:
    """The DeepSpeed JSON less what follows from the layout: batch sizes, the schedule's length (kept from the run's
    start, or rescaled by samples: elastic.Schedule), and the ZeRO stage where deepspeed.zero_stage=auto picks it by the
    number of ranks (the checkpoint is converted between stages: runtime/universal.py)."""
    ds = {k: v for k, v in ds_config.items() if k not in common.DS_UNCOMPARED + DS_LAYOUT}
    if "scheduler" in ds:
        params = {k: v for k, v in ds["scheduler"].get("params", {}).items() if k not in ("total_num_steps", "warmup_num_steps")}
        ds["scheduler"] = {**ds["scheduler"], "params": params}
    ds["zero_optimization"] = {k: v for k, v in ds.get("zero_optimization", {}).items() if k != "stage"}  # (an explicit
    # deepspeed.zero_stage is a setting of its own, compared as one)
    return hashlib.sha256(json.dumps(ds, sort_keys=True).encode()).hexdigest()


def changeable_text() -> str:
    """`changeable()` for a message: a section whose every key may change as `section.*`."""
    return common.changeable_text(DistillConfig)


def fingerprint(cfg: DistillConfig, manifest, world_size: int, ds_config: dict, masking_rule: str,
                legacy_ds_config: dict | None = None) -> dict:
    """The flat {setting: value} a resumed run must match (what a checkpoint records: `recorded`). `legacy_ds_config`:
    the JSON as a checkpoint from before elastic resume hashed it (whole), to compare with one."""
    may_change = set(changeable())
    fp = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in may_change}
    shards = manifest.shards("train")
    fp["world_size"] = world_size
    fp["shards.content_sha256"] = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()
    fp["shards.seq_len"] = manifest.seq_len
    fp["shards.vocab_sha256"] = manifest.tokenizer["vocab_sha256"]
    fp["data.masking_rule"] = masking_rule
    fp["deepspeed.json_sha256"] = json_sha256(ds_config)
    fp[LEGACY_JSON] = common.ds_json_sha256(legacy_ds_config or ds_config)
    return fp


def recorded(fp: dict) -> dict:
    """What a checkpoint records of a fingerprint: the layout-free JSON hash only."""
    return {k: v for k, v in fp.items() if k != LEGACY_JSON}


def check(saved: dict, now: dict, checkpoint: str, derived: bool) -> None:
    """Refuse a resume whose settings differ from the checkpoint's: the config keys (derived=False; checked first,
    so the message names what the user changed), or the derived ones (the layout, LAYOUT, may change)."""
    common.check(saved, now, checkpoint, derived=derived, derived_keys=DERIVED, cls=DistillConfig,
                 settings_file="RUN/run_config.yaml", hints=HINTS, also_changeable=LAYOUT)
