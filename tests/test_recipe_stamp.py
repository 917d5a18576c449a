"""The recipe a model carries is stamped as its differences from the defaults (on a tiny model the
whole recipe was a fifth of the file) and read back whole by ``recipe_of``."""
from __future__ import annotations

import json

import onnx
from onnx import helper

from onnxquant.host import CPU_KINDS, HostCpu, cpu_mismatch
from onnxquant.recipe import (
    RECIPE_KEY,
    Recipe,
    _differences,
    _over_defaults,
    _stamp_form,
    _without_empty_lists,
    recipe_for_target,
    recipe_of,
)


def _carrying(text: str) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    helper.set_model_props(model, {RECIPE_KEY: text})
    return model


def test_only_what_differs_from_the_defaults_is_stamped():
    assert Recipe().to_json() == "{}"
    assert json.loads(recipe_for_target("cpu-vnni").to_json()) == {
        "cpu": {"detected": False, "kind": "vnni"}, "quantization": {"reduce_range": False}}
    given = Recipe().with_overrides(calibration={"method": "mse"}, nodes={"exclude": ("op:PRelu",)},
                                    recovery={"smoothquant_alpha": 0.75})  # the default alpha: not stamped
    assert json.loads(given.to_json()) == {"calibration": {"method": "mse"}, "nodes": {"exclude": ["op:PRelu"]}}


def test_the_stamp_reads_back_whole():
    for recipe in (Recipe(), recipe_for_target("cpu-avx2"), recipe_for_target("cpu-vnni"), recipe_for_target("qnn"),
                   Recipe().with_overrides(calibration={"method": "percentile", "max_samples": 64},
                                           nodes={"uint8_weights": ("conv1",)}, input_shapes={"x": (1, 3)})):
        whole = _stamp_form(recipe.to_dict())
        if "cpu" in whole:  # the reason is told again from the kind
            whole["cpu"]["reason"] = CPU_KINDS[whole["cpu"]["kind"]].reason
        assert recipe_of(_carrying(recipe.to_json())) == whole


def test_an_older_full_stamp_reads_back_as_it_was():
    old = _without_empty_lists(recipe_for_target("cpu-vnni").to_dict())  # what to_json stamped before
    assert recipe_of(_carrying(json.dumps(old))) == old


def test_a_default_set_to_none_is_stamped_as_null_and_read_back_without_it():
    default = {"calibration": {"method": "minmax", "percentile": 99.999}}
    value = {"calibration": {"method": "minmax"}}  # to_dict leaves None fields out
    stamp = _differences(value, default)
    assert stamp == {"calibration": {"percentile": None}}
    assert _over_defaults(stamp, default) == value


def test_a_broken_stamp_is_none():
    assert recipe_of(_carrying("[1, 2]")) is None
    assert recipe_of(_carrying("{not json")) is None


MALFORMED = ['{"cpu":{"kind":[1]}}', '{"cpu":{"kind":{"a":1}}}', '{"cpu":[1]}', '{"cpu":"vnni"}',
             '{"quantization":5}', '{"quantization":{"reduce_range":[1]},"target":["cpu"]}', '{"target":{}}']


def test_malformed_metadata_reads_without_a_traceback():
    # a stamp is input (any JSON): a CPU kind that is not a string raised TypeError (unhashable)
    # in recipe_of, reaching validate and package as a traceback
    hosts = [HostCpu(kind, "x86_64", (), "test") for kind in ("avx2", "vnni", "unknown")]
    for text in MALFORMED:
        recipe = recipe_of(_carrying(text))
        assert isinstance(recipe, dict), text
        for host in hosts:
            note = cpu_mismatch(recipe, host)
            assert note is None or isinstance(note, str)
