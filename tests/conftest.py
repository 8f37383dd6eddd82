"""Shared fixtures. Tests that need ../shared/data skip without it, unless DS_DISTIL_REQUIRE_DATA=1 (CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    from ds_distil.config import PrepareConfig
    from ds_distil.data.shards import prepare

    cfg = PrepareConfig(out=str(out), input=[str(p) for p in inputs], tokenizer=str(tokenizer), **overrides)
    return prepare(cfg)


@pytest.fixture(scope="session")
def full_shards(tmp_path_factory, corpus, mbert_tokenizer_dir) -> Path:
    """The whole real corpus, in corpus order (no document shuffle), 4096 samples per shard."""
    out = tmp_path_factory.mktemp("full") / "shards"
    run_prepare(out, [corpus], mbert_tokenizer_dir, doc_shuffle_buffer=0, seed=0)
    return out


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, corpus, mbert_tokenizer_dir) -> Path:
    """3,000 real documents in many small shards (uneven: the last shard is partial)."""
    out = tmp_path_factory.mktemp("small") / "shards"
    run_prepare(out, [corpus], mbert_tokenizer_dir, max_docs=3000, samples_per_shard=150, val_fraction=0.05, seed=1)
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ds_distil", *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory, small_shards) -> Path:
    """A target-language vocabulary of small_shards (every seen token, every single character)."""
    from ds_distil.vocab import VocabConfig, build_vocab

    out = tmp_path_factory.mktemp("small-vocab") / "vocab"
    build_vocab(VocabConfig(shards=str(small_shards), out=str(out), report_data="none"))
    return out


def one_line_error(proc, *needles):
    """A refused command: exit status 2 and exactly one 'error:' line holding every needle; returns that line."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
