"""The reference: the distillation and finetuning steps as a careful engineer writes them by hand in
plain PyTorch for one device, with every lever that pays and no framework around them.

Both speed benchmarks time it in the same run as our step, on the same models (built by
ds_distil.model.build, so the same vocabulary padding and attention implementation), inputs and FLOP
count, so "ours / reference" says how far the framework is from the best this machine gives.

Distillation (`ReferenceDistill`): the teacher frozen in its inference dtype, the student with fp32
weights under autocast (bf16 or fp16, fp16 with a GradScaler; fp32 runs plain), LM heads at the
masked positions only through a fixed-size position list, the same objective as ours (any of
ds_distil.distill.objectives: each model returns the hidden states and queries/keys/values its
`Needs` name, and the objective's own parameters, e.g. TinyBERT's projection, are trained with the
student), gradient clipping with the foreach norm (no host sync), torch's fused AdamW, and
torch.compile of the forward and loss (static shapes; the backward is compiled with it).

Finetuning (`ReferenceFinetune`): fp32 weights under autocast, inputs padded to a fixed length,
fused AdamW with `capturable=True`, gradient clipping, and on CUDA the whole step (forward,
backward, clipping, optimizer) captured once in a CUDA graph and replayed: a small model's step is
bound by kernel launches otherwise. On CPU it runs eager.
"""

from __future__ import annotations

import torch
from torch import nn

from ds_distil.distill import objectives
from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Objective
from ds_distil.model.forward import masked_lm_forward
from ds_distil.runtime.engine import param_groups
from ds_distil.schema.distill import DataConfig, DistillConfig, LossConfig, TeacherConfig

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _adamw(model: nn.Module, lr: float, device: torch.device, capturable: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, 0.01), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=device.type in ("cuda", "cpu"),
                             capturable=capturable)


def bound_objective(loss: LossConfig, teacher: nn.Module, student: nn.Module) -> Objective:
    """`loss.objective` (auto: kd, a teacher being there) built as a run builds it and bound to these two models."""
    cfg = DistillConfig(data=DataConfig(shards="-"), teacher=TeacherConfig(preset="mbert"), loss=loss)  # only .loss is read
    objective = objectives.build(cfg)
    objective.bind(teacher.config if objective.teacher is not None else None, student.config)
    return objective


class ReferenceDistill:
    """`objective`: a bound objective, or a LossConfig to build one from (`loss.objective`, bound here)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, vocab: int, objective: Objective | LossConfig, precision: str,
                 device: torch.device, compile: bool, lr: float = 1e-4, grad_clip: float = 1.0):
        if isinstance(objective, LossConfig):
            objective = bound_objective(objective, teacher, student)
        self.teacher, self.student = teacher, student.to(device).train()
        self.vocab, self.objective, self.device, self.grad_clip = vocab, objective, device, grad_clip
        self.module = objective.module.to(device).train() if objective.module is not None else None
        # the objective's own parameters (a projection) are trained with the student: same optimizer, same clipping
        trained = self.student if self.module is None else nn.ModuleList([self.student, self.module])
        self.amp = AMP[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.opt = _adamw(trained, lr, device)
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.forward_loss = torch.compile(self._forward_loss, dynamic=False) if compile else self._forward_loss

    def _forward_loss(self, input_ids, attention_mask, positions, targets) -> torch.Tensor:
        return self.student_loss(input_ids, attention_mask, positions, targets, self.teacher_outputs(input_ids, attention_mask, positions))

    def teacher_outputs(self, input_ids, attention_mask, positions):
        """The frozen teacher's outputs at the masked positions (None for an objective without a teacher)."""
        t_needs = self.objective.teacher
        if t_needs is None:
            return None
        with torch.no_grad():
            return masked_lm_forward(self.teacher, input_ids, attention_mask, positions, self.vocab, t_needs.hidden, t_needs.qkv)

    def student_loss(self, input_ids, attention_mask, positions, targets, t_out) -> torch.Tensor:
        """The student's forward under autocast and the objective's total loss against the teacher's outputs."""
        s_needs = self.objective.student
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            s_out = masked_lm_forward(self.student, input_ids, attention_mask, positions, self.vocab, s_needs.hidden, s_needs.qkv)
        batch = Batch(input_ids, input_ids, attention_mask, positions, targets, targets, torch.zeros(0))
        # the objective's parameters take the student's autocast outputs: they run under the same autocast (a loss
        # without parameters, KD's, stays outside it; the loss functions compute in fp32 either way)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None and self.module is not None):
            return self.objective.loss(s_out, t_out, batch, batch.counts())[0]

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.forward_loss(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        self.update()
        return loss.detach()

    def update(self) -> None:
        """Clipping, the optimizer step (through the scaler in fp16) and letting the gradients go."""
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.opt)  # (reads the inf check: the one sync of an fp16 step)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class ReferenceFinetune:
    """`step(batch)` with batch tensors of one fixed shape (pad to max_length); returns the loss on the device."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device, cuda_graph: bool | None = None,
                 lr: float = 5e-5, grad_clip: float = 1.0):
        self.model, self.device, self.grad_clip = model.to(device).train(), device, grad_clip
        self.amp = AMP[precision if precision != "fp16" else "bf16"]  # no loss scaler in a captured graph: bf16
        self.graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        self.opt = _adamw(model, lr, device, capturable=self.graph)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.static: dict[str, torch.Tensor] | None = None
        self.cuda_graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(**batch).loss

    def _step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.forward_loss(batch)
        loss.backward()
        self.update()
        return loss.detach()

    def update(self) -> None:
        """Clipping, the optimizer step and the gradients' reset."""
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.opt.step()
        # a captured graph needs the gradients' buffers kept; eager, the next backward writes fresh ones (no zero fill,
        # no accumulate: 0.02 s of dBERT Tiny's 0.32 s CPU step)
        self.opt.zero_grad(set_to_none=not self.graph)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.graph:
            return self._step(batch)
        if self.cuda_graph is None:
            self._capture(batch)
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)
        self.cuda_graph.replay()
        return self.loss

    def _capture(self, batch: dict[str, torch.Tensor]) -> None:
        # PyTorch's whole-network capture recipe: warm up on a side stream (allocates gradients and
        # optimizer state), then capture one step; later steps copy their inputs in and replay.
        self.static = {k: v.clone() for k, v in batch.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.cuda_graph):
            self.loss = self._step(self.static)
