"""Converters: PaDiff legacy dumps and model checkpoints become traces; checkpoints diff directly.

Nothing here imports a framework: PyTorch and Paddle checkpoints are read by restricted
unpicklers that accept tensors and plain containers only.
"""

from tracespec.convert.checkpoint import Checkpoint, TensorEntry, convert_checkpoint, open_checkpoint
from tracespec.convert.checkpoint_diff import CheckpointDiff, EditStep, diff_checkpoints
from tracespec.convert.padiff import PadiffConversion, convert_padiff

__all__ = [
    "Checkpoint",
    "CheckpointDiff",
    "EditStep",
    "PadiffConversion",
    "TensorEntry",
    "convert_checkpoint",
    "convert_padiff",
    "diff_checkpoints",
    "open_checkpoint",
]
