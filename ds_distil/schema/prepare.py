"""`ds-distil prepare`: its configuration."""

from __future__ import annotations

import dataclasses

from ds_distil.core.config import setting


@dataclasses.dataclass
class PrepareConfig:
    """`ds-distil prepare`: raw text -> tokenized, packed WebDataset shards + manifest.json."""

    out: str = setting("output directory for shards, manifest.json and tokenizer/")
    input: list[str] = setting(
          "local text files: .txt (one document per line), .jsonl (one JSON object per line), .gz of either",
          default_factory=list,
      )
    hf_dataset: str | None = setting("Hugging Face dataset to stream instead, e.g. oscar-corpus/OSCAR-2301", default=None)
    hf_config: str | None = setting("its configuration, e.g. tl", default=None)
    hf_split: str = setting("its split", default="train")
    text_field: str = setting("field holding the text (.jsonl input and HF datasets)", default="text")
    tokenizer: str = setting("tokenizer: a hub name or a local directory", default="bert-base-multilingual-cased")
    seq_len: int = setting("tokens per sample, [CLS] included", default=128)
    samples_per_shard: int = setting("samples per .tar shard", default=4096)
    val_fraction: float = setting("fraction of documents held out for validation (chosen before --fraction)", default=0.01)
    fraction: float = setting("fraction of the training documents kept (the paper's 100/80/50%% ablation)", default=1.0)
    seed: int = setting("seed for the validation split, --fraction and document shuffling", default=0)
    doc_shuffle_buffer: int = setting("documents shuffled in a buffer of this size before packing (0: keep order)", default=10000)
    workers: int = setting("tokenizer processes (0: one per CPU core)", default=0)
    max_docs: int | None = setting("stop after this many documents (after selection); for trials", default=None)
    skip_bad_lines: bool = setting("skip lines that are not valid UTF-8 / JSON instead of stopping", default=False)
    max_line_bytes: int = setting("longest line read whole; a longer text line is cut into documents of at most this size, "
                                  "a longer JSON line skipped (both counted); bounds prepare's memory", default=1 << 20)
    overwrite: bool = setting("replace an existing prepared directory", default=False)

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise ValueError(f"seq_len must be >= 8, got {self.seq_len}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.doc_shuffle_buffer < 0:
            raise ValueError("workers and doc_shuffle_buffer must be >= 0")
        if self.max_line_bytes < 1024:
            raise ValueError(f"max_line_bytes must be >= 1024, got {self.max_line_bytes}")
