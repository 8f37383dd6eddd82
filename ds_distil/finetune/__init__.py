"""Finetuning on downstream tasks, scoring and baselines."""
