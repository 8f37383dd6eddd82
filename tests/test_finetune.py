"""`ds-distil finetune` with real processes, and `ds-distil report`."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import ROOT, free_port, run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
FIELDS = {"model", "model_name", "task", "dataset", "metric", "score", "valid_score", "macro_f1", "train_runtime_s", "samples_per_s",
          "device", "seed", "config", "labels", "label_map", "splits", "data", "evaluation", "baselines", "warnings",
          "duplicates", "truncation", "recipe", "one_class"}
pytestmark = pytest.mark.slow


def finetune_cmd(out, model, task, *overrides, ranks=1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
              "--master_port", free_port(), "-m", "ds_distil"] if ranks > 1 else [sys.executable, "-m", "ds_distil"]
    return [*launch, "finetune", "--model", model, "--task", task, "--out", str(out), *overrides]


def test_two_ranks_finetune_hatespeech_and_report(tmp_path, data_dir):
    import subprocess

    common = ["train.max_steps=6", "train.micro_batch_size=8", "task.max_length=48", "eval_batch_size=128", "checkpoint.every_steps=0",
              f"task.data_dir={data_dir / 'hatespeech'}", f"task.tokenizer={data_dir / 'mbert_tokenizer'}"]
    for model, ranks in (("micro", 2), ("tiny", 1)):
        # a mid-training evaluation gathers every rank's predictions
        extra = ["eval_every_steps=3"] if ranks == 2 else ["eval_every_steps=null"]
        proc = subprocess.run(finetune_cmd(tmp_path / model, model, "hatespeech", *common, *extra, ranks=ranks), capture_output=True,
                              text=True, env=ENV, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if ranks == 2:
            assert "step 3/6: valid accuracy " in proc.stderr
    res = json.loads((tmp_path / "micro" / "results.json").read_text())
    assert FIELDS <= set(res) and res["world_size"] == 2 and res["task"] == "hatespeech" and res["metric"] == "accuracy"
    assert res["zero_stage"] == 2 and json.loads((tmp_path / "tiny" / "results.json").read_text())["zero_stage"] == 0  # 1 rank: none
    assert 0.0 <= res["score"] <= 1.0 and 0.0 <= res["valid_score"] <= 1.0 and res["train_runtime_s"] > 0
    assert res["steps"] == 6 and res["config"]["train"]["micro_batch_size"] == 8
    assert res["recipe"]["name"] == "blank" and res["config"]["train"]["lr"] == 5e-4  # a preset: the blank recipe, no flag
    assert (tmp_path / "micro" / "finetune_config.yaml").exists() and list((tmp_path / "micro" / "tensorboard").glob("events.*"))
    # `ds-distil predict` on 2 ranks (each a share of the rows, batched by length, gathered): the run's own test predictions
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), "-m",
                           "ds_distil", "predict", "--model", str(tmp_path / "micro" / "model"), "--input",
                           str(data_dir / "hatespeech" / "test.csv"), "--out", str(tmp_path / "p.jsonl"), "batch_size=256"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine, run = ([json.loads(line) for line in f.read_text().splitlines()]
                 for f in (tmp_path / "p.jsonl", tmp_path / "micro" / "predictions" / "test.jsonl"))
    assert len(mine) == 4232 and [(p["id"], p["predicted"]) for p in mine] == [(p["id"], p["predicted"]) for p in run]
    assert max(abs(a - b) for p, q in zip(mine, run) for a, b in zip(p["logits"], q["logits"])) < 1e-5  # batched otherwise

    # the table: rows per model, score and runtime per task, speedup against a chosen baseline row
    rep = run_cli("report", "--runs", str(tmp_path / "micro"), str(tmp_path / "tiny"), "--out", str(tmp_path / "report"),
                  "--baseline", "tiny")
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## hatespeech / hatespeech (accuracy; test 4,232 examples)" in md and "| micro |" in md and "| tiny |" in md
    assert "| baseline: majority ('0') | 52.58 |" in md  # 2,225 of the 4,232 test tweets are '0', the training majority
    assert "avg speedup vs tiny" in md
    table = json.loads((tmp_path / "report" / "report.json").read_text())["table"]
    tiny = next(r for r in table["speed"]["rows"] if r["model"] == "tiny")
    assert tiny["speedup"] == 1.0
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000


def test_two_zero2_ranks_finetune_as_one_rank_without_zero(tmp_path, data_dir):
    """The same global batches (DistributedSampler's shares of one permutation), no dropout: the logged training loss
    (the global batch's mean) of 2 ZeRO-2 ranks at micro batch 4 follows 1 rank's without ZeRO at 8, step by step."""
    import subprocess

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    arch = tmp_path / "config.json"  # random weights from an architecture file: dropout off, so the ranks' arithmetic is all
    arch.write_text(json.dumps({"model_type": "bert", "vocab_size": 119547, "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "pad_token_id": 0}))
    common = ["train.max_steps=8", "log_every_steps=1", "task.max_length=32", "task.max_train_examples=400", "train.lr=1e-3",
              "eval_every_steps=null", "checkpoint.every_steps=0", f"task.data_dir={data_dir / 'hatespeech'}"]
    losses, results = {}, {}
    for ranks, batch in ((2, 4), (1, 8)):
        out = tmp_path / f"r{ranks}"
        proc = subprocess.run(finetune_cmd(out, str(arch), "hatespeech", *common, f"train.micro_batch_size={batch}", ranks=ranks),
                              capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[ranks] = [e.value for e in EventAccumulator(str(out / "tensorboard")).Reload().Scalars("loss/train")]
        results[ranks] = json.loads((out / "results.json").read_text())
    assert results[2]["zero_stage"] == 2 and results[1]["zero_stage"] == 0
    assert len(losses[1]) == 8 and losses[2] == pytest.approx(losses[1], rel=1e-5)
    assert losses[1][-1] != pytest.approx(losses[1][0], rel=1e-3)  # it trained
    assert results[2]["score"] == results[1]["score"] and results[2]["valid_score"] == results[1]["valid_score"]


def test_finetune_refusals(tmp_path, data_dir):
    proc = run_cli("finetune", "--model", "micro", "--task", "sentiment", "--out", str(tmp_path / "x"), env=ENV)
    assert proc.returncode == 2 and "unknown task 'sentiment'" in proc.stderr
    no_tok = tmp_path / "model-without-tokenizer"
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(str(no_tok))
    proc = run_cli("finetune", "--model", str(no_tok), "--task", "hatespeech", "--out", str(tmp_path / "y"),
                   f"task.data_dir={data_dir / 'hatespeech'}", env=ENV)
    assert proc.returncode == 2 and "has no tokenizer files" in proc.stderr


def test_finetune_on_a_users_imbalanced_csv(tmp_path, data_dir):
    """A user's Excel CSV (UTF-8 BOM), 80/20 labels, no validation file: what results.json and the console tell."""
    import csv
    import hashlib
    import subprocess

    from ds_distil.data.tokenizer import load_tokenizer

    with open(data_dir / "hatespeech" / "train.csv", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:60]
    d = tmp_path / "my-tweets"
    d.mkdir()
    for split, rows in (("train", texts[:40]), ("test", texts[40:59] + [texts[0].upper()])):  # one test tweet is a training one
        with open(d / f"{split}.csv", "w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows([t, "bad" if i % 5 == 0 else "ok"] for i, t in enumerate(rows))
    # a pretrained-style directory (MLM head, no classifier) with a model card naming it
    from transformers import BertConfig, BertForMaskedLM

    tok = load_tokenizer(str(data_dir / "mbert_tokenizer"))
    model = tmp_path / "checkpoint-dir"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(model))
    tok.save_pretrained(str(model))
    (model / "README.md").write_text("---\nmodel_name: tl-test-student\n---\n# something else\n")

    proc = subprocess.run(finetune_cmd(tmp_path / "out", str(model), "csv", f"task.data_dir={d}", "task.valid_fraction=0.2",
                                       "train.lr=5e-5", "train.max_steps=3", "train.micro_batch_size=8", "task.max_length=auto",
                                       "eval_every_steps=2", "checkpoint.every_steps=0"),
                          capture_output=True, text=True, env={**ENV, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one process builds no DeepSpeed op, nor waits on another process's build lock
    assert not (tmp_path / "ext").exists() and "building DeepSpeed" not in proc.stderr
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert FIELDS <= set(res) and res["config"]["train"]["lr"] == 5e-5
    # TensorBoard: the validation curve (step 2 and the end), test scores at the end, the hyper-parameters beside them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("valid/score")] == [2, 3] and [e.step for e in events.Scalars("valid/macro_f1")] == [2, 3]
    assert events.Scalars("valid/score")[-1].value == pytest.approx(res["valid_score"])
    assert [(e.step, e.value) for e in events.Scalars("test/score")] == [(3, pytest.approx(res["score"]))]
    assert events.Scalars("test/macro_f1")[0].value == pytest.approx(res["macro_f1"])
    assert events.Scalars("hparam/test_score")[0].value == pytest.approx(res["score"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    assert start.hparams["lr"].number_value == 5e-5 and start.hparams["recipe"].string_value == "pretrained"
    assert "step 2/3: valid accuracy " in proc.stderr
    # a pretrained directory: the pretrained recipe beneath, the user's train.lr kept
    assert res["recipe"]["name"] == "pretrained" and res["recipe"]["yours"]["train.lr"] == 5e-5
    line = next(x for x in proc.stderr.splitlines() if "recipe: pretrained (" in x)
    assert "is a pretrained encoder: train.epochs=3" in line and "train.lr=5e-05" in line.split("yours kept: ")[1]
    assert res["model_name"] == "tl-test-student" and res["dataset"] == "my-tweets"
    assert res["label_map"] == {"bad": 0, "ok": 1}
    train_file = res["data"]["files"]["train"]
    assert train_file["sha256"] == hashlib.sha256((d / "train.csv").read_bytes()).hexdigest() and train_file["encoding"] == "utf-8-sig"
    # 8 of 40 held out, stratified: 2 of the 8 'bad', 6 of the 32 'ok'
    assert res["data"]["valid_from_train"]["examples"] == 8
    assert res["splits"]["valid"]["label_counts"] == {"bad": 2, "ok": 6} and res["splits"]["train"]["label_counts"] == {"bad": 6, "ok": 26}
    assert res["splits"]["test"]["label_counts"] == {"bad": 4, "ok": 16}
    test = res["evaluation"]["test"]
    assert sum(map(sum, test["confusion_matrix"])) == 20 and set(test["per_class"]) == {"bad", "ok"}
    assert test["accuracy"] == res["score"]
    assert res["baselines"]["majority"]["label"] == "ok" and res["baselines"]["majority"]["test"]["accuracy"] == 0.8
    collapsed = max(test["predicted_counts"].values()) / 20 > 0.95
    assert any("the model predicts" in w for w in res["warnings"]) == collapsed and ("WARNING: the model predicts" in proc.stdout) == collapsed
    # the leaked test tweet: counted, warned once, before training (the console), and kept in results.json
    assert res["duplicates"]["across"]["test_in_train"] == {"rows": 1, "share": 0.05, "distinct": 1}
    assert res["duplicates"]["across"]["valid_in_train"]["rows"] == 0  # the held-out split keeps copies together
    leak = "1 of the 20 test rows (5.0%; 1 distinct texts) also occur in training"
    assert any(w.startswith(leak) for w in res["warnings"]) and (proc.stderr + proc.stdout).count(leak) == 1
    assert "(1 warning about the data, printed before training, is in results.json too)" in proc.stdout
    # held-out splits of 8 and 20 rows: their scores' 95% intervals, warned once, at the end
    for split, n in (("validation", 8), ("test", 20)):
        lo, hi = res["evaluation"]["valid" if split == "validation" else "test"]["interval95"]
        line = f"the {split} split has {n} rows: its accuracy "
        assert lo <= res["evaluation"]["valid" if split == "validation" else "test"]["score"] <= hi
        assert (proc.stderr + proc.stdout).count(line) == 1 and f"WARNING: {line}" in proc.stdout and "95% interval of" in proc.stdout
    assert "duplicate rows (Unicode NFKC, case folded, white space collapsed): train " in proc.stderr
    # task.max_length=auto: 99% of the training tweets, within the model's 64 positions; what it cut, per split
    trunc = res["truncation"]
    assert trunc["setting"] == "auto" and trunc["max_length"] % 8 == 0 and 16 <= trunc["max_length"] <= 64
    assert trunc["splits"]["train"]["truncated"] <= 1 or trunc["max_length"] == 64  # 32 training rows: 99% leaves none or one
    assert set(trunc["splits"]) == {"train", "valid", "test"} and trunc["splits"]["test"]["examples"] == 20
    assert f"truncation at task.max_length={trunc['max_length']} (auto: covers 99% of the training examples, at most 64)" in proc.stderr
    assert "baseline majority" in proc.stdout and "confusion matrix (test" in proc.stdout
    assert f"model vs baselines (accuracy): valid {res['valid_score']:.4f} (majority class " in proc.stdout
    # the pretraining head and the new classifier are one line of ours, not transformers' key table; no op-build chatter
    assert "new (trained from scratch): bert.pooler.dense, classifier" in proc.stderr
    assert "LOAD REPORT" not in proc.stderr + proc.stdout and "built successfully" not in proc.stdout

    check_model_dir_and_predict(tmp_path / "out", d / "test.csv", res)


def check_model_dir_and_predict(out, test_csv, res):
    """DIR/model loads with transformers alone (a process that never imports ds_distil) and predicts, for every test row,
    the label DIR/predictions/test.jsonl says; `ds-distil predict` on the test file says the same, and refuses a file
    that does not fit the model in one line."""
    import subprocess

    preds = [json.loads(line) for line in (out / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(preds) == 20 and preds[0]["id"] == "test.csv:2" and set(preds[0]) == {"id", "text", "gold", "predicted", "probabilities",
                                                                                     "logits", "truncated"}
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 and p["predicted"] == max(p["probabilities"], key=p["probabilities"].get)
               for p in preds)
    assert [p["gold"] for p in preds] == ["bad" if i % 5 == 0 else "ok" for i in range(20)]
    assert sum(p["predicted"] == p["gold"] for p in preds) / 20 == res["score"]  # the scores are these predictions'
    assert len((out / "predictions" / "valid.jsonl").read_text().splitlines()) == 8
    assert res["keep"] == {"setting": "last", "chosen": "last", "step": 3, "valid_score": res["valid_score"]}
    assert not (out / "checkpoints").exists() and "watch it: tensorboard --logdir" in (out / "finetune.log").read_text()
    model_dir = out / "model"
    spec = json.loads((model_dir / "ds_distil_task.json").read_text())
    assert spec["kind"] == "sequence" and spec["labels"] == ["bad", "ok"] and spec["text_column"] == "text"
    card = (model_dir / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "## Scores" in card and "majority" in card
    assert "AutoModelForSequenceClassification" in card
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "texts = [json.loads(line)['text'] for line in open(sys.argv[2])]\n"
        "with torch.no_grad():\n"
        "    ids = m(**tok(texts, truncation=True, padding=True, return_tensors='pt')).logits.argmax(-1).tolist()\n"
        "assert 'ds_distil' not in sys.modules\n"
        "print(json.dumps([m.config.id2label[i] for i in ids]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), str(out / "predictions" / "test.jsonl")], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [p["predicted"] for p in preds]

    proc = run_cli("predict", "--model", str(model_dir), "--input", str(test_csv), "--out", str(out.parent / "p.jsonl"), env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = [json.loads(line) for line in (out.parent / "p.jsonl").read_text().splitlines()]
    assert [(p["id"], p["predicted"], p["gold"]) for p in again] == [(p["id"], p["predicted"], p["gold"]) for p in preds]
    assert f"against the file's gold labels: accuracy {res['score']:.4f}" in proc.stdout
    bad = out.parent / "other-labels.csv"
    bad.write_text("text,label\nisang tweet,ok\nisa pa,neutral\n", encoding="utf-8")
    proc = run_cli("predict", "--model", str(model_dir), "--input", str(bad), "--out", str(out.parent / "q.jsonl"), env=ENV)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"ds-distil predict: error: {bad}:3: label 'neutral' is not one of the model's labels (bad, ok); fix the label (a file without the "
        "label column is predicted without gold labels), or set skip_bad_rows=true to skip such rows and count them"]
    assert not (out.parent / "q.jsonl").exists()


def test_a_duplicated_set_is_warned_once_each_and_dedup_drop_says_what_it_dropped(tmp_path, data_dir):
    """Issue 40's tweets, in small: training rows mostly repeats, a validation split of copies, held-out splits far under
    200 rows, texts longer than max_length. Each warning is a WARNING, printed once; task.dedup=drop dedupes training and
    validation, says so, and leaves test as it is."""
    import csv
    import subprocess

    with open(data_dir / "hatespeech" / "train.csv", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:40]
    d = tmp_path / "dups"
    d.mkdir()
    rows = {"train": [t for i, t in enumerate(texts[:20]) for _ in range(1 + i % 5)],  # 60 rows, 20 distinct: 66.7% repeats
            "valid": [t for t in texts[20:30] for _ in range(3)], "test": texts[30:40] + texts[:2]}
    for split, split_rows in rows.items():
        with open(d / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows([t, "a" if texts.index(t) % 2 else "b"] for t in split_rows)
    common = ["task.max_length=16", "train.epochs=1", "train.micro_batch_size=8", "eval_every_steps=null", "checkpoint.every_steps=0",
              f"task.data_dir={d}", f"task.tokenizer={data_dir / 'mbert_tokenizer'}"]
    proc = subprocess.run(finetune_cmd(tmp_path / "keep", "micro", "csv", *common), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = proc.stderr + proc.stdout
    repeats = ("40 of the 60 training rows (66.7%) repeat an earlier row (20 distinct texts, one of them 5 times; ",
               "about 5 of the run's 8 optimizer steps go to texts the model has seen already")
    for needle in (*repeats, "20 of the 30 validation rows (66.7%) repeat an earlier row", "2 of the 12 test rows (16.7%",
                   "task.max_length=16 cuts ", "the validation split has 30 rows: its accuracy",
                   "the test split has 12 rows: its accuracy"):
        assert both.count(needle) == 1, (needle, both[-4000:])
    assert f"WARNING ds_distil.finetune.setup: {repeats[0]}" in proc.stderr  # a warning, not an INFO line
    res = json.loads((tmp_path / "keep" / "results.json").read_text())
    assert res["steps"] == 8 and res["duplicates"]["splits"]["valid"]["duplicate_rows"] == 20

    proc = subprocess.run(finetune_cmd(tmp_path / "drop", "micro", "csv", *common, "task.dedup=drop"), capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("task.dedup=drop: training: dropped 39 repeated rows and 3 rows whose text is in validation or test, 18 left; "
            "validation: dropped 20 repeated rows, 10 left; test: left as it is") in proc.stderr
    assert "repeat an earlier row" not in proc.stderr + proc.stdout
    res = json.loads((tmp_path / "drop" / "results.json").read_text())
    assert res["splits"]["train"]["examples"] == 18 and res["splits"]["valid"]["examples"] == 10 and res["splits"]["test"]["examples"] == 12
