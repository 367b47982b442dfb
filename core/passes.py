"""Graph passes that make an exported graph cheaper to run without changing what it computes.

split_thin_convolutions: a k x k convolution to few output channels as a (k x 1)
and a one-hot (1 x k) one. The quality preset's last layer maps 32 channels to 3 with a 9 x 9 kernel at the
full image size. ONNX Runtime's CPU kernels block output channels (fp32 NCHWc
pads 3 to 16; the int8 kernel runs a GEMM 3 columns wide), so that one layer was
a fifth of an fp32 call and 40% of an int8 one at 1024 px. The same sum in two
steps keeps the kernels busy:

    A: Conv(C -> O*k, kernel (k, 1)), A[o*k + j] = sum over c, i of W[o, c, i, j] x[c, y + i, x]
    B: Conv(O*k -> O, kernel (1, k), group O), weight one-hot: out[o] = sum over j of A[o*k + j](y, x + j) + b[o]

A does k times fewer multiply-adds per output channel and has O*k channels (27
for RGB, 9 x 9), which the kernels block with little waste; B is O*k*k
multiply-adds a pixel. The result is the original convolution up to float
rounding (tests/core/test_passes.py); every other node stays as it is.

pad_after_quantize: in a QDQ graph, float -> Pad (reflect or edge) ->
QuantizeLinear becomes float -> QuantizeLinear -> Pad on the uint8 codes.
Such padding copies values, so it commutes with an elementwise quantisation:
the output is the same to the bit, and the pad moves a quarter of the bytes
(135 ms of a 1024 px quality call on 2 Xeon cores).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

THIN = 4  # at most this many output channels: RGB heads (and a grey one)


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _splittable(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    w = weights[node.input[1]]
    attrs = _attributes(node)
    square = w.ndim == 4 and w.shape[2] == w.shape[3] > 1
    plain = (
        attrs.get("group", 1) == 1
        and list(attrs.get("strides", [1, 1])) == [1, 1]  # type: ignore[call-overload]
        and list(attrs.get("dilations", [1, 1])) == [1, 1]  # type: ignore[call-overload]
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )
    return bool(square and plain and w.shape[0] <= THIN)


def split_thin_convolutions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every thin square convolution split in two; and the names of those split."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    split: list[str] = []
    for node in graph.node:
        if not _splittable(node, weights):
            nodes.append(node)
            continue
        w = weights[node.input[1]].astype(np.float32)  # (O, C, k, k)
        out_channels, in_channels, k, _ = w.shape
        pads = list(_attributes(node).get("pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
        top, left, bottom, right = pads
        # A[o*k + j, c, i, 0] = W[o, c, i, j]
        wa = np.ascontiguousarray(w.transpose(0, 3, 1, 2).reshape(out_channels * k, in_channels, k, 1))
        # B[o, j, 0, j] = 1: group o sums its k columns, each shifted by j
        wb = np.zeros((out_channels, k, 1, k), np.float32)
        wb[:, np.arange(k), 0, np.arange(k)] = 1.0
        name = node.name or node.output[0]
        a_w, b_w, mid = f"{name}/rows.weight", f"{name}/columns.weight", f"{name}/rows"
        graph.initializer.extend([numpy_helper.from_array(wa, a_w), numpy_helper.from_array(wb, b_w)])
        nodes.append(
            helper.make_node(
                "Conv", [node.input[0], a_w], [mid], name=f"{name}/rows", kernel_shape=[k, 1], pads=[top, 0, bottom, 0]
            )
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [mid, b_w, *node.input[2:]],
                list(node.output),
                name=f"{name}/columns",
                kernel_shape=[1, k],
                pads=[0, left, 0, right],
                group=out_channels,
            )
        )
        split.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, split


def pad_after_quantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each copying Pad that only feeds a QuantizeLinear moved after it; and how many."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    moved = 0
    for pad in graph.node:
        mode = _attributes(pad).get("mode", b"constant")
        if pad.op_type != "Pad" or mode not in (b"reflect", b"edge") or pad.output[0] in outputs:
            continue
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        quantize = users[0]
        float_in, quantized = pad.input[0], quantize.output[0]
        quantize.input[0], quantize.output[0] = float_in, f"{pad.output[0]}/unpadded"
        pad.input[0], pad.output[0] = quantize.output[0], quantized
        moved += 1
    _sort_topologically(graph)
    return model, moved


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph`'s nodes so that each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(order)
