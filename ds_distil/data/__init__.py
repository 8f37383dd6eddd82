"""Data: offline preparation of token shards (`shards`, `manifest`), streaming them with MLM masks (`stream`,
`masking`), target-language vocabularies (`vocab`), tokenizers, and the downstream tasks' readers (`tasks`)."""
