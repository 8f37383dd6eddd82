"""Seeded, stratified choices of examples: the validation and test splits carved from train
(`task.valid_fraction`, `task.test_fraction`) and the training sample (`task.max_train_examples`).

Stratified: every class keeps its share (largest-remainder rounding, so the total is exact). The
choice depends only on the labels, the count and the seed, never on the order of the classes in the
file, so the same seed gives the same examples.

Grouped: a held-out split is carved in whole groups (rows that share a key: copies of one text, rows of
one `task.group_column` value), so that no group straddles the split. Groups are stratified by their most
frequent label and taken, in a seeded order, while they fit the class's quota of rows; with every group
a single row this is exactly the row-level stratified split.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict


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


def connected(keys: list[tuple]) -> list[list[int]]:
    """Groups of item indices, items joined when they share any key (keys[i]: item i's keys, e.g. its text
    and its group column's value); in order of each group's first item."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, ks in enumerate(keys):
        for pos, k in enumerate(ks):
            if k is None:
                continue
            j = owner.setdefault((pos, k), i)
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def grouped_indices(labels: list[str], keys: list[tuple], k: int, seed: int) -> list[int]:
    """Sorted indices of about `k` items, whole groups of `connected(keys)` only, stratified by each group's
    most frequent label (ties: the first label in sorted order), seeded; every class keeps a group."""
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for group in connected(keys):
        counts = Counter(labels[i] for i in group)
        top = max(sorted(counts), key=lambda c: counts[c])
        by_class[top].append(group)
    sizes = {c: sum(map(len, gs)) for c, gs in by_class.items()}
    cap = {c: sizes[c] - min(map(len, gs)) for c, gs in by_class.items()}
    take = _allocate(sizes, min(k, sum(cap.values())), {c: 0 for c in sizes}, cap)
    rng = random.Random(seed)
    chosen = []
    for c in sorted(by_class):
        groups = list(by_class[c])
        rng.shuffle(groups)
        held, left = 0, len(groups)
        for g in groups:
            if left > 1 and held + len(g) <= take[c]:  # never the class's last group: training keeps every class
                chosen += g
                held += len(g)
                left -= 1
    return sorted(chosen)


def split_off(items: list, labels: list[str] | None, fraction: float, seed: int, keys: list[tuple] | None = None) -> tuple[list, list]:
    """(kept, held out): a seeded `fraction` of `items` held out, stratified when `labels` are given; in whole
    groups of items sharing a key when `keys` are given (classification only)."""
    k = max(1, round(fraction * len(items)))
    if keys is not None and labels is not None:
        held = set(grouped_indices(labels, keys, k, seed))
    else:
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
