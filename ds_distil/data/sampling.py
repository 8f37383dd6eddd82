"""Seeded, stratified choices of examples: the validation split carved from train
(`task.valid_fraction`) and the training sample (`task.max_train_examples`).

Stratified: every class keeps its share (largest-remainder rounding, so the total is exact). The
choice depends only on the labels, the count and the seed, never on the order of the classes in the
file, so the same seed gives the same examples.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict


def _allocate(sizes: dict[str, int], k: int, floor: dict[str, int], cap: dict[str, int]) -> dict[str, int]:
    """How many of each class to take: proportional to `sizes`, summing to `k`, within [floor, cap]."""
    total = sum(sizes.values())
    quota = {c: k * n / total for c, n in sizes.items()}
    take = {c: min(cap[c], max(floor[c], int(quota[c]))) for c in sizes}
    # hand out what is left by largest remainder (ties: label order), then take back any excess the same way
    order = sorted(sizes, key=lambda c: (-(quota[c] - int(quota[c])), c))
    while sum(take.values()) < k and any(take[c] < cap[c] for c in sizes):
        for c in order:
            if sum(take.values()) < k and take[c] < cap[c]:
                take[c] += 1
    while sum(take.values()) > k and any(take[c] > floor[c] for c in sizes):
        for c in reversed(order):
            if sum(take.values()) > k and take[c] > floor[c]:
                take[c] -= 1
    return take


def stratified_indices(labels: list[str], k: int, seed: int, keep_one: bool = False) -> list[int]:
    """Sorted indices of `k` items chosen per class in proportion, seeded.

    keep_one: leave at least one item of every class unchosen (a validation split carved out of
    train must not take a class away from training). Otherwise every class with items gets at least
    one when k allows it (a small training sample keeps every class)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    sizes = {c: len(v) for c, v in by_class.items()}
    if keep_one:
        cap = {c: n - 1 for c, n in sizes.items()}
        floor = {c: 0 for c in sizes}
    else:
        cap = dict(sizes)
        floor = {c: 1 if k >= len(sizes) else 0 for c in sizes}
    take = _allocate(sizes, min(k, sum(cap.values())), floor, cap)
    rng = random.Random(seed)
    chosen = []
    for c in sorted(by_class):  # a fixed order of classes: the draw does not depend on the file's row order of classes
        idx = list(by_class[c])
        rng.shuffle(idx)
        chosen += idx[: take[c]]
    return sorted(chosen)


def random_indices(n: int, k: int, seed: int) -> list[int]:
    """Sorted indices of `k` of `n` items, seeded (token tasks, whose labels are sequences)."""
    return sorted(random.Random(seed).sample(range(n), min(k, n)))


def split_off(items: list, labels: list[str] | None, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded `fraction` of `items` held out, stratified when `labels` are given."""
    k = max(1, round(fraction * len(items)))
    held = set(stratified_indices(labels, k, seed, keep_one=True) if labels is not None else random_indices(len(items), k, seed))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def sample(items: list, labels: list[str] | None, k: int, seed: int) -> list:
    """A seeded sample of `k` items in their original order, stratified when `labels` are given."""
    if k >= len(items):
        return list(items)
    idx = stratified_indices(labels, k, seed) if labels is not None else random_indices(len(items), k, seed)
    return [items[i] for i in idx]


def sample_train(task, n: int | None, seed: int):
    """`task.max_train_examples`: a Task whose training split is a seeded sample of `n` examples,
    stratified by label for classification (token tasks: a plain seeded sample). Labels and their
    ids stay those of the whole training file."""
    train = task.splits["train"]
    if n is None or n >= len(train):
        return task
    labels = None if task.kind == "token" else [e.label for e in train]
    kept = sample(train, labels, n, seed)
    provenance = {**task.provenance, "train_sample": {"examples": len(kept), "of": len(train), "seed": seed,
                                                       "stratified": labels is not None}}
    return dataclasses.replace(task, splits={**task.splits, "train": kept}, provenance=provenance)
