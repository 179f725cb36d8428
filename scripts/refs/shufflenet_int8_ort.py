#!/usr/bin/env python3
"""Regenerate crates/engine/tests/data/shufflenet_v2_int8_ort.txt: the logits onnxruntime's CPU
int8 kernels give for ../shared/data/onnx-shufflenet-v2-12-int8 on its test_data_set_0 input.

The zoo's own output_0.pb dates from 2021 and its kernels; today's onnxruntime differs from it
by up to 24 output steps, so tessera's test checks against both (see tests/int8_models.rs).

    pip install onnx onnxruntime numpy
    python3 scripts/refs/shufflenet_int8_ort.py
"""
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

root = pathlib.Path(__file__).resolve().parents[2]
src = root.parent / "shared/data/onnx-shufflenet-v2-12-int8"
x = numpy_helper.to_array(onnx.load_tensor(str(src / "test_data_set_0/input_0.pb")))
sess = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"])
y = sess.run(None, {"input": x})[0].ravel()
out = root / "crates/engine/tests/data/shufflenet_v2_int8_ort.txt"
with open(out, "w") as f:
    f.write(f"# onnxruntime {ort.__version__} CPU, test_data_set_0, {y.size} logits\n")
    for v in y:
        f.write(f"{float(v)!r}\n")
print(f"wrote {out}")
