"""A model owner's own trainer, as an attested program job runs it (standard library only).

Softmax regression by per-row SGD on the rows the agent hands over in memory; writes the
model as tessera's JSON dense format. The interface is documented in
crates/attested/src/program.rs.
"""
import json
import math
import os
import random
import struct

job = json.loads(os.environ["TESSERA_JOB"])
rows, feats, classes = job["rows"], job["features"], job["classes"]
train = job["train"]
with open(os.environ["TESSERA_FEATURES"], "rb") as f:
    raw = f.read()
if len(raw) != rows * feats * 4:
    raise SystemExit("features: %d bytes, expected %d" % (len(raw), rows * feats * 4))
values = struct.unpack("<%df" % (rows * feats), raw)
with open(os.environ["TESSERA_LABELS"], "rb") as f:
    labels = f.read()
scale = train.get("input_scale", 1.0)
x = [[v * scale for v in values[i * feats:(i + 1) * feats]] for i in range(rows)]
w = [[0.0] * feats for _ in range(classes)]
b = [0.0] * classes
lr = train["lr"]
rng = random.Random(train.get("seed", 0))
order = list(range(rows))
for epoch in range(train["epochs"]):
    rng.shuffle(order)
    loss = 0.0
    for i in order:
        xi, yi = x[i], labels[i]
        z = [sum(a * c for a, c in zip(w[k], xi)) + b[k] for k in range(classes)]
        top = max(z)
        p = [math.exp(v - top) for v in z]
        total = sum(p)
        p = [v / total for v in p]
        loss -= math.log(max(p[yi], 1e-12))
        for k in range(classes):
            g = lr * (p[k] - (1.0 if k == yi else 0.0))
            wk = w[k]
            for j in range(feats):
                wk[j] -= g * xi[j]
            b[k] -= g
    print("epoch %d: loss %.4f" % (epoch + 1, loss / rows), flush=True)
with open(os.environ["TESSERA_MODEL_OUT"], "w") as f:
    json.dump({"format": "tessera-mlp", "input_scale": scale,
               "layers": [{"weight": w, "bias": b}]}, f)
