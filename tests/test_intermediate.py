"""TinyBERT and MiniLMv2: each term equals a written-out reference from the papers' formulas, in value and gradient.

The references below are plain tensor code over the FULL attention maps of each sample's real tokens (a loop over
samples, padding sliced off), with the queries and keys captured by hooks on the models' own projections during
their forward, and checked against the attention probabilities transformers' eager attention returns. Ours recompute
the queries, keys and values from each layer's input (model.forward.layer_qkv) under the models' fast attention
kernel, and average over the batch's counts with padding masked: they must agree to float rounding, padding must
count for nothing, and the student's gradients (and the projection's) must be the reference's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from transformers import BertConfig, BertForMaskedLM, MegatronBertConfig, MegatronBertForMaskedLM

from ds_distil.core.errors import UserError
from ds_distil.distill.batch import to_device
from ds_distil.distill.objectives.minilm import MiniLMv2
from ds_distil.distill.objectives.tinybert import TinyBERT, uniform_map
from ds_distil.model.forward import MaskedLM, encoder
from ds_distil.schema.distill import LossConfig

VOCAB = 60


def models(teacher_norm: str, student_heads: int = 4, student_vocab: int = VOCAB):
    torch.manual_seed(0)
    sizes = dict(num_hidden_layers=4, hidden_size=48, num_attention_heads=4, intermediate_size=96, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, vocab_size=VOCAB)
    teacher = (MegatronBertForMaskedLM(MegatronBertConfig(**sizes)) if teacher_norm == "pre" else BertForMaskedLM(BertConfig(**sizes)))
    student = BertForMaskedLM(BertConfig(vocab_size=student_vocab, num_hidden_layers=2, hidden_size=24, num_attention_heads=student_heads,
                                         intermediate_size=48, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return teacher.eval(), student.train()


def batch(translate: torch.Tensor | None = None):
    """3 samples of 9 tokens, two of them padded at the end; 5 masked slots, the last empty."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    positions = torch.tensor([1, 4, 10, 19, 0])
    targets = torch.tensor([7, 8, 9, 10, -100])
    raw = {"input_ids": ids, "attention_mask": mask, "positions": positions, "targets": targets, "index": torch.arange(3)}
    return to_device(raw, torch.device("cpu"), translate)


def captured_qkv(model, input_ids, attention_mask):
    """Every layer's queries, keys and values, captured from the model's own forward (hooks on its projections)."""
    seen, hooks = {}, []
    for i, layer in enumerate(encoder(model).encoder.layer, start=1):
        for name in ("query", "key", "value"):
            hooks.append(getattr(layer.attention.self, name).register_forward_hook(
                lambda mod, args, out, i=i, name=name: seen.__setitem__((i, name), out)))
    out = encoder(model)(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
    for h in hooks:
        h.remove()
    return {i: tuple(seen[(i, n)] for n in ("query", "key", "value")) for i in range(1, len(encoder(model).encoder.layer) + 1)}, out


def heads_of(x, heads):  # [L, H] -> [heads, L, d]
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1)


def reference_attention(s_qkv, t_qkv, layer_map, heads, mask):
    """TinyBERT eq. 7, A = Q K^T / sqrt(d_k) per head, MSE over each sample's real (query, key) pairs and the heads,
    summed over the mapped layers; the average is over all real pairs of the batch."""
    total, pairs = 0.0, 0
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        pairs += n * n
        for m, g in enumerate(layer_map, start=1):
            for (q, k), into in (((s_qkv[m][0], s_qkv[m][1]), "s"), ((t_qkv[g][0], t_qkv[g][1]), "t")):
                qh, kh = heads_of(q[b, :n].float(), heads), heads_of(k[b, :n].float(), heads)
                a = qh @ kh.transpose(1, 2) / math.sqrt(qh.shape[-1])
                if into == "s":
                    a_s = a
                else:
                    a_t = a
            total = total + ((a_s - a_t) ** 2).sum() / heads
    return total / pairs


def reference_layers(s_hidden, t_hidden, layer_map, projection, mask):
    """TinyBERT eqs. 8-9, MSE(H_s W, H_t) over the real tokens, for the embeddings (0 <- 0) and each mapped layer."""
    total, tokens = 0.0, int(mask.sum())
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        for m, g in [(0, 0), *enumerate(layer_map, start=1)]:
            hs = s_hidden[m][b, :n]
            hs = hs @ projection.weight.T + projection.bias if projection is not None else hs
            total = total + ((hs - t_hidden[g][b, :n]) ** 2).mean(-1).sum()
    return total / tokens


def reference_relations(s_qkv, t_qkv, heads, mask):
    """MiniLMv2: for Q, K, V each, relation heads of the concatenated vectors, R = softmax(x x^T / sqrt(d_r)) over the
    real tokens, KL(R_t || R_s) per row, mean over the heads, summed over Q-Q, K-K, V-V, averaged over real tokens."""
    total, tokens = 0.0, int(mask.sum())
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        for xs, xt in zip(s_qkv, t_qkv):
            rel = []
            for x in (xs[b, :n].float(), xt[b, :n].float()):
                xh = heads_of(x, heads)
                rel.append(torch.softmax(xh @ xh.transpose(1, 2) / math.sqrt(xh.shape[-1]), -1))
            r_s, r_t = rel
            total = total + (r_t * (r_t.log() - r_s.log())).sum() / heads
    return total / tokens


def grads(model_params, loss):
    return torch.autograd.grad(loss, model_params, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("teacher_norm", ["post", "pre"], ids=["bert-teacher", "pre-ln-teacher"])
@pytest.mark.parametrize("trimmed", [False, True], ids=["full-vocab", "trimmed-vocab"])
def test_tinybert_terms_equal_the_written_out_reference(teacher_norm, trimmed):
    translation = None
    s_vocab = VOCAB
    if trimmed:  # the student reads its own ids (tokens not kept -> [UNK] = 1); the teacher the original ones
        from ds_distil.distill.batch import Translation

        kept = torch.arange(0, VOCAB, 2)
        id_map = torch.ones(VOCAB, dtype=torch.long)
        id_map[kept] = torch.arange(len(kept))
        translation, s_vocab = Translation(id_map, torch.where(id_map > 1, id_map, -100)), len(kept)
    teacher, student = models(teacher_norm, student_vocab=s_vocab)
    cfg = LossConfig(objective="tinybert", a_kl=0.3, a_mlm=0.2, a_attention=0.7, a_layers=1.3, temperature=2.0)
    obj = TinyBERT(cfg)
    torch.manual_seed(5)
    obj.bind(teacher.config, student.config)
    assert obj.map == [2, 4] and obj.module is not None  # uniform 4 -> 2; 24 -> 48 needs the projection
    b = batch(translation)

    with torch.no_grad():
        t_out = MaskedLM(teacher, VOCAB)(b.input_ids, b.attention_mask, b.positions, obj.teacher.hidden, obj.teacher.qkv)
    if trimmed:  # the teacher's head over the kept rows, as model.surgery.restrict_head makes it
        t_out = t_out._replace(logits=t_out.logits[:, kept])
    s_out = MaskedLM(student, s_vocab)(b.student_ids, b.attention_mask, b.positions, obj.student.hidden, obj.student.qkv)
    total, means = obj.loss(s_out, t_out, b, b.counts())
    got = dict(zip([t.name for t in obj.terms], means))

    # the reference: queries and keys from the models' own forward, the attention maps they make checked against
    # the probabilities transformers' eager attention returns, then the papers' formulas sample by sample
    with torch.no_grad():
        t_qkv, t_ref = captured_qkv(teacher, b.input_ids, b.attention_mask)
    s_qkv, s_ref = captured_qkv(student, b.student_ids, b.attention_mask)
    student.set_attn_implementation("eager")
    probs = encoder(student)(input_ids=b.student_ids, attention_mask=b.attention_mask, output_attentions=True).attentions
    student.set_attn_implementation("sdpa")
    for layer in (1, 2):
        for i in range(3):
            n = int(b.attention_mask[i].sum())
            q, k = heads_of(s_qkv[layer][0][i, :n], 4), heads_of(s_qkv[layer][1][i, :n], 4)
            maps = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
            torch.testing.assert_close(maps, probs[layer - 1][i, :, :n, :n], atol=1e-5, rtol=1e-4)
    ref_att = reference_attention(s_qkv, t_qkv, obj.map, 4, b.attention_mask)
    ref_layers = reference_layers(s_ref.hidden_states, t_ref.hidden_states, obj.map, obj.module["projection"], b.attention_mask)
    torch.testing.assert_close(got["attention"], ref_att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["layers"], ref_layers, rtol=1e-5, atol=1e-6)
    assert got["attention"] > 0 and got["layers"] > 0

    # gradients of the whole objective, the student's parameters and the projection's, equal the reference's
    s_logits = s_out.logits
    n_masked = b.masked.sum()  # slots with a target in the student's vocabulary
    mlm = F.cross_entropy(s_logits.float(), b.targets, ignore_index=-100, reduction="sum") / n_masked
    T = 2.0
    kl = (F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_out.logits / T, -1), log_target=True, reduction="none").sum(-1)
          * b.masked).sum() / n_masked
    torch.testing.assert_close(got["kl"], kl)
    reference = 0.2 * mlm + 0.3 * T**2 * kl + 0.7 * ref_att + 1.3 * ref_layers
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-6)
    params = [*student.parameters(), *obj.module.parameters()]
    for ours, ref, (name, _) in zip(grads(params, total), grads(params, reference),
                                    [*student.named_parameters(), *obj.module.named_parameters()]):
        if ref is None:
            assert ours is None or not ours.any(), name
            continue
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6, msg=name)


def test_minilmv2_relations_equal_the_written_out_reference():
    teacher, student = models("pre", student_heads=2)  # relations need no equal head counts
    obj = MiniLMv2(LossConfig(objective="minilmv2", a_kl=0.0, a_mlm=0.0, a_relations=1.0, relation_heads=6, teacher_layer=3))
    obj.bind(teacher.config, student.config)
    assert (obj.teacher.qkv, obj.student.qkv, obj.module) == ((3,), (2,), None)
    b = batch()
    with torch.no_grad():
        t_out = MaskedLM(teacher, VOCAB)(b.input_ids, b.attention_mask, b.positions, obj.teacher.hidden, obj.teacher.qkv)
    s_out = MaskedLM(student, VOCAB)(b.student_ids, b.attention_mask, b.positions, obj.student.hidden, obj.student.qkv)
    total, means = obj.loss(s_out, t_out, b, b.counts())
    with torch.no_grad():
        t_qkv, _ = captured_qkv(teacher, b.input_ids, b.attention_mask)
    s_qkv, _ = captured_qkv(student, b.student_ids, b.attention_mask)
    reference = reference_relations(s_qkv[2], t_qkv[3], 6, b.attention_mask)
    got = dict(zip([t.name for t in obj.terms], means))
    torch.testing.assert_close(got["relations"], reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-6)  # a_kl = a_mlm = 0: the relations alone
    assert got["kl"] > 0 and got["mlm"] > 0  # reported all the same
    params = list(student.parameters())
    for ours, ref, (name, _) in zip(grads(params, total), grads(params, reference), student.named_parameters()):
        if ref is None:  # layers after the last layer's Q/K/V get no gradient: the LM head, the last FFN
            assert ours is None or not ours.any(), name
            continue
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("which", ["tinybert", "minilmv2"])
def test_padding_counts_for_nothing(which):
    """What the padded positions hold changes no term."""
    teacher, student = models("post")
    obj = TinyBERT(LossConfig(objective="tinybert")) if which == "tinybert" else MiniLMv2(LossConfig(objective="minilmv2", relation_heads=4))
    torch.manual_seed(5)
    obj.bind(teacher.config, student.config)
    values = []
    for fill in (0, 17):
        b = batch()
        b.input_ids[b.attention_mask == 0] = fill
        b.student_ids = b.input_ids
        with torch.no_grad():
            t_out = MaskedLM(teacher, VOCAB)(b.input_ids, b.attention_mask, b.positions, obj.teacher.hidden, obj.teacher.qkv)
            s_out = MaskedLM(student, VOCAB)(b.student_ids, b.attention_mask, b.positions, obj.student.hidden, obj.student.qkv)
        values.append(torch.stack(obj.loss(s_out, t_out, b, b.counts())[1]))
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)


def test_uniform_layer_maps():
    assert uniform_map(12, 6) == [2, 4, 6, 8, 10, 12]
    assert uniform_map(12, 4) == [3, 6, 9, 12]
    assert uniform_map(4, 2) == [2, 4]


@pytest.mark.parametrize(("objective", "settings", "heads", "message"), [
    ("tinybert", {"layer_map": [2, 5]}, 4, "names teacher layer(s) [5] outside the teacher's 1..4"),
    ("tinybert", {"layer_map": [1, 2, 3]}, 4, "has 3 entries for a student of 2 layers"),
    ("tinybert", {}, 2, "the teacher has 4 heads and the student 2; set student.num_heads=4, or loss.a_attention=0"),
    ("minilmv2", {"relation_heads": 5}, 4, "loss.relation_heads 5 must divide both hidden sizes (teacher 48, student 24)"),
    ("minilmv2", {"teacher_layer": 7}, 4, "loss.teacher_layer 7 is outside the teacher's 1..4 layers"),
])
def test_a_pair_the_objective_cannot_distil_is_refused_in_one_line(objective, settings, heads, message):
    teacher, student = models("post", student_heads=heads)
    obj = (TinyBERT if objective == "tinybert" else MiniLMv2)(LossConfig(objective=objective, **settings))
    with pytest.raises(UserError, match="^" + ".*") as e:
        obj.bind(teacher.config, student.config)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="teacher.enabled is false"):
        obj.bind(None, student.config)


def test_minilmv2_relation_heads_default_to_the_most_up_to_12_that_divide_both_widths():
    teacher, student = models("post")  # widths 48 and 24: 12 divides both
    obj = MiniLMv2(LossConfig(objective="minilmv2"))
    obj.bind(teacher.config, student.config)
    assert obj.heads == 12 and "12 relation heads (auto" in obj.formula()
    from types import SimpleNamespace

    obj = MiniLMv2(LossConfig(objective="minilmv2"))
    obj.bind(SimpleNamespace(**{**vars(teacher.config), "hidden_size": 128}), SimpleNamespace(**{**vars(student.config), "hidden_size": 64}))
    assert obj.heads == 8 and "over 8 relation heads" in obj.terms[-1].description  # the smoke teacher and student
    obj = MiniLMv2(LossConfig(objective="minilmv2", relation_heads=4))
    obj.bind(teacher.config, student.config)
    assert obj.heads == 4 and "(auto" not in obj.formula()  # a count the user sets is kept


def test_tinybert_without_attention_allows_unequal_heads_and_equal_widths_need_no_projection():
    teacher, student = models("post", student_heads=2)
    obj = TinyBERT(LossConfig(objective="tinybert", a_attention=0.0))
    obj.bind(teacher.config, student.config)
    assert [t.name for t in obj.terms] == ["mlm", "kl", "layers"] and obj.student.qkv == ()
    wide = BertForMaskedLM(BertConfig(vocab_size=VOCAB, num_hidden_layers=2, hidden_size=48, num_attention_heads=4, intermediate_size=48))
    same = TinyBERT(LossConfig(objective="tinybert"))
    same.bind(teacher.config, wide.config)
    assert same.module is None and "W" not in same.formula().split(";")[0]


@pytest.mark.parametrize("preset", ["dbert-tiny-tinybert", "dbert-base-tinybert", "dbert-tiny-minilmv2", "dbert-base-minilmv2"])
def test_the_shipped_objective_presets_bind_to_mbert_and_their_student(preset):
    from types import SimpleNamespace

    from ds_distil.core.config import load
    from ds_distil.distill import objectives
    from ds_distil.model.build import PRESET_SIZES
    from ds_distil.schema.distill import DistillConfig

    cfg = load(DistillConfig, [ROOT / "configs" / f"{preset}.yaml"])

    def arch(name):
        layers, hidden, _, heads, _ = PRESET_SIZES[name]
        return SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads)

    obj = objectives.build(cfg)
    assert obj.name == preset.split("-")[-1] and cfg.teacher.pretrained == "bert-base-multilingual-cased"
    obj.bind(arch("mbert"), arch(cfg.student.preset))
    layers = PRESET_SIZES[cfg.student.preset][0]
    if obj.name == "tinybert":
        assert obj.map == ([3, 6, 9, 12] if layers == 4 else [2, 4, 6, 8, 10, 12])
        assert (obj.module is not None) == (cfg.student.preset == "dbert-tiny")  # 312 -> 768; Base is as wide as mBERT
    else:
        assert (obj.teacher.qkv, obj.student.qkv) == ((12,), (layers,))


@pytest.mark.parametrize("which", ["tinybert", "minilmv2"])
def test_a_batch_split_over_ranks_gives_the_whole_batchs_loss(which):
    """What each rank contributes (its sums over the GLOBAL counts, as the step all-reduces them) adds up to the loss of
    the whole batch on one rank: per-pair and per-token terms alike, however unevenly padding falls."""
    teacher, student = models("pre")
    obj = TinyBERT(LossConfig(objective="tinybert")) if which == "tinybert" else MiniLMv2(LossConfig(objective="minilmv2", relation_heads=4))
    torch.manual_seed(5)
    obj.bind(teacher.config, student.config)
    student.eval()
    b = batch()

    def run(part):
        with torch.no_grad():
            t = MaskedLM(teacher, VOCAB)(part.input_ids, part.attention_mask, part.positions, obj.teacher.hidden, obj.teacher.qkv)
            s = MaskedLM(student, VOCAB)(part.student_ids, part.attention_mask, part.positions, obj.student.hidden, obj.student.qkv)
        return obj.loss(s, t, part, b.counts())

    whole_total, whole_means = run(b)
    length = b.input_ids.shape[1]
    parts = []
    for rows in (slice(0, 2), slice(2, 3)):  # rank 0: samples 0-1 (masked slots 0, 1, 2, and an empty one), rank 1: sample 2
        lo, hi = rows.start * length, rows.stop * length
        keep = (b.positions >= lo) & (b.positions < hi)
        part = batch()
        part.input_ids, part.student_ids, part.attention_mask = b.input_ids[rows], b.student_ids[rows], b.attention_mask[rows]
        part.positions, part.targets = b.positions[keep] - lo, b.targets[keep]
        part.original_targets, part.index = part.targets, b.index[rows]
        parts.append(run(part))
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole_total, rtol=1e-5, atol=1e-6)
    for i in range(len(whole_means)):
        torch.testing.assert_close(parts[0][1][i] + parts[1][1][i], whole_means[i], rtol=1e-5, atol=1e-6)
