"""`ds-distil experiment STUDY.yaml --out DIR [--dry-run]`: a whole study, stage by stage, resumable.

The study's plan (ds_distil/study/plan.py) is a list of stages, each one of our CLI commands, with a
key each (ds_distil/study/keys.py). This module runs them as subprocesses, in plan order, each once
the stages it depends on are done (up to the study's `parallel` at a time), and keeps

* a **marker** per stage, DIR/.experiment/stages/NAME.json: written as `running` before the command starts and
  as `done` (with its key and duration) only after it exited 0. On a rerun a `done` stage with the
  same key is skipped; a `running` one (interrupted, failed) is redone: distill and finetune with `--resume`
  from their newest complete checkpoint, teacher-cache with `--resume` keeping its finished files, the others from their start after their partial output is
  removed; a `done` one whose key changed is redone from scratch (its output is removed first:
  it was made by this study, as its marker proves, for settings that no longer hold).
* a **log** per stage, DIR/logs/NAME.log (appended per attempt). A failing stage stops the study with one
  line naming the stage, the error it printed and its log.
* a **lock**, DIR/.experiment/lock (ds_distil/core/rundir.py's `Lock`), held while the study runs: one
  runner per DIR at a time. `--dry-run` takes no lock and writes nothing.
* the **ranks it began on**, DIR/.experiment/ranks.json. The study's `ranks` is a resource, not a setting: it is in
  no stage's key, so a study run again on another number of ranks keeps its finished stages. So that the stages it
  still runs compute what they would have on the ranks it began on, each distill and finetune stage then gets the
  micro batch and accumulation that keep its global batch (micro x accumulation x ranks) as it was
  (`train.micro_batch_size=... train.grad_accum_steps=...`, shown with its command, in no key), or the study is
  refused before anything runs where no whole number keeps it; an interrupted distillation resumes on the new ranks
  with the same global batch (ds_distil/distill/elastic.py), a teacher cache's files do not depend on the ranks, and an
  interrupted finetuning run (which resumes on its own number of ranks only: its marker records them) is redone.

Signals: SIGUSR1, SIGTERM or Ctrl-C ask the running stage to stop at a safe point (distill and
finetune checkpoint) and the runner exits 75; the same command continues. Under
SLURM (`--launcher srun`, slurm/experiment.sbatch) rank stages run as `srun` steps and the batch
script requeues the job on 75 (one job that requeues, not one job per stage).

Why a runner of our own and not Snakemake, doit or Luigi: the stages form a short, fixed chain
(tens of commands) that one process runs in order, so the features those tools are built for
(a DAG scheduler, parallel local jobs, cluster executors, a daemon with a web UI) would go unused,
while what we need is specific: distill resumes in place (`--resume`) instead of being redone as a
file-target rule would be, stages are keyed by their command and config *contents* (Snakemake
keys on file times and, optionally, parameters; doit keeps its own dbm state file; Luigi only asks
whether an output exists), a signal must reach the ranks of the running stage and end the runner
with 75 for SLURM's requeue, and `--dry-run` must print exactly our commands. Snakemake would add
a dependency tree of ~30 packages and a second language (its rule files); doit and Luigi would
still need this signal and resume handling around them. The runner is this file, with the plan and
the keys beside it (plan.py, keys.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ds_distil.core.config import to_dict
from ds_distil.core.dist import keep_global_batch
from ds_distil.core.env_info import free_port
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write, atomic_write_json
from ds_distil.core.rundir import Lock
from ds_distil.core.signals import EXIT_PREEMPTED
from ds_distil.schema.study import Study, load_study
from ds_distil.study.keys import assign_keys
from ds_distil.study.plan import Stage, build_plan, plan_document, validate
from ds_distil.study.relay import Relay

STATE = ".experiment"
RANK_COMMANDS = ("distill", "finetune", "teacher-cache")  # the commands that run as ranks (srun steps under SLURM)
BATCHED = ("distill", "finetune")  # the rank commands with a global batch (micro x accumulation x ranks)
# A file of each command's finished output (outputs appear whole: a staging directory swapped in, or a manifest written
# last): a stage marked done whose file is gone (deleted by hand, a disk restored in part) is redone, not skipped.
FINISHED = {"prepare": "manifest.json", "vocab": "vocab_map.json", "teacher-cache": "manifest.json",
            "distill": "student/config.json", "finetune": "results.json", "report": "tables.md", "tasks": "test.csv"}


# ---------------------------------------------------------------------------------- scheduling


def next_ready(pending: list[Stage], done: set[str]) -> Stage | None:
    """The stage to start next: the first of `pending` (in plan order) whose dependencies are all in `done`."""
    return next((s for s in pending if all(d in done for d in s.deps)), None)


# ---------------------------------------------------------------------------------- launching


def launch_argv(stage: Stage, launcher: str) -> list[list[str]]:
    """The process(es) of a stage: one argv per process (local ranks are separate processes)."""
    base = [sys.executable, "-m", "ds_distil", *stage.args]
    if stage.command not in RANK_COMMANDS:
        return [base]
    if launcher == "srun":
        return [["srun", f"--ntasks={stage.ranks}", "--kill-on-bad-exit=1", "bash", "-c",
                 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"', "rank", *base]]
    return [base] * stage.ranks


def shown(stage: Stage, launcher: str, resume: bool) -> str:
    args = stage.args + (["--resume"] if resume else [])
    text = "ds-distil " + shlex.join(args)
    if stage.command in RANK_COMMANDS and launcher == "srun":
        return f"srun --ntasks={stage.ranks} --kill-on-bad-exit=1 [RANK=$SLURM_PROCID ...] {text}"
    if stage.command in RANK_COMMANDS and stage.ranks > 1:
        return f"[{stage.ranks} ranks: RANK=0..{stage.ranks - 1} WORLD_SIZE={stage.ranks}] {text}"
    return text



# ------------------------------------------------------------------------------------ running


@dataclasses.dataclass
class _Running:
    """A started stage: its processes (one per local rank, or srun), its log file, when it started."""

    stage: Stage
    procs: list[subprocess.Popen]
    log: object
    t0: float
    failed_at: float | None = None

    def codes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def finished(self) -> bool:
        codes = self.codes()
        if all(c is not None for c in codes):
            return True
        # one rank failed: give the others 30 s, then stop them (they would wait in a collective for ever)
        if self.failed_at is None and any(c not in (None, 0) for c in codes):
            self.failed_at = time.time()
        if self.failed_at is not None and time.time() - self.failed_at > 30:
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        return False

    def signal(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGUSR1)  # distill, finetune: checkpoint and exit 75
                except ProcessLookupError:
                    pass


class Runner:
    def __init__(self, study: Study, study_path: Path, out: Path, launcher: str = "local"):
        self.study, self.study_path, self.out, self.launcher = study, study_path, out, launcher
        cores = os.cpu_count() or 1
        if launcher == "local" and study.ranks > cores:  # each rank a process of this machine
            raise UserError(f"study {study_path}: ranks {study.ranks:,} would start {study.ranks:,} processes per stage on this machine's "
                            f"{cores} cores; lower ranks (one per GPU, or a few CPU ranks) or run it under SLURM (--launcher srun)")
        self.state = out / STATE
        self.stages, self.rows = build_plan(study, out)
        self.configs = validate(self.stages, study_path)
        self._estimator = None
        self.relay = Relay()
        self.plan_text = plan_document(study, self.stages, self.rows)
        assign_keys(self.stages, self.plan_text, out / "plan.json")
        self.parallel = 1 if launcher == "srun" else study.parallel  # srun steps of one allocation: one at a time
        self.running: list[_Running] = []
        self.stop_signal: str | None = None
        self.stopped_at: str | None = None
        self._lock: Lock | None = None

    # --- the ranks the study began on
    def began_on(self) -> int:
        """The number of ranks the study's first run had (DIR/.experiment/ranks.json), or, before its first run, this one's."""
        try:
            return int(json.loads((self.state / "ranks.json").read_text())["ranks"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.study.ranks

    def launched(self, stage: Stage) -> Stage:
        """The stage as it runs now: a distill or finetune stage of a study run on other ranks than it began on with the
        micro batch and accumulation that keep its global batch (appended to its command; its key is the plan's)."""
        began = self.began_on()
        if stage.command not in BATCHED or began == stage.ranks:
            return stage
        from ds_distil.schema import commands

        cfg = commands.stage_config(commands.build_parser().parse_args(stage.args))
        micro, accum = cfg.train.micro_batch_size, cfg.train.grad_accum_steps
        g = micro * accum * began
        split = keep_global_batch(g, micro, stage.ranks)
        if split is None:
            raise UserError(f"study {self.study_path}: it began on {began} rank(s) and stage {stage.name} has a global batch of {g} "
                            f"(micro {micro} x accumulation {accum} x {began}), which {stage.ranks} rank(s) cannot keep; run it with "
                            f"ranks dividing {g}, or start the study again in a new --out")
        return dataclasses.replace(stage, args=[*stage.args, f"train.micro_batch_size={split[0]}", f"train.grad_accum_steps={split[1]}"])

    def resumes(self, stage: Stage) -> bool:
        """Whether a stage started earlier and not finished continues with --resume: distill and teacher-cache on any
        number of ranks; finetune on the ranks its attempt ran on (its marker's; elastic resume is distill's only), else
        it is redone from its start."""
        if self.status(stage) != "retry" or not stage.resumable:
            return False
        return stage.command != "finetune" or (self.marker(stage) or {}).get("ranks", self.began_on()) == stage.ranks

    # --- markers
    def marker_path(self, stage: Stage) -> Path:
        return self.state / "stages" / f"{stage.name}.json"

    def marker(self, stage: Stage) -> dict | None:
        p = self.marker_path(stage)
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def output_missing(self, stage: Stage) -> Path | None:
        """The file of a stage's output that says it finished (FINISHED), if it is not there."""
        path = stage.out / FINISHED[stage.command] if stage.command in FINISHED else stage.out
        return None if path.exists() else path

    def write_marker(self, stage: Stage, **fields) -> None:
        p = self.marker_path(stage)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, {"name": stage.name, "key": stage.key, "command": shown(stage, self.launcher, False), **fields})

    def status(self, stage: Stage) -> str:
        """done | stale (done with other settings) | lost (done, but its output is gone) | retry (started, not finished,
        same settings) | changed | new."""
        m = self.marker(stage)
        if m is None:
            return "new"
        if m.get("state") == "done":
            if m.get("key") != stage.key:
                return "stale"
            return "lost" if self.output_missing(stage) else "done"
        return "retry" if m.get("key") == stage.key else "changed"

    def log_path(self, stage: Stage) -> Path:
        return self.out / "logs" / f"{stage.name}.log"

    # --- estimates: the study's measured stage times, scaled to this machine by a probe (study/estimate.py)
    @property
    def estimator(self):
        if self._estimator is None:
            import torch

            from ds_distil.study.estimate import Estimator, stage_precision, teacher_precision

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            local = self.launcher == "local"  # srun stages run on the allocation's nodes, which this machine cannot probe
            self.precisions = {s.name: stage_precision(s.command, self.configs.get(s.name), device) for s in self.stages} if local else {}
            self.teacher_precisions = ({s.name: teacher_precision(s.command, self.configs.get(s.name), device) for s in self.stages}
                                       if local else {})
            self._estimator = Estimator(self.study, self.precisions, device) if local else Estimator(self.study, {}, torch.device("meta"))
        return self._estimator

    def stage_note(self, stage: Stage, with_minutes: bool = True) -> str:
        """`~3 min, bf16` (the stage's estimate here and the precision its training resolves to here)."""
        e = self.estimator.stage(stage.name)
        parts = [f"~{e.minutes:.1f} min"] if with_minutes and e.minutes is not None else []
        if e.precision:
            teacher = self.teacher_precisions.get(stage.name)
            parts.append(e.precision + (f", teacher {teacher}" if teacher else ""))
        return ", ".join(parts)

    def say_estimate(self, todo: list[Stage]) -> None:
        from ds_distil.study.estimate import LONG_MINUTES

        minutes, known = self.makespan(todo)
        print(f"{len(todo)} of {len(self.stages)} stages to run; estimated {minutes:.0f} min"
              + (f" with up to {self.parallel} at a time" if self.parallel > 1 else "")
              + ("" if known else " (some stages have no estimate)") + f" ({self.estimator.source()})", flush=True)
        if minutes > LONG_MINUTES:
            why = self.estimator.why_long([self.estimator.stage(s.name) for s in todo])
            print(f"experiment: NOTE: this study is estimated at {minutes:.0f} min on this machine, over {LONG_MINUTES} min: {why}",
                  flush=True)

    # --- the whole study
    def dry_run(self) -> int:
        self.check_owner()
        print(f"study {self.study.name} ({self.study_path}) -> {self.out}: {len(self.stages)} stages, launcher {self.launcher}"
              + (f", up to {self.parallel} at a time" if self.parallel > 1 else ""))
        if self.study.sized_down:
            print(f"sized down: {self.study.sized_down}")
        for i, s in enumerate(self.stages, 1):
            st = self.status(s)
            retry = "resume" if self.resumes(s) else "redo (it ran on other ranks)" if s.resumable else "redo"
            what = {"done": "done, skipped", "stale": "done with other settings: redo", "retry": f"started earlier: {retry}",
                    "changed": "started with other settings: redo", "new": "to run",
                    "lost": f"done, but {self.output_missing(s)} is gone: redo"}[st]
            note = self.stage_note(s, with_minutes=st != "done")
            print(f"[{i}/{len(self.stages)}] {s.name} ({what}{'; ' + note if note else ''})")
            print(f"    {shown(s if st == 'done' else self.launched(s), self.launcher, self.resumes(s))}")
        self.say_estimate([s for s in self.stages if self.status(s) != "done"])
        return 0

    def makespan(self, todo: list[Stage]) -> tuple[float, bool]:
        """Minutes to run `todo` as run() does (the first stage in plan order whose dependencies are done takes a free slot
        of `parallel`), each stage taking its estimate on this machine."""
        est = {s.name: self.estimator.stage(s.name).minutes for s in todo}
        pending, done = list(todo), {s.name for s in self.stages} - {s.name for s in todo}
        running: list[tuple[float, str]] = []
        now = 0.0
        while pending or running:
            while len(running) < self.parallel:
                ready = next_ready(pending, done)
                if ready is None:
                    break
                pending.remove(ready)
                running.append((now + (est[ready.name] or 0.0), ready.name))
            if not running:
                break
            running.sort()
            now, name = running.pop(0)
            done.add(name)
        return now, all(v is not None for v in est.values())

    def run(self) -> int:
        self.claim()
        try:
            return self._run_stages()
        finally:
            self.release()

    def _run_stages(self) -> int:
        self.write_plan()
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        todo = [s for s in self.stages if self.status(s) != "done"]
        for s in todo:  # refused before anything runs where the global batch cannot be kept
            self.launched(s)
        if self.began_on() != self.study.ranks:
            print(f"experiment: the study began on {self.began_on()} rank(s) and runs on {self.study.ranks} now: its distill and "
                  "finetune stages keep their global batch (micro x accumulation x ranks)", flush=True)
        elif not (self.state / "ranks.json").exists():
            atomic_write_json(self.state / "ranks.json", {"ranks": self.study.ranks})
        lost = [s for s in todo if self.status(s) == "lost"]
        if lost:
            print(f"experiment: {len(lost)} stage(s) marked done have lost their output, redone from scratch: "
                  + ", ".join(f"{s.name} ({self.output_missing(s)} is gone)" for s in lost[:6]) + (" ..." if len(lost) > 6 else ""),
                  flush=True)
        stale = [s.name for s in todo if self.status(s) in ("stale", "changed")]
        if stale:
            print(f"experiment: settings changed for {len(stale)} stage(s) (and what depends on them), redone from scratch: "
                  + ", ".join(stale[:6]) + (" ..." if len(stale) > 6 else ""), flush=True)
        print(f"experiment: study {self.study.name} -> {self.out}: {len(self.stages) - len(todo)} of {len(self.stages)} stages done earlier, "
              f"{len(todo)} to run" + (f", up to {self.parallel} at a time" if self.parallel > 1 else ""), flush=True)
        self.say_estimate(todo)
        t_study = time.time()
        done = {s.name for s in self.stages if s not in todo}
        index = {s.name: i for i, s in enumerate(self.stages, 1)}
        running: list[_Running] = []
        failed: list[tuple[Stage, int]] = []
        while todo or running:
            # start what may start: in plan order, dependencies finished, up to `parallel` at a time
            while not (self.stop_signal or failed) and len(running) < self.parallel:
                ready = next_ready(todo, done)
                if ready is None:
                    break
                todo.remove(ready)
                running.append(self._start(ready, index[ready.name]))
            for r in [r for r in running if r.finished()]:
                running.remove(r)
                code = self._finish(r)
                if code == 0:
                    done.add(r.stage.name)
                elif not self.stop_signal:
                    failed.append((r.stage, code))
            if not running and (self.stop_signal or failed or next_ready(todo, done) is None):
                break
            self.relay.poll([(r.stage.name, self.log_path(r.stage)) for r in running])
            time.sleep(0.2)
        if failed:
            return self._failed(*failed[0])
        if self.stop_signal:
            return self._stopped(todo[0] if todo else None)
        if todo:  # cannot happen with a consistent plan: a dependency that is never run
            raise UserError(f"stage {todo[0].name} waits for stages that are not in the plan: {todo[0].deps}")
        print(f"experiment: done in {time.time() - t_study:.0f} s; tables: {self.out / 'report' / 'tables.md'}", flush=True)
        return 0

    def check_owner(self) -> None:
        """DIR is new, empty, or this study's (DIR/.experiment/study.json names it)."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file; pass a directory")
        if self.out.is_dir() and any(self.out.iterdir()) and not self.state.is_dir():
            raise UserError(f"--out {self.out} is not empty and is not a study's output (no {STATE}/); choose a new directory")
        owner = self.state / "study.json"
        if owner.exists():
            name = json.loads(owner.read_text()).get("name")
            if name != self.study.name:
                raise UserError(f"--out {self.out} holds the study '{name}', not '{self.study.name}'; use another --out "
                                "(or rename the study back)")

    def claim(self) -> None:
        """check_owner, then one runner at a time: DIR/.experiment/lock, held until `release` (the kernel drops it
        if the process dies first)."""
        self.check_owner()
        self.state.mkdir(parents=True, exist_ok=True)
        owner = self.state / "study.json"
        if not owner.exists():
            owner.write_text(json.dumps({"name": self.study.name}))
        try:
            self._lock = Lock(self.state / "lock", "experiment")
        except UserError as e:  # "DIR/.experiment is in use by another ds-distil run (pid, host, since); wait ..."
            raise UserError(f"--out {self.out}: {e}") from None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_plan(self) -> None:
        for name, text in (("plan.json", self.plan_text), ("study.yaml", self._study_yaml())):
            atomic_write(self.out / name, text)

    def _study_yaml(self) -> str:
        import yaml

        return f"# resolved from {self.study_path}\n" + yaml.safe_dump(to_dict(self.study), sort_keys=False)

    # --- one stage
    def _start(self, stage: Stage, index: int) -> _Running:
        resume = self.resumes(stage)
        if not resume and stage.out.exists():
            if self.marker(stage) is None:
                raise UserError(f"{stage.out} exists but no stage of this study made it; move it away and run again")
            shutil.rmtree(stage.out)  # ours (its marker says so): partial, or made for settings that changed
        self.write_marker(stage, state="running", started=time.strftime("%Y-%m-%d %H:%M:%S"), ranks=stage.ranks)
        logf = self.log_path(stage)
        logf.parent.mkdir(parents=True, exist_ok=True)
        stage = self.launched(stage)
        cmd = shown(stage, self.launcher, resume)
        note = self.stage_note(stage)
        self.relay.newline()
        print(f"[{index}/{len(self.stages)}] {stage.name}{' (resuming)' if resume else ''}"
              f"{f' ({note})' if note else ''}: {cmd}", flush=True)
        f = open(logf, "a")
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {cmd}\n")
        f.flush()
        argvs = launch_argv(stage, self.launcher)
        if resume:
            argvs = [a + ["--resume"] for a in argvs]
        env = dict(os.environ)
        if len(argvs) > 1:  # local ranks: what srun or torchrun would set
            env.update(WORLD_SIZE=str(len(argvs)), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(argvs))))
        procs = []
        for rank, argv in enumerate(argvs):
            penv = dict(env, RANK=str(rank), LOCAL_RANK=str(rank)) if len(argvs) > 1 else env
            # a session of its own: a terminal's Ctrl-C reaches the runner only, which asks the stage to stop cleanly
            procs.append(subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=penv, start_new_session=True))
        r = _Running(stage, procs, f, time.time())
        self.running.append(r)
        if self.stop_signal:  # a signal came while starting
            r.signal()
        return r

    def _finish(self, r: _Running) -> int:
        self.running.remove(r)
        r.log.close()
        code = next((c for c in r.codes() if c != 0), 0)
        seconds = time.time() - r.t0
        self.relay.newline()
        if code == 0:
            e = self.estimator.stage(r.stage.name)  # this machine's estimate, as the plan said it: the report's column
            self.write_marker(r.stage, state="done", seconds=round(seconds, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                              estimate_min=round(e.minutes, 3) if e.scaled else None)
            print(f"    {r.stage.name}: done in {seconds:.0f} s{self._summary(r.stage)}", flush=True)
        return code

    def _on_signal(self, signum, _frame) -> None:
        first = self.stop_signal is None
        self.stop_signal = self.stop_signal or signal.Signals(signum).name
        if first:
            self.relay.newline()
            print(f"experiment: got {signal.Signals(signum).name}: asking the running stage(s) to stop at a safe point", flush=True)
            self.stopped_at = ", ".join(r.stage.name for r in self.running) or None
            for r in list(self.running):
                r.signal()

    def _summary(self, stage: Stage) -> str:
        if stage.command == "finetune":
            try:
                r = json.loads((stage.out / "results.json").read_text())
                return f": test {r['metric']} {r['score']:.4f} (valid {r['valid_score']:.4f}), training {r['train_runtime_s']:.0f} s"
            except (OSError, KeyError, TypeError, json.JSONDecodeError):
                return ""
        return ""

    def _stopped(self, stage: Stage | None) -> int:
        where = f" at stage {self.stopped_at or (stage.name if stage else '?')}"
        print(f"experiment: stopped by {self.stop_signal}{where}; run the same command again to continue "
              "(finished stages are kept, a distillation resumes from its checkpoint)", flush=True)
        return EXIT_PREEMPTED

    def _failed(self, stage: Stage, code: int) -> int:
        logf = self.log_path(stage)
        error = ""
        try:
            lines = logf.read_text(errors="replace").splitlines()
            errors = [ln for ln in lines if re.match(r"^ds-distil [\w -]+: error: ", ln)]
            error = errors[-1] if errors else next((ln for ln in reversed(lines) if ln.strip()), "")
        except OSError:
            pass
        print(f"experiment: stage {stage.name} failed (exit status {code}): {error.strip()[:400]}; its log: {logf}",
              file=sys.stderr, flush=True)
        return 1


def run_experiment(study_path: str, out: str, dry_run: bool = False, launcher: str = "local", overrides: list[str] = ()) -> int:
    study = load_study(study_path, overrides)
    runner = Runner(study, Path(study_path), Path(out), launcher)
    return runner.dry_run() if dry_run else runner.run()
