"""`ds-distil vocab`: its configuration."""

from __future__ import annotations

import dataclasses

from ds_distil.core.config import setting


@dataclasses.dataclass
class VocabConfig:
    """`ds-distil vocab`: choose a target-language vocabulary from prepared shards."""

    shards: str = setting("directory written by `ds-distil prepare` (its training split is counted)")
    out: str = setting("output directory: tokenizer files, vocab_map.json, vocab_report.json")
    min_count: int = setting("keep corpus tokens seen at least this many times (the default rule)", default=1)
    coverage: float | None = setting("instead: keep the most frequent tokens until they cover this share of the training tokens "
                                     "(e.g. 0.99)", default=None)
    max_size: int | None = setting("instead: keep the most frequent tokens up to this total vocabulary size", default=None)
    single_chars: str = setting("single-character tokens and their ## forms kept: all (any text the full vocabulary covers "
                                "keeps a tokenization) or seen (only characters the corpus uses)", default="all")
    extra_text: list[str] = setting("more text files (one document per line) whose tokens are kept too, e.g. a downstream "
                                    "task's training text", default_factory=list)
    report_data: str | None = setting("directory with the downstream sets to report on (default: $DS_DISTIL_DATA or ../shared/data; "
                                      "'none' to skip)", default=None)
    overwrite: bool = setting("replace an existing vocabulary directory", default=False)

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.coverage is not None and not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        if self.coverage is not None and self.max_size is not None:
            raise ValueError("set coverage or max_size, not both")
        if self.single_chars not in ("all", "seen"):
            raise ValueError(f"single_chars must be 'all' or 'seen', got {self.single_chars!r}")
