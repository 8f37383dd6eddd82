"""Distillation: objectives, teacher signals, the step, validation, checkpoints, set-up and the loop, export."""
