"""Loading DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed 0.19 saves its ZeRO checkpoints with torch.save and reads them back with
`torch.load(weights_only=False)` (its TorchCheckpointEngine, and `zero_to_fp32` for export): a
crafted checkpoint directory (someone else's run, a download) would run code when resumed or
exported. Inside `weights_only_loads()`, every torch.load in the process is forced to
`weights_only=True` (torch honours TORCH_FORCE_WEIGHTS_ONLY_LOAD even where the caller passes
weights_only=False), and the few DeepSpeed types such a checkpoint holds are allowed by name:
plain classes rebuilt from their attributes and an enum, none of which runs code when unpickled.
Anything else (a `__reduce__` calling os.system, a foreign class) is refused before it is called.

Found by loading real checkpoints (fp32, bf16, fp16; 1 and 2 ZeRO-2 ranks): model states hold
tensors, dicts, lists and torch.Size; optimizer states add the loss scaler, ZeroStageEnum and
fragment_address (ZeRO's map from parameters to flat partitions).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

from ds_distil.core.errors import UserError


def _allowed() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpointError(UserError):
    pass


@contextlib.contextmanager
def weights_only_loads(what: str | Path):
    """Every torch.load inside unpickles with weights_only=True and the DeepSpeed allow-list;
    a file that needs anything else becomes a one-line UnsafeCheckpointError naming `what`."""
    import torch

    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with torch.serialization.safe_globals(_allowed()):
            yield
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e)) or re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        obj = f" (it pickles `{found.group(1)}`)" if found else ""
        raise UnsafeCheckpointError(
            f"refusing to load {what}: it holds objects that would run code when unpickled{obj}; ds-distil loads only "
            "tensors and DeepSpeed's plain state. Use checkpoints written by ds-distil (a run you made, or whose source you trust "
            "enough to convert yourself)") from None
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
