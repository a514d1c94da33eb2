"""Writes small hand-picked seed files for the fuzz corpora into fuzz/seeds/<target>/.

Run once with the project's venv (`scripts/with-libtorch python fuzz/make_seeds.py`); the
outputs are committed, so fuzzing itself needs no Python. The real writers (numpy, torch,
safetensors) produce the edge cases our own writer never emits: Fortran order, big-endian
data, numpy's `<V2` bfloat16, version-2 headers, torch views with strides and offsets,
nested checkpoint dicts, parameters, protocol-4 pickles with memo opcodes.
"""

import io
import os
import zipfile

import numpy as np
import torch
from safetensors.numpy import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_bytes(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a)
    else:
        np.lib.format.write_array(b, a, version=version)
    return b.getvalue()


arrays = {
    "f32_2x3": np.arange(6, dtype="<f4").reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4)),
    "big_endian": np.arange(5, dtype=">i4"),
    "scalar": np.array(1.5, dtype="<f2"),
    "empty": np.zeros((0, 4), dtype="<i2"),
    "bool": np.array([True, False, True]),
    "u8": np.arange(7, dtype="u1"),
    "i8": np.arange(-3, 3, dtype="i1"),
    "i64": np.arange(4, dtype="<i8"),
    "bf16": np.arange(6, dtype="<u2").view("V2").reshape(3, 2),
}
for name, a in arrays.items():
    out("npy_header", name + ".npy", npy_bytes(a))
out("npy_header", "v2.npy", npy_bytes(arrays["f32_2x3"], version=(2, 0)))
out("npy_header", "v3.npy", npy_bytes(arrays["fortran"], version=(3, 0)))

for compressed in (False, True):
    b = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        b, **{("a/" + k if i % 2 else k): v for i, (k, v) in enumerate(arrays.items())}
    )
    out("npz", "mixed_compressed.npz" if compressed else "mixed.npz", b.getvalue())

st = {k: v for k, v in arrays.items() if k not in ("bf16", "fortran", "big_endian")}
out("safetensors", "mixed.safetensors", st_save(st, metadata={"format": "pt"}))

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
sd = {
    "w": base,
    "view_t": base.t(),
    "slice": base[1:, 2:],
    "half": torch.ones(3, dtype=torch.float16),
    "bf16": torch.ones(2, 2, dtype=torch.bfloat16),
    "long": torch.arange(3),
    "bool": torch.tensor([True, False]),
    "scalar": torch.tensor(2.0),
    "empty": torch.zeros(0, 3),
    "param": torch.nn.Parameter(torch.zeros(2)),
}
for name, obj, proto in [
    ("state_dict_p2.pt", sd, 2),
    ("checkpoint_p4.pt", {"model": {"state_dict": sd}, "epoch": 3}, 4),
    ("linear.pt", torch.nn.Linear(3, 2).state_dict(), 2),
]:
    b = io.BytesIO()
    torch.save(obj, b, pickle_protocol=proto)
    data = b.getvalue()
    out("pt", name, b"\x00" + data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        p = z.read(pkl)
    out("pickle", name.replace(".pt", ".pkl"), p)
    # Mode 1 of the pt target: the pickle wrapped in a generated archive.
    out("pt", name.replace(".pt", ".wrapped"), b"\x01\xff" + p)
