"""The optimizer of an engine without ZeRO in fp32 (by default: one rank on a CPU, see engine.zero_stage).

DeepSpeed's ZeRO and fp16 optimizers clip the gradients' global norm and skip a step whose gradients are not finite.
Without ZeRO in fp32 DeepSpeed hands the step to the torch optimizer as it is: its clipping takes one norm per
parameter (and an all-reduce), and nothing skips a non-finite step, so one NaN gradient would be written into every
weight. `ClippedAdamW` is torch's AdamW that does both itself, as the plain-PyTorch reference does: the global norm
in one foreach pass, clipping with it, and no update where it is not finite. It sets `overflow` and
`_global_grad_norm`, which DeepSpeed's engine reads after the step: the skip is counted (`engine.skipped_steps`),
the learning-rate schedule holds, and `engine.get_global_grad_norm()` gives the norm, as with ZeRO.
"""

from __future__ import annotations

import torch


class ClippedAdamW(torch.optim.AdamW):
    """torch.optim.AdamW (any of its keyword arguments, `fused` included) that clips to `max_norm` (0: no clipping)
    and skips a step whose gradient norm is not finite."""

    def __init__(self, params, max_norm: float, **kwargs):
        super().__init__(params, **kwargs)
        self.max_norm = max_norm
        self.overflow = False
        self._global_grad_norm: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        self._global_grad_norm = norm
        self.overflow = not bool(torch.isfinite(norm))  # the host reads the norm: DeepSpeed's engine needs the answer now
        if self.overflow:
            return None
        if self.max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, norm, foreach=True)
        return super().step(closure)
