"""`ds-distil finetune`: one finetuning path for every task (sequence, pair and token classification)
under DeepSpeed, as distillation runs: a single process, `deepspeed --num_gpus N`, or torchrun.

The run directory DIR is where the run is watched from its first step: DIR/finetune.log (the console), DIR/tensorboard,
DIR/metrics.jsonl, DIR/finetune_config.yaml, and DIR/checkpoints while it trains (--resume continues a stopped run
exactly; finetune/loop.py). At the end the final outputs appear whole, results.json last:

    DIR/model/                    the classifier, loadable with transformers alone (finetune/model_dir.py)
    DIR/predictions/{valid,test}.jsonl   every row's prediction and class probabilities (finetune/inference.py)
    DIR/results.json              test and validation scores of the kept model (train.keep), training runtime,
                                  throughput, device, seed, resolved config; the data read, label distributions,
                                  per-class scores, confusion matrices, 95% intervals, baselines and warnings
                                  (finetune/summary.py); the validation curve

and the checkpoints are deleted (DIR/model is the output). `train_runtime_s` counts the training loop only (no set-up,
evaluation or checkpoints), over every session of a resumed run, as the paper's runtimes do.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ds_distil.core import rundir
from ds_distil.core.config import to_dict
from ds_distil.core.dist import broadcast
from ds_distil.core.env_info import device_info, versions
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write_json, atomic_write_lines
from ds_distil.core.runlog import RunLog
from ds_distil.core.signals import StopRequest
from ds_distil.data.readers import read_options
from ds_distil.data.tasks import default_data_dir
from ds_distil.finetune import model_dir, summary
from ds_distil.finetune.inference import argmax, infer, jsonl, records
from ds_distil.finetune.loop import current, fit, snapshot_of, split_scalars
from ds_distil.finetune.scoring import evaluate
from ds_distil.finetune.setup import FINAL, Setup, finished, recipe_line, setup  # noqa: F401 - recipe_line: read from here too
from ds_distil.model.info import display_name
from ds_distil.runtime import engine as eng
from ds_distil.schema.finetune import FinetuneConfig

log = logging.getLogger(__name__)


def run_finetune(model: str, task_name: str, out: str | Path, cfg: FinetuneConfig, overwrite: bool = False,
                 recipe: dict | None = None, resume: bool = False) -> tuple[int, dict | None]:
    """Finetune into --out, claimed first (ds_distil.core.rundir). Returns (exit status, results): (0, results.json's
    content; on ranks other than 0 its scores are None), or (EXIT_PREEMPTED, None) when a signal stopped the run at a
    checkpoint."""
    if resume and overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    stop = StopRequest()  # from here a SIGTERM/SIGUSR1 only asks: the loop checkpoints and stops at its next step
    d = eng.init_distributed()
    run_log = RunLog(enabled=d.rank == 0)
    inputs = [p for p in (model, cfg.task.data_dir or default_data_dir(), cfg.task.tokenizer) if p and Path(p).exists()]
    try:
        rd = rundir.claim_on_rank0(d.rank, lambda: rundir.claim(out, "finetune", overwrite=overwrite, inputs=inputs, in_place=True))
        try:
            if resume and broadcast([finished(rd) if d.rank == 0 else None])[0]:
                return 0, _finished(rd.path, d.rank)
            s = setup(model, task_name, rd, cfg, recipe or {"name": "none", "choice": "given config"}, resume, d, stop, run_log)
            status = fit(s.trainer)
            if status != 0:
                s.trainer.metrics.close()
                return status, None
            return 0, finish(s, model, cfg, recipe or {"name": "none", "choice": "given config"})
        except BaseException:
            if d.rank == 0:
                rd.abort()  # a refused set-up: nothing written (an --overwrite run's old output untouched); else the checkpoints stay
            raise
        finally:
            if d.rank == 0:
                rd.release()
    finally:
        run_log.close()
        stop.close()


def _finished(out: Path, rank: int) -> dict:
    """--resume of a run that finished: nothing to do (a requeued job or a study runner may ask); its results."""
    if rank != 0:
        return {"score": None}
    log.info("--resume: %s holds a finished run (results.json): nothing to resume", out)
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def finish(s: Setup, model_arg: str, cfg: FinetuneConfig, recipe: dict) -> dict:
    """The kept model (train.keep), its predictions on validation and test, their scores, baselines and warnings; on
    rank 0: DIR/model, DIR/predictions, DIR/results.json, swapped in whole, and the checkpoints deleted."""
    t, task, d = s.trainer, s.task, s.trainer.d
    st, pad = t.state, s.tokenizer.pad_token_id
    model = current(t)  # fp32, whatever the run trained in: what DIR/model holds and predictions/*.jsonl come from

    def run(split: str) -> dict:
        return infer(model, t.feats[split], cfg.eval_batch_size, pad, d.rank, d.world_size, d.device, f"evaluate {split}")

    logits = {"valid": run("valid")}
    keep = {"setting": cfg.train.keep, "chosen": "last", "step": t.num_steps}
    last = evaluate(task, argmax(logits["valid"]), t.feats["valid"]) if d.rank == 0 else None
    if d.rank == 0:  # the end of the validation curve: the last model
        st.curve.append({"step": t.num_steps, "score": last["score"], "macro_f1": last["macro_f1"]})
        t.metrics.scalars(t.num_steps, split_scalars("valid", last))
    if cfg.train.keep == "best":
        best = broadcast([st.best if d.rank == 0 and st.best and st.best["score"] >= last["score"] else None])[0]
        if best is not None:  # an earlier model scored higher (ties: the earlier one)
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(snapshot_of(t.checkpoints.run_dir, best)), device=str(d.device)))
            logits["valid"] = run("valid")
            keep.update(chosen="best", step=best["step"])
    logits["test"] = run("test")

    found = summary.evaluate_run(task, {k: argmax(v) for k, v in logits.items()}, t.feats) if d.rank == 0 else {}
    test, valid = found.get("evaluation", {}).get("test", {}), found.get("evaluation", {}).get("valid", {})
    keep["valid_score"] = valid.get("score")
    out = t.checkpoints.run_dir
    res = {
        "model": model_arg, "model_name": display_name(model_arg, cfg.model_name), "task": task.name,
        "metric": "f1" if task.metric == "f1" else "accuracy", "score": test.get("score"), "valid_score": valid.get("score"),
        "macro_f1": test.get("macro_f1"), **s.data, **found, "warnings": s.data_warnings + found.get("warnings", []),
        "warnings_before_training": s.data_warnings, "keep": keep, "validation_curve": st.curve, "resumed_at": st.resumed_at,
        "train_runtime_s": st.train_s, "samples_per_s": st.samples / st.train_s if st.train_s else None,
        "train_examples": len(t.feats["train"]), "transfer_examples": len(t.feats.get("transfer", [])), "distillation": s.distillation,
        "steps": t.num_steps, "world_size": d.world_size,
        "precision": eng.precision(s.ds_config), "zero_stage": s.ds_config["zero_optimization"]["stage"],
        "device": device_info(), "seed": cfg.train.seed, "recipe": recipe, "versions": versions(), "config": to_dict(cfg),
        "model_dir": str(out / "model"), "predictions": {split: str(out / "predictions" / f"{split}.jsonl") for split in ("valid", "test")},
    }
    if d.rank == 0:
        # TensorBoard: the kept model's test scores at the end, and the run's hyper-parameters with them
        t.metrics.scalars(t.num_steps, split_scalars("test", test))
        t.metrics.hparams(t.num_steps, hyperparameters(model_arg, task, cfg, res), {
            "hparam/valid_score": valid["score"], "hparam/test_score": test["score"], "hparam/test_macro_f1": test["macro_f1"]})
    t.metrics.close()
    if d.rank == 0:
        write_outputs(out, s, model, logits, res)
        log.info("%s on %s: test %s %.4f | macro-F1 %.4f (valid %.4f | macro-F1 %.4f), training %.1f s, %.1f samples/s; kept the "
                 "model %s (step %d); wrote %s, %s and %s", res["model_name"], task.name, res["metric"], res["score"], res["macro_f1"],
                 res["valid_score"], valid["macro_f1"], res["train_runtime_s"], res["samples_per_s"] or 0.0,
                 "at the end" if keep["chosen"] == "last" else "of the best validation score", keep["step"], out / "model",
                 out / "predictions", out / "results.json")
    dist.barrier()
    return res


def write_outputs(out: Path, s: Setup, model: torch.nn.Module, logits: dict, res: dict) -> None:
    """DIR/model and DIR/predictions, written beside and swapped in whole, then results.json (what says the run is
    done: a requeued job skips a run that has it); then the checkpoints go."""
    task, t = s.task, s.trainer
    final = out / FINAL
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    model_dir.write(final / "model", model, s.tokenizer, model_dir.spec(task, read_options(t.cfg.task), s.max_length), res)
    (final / "predictions").mkdir()
    for split in ("valid", "test"):
        atomic_write_lines(final / "predictions" / f"{split}.jsonl",
                           jsonl(records(task.kind, task.labels, task.splits[split], t.feats[split], logits[split])))
    for name in ("model", "predictions"):
        rundir.swap_in(final / name, out / name)
    atomic_write_json(out / "results.json", res)
    shutil.rmtree(final, ignore_errors=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # for resuming only; the run is done


def hyperparameters(model: str, task, cfg: FinetuneConfig, res: dict) -> dict:
    """What TensorBoard's HParams tab shows beside the scores: the settings that change them (unset ones left out)."""
    tr = cfg.train
    return {"model": model, "task": task.name, "dataset": task.dataset, "recipe": res["recipe"]["name"], "lr": tr.lr,
            "epochs": tr.epochs if tr.max_steps is None else None, "max_steps": tr.max_steps, "steps": res["steps"],
            "micro_batch_size": tr.micro_batch_size, "world_size": res["world_size"], "warmup_ratio": tr.warmup_ratio,
            "weight_decay": tr.weight_decay, "max_length": res["truncation"]["max_length"], "seed": tr.seed, "task_seed": cfg.task.seed,
            "train_examples": res["train_examples"], "precision": res["precision"], "keep": tr.keep,
            "teacher": cfg.teacher or cfg.teacher_predictions, "kd_alpha": cfg.kd.alpha if res["distillation"] else None,
            "kd_temperature": cfg.kd.temperature if res["distillation"] else None, "transfer_examples": res["transfer_examples"] or None}
