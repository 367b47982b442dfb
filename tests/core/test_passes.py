"""core/passes.py: each pass computes what the graph computed before, and touches only what it names."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.passes import pad_after_quantize, split_thin_convolutions


def conv_graph(out_channels: int, kernel: int, pads: list[int], **attributes: Any) -> onnx.ModelProto:
    """x (1, 8, H, W) -> Conv(8 -> out_channels, kernel x kernel) with a bias -> y."""
    rng = np.random.default_rng(out_channels * 100 + kernel)
    group = int(attributes.get("group", 1))
    weight = rng.standard_normal((out_channels, 8 // group, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], name="head", kernel_shape=[kernel, kernel], pads=pads, **attributes
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None, None])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.parametrize(
    ("out_channels", "kernel", "pads"),
    [(3, 9, [0, 0, 0, 0]), (3, 3, [1, 1, 1, 1]), (1, 5, [2, 0, 1, 3]), (4, 7, [0, 0, 0, 0])],
)
def test_a_split_thin_convolution_computes_the_same(out_channels: int, kernel: int, pads: list[int]) -> None:
    model = conv_graph(out_channels, kernel, pads)
    split, names = split_thin_convolutions(model)
    assert names == ["head"]
    assert [(n.op_type, n.name) for n in split.graph.node] == [("Conv", "head/rows"), ("Conv", "head/columns")]
    onnx.checker.check_model(split, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 8, 37, 29)).astype(np.float32)
    expected, got = run(model, {"x": x}), run(split, {"x": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    ("out_channels", "attributes"),
    [(16, {}), (3, {"strides": [2, 2]}), (3, {"dilations": [2, 2]}), (4, {"group": 2})],
    ids=["wide", "strided", "dilated", "grouped"],
)
def test_other_convolutions_are_left_alone(out_channels: int, attributes: dict[str, Any]) -> None:
    model = conv_graph(out_channels, 3, [1, 1, 1, 1], **attributes)
    split, names = split_thin_convolutions(model)
    assert names == [] and split.SerializeToString() == model.SerializeToString()


def qdq_pad_graph(mode: str) -> onnx.ModelProto:
    """x -> Relu -> Pad(mode) -> QuantizeLinear -> DequantizeLinear -> y: the QDQ pattern before a convolution."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Pad", ["r", "pads"], ["p"], mode=mode),
        helper.make_node("QuantizeLinear", ["p", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0, 0, 2, 3, 0, 0, 1, 4], np.int64), "pads"),
        numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
        numpy_helper.from_array(np.array(7, np.uint8), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None, None])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_a_pad_moved_after_its_quantisation_gives_the_same_bytes(mode: str) -> None:
    model = qdq_pad_graph(mode)
    moved, count = pad_after_quantize(model)
    assert count == 1
    assert [n.op_type for n in moved.graph.node] == ["Relu", "QuantizeLinear", "Pad", "DequantizeLinear"]
    onnx.checker.check_model(moved, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 4, 11, 13)).astype(np.float32) * 3
    np.testing.assert_array_equal(run(moved, {"x": x}), run(model, {"x": x}))


def test_a_constant_pad_stays_before_its_quantisation() -> None:
    # Zero padding is not a copy: 0.0 quantises to the zero point, and a constant other than 0 to something
    # else, so the pass leaves it to ONNX Runtime.
    model = qdq_pad_graph("constant")
    moved, count = pad_after_quantize(model)
    assert count == 0 and [n.op_type for n in moved.graph.node] == [n.op_type for n in model.graph.node]
