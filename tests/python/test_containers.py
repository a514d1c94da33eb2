"""Real clients load what `vitconv npz-to-pt` writes from checkpoint containers: the golden big_vision `.bv`
folders, Orbax checkpoints (OCDBT with zarr v2 or v3, plain zarr folders) and flax msgpack files in
fixtures/containers, written by jax, flax, orbax-checkpoint and tensorstore. Each is converted straight from
its folder or file and the loaded model's outputs are compared with the golden outputs that the original flax
code computed from the same parameters. Nothing is skipped.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

from test_big_vision import golden as bv_golden, pre_logits, run_convert
from test_loaders import max_diff, nchw, renormalise, timm_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "fixtures" / "containers"
VIT_TOKEN = ROOT / "fixtures" / "vit-token"

# The same tolerance as the .npz tests: float noise between two correct implementations.
TOL = 1e-5

torch.set_grad_enabled(False)


def entry(case):
    expected = json.loads((CONTAINERS / case / "expected.json").read_text())
    return CONTAINERS / case / expected["entry"]


def converted(tmp_path, case, layout, name, *args):
    out = tmp_path / name
    run = run_convert(entry(case), out, layout, *args)
    assert run.returncode == 0, run.stderr
    return out, run.stdout


@pytest.mark.parametrize("case", ["orbax-vit-token", "msgpack-vit-token"])
def test_vit_jax_train_states_load_in_timm(tmp_path, case):
    out, stdout = converted(tmp_path, case, "timm", "m.safetensors")
    assert "training state left out" in stdout
    model, meta = timm_model(out)
    assert "opt_state/" in meta["vitconv.source_notes"]
    cfg = json.loads(meta["vitconv.config"])
    x = np.load(VIT_TOKEN / "input.npy")
    logits = model(renormalise(x, cfg)).numpy()
    assert max_diff(logits, np.load(VIT_TOKEN / "logits.npy")) < TOL


@pytest.mark.parametrize(
    "case", ["bv-vit-map-scan", "orbax-bv-std", "orbax-bv-noocdbt", "orbax-bv-v1-zarr3", "msgpack-bv-hfstyle"]
)
def test_big_vision_containers_load_in_timm(tmp_path, case):
    out, _ = converted(tmp_path, case, "timm", "m.safetensors", "--drop-head")
    model, meta = timm_model(out)
    assert json.loads(meta["vitconv.timm_kwargs"])["global_pool"] == "map"
    x = nchw(bv_golden("bv-vit-map-scan", "input.npy"))
    pooled = model(x).numpy()
    assert max_diff(pre_logits("bv-vit-map-scan", pooled), bv_golden("bv-vit-map-scan", "features.npy")) < TOL
    assert max_diff(model.forward_features(x).numpy(), bv_golden("bv-vit-map-scan", "tokens.npy")) < TOL
