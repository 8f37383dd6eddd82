"""Resume is exact or refused: the settings a checkpoint was made under, compared on --resume.

Every setting of the run config is recorded in the checkpoint (trainer_state.json, "resume") and compared on
--resume, except those the schema marks as changeable (`setting(..., resume=True)` in schema/distill.py: they
change neither the samples a rank sees, nor how they are masked, nor the arithmetic). A difference is refused
naming the key, the old value and the new one. Beside the config, derived facts are compared: the world size,
the shards' content (their checksums in the manifest, not their path, so a moved shard directory resumes), the
masking rule and the resolved DeepSpeed JSON.
"""

from __future__ import annotations

import hashlib
import json

from ds_distil.core.config import flat_fields, flatten, to_dict
from ds_distil.core.errors import UserError
from ds_distil.schema.distill import DistillConfig

DS_UNCOMPARED = ("steps_per_print", "wall_clock_breakdown")
DERIVED = ("world_size", "shards.content_sha256", "shards.seq_len", "shards.vocab_sha256", "data.masking_rule",
           "deepspeed.resolved_json_sha256", "student.vocab_kept_sha256")  # not typed by the user: follow from the data, ranks, JSON

HINTS = {"deepspeed.resolved_json_sha256": " (the JSON, its precision or its ZeRO stage differ: a one-rank fp32 checkpoint made "
                                          "before deepspeed.zero_stage=auto ran ZeRO-2; pass deepspeed.zero_stage=2)"}


def changeable() -> list[str]:
    """The config keys a resumed run may change (the schema's resume=True fields)."""
    return [key for key, f in flat_fields(DistillConfig).items() if f.metadata.get("resume")]


def changeable_text() -> str:
    """`changeable()` for a message: a section whose every key may change as `section.*`."""
    keys, fields = changeable(), flat_fields(DistillConfig)
    sections = {k.rsplit(".", 1)[0] for k in keys}
    whole = {s for s in sections if all(k in keys for k in fields if k.startswith(s + "."))}
    return ", ".join([f"{s}.*" for s in sorted(whole)] + [k for k in keys if k.rsplit(".", 1)[0] not in whole])


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
    ds = {k: v for k, v in ds_config.items() if k not in DS_UNCOMPARED}
    fp["deepspeed.resolved_json_sha256"] = hashlib.sha256(json.dumps(ds, sort_keys=True).encode()).hexdigest()
    return fp


def saved_fingerprint(trainer_state: dict) -> dict:
    """A checkpoint's fingerprint; for one written before fingerprints, its resolved config."""
    if "resume" in trainer_state:
        return trainer_state["resume"]
    return flatten(trainer_state.get("config", {}))


def check(saved: dict, now: dict, checkpoint: str, derived: bool) -> None:
    """Refuse a resume whose settings differ from the checkpoint's: the config keys (derived=False; checked first,
    so the message names what the user changed), or the derived ones. Only keys the checkpoint records are compared
    (a setting added since takes its default, which is what the run did), and never one the schema now lets change
    (an older checkpoint may record it)."""
    may_change = set(changeable())
    keys = [k for k in saved if (k in DERIVED) == derived and k not in may_change]
    changed = [(k, saved[k], now.get(k, "(not set)")) for k in keys if now.get(k, "(not set)") != saved[k]]
    if not changed:
        return
    key, old, new = changed[0]
    hint = HINTS.get(key, "")
    more = f" (and {len(changed) - 1} more: {', '.join(k for k, _, _ in changed[1:4])})" if len(changed) > 1 else ""
    raise UserError(
        f"--resume would change {key} from {old!r} to {new!r}{more} against checkpoint {checkpoint}: the run would no "
        "longer be the one it continues (other samples, masking or arithmetic); resume with the run's own settings "
        f"(RUN/run_config.yaml){hint}, or start a new run with another --out. Changeable on resume: {changeable_text()}"
    )
