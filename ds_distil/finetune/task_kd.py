"""The loss of task distillation, per micro batch:

    alpha * CE(student, gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

CE is the mean cross-entropy over the batch's labelled units, KL the mean over its units with a teacher target (both
softened by T: runtime/losses.kl_sum, the formula distillation uses; scaled by T^2 so that its gradients keep their size
when T changes, as in Hinton et al. and DistilBERT). A unit is a row for sequence and pair tasks, a word for token tasks
(at its first sub-word, as labels are: teacher and student are aligned by word index, so they may tokenize differently).
Transfer rows have no label: they count in the KL only. A batch without labelled units (or without targets) gives its
term 0, never a mean over nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ds_distil.data.masking import IGNORE_INDEX
from ds_distil.runtime.losses import kl_sum


class TaskKD:
    """The targets of every training row (by its feature's `index`), and the loss of a micro batch with them."""

    def __init__(self, kind: str, feats: list[dict], logits: list[torch.Tensor], alpha: float, temperature: float):
        self.token, self.alpha, self.temperature = kind == "token", alpha, temperature
        self.targets: dict[int, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}
        for f, z in zip(feats, logits, strict=True):
            if self.token:  # the words the student kept (max_length may cut more than the teacher's), those with a target
                pos = torch.tensor(f["words"], dtype=torch.long)
                z = z[:len(pos)]
                seen = ~torch.isnan(z[:, 0])
                self.targets[f["index"]] = (pos[seen], z[seen])
            else:
                self.targets[f["index"]] = z

    def teacher_batch(self, index: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher logits shaped like the student's [B, (L,) labels], 1.0 where a unit has a target) for a batch."""
        teacher = torch.zeros(shape, dtype=torch.float32)
        weight = torch.zeros(shape[:-1], dtype=torch.float32)
        for b, i in enumerate(index.tolist()):
            if self.token:
                pos, z = self.targets[i]
                teacher[b, pos], weight[b, pos] = z, 1.0
            else:
                teacher[b], weight[b] = self.targets[i], 1.0
        return teacher, weight

    def loss(self, engine, batch: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """The micro batch's loss; `batch` on the device, with its labels (IGNORE_INDEX where a unit has none)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = engine(**inputs).logits
        teacher, weight = (x.to(logits.device) for x in self.teacher_batch(index, logits.shape))
        num_labels = logits.shape[-1]
        flat, labels = logits.reshape(-1, num_labels), batch["labels"].reshape(-1)
        ce = F.cross_entropy(flat.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") / (labels != IGNORE_INDEX).sum().clamp(min=1)
        kl = kl_sum(flat, teacher.reshape(-1, num_labels), self.temperature, weight.reshape(-1)) / weight.sum().clamp(min=1)
        return self.alpha * ce + (1.0 - self.alpha) * self.temperature ** 2 * kl
