"""The `ds-distil` command line as data: every command's flags and help, built from the schemas.

Flags of a config command are generated from its dataclass, so the help text, the types and the YAML keys
have one source. Nothing here imports torch or transformers: `ds-distil --help` answers at once. cli.py
attaches a handler to each command; the study runner parses its stages' command lines with the same
parser and `stage_config`, so a study is checked exactly as the commands will read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping

from ds_distil import __version__
from ds_distil.core.config import ConfigError, flatten, from_dict, keys_help, literal_value, load_dict
from ds_distil.core.config import merge as _merge_over
from ds_distil.schema.cache import TeacherCacheConfig
from ds_distil.schema.distill import DataConfig, DistillConfig
from ds_distil.schema.finetune import FT_PRESETS, RECIPES, TASK_NAMES, FinetuneConfig, PredictConfig, random_weights
from ds_distil.schema.prepare import PrepareConfig
from ds_distil.schema.vocab import VocabConfig

DESCRIPTION = ("`ds-distil <subcommand>`: distil a small, fast, single-language transformer out of multilingual BERT with "
               "DeepSpeed, finetune it, and report. Errors the user can fix are one line on stderr and exit status 2.")
HELP = {
    "prepare": "Tokenize a corpus into packed WebDataset shards with a manifest.",
    "vocab": "Choose a target-language vocabulary from prepared shards (kept tokens, tokenizer, id map, report).",
    "trim": "Trim an existing model (a Hugging Face directory with its tokenizer) to a target-language vocabulary.",
    "inspect": "Stream a few batches from prepared shards and show what a training rank would see.",
    "teacher-cache": "Run the teacher once over prepared shards and store its sampled targets at static masks, for students to "
                     "distil from without it (teacher.cache=DIR).",
    "distill": "Distil a student from a frozen teacher on prepared shards (DeepSpeed, ZeRO-2 on several ranks); exports DIR/student.",
    "export": "Turn a run's ZeRO checkpoint into a Hugging Face model directory (config, safetensors, tokenizer).",
    "finetune": "Finetune a model (hub name, HF directory, or architecture preset) on a Tagalog task; writes DIR/model (the "
                "classifier, for transformers), DIR/predictions and DIR/results.json.",
    "predict": "Predict the labels of a file's rows (CSV, TSV, JSON Lines, JSON; CoNLL-U or IOB2 for token tasks) with a "
               "finetuned model (a finetune run's DIR/model): one JSON line per row with its class probabilities.",
    "report": "Collect finetuning results into one table per task and dataset, baselines included (Markdown, JSON, PNG).",
    "experiment": "Run a whole study (configs/studies/*.yaml): data, teacher, students, ablations, baselines, finetuning, the "
                  "paper's tables; resumes.",
    "tasks build-nli": "Build a NewsPH-NLI-style entailment set from a CSV of news articles.",
}
OVERWRITE_HELP = ("replace what DIR holds: the new output is built beside it and swapped in only when complete "
                  "(a directory ds-distil did not make is kept beside it as DIR.replaced-DATE)")

Handler = Callable[[argparse.Namespace], int]


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


# ------------------------------------------------------------------ one config file across commands

# The config classes of the commands that read --config files. A user keeps one file per run (a distill config has the
# data and teacher sections a teacher cache needs): a command given it takes the sections that are its own and sets
# aside, in one console line, those of another command; a key it does not know inside one of its own sections, or a
# section no command has, is still refused naming the key.
CONFIGS = {"distill": DistillConfig, "teacher-cache": TeacherCacheConfig, "finetune": FinetuneConfig, "prepare": PrepareConfig,
           "vocab": VocabConfig}
# keys a command reads from another command's sections where its own are not set: {own key: the other's key}
BORROWED = {"teacher-cache": {"vocab": "student.vocab", "seed": "train.seed", "cache.temperature": "loss.temperature"}}


def own_sections(command: str, data: dict) -> tuple[dict, str | None]:
    """(`data` without the top-level keys that belong to other commands' configs only, one line saying what was set aside
    and what was borrowed, or None when nothing was)."""
    own = {f.name for f in dataclasses.fields(CONFIGS[command])}
    owners: dict[str, str] = {}  # a top-level key of another command's config -> the first such command
    for other, cls in CONFIGS.items():
        if other != command:
            for f in dataclasses.fields(cls):
                owners.setdefault(f.name, other)
    flat = flatten(data)
    borrowed = {}
    for mine, theirs in BORROWED.get(command, {}).items():
        if mine not in flat and flat.get(theirs) is not None:
            borrowed[mine] = flat[theirs]
    kept = {k: v for k, v in data.items() if k in own or k not in owners}
    left: dict[str, list[str]] = {}
    for k in data:
        if k not in own and k in owners:
            left.setdefault(owners[k], []).append(k)
    for key, value in borrowed.items():
        node = kept
        *sections, last = key.split(".")
        for s in sections:
            node = node.setdefault(s, {})
        node[last] = value
    if not left and not borrowed:
        return kept, None
    parts = [f"left to {cmd}: {', '.join(keys)}" for cmd, keys in left.items()]
    parts += [f"{mine} from {BORROWED[command][mine]} ({value!r})" for mine, value in borrowed.items()]
    mine = ", ".join(k for k in kept if k in own) or "none"
    return kept, f"{command}: reading the settings that are its own ({mine}); " + "; ".join(parts)


def _own(command: str, data: dict) -> dict:
    import logging

    kept, line = own_sections(command, data)
    if line:
        logging.getLogger("ds_distil").info("%s", line)
    return kept


def config_from_args(args: argparse.Namespace, cls: type):
    data = load_dict(args.config, args.overrides)
    if args.command in CONFIGS:  # a config file shared by the pipeline's commands (predict's keys are its own)
        data = _own(args.command, data)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in vars(args):
            value = getattr(args, f.name)
            data[f.name] = literal_value(value, hints[f.name], f.name) if isinstance(value, str) else value
    return from_dict(cls, data)


def stage_config(args: argparse.Namespace):
    """The typed config a parsed command line resolves to (its YAML files, flags and overrides), or None for the
    commands without one. Bad keys and values raise ConfigError naming the key."""
    command = args.command
    if command in ("prepare", "vocab"):
        return config_from_args(args, PrepareConfig if command == "prepare" else VocabConfig)
    if command == "finetune":
        return finetune_config(args)[0]
    if command == "predict":
        return config_from_args(args, PredictConfig)
    if command in ("distill", "teacher-cache"):
        return from_dict(CONFIGS[command], _own(command, load_dict(args.config, args.overrides)))
    if command == "inspect":
        return from_dict(DataConfig, {**load_dict(args.config, args.overrides).get("data", {}), "shards": args.shards})
    return None


def finetune_config(args: argparse.Namespace) -> tuple[FinetuneConfig, dict]:
    """`ds-distil finetune`'s config and the recipe beneath it (the `recipe` key): chosen from --model before anything
    is built; the user's --config files and key=value settings are merged over it, so each of their keys wins."""
    user = _own("finetune", load_dict(args.config, args.overrides))
    choice = user.get("recipe", "auto")
    if choice not in ("blank", "pretrained", "auto"):  # "none", or a bad value that from_dict refuses with the key's name
        return from_dict(FinetuneConfig, user), {"name": "none", "choice": choice}
    blank = random_weights(args.model)
    name = ("blank" if blank else "pretrained") if choice == "auto" else choice
    why = (f"'{args.model}' has random weights" if blank else f"'{args.model}' is a pretrained encoder") if choice == "auto" else "recipe=" + name
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        if choice != "auto":
            raise ConfigError(f"recipe={name}: {path} does not exist; pass the recipe with --config FILE, or set recipe=none")
        return from_dict(FinetuneConfig, user), {"name": "none", "choice": choice, "missing": str(path)}
    recipe, mine = flatten(load_dict([path])), flatten(user)
    info = {"name": name, "choice": choice, "file": str(path), "why": why,
            "applied": {k: v for k, v in recipe.items() if k not in mine}, "yours": {k: mine[k] for k in recipe if k in mine}}
    return from_dict(FinetuneConfig, _merge_over(load_dict([path]), user)), info


# ----------------------------------------------------------------------------------- the parser


def _keys_epilog(cls: type, instance=None, prefix: str = "", resume_note: bool = False) -> str:
    return ("settable keys (YAML via --config, or key=value after the flags; shown with their defaults):\n" +
            keys_help(cls, instance, prefix=prefix, resume_note=resume_note))


def build_parser(handlers: Mapping[str, Handler] | None = None) -> argparse.ArgumentParser:
    """The `ds-distil` parser; `handlers` (command -> function of the parsed args) become each command's `func`."""
    handlers = handlers or {}
    parser = argparse.ArgumentParser(prog="ds-distil", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ds-distil {__version__}")
    # the deepspeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show third-party output (DeepSpeed, transformers, ...)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show third-party output (DeepSpeed's log and op builds, transformers' weight-loading report, warnings)")
    raw = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, parent=sub, description: str | None = None, **kw) -> argparse.ArgumentParser:
        """A subcommand with --verbose, its help, and its handler."""
        p = parent.add_parser(name.split()[-1], parents=[common], help=HELP[name], description=description or HELP[name], **kw)
        p.set_defaults(func=handlers.get(name))
        return p

    add_config_flags(command("prepare"), PrepareConfig)
    add_config_flags(command("vocab"), VocabConfig)

    p = command("trim")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (weights and tokenizer), e.g. a distill run's student/")
    p.add_argument("--vocab", required=True, metavar="VOCAB_DIR", help="written by `ds-distil vocab`")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("inspect", formatter_class=raw, epilog=_keys_epilog(DataConfig, prefix="data."))
    p.add_argument("--shards", required=True, help="directory written by `ds-distil prepare`")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--tokenizer", help="check the shards against this tokenizer (default: the one saved with them)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=3, help="batches to show")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="run config whose `data` section to use")
    p.add_argument("overrides", nargs="*", metavar="data.key=value")

    p = command("distill", description=HELP["distill"] + " Runs as a single process, under `deepspeed --num_gpus N --module "
                "ds_distil distill ...` and `torchrun --nproc_per_node N -m ds_distil distill ...`.", formatter_class=raw,
                epilog=_keys_epilog(DistillConfig, resume_note=True))
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="run config (configs/*.yaml); several are merged in order")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: resolved config, checkpoints, TensorBoard, student/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in DIR (start fresh if none)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in DIR: the new run is written beside it and "
                   "swapped in at its first complete checkpoint; until then the old run stays whole")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.max_steps=100 data.num_workers=0")

    p = command("teacher-cache", description=HELP["teacher-cache"] + " Runs as a single process or on N ranks (deepspeed, "
                "torchrun), each writing whole files. Its data and teacher keys are distill's.", formatter_class=raw, epilog=_keys_epilog(TeacherCacheConfig))
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="config file(s): data, teacher, vocab and cache sections")
    p.add_argument("--out", required=True, metavar="DIR", help="the cache directory: manifest.json and copy*/ files")
    p.add_argument("--resume", action="store_true", help="finish an interrupted build in DIR: the files written whole are kept")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. cache.k=16 data.mask_copies=3 teacher.preset=tiny")

    p = command("export")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory of `ds-distil distill`")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the model (default: DIR/student)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step00001000 (default: the newest complete one)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    p = command("finetune", description=HELP["finetune"] + " DIR is where the run is watched from its first step "
                "(finetune.log, tensorboard/, metrics.jsonl); it checkpoints, and a stopped run continues with --resume.",
                formatter_class=raw, epilog=_keys_epilog(FinetuneConfig, FinetuneConfig(), resume_note=True))
    p.add_argument("--model", required=True, help=f"hub name, local HF directory, a config.json (random weights), or preset: {', '.join(FT_PRESETS)}")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASK_NAMES)}")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in DIR from its newest complete checkpoint "
                   "(start from the beginning if it has none): the same settings, the same result as a run never stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run in DIR: the new run is written beside it and swapped "
                   "in once its set-up has succeeded (data read and checked, model built); until then the old run stays whole")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=3 train.lr=5e-5 task.max_length=128 (all keys below)")

    p = command("predict", formatter_class=raw, epilog=_keys_epilog(PredictConfig))
    p.add_argument("--model", required=True, metavar="DIR", help="a finetuned classifier: a finetune run's DIR/model (or any Hugging "
                   "Face sequence or token classification directory, with text_column=... set)")
    p.add_argument("--input", required=True, metavar="FILE", help="the rows to predict; with the model's label column, also scored")
    p.add_argument("--out", required=True, metavar="FILE", help="the predictions, one JSON line per row (written whole at the end)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    add_config_flags(p, PredictConfig)

    p = command("report")
    p.add_argument("--runs", nargs="+", required=True, help="finetune output directories (searched for results.json)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--baseline", default=None, help="model to compute training speedups against (default: mbert)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--study", default=None, metavar="PLAN_JSON", help="a study's plan.json (written by `ds-distil experiment`): "
                   "adds the paper's Tables 2-5 (tables.md)")

    p = command("experiment", description=HELP["experiment"] + " A finished stage is skipped on rerun; a stopped distillation "
                "resumes from its checkpoint; a changed setting redoes what depends on it.")
    p.add_argument("study", metavar="STUDY.yaml", help="the study (configs/studies/: paper-tl-cpu, paper-tl-gpu, demo)")
    p.add_argument("--out", required=True, metavar="DIR", help="the study's directory: every stage's output, logs/, report/")
    p.add_argument("--dry-run", action="store_true", help="print the stages as the commands they run, and what is done already")
    p.add_argument("--launcher", choices=["local", "srun"], default="local",
                   help="local: processes on this machine (study.ranks of them per stage); srun: each rank stage as an srun step (SLURM)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="study settings, e.g. teacher.source=hub finetune.seeds=[1,2]")

    p = sub.add_parser("tasks", parents=[common], help="task data utilities")
    q = command("tasks build-nli", parent=p.add_subparsers(dest="task_command", required=True, metavar="COMMAND"))
    q.add_argument("--articles", required=True, help="CSV with one article per row (e.g. ../shared/data/fakenews/full.csv)")
    q.add_argument("--column", default="article")
    q.add_argument("--out", required=True, metavar="DIR", help="writes train.csv, valid.csv, test.csv (premise, hypothesis, label)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser
