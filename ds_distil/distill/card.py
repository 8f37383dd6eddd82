"""The model card: README.md in every exported student directory, as Hugging Face users expect it.

YAML front matter after the Hub's model-card conventions (language, license, library_name,
pipeline_tag, tags, base_model for a hub teacher, datasets for a hub corpus, model-index with the
validation figures), then prose: what it was distilled from, the student's architecture and size, the
corpus and its token count, the training length, loss weights and precision, the final validation
figures, the command that made it, how to load it. Everything is read from what the run recorded:
the checkpoint's trainer state (step, tokens, resolved config, the objective's declaration, last validation), environment.json
(versions, device, command line), ds_config.json, the shards' manifest and the exported model itself.
Nothing is typed twice.

`ds-distil report` adds finetuning results (`add_results`): they are kept beside the card in
ds_distil_finetuning.json (a later report replaces the rows of the same task and dataset, others stay),
and the card's finetuning section and model-index entries are rewritten from it. Only a card this
module wrote is ever rewritten.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from pathlib import Path

import yaml

from ds_distil.core.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CARD = "README.md"
RESULTS = "ds_distil_finetuning.json"
FT_START, FT_END = "<!-- ds-distil:finetuning -->", "<!-- /ds-distil:finetuning -->"
REPORT_SOURCE = "ds-distil report"
LICENSE_NOTE = "  # placeholder: set the license before publishing (the teacher's and the corpus's terms apply)"
TOKEN_TASKS = ("ner", "pos")


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hugging Face hub id (not a local path), else None."""
    if not name or name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1:
        return None
    return name


def _parameters(model_dir: Path) -> tuple[int, int]:
    """(parameters, of which embeddings) from the safetensors header: no tensor is loaded."""
    from safetensors import safe_open

    total = emb = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
            emb += n if ".embeddings." in key else 0
    return total, emb


def model_name(run_dir: Path, config: dict) -> str:
    """The name report tables show for this export (ds_distil/model/info.py named exports so before cards)."""
    from ds_distil.model.info import _size

    return f"{Path(run_dir).resolve().name} ({_size(config)})"


# -------------------------------------------------------------------------------- what the run recorded


def gather(model_dir: Path, run_dir: Path, tag: str) -> dict:
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    state = _json(run_dir / "checkpoints" / tag / "trainer_state.json") or {}
    cfg = state.get("config") or {}
    env = _json(run_dir / "environment.json") or {}

    def recorded(path: str | None, name: str) -> dict | None:
        """A JSON file the run's config points to: relative paths from here, or from where the run was started."""
        if not path:
            return None
        for base in (Path.cwd(), Path((env.get("started_by") or {}).get("cwd") or ".")):
            found = _json(base / path / name)
            if found is not None:
                return found
        return None

    manifest = recorded(cfg.get("data", {}).get("shards"), "manifest.json")
    ds_config = _json(run_dir / "ds_config.json")
    vocab_report = recorded(cfg.get("student", {}).get("vocab"), "vocab_report.json")
    config = _json(model_dir / "config.json") or {}
    params, emb = _parameters(model_dir)
    from ds_distil.runtime.engine import precision

    return {"run_dir": str(run_dir), "tag": tag, "trainer": state.get("trainer") or {}, "data_state": state.get("data") or {},
            "config": cfg, "env": env, "manifest": manifest,
            "precision": precision(ds_config) if ds_config else None,
            "zero_stage": (ds_config or {}).get("zero_optimization", {}).get("stage"), "vocab_report": vocab_report, "model_config": config,
            "parameters": params, "embedding_parameters": emb, "name": model_name(run_dir, config),
            "objective": state.get("objective") or _objective_of(cfg)}


def _objective_of(cfg: dict) -> dict | None:
    """The declaration of the objective a run's config selects: for checkpoints written before they recorded it."""
    from ds_distil.core.config import ConfigError, from_dict
    from ds_distil.distill import objectives
    from ds_distil.schema.distill import DistillConfig

    try:
        return objectives.build(from_dict(DistillConfig, cfg)).declaration()
    except ConfigError:
        return None


def _validation_metrics(objective: dict | None, val: dict) -> list:
    """The validation figures the card shows, in order, as evaluate's Metric records: the perplexity, the objective's
    terms, the top-1 accuracy and agreement; only those the run recorded."""
    from ds_distil.distill.evaluate import ACCURACY, AGREEMENT, PERPLEXITY
    from ds_distil.distill.objectives.base import terms_of

    terms = [t.metric for t in terms_of(objective)] if objective else []
    return [m for m in (PERPLEXITY, *terms, ACCURACY, AGREEMENT) if m.key in val]


def _teacher(cfg: dict) -> tuple[str, str | None]:
    """(prose, hub id for base_model or None)."""
    t, s = cfg.get("teacher", {}), cfg.get("student", {})
    if not t.get("enabled", True):
        if s.get("pretrained"):
            return f"none: masked language modelling only, continuing from `{s['pretrained']}`", _hub_id(s["pretrained"])
        return "none: masked language modelling only, from scratch", None
    if t.get("cache"):  # the teacher the cache recorded, not run during training
        try:
            cached = json.loads((Path(t["cache"]) / "manifest.json").read_text())
            prose, hub = _teacher({"teacher": cached["teacher"]["source"]})
            k, method = cached["k"], cached["made_for"].get("method", "sampled")
        except (OSError, ValueError, KeyError, TypeError):
            prose, hub, k, method = "an unknown teacher", None, "?", "sampled"
        what = "sampled targets" if method == "sampled" else "most probable tokens (top-k, renormalised)"
        return (f"{prose.removesuffix(', frozen')}, through its teacher cache `{t['cache']}` ({k} {what} per masked "
                "token; the teacher did not run during training)"), hub
    if t.get("pretrained"):
        from ds_distil.model.info import _card_name

        local = Path(t["pretrained"])
        named = _card_name(local) if local.is_dir() else None
        return f"`{t['pretrained']}`" + (f" ({named})" if named else "") + ", frozen", _hub_id(t["pretrained"])
    if t.get("config"):
        return f"randomly initialised from `{t['config']}` (no pretrained weights), frozen", None
    return f"the `{t.get('preset')}` preset, randomly initialised (no pretrained weights: a test or smoke teacher), frozen", None


def _teacher_dtype(t: dict, env: dict) -> str:
    choice = t.get("dtype", "auto")
    if choice != "auto":
        return choice
    resolved = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(env.get("teacher_dtype"))
    return f"{resolved} (auto)" if resolved else "auto (bf16 where the device has it natively, else fp16 on a GPU, fp32 on a CPU)"


def _corpus(manifest: dict | None, shards: str) -> tuple[str, list[str]]:
    """(prose name, hub dataset ids)."""
    if manifest is None:
        return f"shards `{shards}` (their manifest.json is no longer there)", []
    src = manifest.get("source", {})
    if src.get("hf_dataset"):
        conf = f", configuration `{src['hf_config']}`" if src.get("hf_config") else ""
        return f"`{src['hf_dataset']}`{conf}, split `{src.get('hf_split', 'train')}`", [src["hf_dataset"]]
    files = [Path(f["path"]).name for f in src.get("files", [])]
    return ("local text: " + ", ".join(f"`{f}`" for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")), []


# -------------------------------------------------------------------------------------------- rendering


def _front_matter(meta: dict) -> str:
    text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return "---\n" + text.replace("license: unknown\n", "license: unknown" + LICENSE_NOTE + "\n", 1) + "---\n"


def _fmt(value: float, pct: bool) -> str:
    return f"{value:.2%}" if pct else f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"


def _val_index_entry(val: dict, shown: list, corpus: str, datasets: list[str], mlm_only: bool) -> dict:
    metrics = [{"type": m.index_type, "value": round(float(val[m.key]), 6), "name": m.description} for m in shown]
    return {"task": {"type": "fill-mask", "name": "Masked language modelling" + ("" if mlm_only else " (distillation)")},
            "dataset": {"name": f"{corpus.replace('`', '')} (held-out validation split)", "type": datasets[0] if datasets else "text",
                        "split": "validation"},
            "metrics": metrics}


def render(info: dict) -> str:
    cfg, tr, mc, env = info["config"], info["trainer"], info["model_config"], info["env"]
    t, s, train = cfg.get("teacher", {}), cfg.get("student", {}), cfg.get("train", {})
    objective = info["objective"]
    mlm_only = not objective["teacher"] if objective else not t.get("enabled", True)
    teacher_text, base_model = _teacher(cfg)
    manifest = info["manifest"]
    corpus, datasets = _corpus(manifest, cfg.get("data", {}).get("shards", "?"))
    val = tr.get("val") or {}
    shown = _validation_metrics(objective, val)
    name = info["name"]

    meta: dict = {"language": ["tl"], "license": "unknown", "library_name": "transformers", "pipeline_tag": "fill-mask",
                  "tags": ["ds-distil", "masked-lm", "bert", "tagalog"] + ([] if mlm_only else ["distillation", "knowledge-distillation"])}
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = datasets
    meta["model_name"] = name
    if val:  # the Hub's model-index wants results; without validation figures there are none yet
        meta["model-index"] = [{"name": name, "results": [_val_index_entry(val, shown, corpus, datasets, mlm_only)]}]

    layers, hidden = mc.get("num_hidden_layers"), mc.get("hidden_size")
    world = (info["data_state"].get("layout") or {}).get("world_size") or env.get("world_size") or 1
    global_batch = train.get("micro_batch_size", 0) * train.get("grad_accum_steps", 1) * world
    what = ("trained with masked language modelling only" if mlm_only else
            f"distilled from {teacher_text.removesuffix(', frozen')}")
    lines = [f"# {name}", "",
             f"A {layers}-layer, {hidden}-hidden BERT for Tagalog, {what}, made with "
             "ds-distil (DeepSpeed knowledge distillation, after Cruz & Aji, *Extracting General-use "
             "Transformers for Low-resource Languages via Knowledge Distillation*). This card was written by `ds-distil export` "
             "from what the run recorded.", ""]

    # -- model
    vocab = mc.get("vocab_size")
    vr = info["vocab_report"]
    vocab_text = (f"{vocab:,} tokens: a target-language vocabulary (`{s.get('vocab')}`, {vr['kept']:,} of the original "
                  f"{vr['original']:,} tokens, covering {vr['train_coverage']:.2%} of the training tokens)" if vr else
                  f"{vocab:,} tokens (the teacher's tokenizer, `{(manifest or {}).get('tokenizer', {}).get('name', '?')}`)")
    lines += ["## Model", "", "| | |", "|---|---|",
              f"| architecture | {'pre-LN BERT' if mc.get('model_type') == 'megatron-bert' else 'BERT'} "
              f"(`{(mc.get('architectures') or ['BertForMaskedLM'])[0]}`): {layers} layers, {hidden} hidden, {mc.get('intermediate_size')} FFN, "
              f"{mc.get('num_attention_heads')} heads, {mc.get('max_position_embeddings')} positions |",
              f"| parameters | {info['parameters'] / 1e6:.1f}M, of which {info['embedding_parameters'] / 1e6:.1f}M embeddings |",
              f"| vocabulary | {vocab_text} |",
              f"| teacher | {teacher_text} |",
              f"| student start | {'`' + s['pretrained'] + '`' if s.get('pretrained') else 'random weights'}; embeddings "
              f"{s.get('embeddings', 'random')}{' (frozen)' if s.get('freeze_embeddings') else ''} |", ""]

    # -- data
    lines += ["## Training data", ""]
    if manifest:
        sp, docs = manifest["splits"], manifest.get("documents", {})
        pc = manifest.get("config", {})
        lines += [f"- corpus: {corpus}",
                  f"- tokenized with `{manifest['tokenizer']['name']}` into samples of {manifest['seq_len']} tokens (packed documents)",
                  f"- training split: {sp['train']['tokens']:,} tokens in {sp['train']['samples']:,} samples"
                  + (f" from {docs['train_documents']:,} documents" if "train_documents" in docs else "")
                  + (f" ({pc['fraction']:.0%} of the training documents kept)" if pc.get("fraction", 1.0) < 1.0 else ""),
                  f"- held-out validation split: {sp['val']['tokens']:,} tokens in {sp['val']['samples']:,} samples"
                  + (f" from {docs['val_documents']:,} documents" if "val_documents" in docs else "")
                  + f" ({pc.get('val_fraction', 0):.1%} of the documents, chosen before any training-data fraction)", ""]
    else:
        lines += [f"- corpus: {corpus}", ""]

    # -- training
    train_samples = (manifest or {}).get("splits", {}).get("train", {}).get("samples")
    epochs = f" ({tr['samples'] / train_samples:.2f} epochs)" if train_samples and tr.get("samples") else ""
    loss_text = (f"{objective['formula']} (objective `{objective['name']}`)" if objective else "? (not recorded)")
    dev = env.get("device") or {}
    device = dev.get("gpu") or (f"CPU ({dev.get('cpu')})" if dev.get("cpu") else "?")
    vers = env.get("versions") or {}
    zero = f", ZeRO stage {info['zero_stage']}" if info.get("zero_stage") is not None else ""
    lines += ["## Training", "", "| | |", "|---|---|",
              f"| steps | {tr.get('step', '?'):,} optimizer steps{epochs}, checkpoint `{info['tag']}` |" if isinstance(tr.get("step"), int)
              else f"| steps | ? (checkpoint `{info['tag']}`) |",
              f"| tokens seen | {tr.get('tokens', 0):,} ({tr.get('samples', 0):,} samples) |",
              f"| batch | {train.get('micro_batch_size')} per rank x {train.get('grad_accum_steps', 1)} accumulation x {world} "
              f"rank(s) = {global_batch} samples per step |",
              f"| loss | {loss_text} |",
              f"| optimizer | AdamW, peak lr {train.get('lr')}, {train.get('schedule', 'linear')} decay after "
              f"{train.get('warmup_ratio', 0):.0%} warm-up, weight decay {train.get('weight_decay')}, clipping {train.get('grad_clip')} |",
              f"| precision | student {info['precision'] or '?'} (DeepSpeed{zero}); teacher {_teacher_dtype(t, info['env']) if not mlm_only else '-'} |",
              f"| hardware | {device} x {world} |",
              f"| software | ds-distil {vers.get('ds-distil')} (git {vers.get('git_commit')}), torch {vers.get('torch')}, "
              f"deepspeed {vers.get('deepspeed')}, transformers {vers.get('transformers')} |", ""]

    # -- validation
    lines += ["## Validation", ""]
    if val:
        at = f"at step {val['step']:,}" + (" (the exported step)" if val.get("step") == tr.get("step") else
                                            f" (the last evaluation before the exported step {tr.get('step')})")
        lines += [f"On {int(val.get('val/samples', 0)):,} samples of the held-out split ({int(val.get('val/masked_tokens', 0)):,} masked "
                  f"tokens, the same masks in every run over these shards), {at}:", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {m.description} | {_fmt(float(val[m.key]), m.percent)} |" for m in shown]
        lines += [""]
    else:
        lines += ["No validation figures: the shards have no validation split (prepared with `--val-fraction 0`), or the "
                  "run ended before its first evaluation.", ""]

    # -- finetuning (report fills it)
    lines += ["## Finetuning results", "", FT_START,
              "None yet: `ds-distil finetune --model THIS_DIRECTORY ...` then `ds-distil report` adds them here.", FT_END, ""]

    # -- provenance, usage
    started = env.get("started_by") or {}
    how = [f"```bash\n{started['command']}\n```" if started.get("command") else "(the command line was not recorded)"]
    if started.get("launcher") or world > 1:
        how.append(f"on {world} rank(s)" + (f", started by {started['launcher']}" if started.get("launcher") else "") + ".")
    lines += ["## How it was made", "", *how, "",
              f"Run directory `{info['run_dir']}` (resolved config in `run_config.yaml`, curves in `metrics.jsonl` and "
              f"`tensorboard/`), checkpoint `{info['tag']}`.", "",
              "## Usage", "", "```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
              "", 'model = AutoModelForMaskedLM.from_pretrained("THIS_DIRECTORY")',
              'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")',
              'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)', "```", "",
              "## License and limitations", "",
              "The license in the metadata is a placeholder: set it before publishing. The teacher's license and the "
              "corpus's terms apply to this model. A student distilled on web text inherits its biases and the teacher's.", ""]
    return _front_matter(meta) + "\n" + "\n".join(lines)


def write_card(model_dir: str | Path, run_dir: str | Path, tag: str) -> Path:
    """Write model_dir/README.md for the export of checkpoint `tag` of `run_dir`."""
    model_dir = Path(model_dir)
    text = render(gather(model_dir, Path(run_dir), tag))
    return atomic_write(model_dir / CARD, text)


# -------------------------------------------------------------------------------- finetuning results


def split_card(text: str) -> tuple[dict, str]:
    """(front matter as a dict, the body); ValueError when the card has no YAML front matter."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        raise ValueError("no YAML front matter")
    meta = yaml.safe_load(m.group(1)) or {}
    if not isinstance(meta, dict):
        raise ValueError("the front matter is not a mapping")
    return meta, text[m.end():]


def is_ours(model_dir: Path) -> bool:
    try:
        meta, body = split_card((Path(model_dir) / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return "ds-distil" in (meta.get("tags") or []) and FT_START in body and FT_END in body


def _pm(s: dict | None, pct: bool) -> str:
    if not s:
        return "-"
    mean, std = (s["mean"] * 100, s["std"] * 100) if pct else (s["mean"], s["std"])
    return f"{mean:.2f} ± {std:.2f}" if s.get("n", 1) > 1 else f"{mean:.2f}"


def add_results(model_dir: str | Path, rows: list[dict], source: str | None = None) -> bool:
    """Add finetuning rows to a card `write_card` wrote; False (and nothing written) for any other README.

    A row: task, dataset, metric ("accuracy" or "f1"), score / macro_f1 / runtime_s as {"mean", "std", "n"}
    (fractions for scores), seeds. Rows of a task and dataset already on the card are replaced."""
    model_dir = Path(model_dir)
    if not is_ours(model_dir):
        return False
    kept = {(r["task"], r["dataset"]): r for r in (_json(model_dir / RESULTS) or {}).get("rows", [])}
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        kept[(r["task"], r["dataset"])] = {**{k: r.get(k) for k in ("task", "dataset", "metric", "score", "macro_f1", "runtime_s", "seeds")},
                                           "source": source, "added": stamp}
    ordered = [kept[k] for k in sorted(kept)]
    atomic_write_json(model_dir / RESULTS, {"rows": ordered})

    meta, body = split_card((model_dir / CARD).read_text(encoding="utf-8"))
    index = meta.get("model-index") or [{"name": meta.get("model_name", model_dir.name), "results": []}]
    results = [e for e in index[0].get("results", []) if (e.get("source") or {}).get("name") != REPORT_SOURCE]
    for r in ordered:
        n = (r["score"] or {}).get("n", 1)
        results.append({"task": {"type": "token-classification" if r["task"] in TOKEN_TASKS else "text-classification", "name": r["task"]},
                        "dataset": {"name": r["dataset"], "type": r["dataset"], "split": "test"},
                        "metrics": [{"type": r["metric"], "value": round(r["score"]["mean"], 6),
                                     "name": f"test {r['metric']}, mean of {n} seed(s)"}],
                        "source": {"name": REPORT_SOURCE}})
    index[0]["results"] = results
    meta["model-index"] = index
    table = ["| task | dataset | test metric | test score (%) | macro-F1 (%) | seeds | train runtime (s) | from |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for r in ordered:
        table.append(f"| {r['task']} | {r['dataset']} | {r['metric']} | {_pm(r['score'], True)} | {_pm(r['macro_f1'], True)} | "
                     f"{', '.join(map(str, r.get('seeds') or []))} | {_pm(r['runtime_s'], False)} | {r.get('source') or '-'} |")
    note = "Mean ± standard deviation over seeds, as `ds-distil report` computed them (ds_distil_finetuning.json keeps the rows)."
    start, end = body.index(FT_START) + len(FT_START), body.index(FT_END)
    body = body[:start] + "\n" + "\n".join(table) + "\n\n" + note + "\n" + body[end:]
    text = _front_matter(meta) + body
    atomic_write(model_dir / CARD, text)
    return True
