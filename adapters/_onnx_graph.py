"""The module tree of an ONNX graph, read from the scope information its exporter left.

``torch.onnx.export`` leaves node metadata ``pkg.torch.onnx.name_scopes`` / ``class_hierarchy``
(torch.export-based exporter) or node names such as ``/blocks.0/attn/q_proj/MatMul`` (TorchScript
exporter). Routes are the dotted ``named_modules()`` paths of the exported PyTorch model, root
``""``. A graph without scope information gets its ops under the root, in topological order.
Loading checks the untrusted file: external data must stay inside the model's folder.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import onnx

from tracespec.errors import InputFileError, UsageError

_SCOPES_KEY: Final = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY: Final = "pkg.torch.onnx.class_hierarchy"

# Ops whose outputs describe a tensor's shape, not its values: a value read outside a module only
# by these is not one of the module's outputs.
SHAPE_OPS: Final = frozenset({"Shape", "Size"})

# Weight-consuming ops whose second input is a Linear-style weight that exporters pre-transpose.
MATMUL_OPS: Final = frozenset({"MatMul", "Gemm"})
_UNKNOWN_CLASS: Final = "Module"


@dataclass(slots=True)
class GraphModule:
    route: str
    class_name: str = _UNKNOWN_CLASS
    qualified_class: str | None = None
    called: bool = False
    children: list[str] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)  # slot -> graph value name
    layouts: dict[str, str] = field(default_factory=dict)  # slot -> "in_out" / "out_in" (attrs.parameter_layout)


@dataclass(slots=True)
class GraphOp:
    index: int
    node: onnx.NodeProto
    scopes: tuple[str, ...]  # called module routes, outermost (root "") first
    route: str = ""


def _literal_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _routes_of_node_name(name: str) -> list[str]:
    """The module routes in a TorchScript exporter's node name, root first.

    Each segment names a module within the one before it, but a child of a called container
    (``nn.Sequential``) is named by its qualified name in that container: ResNet's
    ``/layer2/layer2.0/downsample/downsample.0/Conv`` is ``layer2`` -> ``layer2.0`` ->
    ``layer2.0.downsample`` -> ``layer2.0.downsample.0``, as ``named_modules()`` names them.
    """
    routes, previous = [""], ""
    for part in (part for part in name.split("/")[1:-1] if part):
        local = part[len(previous) + 1 :] if previous and part.startswith(previous + ".") else part
        routes.append(f"{routes[-1]}.{local}" if routes[-1] else local)
        previous = part
    return routes


def _scopes_of(node: onnx.NodeProto) -> tuple[list[str], list[str | None], str | None]:
    """The module routes a node ran in (outermost first), their qualified class names, and where
    that came from (``"name_scopes"``, ``"node_names"``, or None: no scope information)."""
    meta = {prop.key: prop.value for prop in node.metadata_props}
    scopes = _literal_list(meta[_SCOPES_KEY]) if _SCOPES_KEY in meta else None
    if scopes:
        # The last entry names the FX node itself, not a module.
        routes: list[str] = scopes[:-1] or [""]
        named_classes: list[str] = _literal_list(meta.get(_CLASSES_KEY, "")) or []
        classes: list[str | None] = [*named_classes[: len(routes)]]
        classes += [None] * (len(routes) - len(classes))
        if routes[0] != "":
            routes, classes = ["", *routes], [None, *classes]
        return routes, classes, "name_scopes"
    if node.name.startswith("/"):
        routes = _routes_of_node_name(node.name)
        return routes, [None] * len(routes), "node_names"
    return [""], [None], None


class GraphTree:
    """The module tree, op nodes and module-boundary values rebuilt from one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.graph_inputs = [vi.name for vi in graph.input if vi.name not in self.initializers]
        self.graph_outputs = [vi.name for vi in graph.output]
        self.modules: dict[str, GraphModule] = {"": GraphModule("", called=True)}
        self.ops: list[GraphOp] = []
        self.scope_source: str | None = None
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for index, node in enumerate(graph.node):
            routes, classes, source = _scopes_of(node)
            self.scope_source = self.scope_source or source
            for route, qualified in zip(routes, classes, strict=True):
                self._add_module(route, qualified, called=True)
            op = GraphOp(index, node, tuple(dict.fromkeys(routes)))
            self.ops.append(op)
            self.modules[op.scopes[-1]].ops.append(index)
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((index, slot))
            for name in node.output:
                if name:
                    self.producer[name] = index
        self._name_ops()
        self.parameter_aliases = self._find_parameter_aliases()
        self._find_boundaries()
        self._assign_parameters()

    def _add_module(self, route: str, qualified: str | None, called: bool) -> None:
        module = self.modules.get(route)
        if module is None:
            parent = route.rpartition(".")[0] if "." in route else ""
            self._add_module(parent, None, called=False)
            module = self.modules[route] = GraphModule(route)
            self.modules[parent].children.append(route)
        module.called = module.called or called
        if qualified and module.qualified_class is None:
            module.qualified_class = qualified
            module.class_name = qualified.rpartition(".")[2]

    def _name_ops(self) -> None:
        for module in self.modules.values():
            seen: dict[str, int] = {}
            for index in module.ops:
                op_type = self.ops[index].node.op_type
                count = seen.get(op_type, 0)
                seen[op_type] = count + 1
                label = op_type if count == 0 else f"{op_type}_{count}"
                self.ops[index].route = f"{module.route}.{label}" if module.route else label

    def _find_boundaries(self) -> None:
        """A called module's inputs: values its ops read and do not produce; outputs: values its
        ops produce that are read outside it (or are graph outputs)."""
        constants = {op.node.output[0] for op in self.ops if op.node.op_type == "Constant"}
        graph_outputs = set(self.graph_outputs)
        members: dict[str, set[int]] = {}
        for op in self.ops:
            for route in op.scopes:
                members.setdefault(route, set()).add(op.index)
        for route, inside in members.items():
            module = self.modules[route]
            inputs: dict[str, None] = {}
            outputs: dict[str, None] = {}
            for index in sorted(inside):
                node = self.ops[index].node
                for name in node.input:
                    if (
                        name
                        and self.producer.get(name) not in inside
                        and name not in self.initializers
                        and name not in self.parameter_aliases
                        and name not in constants
                    ):
                        inputs[name] = None
                for name in node.output:
                    readers = self.consumers.get(name, [])
                    if name in graph_outputs or any(
                        reader not in inside and self.ops[reader].node.op_type not in SHAPE_OPS for reader, _ in readers
                    ):
                        outputs[name] = None
            module.inputs = list(inputs)
            module.outputs = list(outputs)

    def _find_parameter_aliases(self) -> dict[str, str]:
        """Identity ops that give an initializer a second name (the TorchScript exporter's way of
        sharing one tensor between several parameters): alias -> initializer."""
        aliases = {}
        for op in self.ops:
            node = op.node
            if node.op_type == "Identity" and node.input and node.input[0] in self.initializers:
                aliases[node.output[0]] = node.input[0]
        return aliases

    def _owner_by_use(self, name: str) -> str:
        """The innermost called module that contains every op reading ``name``."""
        chains = [self.ops[index].scopes for index, _ in self.consumers.get(name, [])]
        if not chains:
            return ""
        common = 0
        while all(len(chain) > common and chain[common] == chains[0][common] for chain in chains):
            common += 1
        return chains[0][common - 1] if common else ""

    def _assign_parameters(self) -> None:
        names = [*self.initializers, *self.parameter_aliases]
        unnamed = []
        for name in names:
            route, dot, local = name.rpartition(".")
            if dot and route in self.modules and local not in self.modules[route].parameters:
                self.modules[route].parameters[local] = name
            else:
                unnamed.append(name)
        for name in unnamed:
            owner = self.modules[self._owner_by_use(name)]
            readers = self.consumers.get(name, [])
            # Exporters name a pre-transposed Linear weight after the op that reads it ("val_2",
            # "onnx::MatMul_213"); a graph without scopes keeps its own names.
            as_weight = (
                self.scope_source is not None
                and bool(readers)
                and all(self.ops[index].node.op_type in MATMUL_OPS and slot == 1 for index, slot in readers)
            )
            if as_weight and "weight" not in owner.parameters:
                owner.parameters["weight"] = name
                node = self.ops[readers[0][0]].node
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                # MatMul (and Gemm without transB) reads the weight as [in, out]: the exporter
                # stored the transpose of the module's [out, in] weight
                owner.layouts["weight"] = "out_in" if trans_b else "in_out"
            else:
                owner.parameters[name if name not in owner.parameters else f"{name}#{len(owner.parameters)}"] = name

    def preorder(self) -> Iterator[GraphModule]:
        stack = [""]
        while stack:
            module = self.modules[stack.pop()]
            yield module
            stack.extend(reversed(module.children))


def load_model(model: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise InputFileError(f"{path}: no such ONNX model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, and onnx several types
        raise InputFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node:
        raise InputFileError(f"{path}: the ONNX model has no graph nodes")
    return proto, path.parent.resolve()


def check_external_data(proto: onnx.ModelProto, base_dir: Path | None) -> None:
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if base_dir is None:
            raise UsageError(f"initializer {tensor.name!r} is stored externally; pass the model's path, not a ModelProto")
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (base_dir / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base_dir):
            raise InputFileError(f"{base_dir}: initializer {tensor.name!r} points outside the model's folder ({location!r})")
        if not target.is_file():
            raise InputFileError(f"{target}: external data file of initializer {tensor.name!r} is missing")


def value_info(proto: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """ONNX element type and rank of every value whose type is known or inferable."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = proto
    graph = inferred.graph
    types: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for info in (*graph.value_info, *graph.input, *graph.output):
        tensor_type = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor_type.elem_type:
            types[info.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                ranks[info.name] = len(tensor_type.shape.dim)
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
        ranks[tensor.name] = len(tensor.dims)
    return types, ranks
