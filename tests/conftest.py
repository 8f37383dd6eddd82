"""Shared fixtures. Tests that need ../shared/data skip without it, unless DS_DISTIL_REQUIRE_DATA=1 (CI)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ds_distil.core import env_info

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist (`make test` runs 2 workers): each worker, and the processes its tests start, gets its share
# of the cores; torch's default of one thread per core in every worker would oversubscribe them.
# Set before any test module imports torch; an OMP_NUM_THREADS of the user's own wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


# `auto` precision follows the CPU (bf16 where it is native: runtime/precision.py). The suite pins the CPU's answer to
# "no native bf16" so that what it runs, and the figures it compares, are the same on every CPU kind; the tests of the
# rule itself force either answer. A value of the caller's own wins.
os.environ.setdefault("DS_DISTIL_CPU_BF16", "0")


def shared_data_dir() -> Path | None:
    path = Path(os.environ.get("DS_DISTIL_DATA", ROOT.parent / "shared" / "data"))
    return path if (path / "corpus").is_dir() and (path / "mbert_tokenizer").is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        msg = "../shared/data not found (set DS_DISTIL_DATA to the data directory)"
        if os.environ.get("DS_DISTIL_REQUIRE_DATA") == "1":
            pytest.fail(msg + "; DS_DISTIL_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def corpus(data_dir: Path) -> Path:
    return data_dir / "corpus" / "tl_corpus_combined.txt"


@pytest.fixture(scope="session")
def mbert_tokenizer_dir(data_dir: Path) -> Path:
    return data_dir / "mbert_tokenizer"


@pytest.fixture(scope="session")
def corpus_docs(corpus: Path) -> list[str]:
    with open(corpus, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def run_prepare(out: Path, inputs, tokenizer, **overrides):
    from ds_distil.data.shards import prepare
    from ds_distil.schema.prepare import PrepareConfig

    cfg = PrepareConfig(out=str(out), input=[str(p) for p in inputs], tokenizer=str(tokenizer), **overrides)
    return prepare(cfg)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """DIR/name, made by build(DIR/name) once for the whole test run: under pytest-xdist every worker
    is a session of its own, so the first one builds it (holding a file lock) and the others wait and
    share it. Read-only for the tests, like any session fixture."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(name) / name
        build(out)
        return out
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    out, done = root / "shared" / name, root / "shared" / f"{name}.done"
    out.parent.mkdir(exist_ok=True)
    with FileLock(str(root / "shared" / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # what a worker that failed half-way left
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def full_shards(tmp_path_factory, corpus, mbert_tokenizer_dir) -> Path:
    """The whole real corpus, in corpus order (no document shuffle), 4096 samples per shard."""
    return built_once(tmp_path_factory, "full-shards",
                      lambda out: run_prepare(out, [corpus], mbert_tokenizer_dir, doc_shuffle_buffer=0, seed=0))


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, corpus, mbert_tokenizer_dir) -> Path:
    """3,000 real documents in many small shards (uneven: the last shard is partial)."""
    return built_once(tmp_path_factory, "small-shards",
                      lambda out: run_prepare(out, [corpus], mbert_tokenizer_dir, max_docs=3000, samples_per_shard=150,
                                              val_fraction=0.05, seed=1))


def free_port() -> str:
    """A port the OS has just found free, for a torchrun rendezvous: tests run side by side (pytest -n 2),
    so a port derived from the pid could collide with another test's."""
    return str(env_info.free_port())


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ds_distil", *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory, small_shards) -> Path:
    """A target-language vocabulary of small_shards (every seen token, every single character)."""
    from ds_distil.data.vocab import build_vocab
    from ds_distil.schema.vocab import VocabConfig

    return built_once(tmp_path_factory, "small-vocab",
                      lambda out: build_vocab(VocabConfig(shards=str(small_shards), out=str(out), report_data="none")))


def tree(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its sha256: byte-identical means equal."""
    return {str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.rglob("*")) if f.is_file()}


def one_line_error(proc, *needles):
    """A refused command: exit status 2 and exactly one 'error:' line holding every needle; returns that line."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def pytest_collection_modifyitems(items):
    """Tests marked slow first (a stable sort): under pytest-xdist the long ones start early and the short
    ones fill the gaps at the end, instead of one worker finishing a long test while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def objective_losses(cfg, student_logits, labels, n_masked, teacher_logits=None, student_hidden=None, teacher_hidden=None,
                     n_hidden=1.0, hidden_weights=None) -> dict:
    """The run's objective on bare tensors (the KD objective, or MLM without teacher logits): {"total", and each term}.
    Logits are [M, vocab] at the masked positions, labels [M] (-100: an empty slot); hidden states [N, H]."""
    from types import SimpleNamespace

    import torch

    from ds_distil.distill.objectives.kd import KD
    from ds_distil.distill.objectives.mlm import MLM

    objective = KD(cfg) if teacher_logits is not None else MLM()
    batch = SimpleNamespace(targets=labels, masked=(labels != -100).float(), real=hidden_weights)  # what the objectives read

    from ds_distil.model.forward import Outputs

    def out(logits, hidden):
        return Outputs(logits, {-1: hidden} if hidden is not None else {})

    total, means = objective.loss(out(student_logits, student_hidden),
                                  out(teacher_logits, teacher_hidden) if teacher_logits is not None else None, batch,
                                  torch.tensor([float(n_masked), float(n_hidden), 1.0]))
    return {"total": total, **{t.name: m for t, m in zip(objective.terms, means)}}
