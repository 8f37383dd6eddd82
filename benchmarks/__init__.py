"""Benchmarks: measured figures written as reports (benchmarks/results/<what>_<device>_<date>.{json,md})."""
