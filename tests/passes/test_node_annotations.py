"""Exporters' per-node debugging annotations are dropped; the model's own metadata is kept."""
from __future__ import annotations

import onnx
from onnx import helper

import onnxquant
from models.tiny import image_samples, tiny_cnn
from models.tiny_control_flow import if_samples, tiny_if_network
from onnxquant.graphs import iter_graphs
from onnxquant.passes.node_annotations import drop_node_annotations
from tests.conftest import run


def _annotated(model: onnx.ModelProto, trace_bytes: int) -> onnx.ModelProto:
    """``model`` with torch.onnx-style metadata on every node (bodies too) and a model label."""
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            helper.set_metadata_props(node, {"namespace": f"{node.name}: aten.conv", "pkg.torch.onnx.stack_trace":
                                             "File \"model.py\", line 1, in forward\n" + "x" * trace_bytes})
            node.doc_string = "exported"
    helper.set_model_props(model, {"labels": "cat,dog"})
    return model


def test_node_annotations_are_dropped_in_every_graph_and_model_metadata_stays():
    model = _annotated(tiny_if_network(), 100)
    before = model.ByteSize()
    dropped = drop_node_annotations(model)
    assert 0 < dropped and abs(dropped - (before - model.ByteSize())) <= 0.02 * dropped
    assert not any(n.metadata_props or n.doc_string for g in iter_graphs(model.graph) for n in g.node)
    assert {p.key: p.value for p in model.metadata_props} == {"labels": "cat,dog"}
    for feed in if_samples(2):  # it computes what it did
        assert [o.tolist() for o in run(model, feed)] == [o.tolist() for o in run(tiny_if_network(), feed)]


def test_quantize_writes_no_node_annotations_and_says_so():
    model = _annotated(tiny_cnn(), 3000)
    result = onnxquant.quantize(model, image_samples(8), onnxquant.Recipe().with_overrides(search={"enabled": False}))
    assert not any(n.metadata_props or n.doc_string for g in iter_graphs(result.model.graph) for n in g.node)
    assert any("node metadata and doc strings dropped" in note for note in result.notes)
    assert {p.key: p.value for p in result.model.metadata_props}["labels"] == "cat,dog"
    assert any(n.metadata_props for n in model.graph.node)  # the input is not changed
