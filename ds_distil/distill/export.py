"""`ds-distil export`: a run's checkpoint -> a Hugging Face model directory with its model card.

RUN/student (or --out) holds config.json, model.safetensors, the tokenizer files, ds_distil_export.json (which
checkpoint) and README.md (the model card, ds_distil/distill/card.py). It loads with
`AutoModelForMaskedLM.from_pretrained(dir)` and nothing of ours. The checkpoint is verified against its COMPLETE
and read without unpickling arbitrary objects; the objective's own parameters (a projection: anything trained
beside the model, outside its `model.` prefix) are left out, and so are the vocabulary's padding rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ds_distil.core.errors import UserError, os_errors_at
from ds_distil.core.rundir import claim
from ds_distil.core.safe_load import weights_only_loads
from ds_distil.distill.card import write_card
from ds_distil.model.surgery import unpad_vocab
from ds_distil.runtime.checkpoint import MARKER, choose_tag, complete_tags, verify, zero_stage

log = logging.getLogger(__name__)
PREFIX = "model."  # the student's weights in the engine's state dict (model.forward.MaskedLM)


def export_student(run_dir: Path, out: Path | None = None, tag: str | None = None, overwrite: bool = False) -> Path:
    """Consolidate checkpoint `tag` (default: the newest complete, intact one) into `out` (default RUN/student)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if tag is None:
        tag, notes = choose_tag(run_dir, set_aside=False)
        for note in notes:
            log.warning("%s; exporting an older one", note)
        if tag is None:
            raise UserError(f"{run_dir} has no complete, intact checkpoint to export; run `ds-distil distill --out {run_dir}` first")
    else:
        if not (ckpt_dir / tag / MARKER).is_file():
            raise UserError(f"checkpoint {ckpt_dir / tag} is incomplete or missing (no {MARKER}); pick another tag "
                            f"({', '.join(t for _, t in complete_tags(ckpt_dir)) or 'none complete'})")
        problem = verify(ckpt_dir / tag)
        if problem:
            raise UserError(f"checkpoint {ckpt_dir / tag} is damaged: {problem}; pick another tag")
    out = Path(out) if out else run_dir / "student"
    with weights_only_loads(ckpt_dir / tag):
        if zero_stage(ckpt_dir / tag) == 0:  # no ZeRO: the fp32 weights are the model states' module
            state = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
        else:
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    beside = sorted({k.split(".")[0] for k in state if not k.startswith(PREFIX)})
    if beside:
        log.info("export: leaving out what the objective trained beside the student (%s)", ", ".join(beside))
    state = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    config = AutoConfig.from_pretrained(str(run_dir / "student_config"))
    model = AutoModelForMaskedLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise UserError(f"checkpoint {tag} does not match the student architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    unpad_vocab(model, len(tokenizer))  # training may pad the vocabulary rows (perf.pad_vocab_multiple)
    inputs = [ckpt_dir / tag, run_dir / "tokenizer", run_dir / "student_config"]
    with claim(out, "export", overwrite=overwrite, inputs=inputs) as rd:
        with os_errors_at(rd.path):
            model.save_pretrained(str(rd.path), safe_serialization=True)
            tokenizer.save_pretrained(str(rd.path))
        (rd.path / "ds_distil_export.json").write_text(json.dumps({"checkpoint": str(ckpt_dir / tag)}))
        write_card(rd.path, run_dir, tag)  # README.md: the model card
        rd.commit()
    return out
