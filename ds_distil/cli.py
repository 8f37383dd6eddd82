"""`ds-distil <subcommand>`: each command handed to the function of its layer.

The parser, every flag and its help live in ds_distil/schema/commands.py (no torch: `--help` answers at
once); this module attaches a handler to each command and imports what the handler needs only when it
runs. Errors the user can fix are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from ds_distil.core.errors import UserError, os_error_line, printable
from ds_distil.schema import commands

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


# ------------------------------------------------------------------------------------- commands


def cmd_prepare(args: argparse.Namespace) -> int:
    """Tokenize a corpus into packed WebDataset shards with a manifest."""
    from ds_distil.data.shards import prepare

    cfg = commands.stage_config(args)
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

    cfg = commands.stage_config(args)
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
    data_cfg = commands.stage_config(args)
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
    """Distil a student from a frozen teacher on prepared shards (DeepSpeed, ZeRO-2 on several ranks); exports DIR/student."""
    from ds_distil.distill.run import run_distill
    from ds_distil.runtime.engine import close_distributed

    cfg = commands.stage_config(args)
    status = run_distill(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    close_distributed()  # every rank returns the same status (finished, or stopped by a signal at the same step)
    return status


def cmd_teacher_cache(args: argparse.Namespace) -> int:
    """Run the teacher once over prepared shards and store its sampled targets (ds_distil/distill/cache_build.py)."""
    from ds_distil.core.signals import exit_on_stop_signal, ignore_stop_signals
    from ds_distil.distill.cache_build import build_cache, describe
    from ds_distil.runtime.engine import close_distributed

    cfg = commands.stage_config(args)
    exit_on_stop_signal("teacher-cache", f"(the files finished so far are kept: `ds-distil teacher-cache --out {args.out} ... "
                                         "--resume` with the same settings continues)")
    path = build_cache(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    ignore_stop_signals()  # the manifest is written: the cache is finished
    close_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}: {describe(path)}; distil from it with teacher.cache={path} data.masking=static "
              f"data.mask_copies={cfg.data.mask_copies} loss.temperature={cfg.cache.temperature}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Turn a run's ZeRO checkpoint into a Hugging Face model directory (config, safetensors, tokenizer)."""
    from ds_distil.distill.export import export_student

    path = export_student(args.run, out=args.out, tag=args.tag, overwrite=args.overwrite)
    print(f"exported {path} with its model card README.md (load it with AutoModelForMaskedLM.from_pretrained)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune a model (hub name, HF directory, or architecture preset) on a Tagalog task; writes DIR/model, DIR/predictions,
    DIR/results.json."""
    from ds_distil.core.signals import ignore_stop_signals
    from ds_distil.finetune.summary import result_lines
    from ds_distil.finetune.train import run_finetune
    from ds_distil.runtime.engine import close_distributed

    cfg, recipe = commands.finetune_config(args)
    status, res = run_finetune(args.model, args.task, args.out, cfg, overwrite=args.overwrite, recipe=recipe, resume=args.resume)
    ignore_stop_signals()  # the work is saved (results, or a checkpoint): a late signal must not turn this exit into "killed"
    close_distributed()  # every rank returns the same status (finished, or stopped by a signal at the same step)
    if status != 0:
        return status
    if res["score"] is not None:
        print("\n".join(result_lines(res)))
        print(f"{res['model_name']} | {res['task']} / {res['dataset']} | test {res['metric']} {res['score']:.4f} | "
              f"macro-F1 {res['macro_f1']:.4f} | valid {res['valid_score']:.4f} | train {res['train_runtime_s']:.1f} s | "
              f"{args.out}/results.json")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict the labels of a file's rows with a finetuned model; one JSON line per row."""
    from ds_distil.finetune.predict import run_predict, summary_lines
    from ds_distil.runtime.engine import close_distributed

    cfg = commands.stage_config(args)
    found = run_predict(args.model, args.input, args.out, cfg, overwrite=args.overwrite)
    close_distributed()
    if found is not None:
        print("\n".join(summary_lines(found)))
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


HANDLERS = {"prepare": cmd_prepare, "vocab": cmd_vocab, "trim": cmd_trim, "inspect": cmd_inspect, "distill": cmd_distill, "teacher-cache": cmd_teacher_cache,
            "export": cmd_export, "finetune": cmd_finetune, "predict": cmd_predict, "report": cmd_report, "experiment": cmd_experiment,
            "tasks build-nli": cmd_build_nli}


def build_parser() -> argparse.ArgumentParser:
    return commands.build_parser(HANDLERS)


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
    except UserError as e:  # control characters escaped: a value from a user's file (a NUL, a newline) keeps it one line
        print(f"ds-distil {args.command}: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, the file system, the limits: one line, whatever command met it
        print(f"ds-distil {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ds-distil {args.command}: interrupted", file=sys.stderr)
        return 130
