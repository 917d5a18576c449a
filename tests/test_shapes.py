from __future__ import annotations

import pytest

from models.tiny import tiny_attention, tiny_cnn
from onnxquant.errors import CalibrationDataError
from onnxquant.shapes import fix_input_shapes, has_free_dims


def _dims(value):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_named_dims_are_fixed_everywhere_and_the_input_model_is_untouched():
    model = tiny_attention()
    assert has_free_dims(model)
    fixed = fix_input_shapes(model, {"x": (1, 5, 8), "keep": (1, 1, 5)})
    assert not has_free_dims(fixed)
    assert _dims(fixed.graph.output[0]) == [1, 5, 8]
    assert _dims(model.graph.input[0]) == [1, "S", 8]


def test_contradicting_shapes_are_refused():
    with pytest.raises(CalibrationDataError, match="fixed size"):
        fix_input_shapes(tiny_cnn(), {"x": (1, 3, 32, 32)})
    with pytest.raises(CalibrationDataError, match="dim 'S'"):
        fix_input_shapes(tiny_attention(), {"x": (1, 5, 8), "keep": (1, 1, 6)})
    with pytest.raises(CalibrationDataError, match="not an input"):
        fix_input_shapes(tiny_cnn(), {"y": (1,)})


def test_a_shape_for_one_input_fixes_the_dims_it_names_in_the_others():
    model = tiny_attention()
    assert has_free_dims(model, given=["keep"]) is False  # "S" is fixed through keep, x's 8 is fixed
    assert has_free_dims(tiny_cnn(), given=[]) is True
