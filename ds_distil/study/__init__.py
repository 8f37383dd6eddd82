"""Whole studies: the plan of stages, their keys, the runner."""
