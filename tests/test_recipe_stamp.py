"""The recipe a model carries is stamped as its differences from a fixed base table (on a tiny model
the whole recipe was a fifth of the file) and read back whole by ``recipe_of``, whatever the
defaults of the version reading it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import onnx
from onnx import helper

from onnxquant.host import CPU_KINDS, HostCpu, cpu_mismatch
from onnxquant import recipe as recipe_module
from onnxquant.recipe import (
    RECIPE_KEY,
    STAMP_BASE_1,
    Recipe,
    RecoverySettings,
    SearchSettings,
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
    assert Recipe().to_json() == '{"stamp_base":1}'
    assert json.loads(recipe_for_target("cpu-vnni").to_json()) == {
        "stamp_base": 1, "cpu": {"detected": False, "kind": "vnni"}, "quantization": {"reduce_range": False}}
    given = Recipe().with_overrides(calibration={"method": "mse"}, nodes={"exclude": ("op:PRelu",)},
                                    recovery={"smoothquant_alpha": 0.75})  # the base table's alpha: not stamped
    assert json.loads(given.to_json()) == {"stamp_base": 1, "calibration": {"method": "mse"},
                                           "nodes": {"exclude": ["op:PRelu"]}}


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
    for text in MALFORMED + ['{"stamp_base":1,"cpu":{"kind":[1]}}', '{"stamp_base":1,"quantization":[]}']:
        recipe = recipe_of(_carrying(text))
        assert isinstance(recipe, dict), text
        for host in hosts:
            note = cpu_mismatch(recipe, host)
            assert note is None or isinstance(note, str)


def _default(monkeypatch, cls: type, name: str, value: object) -> None:
    """Change the default of ``cls``'s field ``name`` (as a later version might)."""
    names = [f.name for f in fields(cls)]
    defaults = list(cls.__init__.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def test_an_existing_stamp_reads_back_the_same_after_the_defaults_change(monkeypatch):
    recipes = (Recipe(), recipe_for_target("cpu-vnni"),
               Recipe().with_overrides(search={"trials": 3}, recovery={"smoothquant_alpha": 0.5}))
    stamps = [recipe.to_json() for recipe in recipes]
    before = [recipe_of(_carrying(text)) for text in stamps]
    _default(monkeypatch, SearchSettings, "trials", 12)
    _default(monkeypatch, RecoverySettings, "smoothquant_alpha", 0.6)
    _default(monkeypatch, RecoverySettings, "equalize", True)
    assert Recipe().search.trials == 12 and Recipe().recovery.equalize is True  # the defaults did change
    assert [recipe_of(_carrying(text)) for text in stamps] == before
    assert before[0]["search"]["trials"] == 10 and "equalize" not in before[0]["recovery"]
    # a model made with the new defaults says them: they differ from the base table
    made_now = recipe_of(_carrying(Recipe().to_json()))
    assert made_now["search"]["trials"] == 12 and made_now["recovery"]["smoothquant_alpha"] == 0.6
    assert made_now["recovery"]["equalize"] is True


def test_the_base_table_is_never_edited():
    # a stamp names its table by id: editing table 1 would change every model's recipe read back;
    # when the defaults move on, add STAMP_BASE_2 (and keep 1 for the models already stamped)
    digest = hashlib.sha256(json.dumps(STAMP_BASE_1, sort_keys=True).encode()).hexdigest()
    assert digest == "6eeda7aa1db059a3303a13f7ddad8ba5fc54ac7eb127cefcfca4dc69cbc0d44e"


def test_a_field_missing_from_the_base_table_is_always_stamped(monkeypatch):
    older = json.loads(json.dumps(STAMP_BASE_1))
    del older["search"]["score_every"]  # as if score_every were added after table 1
    monkeypatch.setitem(recipe_module.STAMP_BASES, 1, older)
    stamp = json.loads(Recipe().to_json())
    assert stamp == {"stamp_base": 1, "search": {"score_every": 4}}
    assert recipe_of(_carrying(Recipe().to_json()))["search"]["score_every"] == 4


def test_a_base_table_this_version_does_not_know_is_none():
    assert recipe_of(_carrying('{"stamp_base":99,"target":"cpu"}')) is None
    assert recipe_of(_carrying('{"stamp_base":true}')) is None
    assert recipe_of(_carrying('{"stamp_base":"1"}')) is None
