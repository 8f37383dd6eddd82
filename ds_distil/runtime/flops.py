"""FLOP counts for MFU. A multiply-add is 2 FLOPs; embeddings, softmax, LayerNorm, GELU and the
loss are left out (each is O(tokens x hidden), small next to the matrix products).

Per encoder layer and sequence of length L, hidden H, FFN size F (forward):
    Q, K, V and output projections   4 x 2 L H^2   = 8 L H^2
    scores QK^T and context (attn)V  2 x 2 L^2 H   = 4 L^2 H
    FFN up and down                  2 x 2 L H F   = 4 L H F
MLM head per predicted position (transform dense H x H, decoder H x V): 2 H^2 + 2 H V.
Backward costs twice the forward, so a trained model counts 3x its forward.

One distillation step (batch B, M masked positions in it):
    teacher forward  B x encoder(teacher) + M x head(teacher)
    student fwd+bwd  3 x (B x encoder(student) + M x head(student))
with the LM heads at the masked positions only, as the trainer computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense 16-bit tensor-core peak per GPU, TFLOP/s (vendor data sheets). Matched as substrings of the
# nvidia-ml-py device name; MFU is reported against these (use log.peak_tflops for others).
PEAK_TFLOPS_16BIT = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
                     "V100": 125.0, "L4": 121.0}


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, model, vocab: int | None = None) -> Arch:
        """`vocab`: the real vocabulary when the model's rows are padded (useful work is counted)."""
        c = model.config
        return cls(c.num_hidden_layers, c.hidden_size, c.intermediate_size, vocab or c.vocab_size)


def encoder_flops(a: Arch, seq_len: int) -> float:
    """Forward FLOPs of the encoder for one sequence."""
    L, H, F = seq_len, a.hidden, a.ffn
    return a.layers * (8 * L * H * H + 4 * L * L * H + 4 * L * H * F)


def head_flops(a: Arch, positions: float) -> float:
    """Forward FLOPs of the MLM head at `positions` positions."""
    return positions * (2 * a.hidden * a.hidden + 2 * a.hidden * a.vocab)


def distill_step_flops(student: Arch, teacher: Arch | None, batch: int, seq_len: int, masked: float, full_logits: bool = False) -> float:
    """FLOPs of one step; `full_logits` counts the heads at every position (the naive baseline)."""
    positions = batch * seq_len if full_logits else masked
    flops = 3 * (batch * encoder_flops(student, seq_len) + head_flops(student, positions))
    if teacher is not None:
        flops += batch * encoder_flops(teacher, seq_len) + head_flops(teacher, positions)
    return flops


def peak_flops(gpu_name: str | None, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not gpu_name:
        return None
    for key, tflops in PEAK_TFLOPS_16BIT.items():
        if key in gpu_name:
            return tflops * 1e12
    return None
