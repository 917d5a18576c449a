"""Depthwise Convs whose per-tensor uint8 input step drowns a channel that the Conv then amplifies
(round 3, layout-cdla): ``python -m benchmarks.unseen_hunt.drowned_channels PREPARED.onnx CALIB_DIR``.

PREPARED is the model as onnxquant plans it (``onnxquant.passes.prepare.prepare_model(model,
integer_gates=True)`` saved), so BN is folded and hard-swish gates are Convs. For each depthwise
Conv and channel c: the rounding noise its input carries (one uint8 step of the whole tensor's
range over sqrt(12)) times the norm of c's weights, against the standard deviation of c's fp32
output. Under 15 dB the channel is mostly rounding noise whatever the weights' own precision.
"""
from __future__ import annotations

import glob
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LIMIT_DB = 15.0


def main() -> None:
    prepared, calib = onnx.load(sys.argv[1]), sys.argv[2]
    inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    dws = [n for n in prepared.graph.node if n.op_type == "Conv" and n.input[1] in inits
           and inits[n.input[1]].shape[1] == 1 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    names = sorted({n.input[0] for n in dws} | {n.output[0] for n in dws})
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names if t not in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    seen: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for path in sorted(glob.glob(f"{calib}/*.npz"))[:4]:
        with np.load(path) as z:
            for t, v in zip(names, session.run(names, {k: z[k] for k in z.files})):
                seen[t].append(v)
    flagged = 0
    for n in dws:
        x, y = np.concatenate(seen[n.input[0]]), np.concatenate(seen[n.output[0]])
        step = (x.max() - min(float(x.min()), 0.0)) / 255
        w = inits[n.input[1]].reshape(inits[n.input[1]].shape[0], -1)
        sqnr = 20 * np.log10((y.std(axis=(0, 2, 3)) + 1e-12) / (step / np.sqrt(12) * np.linalg.norm(w, axis=1) + 1e-30))
        flagged += bool(sqnr.min() < LIMIT_DB)
        print(f"{n.name:28s} channels {w.shape[0]:4d}  worst {sqnr.min():6.1f} dB  under {LIMIT_DB:.0f} dB: {(sqnr < LIMIT_DB).sum()}")
    print(f"{flagged} of {len(dws)} depthwise Convs have a channel under {LIMIT_DB:.0f} dB")


if __name__ == "__main__":
    main()
