"""What to call a model in results and the report, and what loading its weights did.

A name comes from the model, not from where it lies: `runs/exp3/student` and a copy of it elsewhere
are the same model. In order: the `model_name` setting; the model card (README.md front matter
`model_name:` or `model-index: - name:`, else its first `# ` heading); a hub name (`_name_or_path`
in config.json, when that is not a path); for a `ds-distil export`, the distillation run it came from
and its size; otherwise the architecture and size with the directory's name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml


def _card_name(directory: Path) -> str | None:
    card = directory / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if m:
        try:
            meta = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError:
            meta = {}
        if isinstance(meta, dict):
            if isinstance(meta.get("model_name"), str):
                return meta["model_name"]
            index = meta.get("model-index")
            if isinstance(index, list) and index and isinstance(index[0], dict) and isinstance(index[0].get("name"), str):
                return index[0]["name"]
        text = text[m.end():]
    heading = re.search(r"^#\s+(.+?)\s*$", text, re.M)
    return heading.group(1) if heading else None


def _size(config: dict) -> str:
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    hidden = config.get("hidden_size") or config.get("dim")
    return f"{config.get('model_type', 'model')} {layers}x{hidden}" if layers and hidden else config.get("model_type", "model")


def display_name(model: str, override: str | None = None) -> str:
    if override:
        return override
    path = Path(model)
    if not path.is_dir():
        return model  # a preset (micro, mbert, ...) or a hub name
    name = _card_name(path)
    if name:
        return name
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    hub = config.get("_name_or_path") or ""
    if hub and not hub.startswith((".", "/", "~")) and not Path(hub).exists() and hub.count("/") <= 1:
        return hub
    export = path / "ds_distil_export.json"
    if export.is_file():
        ckpt = Path(json.loads(export.read_text()).get("checkpoint", ""))
        run = ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.parent.name
        if run:
            return f"{run} ({_size(config)})"
    return f"{_size(config)} ({path.resolve().name})"


def loading_summary(info: dict, model: str) -> tuple[str, bool]:
    """(one line on what from_pretrained loaded, whether the encoder itself was incomplete)."""
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(info.get("mismatched_keys") or [])
    head = ("classifier", "pooler", "score", "qa_outputs", "pre_classifier")
    encoder_missing = [k for k in missing if not any(h in k for h in head)]
    parts = [f"weights from {model}"]
    if missing:
        new = sorted({k.rsplit(".", 1)[0] for k in missing if k not in encoder_missing})
        if new:
            parts.append(f"new (trained from scratch): {', '.join(new)}")
    if unexpected:
        parts.append(f"not used: {len(unexpected)} tensors ({', '.join(sorted({k.split('.')[0] for k in unexpected}))}, "
                     "e.g. the pretraining head)")
    if mismatched:
        parts.append(f"shape mismatch: {', '.join(mismatched[:3])}")
    if encoder_missing:
        parts.append(f"MISSING from the checkpoint, randomly initialised: {len(encoder_missing)} encoder tensors "
                     f"(e.g. {encoder_missing[0]})")
    return "; ".join(parts), bool(encoder_missing or mismatched)
