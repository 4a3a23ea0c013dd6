"""The BERT example (examples/bert) on a real model: Hugging Face's all-MiniLM-L6-v2, two sentences."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bert"
sys.path.insert(0, str(EXAMPLE))

import hf_bert  # noqa: E402
import paddle_bert  # noqa: E402
import torch  # noqa: E402

FLOAT32_NOISE = 1e-5


@pytest.fixture(scope="module")
def bert() -> dict[str, Any]:
    """Config, weights, the tokenized sentences and PyTorch's outputs on them."""
    inputs = hf_bert.tokenize()
    with torch.no_grad():
        outputs = hf_bert.load_torch_bert()(**hf_bert.torch_inputs(inputs))
    return {
        "config": hf_bert.load_config(),
        "weights": hf_bert.load_weights(),
        "inputs": inputs,
        "torch": {name: outputs[name].numpy() for name in ("last_hidden_state", "pooler_output")},
    }


def _port_error(bert: dict[str, Any], bug: str | None) -> dict[str, np.ndarray]:
    port = paddle_bert.load_paddle_bert(bert["config"], bert["weights"], bug)
    ported = port(**paddle_bert.paddle_inputs(bert["inputs"]))
    return {
        name: np.abs(ported[name].numpy().astype(np.float64) - ref) / np.abs(ref).max() for name, ref in bert["torch"].items()
    }


def test_inputs_have_padding(bert: dict[str, Any]) -> None:
    mask = bert["inputs"]["attention_mask"]
    assert mask.shape[0] == 2 and mask.min() == 0 and mask[1].all()


def test_paddle_port_matches_pytorch_within_float32_noise(bert: dict[str, Any]) -> None:
    errors = _port_error(bert, None)
    assert max(e.max() for e in errors.values()) < FLOAT32_NOISE


def test_missing_transpose_breaks_every_output(bert: dict[str, Any]) -> None:
    errors = _port_error(bert, "transpose")
    assert errors["last_hidden_state"].max() > 1e-2 and errors["pooler_output"].max() > 1e-2


def test_padding_idx_bug_changes_only_padded_positions(bert: dict[str, Any]) -> None:
    errors = _port_error(bert, "padding-idx")
    padded = bert["inputs"]["attention_mask"] == 0
    per_token = errors["last_hidden_state"].max(axis=-1)
    assert per_token[padded].min() > 1e-2
    assert per_token[~padded].max() < FLOAT32_NOISE


def test_layernorm_eps_bug_is_faint_at_the_outputs(bert: dict[str, Any]) -> None:
    # Why tracing matters: at the outputs the bug is a faint error that names no module.
    clean = max(e.max() for e in _port_error(bert, None).values())
    errors = max(e.max() for e in _port_error(bert, "layernorm-eps").values())
    assert clean < errors < 1e-4


def test_every_bug_names_a_real_route(bert: dict[str, Any]) -> None:
    port = paddle_bert.load_paddle_bert(bert["config"], bert["weights"])
    routes = {route for route, _ in port.named_sublayers()}
    assert set(paddle_bert.BUG_ROUTES.values()) <= routes
    torch_routes = {route for route, _ in hf_bert.load_torch_bert().named_modules()}
    assert routes <= torch_routes
