"""Loading the tokenizer, and the vocabulary fingerprint that ties shards, teacher and student together."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ds_distil.core.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_SPECIALS = ("pad_token", "cls_token", "sep_token", "mask_token")


def _bare_wordpiece_lowercase(directory: Path) -> bool | None:
    """For a directory with vocab.txt but no tokenizer_config.json: should it lowercase?

    transformers then falls back to BertTokenizer's default `do_lower_case=True`, which silently
    turns a cased vocabulary such as mBERT's into an uncased tokenizer. Take the answer from
    tokenizer.json's normalizer when there is one, otherwise from the vocabulary itself (a cased
    vocabulary has upper-case word pieces).
    """
    if (directory / "tokenizer_config.json").exists() or not (directory / "vocab.txt").exists():
        return None
    tj = directory / "tokenizer.json"
    if tj.exists():
        normalizer = json.loads(tj.read_text(encoding="utf-8")).get("normalizer") or {}
        if "lowercase" in normalizer:
            return bool(normalizer["lowercase"])
    with open(directory / "vocab.txt", encoding="utf-8") as f:
        cased = any(tok[:1].isupper() and not tok.startswith("[") for tok in (line.rstrip("\n") for line in f))
    return not cased


def looks_like_path(name: str) -> bool:
    """Hub names are `name` or `owner/name`; anything else with a slash is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def load_tokenizer(name_or_path: str):
    """A hub name or a local directory -> a fast tokenizer with [PAD]/[CLS]/[SEP]/[MASK] defined."""
    from transformers import AutoTokenizer, BertTokenizer

    path = Path(name_or_path)
    try:
        if path.is_dir():
            lowercase = _bare_wordpiece_lowercase(path)
            if lowercase is not None:
                log.info("tokenizer %s has no tokenizer_config.json: WordPiece with do_lower_case=%s", path, lowercase)
                tok = BertTokenizer.from_pretrained(str(path), do_lower_case=lowercase)
            else:
                tok = AutoTokenizer.from_pretrained(str(path))
        elif path.exists():
            raise UserError(f"tokenizer {name_or_path} is a file; pass a tokenizer directory or a hub name")
        elif looks_like_path(name_or_path):
            raise UserError(f"tokenizer directory {name_or_path} does not exist; check the path")
        else:
            tok = AutoTokenizer.from_pretrained(name_or_path)
    except UserError:
        raise
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
        raise UserError(
            f"cannot load tokenizer '{name_or_path}'{hint}: {str(e).splitlines()[0]}; pass a local tokenizer "
            "directory (e.g. ../shared/data/mbert_tokenizer) or download it first with network access"
        ) from None
    except Exception as e:  # an empty or broken directory: transformers raises ValueError, TypeError, KeyError, JSON errors...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(
            f"cannot load tokenizer '{name_or_path}' ({type(e).__name__}: {first}); a tokenizer directory needs vocab.txt "
            "or tokenizer.json (write one with tokenizer.save_pretrained(DIR))"
        ) from None
    missing = [s for s in REQUIRED_SPECIALS if getattr(tok, s + "_id", None) is None]
    if missing:
        raise UserError(f"tokenizer '{name_or_path}' defines no {', '.join(missing)}; MLM distillation needs them")
    return tok


PROBE = "Magandang umaga sa inyong lahat! Kumusta ka? Hello, world: 1, 2, 3."


def probe(tokenizer, name: str) -> None:
    """Refuse a tokenizer that loads but cannot tokenize: a probe sentence that comes out empty or all
    [UNK] (e.g. a directory holding only tokenizer_config.json gives a vocabulary of special tokens)."""
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        what = "no tokens" if not ids else f"only {tokenizer.unk_token or '[UNK]'} ({len(ids)} of them)"
        raise UserError(f"tokenizer '{name}' turns the probe sentence {PROBE!r} into {what} (vocabulary of {len(tokenizer)}); "
                        "it cannot tokenize text (its vocabulary, vocab.txt or tokenizer.json, is missing or for another script): "
                        "pass a complete tokenizer directory")


def vocab_hash(tokenizer) -> str:
    """sha256 over the vocabulary as (id, token) pairs in id order: equal iff the vocabularies are equal."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_info(tokenizer, name: str) -> dict:
    """What a manifest records about the tokenizer that made it."""
    lowercase = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.normalizer is not None:
        state = json.loads(backend.normalizer.__getstate__())
        lowercase = state.get("lowercase")
    return {
        "name": name,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": vocab_hash(tokenizer),
        "lowercase": lowercase,
        "pad_id": tokenizer.pad_token_id,
        "cls_id": tokenizer.cls_token_id,
        "sep_id": tokenizer.sep_token_id,
        "mask_id": tokenizer.mask_token_id,
        "unk_id": tokenizer.unk_token_id,
        "special_ids": sorted(set(tokenizer.all_special_ids)),
    }
