"""Tables of results: the report of finetuning runs and the paper's tables."""
