"""Stage ``compact``: the quantized model, before it is saved, without recorded shapes or
attributes equal to their default, with identical generated initializers shared and short names
for what onnxquant inserted
(``passes/compact.py``). Names the input model had, and names the run's reports mention
(layers, activations, float nodes), are kept."""
from __future__ import annotations

from onnxquant.passes.compact import compact as compact_model
from onnxquant.passes.compact import model_names
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.state import State


@timed("compact")
def compact(state: State) -> State:
    """The state with its model compacted in place (the run owns the rewritten model)."""
    own = state.input_names if state.input_names is not None else model_names(state.model)
    compact_model(state.model, _reported_names(state) | own)
    return state


def _reported_names(state: State) -> frozenset[str]:
    """Names the run's results refer to: they must still be found in the written model."""
    names: set[str] = set(state.excluded)
    sel = state.selection
    if sel is not None:
        names.update(sel.quantized, sel.float_nodes, sel.weight_only, sel.activations, sel.row_tables)
    if state.plan is not None:
        names.update(state.plan.activations)
    if state.float_nodes is not None:
        names.update(n.name for n in state.float_nodes)
    if state.fusion is not None:
        names.update(state.fusion.float_islands)
        names.update(name for _, name in state.fusion.round_trips)
    if state.int4:
        names.update(state.int4)
    # a layer inside a body is named by its path (``If_0/then_branch/conv``): keep each step
    names.update(step for name in list(names) if "/" in name for step in name.split("/"))
    return frozenset(names)
