"""Drop what exporters write on each node for debugging: metadata and doc strings.

torch.onnx's exporter (dynamo, the default since torch 2.9) writes five metadata entries on every
node: the FX node, the module hierarchy, the name scope and the Python stack trace. They do not
change what the model computes, nothing at run time reads them, and on a small model they are
a large part of the file: Silero VAD's op-18 export is 22% node metadata (its If branches each
carry a stack trace that lists every weight), so its int8 result came out at 0.44 of the input
where the weights alone are at 0.25. The model's own metadata (``metadata_props`` of the model:
labels, versions, onnxquant's recipe) is kept.
"""
from __future__ import annotations

import onnx

from onnxquant.graphs import iter_graphs


def drop_node_annotations(model: onnx.ModelProto) -> int:
    """Clear every node's ``metadata_props`` and ``doc_string`` (subgraphs included), in place;
    about the bytes they took (their text and field tags: sizing the model would serialize it)."""
    dropped = 0
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.doc_string or len(node.metadata_props):
                dropped += _text_bytes(node.doc_string) + sum(_text_bytes(p.key) + _text_bytes(p.value) + 2
                                                              for p in node.metadata_props)
                node.doc_string = ""
                del node.metadata_props[:]
    return dropped


def _text_bytes(text: str) -> int:
    """A string field's bytes in the file: its UTF-8, a tag and a length."""
    size = len(text.encode())
    return size + 1 + max(1, (size.bit_length() + 6) // 7) if text else 0
