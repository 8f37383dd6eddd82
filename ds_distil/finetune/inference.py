"""A classifier's outputs on featurised rows, on one rank or N, and the JSONL file of predictions they become.

`infer` runs the model in inference mode over the rows longest first (an out-of-memory batch shows at once), in batches
of neighbours in length, each padded to its own longest row, so little of the work is padding; rank r takes every
world_size-th row of that order, so the ranks' shares are alike in length; the logits are gathered on every rank.

One line per example (`records`), in the order of the input, the same for `ds-distil finetune`'s
predictions/{valid,test}.jsonl and `ds-distil predict --out FILE`:

    sequence / pair:  {"id", "text", ["text_pair",] "gold", "predicted", "probabilities": {label: p, ...},
                       "logits": [z, ...], "truncated"}
    token:            {"id", "words": [...], "gold": [...], "predicted": [...], "probabilities": [{label: p, ...}, ...],
                       "logits": [[z, ...], ...], "truncated"}

`id`: the row's id column, or FILE:LINE where it was read. `gold`: null where the input has no labels. `logits`
follow the model's label order (config.json's id2label, the order of `probabilities`' keys); probabilities are their
softmax. Token tasks score each word by its first sub-word: a word that max_length cut off has null for its
prediction, probabilities and logits, and `truncated` is true.
"""

from __future__ import annotations

import json

import torch

from ds_distil.core.dist import all_gather_objects
from ds_distil.core.progress import Progress
from ds_distil.data.examples import Example
from ds_distil.finetune.features import collate


def infer(model: torch.nn.Module, feats: list[dict], batch_size: int, pad_id: int, rank: int, world_size: int, device: torch.device,
          desc: str = "predict") -> dict[int, torch.Tensor]:
    """{example index: float32 logits}: (labels,) per example, or (real tokens, labels) for token classification;
    every rank's share, gathered on every rank."""
    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))[rank::world_size]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    fn, local, training = collate(pad_id), {}, model.training
    model.eval()
    bar = Progress(len(batches), desc, "batch", enabled=rank == 0, leave=False)
    with torch.inference_mode():
        for rows in batches:
            batch = fn([feats[i] for i in rows])
            index, _ = batch.pop("index"), batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            if logits.dim() == 3:  # token classification: the row's real tokens
                for i, n, z in zip(index.tolist(), batch["attention_mask"].sum(1).tolist(), logits):
                    local[i] = z[:n].clone()
            else:
                local.update(zip(index.tolist(), logits))
            bar.update(1)
    bar.close()
    model.train(training)
    return {k: v for part in all_gather_objects(local) for k, v in part.items()}


def argmax(logits: dict[int, torch.Tensor]) -> dict[int, int | list[int]]:
    """Predicted label ids in scoring's format (finetune/scoring.py): a class per example, or per real token."""
    return {i: z.argmax(-1).tolist() for i, z in logits.items()}


def predict(engine, feats: list[dict], batch_size: int, pad_id: int, d, desc: str = "evaluate") -> dict[int, int | list[int]]:
    """The predicted label ids of a DeepSpeed engine's model (`infer`, then `argmax`)."""
    return argmax(infer(engine.module, feats, batch_size, pad_id, d.rank, d.world_size, d.device, desc))


def records(kind: str, labels: list[str], examples: list[Example], feats: list[dict], logits: dict[int, torch.Tensor]):
    """The output line of each example, in the input's order (see the module's docstring)."""
    for f in feats:
        e, z = examples[f["index"]], logits[f["index"]]
        if kind != "token":
            p = torch.softmax(z, -1).tolist()
            line = {"id": e.id, "text": e.text, **({"text_pair": e.text_pair} if kind == "pair" else {}), "gold": e.label,
                    "predicted": labels[int(z.argmax())], "probabilities": dict(zip(labels, p)), "logits": z.tolist()}
        else:
            zw = z[f["words"]]  # each kept word's first sub-word
            cut = [None] * (len(e.text) - len(f["words"]))
            line = {"id": e.id, "words": e.text, "gold": e.label,
                    "predicted": [labels[i] for i in zw.argmax(-1).tolist()] + cut,
                    "probabilities": [dict(zip(labels, p)) for p in torch.softmax(zw, -1).tolist()] + cut,
                    "logits": zw.tolist() + cut}
        line["truncated"] = bool(f["truncated"])
        yield line


def jsonl(lines) -> map:
    return map(lambda r: json.dumps(r, ensure_ascii=False), lines)
