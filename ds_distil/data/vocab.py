"""Target-language vocabulary: keep the mBERT tokens a language uses, drop the rest.

A single-language student does not need a multilingual vocabulary: mBERT's 119,547 rows are 92M of
dBERT Base's 135M parameters and 37.5M of dBERT Tiny's 42M, and the LM head over them is the most
expensive part of a distillation step. `ds-distil vocab` counts the token ids of prepared training
shards and keeps

* every special token ([PAD], [UNK], [CLS], [SEP], [MASK]),
* every single-character token and its `##` continuation (`single_chars: all`), or only those of
  characters the corpus uses (`seen`): a word made of kept characters always has a tokenization,
  so such text never becomes [UNK],
* the corpus tokens by one rule: seen at least `min_count` times (default 1: every token of the
  training data, so the student sees exactly the teacher's segmentation of it), or the most
  frequent ones up to a `coverage` of the training tokens, or up to a total `max_size`.

WordPiece is greedy longest-match-first, so a tokenizer whose vocabulary is a subset of the
original's that holds every token the original produced for a text produces the same tokens for
it (any longer match it could take would be a longer match of the original's as well). That makes
the trimmed tokenizer tokenize the training corpus identically, up to the id renumbering (tested).

VOCAB_DIR holds the tokenizer (`AutoTokenizer.from_pretrained(VOCAB_DIR)`: same normaliser and
pre-tokenizer as the original, ids renumbered in the original order), `vocab_map.json` (the kept
original ids: new id = position in the list; the source tokenizer's and shards' fingerprints) and
`vocab_report.json`. Distillation uses it with `student.vocab: VOCAB_DIR`; `ds-distil trim`
applies it to a model that already exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from pydantic import Field, model_validator

from ds_distil.core.checked import Checked, Count, Positive, Sha256, read_checked
from ds_distil.core.errors import UserError, os_errors_at
from ds_distil.data.samples import read_shard
from ds_distil.schema.vocab import VocabConfig

log = logging.getLogger(__name__)

MAP_FILE = "vocab_map.json"
REPORT_FILE = "vocab_report.json"
FORMAT = "ds-distil-vocab/1"


# ------------------------------------------------------------------------------ the id map


class _Source(Checked):
    vocab_size: Positive
    vocab_sha256: Sha256
    special_ids: list[Count] = []


class _CountedShards(Checked):
    directory: str
    train_sha256: Sha256


class VocabMapFile(Checked):
    """vocab_map.json, as its readers rely on it."""

    kept_ids: Annotated[list[Count], Field(min_length=1)]
    source: _Source
    shards: _CountedShards
    trimmed_vocab_sha256: Sha256

    @model_validator(mode="after")
    def _ascending_ids_in_the_vocabulary(self):
        kept = self.kept_ids
        if any(b <= a for a, b in zip(kept, kept[1:])) or kept[-1] >= self.source.vocab_size:
            raise ValueError(f"kept_ids must be distinct original ids in ascending order below {self.source.vocab_size}")
        return self


@dataclasses.dataclass
class VocabMap:
    directory: Path
    kept: np.ndarray  # original ids, ascending; the new id of kept[i] is i
    source: dict  # the original tokenizer: vocab_size, vocab_sha256
    shards: dict  # the shards counted: directory, train_sha256
    trimmed_sha256: str

    @property
    def size(self) -> int:
        return len(self.kept)

    @property
    def content_sha256(self) -> str:
        """The kept ids and the tokenizers they map between: what a resumed run must find again."""
        return hashlib.sha256(json.dumps([self.kept.tolist(), self.source["vocab_sha256"], self.trimmed_sha256]).encode()).hexdigest()

    def old_to_new(self, unk_new: int) -> torch.Tensor:
        """[original vocab] -> new ids; tokens not kept map to `unk_new`."""
        table = torch.full((int(self.source["vocab_size"]),), unk_new, dtype=torch.long)
        table[torch.from_numpy(self.kept)] = torch.arange(self.size)
        return table

    def is_kept(self) -> torch.Tensor:
        mask = torch.zeros(int(self.source["vocab_size"]), dtype=torch.bool)
        mask[torch.from_numpy(self.kept)] = True
        return mask

    def check_shards(self, manifest) -> None:
        """The map must come from these shards' tokenizer, and from these training shards."""
        tok = manifest.tokenizer
        if tok["vocab_sha256"] != self.source["vocab_sha256"] or int(tok["vocab_size"]) != int(self.source["vocab_size"]):
            raise UserError(f"vocabulary {self.directory} was chosen for tokenizer sha256 {self.source['vocab_sha256'][:12]} "
                            f"(vocab {self.source['vocab_size']}), but {manifest.directory} was made with sha256 "
                            f"{tok['vocab_sha256'][:12]} (vocab {tok['vocab_size']}); run `ds-distil vocab --shards {manifest.directory}`")
        if train_digest(manifest) != self.shards["train_sha256"]:
            raise UserError(f"vocabulary {self.directory} was counted on other training shards ({self.shards['directory']}) than "
                            f"{manifest.directory}; run `ds-distil vocab --shards {manifest.directory} --out DIR` for these")


def train_digest(manifest) -> str:
    return hashlib.sha256("".join(s.sha256 for s in manifest.shards("train")).encode()).hexdigest()


def load_vocab_map(directory: str | Path) -> VocabMap:
    """VOCAB_DIR -> VocabMap, every part checked (one-line errors)."""
    from ds_distil.data.tokenizer import load_tokenizer, vocab_hash

    d = Path(directory)
    path = d / MAP_FILE
    if not path.is_file():
        raise UserError(f"{d} is not a vocabulary directory (no {MAP_FILE}); make one with `ds-distil vocab --shards ... --out {d}`")
    data = read_checked(path, FORMAT, VocabMapFile, "it is damaged: make the vocabulary again with `ds-distil vocab`",
                        "make it again with `ds-distil vocab`")
    kept = np.asarray(data["kept_ids"], dtype=np.int64)
    source, shards, trimmed = data["source"], data["shards"], data["trimmed_vocab_sha256"]
    lost = sorted(set(source.get("special_ids", [])) - set(kept.tolist()))
    if lost:
        raise UserError(f"{path} drops the special token id(s) {lost} of the original tokenizer; every special token must be kept "
                        "(make the vocabulary again with `ds-distil vocab`)")
    tok = load_tokenizer(str(d))
    if vocab_hash(tok) != trimmed or len(tok) != len(kept):
        raise UserError(f"the tokenizer in {d} is not the one {MAP_FILE} describes (vocab {len(tok)}, {len(kept)} kept ids); "
                        "make the vocabulary again with `ds-distil vocab`")
    missing = [n for n in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token") if getattr(tok, n + "_id", None) is None]
    if missing:
        raise UserError(f"vocabulary {d} lacks the special token(s) {', '.join(missing)}; every special token must be kept")
    return VocabMap(d, kept, source, shards, trimmed)


# ------------------------------------------------------------------------- counting, choosing


def count_tokens(manifest, split: str = "train") -> np.ndarray:
    """How often each original id occurs in a split's real (non-padding) tokens; the shards are
    checked against the manifest's sha256 first."""
    manifest.verify(split, checksums=True)
    vocab, pad = int(manifest.tokenizer["vocab_size"]), int(manifest.tokenizer["pad_id"])
    counts = np.zeros(vocab, dtype=np.int64)
    for shard in manifest.shards(split):
        for ids, _ in read_shard(shard.path, manifest.seq_len, vocab, shard.samples):
            counts += np.bincount(ids[ids != pad], minlength=vocab)[:vocab]
    return counts


def choose(counts: np.ndarray, tokenizer, cfg: VocabConfig) -> tuple[np.ndarray, dict[str, int]]:
    """The kept original ids (ascending) and how many each rule added."""
    vocab = tokenizer.get_vocab()
    inv = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_ids)
    counts = counts.copy()
    counts[list(special)] = 0  # special tokens are kept anyway and do not count as corpus tokens
    order = np.argsort(-counts, kind="stable")
    seen = order[counts[order] > 0]
    if cfg.coverage is not None:
        cum = np.cumsum(counts[seen]) / counts.sum()
        corpus = seen[: int(np.searchsorted(cum, cfg.coverage - 1e-12)) + 1]
    elif cfg.max_size is not None:
        corpus = seen  # cut below, once special and character tokens are counted
    else:
        corpus = seen[counts[seen] >= cfg.min_count]

    if cfg.single_chars == "all":
        chars = {t for t in vocab if len(t) == 1 and vocab[t] not in special}
    else:
        chars = {c for i in seen for c in inv[int(i)].removeprefix("##")}
    char_ids = {vocab[t] for c in chars for t in (c, "##" + c) if t in vocab}
    kept = set(special) | char_ids
    added_chars = len(kept) - len(special)
    if cfg.max_size is not None:
        if cfg.max_size < len(kept):
            raise UserError(f"max_size {cfg.max_size} is smaller than the special and single-character tokens alone ({len(kept)}); "
                            "raise it, or use single_chars=seen")
        for i in corpus:
            if len(kept) >= cfg.max_size:
                break
            kept.add(int(i))
    else:
        kept.update(int(i) for i in corpus)
    breakdown = {"special": len(special), "single_chars": added_chars, "corpus": len(kept) - len(special) - added_chars}
    return np.array(sorted(kept), dtype=np.int64), breakdown


def trimmed_tokenizer(tokenizer, kept: np.ndarray):
    """The same tokenizer (normaliser, pre-tokenizer, special tokens, casing) over the kept tokens only,
    renumbered in the original order."""
    from transformers import BertTokenizer

    if type(tokenizer).__name__ not in ("BertTokenizer", "BertTokenizerFast"):
        raise UserError(f"vocabulary trimming supports WordPiece (BERT) tokenizers; this one is {type(tokenizer).__name__}")
    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    kw = tokenizer.init_kwargs
    new = BertTokenizer(vocab={inv[int(i)]: n for n, i in enumerate(kept)}, do_lower_case=kw.get("do_lower_case", False),
                        tokenize_chinese_chars=kw.get("tokenize_chinese_chars", True), strip_accents=kw.get("strip_accents"),
                        unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
                        cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
                        model_max_length=tokenizer.model_max_length)
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        a, b = getattr(tokenizer.backend_tokenizer, part), getattr(new.backend_tokenizer, part)
        if (a.__getstate__() if a else None) != (b.__getstate__() if b else None):
            raise UserError(f"the trimmed tokenizer's {part} differs from the original's; this tokenizer cannot be trimmed faithfully")
    return new


# ---------------------------------------------------------------------------------- report


def _texts(data_dir: Path) -> dict[str, list[str]]:
    """Downstream texts to report on: whatever of ../shared/data's sets is there."""
    from ds_distil.data.tasks import load_task, read_articles

    out: dict[str, list[str]] = {}
    for name, sub in (("hatespeech", "hatespeech"), ("pos", "ud_pos"), ("ner", "uner_ner")):
        if (data_dir / sub).is_dir():
            task = load_task(name, str(data_dir / sub))
            for split, examples in task.splits.items():
                out[f"{name}/{split}"] = [" ".join(e.text) if isinstance(e.text, list) else e.text for e in examples]
    if (data_dir / "fakenews" / "full.csv").is_file():
        out["fakenews/articles"] = read_articles(data_dir / "fakenews" / "full.csv")
    return out


def tokenization_stats(texts: list[str], full, trimmed, kept_mask: torch.Tensor) -> dict[str, float]:
    """[UNK] tokens per word and tokens per word with each tokenizer (per word: a tokenizer that splits words
    into more pieces must not look better by a smaller share of [UNK] tokens), and the share of the full
    tokenizer's tokens that are not kept."""
    words = sum(len(t.split()) for t in texts)
    out = {"texts": len(texts), "words": words}
    for name, tok in (("full", full), ("trimmed", trimmed)):
        ids = [i for row in tok(texts, add_special_tokens=False)["input_ids"] for i in row]
        out[f"{name}_tokens_per_word"] = len(ids) / max(words, 1)
        out[f"{name}_unk_per_word"] = sum(i == tok.unk_token_id for i in ids) / max(words, 1)
        if name == "full":
            out["full_tokens_not_kept"] = float((~kept_mask[torch.tensor(ids, dtype=torch.long)]).float().mean()) if ids else 0.0
    return out


def build_vocab(cfg: VocabConfig) -> dict:
    """The `ds-distil vocab` command: count, choose, write VOCAB_DIR; returns the report."""
    from ds_distil.core.rundir import claim
    from ds_distil.data.manifest import load_manifest
    from ds_distil.data.tokenizer import load_tokenizer

    manifest = load_manifest(cfg.shards)
    full = load_tokenizer(str(manifest.tokenizer_dir))
    counts = count_tokens(manifest, "train")
    for path in cfg.extra_text:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"extra_text file {p} does not exist")
        lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in full(lines, add_special_tokens=False)["input_ids"]:
            counts += np.bincount(np.asarray(row, dtype=np.int64), minlength=len(counts))[: len(counts)]
    kept, breakdown = choose(counts, full, cfg)
    trimmed = trimmed_tokenizer(full, kept)

    with claim(cfg.out, "vocab", overwrite=cfg.overwrite, inputs=[cfg.shards, *cfg.extra_text]) as rd:
        report = _write(rd.path, cfg, manifest, full, trimmed, counts, kept, breakdown)
        rd.commit()
    return report


def _write(tmp: Path, cfg: VocabConfig, manifest, full, trimmed, counts: np.ndarray, kept: np.ndarray, breakdown: dict) -> dict:
    from ds_distil.data.tasks import default_data_dir
    from ds_distil.data.tokenizer import vocab_hash

    with os_errors_at(tmp):
        trimmed.save_pretrained(str(tmp))
    special = sorted(set(full.all_special_ids))
    total = int(counts.sum() - counts[special].sum())
    kept_mask = torch.zeros(len(full), dtype=torch.bool)
    kept_mask[torch.from_numpy(kept)] = True
    report = {
        "kept": len(kept), "original": len(full), "kept_fraction": len(kept) / len(full), "breakdown": breakdown,
        "rule": ("coverage" if cfg.coverage is not None else "max_size" if cfg.max_size is not None else "min_count"),
        "config": dataclasses.asdict(cfg),
        "train_tokens": total,
        "train_coverage": float(counts[kept].sum() - counts[special].sum()) / max(total, 1),
        "train_distinct_ids": int((counts > 0).sum()),
    }
    val_texts = []
    if "val" in manifest.data["splits"] and manifest.num_samples("val"):
        val_counts = count_tokens(manifest, "val")
        val_total = int(val_counts.sum() - val_counts[special].sum())
        report["val_coverage"] = float(val_counts[kept].sum() - val_counts[special].sum()) / max(val_total, 1)
        val_texts = _val_texts(manifest, full)
    data_dir = None if cfg.report_data == "none" else Path(cfg.report_data) if cfg.report_data else default_data_dir()
    sets = {"val (decoded samples)": val_texts} if val_texts else {}
    if data_dir is not None and data_dir.is_dir():
        sets.update(_texts(data_dir))
    report["sets"] = {name: tokenization_stats(texts, full, trimmed, kept_mask) for name, texts in sets.items() if texts}
    mapping = {"format": FORMAT, "kept_ids": kept.tolist(),
               "source": {"name": manifest.tokenizer["name"], "vocab_size": len(full), "vocab_sha256": vocab_hash(full),
                          "special_ids": special},
               "shards": {"directory": str(Path(cfg.shards).resolve()), "train_sha256": train_digest(manifest)},
               "trimmed_vocab_sha256": vocab_hash(trimmed)}
    (tmp / MAP_FILE).write_text(json.dumps(mapping))
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report


def _val_texts(manifest, tokenizer, limit: int = 2000) -> list[str]:
    """The validation samples decoded back to text (word boundaries at sample edges are cut)."""
    texts = []
    vocab = int(manifest.tokenizer["vocab_size"])
    for shard in manifest.shards("val"):
        for ids, _ in read_shard(shard.path, manifest.seq_len, vocab, shard.samples):
            texts.append(tokenizer.decode(ids.tolist(), skip_special_tokens=True))
            if len(texts) >= limit:
                return texts
    return texts
