"""The FLOP count behind MFU, against a case computed by hand."""

import pytest

from ds_distil.runtime.flops import Arch, distill_step_flops, encoder_flops, head_flops, peak_flops


def test_encoder_flops_by_hand():
    # 1 layer, L=4, H=2, F=8: projections 8*4*2*2 = 128, attention 4*4*4*2 = 128, FFN 4*4*2*8 = 256
    assert encoder_flops(Arch(layers=1, hidden=2, ffn=8, vocab=10), seq_len=4) == 128 + 128 + 256
    assert encoder_flops(Arch(layers=3, hidden=2, ffn=8, vocab=10), seq_len=4) == 3 * 512


def test_head_and_step_flops_by_hand():
    s, t = Arch(1, 2, 8, 10), Arch(2, 4, 16, 10)
    assert head_flops(s, positions=3) == 3 * (2 * 2 * 2 + 2 * 2 * 10)  # 3 x 48
    # teacher forward (2 layers, L=4, H=4, F=16): 2 * (8*4*16 + 4*16*4 + 4*4*4*16) = 2 * 1792
    teacher_enc = 2 * (8 * 4 * 4 * 4 + 4 * 4 * 4 * 4 + 4 * 4 * 4 * 16)
    assert encoder_flops(t, 4) == teacher_enc
    step = distill_step_flops(s, t, batch=2, seq_len=4, masked=3)
    assert step == 3 * (2 * 512 + 3 * 48) + 2 * teacher_enc + 3 * (2 * 16 + 2 * 4 * 10)
    full = distill_step_flops(s, t, batch=2, seq_len=4, masked=3, full_logits=True)
    assert full - step == 3 * 5 * 48 + 5 * 112  # heads at 8 positions instead of 3
    assert distill_step_flops(s, None, 2, 4, 3) == 3 * (2 * 512 + 3 * 48)  # MLM only: no teacher


def test_mbert_teacher_forward_is_about_2_flops_per_parameter_per_token():
    mbert = Arch(12, 768, 3072, 119547)
    per_token = encoder_flops(mbert, 128) / 128
    encoder_params = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert per_token == pytest.approx(2 * encoder_params, rel=0.05)  # plus the small attention term


def test_peak_flops_lookup():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops(None) is None and peak_flops("AMD EPYC") is None
    assert peak_flops(None, override_tflops=10) == 10e12
