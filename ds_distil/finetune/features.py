"""Examples as the model sees them: token ids and label ids (`encode`), padded batches (`collate`), and the order in
which a rank takes the training rows, epoch by epoch (`epoch_batches`): a pure function of the seed, the epoch and the
ranks, so that a resumed run takes exactly the batches an uninterrupted one would."""

from __future__ import annotations

import torch

from ds_distil.data.examples import Example, Task


def featurise(task: Task, split: str, tokenizer, max_length: int, limit: int | None = None, lengths: list[int] | None = None) -> list[dict]:
    """`encode` of a split's examples (the first `limit` of them); `lengths`: theirs untruncated, where known."""
    examples = task.splits[split][:limit] if limit else task.splits[split]
    return encode(task.kind, task.labels, examples, tokenizer, max_length, lengths[:len(examples)] if lengths else None)


def encode(kind: str, labels: list[str], examples: list[Example], tokenizer, max_length: int,
           lengths: list[int] | None = None) -> list[dict]:
    """Token ids and label ids (-100 where an example has no label); for token tasks the label sits on each word's first
    sub-word (-100 elsewhere), and `words` holds the position of each word's first sub-word (the words that
    max_length kept). `truncated`: the example was cut at max_length (from `lengths`, the examples' token counts
    untruncated (finetune/lengths.py), or counted here)."""
    label_id = {l: i for i, l in enumerate(labels)}
    feats = []
    if kind == "token":
        enc = tokenizer([e.text for e in examples], is_split_into_words=True, truncation=True, max_length=max_length)
        for i, e in enumerate(examples):
            ids, words, prev = [], [], None
            for pos, w in enumerate(enc.word_ids(i)):
                first = w is not None and w != prev
                ids.append(label_id[e.label[w]] if first and e.label is not None else -100)
                if first:
                    words.append(pos)
                prev = w
            feats.append({"input_ids": enc["input_ids"][i], "labels": ids, "index": i, "words": words,
                          "truncated": len(words) < len(e.text)})
    else:
        pairs = [e.text_pair for e in examples] if kind == "pair" else None
        enc = tokenizer([e.text for e in examples], pairs, truncation=True, max_length=max_length)
        if lengths is None:
            lengths = [len(ids) for ids in tokenizer([e.text for e in examples], pairs, truncation=False, verbose=False)["input_ids"]]
        for i, e in enumerate(examples):
            feats.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i] if "token_type_ids" in enc else None,
                          "labels": label_id[e.label] if e.label is not None else -100, "index": i,
                          "truncated": lengths[i] > len(enc["input_ids"][i])})
    return feats


def collate(pad_id: int):
    def fn(items: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([it["index"] for it in items])}
        token_level = isinstance(items[0]["labels"], list)
        labels = torch.full((len(items), n), -100, dtype=torch.long) if token_level else torch.tensor([it["labels"] for it in items])
        types = torch.zeros((len(items), n), dtype=torch.long) if items[0].get("token_type_ids") is not None else None
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, :k] = torch.tensor(it["input_ids"])
            mask[i, :k] = 1
            if token_level:
                labels[i, :k] = torch.tensor(it["labels"])
            if types is not None:
                types[i, :k] = torch.tensor(it["token_type_ids"])
        out["labels"] = labels
        if types is not None:
            out["token_type_ids"] = types
        return out

    return fn


def epoch_batches(n: int, micro_batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's micro batches of an epoch over `n` training rows: torch's DistributedSampler order (shuffled by
    seed + epoch, padded to a multiple of the ranks, every world_size-th row from `rank`), cut into micro batches (the
    last one may be short), as a DataLoader over that sampler would give them."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i:i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
