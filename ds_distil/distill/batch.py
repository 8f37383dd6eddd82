"""A micro batch on the device, as the step and validation read it, with a trimmed vocabulary's id translation.

The stream delivers the shards' ids (the teacher's vocabulary). With a target-language vocabulary
(`student.vocab`), the student reads other ids: `Translation` maps [original vocabulary] -> student ids (tokens
not kept -> [UNK]) and the MLM targets likewise (not kept -> IGNORE_INDEX: no target), a gather on the device.
The teacher keeps reading the original ids; its LM head already runs over the kept rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_distil.data.masking import IGNORE_INDEX
from ds_distil.distill.sparse_targets import SparseTargets


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] in the shards' (the teacher's) vocabulary
    student_ids: torch.Tensor  # [B, L] in the student's: the same tensor unless the vocabulary is trimmed
    attention_mask: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [M] flat indices into B x L of the masked slots (a fixed number: static shapes)
    targets: torch.Tensor  # [M] the original token of each slot in the student's vocabulary; IGNORE_INDEX: no target
    original_targets: torch.Tensor  # [M] the same in the shards' vocabulary (a slot's token may be one the student lacks)
    index: torch.Tensor  # [B] each sample's index in its split; -1 for a padding sample
    teacher_targets: SparseTargets | None = None  # [M, K] a teacher cache's targets of the slots (data.teacher_cache)

    @property
    def masked(self) -> torch.Tensor:
        """[M] 1.0 for a slot with a target, 0.0 for an empty one."""
        return (self.targets != IGNORE_INDEX).float()

    @property
    def real(self) -> torch.Tensor:
        """[B x L] 1.0 for a real token, 0.0 for padding."""
        return self.attention_mask.reshape(-1).float()

    def counts(self) -> torch.Tensor:
        """[3] what this batch's terms are averaged over (objectives.base.COUNTS): masked tokens with a target, real
        tokens, and real (query, key) pairs: each sample's real length squared, summed."""
        lengths = self.attention_mask.sum(1).float()
        return torch.stack([self.masked.sum(), lengths.sum(), lengths.pow(2).sum()])


@dataclass
class Translation:
    """A trimmed vocabulary: original id -> student id (`id_map`) and original target -> student target (`target_map`)."""

    id_map: torch.Tensor
    target_map: torch.Tensor

    def to(self, device: torch.device) -> Translation:
        return Translation(self.id_map.to(device), self.target_map.to(device))


def to_device(batch: dict[str, torch.Tensor], device: torch.device, translation: Translation | None = None,
              non_blocking: bool = True) -> Batch:
    """The stream's batch on `device`, in the student's vocabulary where it has its own. From the loader's pinned
    tensors the copies need not wait for the device."""
    input_ids = batch["input_ids"].to(device, non_blocking=non_blocking)
    original = targets = batch["targets"].to(device, non_blocking=non_blocking)
    student_ids = input_ids
    if translation is not None:
        student_ids = translation.id_map[input_ids]
        targets = torch.where(original >= 0, translation.target_map[original.clamp(min=0)], IGNORE_INDEX)
    cached = None
    if "teacher_ids" in batch:  # the cache's ids are over the student's vocabulary already (the cache was made for it)
        cached = SparseTargets(*(batch[k].to(device, non_blocking=non_blocking) for k in ("teacher_ids", "teacher_weights", "teacher_entropy")))
    return Batch(input_ids, student_ids, batch["attention_mask"].to(device, non_blocking=non_blocking),
                 batch["positions"].to(device, non_blocking=non_blocking), targets, original,
                 batch["index"].to(device, non_blocking=non_blocking), cached)
