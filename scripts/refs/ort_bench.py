#!/usr/bin/env python3
"""Time onnxruntime (CPU, 2 intra-op threads) on tessera's built-in networks, for the ratios in
BENCHMARKS.md: the median of N runs of one image, after one warm-up. `tessera bench
--onnxruntime` runs this script itself (embedded in the binary) in the same run; by hand:

    for n in resnet18-32 vgg16-32 resnet50-224; do tessera build $n -o /tmp/ortb/$n.onnx; done
    python3 scripts/refs/ort_bench.py /tmp/ortb [N]
"""
import pathlib
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

src = pathlib.Path(sys.argv[1])
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 9
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.inter_op_num_threads = 1
for model in sorted(src.glob("*.onnx")):
    s = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = (np.arange(np.prod(inp.shape)) * 7919 % 256).astype(np.float32).reshape(inp.shape)
    s.run(None, {inp.name: x})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, {inp.name: x})
        ts.append((time.perf_counter() - t) * 1e3)
    print(f"{model.stem}: onnxruntime {ort.__version__} float, median {statistics.median(ts):.2f} ms of {reps}")
