import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxquant
from onnxquant.recipe import Recipe
from onnxquant.recovery.gptq import factor, gptq_round
from tests.conftest import run

K, N, TOKENS = 32, 12, 10


def _correlated_tokens(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """(1, TOKENS, K) inputs whose channels are strongly correlated (as a LayerNorm's output is)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(K, K))
    return [{"x": (rng.normal(size=(1, TOKENS, K)) @ mix).astype(np.float32)} for _ in range(count)]


def _token_matmul(rank: int = 3) -> onnx.ModelProto:
    """x (tokens, K) -> MatMul (K -> N) -> Add bias -> Relu; the token count is free, as in a
    transformer export (with it fixed, onnxruntime's optimizer makes MatMul + Add a 2-D Gemm)."""
    rng = np.random.default_rng(0)
    shape = [1, "tokens", K] if rank == 3 else ["tokens", K]
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (K, N)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, N).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape[:-1] + [N])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_gptq_rounding_reconstructs_better_than_nearest_with_the_same_scales():
    x = np.concatenate([s["x"].reshape(-1, K) for s in _correlated_tokens(40, 1)]).astype(np.float64)
    gram = x.T @ x / len(x)
    w = np.random.default_rng(2).normal(0, 0.2, (K, N))
    scale = np.abs(w).max(axis=0) / 63
    q = gptq_round(w, scale, *factor(gram), qmax=63)
    nearest = np.clip(np.rint(w / scale), -63, 63)
    assert np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 63  # integers within the 7-bit range

    def error(ints: np.ndarray) -> float:
        return float(np.sum((x @ (ints * scale - w)) ** 2))

    assert 10 * np.log10(error(nearest) / error(q)) > 1.0  # dB


def test_gptq_is_on_by_default_for_token_activations_and_improves_int8():
    model = _token_matmul()
    calib, held = _correlated_tokens(24, 1), _correlated_tokens(8, 2)
    on = onnxquant.quantize(model, calib, Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False}))
    off = onnxquant.quantize(model, calib, Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False}, recovery={"gptq": False}))
    assert any(n.startswith("GPTQ rounding: 1 token-activation layers improved") for n in on.notes)
    assert not any("GPTQ" in n for n in off.notes)

    def noise(quantized: onnx.ModelProto) -> float:
        return sum(float(np.sum((run(model, s)[0] - run(quantized, s)[0]) ** 2)) for s in held)

    assert noise(on.model) < noise(off.model)
    # The default is left out of the stamped recipe, so models it does not touch keep their bytes.
    stamped = json.loads(next(p.value for p in on.model.metadata_props if p.key == "onnxquant.recipe"))
    assert "gptq" not in stamped.get("recovery", {})


def test_gptq_leaves_rank_two_inputs_alone():
    model = _token_matmul(rank=2)
    calib = [{"x": s["x"][0]} for s in _correlated_tokens(20, 1)]
    on = onnxquant.quantize(model, calib, Recipe().with_overrides(search={"enabled": False}))
    off = onnxquant.quantize(model, calib, Recipe().with_overrides(search={"enabled": False}, recovery={"gptq": False}))
    assert not any("GPTQ" in n for n in on.notes)
    weights = [[numpy_helper.to_array(t) for t in r.model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
               for r in (on, off)]
    assert weights[0] and len(weights[0]) == len(weights[1])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_gptq_runs_numpy_blas_on_one_thread_and_gives_the_threads_back(monkeypatch):
    """Threaded LAPACK (``np.linalg.inv`` of a 1536-wide Gram matrix) gives other bits on two
    threads than on one: GPTQ's factors run on one, so the output does not follow the core count."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import onnxquant.recovery.gptq as gptq_module

    seen: list[int] = []
    real = gptq_module.factor

    def spying(gram: np.ndarray):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return real(gram)

    monkeypatch.setattr(gptq_module, "factor", spying)
    with threadpool_limits(limits=2, user_api="blas"):
        before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        onnxquant.quantize(_token_matmul(), _correlated_tokens(24, 1),
                           Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False}))
        after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert after and after == before  # the caller's limit is back


def test_gram_means_are_the_chunked_float32_products_summed_in_float64(monkeypatch):
    """What ``_grams`` returns: per input, the float32 products of its chunks of token rows
    (a chunk closes once it holds ``_CHUNK`` rows), summed in float64, over the row count, as float32."""
    from onnxquant.recovery import gptq as gptq_module
    from onnxquant.recovery.gptq import _grams

    model = _token_matmul()
    samples = _correlated_tokens(30, 3)
    chunk = 64  # rows: 10 tokens a sample, so chunks close after 7 samples (70 rows)
    monkeypatch.setattr(gptq_module, "_CHUNK", chunk)
    got = _grams(model, ["x"], samples, None)["x"]
    rows = [s["x"].reshape(-1, K).astype(np.float32) for s in samples]
    total, pending = np.zeros((K, K)), []
    for r in rows:
        pending.append(r)
        if sum(len(p) for p in pending) >= chunk:
            block = np.concatenate(pending)
            total += (block.T @ block).astype(np.float64)
            pending = []
    if pending:
        block = np.concatenate(pending)
        total += (block.T @ block).astype(np.float64)
    assert got.dtype == np.float32
    assert np.array_equal(got, (total / sum(len(r) for r in rows)).astype(np.float32))


def test_search_trials_round_each_weight_once_per_calibrated_model(monkeypatch):
    """The search's trials re-plan one calibrated model: GPTQ's roundings are kept between them,
    so the samples run through GPTQ's pass once per calibrated model, not once per trial."""
    from onnxquant.recovery import gptq as gptq_module

    passes, calls = [], []
    real_grams, real_gptq = gptq_module._grams, gptq_module._gptq
    monkeypatch.setattr(gptq_module, "_grams", lambda *a, **k: passes.append(1) or real_grams(*a, **k))
    monkeypatch.setattr(gptq_module, "_gptq", lambda *a, **k: calls.append(1) or real_gptq(*a, **k))
    recipe = Recipe().with_overrides(quantization={"integer_compute": True}, recovery={"smoothquant": False})
    result = onnxquant.quantize(_token_matmul(), _correlated_tokens(32, 1), recipe)
    trials = len(result.search["trials"])
    assert trials >= 3 and len(calls) >= trials
    # one pass for the trials (the kept samples), one for the refit (all samples)
    assert len(passes) == 2
