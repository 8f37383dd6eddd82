"""What a training run on N ranks needs, distillation or finetuning: DeepSpeed, metrics, FLOPs."""
