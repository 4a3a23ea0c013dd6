"""Recording a ``torch.compile``d model: inside its compiled graph, or between compiled pieces.

The model is compiled with the default backend (Inductor, which generates and builds C++ on
CPU). A forward is recorded inside the compiled code: the hooks are traced into the graph,
statistics computed there, tensors handed out of it; a forward whose gradients are recorded runs
its hooks eagerly, one compiled piece per module. These tests check that neither changes what a
float32 model computes, what a bfloat16 model's recording keeps of the compiled numerics, and
that the trace names and orders calls as an eager recording does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import tracespec
from tracespec.adapters.torch import CompiledPrecisionWarning, device_moments, stats_from_moments
from tracespec.cli import cli
from tracespec.errors import UsageError
from tracespec.testing.adapter_tests import TraceView

pytestmark = [
    # Inductor's CPU backend imports torch.utils.mkldnn, whose TorchScript classes warn that
    # TorchScript is deprecated: torch warning about itself, nothing this code does.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    # Dynamo reads `.grad` of every tensor entering a compiled piece, and hides the warning this
    # gives for a non-leaf one (torch._logging.hide_warnings); only an "error" filter, like the
    # test suite's, turns it into an exception. In training, each piece's inputs are non-leaves.
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"),
]

WIDTH = 8


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.mlp = FeedForward()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.proj(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


def make_model() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def make_input() -> torch.Tensor:
    return torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(1))


def compile_in_place(model: nn.Module) -> nn.Module:
    model.compile()
    return model


# The two ways torch offers to compile a module: a wrapper (OptimizedModule), or in place.
COMPILERS: dict[str, Callable[[nn.Module], nn.Module]] = {"torch.compile": torch.compile, "Module.compile": compile_in_place}


@pytest.fixture(scope="module")
def unrecorded_output() -> torch.Tensor:
    """What the compiled model computes without recording (compiled as one graph)."""
    with torch.no_grad():
        return torch.compile(make_model())(make_input())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def eager_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eager") / "trace"
    model = make_model()
    with torch.no_grad(), tracespec.record(model, path, capture="full"):
        model(make_input())
    return path


def record_compiled(path: Path, compiled: nn.Module, capture: str, **options: Any) -> torch.Tensor:
    with torch.no_grad(), tracespec.record(compiled, path, capture=capture, **options):
        return compiled(make_input())  # type: ignore[no-any-return]


def routes(path: Path) -> list[str]:
    return [node["route"] for node in TraceView(path).nodes]


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("capture", ["full", "stats", "hash"])
def test_compiled_model_is_recorded_without_changing_its_output(
    compiler: str, capture: str, tmp_path: Path, unrecorded_output: torch.Tensor, eager_trace: Path
) -> None:
    compiled = COMPILERS[compiler](make_model())
    output = record_compiled(tmp_path / "compiled", compiled, capture)
    assert torch.equal(output, unrecorded_output)  # bit-identical
    assert tracespec.validate_trace(tmp_path / "compiled").complete
    assert routes(tmp_path / "compiled") == routes(eager_trace)
    view = TraceView(tmp_path / "compiled")
    called = {view.route_of[record["node"]] for record in view.records(role="output")}
    assert called == {route for route in routes(eager_trace) if route != "blocks"}  # a ModuleList is never called
    if capture == "hash":
        # Hashes compare bits, and Inductor's kernels are not bit-identical to eager torch's
        # (its LayerNorm rounds differently): a hash trace is checked against a second
        # compiled run, whose every record must be bit-identical.
        reference = tmp_path / "compiled_again"
        record_compiled(reference, COMPILERS[compiler](make_model()), capture)
    else:
        reference = eager_trace
    verdict = tracespec.compare(reference, tmp_path / "compiled")
    assert verdict.passed, verdict.hint


def test_a_model_called_from_a_compiled_function_is_recorded(tmp_path: Path, eager_trace: Path) -> None:
    model = make_model()

    @torch.compile
    def loss(x: torch.Tensor) -> torch.Tensor:
        return model(x).square().sum()

    with torch.no_grad():
        unrecorded = loss(make_input())
        with tracespec.record(model, tmp_path / "compiled", capture="full"):
            recorded = loss(make_input())
    assert torch.equal(recorded, unrecorded)
    verdict = tracespec.compare(eager_trace, tmp_path / "compiled")
    assert verdict.passed, verdict.hint
    view = TraceView(tmp_path / "compiled")
    assert len({view.route_of[record["node"]] for record in view.records(role="output")}) == 18


def training_step(model: nn.Module, path: Path | None) -> list[torch.Tensor]:
    """Forward and backward of ``model`` in train mode (recorded into ``path`` unless None):
    the output, the input's gradient and the parameters' gradients."""
    x = make_input().requires_grad_()
    parameters = list(model.parameters())
    model.train()
    if path is None:
        output = model(x)
        output.square().sum().backward()
    else:
        with tracespec.record(model, path, capture="full"):
            output = model(x)
            output.square().sum().backward()
    return [output.detach(), x.grad, *(p.grad for p in parameters)]


def test_training_step_of_a_compiled_model_is_recorded_with_its_gradients(tmp_path: Path) -> None:
    unrecorded = training_step(torch.compile(make_model()), None)
    recorded = training_step(torch.compile(make_model()), tmp_path / "compiled")
    assert all(torch.equal(a, b) for a, b in zip(unrecorded, recorded, strict=True))
    training_step(make_model(), tmp_path / "eager")
    view = TraceView(tmp_path / "compiled")
    assert {(call["stage"], view.route_of[call["node"]]) for call in view.calls} == {
        (call["stage"], view.route_of[call["node"]]) for call in TraceView(tmp_path / "eager").calls
    }
    verdict = tracespec.compare(tmp_path / "eager", tmp_path / "compiled")
    assert verdict.passed, verdict.hint


class GraphRunCounter:
    """A torch.compile backend that runs Dynamo's graphs as they are and counts each run.

    How Dynamo splits a model into graphs does not depend on the backend; counting with this
    one says how many compiled pieces one forward runs.
    """

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., object]:
        def run(*args: torch.Tensor) -> object:
            self.runs += 1
            return graph.forward(*args)

        return run

    def take(self) -> int:
        runs, self.runs = self.runs, 0
        return runs


def test_a_compiled_forward_is_recorded_inside_its_graph(tmp_path: Path) -> None:
    graphs = GraphRunCounter()
    compiled = torch.compile(make_model(), backend=graphs)
    with torch.no_grad():
        compiled(make_input())  # compiled before the recording, without hooks: this code must not run in it
        assert graphs.take() == 1
        with tracespec.record(compiled, tmp_path / "trace", capture="stats"):
            compiled(make_input())
            runs_while_recording = graphs.take()
            explained = torch._dynamo.explain(uncompiled_model(compiled))(make_input())
        compiled(make_input())
        assert graphs.take() == 1
    view = TraceView(tmp_path / "trace")
    called = {view.route_of[record["node"]] for record in view.records(role="output")}
    assert len(called) == 18  # every module but the ModuleList, which is never called
    assert runs_while_recording == 1  # the hooks inside the graph; the root's run before and after it
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def uncompiled_model(compiled: nn.Module) -> nn.Module:
    return compiled._orig_mod  # type: ignore[return-value]


def test_a_compiled_forward_whose_gradients_are_recorded_is_split_at_each_module(tmp_path: Path) -> None:
    graphs = GraphRunCounter()
    compiled = torch.compile(make_model(), backend=graphs)
    x = make_input().requires_grad_()
    with tracespec.record(compiled, tmp_path / "trace", capture="stats"):
        compiled(x).sum().backward()
        runs_while_recording = graphs.take()
    # One piece per leaf module's forward (13: 6 per block, and ln_f), and one per residual
    # addition, which lies between two module calls in Block.forward (2 per block): the hooks run
    # eagerly between them, as gradient hooks need real tensors.
    assert runs_while_recording == 13 + 2 * 2
    view = TraceView(tmp_path / "trace")
    assert len({view.route_of[r["node"]] for r in view.records(role="grad_output")}) == 18


def test_a_changed_module_in_the_compiled_copy_is_named(tmp_path: Path, eager_trace: Path) -> None:
    model = make_model()
    model.blocks[1].ln2.eps = 1e-2  # the reference uses LayerNorm's default, 1e-5
    record_compiled(tmp_path / "compiled", torch.compile(model), "full")
    verdict = tracespec.compare(eager_trace, tmp_path / "compiled")
    assert not verdict.passed
    assert verdict.first_divergence is not None
    assert verdict.first_divergence["a"]["route"] == "blocks.1.ln2"
    diff = CliRunner().invoke(cli, ["diff", str(eager_trace), str(tmp_path / "compiled")], prog_name="tracespec")
    assert diff.exit_code == 1
    assert "blocks.1.ln2 (LayerNorm) INTRODUCED it" in diff.output


def compile_blocks_in_place(model: TinyTransformer, fullgraph: bool) -> TinyTransformer:
    for block in model.blocks:
        block.compile(fullgraph=fullgraph)
    return model


@pytest.mark.parametrize(
    ("compile_with_fullgraph", "named"),
    [
        (lambda model: torch.compile(model, fullgraph=True), "the model"),
        (lambda model: model.compile(fullgraph=True), "the model"),
        (lambda model: compile_blocks_in_place(model, fullgraph=True), "blocks.0, blocks.1"),
    ],
    ids=["torch.compile", "Module.compile", "submodules compiled in place"],
)
def test_a_model_compiled_with_fullgraph_is_refused_before_the_recording_starts(
    compile_with_fullgraph: Callable[[nn.Module], nn.Module | None], named: str, tmp_path: Path
) -> None:
    model = make_model()
    wrapper = compile_with_fullgraph(model)  # None where compiled in place
    compiled = model if wrapper is None else wrapper
    with pytest.raises(UsageError, match=f"{named} was compiled with fullgraph=True"):
        tracespec.record(compiled, tmp_path / "trace")
    assert not (tmp_path / "trace").exists()


def test_submodules_compiled_in_place_are_recorded(tmp_path: Path, eager_trace: Path) -> None:
    with torch.no_grad():
        unrecorded = compile_blocks_in_place(make_model(), fullgraph=False)(make_input())
    output = record_compiled(tmp_path / "compiled", compile_blocks_in_place(make_model(), fullgraph=False), "full")
    assert torch.equal(output, unrecorded)
    assert routes(tmp_path / "compiled") == routes(eager_trace)
    verdict = tracespec.compare(eager_trace, tmp_path / "compiled")
    assert verdict.passed, verdict.hint
    assert verdict.coverage["ranks"]["0"]["calls"]["compared_b"] == 13  # every leaf module recorded


# Recording the blocks without what is inside them: the modules outside the selection are not
# hooked, so each block stays one compiled region that Inductor fuses whole.
BLOCK_BOUNDARIES: Final = {"exclude": ["blocks.*.*"]}


def test_a_step_that_is_not_recorded_runs_code_compiled_without_the_recording(tmp_path: Path) -> None:
    graph_sizes: list[int] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., object]:
        def run(*args: torch.Tensor) -> object:
            graph_sizes.append(len(graph.graph.nodes))
            return graph.forward(*args)

        return run

    compiled = torch.compile(make_model(), backend=backend)
    with torch.no_grad(), tracespec.record(compiled, tmp_path / "trace", capture="stats", every=2) as rec:
        for _ in range(3):
            compiled(make_input())
            rec.step()
    recorded, unrecorded, recorded_again = graph_sizes
    assert recorded == recorded_again > unrecorded  # step 1's graph computes no statistics
    assert sorted({call["step"] for call in TraceView(tmp_path / "trace").calls}) == [0, 2]


def test_a_compiled_model_recording_only_the_blocks_stays_one_graph(tmp_path: Path) -> None:
    graphs = GraphRunCounter()
    compiled = torch.compile(make_model(), backend=graphs)
    with torch.no_grad(), tracespec.record(compiled, tmp_path / "trace", capture="stats", **BLOCK_BOUNDARIES):
        compiled(make_input())
    view = TraceView(tmp_path / "trace")
    assert {view.route_of[call["node"]] for call in view.calls} == {"", "blocks.0", "blocks.1", "ln_f"}
    assert graphs.take() == 1


@pytest.mark.parametrize(
    ("selection", "recorded"),
    [
        ({"include": ["blocks.1.mlp"]}, ["blocks.1.mlp", "blocks.1.mlp.act", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]),
        # blocks.0 runs unhooked code compiled for the class Block, which blocks.1 must not reuse
        (
            {"exclude": ["blocks.0"]},
            [
                "",
                "blocks.1",
                "blocks.1.ln1",
                "blocks.1.ln2",
                "blocks.1.mlp",
                "blocks.1.mlp.act",
                "blocks.1.mlp.fc1",
                "blocks.1.mlp.fc2",
                "blocks.1.proj",
                "ln_f",
            ],
        ),
    ],
    ids=["inside unhooked modules", "beside an unhooked instance of its class"],
)
def test_every_selected_module_of_a_compiled_model_is_recorded(
    selection: dict[str, Any], recorded: list[str], tmp_path: Path
) -> None:
    compiled = torch.compile(make_model(), backend=GraphRunCounter())
    hook_guards = torch._dynamo.config.skip_nnmodule_hook_guards
    with torch.no_grad(), tracespec.record(compiled, tmp_path / "trace", capture="stats", **selection):
        compiled(make_input())
    view = TraceView(tmp_path / "trace")
    assert sorted({view.route_of[call["node"]] for call in view.calls}) == recorded
    assert torch._dynamo.config.skip_nnmodule_hook_guards == hook_guards  # Dynamo's setting is given back


def test_eager_against_compiled_regions_compares_at_their_boundary(
    tmp_path: Path, unrecorded_output: torch.Tensor, eager_trace: Path
) -> None:
    output = record_compiled(tmp_path / "regions", torch.compile(make_model()), "full", **BLOCK_BOUNDARIES)
    assert torch.equal(output, unrecorded_output)
    verdict = tracespec.compare(eager_trace, tmp_path / "regions")
    assert verdict.passed, verdict.hint
    calls = verdict.coverage["ranks"]["0"]["calls"]
    assert (calls["compared_a"], calls["leaf_a"], calls["boundary_a"], calls["leaf_b"]) == (13, 13, 12, 3)

    model = make_model()
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] += 0.5
    record_compiled(tmp_path / "changed", torch.compile(model), "full", **BLOCK_BOUNDARIES)
    diff = CliRunner().invoke(cli, ["diff", str(eager_trace), str(tmp_path / "changed")], prog_name="tracespec")
    assert diff.exit_code == 1
    assert "blocks.1 (Block) INTRODUCED it" in diff.output
    assert "12 of A's leaf calls compared only at the boundary" in diff.output
    assert "B records no call inside it: compared at its boundary" in diff.output
    assert (
        "record B again with the calls inside it (in a compiled model, select it with its children: include=['blocks.1'])"
        in diff.output
    )


def test_the_graph_break_numbers_of_the_docs_are_what_the_script_prints(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "recording.md").read_text()
    section = doc[doc.index("## Compiled models") : doc.index("## Devices and costs")]
    script, printed = re.findall(r"```(?:python)?\n(.*?)```", section, flags=re.S)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout == printed


# ------------------------------------------------------------------------------ bfloat16
BF16_INPUT: Final = make_input().bfloat16()


def rel_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).square().mean().sqrt() / b64.square().mean().sqrt())


def compiled_with_hooks(keep: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``keep(output)`` of each module of the compiled bfloat16 model, computed by forward hooks
    that Dynamo traces into the graph and handed out of it, and the model's output as ``"(model)"``."""
    model = make_model().bfloat16()
    kept: dict[str, torch.Tensor] = {}

    def hook_of(route: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            kept[route] = keep(output)

        return hook

    for route, module in model.named_modules():
        module.register_forward_hook(hook_of(route))
    torch.compiler.reset()  # Dynamo does not guard on hooks: code compiled before would run without them
    with torch.no_grad():
        kept["(model)"] = torch.compile(model)(BF16_INPUT)
    return kept


@pytest.fixture(scope="module")
def bf16_outputs() -> dict[str, torch.Tensor]:
    """The bfloat16 model's output eager and compiled, and each module's output in a compiled run
    that hands them out of the graph as float32 (as Inductor holds them, not rounded by a store)."""
    with torch.no_grad():
        eager = make_model().bfloat16()(BF16_INPUT)
        compiled = torch.compile(make_model().bfloat16())(BF16_INPUT)
    return {"eager": eager, "compiled": compiled, **compiled_with_hooks(torch.Tensor.float)}


@pytest.fixture(scope="module")
def bf16_eager_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bf16") / "eager"
    model = make_model().bfloat16()
    with torch.no_grad(), tracespec.record(model, path, capture="full"):
        model(BF16_INPUT)
    return path


@pytest.fixture(scope="module")
def bf16_recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.Tensor, Path]]:
    """The compiled bfloat16 model recorded with the defaults at each level: its output, the trace."""
    folder = tmp_path_factory.mktemp("bf16")
    recorded = {}
    for capture in ("stats", "hash", "full"):
        compiled = torch.compile(make_model().bfloat16())
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompiledPrecisionWarning)  # nothing to warn of in a forward
            with torch.no_grad(), tracespec.record(compiled, folder / capture, capture=capture):
                recorded[capture] = (compiled(BF16_INPUT), folder / capture)
    return recorded


def test_bfloat16_compiled_numerics_survive_recording_inside_the_graph(
    bf16_recorded: dict[str, tuple[torch.Tensor, Path]], bf16_outputs: dict[str, torch.Tensor]
) -> None:
    compiled, eager = bf16_outputs["compiled"], bf16_outputs["eager"]
    compiling_changed = rel_rmse(eager, compiled)
    assert compiling_changed > 1e-3  # Inductor keeps float32 where eager rounds to bfloat16
    for capture, (output, _) in bf16_recorded.items():
        # Recorded between compiled pieces, the model computed eager's numbers. Inside the graph,
        # the recording materialises only the last block's output, which Inductor otherwise
        # fuses into ln_f, its only reader: rounded there, and nowhere else.
        assert rel_rmse(output, compiled) < rel_rmse(output, eager), capture
        # what a compiled run computes while it hands each module's output out of the graph
        assert torch.equal(output, bf16_outputs["(model)"]), capture


def test_bfloat16_recorded_statistics_are_the_compiled_models(
    bf16_recorded: dict[str, tuple[torch.Tensor, Path]], bf16_eager_trace: Path
) -> None:
    # The statistics as a compiled run computes them in its graph, without tracespec.
    moments = compiled_with_hooks(device_moments)
    view = TraceView(bf16_recorded["stats"][1])
    eager = TraceView(bf16_eager_trace)
    eager_std = {eager.route_of[r["node"]]: r["std"] for r in eager.records(role="output")}
    differs_from_eager = []
    for record in view.records(role="output"):
        route = view.route_of[record["node"]]
        assert record["dtype"] == "bfloat16"
        expected = stats_from_moments(moments[route].tolist())
        for name in ("min", "max", "mean", "std", "l2"):
            assert record[name] == getattr(expected, name), (route, name)
        if abs(record["std"] - eager_std[route]) > 1e-4 * eager_std[route]:
            differs_from_eager.append(route)
    # Recorded between compiled pieces, every statistic was eager's: compiling changed these.
    assert len(differs_from_eager) >= 5, differs_from_eager


def test_bfloat16_full_and_hash_records_are_the_compiled_values_rounded(
    bf16_recorded: dict[str, tuple[torch.Tensor, Path]], bf16_outputs: dict[str, torch.Tensor]
) -> None:
    full, hashed = TraceView(bf16_recorded["full"][1]), TraceView(bf16_recorded["hash"][1])
    hashes = {(hashed.route_of[r["node"]], r["slot"]): r["hash"] for r in hashed.records(role="output")}
    for record in full.records(role="output"):
        route = full.route_of[record["node"]]
        array = full.array(record)
        assert array.dtype.name == "bfloat16"
        expected = bf16_outputs[route].bfloat16().float().numpy()
        assert (array.astype("float32") == expected).all(), route
        assert hashes[(route, record["slot"])] == record["hash"], route


def test_eager_against_compiled_bfloat16_aligns_and_names_a_changed_module(
    bf16_recorded: dict[str, tuple[torch.Tensor, Path]], bf16_eager_trace: Path, tmp_path: Path
) -> None:
    eager_calls = [(c["stage"], c["node"], c["call"], c["begin"], c["end"]) for c in TraceView(bf16_eager_trace).calls]
    for capture in ("stats", "full"):
        trace = bf16_recorded[capture][1]
        assert [(c["stage"], c["node"], c["call"], c["begin"], c["end"]) for c in TraceView(trace).calls] == eager_calls
        # Compiling moved the values by about bfloat16's rounding: within the default tolerances.
        verdict = tracespec.compare(bf16_eager_trace, trace)
        assert verdict.passed, verdict.hint
    model = make_model().bfloat16()
    with torch.no_grad():
        model.blocks[1].ln2.weight.mul_(2)  # (a changed eps, 1e-1, moves bfloat16 values within tolerance)
    compiled = torch.compile(model)
    with torch.no_grad(), tracespec.record(compiled, tmp_path / "changed", capture="full"):
        compiled(BF16_INPUT)
    verdict = tracespec.compare(bf16_eager_trace, tmp_path / "changed")
    assert not verdict.passed
    assert verdict.first_divergence is not None
    assert verdict.first_divergence["a"]["route"] == "blocks.1.ln2"


def test_recording_the_gradients_of_a_compiled_bfloat16_model_warns_that_it_rounds_at_module_boundaries(tmp_path: Path) -> None:
    x = BF16_INPUT.clone().requires_grad_()
    with pytest.warns(CompiledPrecisionWarning, match="bfloat16 parameters and its gradients are recorded"):
        compiled = torch.compile(make_model().bfloat16())
        with tracespec.record(compiled, tmp_path / "bf16"):
            compiled(x).float().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompiledPrecisionWarning)
        compiled = torch.compile(make_model())
        with tracespec.record(compiled, tmp_path / "float32"):  # float32 is bit-identical either way
            compiled(make_input().requires_grad_()).sum().backward()
