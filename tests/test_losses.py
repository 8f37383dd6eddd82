"""The KD objective: KL(teacher || student) at temperature T, scaled by T^2, plus MLM, per masked token;
the masked-positions-only path proven equal to a straightforward full-logits computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import objective_losses

from ds_distil.runtime.losses import kl_sum
from ds_distil.model.build import bert_config
from ds_distil.model.forward import masked_lm_forward
from ds_distil.schema.distill import LossConfig

VOCAB = 500


def tiny_pair(seed=0):
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    teacher = BertForMaskedLM(bert_config("micro", VOCAB, 0, dropout=0.0)).eval()
    student = BertForMaskedLM(bert_config(None, VOCAB, 0, dropout=0.0, num_layers=1, hidden_size=32, intermediate_size=64,
                                          num_heads=2, max_positions=64))
    return teacher, student


def batch(seed=1, b=4, length=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, length), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 15:] = 0  # padding
    ids[attention == 0] = 0
    labels = torch.full_like(ids, -100)
    chosen = (torch.rand(ids.shape, generator=g) < 0.2) & attention.bool()
    labels[chosen] = ids[chosen]
    masked_ids = ids.masked_fill(chosen, 4)
    return masked_ids, attention, labels


def test_kl_direction_is_teacher_to_student():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.tensor([[0.0, 1.0, 0.5]])
    p_t, p_s = F.softmax(t, -1), F.softmax(s, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum()
    assert torch.allclose(kl_sum(s, t, 1.0), expected)
    assert not torch.allclose(kl_sum(t, s, 1.0), expected)  # it is not symmetric: the direction matters


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_masked_only_path_equals_full_logits_reference(temperature):
    teacher, student = tiny_pair()
    ids, attention, labels = batch()
    cfg = LossConfig(a_kl=0.7, a_mlm=0.3, temperature=temperature)

    flat = labels.view(-1)
    positions = (flat != -100).nonzero().squeeze(1)
    with torch.no_grad():
        t_logits = masked_lm_forward(teacher, ids, attention, positions).logits
    s_logits = masked_lm_forward(student, ids, attention, positions).logits
    ours = objective_losses(cfg, s_logits, flat[positions], positions.numel(), t_logits)
    ours["total"].backward()
    ours_grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()

    # reference: full batch x length x vocab logits from the models' own forward, then select
    with torch.no_grad():
        t_full = teacher(input_ids=ids, attention_mask=attention).logits
    s_full = student(input_ids=ids, attention_mask=attention).logits
    sel = labels != -100
    kl = F.kl_div(F.log_softmax(s_full[sel] / temperature, -1), F.softmax(t_full[sel] / temperature, -1), reduction="batchmean")
    mlm = F.cross_entropy(s_full.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
    reference = cfg.a_kl * temperature**2 * kl + cfg.a_mlm * mlm
    reference.backward()

    assert torch.allclose(ours["kl"], kl, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours["mlm"], mlm, rtol=1e-5)
    assert torch.allclose(ours["total"], reference, rtol=1e-5)
    for g_ours, p in zip(ours_grads, student.parameters()):
        assert torch.allclose(g_ours, p.grad, rtol=1e-4, atol=1e-7)


def test_split_over_ranks_equals_the_whole_batch():
    """Dividing sums by the global masked count makes the mean independent of how tokens are split."""
    torch.manual_seed(0)
    s, t = torch.randn(30, VOCAB), torch.randn(30, VOCAB)
    labels = torch.randint(0, VOCAB, (30,))
    cfg = LossConfig()
    whole = objective_losses(cfg, s, labels, 30, t)["total"]
    parts = sum(objective_losses(cfg, s[a:b], labels[a:b], 30, t[a:b])["total"] for a, b in ((0, 7), (7, 30)))
    assert torch.allclose(whole, parts, rtol=1e-6)


def test_no_masked_tokens_gives_zero_not_nan():
    out = objective_losses(LossConfig(), torch.zeros(0, VOCAB), torch.zeros(0, dtype=torch.long), 0, torch.zeros(0, VOCAB))
    assert out["total"].item() == 0.0 and not math.isnan(out["kl"].item())


def test_temperature_squared_scaling_and_mlm_only_mode():
    torch.manual_seed(0)
    s, t = torch.randn(8, VOCAB), torch.randn(8, VOCAB)
    labels = torch.randint(0, VOCAB, (8,))
    out = objective_losses(LossConfig(a_kl=1.0, a_mlm=0.0, temperature=3.0), s, labels, 8, t)
    assert torch.allclose(out["total"], 9.0 * kl_sum(s, t, 3.0) / 8)
    mlm_only = objective_losses(LossConfig(), s, labels, 8, None)
    assert set(mlm_only) == {"mlm", "total"} and torch.allclose(mlm_only["total"], F.cross_entropy(s, labels))


def test_hidden_term():
    torch.manual_seed(0)
    s, t = torch.randn(8, VOCAB), torch.randn(8, VOCAB)
    labels = torch.randint(0, VOCAB, (8,))
    h = torch.randn(10, 16)
    same = objective_losses(LossConfig(a_hidden=1.0), s, labels, 8, t, h, h.clone(), 10)
    assert abs(same["hidden"].item()) < 1e-6
    flipped = objective_losses(LossConfig(a_hidden=1.0, hidden_kind="cosine"), s, labels, 8, t, h, -h, 10)
    assert abs(flipped["hidden"].item() - 2.0) < 1e-5
    mse = objective_losses(LossConfig(a_hidden=1.0, hidden_kind="mse"), s, labels, 8, t, h, h + 1.0, 10)
    assert abs(mse["hidden"].item() - 1.0) < 1e-5


@pytest.mark.parametrize("pad_multiple", [1, 128])
def test_padded_vocabulary_and_static_positions_equal_the_plain_full_logits_reference(pad_multiple):
    """What the trainer computes: vocabulary rows padded (perf.pad_vocab_multiple), logits cut back to
    the real vocabulary, a fixed-size position list with padding slots (static shapes). Same loss and
    same gradients as the full-logits reference on the unpadded models; padding rows get no gradient."""
    import copy

    from ds_distil.data.masking import static_positions
    from ds_distil.model.forward import MaskedLM
    from ds_distil.model.surgery import pad_vocab

    teacher, student = tiny_pair(seed=3)
    ids, attention, labels = batch(seed=4)
    cfg = LossConfig(a_kl=0.6, a_mlm=0.4, temperature=2.0)
    p_teacher, p_student = pad_vocab(copy.deepcopy(teacher), pad_multiple), pad_vocab(copy.deepcopy(student), pad_multiple)
    assert p_student.config.vocab_size % pad_multiple == 0 and p_student.config.vocab_size >= VOCAB

    positions, targets = static_positions(labels, max_per_row=labels.shape[1] // 2)  # room to spare: padding slots
    n_real = int((labels != -100).sum())
    assert positions.numel() > n_real and (targets[n_real:] == -100).all()
    with torch.no_grad():
        t_logits = MaskedLM(p_teacher, VOCAB)(ids, attention, positions).logits
    s_logits = MaskedLM(p_student, VOCAB)(ids, attention, positions).logits
    assert s_logits.shape == (positions.numel(), VOCAB)
    ours = objective_losses(cfg, s_logits, targets, n_real, t_logits)
    ours["total"].backward()

    with torch.no_grad():
        t_full = teacher(input_ids=ids, attention_mask=attention).logits
    s_full = student(input_ids=ids, attention_mask=attention).logits
    sel = labels != -100
    kl = F.kl_div(F.log_softmax(s_full[sel] / 2.0, -1), F.softmax(t_full[sel] / 2.0, -1), reduction="batchmean")
    mlm = F.cross_entropy(s_full.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
    reference = cfg.a_kl * 4.0 * kl + cfg.a_mlm * mlm
    reference.backward()

    assert torch.allclose(ours["kl"], kl, rtol=1e-5, atol=1e-6) and torch.allclose(ours["mlm"], mlm, rtol=1e-5)
    for (name, p), q in zip(student.named_parameters(), p_student.parameters()):
        g = q.grad[: p.shape[0]] if q.shape != p.shape else q.grad
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7), name
        if q.shape != p.shape:
            assert (q.grad[p.shape[0]:] == 0).all(), name  # the padding rows


def test_padding_is_undone_for_export_with_identical_logits():
    from ds_distil.model.surgery import pad_vocab, unpad_vocab

    _, student = tiny_pair(seed=5)
    student.eval()
    ids = torch.randint(5, VOCAB, (2, 10))
    before = student(input_ids=ids).logits
    padded = pad_vocab(student, 128)
    assert padded.config.vocab_size == 512 and padded(input_ids=ids).logits.shape[-1] == 512
    restored = unpad_vocab(padded, VOCAB)
    assert restored.config.vocab_size == VOCAB and torch.equal(restored(input_ids=ids).logits, before)
    assert restored.cls.predictions.decoder.weight is restored.bert.embeddings.word_embeddings.weight  # still tied
