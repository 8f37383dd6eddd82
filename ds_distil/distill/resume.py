"""Resume is exact or refused: the settings a checkpoint was made under, compared on --resume.

Every setting that changes which samples a rank sees, how they are masked, or how the model
trains is recorded in the checkpoint (trainer_state.json, "resume") and compared on --resume;
a difference is refused naming the key, the old value and the new one. The shards are compared
by content (their checksums in the manifest), not by path, so a moved shard directory resumes.

Safe to change on --resume (they change neither the samples nor the arithmetic): SAFE_TO_CHANGE.
"""

from __future__ import annotations

import hashlib
import json

from ds_distil.core.config import to_dict
from ds_distil.core.errors import UserError

SAFE_TO_CHANGE = (
    "log.every_steps", "log.tensorboard", "log.peak_tflops",
    "checkpoint.every_steps", "checkpoint.keep", "checkpoint.export",
    "data.shards",  # the path: the content is compared through shards.content_sha256
    "data.verify_checksums", "data.skip_corrupt_shards",
    "deepspeed.config",  # the path: the resolved DeepSpeed JSON is compared instead
    "train.max_nonfinite_steps",
)
DS_UNCOMPARED = ("steps_per_print", "wall_clock_breakdown")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint(cfg, manifest, world_size: int, ds_config: dict, masking_rule: str) -> dict:
    """The flat {setting: value} a resumed run must match."""
    fp = {k: v for k, v in _flatten(to_dict(cfg)).items() if k not in SAFE_TO_CHANGE}
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
    return {k: v for k, v in _flatten(trainer_state.get("config", {})).items() if k not in SAFE_TO_CHANGE}


DERIVED = ("world_size", "shards.content_sha256", "shards.seq_len", "shards.vocab_sha256", "data.masking_rule",
           "deepspeed.resolved_json_sha256")  # not typed by the user: follow from the data, the ranks, the JSON


def check(saved: dict, now: dict, checkpoint: str, derived: bool) -> None:
    """Refuse a resume whose settings differ from the checkpoint's (keys the checkpoint records): the config
    keys (derived=False; checked first, so the message names what the user changed), or the derived ones."""
    keys = [k for k in saved if (k in DERIVED) == derived]
    changed = [(k, saved[k], now.get(k, "(not set)")) for k in keys if now.get(k, "(not set)") != saved[k]]
    if not changed:
        return
    key, old, new = changed[0]
    more = f" (and {len(changed) - 1} more: {', '.join(k for k, _, _ in changed[1:4])})" if len(changed) > 1 else ""
    raise UserError(
        f"--resume would change {key} from {old!r} to {new!r}{more} against checkpoint {checkpoint}: the run would no "
        "longer be the one it continues (other samples, masking or arithmetic); resume with the run's own settings "
        "(RUN/run_config.yaml), or start a new run with another --out. Changeable on resume: log.*, checkpoint.*, "
        "data.shards (the path, same content), data.verify_checksums, data.skip_corrupt_shards, train.max_nonfinite_steps"
    )
