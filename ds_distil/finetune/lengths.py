"""How much text task.max_length cuts, and `task.max_length: auto`.

Lengths are counted in the model's tokens with the special tokens ([CLS], [SEP]; both texts of a
pair), before truncation, as the model would see them without a limit. An example is truncated when
it is longer than max_length; the tokens cut are the difference (for pairs the tokenizer takes them
from the longer text first, the total is the same).

`auto` takes the length that covers AUTO_PERCENTILE% of the training examples, rounded up to a
multiple of 8, at least 16 and at most AUTO_CAP or the model's position embeddings (the smaller):
attention costs grow with the square of the length, so a few very long examples should not set it.
"""

from __future__ import annotations

import math

from ds_distil.data.examples import Task
from ds_distil.schema.finetune import AUTO_CAP, AUTO_MIN, AUTO_PERCENTILE

WARN_SHARE = 0.05  # more than this share of a split's examples truncated: warn


def token_lengths(task: Task, split: str, tokenizer) -> list[int]:
    """Tokens per example of a split without truncation, special tokens included."""
    examples = task.splits[split]
    if task.kind == "token":
        enc = tokenizer([e.text for e in examples], is_split_into_words=True, truncation=False, verbose=False)
    else:
        pairs = [e.text_pair for e in examples] if task.kind == "pair" else None
        enc = tokenizer([e.text for e in examples], pairs, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def percentile(lengths: list[int], q: float) -> int:
    """The smallest length at least q% of the examples fit in (nearest rank)."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0


def truncation(lengths: list[int], max_length: int) -> dict:
    """Examples and tokens cut at max_length."""
    cut = [n - max_length for n in lengths if n > max_length]
    total = sum(lengths)
    return {"examples": len(lengths), "truncated": len(cut), "truncated_share": len(cut) / max(len(lengths), 1),
            "tokens": total, "tokens_cut": sum(cut), "tokens_cut_share": sum(cut) / max(total, 1),
            "longest": max(lengths, default=0), f"p{AUTO_PERCENTILE:g}": percentile(lengths, AUTO_PERCENTILE)}


def auto_length(train_lengths: list[int], model_limit: int) -> int:
    """`task.max_length: auto` (see the module's docstring)."""
    covering = percentile(train_lengths, AUTO_PERCENTILE)
    return max(AUTO_MIN, min(8 * math.ceil(covering / 8), AUTO_CAP, model_limit))


def report(lengths: dict[str, list[int]], max_length: int, setting: int | str, model_limit: int) -> dict:
    """results.json's `truncation`: the length used, how it was chosen, and per split what it cut."""
    out = {"max_length": max_length, "setting": setting, "splits": {s: truncation(v, max_length) for s, v in lengths.items()},
           "warn_share": WARN_SHARE, "model_limit": model_limit}
    if setting == "auto":
        out["auto"] = {"percentile": AUTO_PERCENTILE, "cap": min(AUTO_CAP, model_limit), "of": "train",
                       "covering": percentile(lengths["train"], AUTO_PERCENTILE)}
    return out


def warnings(rep: dict) -> list[str]:
    """One line when more than WARN_SHARE of some split's examples were cut."""
    over = {s: t for s, t in rep["splits"].items() if t["truncated_share"] > WARN_SHARE}
    if not over:
        return []
    key = f"p{AUTO_PERCENTILE:g}"
    cover = max(t[key] for t in over.values())
    shares = ", ".join(f"{t['truncated_share']:.1%} of the {s} examples ({t['tokens_cut_share']:.1%} of its tokens)" for s, t in over.items())
    fix = (f"{AUTO_PERCENTILE:g}% of those examples fit in {cover} tokens: set task.max_length="
           f"{min(8 * math.ceil(cover / 8), rep['model_limit'])} or task.max_length=auto (covers {AUTO_PERCENTILE:g}% of training, "
           f"at most {AUTO_CAP}), at the cost of slower steps")
    return [f"task.max_length={rep['max_length']} cuts {shares}: the model never sees the end of those texts; {fix}"]


def lines(rep: dict) -> list[str]:
    """The console's line: what max_length cut in each split."""
    how = (f" (auto: covers {rep['auto']['percentile']:g}% of the training examples, at most {rep['auto']['cap']})"
           if "auto" in rep else "")
    return [f"  truncation at task.max_length={rep['max_length']}{how}: " + " | ".join(
        f"{s} {t['truncated']:,} examples ({t['truncated_share']:.1%}), {t['tokens_cut']:,} tokens ({t['tokens_cut_share']:.1%}) cut"
        for s, t in rep["splits"].items())]
