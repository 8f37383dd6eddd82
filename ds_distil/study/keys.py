"""Stage keys: what a stage's finished output stands for.

A stage's **key** is the sha256 of its command, of the config files it reads (by content) and of
the keys of the stages it depends on. Changing a setting changes the key of that stage and of
everything downstream, so exactly those are redone; nothing else is. The runner writes the key into
the stage's marker when the stage finishes; a rerun skips a stage whose marker holds the same key.
Keys must stay as they are from one version to the next: a changed key redoes finished stages of
every existing study directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ds_distil.study.plan import Stage


def _sha_file(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"


def assign_keys(stages: list[Stage], plan_text: str, plan_path: Path) -> None:
    """key = sha256(command, contents of its config files, keys of its dependencies), in run order."""
    keys = {}
    for s in stages:
        files = {f: (hashlib.sha256(plan_text.encode()).hexdigest() if Path(f) == plan_path else _sha_file(f)) for f in s.files}
        blob = json.dumps({"args": s.args, "files": files, "deps": [keys[d] for d in s.deps]}, sort_keys=True)
        s.key = keys[s.name] = hashlib.sha256(blob.encode()).hexdigest()
