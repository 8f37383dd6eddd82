"""The loss functions objectives are made of: pure functions on masked-position logits and hidden states. They live
on the runtime floor, below both distill/ and finetune/: task distillation (finetune/task_kd.py) uses the same KL at
temperature T as distillation, on a classifier's rows or words in place of masked positions.

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

import math

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


def sampled_kl_sum(student_logits: torch.Tensor, target_ids: torch.Tensor, target_weights: torch.Tensor,
                   target_entropy: torch.Tensor, temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over tokens of the sparse-target estimate of KL(p_teacher || p_student) at temperature T: per row
    -sum_k w_k log p_S(id_k) - H, from targets [M, K] (ds_distil/distill/sparse_targets.py; weight 0 in empty slots)
    and the entropy H [M] of what they stand for. With `sampled` targets its expectation is the KL and its gradient's
    expectation the KL's gradient. Not yet scaled by T^2, as kl_sum."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_row = -(log_p_student.gather(1, target_ids) * target_weights.float()).sum(-1) - target_entropy.float()
    return per_row.sum() if weights is None else (per_row * weights).sum()


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


def pair_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] 1.0 where query and key are both real tokens: what the attention terms average over."""
    real = attention_mask.float()
    return (real[:, :, None] * real[:, None, :])[:, None]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H] -> [B, heads, L, H / heads], in fp32."""
    b, length, width = x.shape
    return x.float().view(b, length, heads, width // heads).transpose(1, 2)


def attention_score_sum(student_qk: tuple[torch.Tensor, torch.Tensor], teacher_qk: tuple[torch.Tensor, torch.Tensor], heads: int,
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention term for one pair of layers: the squared error between the attention SCORES (before the
    softmax, QK^T / sqrt(d_head), as TinyBERT fits them) of student and teacher, summed over the real (query, key) pairs
    and averaged over the heads (both models have `heads`). Padding queries and keys count for nothing."""
    (sq, sk), (tq, tk) = student_qk, teacher_qk
    scores = []
    for q, k in ((sq, sk), (tq, tk)):
        q, k = split_heads(q, heads), split_heads(k, heads)
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
    return ((scores[0] - scores[1]).pow(2) * pair_mask(attention_mask)).sum() / heads


def relation_kl_sum(student_x: torch.Tensor, teacher_x: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2's self-attention relation term for one of queries, keys or values: both [B, L, H] are split into
    `heads` relation heads, each gives the relation softmax(x x^T / sqrt(d_r)) over the real keys, and the result is
    the KL(teacher || student) of each real query's row, summed over the real queries and averaged over the heads.
    The widths may differ (d_r = H / heads on each side); padding queries and keys count for nothing."""
    keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
    logs = []
    for x in (student_x, teacher_x):
        x = split_heads(x, heads)
        scores = (x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1])).masked_fill(~keys, torch.finfo(torch.float32).min)
        logs.append(F.log_softmax(scores, dim=-1))
    per_row = F.kl_div(logs[0], logs[1], log_target=True, reduction="none").sum(-1)  # [B, heads, L]
    return (per_row * attention_mask.float()[:, None, :]).sum() / heads
