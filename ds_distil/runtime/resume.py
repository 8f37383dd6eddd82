"""Resume is exact or refused, for every command that resumes (distill, finetune): the settings a checkpoint was made
under, compared on --resume.

A command records a flat fingerprint {setting: value} in each checkpoint (trainer_state.json, "resume"): every key of
its resolved config except those its schema marks as changeable (`setting(..., resume=True)`: they change neither the
samples a rank sees nor the arithmetic), and derived facts the user does not type (the world size, the data's content,
the resolved DeepSpeed JSON). On --resume the two are compared, the config keys first (so the message names what the
user changed), and a difference is refused naming the key, the old value and the new one. A command may let derived
facts change too (`check`'s also_changeable: distill's world size, its elastic resume; finetune refuses it).
"""

from __future__ import annotations

import hashlib
import json

from ds_distil.core.config import flat_fields
from ds_distil.core.errors import UserError

DS_UNCOMPARED = ("steps_per_print", "wall_clock_breakdown")  # DeepSpeed JSON keys that change no arithmetic


def changeable(cls: type) -> list[str]:
    """The config keys of `cls` a resumed run may change (the schema's resume=True fields)."""
    return [key for key, f in flat_fields(cls).items() if f.metadata.get("resume")]


def changeable_text(cls: type) -> str:
    """`changeable(cls)` for a message: a section whose every key may change as `section.*`."""
    keys, fields = changeable(cls), flat_fields(cls)
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    whole = {s for s in sections if all(k in keys for k in fields if k.startswith(s + "."))}
    return ", ".join([f"{s}.*" for s in sorted(whole)] + [k for k in keys if "." not in k or k.rsplit(".", 1)[0] not in whole])


def ds_json_sha256(ds_config: dict) -> str:
    """The resolved DeepSpeed JSON's hash, without the keys that change nothing a resume must match."""
    ds = {k: v for k, v in ds_config.items() if k not in DS_UNCOMPARED}
    return hashlib.sha256(json.dumps(ds, sort_keys=True).encode()).hexdigest()


def saved_fingerprint(trainer_state: dict) -> dict:
    """A checkpoint's fingerprint; for one written before fingerprints, its resolved config."""
    from ds_distil.core.config import flatten

    if "resume" in trainer_state:
        return trainer_state["resume"]
    return flatten(trainer_state.get("config", {}))


def check(saved: dict, now: dict, checkpoint: str, *, derived: bool, derived_keys: tuple[str, ...], cls: type,
          settings_file: str, hints: dict[str, str] | None = None, also_changeable: tuple[str, ...] = ()) -> None:
    """Refuse a resume whose settings differ from the checkpoint's: the config keys (derived=False), or the derived
    ones (`derived_keys`). Only keys the checkpoint records are compared (a setting added since takes its default,
    which is what the run did), and never one the schema of `cls` now lets change (an older checkpoint may record it)
    nor one of `also_changeable` (derived keys the command lets change: distill's world size).
    `settings_file`: where the run's own settings are (RUN/run_config.yaml)."""
    may_change = set(changeable(cls)) | set(also_changeable)
    keys = [k for k in saved if (k in derived_keys) == derived and k not in may_change]
    changed = [(k, saved[k], now.get(k, "(not set)")) for k in keys if now.get(k, "(not set)") != saved[k]]
    if not changed:
        return
    key, old, new = changed[0]
    hint = (hints or {}).get(key, "")
    more = f" (and {len(changed) - 1} more: {', '.join(k for k, _, _ in changed[1:4])})" if len(changed) > 1 else ""
    raise UserError(
        f"--resume would change {key} from {old!r} to {new!r}{more} against checkpoint {checkpoint}: the run would no "
        "longer be the one it continues (other samples, masking or arithmetic); resume with the run's own settings "
        f"({settings_file}){hint}, or start a new run with another --out. Changeable on resume: {changeable_text(cls)}"
    )
