"""Task distillation without a training run: the loss (alpha * CE + (1 - alpha) * T^2 * KL per row, per word for token
tasks, aligned by word index; transfer rows in the KL alone), the KL shared with distillation, the transfer set, and
every refusal of a teacher or a predictions file that does not fit the task, in one line."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from ds_distil.core.config import ConfigError, from_dict
from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example, Task
from ds_distil.finetune import teacher as tch
from ds_distil.finetune.task_kd import TaskKD
from ds_distil.schema.finetune import FinetuneConfig

IGNORE = -100


def seq_task(n=6, labels=("0", "1")) -> Task:
    train = [Example(f"tweet {i}", labels[i % 2], id=f"train.csv:{i + 2}") for i in range(n)]
    return Task("hatespeech", "sequence", "accuracy", {"train": train, "valid": train[:2], "test": train[:2]}, source="hs")


def pos_task() -> Task:
    train = [Example(["Kumain", "ng", "isda"], ["VERB", "ADP", "NOUN"], id="a.conllu:2"),
             Example(["Tumakbo", "siya"], ["VERB", "PRON"], id="a.conllu:8")]
    return Task("pos", "token", "accuracy", {"train": train, "valid": train, "test": train}, labels=["ADP", "NOUN", "PRON", "VERB"], source="p")


class Engine:
    """A stand-in for the DeepSpeed engine: the given student logits, whatever the inputs."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, **inputs):
        assert "labels" not in inputs  # the loss is ours: the model's own would average over no labels in a transfer batch
        return SimpleNamespace(logits=self.logits)


def softmax_kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> float:
    """KL(p_teacher || p_student) at temperature t of one unit, from its definition."""
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    return float((p * (p.log() - q.log())).sum())


def test_the_loss_is_alpha_ce_plus_t2_kl_per_row_and_transfer_rows_count_in_the_kl_alone():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    teacher = [torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 2.0]), torch.tensor([0.3, 0.1])]
    feats = [{"index": i} for i in range(3)]
    labels = torch.tensor([0, 1, IGNORE])  # the third row is a transfer row: no label
    kd = TaskKD("sequence", feats, teacher, alpha=0.3, temperature=2.0)
    loss = kd.loss(Engine(student), {"input_ids": torch.zeros(3, 4), "labels": labels}, torch.tensor([0, 1, 2]))
    ce = (-torch.log_softmax(student[0], -1)[0] - torch.log_softmax(student[1], -1)[1]) / 2  # over the 2 labelled rows
    kl = sum(softmax_kl(teacher[i], student[i], 2.0) for i in range(3)) / 3  # over every row with a target
    assert loss.item() == pytest.approx(0.3 * ce.item() + 0.7 * 4.0 * kl, rel=1e-5)
    # a batch of transfer rows only: the KL term alone, never a mean over no labels (a NaN)
    only = kd.loss(Engine(student[2:]), {"input_ids": torch.zeros(1, 4), "labels": torch.tensor([IGNORE])}, torch.tensor([2]))
    assert only.item() == pytest.approx(0.7 * 4.0 * softmax_kl(teacher[2], student[2], 2.0), rel=1e-5)
    # alpha 1: the gold labels alone, as plain finetuning
    plain = TaskKD("sequence", feats, teacher, alpha=1.0, temperature=2.0).loss(Engine(student[:2]), {"labels": labels[:2]}, torch.tensor([0, 1]))
    assert plain.item() == pytest.approx(ce.item(), rel=1e-6)


def test_token_targets_sit_on_each_words_first_sub_word_of_the_student_aligned_by_word_index():
    """The student cut 'isda' (its max_length) and splits 'Kumain' into two sub-words; the teacher cut word 2 of row 1:
    the KL runs over the words both kept, each at the student's first sub-word of that word."""
    feats = [{"index": 0, "words": [1, 3]}, {"index": 1, "words": [1, 2]}]  # positions of each kept word's first sub-word
    nan = [math.nan] * 4
    teacher = [torch.tensor([[0.0, 0.0, 0.0, 3.0], [3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]),  # 3 words (the student kept 2)
               torch.tensor([[0.0, 0.0, 0.0, 2.0], nan])]  # the teacher did not see 'siya'
    kd = TaskKD("token", feats, teacher, alpha=0.5, temperature=1.0)
    t, w = kd.teacher_batch(torch.tensor([1, 0]), torch.Size([2, 5, 4]))
    assert w.tolist() == [[0, 1, 0, 0, 0], [0, 1, 0, 1, 0]]  # batch row 0 is example 1
    assert t[1, 1].tolist() == [0.0, 0.0, 0.0, 3.0] and t[1, 3].tolist() == [3.0, 0.0, 0.0, 0.0] and t[0, 1].tolist() == [0.0, 0.0, 0.0, 2.0]
    student = torch.randn(2, 5, 4)
    labels = torch.full((2, 5), IGNORE)
    labels[1, 1], labels[1, 3], labels[0, 1], labels[0, 2] = 3, 0, 3, 2
    loss = kd.loss(Engine(student), {"labels": labels}, torch.tensor([1, 0]))
    ce = -(torch.log_softmax(student[1, 1], -1)[3] + torch.log_softmax(student[1, 3], -1)[0] + torch.log_softmax(student[0, 1], -1)[3]
           + torch.log_softmax(student[0, 2], -1)[2]) / 4
    kl = (softmax_kl(t[1, 1], student[1, 1], 1.0) + softmax_kl(t[1, 3], student[1, 3], 1.0) + softmax_kl(t[0, 1], student[0, 1], 1.0)) / 3
    assert loss.item() == pytest.approx(0.5 * ce.item() + 0.5 * kl, rel=1e-5)


def test_the_kl_is_distillations_own_not_a_copy():
    from ds_distil.distill.objectives import kd as distill_kd
    from ds_distil.finetune import task_kd
    from ds_distil.runtime import losses

    assert task_kd.kl_sum is losses.kl_sum is distill_kd.kl_sum


def test_transfer_from_train_holds_labels_back_keeping_every_class_and_reads_a_transfer_file(tmp_path):
    from ds_distil.data.readers import ReadOptions
    from ds_distil.data.transfer import hold_back, read_file

    task = seq_task(10)
    kept, tr = hold_back(task, 8, seed=0)
    assert len(kept.splits["train"]) == 2 and {e.label for e in kept.splits["train"]} == {"0", "1"}  # every class keeps a row
    assert len(tr.examples) == 8 and all(e.label is None for e in tr.examples) and sorted(tr.gold) == ["0"] * 4 + ["1"] * 4
    assert kept.provenance["transfer_from_train"]["rows"] == 8
    with pytest.raises(UserError, match=r"task.transfer_from_train=10 leaves no labelled training rows \(the training split has 10\)"):
        hold_back(task, 10, seed=0)
    f = tmp_path / "unlabelled.csv"
    f.write_text("text\nisang tweet\nisa pa\n", encoding="utf-8")
    tr = read_file(f, task, ReadOptions())
    assert [e.text for e in tr.examples] == ["isang tweet", "isa pa"] and tr.gold is None and tr.source["rows"] == 2
    with pytest.raises(UserError, match=r"task.transfer_file=.*nope.csv does not exist"):
        read_file(tmp_path / "nope.csv", task, ReadOptions())


def lines_file(tmp_path, records) -> str:
    f = tmp_path / "teacher.jsonl"
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(f)


def good(i: int) -> dict:
    return {"id": f"train.csv:{i + 2}", "text": f"tweet {i}", "probabilities": {"0": 0.75, "1": 0.25}, "logits": [0.5, -0.6]}


# (a line replacing the first row's, the refusal): each names the file and line, what is wrong, and what to do
BAD_LINES = [
    ({**good(0), "probabilities": {"a": 0.5, "b": 0.5}}, r"teacher.jsonl:1: the probabilities \(a, b\) are not task hatespeech's \(0, 1\)"),
    ({**good(0), "probabilities": {"1": 0.25, "0": 0.75}}, r"teacher.jsonl:1: the probabilities name the task's labels in another order "
                                                           r"\(1, 0; task hatespeech: 0, 1\)"),
    ({"words": ["tweet", "0"], "logits": [[0.1, 0.2], [0.3, 0.4]]}, r"teacher.jsonl:1: a prediction per word \('words': another task type\)"),
    ({"text": "tweet 0", "logits": [0.1, math.nan]}, r"teacher.jsonl:1: a NaN or infinite value in 'logits'"),
    ({"text": "tweet 0", "probabilities": [1.2, -0.2]}, r"teacher.jsonl:1: a negative probability \(-0.2\)"),
    ({"text": "tweet 0", "probabilities": {"0": math.nan, "1": 0.5}}, r"teacher.jsonl:1: a NaN or infinite value in 'probabilities'"),
    ({"text": "tweet 0", "probabilities": [0.5, 0.2]}, r"teacher.jsonl:1: the probabilities sum to 0.7, not 1"),
    ({"text": "tweet 0", "logits": [0.1, 0.2, 0.3]}, r"teacher.jsonl:1: 'logits' is not 2 numbers, one per label of task hatespeech"),
    ({"text": "tweet 0"}, r"teacher.jsonl:1: neither 'logits' nor 'probabilities'"),
    ("{not json", r"teacher.jsonl:1: not a JSON line"),
    ({**good(0), "text": "another tweet"}, r"has no prediction for 1 of the 6 training rows, the first train.csv:2 \('tweet 0'\) \(its line "
                                           r"by id, .*teacher.jsonl:1, has another text\); predict every training and transfer row"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[f"bad{i}" for i in range(len(BAD_LINES))])
def test_a_predictions_file_that_does_not_fit_the_task_is_refused_in_one_line(tmp_path, line, message):
    task = seq_task()
    path = lines_file(tmp_path, [line] + [good(i) for i in range(1, 6)])
    with pytest.raises(UserError, match=message) as e:
        src = tch.open_source(None, path, task)
        tch.targets(src, task, task.splits["train"], None, 64, "fp32", None)
    assert "\n" not in str(e.value)


def test_a_good_predictions_file_gives_its_logits_or_the_log_of_its_probabilities(tmp_path):
    task = seq_task(3)
    rows = [good(0), {"text": "tweet 1", "probabilities": {"0": 0.2, "1": 0.8}}, {"text": "tweet 2", "probabilities": [0.0, 1.0]},
            {"text": "tweet 0", "logits": [9.0, 9.0]}]  # a second line of a text: the first wins
    src = tch.open_source(None, lines_file(tmp_path, rows), task)
    t = tch.targets(src, task, task.splits["train"], None, 64, "fp32", None)
    assert t.train[0].tolist() == pytest.approx([0.5, -0.6])
    assert torch.softmax(t.train[1], -1).tolist() == pytest.approx([0.2, 0.8]) and torch.softmax(t.train[2], -1).tolist() == pytest.approx([0.0, 1.0])
    s = t.record["train"]
    assert s["agreement"] == pytest.approx(2 / 3) and s["class_balance"] == pytest.approx({"0": 1 / 3, "1": 2 / 3})  # gold 0, 1, 0


def test_token_prediction_lines_are_checked_per_word(tmp_path):
    task = pos_task()
    p = [{"ADP": 0.1, "NOUN": 0.1, "PRON": 0.1, "VERB": 0.7}] * 3
    ok = [{"words": ["Kumain", "ng", "isda"], "probabilities": p}, {"words": ["Tumakbo", "siya"], "logits": [[0, 0, 0, 1], None]}]
    t = tch.targets(tch.open_source(None, lines_file(tmp_path, ok), task), task, task.splits["train"], None, 64, "fp32", None)
    assert t.train[0].shape == (3, 4) and torch.isnan(t.train[1][1]).all() and t.record["train"]["words_without_target"] == 1
    for rec, message in [({"words": ["Kumain", "ng", "isda"], "logits": [[0, 0, 0, 1]] * 2}, r"'logits' has 2 entries for 3 words"),
                         ({"text": "Kumain ng isda", "logits": [0, 0, 0, 1]}, r"no 'words' \(a whole text's prediction: another task type\)")]:
        with pytest.raises(UserError, match=message):
            tch.open_source(None, lines_file(tmp_path, [rec, ok[1]]), task)


@pytest.mark.parametrize("arch,labels,message", [
    ("BertForSequenceClassification", ["1", "0"], r"its labels \(config.json's id2label\) name the task's labels in another order \(1, 0"),
    ("BertForSequenceClassification", ["neg", "pos"], r"its labels \(config.json's id2label\) \(neg, pos\) are not task hatespeech's"),
    ("BertForTokenClassification", ["0", "1"], r"is a token classifier but task hatespeech is sequence classification"),
    ("BertForMaskedLM", ["0", "1"], r"is not a classifier \(BertForMaskedLM\)"),
])
def test_a_teacher_of_another_task_or_label_order_is_refused_before_it_is_loaded(tmp_path, arch, labels, message):
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "id2label": dict(enumerate(labels))}))
    with pytest.raises(UserError, match=rf"teacher=.*teacher: .*{message}|teacher=.*teacher {message}"):
        tch.open_source(str(d), None, seq_task())
    with pytest.raises(UserError, match=r"is not a model directory \(no config.json\)"):
        tch.open_source(str(tmp_path / "nothing"), None, seq_task())


@pytest.mark.parametrize("settings,message", [
    ({"kd": {"temperature": 0.0}}, "config section 'kd': temperature must be > 0, got 0.0"),
    ({"kd": {"alpha": 1.5}}, "config section 'kd': alpha must be in [0, 1]"),
    ({"kd": {"alpha": -0.1}}, "config section 'kd': alpha must be in [0, 1]"),
    ({"teacher": "a", "teacher_predictions": "b"}, "teacher and teacher_predictions are two sources of the same targets: set one"),
    ({"task": {"transfer_file": "x.csv"}}, "task.transfer_file is a transfer set for a teacher to label"),
    ({"task": {"transfer_file": "x.csv", "transfer_from_train": 3}}, "transfer_file and transfer_from_train are two transfer sets"),
])
def test_bad_task_distillation_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=None) as e:
        from_dict(FinetuneConfig, settings)
    assert message in str(e.value)


@pytest.mark.slow
def test_a_live_teacher_and_its_predictions_file_teach_the_same_student(tmp_path, data_dir):
    """`ds-distil predict` of the teacher over the training file, given as teacher_predictions, teaches bit for bit the
    student the live teacher does (same batches and precision: the same lines, read by the same code); a transfer set from
    held-back rows; the student alone on the same labelled rows differs; a file missing rows is refused, nothing written."""
    import csv
    import os

    from conftest import one_line_error, run_cli
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    hs = tmp_path / "hs"
    hs.mkdir()
    for split, n in (("train", 240), ("valid", 60), ("test", 60)):
        with open(data_dir / "hatespeech" / f"{split}.csv", encoding="utf-8") as f, open(hs / f"{split}.csv", "w", encoding="utf-8", newline="") as g:
            rows = list(csv.reader(f))[: n + 1]
            csv.writer(g).writerows(rows)
    common = [f"task.data_dir={hs}", f"task.tokenizer={data_dir / 'mbert_tokenizer'}", "task.max_length=48", "train.micro_batch_size=16",
              "checkpoint.every_steps=0", "eval_every_steps=null", "log_every_steps=1"]
    proc = run_cli("finetune", "--model", "micro", "--task", "hatespeech", "--out", str(tmp_path / "teacher"), *common, "train.max_steps=12",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("predict", "--model", str(tmp_path / "teacher" / "model"), "--input", str(hs / "train.csv"), "--out",
                   str(tmp_path / "teacher.jsonl"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    student = ["--model", "micro", "--task", "hatespeech", *common, "train.max_steps=6", "task.transfer_from_train=160", "kd.temperature=4"]
    runs = {"live": [f"teacher={tmp_path / 'teacher' / 'model'}", "kd.teacher_dtype=fp32"],
            "file": [f"teacher_predictions={tmp_path / 'teacher.jsonl'}"], "alone": []}
    res, weights, losses = {}, {}, {}
    for name, extra in runs.items():
        proc = run_cli("finetune", "--out", str(tmp_path / name), *student, *extra, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res[name] = json.loads((tmp_path / name / "results.json").read_text())
        weights[name] = load_file(str(tmp_path / name / "model" / "model.safetensors"))
        losses[name] = [json.loads(line)["loss/train"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                        if "loss/train" in line]
        if name != "alone":
            assert "task distillation: the student learns from " in proc.stderr and "transfer set (task.transfer_from_train=160)" in proc.stderr
    assert weights["live"].keys() == weights["file"].keys() and all(torch.equal(weights["live"][k], weights["file"][k]) for k in weights["live"])
    assert losses["live"] == losses["file"] and len(losses["live"]) == 6 and res["live"]["score"] == res["file"]["score"]
    live, file = res["live"]["distillation"], res["file"]["distillation"]
    assert live["teacher"]["source"] == "live teacher" and file["teacher"]["source"] == "predictions file"
    assert live["teacher"]["transfer"] == file["teacher"]["transfer"] and live["teacher"]["transfer"]["rows"] == 160
    assert live["teacher"]["train"]["agreement"] == file["teacher"]["train"]["agreement"] is not None and live["temperature"] == 4.0
    assert res["live"]["train_examples"] == res["alone"]["train_examples"] == 80 and res["live"]["transfer_examples"] == 160
    assert res["alone"]["distillation"]["left_out"]["rows"] == 160 and res["alone"]["transfer_examples"] == 0
    assert any(not torch.equal(weights["live"][k], weights["alone"][k]) for k in weights["live"])  # the teacher taught something
    assert "Distilled on the task from teacher=" in (tmp_path / "live" / "model" / "README.md").read_text()  # the model card says so

    # a file that misses rows: one line naming the first row it lacks, and no --out
    lines = (tmp_path / "teacher.jsonl").read_text().splitlines()
    (tmp_path / "part.jsonl").write_text("\n".join(lines[:100]) + "\n")
    proc = run_cli("finetune", "--out", str(tmp_path / "refused"), *student, f"teacher_predictions={tmp_path / 'part.jsonl'}", env=env)
    one_line_error(proc, "part.jsonl has no prediction for ", " of the 80 training rows, the first train.csv:", "predict every training")
    assert not (tmp_path / "refused").exists()
