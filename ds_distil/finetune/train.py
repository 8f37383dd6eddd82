"""`ds-distil finetune`: one finetuning path for every task (sequence, pair and token classification)
under DeepSpeed, as distillation runs: a single process, `deepspeed --num_gpus N`, or torchrun.

Writes DIR/results.json (test score, validation score, training runtime, throughput, device, seed,
resolved config; the data read, label distributions, per-class scores, confusion matrices, baselines
and warnings: see ds_distil/finetune/summary.py), TensorBoard logs and the resolved config. `train_runtime_s`
counts the training loop only (no set-up, no evaluation), as the paper's runtimes do.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ds_distil.core.config import save, to_dict
from ds_distil.core.env_info import device_info, versions
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write_json
from ds_distil.core.progress import Progress
from ds_distil.data import duplicates, sampling
from ds_distil.data.examples import Task
from ds_distil.data.readers import read_options
from ds_distil.data.tasks import default_data_dir, load_task
from ds_distil.finetune import lengths, summary
from ds_distil.finetune.scoring import evaluate
from ds_distil.model.info import display_name, loading_summary
from ds_distil.model.validate import check_max_length, max_positions
from ds_distil.runtime import engine as eng
from ds_distil.runtime.metrics import Metrics
from ds_distil.schema.finetune import FT_PRESETS, FinetuneConfig, TaskConfig

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ the model


def _tokenizer_for(model: str, cfg: TaskConfig):
    from ds_distil.data.tokenizer import load_tokenizer, probe

    if model in FT_PRESETS or _is_architecture_file(model):
        name = cfg.tokenizer or str(default_data_dir() / "mbert_tokenizer")
        tok = load_tokenizer(name)
        probe(tok, name)
        return tok
    path = Path(model)
    if path.is_dir() and not any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")):
        raise UserError(f"model directory {model} has no tokenizer files; save the tokenizer with the model "
                        "(tokenizer.save_pretrained(dir)) or export it with `ds-distil export`")
    tok = load_tokenizer(cfg.tokenizer or model)
    probe(tok, cfg.tokenizer or model)
    return tok


def _is_architecture_file(model: str) -> bool:
    return model.endswith(".json") and Path(model).is_file()


def build_model(model: str, task: Task, tokenizer):
    """A hub name or HF directory (pretrained encoder, new classifier head), or random weights: an
    architecture preset or a config.json file (any size: e.g. an exported student's, for its From Scratch row)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, RobertaConfig

    from ds_distil.model.build import PRESET_SIZES, bert_config

    auto = AutoModelForTokenClassification if task.kind == "token" else AutoModelForSequenceClassification
    labels = {"num_labels": len(task.labels), "id2label": dict(enumerate(task.labels)), "label2id": {l: i for i, l in enumerate(task.labels)}}
    if model == "tagalog-roberta":
        # RoBERTa-base's architecture (Tagalog-RoBERTa base); its BPE vocabulary is not reachable
        # offline, so the embedding table takes the tokenizer in use. Random weights: for speed.
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id, **labels)
        return auto.from_config(config)
    if model in PRESET_SIZES:
        config = bert_config(model, len(tokenizer), tokenizer.pad_token_id)
        config.update(labels)
        return auto.from_config(config)
    if _is_architecture_file(model):
        from transformers import AutoConfig

        spec = json.loads(Path(model).read_text())
        if "model_type" not in spec:
            raise UserError(f"{model} has no 'model_type'; pass a Hugging Face config.json (e.g. a model directory's)")
        if spec.get("vocab_size") != len(tokenizer):
            raise UserError(f"{model} has vocab_size {spec.get('vocab_size')} but the tokenizer has {len(tokenizer)} tokens; "
                            "set task.tokenizer to the tokenizer this architecture was made for")
        for k in ("architectures", "id2label", "label2id", "num_labels", "_name_or_path"):
            spec.pop(k, None)
        config = AutoConfig.for_model(**spec, **labels)
        return auto.from_config(config)
    try:
        net, info = auto.from_pretrained(model, output_loading_info=True, **labels)
    except Exception as e:  # OSError, ValueError, and safetensors' own error for a corrupt weights file
        raise UserError(f"cannot load model '{model}': {(str(e).splitlines() or [type(e).__name__])[0][:200]}; pass a local Hugging Face directory, "
                        f"a hub name, or an architecture preset ({', '.join(FT_PRESETS)})") from None
    line, incomplete = loading_summary(info, model)  # in place of transformers' key table (see ds_distil/core/quiet.py)
    (log.warning if incomplete else log.info)(line)
    return net


# ---------------------------------------------------------------------------------- featurising


def featurise(task: Task, split: str, tokenizer, max_length: int, limit: int | None = None) -> list[dict]:
    """Token ids and label ids; for token tasks the label sits on each word's first sub-word (-100 elsewhere)."""
    label_id = {l: i for i, l in enumerate(task.labels)}
    examples = task.splits[split][:limit] if limit else task.splits[split]
    feats = []
    if task.kind == "token":
        enc = tokenizer([e.text for e in examples], is_split_into_words=True, truncation=True, max_length=max_length)
        for i, e in enumerate(examples):
            words = enc.word_ids(i)
            labels, prev = [], None
            for w in words:
                labels.append(label_id[e.label[w]] if w is not None and w != prev else -100)
                prev = w
            feats.append({"input_ids": enc["input_ids"][i], "labels": labels, "index": i})
    else:
        pairs = [e.text_pair for e in examples] if task.kind == "pair" else None
        enc = tokenizer([e.text for e in examples], pairs, truncation=True, max_length=max_length)
        for i, e in enumerate(examples):
            feats.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i] if "token_type_ids" in enc else None,
                          "labels": label_id[e.label], "index": i})
    return feats


def collate(pad_id: int):
    def fn(items: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([it["index"] for it in items])}
        token_level = isinstance(items[0]["labels"], list)
        labels = torch.full((len(items), n), -100, dtype=torch.long) if token_level else torch.tensor([it["labels"] for it in items])
        types = torch.zeros((len(items), n), dtype=torch.long) if items[0].get("token_type_ids") is not None else None
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, :k] = torch.tensor(it["input_ids"])
            mask[i, :k] = 1
            if token_level:
                labels[i, :k] = torch.tensor(it["labels"])
            if types is not None:
                types[i, :k] = torch.tensor(it["token_type_ids"])
        out["labels"] = labels
        if types is not None:
            out["token_type_ids"] = types
        return out

    return fn


# --------------------------------------------------------------------------------------- run


def predict(engine, feats: list[dict], batch_size: int, pad_id: int, d: eng.Dist, desc: str = "evaluate") -> dict[int, list[int] | int]:
    """Predictions of every rank's share, gathered: {example index: class or per-token classes}.

    The rows go longest first (an out-of-memory batch shows at once), in batches of neighbours in length, each padded
    to its own longest row, so little of the work is padding; the model runs in inference mode, called directly (no
    engine hooks); rank r takes every world_size-th row of that order, so the ranks' shares are alike in length."""
    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))[d.rank::d.world_size]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    fn, model, local = collate(pad_id), engine.module, {}
    model.eval()
    bar = Progress(len(batches), desc, "batch", enabled=d.rank == 0, leave=False)
    with torch.inference_mode():
        for rows in batches:
            batch = fn([feats[i] for i in rows])
            index, _ = batch.pop("index"), batch.pop("labels")
            pred = model(**{k: v.to(d.device) for k, v in batch.items()}).logits.argmax(-1).tolist()
            if isinstance(pred[0], list):  # token classification: the row's real tokens
                pred = [p[:n] for p, n in zip(pred, batch["attention_mask"].sum(1).tolist())]
            local.update(zip(index.tolist(), pred))
            bar.update(1)
    bar.close()
    model.train()
    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, local)
    return {k: v for part in gathered for k, v in part.items()}


def split_scalars(split: str, ev: dict) -> dict[str, float]:
    """TensorBoard tags of one split's evaluation: SPLIT/score (the task metric), SPLIT/accuracy, SPLIT/macro_f1."""
    return {f"{split}/{k}": ev[k] for k in ("score", "accuracy", "macro_f1")}


def hyperparameters(model: str, task: Task, cfg: FinetuneConfig, res: dict) -> dict:
    """What TensorBoard's HParams tab shows beside the scores: the settings that change them."""
    tr = cfg.train
    return {"model": model, "task": task.name, "dataset": task.dataset, "recipe": res["recipe"]["name"], "lr": tr.lr,
            "epochs": tr.epochs, "max_steps": tr.max_steps, "steps": res["steps"], "micro_batch_size": tr.micro_batch_size,
            "world_size": res["world_size"], "warmup_ratio": tr.warmup_ratio, "weight_decay": tr.weight_decay,
            "max_length": res["truncation"]["max_length"], "seed": tr.seed, "task_seed": cfg.task.seed,
            "train_examples": res["train_examples"], "precision": res["precision"]}


def run_finetune(model: str, task_name: str, out: str | Path, cfg: FinetuneConfig, overwrite: bool = False,
                 recipe: dict | None = None) -> dict:
    """Finetune into --out, claimed first (ds_distil.core.rundir): the results appear there whole or not at all."""
    from ds_distil.core import rundir

    d = eng.init_distributed()
    inputs = [p for p in (model, cfg.task.data_dir or default_data_dir(), cfg.task.tokenizer) if p and Path(p).exists()]
    rd = rundir.claim_on_rank0(d.rank, lambda: rundir.claim(out, "finetune", overwrite=overwrite, inputs=inputs))
    try:
        result = _finetune(model, task_name, rd.path, cfg, recipe or {"name": "none", "choice": "given config"})
        rundir.commit_on_rank0(rd, d.rank)
        return result
    except BaseException:
        if d.rank == 0:
            rd.abort()  # e.g. stopped by a signal: nothing half-written stays, an earlier result is untouched
        raise
    finally:
        if d.rank == 0:
            rd.release()


def recipe_line(recipe: dict) -> str:
    """What the recipe beneath the user's settings set, and which of its keys the user's own settings replaced."""
    if recipe["name"] == "none":
        missing = f" ({recipe['missing']} not found)" if "missing" in recipe else ""
        return f"recipe: none{missing}: the defaults of `ds-distil finetune --help` beneath your settings"
    applied = " ".join(f"{k}={v}" for k, v in recipe["applied"].items()) or "nothing"
    yours = "; yours kept: " + " ".join(f"{k}={v}" for k, v in recipe["yours"].items()) if recipe["yours"] else ""
    return (f"recipe: {recipe['name']} ({recipe['file']}), because {recipe['why']}: {applied}{yours} "
            "(recipe=blank|pretrained|none chooses another)")


def _finetune(model: str, task_name: str, out: Path, cfg: FinetuneConfig, recipe: dict) -> dict:
    out = Path(out)
    tc = cfg.task
    task = load_task(task_name, tc.data_dir, tc.hub, tc.seed, read_options(tc), tc.dataset_name)  # bad data fails before set-up
    if tc.dedup == "drop":
        task = duplicates.drop(task)
    task = sampling.sample_train(task, tc.max_train_examples, tc.seed)
    d = eng.init_distributed()
    tokenizer = _tokenizer_for(model, tc)
    torch.manual_seed(cfg.train.seed)
    net = build_model(model, task, tokenizer)
    limit = max_positions(net)
    full = {s: lengths.token_lengths(task, s, tokenizer) for s in ("train", "valid", "test")}
    max_length = lengths.auto_length(full["train"], limit) if tc.max_length == "auto" else tc.max_length
    check_max_length(max_length, net, f"model '{model}'")
    feats = {s: featurise(task, s, tokenizer, max_length) for s in task.splits}
    train = feats["train"]
    data = summary.describe_data(task)
    data["truncation"] = lengths.report(full, max_length, tc.max_length, limit)
    data_warnings = summary.data_warnings(data)
    steps_per_epoch = math.ceil(len(train) / (d.world_size * cfg.train.micro_batch_size))
    num_steps = eng.total_steps(cfg.train, steps_per_epoch)
    ds_path = eng.resolve_ds_json(cfg.deepspeed.config, d.device)
    ds_config = eng.ds_config_from(cfg.train, ds_path, d.world_size, num_steps, fused=eng.fused_adamw("auto", d.device),
                                   stage=cfg.deepspeed.zero_stage)
    engine = eng.initialize(net, ds_config, cfg.train.weight_decay)
    torch.manual_seed(cfg.train.seed + d.rank)
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save(cfg, out / "finetune_config.yaml")
        log.info("finetune %s on %s (%s, %d labels): %s train / %s valid / %s test examples; %d rank(s), %s, %s, ZeRO stage %d; "
                 "%d steps", model, task.name, task.kind, len(task.labels), f"{len(train):,}", f"{len(feats['valid']):,}",
                 f"{len(feats['test']):,}", d.world_size, d.device, eng.precision(ds_config),
                 ds_config["zero_optimization"]["stage"], num_steps)
        log.info("%s", recipe_line(recipe))
        for line in summary.data_lines({"task": task.name, **data}):
            log.info("%s", line)
        for warning in data_warnings:
            log.warning("%s", warning)
    dist.barrier()

    sampler = DistributedSampler(train, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(train, batch_size=cfg.train.micro_batch_size, sampler=sampler, collate_fn=collate(tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    metrics = Metrics(out, d.rank == 0, True, num_steps, 0, desc="finetune")
    step, micro, samples, epoch = 0, 0, 0, 0
    loss_sum = torch.zeros((), device=d.device)
    eval_s = 0.0  # time spent on eval_every_steps' evaluations: not training time

    def validate(at: int) -> None:
        """Score the validation split mid-training (eval_every_steps): console, TensorBoard valid/*, metrics.jsonl."""
        nonlocal eval_s
        t = time.perf_counter()
        preds = predict(engine, feats["valid"], cfg.eval_batch_size, tokenizer.pad_token_id, d, "evaluate valid")
        if d.rank == 0:
            ev = evaluate(task, preds, feats["valid"])
            metrics.scalars(at, split_scalars("valid", ev))
            log.info("step %d/%d: valid %s %.4f | macro-F1 %.4f", at, num_steps, task.metric, ev["score"], ev["macro_f1"])
        eval_s += time.perf_counter() - t

    t0 = time.perf_counter()
    while step < num_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch.pop("index")
            batch = {k: v.to(d.device) for k, v in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            loss_sum += loss.detach()
            samples += batch["input_ids"].shape[0]
            micro += 1
            if boundary:
                step += 1
                metrics.step(1)
                if step % cfg.log_every_steps == 0 or step == num_steps:
                    dist.all_reduce(loss_sum)  # every rank's micro batches: the global batch's mean, whatever the ranks
                    mean = loss_sum.item() / (micro * d.world_size)
                    metrics.scalars(step, {"loss/train": mean, "lr": engine.get_lr()[0]})
                    metrics.step(0, loss=f"{mean:.4f}")  # the bar shows the last logged loss: no device sync per step
                    loss_sum.zero_()
                    micro = 0
                if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and step < num_steps:
                    validate(step)
                if step == num_steps:
                    break
        epoch += 1
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    runtime = time.perf_counter() - t0 - eval_s
    total_samples = torch.tensor([float(samples)], device=d.device)
    dist.all_reduce(total_samples)

    preds = {split: predict(engine, feats[split], cfg.eval_batch_size, tokenizer.pad_token_id, d, f"evaluate {split}")
             for split in ("valid", "test")}
    found = summary.evaluate_run(task, preds, feats) if d.rank == 0 else {}  # scored on rank 0; other ranks return None scores
    if found:
        found["warnings"] = data_warnings + found["warnings"]
    test, valid = found.get("evaluation", {}).get("test", {}), found.get("evaluation", {}).get("valid", {})
    out_dict = {
        "model": model, "model_name": display_name(model, cfg.model_name), "task": task.name,
        "metric": "f1" if task.metric == "f1" else "accuracy", "score": test.get("score"), "valid_score": valid.get("score"),
        "macro_f1": test.get("macro_f1"), **data, **found, "train_runtime_s": runtime,
        "samples_per_s": total_samples.item() / runtime, "train_examples": len(train), "steps": num_steps,
        "world_size": d.world_size, "precision": eng.precision(ds_config), "zero_stage": ds_config["zero_optimization"]["stage"],
        "device": device_info(), "seed": cfg.train.seed, "recipe": recipe,
        "versions": versions(), "config": to_dict(cfg),
    }
    if d.rank == 0:
        # TensorBoard: the final validation point of the curve, the test scores, and the run's hyper-parameters with them
        metrics.scalars(num_steps, {**split_scalars("valid", valid), **split_scalars("test", test)})
        metrics.hparams(num_steps, hyperparameters(model, task, cfg, out_dict), {
            "hparam/valid_score": valid["score"], "hparam/test_score": test["score"], "hparam/test_macro_f1": test["macro_f1"]})
    metrics.close()
    if d.rank == 0:
        atomic_write_json(out / "results.json", out_dict)
        log.info("%s on %s: test %s %.4f | macro-F1 %.4f (valid %.4f | macro-F1 %.4f), training %.1f s, %.1f samples/s", model,
                 task.name, out_dict["metric"], out_dict["score"], out_dict["macro_f1"], out_dict["valid_score"], valid["macro_f1"],
                 runtime, out_dict["samples_per_s"])
        for warning in found["warnings"]:
            log.warning("%s", warning)
    dist.barrier()
    return out_dict
