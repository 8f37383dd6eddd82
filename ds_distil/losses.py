"""Distillation losses: pure functions on masked-position logits.

Each function returns a SUM over tokens; the caller divides by the number of masked tokens in the
global batch (all ranks), so the loss is a per-token mean however the batch is split over ranks
and however unevenly padding falls. (A `KLDivLoss(reduction="batchmean")` over
batch x length x vocab divides by the batch only: hundreds of times larger than a per-token MLM
mean.) Everything is computed in fp32 whatever the models' precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ds_distil.config import LossConfig


def kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum over tokens of KL(p_teacher || p_student), both softened by T: the teacher's distribution
    is the target, as in Hinton et al., DistilBERT and torchdistill. Not yet scaled by T^2."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum")


def mlm_sum(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum over tokens of the cross-entropy of the student against the original tokens."""
    return F.cross_entropy(student_logits.float(), labels, reduction="sum")


def hidden_sum(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str) -> torch.Tensor:
    """sum over tokens of (1 - cosine) or the mean squared error between last hidden states [N, H]."""
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).sum()
    return (s - t).pow(2).mean(-1).sum()


def distillation_losses(
    cfg: LossConfig,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    n_masked: torch.Tensor | float,
    teacher_logits: torch.Tensor | None = None,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    n_hidden: torch.Tensor | float = 1.0,
) -> dict[str, torch.Tensor]:
    """The weighted terms and their total, each a mean per masked token (hidden: per real token).

    `student_logits`/`teacher_logits` are [M, vocab] at the masked positions, `labels` [M]; n_masked
    is the masked-token count the sums are divided by (the global one in data-parallel training).
    Without a teacher only the MLM term is used (teacher conditioning, from-scratch training).
    """
    n_masked = torch.as_tensor(n_masked, dtype=torch.float32, device=student_logits.device).clamp(min=1.0)
    mlm = mlm_sum(student_logits, labels) / n_masked
    terms = {"mlm": mlm}
    if teacher_logits is None:
        terms["total"] = mlm
        return terms
    kl = kl_sum(student_logits, teacher_logits, cfg.temperature) / n_masked
    total = cfg.a_kl * cfg.temperature**2 * kl + cfg.a_mlm * mlm
    terms["kl"] = kl
    if cfg.a_hidden > 0 and student_hidden is not None:
        n_hidden = torch.as_tensor(n_hidden, dtype=torch.float32, device=student_logits.device).clamp(min=1.0)
        hidden = hidden_sum(student_hidden, teacher_hidden, cfg.hidden_kind) / n_hidden
        total = total + cfg.a_hidden * hidden
        terms["hidden"] = hidden
    terms["total"] = total
    return terms
