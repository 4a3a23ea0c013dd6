"""Many ranks: a real data-parallel run (torchrun, gloo, 4 processes) records one trace with a part
per rank; diff names the rank, step and module where one rank's copy of the model differed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracespec
from tracespec.cli import cli

SCRIPT = """
import sys, torch, torch.distributed as dist, torch.nn as nn
import tracespec

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights
if sys.argv[2] != "-" and rank == int(sys.argv[2]):
    with torch.no_grad():
        model[2].weight[0, 0] += 1e-3  # after the broadcast: this rank's copy differs
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
with tracespec.record(ddp, sys.argv[1], optimizer=opt) as rec:
    for step in range(2):
        ddp(torch.randn(4, 8, generator=data)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        rec.step()
dist.destroy_process_group()
"""


def torchrun(tmp_path: Path, trace: Path, odd_rank: int | None) -> Path:
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
               str(script), str(trace), "-" if odd_rank is None else str(odd_rank)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return trace


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    return torchrun(folder, folder / "a", None), torchrun(folder, folder / "b", odd_rank=2)


def test_each_rank_writes_its_part_of_one_trace(runs: tuple[Path, Path]) -> None:
    trace = tracespec.load_trace(runs[0])
    assert trace.ranks == [0, 1, 2, 3] and trace.manifest.world_size == 4 and trace.complete
    assert trace.steps == [0, 1]
    result = CliRunner().invoke(cli, ["show", str(runs[0])])
    assert result.exit_code == 0, result.output
    for rank in range(4):
        assert f"  rank {rank}: cpu, steps 0-1, " in result.output
    doc = json.loads(CliRunner().invoke(cli, ["show", str(runs[0]), "--json"]).output)
    assert [p["rank"] for p in doc["parts"]] == [0, 1, 2, 3] and all(p["complete"] for p in doc["parts"])


def test_diff_names_the_rank_step_and_module_that_differed(runs: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["diff", str(runs[0]), str(runs[1]), "--json", str(tmp_path / "v.json"), "--no-progress"])
    assert result.exit_code == 1, result.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    first = verdict["first_divergence"]
    assert (first["rank"], first["step"], first["stage"], first["a"]["route"], first["kind"]) == (2, 0, "forward", "module.2", "introduced")
    assert "parameter[weight] differ" in first["evidence"]
    assert sorted(verdict["coverage"]["ranks"]) == ["0", "1", "2", "3"]
    forward_step0 = {n["rank"] for n in verdict["nodes"] if (n["step"], n["stage"], n["status"]) == (0, "forward", "diverged")}
    assert forward_step0 == {2}  # the other ranks computed their forward with equal weights
    # the gradients are averaged over ranks: from the backward of step 0 on, every rank differs
    backward_step0 = {n["rank"] for n in verdict["nodes"] if (n["step"], n["stage"], n["status"]) == (0, "backward", "diverged")}
    assert backward_step0 == {0, 1, 2, 3}
    assert "first divergence in forward, step 0, rank 2: module.2 (Linear) INTRODUCED it" in result.output


def test_diff_on_dask_workers_gives_the_byte_identical_verdict(runs: tuple[Path, Path]) -> None:
    a, b = str(runs[0]), str(runs[1])
    alone = CliRunner().invoke(cli, ["diff", a, b, "--json", "-"])
    assert alone.exit_code == 1, alone.output
    # a real run of the command: a local cluster of 2 worker processes, each comparing whole ranks
    done = subprocess.run([sys.executable, "-m", "tracespec.cli", "diff", a, b, "--workers", "2", "--json", "-"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stdout == alone.stdout
    verdict = json.loads(done.stdout)
    assert (verdict["first_divergence"]["rank"], verdict["first_divergence"]["step"]) == (2, 0)
    assert {n["rank"] for n in verdict["nodes"]} == {0, 1, 2, 3}
