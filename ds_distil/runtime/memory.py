"""What a micro batch will need in memory, estimated before the first step, so that a batch that cannot fit is refused
in one line instead of stalling the machine.

Activations kept for the backward of one transformer layer, per sequence of length s, hidden h, a heads, in 16-bit
(Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1): s h (34 + 5 a s / h)
bytes; twice that in fp32. The LM heads at the masked positions hold [M, vocab] logits for teacher and student (fp32
copies for the loss, the student's softmax and its gradient: ~4 such tensors). The estimate is a lower bound of what
the step needs (no optimizer state, no weights): refusing on it never refuses a batch that would fit.
"""

from __future__ import annotations

import torch

from ds_distil.core.errors import UserError


def activation_bytes(layers: int, hidden: int, heads: int, batch: int, seq_len: int, bytes_per_value: int) -> float:
    per_layer = seq_len * hidden * (34 + 5 * heads * seq_len / hidden) * (bytes_per_value / 2)
    return float(batch) * layers * per_layer


def micro_batch_bytes(student_config, batch: int, seq_len: int, masked: int, vocab: int, bytes_per_value: int,
                     teacher_logits: bool = True) -> float:
    """The lower bound above: the student's activations, and [masked, vocab] fp32 logits of both models (of the student
    alone without `teacher_logits`: a run from a teacher cache), the softmax and its gradient."""
    c = student_config
    return activation_bytes(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, batch, seq_len, bytes_per_value) \
        + (4.0 if teacher_logits else 3.0) * masked * vocab * 4


def free_bytes(device: torch.device) -> float:
    """Free memory where the step runs: the GPU's, or the host's available RAM."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    import psutil

    return float(psutil.virtual_memory().available)


def check_micro_batch(student_config, batch: int, seq_len: int, masked: int, vocab: int, bytes_per_value: int,
                      device: torch.device, teacher_logits: bool = True) -> None:
    """Refuse (UserError) a micro batch whose student activations and LM-head logits alone exceed the free memory.
    `masked`: the masked positions the micro batch's heads run at (its sequences' at most)."""
    need = micro_batch_bytes(student_config, batch, seq_len, masked, vocab, bytes_per_value, teacher_logits)
    free = free_bytes(device)
    if need > free:
        raise UserError(f"train.micro_batch_size={batch:,} needs at least {need / 2**30:,.1f} GiB for the student's activations "
                        f"and the LM heads' logits (sequences of {seq_len}), but {device} has {free / 2**30:,.1f} GiB free; lower "
                        "train.micro_batch_size (and raise train.grad_accum_steps to keep the global batch)")
