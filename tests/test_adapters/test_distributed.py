"""Many ranks: a real data-parallel run (torchrun, gloo, 4 processes; paddle.distributed.launch,
gloo on CPU, 2 processes) records one trace with a part per rank; diff names the rank, step and
module where one rank's copy of the model differed."""

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
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        str(script),
        str(trace),
        "-" if odd_rank is None else str(odd_rank),
    ]
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
    assert (first["rank"], first["step"], first["stage"], first["a"]["route"], first["kind"]) == (
        2,
        0,
        "forward",
        "module.2",
        "introduced",
    )
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
    done = subprocess.run(
        [sys.executable, "-m", "tracespec.cli", "diff", a, b, "--workers", "2", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == alone.stdout
    verdict = json.loads(done.stdout)
    assert (verdict["first_divergence"]["rank"], verdict["first_divergence"]["step"]) == (2, 0)
    assert {n["rank"] for n in verdict["nodes"]} == {0, 1, 2, 3}


PADDLE_SCRIPT = """
import sys, paddle, paddle.distributed as dist
import tracespec

paddle.set_device("cpu")
dist.init_parallel_env()  # gloo on CPU (the launcher says with_gloo)
rank = dist.get_rank()
paddle.seed(0)
model = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 4))
dp = paddle.DataParallel(model)  # broadcasts rank 0's weights
if sys.argv[2] != "-" and rank == int(sys.argv[2]):
    with paddle.no_grad():
        model[2].weight[0, 0] += 1e-3  # after the broadcast: this rank's copy differs
opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=dp.parameters())
paddle.seed(100 + rank)  # each rank its own shard
with tracespec.record(dp, sys.argv[1], optimizer=opt) as rec:
    for step in range(2):
        dp(paddle.randn([4, 8])).square().mean().backward()
        opt.step()
        opt.clear_grad()
        rec.step()
"""


def paddle_launch(folder: Path, trace: Path, odd_rank: int | None) -> Path:
    script = folder / "dp_paddle.py"
    script.write_text(PADDLE_SCRIPT)
    command = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(folder / f"log_{trace.name}"),
        str(script),
        str(trace),
        "-" if odd_rank is None else str(odd_rank),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)
    logs = "".join(p.read_text()[-2000:] for p in sorted((folder / f"log_{trace.name}").glob("workerlog.*")))
    assert done.returncode == 0, done.stdout[-2000:] + logs
    return trace


def test_paddle_data_parallel_on_cpu_records_a_part_per_rank_and_diff_names_the_rank(tmp_path: Path) -> None:
    a, b = paddle_launch(tmp_path, tmp_path / "a", None), paddle_launch(tmp_path, tmp_path / "b", odd_rank=1)
    trace = tracespec.load_trace(a)
    assert trace.ranks == [0, 1] and trace.manifest.world_size == 2 and trace.complete and trace.steps == [0, 1]
    result = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json", str(tmp_path / "v.json"), "--no-progress"])
    assert result.exit_code == 1, result.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    first = verdict["first_divergence"]
    assert (first["rank"], first["step"], first["stage"], first["a"]["route"], first["kind"]) == (
        1,
        0,
        "forward",
        "_layers.2",
        "introduced",
    )
    diverged = {
        stage: {n["rank"] for n in verdict["nodes"] if (n["step"], n["stage"], n["status"]) == (0, stage, "diverged")}
        for stage in ("forward", "backward")
    }
    assert diverged == {"forward": {1}, "backward": {0, 1}}  # gradients all-reduced over gloo reach rank 0 too
