"""The loss functions objectives are made of: pure functions on masked-position logits and hidden states.

Each function returns a SUM over tokens; the caller divides by the number of masked tokens in the
global batch (all ranks), so the loss is a per-token mean however the batch is split over ranks
and however unevenly padding falls. (A `KLDivLoss(reduction="batchmean")` over
batch x length x vocab divides by the batch only: hundreds of times larger than a per-token MLM
mean.) Everything is computed in fp32 whatever the models' precision.

Rows may be padding: the trainer evaluates the LM heads at a fixed number of positions per batch
(static shapes: no host sync to count the masked tokens, one compiled graph), and the slots beyond
the real masked tokens carry the label IGNORE_INDEX. They count for nothing: weight 0 in the KL,
ignored by the cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ds_distil.data.masking import IGNORE_INDEX


def kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over tokens of KL(p_teacher || p_student), both softened by T: the teacher's distribution
    is the target, as in Hinton et al., DistilBERT and torchdistill. Not yet scaled by T^2.
    `weights` [M] (0 or 1) leaves padding rows out."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if weights is None:
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum")
    per_row = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1)
    return (per_row * weights).sum()


def mlm_sum(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum over tokens of the cross-entropy of the student against the original tokens
    (rows labelled IGNORE_INDEX count for nothing)."""
    return F.cross_entropy(student_logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def hidden_sum(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over tokens of (1 - cosine) or the mean squared error between last hidden states [N, H]."""
    s, t = student_hidden.float(), teacher_hidden.float()
    per_token = 1.0 - F.cosine_similarity(s, t, dim=-1) if kind == "cosine" else (s - t).pow(2).mean(-1)
    return per_token.sum() if weights is None else (per_token * weights).sum()
