import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.passes.gather_rows import quantize_rows, row_block
from onnxquant.recipe import Recipe, recipe_for_target
from tests.conftest import run

ROWS, COLUMNS = 40, 24


def _embedding(index_type: int = TensorProto.INT64) -> tuple[onnx.ModelProto, np.ndarray]:
    """ids -> Gather(table) + Gather(types) -> LayerNorm -> MatMul: a transformer's embeddings.
    The table's rows differ a hundredfold in range, as frequent and rare words do."""
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(ROWS, COLUMNS)) * np.logspace(-2, 0, ROWS)[:, None]).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.normal(0, 0.1, (2, COLUMNS)).astype(np.float32), "types"),
             numpy_helper.from_array(np.ones(COLUMNS, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(COLUMNS, np.float32), "beta"),
             numpy_helper.from_array(rng.normal(0, 0.2, (COLUMNS, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["words"], name="words"),
             helper.make_node("Gather", ["types", "type_ids"], ["kind"], name="kind"),
             helper.make_node("Add", ["words", "kind"], ["e"], name="sum"),
             helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", index_type, [1, 6]),
                                             helper.make_tensor_value_info("type_ids", index_type, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), table


def _ids(count: int, seed: int, index_type=np.int64) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"ids": rng.integers(0, ROWS, (1, 6)).astype(index_type), "type_ids": np.zeros((1, 6), index_type)}
            for _ in range(count)]


@pytest.mark.parametrize("columns,block", [(1, 16), (16, 16), (24, 32), (384, 512), (1024, 1024)])
def test_one_block_spans_a_row(columns: int, block: int):
    assert row_block(columns) == block


def test_rows_are_stored_8_bit_with_one_scale_each():
    table = np.array([[0.0, 0.0], [1.0, -0.5], [-0.01, 0.02]], np.float32)
    q, scale = quantize_rows(table)
    assert q.dtype == np.uint8 and scale.shape == (3, 1)
    np.testing.assert_allclose((q.astype(np.float32) - 128) * scale, table, atol=float(scale.max()) / 2)
    assert q[1, 0] == 255 and q[2, 1] == 255  # each row's largest value takes the top level
    assert np.all(q[0] == 128) and scale[0, 0] > 0  # an all-zero row: zero, and a usable scale


@pytest.mark.parametrize("index_type", [TensorProto.INT64, TensorProto.INT32])
def test_cpu_target_gathers_rows_quantized_per_row(index_type: int):
    model, table = _embedding(index_type)
    dtype = np.int64 if index_type == TensorProto.INT64 else np.int32
    result = onnxquant.quantize(model, _ids(16, 1, dtype), Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False}))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("GatherBlockQuantized") == 2 and "Gather" not in ops
    assert not any(t.name == "table" for t in result.model.graph.initializer)  # the float table is gone
    assert "Add" in ops and "QLinearAdd" not in ops and "Add" not in result.quantized_nodes  # float rows: float sum
    probe = onnx.ModelProto()
    probe.CopyFrom(result.model)
    probe.graph.output.append(helper.make_tensor_value_info("words", TensorProto.FLOAT, None))
    for sample in _ids(4, 2, dtype):
        words = run(probe, sample)[1]
        rows = table[sample["ids"][0]]
        # Each row is off by at most half of its own step, not the whole table's.
        step = np.abs(rows).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(words[0] - rows) <= step / 2 + 1e-7)


def test_npu_targets_keep_one_scale_per_table():
    model, _ = _embedding()
    result = onnxquant.quantize(model, _ids(16, 1), recipe_for_target("qnn").with_overrides(search={"enabled": False}))
    assert "GatherBlockQuantized" not in [n.op_type for n in result.model.graph.node]


def test_rows_quantized_a_block_at_a_time_are_the_whole_tables_rows(monkeypatch):
    """Blocks of rows (memory) give the bytes of the whole table at once: each row is its own."""
    import onnxquant.passes.gather_rows as gather_rows

    rng = np.random.default_rng(1)
    table = (rng.normal(size=(37, 9)) * np.logspace(-3, 1, 37)[:, None]).astype(np.float32)
    table[5] = 0.0  # an all-zero row keeps scale 1
    monkeypatch.setattr(gather_rows, "ROWS_AT_A_TIME", 4)  # 10 blocks, the last partial
    q, scale = quantize_rows(table)
    monkeypatch.setattr(gather_rows, "ROWS_AT_A_TIME", len(table))
    q_whole, scale_whole = quantize_rows(table)
    assert q.dtype == np.uint8 and scale.dtype == np.float32 and scale.shape == (37, 1)
    assert q.tobytes() == q_whole.tobytes() and scale.tobytes() == scale_whole.tobytes()
    wide = table.astype(np.float64)  # the definition, on the whole table at once
    expected_scale = np.where(np.abs(wide).max(1, keepdims=True) > 0, np.abs(wide).max(1, keepdims=True) / 127.0,
                              1.0).astype(np.float32)
    expected = (np.clip(np.rint(wide / expected_scale.astype(np.float64)), -127, 127) + 128).astype(np.uint8)
    assert scale.tobytes() == expected_scale.tobytes() and q.tobytes() == expected.tobytes()
