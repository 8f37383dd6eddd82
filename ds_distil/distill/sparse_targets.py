"""Sparse teacher targets: a few numbers per masked position standing in for the teacher's whole distribution, so that
a teacher cache stores kilobytes per sample instead of a vocabulary's worth of logits.

`sampled` (Random-Sampling KD; Anshumann et al., ACL 2025, "Sparse Logit Sampling"): K token ids drawn with replacement
from a proposal q, the teacher's softmax at `proposal_temperature`, each kept once with its weight
    w(v) = count(v) / K * p_T(v) / q(v)
where p_T is the teacher's softmax at the distillation temperature T (the ratio is 1 when the proposal is p_T itself;
a proposal flatter than p_T, proposal_temperature > T, visits more of the tail with bounded ratios; a sharper one is
refused: its ratios are unbounded in the tail, where rare draws then carry huge weights).
E[w(v)] = p_T(v) for every token v, so the loss -sum_v w(v) log p_S(v) (`losses.sampled_kl_sum`) has the gradient
(sum_v w(v)) p_S - w with respect to the student's tempered logits, whose expectation is p_S - p_T: the full KL's
gradient. Unbiased for any K >= 1; K sets the variance only.

`top_k` (Tan et al. 2019, DistillKit): the k most probable tokens with their probabilities renormalised to sum to 1:
deterministic and BIASED, since the student is taught a truncated teacher. Kept for the comparison the tests and the
quality study make (same bytes as `sampled` with K = k).

Both return targets of a fixed width (empty slots: id 0, weight 0) and the entropy of what they stand for (p_T's for
`sampled`, the renormalised top-k distribution's for `top_k`), so that the logged loss estimates a KL, as the live
teacher's does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SparseTargets(NamedTuple):
    ids: torch.Tensor  # [M, K] int64 token ids (distinct within a row; empty slots 0)
    weights: torch.Tensor  # [M, K] float32 w(v), 0 in empty slots
    entropy: torch.Tensor  # [M] float32 entropy of the distribution the targets stand for


def sampled(teacher_logits: torch.Tensor, k: int, temperature: float, proposal_temperature: float | None = None,
            generator: torch.Generator | None = None) -> SparseTargets:
    """K draws per row of `teacher_logits` [M, V] from the teacher's softmax at `proposal_temperature` (default: T),
    merged into distinct ids with their importance-weighted frequencies."""
    proposal_t = temperature if proposal_temperature is None else proposal_temperature
    if proposal_t < temperature:
        raise ValueError(f"proposal_temperature {proposal_t} is below the temperature {temperature}: a proposal sharper than "
                         "the target draws its tail rarely and with unbounded weights; use one at least as flat")
    logits = teacher_logits.float()
    log_p = F.log_softmax(logits / temperature, dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)
    if proposal_t == temperature:
        log_q, q = log_p, p
    else:
        log_q = F.log_softmax(logits / proposal_t, dim=-1)
        q = log_q.exp()
    draws = torch.multinomial(q, k, replacement=True, generator=generator)  # [M, K]
    draws, _ = draws.sort(dim=-1)
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]  # the first of each run of equal ids
    slot = first.long().cumsum(-1) - 1  # where each draw's id goes among the row's distinct ids
    counts = torch.zeros(draws.shape, dtype=torch.float32, device=draws.device).scatter_add_(1, slot, torch.ones_like(draws, dtype=torch.float32))
    ids = torch.zeros_like(draws).scatter_(1, slot, draws)
    used = counts > 0
    ratio = (log_p.gather(1, ids) - log_q.gather(1, ids)).exp()
    weights = torch.where(used, counts / k * ratio, 0.0)
    return SparseTargets(torch.where(used, ids, 0), weights, entropy)


def top_k(teacher_logits: torch.Tensor, k: int, temperature: float) -> SparseTargets:
    """The k most probable tokens per row, their probabilities at T renormalised to sum to 1 (biased; see above)."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top, ids = log_p.topk(k, dim=-1)
    weights = F.softmax(top, dim=-1)
    return SparseTargets(ids, weights, -(weights * weights.clamp_min(1e-30).log()).sum(-1))
