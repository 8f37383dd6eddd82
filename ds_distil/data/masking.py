"""MLM masking, and the masked positions as a fixed-size list."""

from __future__ import annotations

import torch

from ds_distil.schema.distill import DataConfig

# Names the masking rule below for resume fingerprints (ds_distil.distill.resume): change it with the rule.
MASKING_RULE = "bert-80/10/10, round(p * maskable) per sample (min 1), seeded by (seed, epoch, rank, step)"


def max_masked_per_sample(seq_len: int, mlm_probability: float) -> int:
    """The most MLM targets mask_tokens picks in one sample: round(p * maskable), maskable <= seq_len."""
    return max(1, round(seq_len * mlm_probability))


def static_positions(labels: torch.Tensor, max_per_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of a batch as a fixed-size list: (flat indices into batch x length,
    their target ids), both of length batch x max_per_row; the slots after the real ones point at
    position 0 with target IGNORE_INDEX. Done here, on the host in the loader's workers, so the
    training step needs no `nonzero()` (a device-to-host sync) and has static shapes."""
    flat = labels.reshape(-1)
    idx = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    size = labels.shape[0] * max_per_row
    if idx.numel() > size:
        raise ValueError(f"{idx.numel()} masked tokens in a batch with room for {size}")
    positions = torch.zeros(size, dtype=torch.long)
    targets = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
    positions[: idx.numel()] = idx
    targets[: idx.numel()] = flat[idx]
    return positions, targets


def mask_tokens(ids: torch.Tensor, special_ids: torch.Tensor, random_ids: torch.Tensor, mask_id: int, cfg: DataConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT masking: round(p * maskable) positions per sequence (at least one), never special tokens
    or padding; of those mask_token_prob -> [MASK], random_token_prob -> a random ordinary token,
    the rest kept. Returns input_ids and labels (IGNORE_INDEX where not chosen)."""
    maskable = ~torch.isin(ids, special_ids)
    n_maskable = maskable.sum(1)
    n_mask = torch.where(n_maskable > 0, (n_maskable * cfg.mlm_probability).round().clamp(min=1), 0)
    scores = torch.rand(ids.shape, generator=g).masked_fill(~maskable, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    chosen = ranks < n_mask[:, None]
    u = torch.rand(ids.shape, generator=g)
    to_mask = chosen & (u < cfg.mask_token_prob)
    to_random = chosen & (u >= cfg.mask_token_prob) & (u < cfg.mask_token_prob + cfg.random_token_prob)
    random_tokens = random_ids[torch.randint(len(random_ids), ids.shape, generator=g)]
    input_ids = torch.where(to_mask, mask_id, torch.where(to_random, random_tokens, ids))
    labels = torch.where(chosen, ids, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}


IGNORE_INDEX = -100
