"""ds-distil: distil small single-language transformers from mBERT with DeepSpeed."""

__version__ = "0.1.0"
