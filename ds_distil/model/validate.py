"""Checks at the edge that would otherwise fail deep inside a run (at step 1, or in a worker)."""

from __future__ import annotations

from ds_distil.core.errors import UserError


def max_positions(model) -> int:
    """Tokens a model can take: its position embeddings (RoBERTa's first pad_token_id + 1 rows are not positions)."""
    config = model.config
    n = int(config.max_position_embeddings)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= int(config.pad_token_id or 0) + 1
    return n


def check_seq_len(seq_len: int, teacher, student, cfg) -> None:
    """Shards longer than the teacher's or the student's position embeddings fail at the first step; say so now."""
    for what, model in (("teacher", teacher), ("student", student)):
        if model is None:
            continue
        limit = max_positions(model)
        if seq_len > limit:
            how = (" or raise student.max_positions" if what == "student" and not cfg.student.pretrained else "")
            raise UserError(f"the shards' data.seq_len {seq_len} is longer than the {what}'s {limit} position embeddings; "
                            f"prepare shards with --seq-len {limit} or less{how}")


def check_max_length(max_length: int, model, what: str) -> None:
    limit = max_positions(model)
    if max_length > limit:
        raise UserError(f"task.max_length {max_length} is longer than {what}'s {limit} position embeddings; "
                        f"set task.max_length={limit} or less")
