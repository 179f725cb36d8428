#!/usr/bin/env python3
"""Regenerate crates/engine/tests/data/light_seeded/*.bin: onnxruntime's float logits for the
nine light architectures with tessera's seeded random weights, on the ONNX backend runner's input
(element i of n is float32(i / n)), as little-endian float32.

    TESSERA_SEEDED_OUT=/tmp/seeded cargo test --release -p tessera-engine --test light_models \
        -- --ignored write_seeded
    pip install onnxruntime numpy
    python3 scripts/refs/light_seeded_ort.py /tmp/seeded
"""
import pathlib
import sys

import numpy as np
import onnxruntime as ort

src = pathlib.Path(sys.argv[1])
root = pathlib.Path(__file__).resolve().parents[2]
out = root / "crates/engine/tests/data/light_seeded"
out.mkdir(parents=True, exist_ok=True)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
for model in sorted(src.glob("*.onnx")):
    s = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = inp.shape
    n = int(np.prod(shape))
    x = (np.arange(n, dtype=np.float64) / n).astype(np.float32).reshape(shape)
    y = s.run(None, {inp.name: x})[0].astype("<f4").ravel()
    (out / f"{model.stem}.bin").write_bytes(y.tobytes())
    print(f"{model.stem}: {y.size} logits, max |y| {np.abs(y).max():.4f} (onnxruntime {ort.__version__})")
