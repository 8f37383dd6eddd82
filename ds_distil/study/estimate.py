"""How long a study will take on *this* machine: the study's measured stage times, scaled by a short probe.

A study's `estimates` are minutes per stage measured on one machine (`estimates_probe` names it), together with the
time that machine took for a fixed probe step in each precision. Here the same probe step runs in the precisions the
stages will resolve to (runtime/precision.py: `auto` is bf16 only where the CPU has it natively), and each stage's
estimate is scaled by (probe here, in the stage's precision) / (probe there, in the precision it was measured in).
The probe is one training step of a 2-layer, 128-wide BERT (the demo student's size) on 16 x 128 tokens, LM head over
45,814 rows at the masked positions only, AdamW, as a stage's step is made: under a second where bf16 is native or not
used, and capped where it is emulated (one step, which then says enough).

Without probe figures (the GPU study, measured nowhere) the study's estimates are shown as they are, and said to be so.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ds_distil.runtime import precision as precision_rules

PROBE = {"layers": 2, "hidden": 128, "ffn": 512, "heads": 2, "vocab": 45_814, "batch": 16, "seq": 128, "masked": 0.15}
PROBE_STEPS = 3
LONG_MINUTES = 15  # a study estimated longer than this says so, and why, before it starts


def probe_step_seconds(dtype: str, max_seconds: float = 10.0) -> float:
    """Median seconds of one probe training step (PROBE) in `dtype` ("fp32" or "bf16": autocast over fp32 weights, as
    the reference step and DeepSpeed's bf16 compute do), after one warm-up step; a step longer than `max_seconds` is
    not repeated."""
    from transformers import BertConfig, BertForMaskedLM

    p = PROBE
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                     intermediate_size=p["ffn"], max_position_embeddings=p["seq"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, p["vocab"], (p["batch"], p["seq"]))
    mask = torch.ones_like(ids)
    n = round(p["batch"] * p["seq"] * p["masked"])
    positions = torch.randperm(p["batch"] * p["seq"])[:n]
    targets = ids.reshape(-1)[positions]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> float:
        t0 = time.perf_counter()
        with autocast:
            hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = model.cls(hidden.reshape(-1, p["hidden"]).index_select(0, positions))
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    first = step()
    if first > max_seconds:
        return first
    times = sorted(step() for _ in range(PROBE_STEPS))
    return times[len(times) // 2]


@dataclasses.dataclass
class StageEstimate:
    name: str
    minutes: float | None       # scaled to this machine (or the study's figure where it cannot be)
    precision: str | None       # what the stage's training resolves to here: bf16 / fp32 / fp16, None for no training
    scaled: bool


class Estimator:
    """Stage estimates for this machine. `precisions` maps a stage name to the precision its training resolves to here
    (None: a stage without training, scaled like fp32); `probe` is the study's `estimates_probe` (or None)."""

    def __init__(self, study, precisions: dict[str, str | None], device: torch.device):
        import fnmatch

        self.study, self.precisions, self.device = study, precisions, device
        self._match = lambda name: next((m for pat, m in study.estimates.items() if fnmatch.fnmatchcase(name, pat)), None)
        self.reference = study.estimates_probe
        self.here: dict[str, float] = {}
        if self.reference is not None and device.type == "cpu":
            needed = {"fp32"} | {p for p in precisions.values() if p in ("bf16", "fp32")}
            self.here = {p: probe_step_seconds(p) for p in sorted(needed)}

    @property
    def scaling(self) -> bool:
        return bool(self.here)

    def factor(self, stage_precision: str | None) -> float | None:
        """(probe here in the stage's precision) / (probe there in the precision the stage was measured in): a training
        stage ran in the study's measured precision there; a stage without training (prepare, vocab, report) scales
        like fp32 on both sides."""
        if not self.scaling:
            return None
        r = self.reference
        if stage_precision is None:
            return self.here["fp32"] / r.fp32_s
        there = r.bf16_s if r.precision == "bf16" else r.fp32_s
        here = self.here.get(stage_precision, self.here["fp32"])  # fp16 on a CPU: no probe; as fp32
        return here / there if there else None

    def stage(self, name: str) -> StageEstimate:
        minutes = self._match(name)
        prec = self.precisions.get(name)
        f = self.factor(prec)
        if minutes is None or f is None:
            return StageEstimate(name, minutes, prec, False)
        return StageEstimate(name, minutes * f, prec, True)

    def source(self) -> str:
        """Where the figures come from, for the console."""
        if not self.scaling:
            why = "no probe figures in the study" if self.reference is None else f"not a CPU ({self.device.type})"
            return f"the study's `estimates` as written ({why}; its comments say how they were made)"
        r = self.reference
        here = ", ".join(f"{p} {s:.3f} s" for p, s in self.here.items())
        there = f"{r.precision} {r.bf16_s if r.precision == 'bf16' else r.fp32_s:.3f} s"
        return (f"the study's stage times measured on {r.machine}, scaled by a probe step ({here} here against {there} there; "
                f"this CPU: {precision_rules.cpu_capability()})")

    def why_long(self, estimates: list[StageEstimate]) -> str:
        """Why a study takes long here: the precision of its costliest stages, and how this machine compares."""
        worst = max((e for e in estimates if e.minutes is not None), key=lambda e: e.minutes, default=None)
        reasons = []
        if self.device.type == "cpu" and not precision_rules.cpu_bf16_native() and any(e.precision == "bf16" for e in estimates):
            slow = [e.name for e in estimates if e.precision == "bf16"]
            factor = self.here["bf16"] / self.here["fp32"] if "bf16" in self.here else None
            reasons.append(f"{len(slow)} stage(s) (e.g. {slow[0]}) are set to bf16, which this CPU only emulates"
                           + (f" ({factor:.0f}x the fp32 time in the probe)" if factor else "")
                           + ": set their deepspeed.config and teacher.dtype to auto (fp32 here)")
        f = self.factor(worst.precision if worst else None)
        if f is not None and f > 1.5:
            reasons.append(f"this machine runs the probe step {f:.1f}x slower than {self.reference.machine}")
        if worst is not None:
            reasons.append(f"the longest stage is {worst.name} (~{worst.minutes:.0f} min" + (f", {worst.precision}" if worst.precision else "") + ")")
        return "; ".join(reasons)


def stage_precision(command: str, cfg, device: torch.device) -> str | None:
    """The precision a stage's training resolves to on `device` (distill and finetune: the DeepSpeed JSON's; a teacher
    cache: the teacher's dtype); None for stages that train nothing."""
    from ds_distil.runtime.engine import precision, resolve_ds_json

    if command in ("distill", "finetune"):
        path = Path(resolve_ds_json(cfg.deepspeed.config, device))
        try:
            return precision(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            return None  # the stage itself will say what is wrong with it
    if command == "teacher-cache":
        return precision_rules.auto_precision(device) if cfg.teacher.dtype == "auto" else cfg.teacher.dtype
    return None


def teacher_precision(command: str, cfg, device: torch.device) -> str | None:
    """The teacher's precision in a distillation stage (None where no teacher runs)."""
    if command != "distill" or not cfg.teacher.enabled or cfg.teacher.cache:
        return None
    return precision_rules.auto_precision(device) if cfg.teacher.dtype == "auto" else cfg.teacher.dtype
