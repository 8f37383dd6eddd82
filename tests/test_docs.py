"""The documentation cannot drift from the command line: every `ds-distil ...` command shown in README.md and docs/ (in
code blocks, and inline where it is a whole command) is parsed by the real parser and its settings validated by the
command's own schema, without running the work. And one config file serves every command that reads its sections."""

from __future__ import annotations

import contextlib
import io
import re
import shlex

import pytest
from conftest import ROOT

from ds_distil.cli import build_parser
from ds_distil.core.config import ConfigError, load_dict
from ds_distil.schema import commands
from ds_distil.schema.study import load_study

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LAUNCHED = re.compile(r"^(?:deepspeed|torchrun)\b.*?(?:--module|-m)\s+ds_distil\s+(.*)$")


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, the argv after `ds-distil`) of every command shown: code-block lines (continuations joined, a
    trailing comment dropped) and inline code spans that hold a whole command (a subcommand and at least one argument).
    Console output (`ds-distil prepare: error: ...`) is not a command."""
    found = []
    lines, in_block, i = text.splitlines(), False, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block:
            joined = line
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            stripped = joined.strip()
            launched = LAUNCHED.match(stripped)
            if launched:
                found.append((number, launched.group(1)))
            elif stripped.startswith("ds-distil ") and not re.match(r"ds-distil [\w -]+: ", stripped):
                found.append((number, stripped.removeprefix("ds-distil ")))
        else:
            for span in re.findall(r"`(ds-distil [^`]+)`", line):
                rest = span.removeprefix("ds-distil ")
                if len(rest.split()) >= 2 and not re.match(r"[\w -]+: ", rest):
                    found.append((number, rest))
        i += 1
    return [(n, re.split(r"\s+#\s", c)[0].strip()) for n, c in found]


SHOWN = [(doc.relative_to(ROOT), n, c) for doc in DOCS for n, c in command_lines(doc.read_text(encoding="utf-8"))]


def test_the_docs_show_commands_at_all():
    assert len(SHOWN) >= 40, SHOWN  # the extraction itself works: a broken pattern must not pass every page vacuously
    assert {str(d) for d, _, _ in SHOWN} >= {"README.md", "docs/data.md", "docs/distillation.md", "docs/finetuning.md"}


@pytest.mark.parametrize("doc, line, command", SHOWN, ids=[f"{d}:{n}" for d, n, _ in SHOWN])
def test_every_command_in_the_docs_parses_and_validates(doc, line, command):
    argv = shlex.split(command)
    parser = build_parser()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as e:
            if e.code == 0 and "--help" in argv:
                return
            pytest.fail(f"{doc}:{line}: `ds-distil {command}` does not parse: {err.getvalue().strip().splitlines()[-1:]}")
    if extra:  # main() takes key=value after a flag as overrides
        assert isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra), \
            f"{doc}:{line}: unrecognized arguments {extra}"
        args.overrides += extra
    try:
        if args.command == "experiment":
            load_study(ROOT / args.study, args.overrides)
        else:
            commands.stage_config(args)
    except ConfigError as e:
        pytest.fail(f"{doc}:{line}: `ds-distil {command}`: {e}")


def test_a_teacher_cache_reads_a_distill_config_and_says_what_it_left(caplog):
    args = build_parser().parse_args(["teacher-cache", "--config", "configs/smoke.yaml", "--out", "runs/c"])
    with caplog.at_level("INFO", logger="ds_distil"):
        cfg = commands.stage_config(args)
    distill = load_dict([ROOT / "configs/smoke.yaml"])
    assert cfg.data.shards == distill["data"]["shards"] and cfg.teacher.preset == distill["teacher"]["preset"]
    assert cfg.cache.temperature == distill["loss"]["temperature"]
    line = " ".join(r.getMessage() for r in caplog.records)
    assert "left to distill: student, loss, train, checkpoint, log, deepspeed" in line
    assert "cache.temperature from loss.temperature (2.0)" in line


def test_the_cache_borrows_the_students_vocabulary_and_seed_unless_its_own_are_set():
    data = {"data": {"shards": "s"}, "teacher": {"preset": "tiny"}, "student": {"vocab": "runs/v"}, "train": {"seed": 7},
            "loss": {"temperature": 3.0}}
    kept, _ = commands.own_sections("teacher-cache", data)
    assert kept["vocab"] == "runs/v" and kept["seed"] == 7 and kept["cache"]["temperature"] == 3.0
    kept, _ = commands.own_sections("teacher-cache", {**data, "vocab": "mine", "cache": {"temperature": 2.0}})
    assert kept["vocab"] == "mine" and kept["cache"]["temperature"] == 2.0  # the cache's own keys win


def test_unknown_keys_are_still_refused_with_a_suggestion():
    args = build_parser().parse_args(["teacher-cache", "--config", "configs/smoke.yaml", "--out", "runs/c", "data.shard=x"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data.shard' \(did you mean 'data.shards'\?\)"):
        commands.stage_config(args)
    args = build_parser().parse_args(["distill", "--config", "configs/smoke.yaml", "--out", "runs/c", "studnet.preset=x"])
    with pytest.raises(ConfigError, match="unknown config key 'studnet'"):
        commands.stage_config(args)
