#!/usr/bin/env python3
"""Builds a random-valued .npz with the exact keys and shapes of a published checkpoint.

Usage: make_random_checkpoint.py SHAPES_JSON OUT.npz [--seed N] [--deflate]

SHAPES_JSON is one of fixtures/shapes/*.json ({"tensors": {key: shape}, "dtype": ...}).
The file is written the way np.savez writes one (a zip of stored .npy members, each
opened with force_zip64=True, headers by numpy.lib.format.write_array), but one array
at a time, so building the 2.5 GB ViT-H/14 needs the memory of its largest tensor, not
of the whole model. Values are N(0, 0.02), float32 (or bfloat16 stored as numpy's '|V2' where the shapes file says
"dtype": "bfloat16", as Kaggle's .b16.npz files are): realistic magnitudes, no zeros.
With --deflate the members are deflated, as np.savez_compressed writes them.
"""

import argparse
import json
import os
import zipfile

import numpy as np

SCALE = 0.02


def to_bf16_void(arr):
    """float32 -> bfloat16 (round to nearest even) as numpy's 2-byte void, as np.save writes JAX's bf16."""
    bits = arr.view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).view("|V2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shapes")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deflate", action="store_true")
    args = ap.parse_args()

    spec = json.load(open(args.shapes))
    # bfloat16 has no numpy dtype: JAX's arrays are saved as 2-byte voids ('|V2'), which is what is written.
    bf16 = spec.get("dtype") == "bfloat16"
    dtype = None if bf16 else np.dtype(spec.get("dtype", "float32"))
    rng = np.random.default_rng(args.seed)
    tmp = args.out + ".partial"
    # np.savez: ZIP_STORED (np.savez_compressed: ZIP_DEFLATED), allowZip64, one member per array named KEY.npy.
    compression = zipfile.ZIP_DEFLATED if args.deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, mode="w", compression=compression, allowZip64=True) as zf:
        for key, shape in spec["tensors"].items():
            arr = rng.standard_normal(tuple(shape), dtype=np.float32) * SCALE
            arr = to_bf16_void(arr) if bf16 else arr.astype(dtype, copy=False)
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    os.replace(tmp, args.out)
    params = sum(int(np.prod(s)) for s in spec["tensors"].values())
    print(f"wrote {args.out}: {len(spec['tensors'])} tensors, {params} parameters")


if __name__ == "__main__":
    main()
