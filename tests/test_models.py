"""Teacher and student construction: presets, frozen teacher, vocabulary checks, embedding init."""

import pytest
import torch

from ds_distil.core.errors import UserError
from ds_distil.model.build import build_student, build_teacher, count_parameters
from ds_distil.model.forward import encoder
from ds_distil.schema.distill import StudentConfig, TeacherConfig

MBERT_VOCAB = 119547


@pytest.mark.parametrize("preset, sizes", [
    ("dbert-base", (6, 768, 3072, 12, 512)),
    ("dbert-tiny", (4, 312, 1200, 12, 512)),
    ("mbert", (12, 768, 3072, 12, 512)),
])
def test_presets_have_the_papers_sizes(preset, sizes):
    from ds_distil.model.build import bert_config

    c = bert_config(preset, MBERT_VOCAB, 0)
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.max_position_embeddings) == sizes
    assert c.vocab_size == MBERT_VOCAB


def test_dbert_tiny_parameter_count():
    student = build_student(StudentConfig(preset="dbert-tiny"), MBERT_VOCAB, 0)
    n = count_parameters(student)
    # 119,547 x 312 word embeddings dominate: ~37.3M of ~42M (PLATFORM.md measured 42M / 37M)
    assert 41.5e6 < n["total"] < 42.5e6 and 37.0e6 < n["embeddings"] < 37.7e6


def test_custom_size_overrides_preset():
    s = build_student(StudentConfig(preset="dbert-tiny", num_layers=2, hidden_size=96, num_heads=4), 1000, 0)
    assert (s.config.num_hidden_layers, s.config.hidden_size, s.config.intermediate_size) == (2, 96, 1200)
    with pytest.raises(UserError, match="not divisible"):
        build_student(StudentConfig(preset="micro", hidden_size=65), 1000, 0)


def test_teacher_is_frozen_and_in_eval_mode():
    t = build_teacher(TeacherConfig(preset="micro"), 1000, 0)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert build_teacher(TeacherConfig(enabled=False), 1000, 0) is None


def test_teacher_config_with_another_vocabulary_is_refused(mbert_tokenizer_dir):
    with pytest.raises(UserError, match="119547 entries but the shards' tokenizer has 1000"):
        build_teacher(TeacherConfig(config=str(mbert_tokenizer_dir / "bert_config.json")), 1000, 0)


def test_missing_teacher_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load teacher"):
        build_teacher(TeacherConfig(pretrained=str(tmp_path / "nope")), 1000, 0)


def test_embeddings_copied_when_sizes_match_and_frozen():
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(preset="micro"), 1000, 0)
    student = build_student(StudentConfig(preset="micro", num_layers=1, embeddings="teacher", freeze_embeddings=True), 1000, 0, teacher)
    s, t = encoder(student).embeddings, encoder(teacher).embeddings
    assert torch.equal(s.word_embeddings.weight, t.word_embeddings.weight)
    assert torch.equal(s.position_embeddings.weight, t.position_embeddings.weight)
    assert not any(p.requires_grad for p in s.parameters())
    assert student.cls.predictions.decoder.weight is s.word_embeddings.weight  # tied: frozen too


def test_embeddings_of_other_size_are_refused_or_projected():
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(preset="tiny"), 1000, 0)  # hidden 128
    with pytest.raises(UserError, match="teacher-pca"):
        build_student(StudentConfig(preset="micro", embeddings="teacher"), 1000, 0, teacher)  # hidden 64
    student = build_student(StudentConfig(preset="micro", embeddings="teacher-pca"), 1000, 0, teacher)
    w_s = encoder(student).embeddings.word_embeddings.weight
    w_t = encoder(teacher).embeddings.word_embeddings.weight
    # PCA keeps the geometry: inner products of the projection approximate the centred teacher's
    centred = w_t - w_t.mean(0)
    kept = (w_s.norm() ** 2) / (centred.norm() ** 2)
    assert w_s.shape == (1000, 64) and 0.5 < kept <= 1.0001
    with pytest.raises(UserError, match="needs a teacher"):
        build_student(StudentConfig(preset="micro", embeddings="teacher"), 1000, 0, None)


def test_pre_ln_student_is_a_megatron_bert_that_the_pipeline_and_auto_classes_handle(tmp_path):
    """student.norm=pre: the masked-only forward, vocabulary padding, embedding copy from a post-LN
    teacher and the Hugging Face round trip (finetuning loads it with AutoModelFor*) all work on it."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, MegatronBertForMaskedLM

    from ds_distil.model.forward import masked_lm_forward
    from ds_distil.model.surgery import pad_vocab, unpad_vocab

    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(preset="micro"), 1000, 0)
    student = build_student(StudentConfig(preset="micro", norm="pre", embeddings="teacher", dropout=0.0), 1000, 0, teacher)
    assert isinstance(student, MegatronBertForMaskedLM) and student.config.model_type == "megatron-bert"
    assert torch.equal(encoder(student).embeddings.word_embeddings.weight, encoder(teacher).embeddings.word_embeddings.weight)
    student.eval()
    ids = torch.randint(5, 1000, (2, 12))
    attention = torch.ones_like(ids)
    full = student(input_ids=ids, attention_mask=attention).logits
    positions = torch.tensor([1, 7, 20])
    picked = masked_lm_forward(student, ids, attention, positions).logits
    assert torch.allclose(picked, full.reshape(-1, 1000)[positions], atol=1e-5)
    restored = unpad_vocab(pad_vocab(student, 128), 1000)
    assert torch.equal(restored(input_ids=ids, attention_mask=attention).logits, full)

    student.save_pretrained(tmp_path)
    assert torch.equal(AutoModelForMaskedLM.from_pretrained(tmp_path).eval()(input_ids=ids, attention_mask=attention).logits, full)
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2, output_loading_info=True)
    assert not [k for k in info["missing_keys"] if not k.startswith(("classifier", "bert.pooler"))], info["missing_keys"]


def test_norm_applies_to_blank_models_only():
    with pytest.raises(ValueError, match="student.norm"):
        StudentConfig(pretrained="some/model", norm="pre")
