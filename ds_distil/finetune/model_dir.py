"""DIR/model: the finetuned classifier as a Hugging Face directory that transformers loads alone.

    config.json              the architecture with the task's labels (id2label, label2id)
    model.safetensors        the weights (fp32) of the model train.keep chose
    tokenizer files          the tokenizer, its model_max_length the max_length the model was finetuned with
    ds_distil_task.json      what `ds-distil predict` reads inputs by: the task, its kind, labels, columns, max_length
    README.md                the model card: task, data, scores with their intervals, baselines, training, warnings, use

`AutoModelForSequenceClassification.from_pretrained(DIR)` (sequence and pair tasks) or
`AutoModelForTokenClassification.from_pretrained(DIR)` (POS, NER) and `AutoTokenizer.from_pretrained(DIR)` load it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ds_distil import __version__
from ds_distil.core.io import atomic_write, atomic_write_json
from ds_distil.data.examples import Task
from ds_distil.data.readers import ReadOptions
from ds_distil.data.tasks import columns

SPEC = "ds_distil_task.json"
CARD = "README.md"
PIPELINE = {"token": "token-classification", "sequence": "text-classification", "pair": "text-classification"}


def spec(task: Task, read: ReadOptions, max_length: int) -> dict:
    """ds_distil_task.json: how the model's inputs are read (`ds-distil predict` reads files as training read them)."""
    text, pair, label = columns(task.name, read)
    return {"made_by": "ds-distil finetune", "ds_distil_version": __version__, "task": task.name, "kind": task.kind,
            "metric": task.metric, "labels": list(task.labels), "text_column": text, "text_pair_column": pair,
            "label_column": label, "id_column": read.id_column, "max_length": max_length, "dataset": task.dataset}


def write(path: Path, model, tokenizer, task_spec: dict, res: dict) -> Path:
    """The model directory at `path` (a new directory; the caller swaps it into place)."""
    path.mkdir(parents=True)
    model.save_pretrained(str(path))  # safetensors
    tokenizer.model_max_length = task_spec["max_length"]  # truncation=True in the user's own code cuts where training did
    tokenizer.save_pretrained(str(path))
    atomic_write_json(path / SPEC, task_spec)
    atomic_write(path / CARD, card(res, task_spec))
    return path


def _score(ev: dict, metric: str) -> str:
    lo, hi = ev.get("interval95", (None, None))
    interval = f"{lo:.4f} to {hi:.4f}" if lo is not None else ""
    accuracy = f" {ev['accuracy']:.4f} |" if metric != "accuracy" else ""
    return f"{ev['score']:.4f} |{accuracy} {ev['macro_f1']:.4f} | {interval}"


def _device(info: dict) -> str:
    """env_info.device_info() in words: the GPU, or the CPU and its cores."""
    return info["gpu"] if info.get("gpu") else f"{info.get('cpu', 'a CPU')} ({info.get('cpu_cores', '?')} cores)"


def _taught(kd: dict | None) -> list[str]:
    """The card's line on task distillation: what taught the model besides its labels."""
    if not kd or not kd.get("teacher"):
        return []
    t = kd["teacher"]
    transfer = f", and {kd['transfer_rows']:,} transfer rows it labelled ({t['transfer']['source']['setting']})" if kd["transfer_rows"] else ""
    return [f"Distilled on the task from {t['setting']} ({t['source']}): {kd['alpha']:g} * cross-entropy + {1 - kd['alpha']:g} * "
            f"T^2 * KL at T = {kd['temperature']:g}{transfer}."]


def card(res: dict, task_spec: dict) -> str:
    """README.md of the model directory, from the run's results (results.json's content)."""
    kind, metric, ev = task_spec["kind"], res["metric"], res["evaluation"]
    name = f"{res['model_name']}-{res['task']}-{res['dataset']}"
    front = {
        "language": ["tl"], "library_name": "transformers", "pipeline_tag": PIPELINE[kind], "tags": ["ds-distil", "finetuned", res["task"]],
        "model-index": [{"name": name, "results": [{
            "task": {"type": PIPELINE[kind], "name": res["task"]},
            "dataset": {"name": res["dataset"], "type": res["dataset"], "split": "test"},
            "metrics": [{"type": metric, "value": round(ev["test"]["score"], 4), "name": f"test {metric}"},
                        {"type": "f1", "value": round(ev["test"]["macro_f1"], 4), "name": "test macro-F1"}]}]}],
    }
    if res["data"].get("source") and "/" in str(res["data"]["source"]) and not Path(str(res["data"]["source"])).exists():
        front["datasets"] = [res["data"]["source"]]  # a hub dataset
    auto = "AutoModelForTokenClassification" if kind == "token" else "AutoModelForSequenceClassification"
    labels = ", ".join(f"`{lab}`" for lab in task_spec["labels"])
    splits = res["splits"]
    keep, tr = res["keep"], res["config"]["train"]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
        f"# {name}", "",
        f"`{res['model']}` ({res['model_name']}) finetuned with ds-distil on {res['task']} / {res['dataset']}: a "
        f"{'token' if kind == 'token' else 'pair' if kind == 'pair' else 'sequence'} classifier over {len(task_spec['labels'])} "
        f"labels ({labels}).", "",
        "## Scores", "",
        f"| split | rows | {metric} |{'' if metric == 'accuracy' else ' accuracy |'} macro-F1 | 95% interval of {metric} |",
        "|---|---:|---:|" + ("" if metric == "accuracy" else "---:|") + "---:|---|",
        *(f"| {s} | {ev[s]['examples']:,} | {_score(ev[s], metric)} |" for s in ("valid", "test")), "",
        "Baselines, scored the same way (test): " + "; ".join(
            f"{n} ({b['description']}) {b['test']['score']:.4f}" for n, b in res["baselines"].items()) + ".", "",
        f"The 95% interval: a bootstrap over the split's {'sentences' if kind == 'token' else 'rows'} (1,000 resamples).", "",
        "## Data", "",
        f"{res['data']['source']}: " + ", ".join(f"{s} {v['examples']:,} examples" for s, v in splits.items()) + "."]
    for split, f in (res["data"].get("files") or {}).items():
        if isinstance(f, dict) and "sha256" in f:
            lines.append(f"- {split}: `{Path(f['path']).name}`, sha256 `{f['sha256'][:16]}`, {f.get('rows', '?')} rows")
    if "dropped" in res["duplicates"]:
        lines.append(f"- task.dedup=drop: {res['duplicates']['dropped']}")
    trunc = res["truncation"]
    lines += [f"- max_length {trunc['max_length']} ({trunc['setting']}): " + ", ".join(
        f"{s} {t['truncated_share']:.1%} of examples cut" for s, t in trunc["splits"].items()), "",
        "## Training", "",
        f"{res['steps']:,} optimizer steps, micro batch {tr['micro_batch_size']} x {tr['grad_accum_steps']} accumulation x "
        f"{res['world_size']} rank(s), lr {tr['lr']:g} ({tr['schedule']}, warm-up {tr['warmup_ratio']:g}), weight decay "
        f"{tr['weight_decay']:g}, seed {res['seed']}, {res['precision']}; {res['train_runtime_s']:.0f} s of training on "
        f"{_device(res['device'])}.",
        f"Kept: the model {'at the end of training' if keep['chosen'] == 'last' else 'of the best validation score'} "
        f"(train.keep={keep['setting']}, step {keep['step']:,} of {res['steps']:,}).", *_taught(res.get("distillation")), ""]
    if res.get("warnings"):
        lines += ["## Warnings", "", *(f"- {w}" for w in res["warnings"]), ""]
    lines += ["## Use", "", "```python", f"from transformers import AutoTokenizer, {auto}", "",
              'tokenizer = AutoTokenizer.from_pretrained("PATH/model")', f'model = {auto}.from_pretrained("PATH/model")', "```", "",
              "or, on a file read as the training files were:", "",
              "```bash", "ds-distil predict --model PATH/model --input FILE --out predictions.jsonl", "```", "",
              f"Made by ds-distil {__version__}.", ""]
    return "\n".join(lines)
