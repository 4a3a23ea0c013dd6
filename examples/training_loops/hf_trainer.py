"""Record a Hugging Face Trainer run with tracespec, then check a change against it.

A tiny GPT-2 (random weights, nothing downloaded) is trained for 4 steps twice with
``TracespecCallback``: once as the reference, once with gradient clipping turned on (what a
refactor of a training script might change without anyone noticing). ``tracespec diff`` names
where the two runs part: the parameter gradients of step 0, clipped before the first update.

    .venv/bin/python examples/training_loops/hf_trainer.py [--out runs/hf]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers loads: nothing from the network

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from tracespec.integrations.transformers import TracespecCallback


def train(out: Path, max_grad_norm: float) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4))
    ids = torch.randint(0, 128, (16, 24), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(out) + "-trainer",
        per_device_train_batch_size=4,
        max_steps=4,
        max_grad_norm=max_grad_norm,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    # record every step at statistics level; steps=, every=, capture=, include= choose what
    Trainer(model=model, args=args, train_dataset=data, callbacks=[TracespecCallback(out, overwrite=True)]).train()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hf"))
    folder = parser.parse_args().out
    train(folder / "reference", max_grad_norm=0.0)
    train(folder / "clipped", max_grad_norm=0.5)
    diff = [sys.executable, "-m", "tracespec.cli", "diff", str(folder / "reference"), str(folder / "clipped"), "--no-progress"]
    return 0 if subprocess.run(diff).returncode == 1 else 1  # the change must be found


if __name__ == "__main__":
    raise SystemExit(main())
