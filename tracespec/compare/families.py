"""Op families: the one name of an operation that each framework calls by its own.

Constraints: pure string functions, no framework import. A recorded node has a ``class_name``
(PyTorch ``Conv2d``, Paddle ``Conv2D``, an ONNX op type ``Conv``, onnx2torch's ``OnnxConv``...);
alignment and the noise model reason about *what it computes*, so they compare families.

The family of a class name is found by normalising it (no framework prefix such as ``Onnx``, no
dimension suffix such as ``2d``/``2D``, lower case, no underscores) and looking the result up in
:data:`ALIASES`; an unknown name is its own family, so two frameworks that name a layer alike still
match.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ALIASES",
    "CONTAINER_FAMILIES",
    "PASS_THROUGH_FAMILIES",
    "PIECEWISE_FAMILIES",
    "op_family",
]

ALIASES: Final[dict[str, str]] = {
    # linear algebra
    "linear": "linear",
    "gemm": "linear",
    "fc": "linear",
    "dense": "linear",
    "matmul": "matmul",
    "bmm": "matmul",
    "einsum": "matmul",
    "conv": "conv",
    "convolution": "conv",
    "fusedconv": "conv",
    "convtranspose": "convtranspose",
    "embedding": "embedding",
    "gather": "gather",
    # normalisation
    "batchnorm": "batchnorm",
    "batchnormalization": "batchnorm",
    "syncbatchnorm": "batchnorm",
    "layernorm": "layernorm",
    "layernormalization": "layernorm",
    "simplifiedlayernormalization": "rmsnorm",
    "rmsnorm": "rmsnorm",
    "groupnorm": "groupnorm",
    "groupnormalization": "groupnorm",
    "instancenorm": "instancenorm",
    "instancenormalization": "instancenorm",
    "localresponsenorm": "lrn",
    "lrn": "lrn",
    # activations
    "relu": "relu",
    "relu6": "relu6",
    "leakyrelu": "leakyrelu",
    "prelu": "prelu",
    "elu": "elu",
    "selu": "selu",
    "celu": "celu",
    "gelu": "gelu",
    "fastgelu": "gelu",
    "biasgelu": "gelu",
    "quickgelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "mish": "mish",
    "sigmoid": "sigmoid",
    "hardsigmoid": "hardsigmoid",
    "hardswish": "hardswish",
    "tanh": "tanh",
    "hardtanh": "hardtanh",
    "clip": "clip",
    "clamp": "clip",
    "softplus": "softplus",
    "softsign": "softsign",
    "softmax": "softmax",
    "logsoftmax": "logsoftmax",
    "abs": "abs",
    "sign": "sign",
    # pooling
    "maxpool": "maxpool",
    "avgpool": "avgpool",
    "averagepool": "avgpool",
    "adaptiveavgpool": "globalavgpool",
    "globalaveragepool": "globalavgpool",
    "globalaveragepoolwithknowninputshape": "globalavgpool",
    "globalavgpool": "globalavgpool",
    "adaptivemaxpool": "globalmaxpool",
    "globalmaxpool": "globalmaxpool",
    # shape and pass-through
    "flatten": "flatten",
    "reshape": "reshape",
    "view": "reshape",
    "squeeze": "reshape",
    "unsqueeze": "reshape",
    "transpose": "transpose",
    "permute": "transpose",
    "dropout": "dropout",
    "alphadropout": "dropout",
    "identity": "identity",
    "concat": "concat",
    "cat": "concat",
    "split": "split",
    "slice": "slice",
    "pad": "pad",
    "zeropad": "pad",
    "constantpad": "pad",
    "upsample": "resize",
    "resize": "resize",
    "interpolate": "resize",
    # functional ops as each framework names them (recorded with ops=)
    "mm": "matmul",
    "addmm": "linear",
    "maskedfill": "where",
    "multiply": "mul",
    "subtract": "sub",
    "divide": "div",
    "truediv": "div",
    "t": "transpose",
    "mt": "transpose",
    "swapaxes": "transpose",
    "getitem": "slice",
    "chunk": "split",
    "unbind": "split",
    "expand": "expand",
    "tile": "expand",
    "broadcastto": "expand",
    "contiguous": "identity",
    "clone": "identity",
    "detach": "identity",
    "cast": "cast",
    "astype": "cast",
    "to": "cast",
    "typeas": "cast",
    "float": "cast",
    "half": "cast",
    "double": "cast",
    "bfloat16": "cast",
    # elementwise arithmetic
    "add": "add",
    "sub": "sub",
    "mul": "mul",
    "div": "div",
    "pow": "pow",
    "sqrt": "sqrt",
    "exp": "exp",
    "log": "log",
    "neg": "neg",
    "erf": "erf",
    "reducemean": "mean",
    "mean": "mean",
    "reducesum": "sum",
    "sum": "sum",
    "reducemax": "max",
    "max": "max",
    "min": "min",
    "argmax": "argmax",
    "argmin": "argmin",
    "topk": "topk",
    "sort": "sort",
    "where": "where",
    # attention blocks
    "multiheadattention": "attention",
    "attention": "attention",
    "scaleddotproductattention": "attention",
    # containers
    "sequential": "sequential",
    "modulelist": "modulelist",
    "layerlist": "modulelist",
    "moduledict": "moduledict",
    "layerdict": "moduledict",
}
"""Normalised class name -> family. Extend it where a framework names an operation its own way."""

PIECEWISE_FAMILIES: Final[frozenset[str]] = frozenset(
    {
        "relu",
        "relu6",
        "leakyrelu",
        "prelu",
        "hardtanh",
        "clip",
        "hardsigmoid",
        "hardswish",
        "abs",
        "sign",
        "maxpool",
        "globalmaxpool",
        "max",
        "min",
        "argmax",
        "argmin",
        "topk",
        "sort",
        "where",
    }
)
"""Families whose derivative jumps at a kink (ReLU at 0, a max-pool tie, a clamp bound): two correct
runs whose forward inputs differ by rounding may take different branches there."""

PASS_THROUGH_FAMILIES: Final[frozenset[str]] = frozenset(
    {
        "dropout",
        "identity",
        "flatten",
        "reshape",
    }
)
"""Families whose output holds the same values as their input (dropout in eval mode): one side
may record them and the other not, and their output equals the neighbour's."""

CONTAINER_FAMILIES: Final[frozenset[str]] = frozenset({"sequential", "modulelist", "moduledict"})

_PREFIXES: Final = re.compile(r"^(onnx|paddle|torch|nn|functional|fused|quant)+", re.IGNORECASE)
_SUFFIXES: Final = re.compile(r"(\d+d|\d+D|nd|ND|_?v\d+|withknowninputshape|layer|op|module)$")


def _normalise(class_name: str) -> str:
    name = class_name.rsplit(".", 1)[-1]  # a qualified name: "torch.nn.Conv2d"
    name = re.sub(r"_\d+$", "", name)  # ONNX Runtime's op node names: "MatMul_3"
    stripped = _PREFIXES.sub("", name) or name
    lowered = stripped.lower().replace("_", "")
    if lowered in ALIASES:
        return lowered
    trimmed = _SUFFIXES.sub("", stripped).lower().replace("_", "")
    return trimmed or lowered


def op_family(class_name: str) -> str:
    """The family of a recorded node's class name (``Conv2D`` -> ``conv``, ``Gemm`` -> ``linear``)."""
    key = _normalise(class_name)
    return ALIASES.get(key, key)
