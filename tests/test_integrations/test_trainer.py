"""The transformers Trainer callback: a real (tiny, randomly initialised, offline) GPT-2 trained
for a few steps; the steps it recorded diff clean against a plain tracespec.record of the same
steps, and a changed learning rate is found at the first update."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers loads: the Trainer would try the Hub

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from click.testing import CliRunner
from torch.utils.data import SequentialSampler

import tracespec
from tracespec.cli import cli
from tracespec.integrations.transformers import TracespecCallback

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

STEPS, BATCH, LR = 3, 4, 1e-3


def make_model() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return transformers.GPT2LMHeadModel(config)


def dataset() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 64, (STEPS * BATCH, 12), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in ids]


class InOrder(transformers.Trainer):  # type: ignore[misc]
    """The Trainer, taking the examples in order (so a plain loop can take the same batches)."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)


def train_with_callback(path: Path, lr: float = LR, **options: Any) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(path.parent / f"{path.name}-out"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        optim="adamw_torch",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    InOrder(model=make_model(), args=args, train_dataset=dataset(), callbacks=[TracespecCallback(path, **options)]).train()


def train_plainly(path: Path) -> None:
    """What the Trainer does in each step, written out, recorded with tracespec.record."""
    model = make_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    data = dataset()
    with tracespec.record(model, path, optimizer=optimizer) as rec:
        for step in range(STEPS):
            batch = {k: torch.stack([example[k] for example in data[step * BATCH : (step + 1) * BATCH]]) for k in data[0]}
            # the Trainer divides the summed loss by the batch's label count (num_items_in_batch)
            model(**batch, num_items_in_batch=(batch["labels"] != -100).sum()).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trainer") / "plain"
    train_plainly(path)
    return path


def diff(a: Path, b: Path) -> tuple[int, dict[str, Any]]:
    out = a.parent / f"{b.name}.json"
    result = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json", str(out), "--no-progress"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(out.read_text())


def test_the_callback_records_what_a_plain_recording_does(reference: Path, tmp_path: Path) -> None:
    train_with_callback(tmp_path / "callback")
    trace = tracespec.load_trace(tmp_path / "callback")
    assert trace.complete and trace.steps == [0, 1, 2]
    stages = set(trace.tensors()["stage"].to_pylist())
    assert stages == {"forward", "backward", "update"}  # the Trainer's optimizer was hooked
    code, verdict = diff(reference, tmp_path / "callback")
    assert code == 0 and verdict["status"] == "pass", verdict["first_divergence"]
    assert verdict["coverage"]["ranks"]["0"]["calls"]["fraction_a"] == 1.0


def test_chosen_steps_only(tmp_path: Path) -> None:
    train_with_callback(tmp_path / "some", steps=[1, 2], capture="hash")
    trace = tracespec.load_trace(tmp_path / "some")
    assert trace.steps == [1, 2] and trace.manifest.capture["steps"] == [1, 2]


def test_a_changed_learning_rate_shows_at_the_first_update(reference: Path, tmp_path: Path) -> None:
    train_with_callback(tmp_path / "lr", lr=2 * LR)
    code, verdict = diff(reference, tmp_path / "lr")
    first = verdict["first_divergence"]
    assert code == 1 and (first["step"], first["stage"]) == (0, "update")
