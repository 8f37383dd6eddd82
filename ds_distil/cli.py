"""`ds-distil <subcommand>`: thin wrappers over library functions.

Flags of a subcommand are generated from its config dataclass (`ds_distil.core.config`), so the help
text, the types and the YAML keys have one source. Errors the user can fix are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
import warnings
from pathlib import Path

from ds_distil import __version__
from ds_distil.core.config import from_dict, load_dict, parse_value
from ds_distil.core.errors import UserError
from ds_distil.schema.distill import DataConfig
from ds_distil.schema.prepare import PrepareConfig

log = logging.getLogger("ds_distil")


def setup_logging(verbose: bool = False) -> None:
    from ds_distil.core import quiet

    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("datasets", "urllib3", "httpx", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torch 2.13 deprecates collectives DeepSpeed's ZeRO code still calls: harmless, and printed per call site
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*deprecated", category=FutureWarning)
    quiet.configure(verbose)  # the rest of the third-party noise, unless --verbose


# ----------------------------------------------------------------- dataclass -> argparse -> dataclass


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of `cls`; values are parsed as YAML scalars and type-checked by config.from_dict."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (None if f.default_factory is dataclasses.MISSING else f.default_factory())
        help_text = f.metadata.get("help", "") + ("" if default in (None, []) else f" (default: {default})")
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(hints[f.name]) is list:
            parser.add_argument(flag, dest=f.name, nargs="+", metavar="VALUE", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--config", action="append", default=[], metavar="YAML", help="YAML file(s) with these keys; flags win")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more settings, e.g. seq_len=256")


def config_from_args(args: argparse.Namespace, cls: type):
    data = load_dict(args.config, args.overrides)
    for f in dataclasses.fields(cls):
        if f.name in vars(args):
            value = getattr(args, f.name)
            data[f.name] = value if isinstance(value, (list, bool)) else parse_value(value)
    return from_dict(cls, data)


# ------------------------------------------------------------------------------------- commands


def cmd_prepare(args: argparse.Namespace) -> int:
    """Tokenize a corpus into packed WebDataset shards with a manifest."""
    from ds_distil.data.shards import prepare

    cfg = config_from_args(args, PrepareConfig)
    manifest = prepare(cfg)
    for split, s in manifest["splits"].items():
        print(f"{split}: {s['samples']:,} samples of {manifest['seq_len']} tokens, {s['tokens']:,} tokens, "
              f"{len(s['shards'])} shards, {s['bytes'] / 2**20:.1f} MiB")
    print(f"documents: {json.dumps(manifest['documents'])}")
    print(f"wrote {cfg.out}/manifest.json")
    return 0


def cmd_vocab(args: argparse.Namespace) -> int:
    """Choose a target-language vocabulary from prepared shards (kept tokens, tokenizer, id map, report)."""
    from ds_distil.data.vocab import build_vocab
    from ds_distil.schema.vocab import VocabConfig

    cfg = config_from_args(args, VocabConfig)
    r = build_vocab(cfg)
    b = r["breakdown"]
    print(f"kept {r['kept']:,} of {r['original']:,} tokens ({r['kept_fraction']:.1%}): {b['special']} special, "
          f"{b['single_chars']:,} single characters and ## forms, {b['corpus']:,} more from the corpus ({r['rule']})")
    print(f"training tokens covered: {r['train_coverage']:.4%} of {r['train_tokens']:,} ({r['train_distinct_ids']:,} distinct ids)"
          + (f"; validation: {r['val_coverage']:.4%}" if "val_coverage" in r else ""))
    for name, st in r["sets"].items():
        print(f"  {name}: [UNK] per word {st['full_unk_per_word']:.4f} -> {st['trimmed_unk_per_word']:.4f}, tokens/word "
              f"{st['full_tokens_per_word']:.3f} -> {st['trimmed_tokens_per_word']:.3f}, full-vocabulary tokens not kept "
              f"{st['full_tokens_not_kept']:.3%}")
    print(f"wrote {cfg.out} (AutoTokenizer.from_pretrained loads it; distil into it with student.vocab={cfg.out})")
    return 0


def cmd_trim(args: argparse.Namespace) -> int:
    """Trim an existing model (a Hugging Face directory with its tokenizer) to a target-language vocabulary."""
    from ds_distil.model.trim import trim_model

    path = trim_model(args.model, args.vocab, args.out, overwrite=args.overwrite)
    print(f"wrote {path} (AutoModelForMaskedLM.from_pretrained loads it)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Stream a few batches from prepared shards and show what a training rank would see."""
    from ds_distil.data.manifest import load_manifest
    from ds_distil.data.stream import MLMStream
    from ds_distil.data.tokenizer import load_tokenizer

    manifest = load_manifest(args.shards)
    data_cfg = from_dict(DataConfig, {**load_dict(args.config, args.overrides).get("data", {}), "shards": args.shards})
    tokenizer = load_tokenizer(args.tokenizer or str(manifest.tokenizer_dir))
    stream = MLMStream(manifest, data_cfg, batch_size=args.batch_size, split=args.split, tokenizer=tokenizer)
    t = manifest.tokenizer
    print(f"shards: {args.shards} | split {args.split}: {stream.n_samples:,} samples x {manifest.seq_len} tokens in "
          f"{len(stream.shards)} shards | tokenizer {t['name']} (vocab {t['vocab_size']:,}, sha256 {t['vocab_sha256'][:12]})")
    print(f"rank {stream.rank}/{stream.world_size}, {stream.workers} worker(s), micro batch {args.batch_size}: "
          f"{stream.steps_per_epoch:,} steps per epoch")
    for i, batch in enumerate(stream.epoch_batches()):
        if i == args.batches:
            break
        real = batch["attention_mask"].sum().item()
        masked = (batch["labels"] != -100).sum().item()
        print(f"batch {i}: input_ids {tuple(batch['input_ids'].shape)}, {real} real tokens, {masked} masked "
              f"({masked / max(real, 1):.1%}), samples {batch['index'][:4].tolist()}...")
        if i == 0:
            first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
            print("  first sample, as the model sees it:", tokenizer.decode(first)[:300])
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a student from a frozen teacher on prepared shards (DeepSpeed ZeRO-2); exports DIR/student."""
    from ds_distil.core.config import load
    from ds_distil.distill.trainer import run_distill
    from ds_distil.runtime.engine import close_distributed
    from ds_distil.schema.distill import DistillConfig

    cfg = load(DistillConfig, args.config, args.overrides)
    status = run_distill(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    close_distributed()  # every rank returns the same status (finished, or stopped by a signal at the same step)
    return status


def cmd_export(args: argparse.Namespace) -> int:
    """Turn a run's ZeRO checkpoint into a Hugging Face model directory (config, safetensors, tokenizer)."""
    from ds_distil.distill.checkpoint import export_student

    path = export_student(args.run, out=args.out, tag=args.tag, overwrite=args.overwrite)
    print(f"exported {path} with its model card README.md (load it with AutoModelForMaskedLM.from_pretrained)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune a model (hub name, HF directory, or architecture preset) on a Tagalog task; writes DIR/results.json."""
    from ds_distil.core.config import load
    from ds_distil.core.signals import exit_on_stop_signal, ignore_stop_signals
    from ds_distil.finetune.summary import result_lines
    from ds_distil.finetune.train import run_finetune
    from ds_distil.runtime.engine import close_distributed
    from ds_distil.schema.finetune import FinetuneConfig

    cfg = load(FinetuneConfig, args.config, args.overrides)
    exit_on_stop_signal("finetune")
    res = run_finetune(args.model, args.task, args.out, cfg, overwrite=args.overwrite)
    ignore_stop_signals()  # results.json is written: a late signal must not turn this run into a "stopped" one
    close_distributed()
    if res["score"] is not None:
        print("\n".join(result_lines(res)))
        print(f"{res['model_name']} | {res['task']} / {res['dataset']} | test {res['metric']} {res['score']:.4f} | "
              f"macro-F1 {res['macro_f1']:.4f} | valid {res['valid_score']:.4f} | train {res['train_runtime_s']:.1f} s | "
              f"{args.out}/results.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Collect finetuning results into one table per task and dataset, baselines included (Markdown, JSON, PNG)."""
    from ds_distil.reporting.report import write_report

    path = write_report(args.runs, args.out, args.baseline, overwrite=args.overwrite)
    if args.study:
        from ds_distil.reporting.paper_tables import write_tables

        tables = write_tables(args.study, args.runs, args.out)
        print(tables.read_text())
        print(f"wrote {tables}, {tables.with_suffix('.json')}; all runs: {path}")
        return 0
    print(path.read_text().split("\n\nDevice")[0])
    print(f"wrote {path}, {path.with_suffix('.json')}, {path.with_suffix('.png')}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run a whole study (configs/studies/*.yaml): data, teacher, students, ablations, baselines, finetuning, the paper's tables; resumes."""
    from ds_distil.study.runner import run_experiment

    return run_experiment(args.study, args.out, dry_run=args.dry_run, launcher=args.launcher, overrides=args.overrides)


def cmd_build_nli(args: argparse.Namespace) -> int:
    """Build a NewsPH-NLI-style entailment set from a CSV of news articles."""
    from ds_distil.core.rundir import claim
    from ds_distil.data.tasks import build_nli, read_articles, write_nli

    pairs = build_nli(read_articles(Path(args.articles), args.column), seed=args.seed)
    with claim(args.out, "build-nli", overwrite=args.overwrite, inputs=[args.articles]) as rd:
        write_nli(pairs, rd.path)
        rd.commit()
    print(", ".join(f"{s}: {len(v):,} pairs" for s, v in pairs.items()) + f" -> {args.out}")
    return 0


def _keys_epilog(cls: type, instance=None, prefix: str = "") -> str:
    from ds_distil.core.config import keys_help

    return ("settable keys (YAML via --config, or key=value after the flags; shown with their defaults):\n" +
            keys_help(cls, instance, prefix=prefix))


OVERWRITE_HELP = ("replace what DIR holds: the new output is built beside it and swapped in only when complete "
                  "(a directory ds-distil did not make is kept beside it as DIR.replaced-DATE)")


def build_parser() -> argparse.ArgumentParser:
    from ds_distil.schema.distill import DistillConfig

    parser = argparse.ArgumentParser(prog="ds-distil", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--version", action="version", version=f"ds-distil {__version__}")
    # the deepspeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show third-party output (DeepSpeed, transformers, ...)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show third-party output (DeepSpeed's log and op builds, transformers' weight-loading report, warnings)")
    raw = argparse.RawDescriptionHelpFormatter
    _sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    class _Sub:  # every subcommand gets --verbose
        def add_parser(self, name, **kw):
            return _sub.add_parser(name, parents=[common], **kw)

    sub = _Sub()

    p = sub.add_parser("prepare", help=cmd_prepare.__doc__, description=cmd_prepare.__doc__)
    add_config_flags(p, PrepareConfig)
    p.set_defaults(func=cmd_prepare)

    from ds_distil.schema.vocab import VocabConfig

    p = sub.add_parser("vocab", help=cmd_vocab.__doc__, description=cmd_vocab.__doc__)
    add_config_flags(p, VocabConfig)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("trim", help=cmd_trim.__doc__, description=cmd_trim.__doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (weights and tokenizer), e.g. a distill run's student/")
    p.add_argument("--vocab", required=True, metavar="VOCAB_DIR", help="written by `ds-distil vocab`")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_trim)

    p = sub.add_parser("inspect", help=cmd_inspect.__doc__, description=cmd_inspect.__doc__, formatter_class=raw,
                       epilog=_keys_epilog(DataConfig, prefix="data."))
    p.add_argument("--shards", required=True, help="directory written by `ds-distil prepare`")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--tokenizer", help="check the shards against this tokenizer (default: the one saved with them)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=3, help="batches to show")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="run config whose `data` section to use")
    p.add_argument("overrides", nargs="*", metavar="data.key=value")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("distill", help=cmd_distill.__doc__, description=cmd_distill.__doc__ + " Runs as a single process, "
                       "under `deepspeed --num_gpus N --module ds_distil distill ...` and `torchrun --nproc_per_node N -m ds_distil distill ...`.",
                       formatter_class=raw, epilog=_keys_epilog(DistillConfig))
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="run config (configs/*.yaml); several are merged in order")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: resolved config, checkpoints, TensorBoard, student/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in DIR (start fresh if none)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in DIR: the new run is written beside it and "
                   "swapped in at its first complete checkpoint; until then the old run stays whole")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.max_steps=100 data.num_workers=0")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("--run", required=True, metavar="DIR", help="run directory of `ds-distil distill`")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the model (default: DIR/student)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step00001000 (default: the newest complete one)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_export)

    from ds_distil.data.tasks import TASKS
    from ds_distil.schema.finetune import FT_PRESETS, FinetuneConfig

    p = sub.add_parser("finetune", help=cmd_finetune.__doc__, description=cmd_finetune.__doc__, formatter_class=raw,
                       epilog=_keys_epilog(FinetuneConfig, FinetuneConfig()))
    p.add_argument("--model", required=True, help=f"hub name, local HF directory, a config.json (random weights), or preset: {', '.join(FT_PRESETS)}")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=3 train.lr=5e-5 task.max_length=128 (all keys below)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("--runs", nargs="+", required=True, help="finetune output directories (searched for results.json)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--baseline", default=None, help="model to compute training speedups against (default: mbert)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--study", default=None, metavar="PLAN_JSON", help="a study's plan.json (written by `ds-distil experiment`): "
                   "adds the paper's Tables 2-5 (tables.md)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("experiment", help=cmd_experiment.__doc__, description=cmd_experiment.__doc__ + " A finished stage is skipped "
                       "on rerun; a stopped distillation resumes from its checkpoint; a changed setting redoes what depends on it.")
    p.add_argument("study", metavar="STUDY.yaml", help="the study (configs/studies/: paper-tl-cpu, paper-tl-gpu, demo)")
    p.add_argument("--out", required=True, metavar="DIR", help="the study's directory: every stage's output, logs/, report/")
    p.add_argument("--dry-run", action="store_true", help="print the stages as the commands they run, and what is done already")
    p.add_argument("--launcher", choices=["local", "srun"], default="local",
                   help="local: processes on this machine (study.ranks of them per stage); srun: each rank stage as an srun step (SLURM)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="study settings, e.g. teacher.source=hub finetune.seeds=[1,2]")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("tasks", help="task data utilities")
    tsub = p.add_subparsers(dest="task_command", required=True, metavar="COMMAND")
    q = tsub.add_parser("build-nli", help=cmd_build_nli.__doc__, description=cmd_build_nli.__doc__)
    q.add_argument("--articles", required=True, help="CSV with one article per row (e.g. ../shared/data/fakenews/full.csv)")
    q.add_argument("--column", default="article")
    q.add_argument("--out", required=True, metavar="DIR", help="writes train.csv, valid.csv, test.csv (premise, hypothesis, label)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    q.set_defaults(func=cmd_build_nli)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after a flag that follows a positional (`experiment STUDY --dry-run k=v`): argparse leaves them over
        if not isinstance(getattr(args, "overrides", None), list) or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    setup_logging(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except UserError as e:
        print(f"ds-distil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ds-distil {args.command}: interrupted", file=sys.stderr)
        return 130
