"""`ds-distil distill`: set up, train, export. The whole command, as torchtitan's train.py is: build, train, close."""

from __future__ import annotations

import logging
from pathlib import Path

from ds_distil.core.dist import broadcast
from ds_distil.core.errors import UserError
from ds_distil.core.signals import ignore_stop_signals
from ds_distil.distill.export import export_student
from ds_distil.distill.loop import fit
from ds_distil.distill.setup import setup
from ds_distil.schema.distill import DistillConfig

log = logging.getLogger(__name__)


def run_distill(cfg: DistillConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> int:
    c = setup(cfg, out, resume, overwrite)
    rank0, run = c.dist.rank == 0, c.checkpoints.run
    try:
        status = fit(c)
        if status != 0 and rank0:
            run.abort()  # stopped before its first checkpoint under --overwrite: the new run goes, the old one stays
        export_error = None
        if status == 0 and cfg.checkpoint.export:
            if rank0:
                try:
                    path = export_student(run.path)
                    log.info("student exported to %s (AutoModelForMaskedLM.from_pretrained loads it)", path)
                except UserError as e:
                    export_error = str(e)
            export_error = broadcast([export_error])[0]
    except BaseException:
        if rank0:
            run.abort()  # --overwrite before the first checkpoint: the new run goes, the old one stays
        raise
    finally:
        if rank0:
            run.release()
    ignore_stop_signals()  # the work is saved; from here the process only exits
    if export_error:
        raise UserError(f"training finished and its checkpoints are saved, but the export failed: {export_error}")
    return status
