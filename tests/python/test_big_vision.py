"""Real clients load what `vitconv npz-to-pt` writes from google-research/big_vision checkpoints.

Every golden big_vision case (fixtures/big_vision, outputs computed by big_vision's own flax code) goes to
every layout that can hold it: timm's VisionTransformer built from the recorded kwargs and loaded with
strict=True, transformers' from_pretrained (ViT for class-token models, SigLIP's vision classes for mean
and MAP pooling), open_clip for class-token models. Outputs are compared with the golden logits, pooled
features and tokens; refusals are checked for the option they name. Nothing is skipped.
"""

import json
import pathlib
import subprocess

import numpy as np
import pytest
import torch

from test_loaders import BINARY, max_diff, nchw, read_metadata, read_weights, renormalise, timm_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
BV = ROOT / "fixtures" / "big_vision"

# big_vision's outputs reproduced by a PyTorch library with the same semantics: float noise only.
TOL = 1e-5
# A bf16 checkpoint against the f32 golden outputs: the rounding of the weights, not of the arithmetic.
TOL_BF16 = 5e-2

EXTS = [".pt", ".safetensors"]
TOK_VARIANTS = ["unrolled", "no-prefix", "train-state", "bfloat16"]

torch.set_grad_enabled(False)


def source(case, variant=None):
    if variant:
        return BV / case / "variants" / f"{variant}.npz"
    return BV / case / "checkpoint.npz"


def golden(case, name):
    return np.load(BV / case / name)


def model_json(case):
    return json.loads((BV / case / "model.json").read_text())


def run_convert(src, out, layout, *args):
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build --release first"
    cmd = [str(BINARY), "npz-to-pt", str(src), str(out), "--layout", layout, *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def convert(tmp_path, case, layout, name, *args, variant=None, source_path=None):
    out = tmp_path / name
    run = run_convert(source_path or source(case, variant), out, layout, *args)
    assert run.returncode == 0, run.stderr
    return out, run.stdout


def refused(tmp_path, case, layout, *args):
    out = tmp_path / "refused"
    run = run_convert(source(case), out, layout, *args)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert not out.exists()
    return run.stderr


def pre_logits(case, pooled):
    """big_vision's `pre_logits` dense + tanh on pooled features, from the checkpoint itself."""
    z = np.load(source(case))
    return np.tanh(pooled.astype(np.float64) @ z["params/pre_logits/kernel"] + z["params/pre_logits/bias"])


def sincos2d(h, w, d):
    """big_vision's posemb_sincos_2d in f64, written from the golden README."""
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / 10000 ** (np.arange(d // 4) / (d // 4 - 1))
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


# ---------------------------------------------------------------- timm


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("variant", [None] + TOK_VARIANTS)
def test_timm_tok_scan_matches_big_vision(tmp_path, variant, ext):
    out, stdout = convert(tmp_path, "bv-vit-tok-scan", "timm", f"m{ext}", variant=variant)
    model, meta = timm_model(out)
    kwargs = json.loads(meta["vitconv.timm_kwargs"])
    assert kwargs["class_token"] is True and kwargs["no_embed_class"] is True
    assert kwargs["global_pool"] == "token" and kwargs["act_layer"] == "gelu_tanh"
    x = nchw(golden("bv-vit-tok-scan", "input.npy"))
    tol = TOL_BF16 if variant == "bfloat16" else TOL
    assert max_diff(model(x).numpy(), golden("bv-vit-tok-scan", "logits.npy")) < tol
    tokens = model.forward_features(x).numpy()
    assert max_diff(tokens, golden("bv-vit-tok-scan", "tokens.npy")) < tol
    if variant == "train-state":
        assert "training state left out" in stdout
        assert "opt/" in meta["vitconv.source_notes"] and "chrono/" in meta["vitconv.source_notes"]
        left = json.loads(meta["vitconv.left_out"])
        assert left["roots"] == ["opt/", "chrono/"] and left["tensors"] > 2


@pytest.mark.parametrize("ext", EXTS)
def test_timm_gap_sincos_matches_big_vision(tmp_path, ext):
    image = model_json("bv-vit-gap-sincos")["image"]
    out, stdout = convert(tmp_path, "bv-vit-gap-sincos", "timm", f"m{ext}", "--image-size", str(image))
    assert "sincos2d" in stdout
    model, meta = timm_model(out)
    kwargs = json.loads(meta["vitconv.timm_kwargs"])
    assert kwargs["global_pool"] == "avg" and kwargs["fc_norm"] is False and kwargs["class_token"] is False
    x = nchw(golden("bv-vit-gap-sincos", "input.npy"))
    assert max_diff(model(x).numpy(), golden("bv-vit-gap-sincos", "logits.npy")) < TOL
    assert max_diff(model.forward_features(x).numpy(), golden("bv-vit-gap-sincos", "tokens.npy")) < TOL


def test_timm_map_head_is_attn_pool(tmp_path):
    assert "--drop-head" in refused(tmp_path, "bv-vit-map-scan", "timm")
    out, _ = convert(tmp_path, "bv-vit-map-scan", "timm", "m.safetensors", "--drop-head")
    model, meta = timm_model(out)
    assert json.loads(meta["vitconv.timm_kwargs"])["global_pool"] == "map"
    x = nchw(golden("bv-vit-map-scan", "input.npy"))
    pooled = model(x).numpy()
    assert max_diff(pre_logits("bv-vit-map-scan", pooled), golden("bv-vit-map-scan", "features.npy")) < TOL
    assert max_diff(model.forward_features(x).numpy(), golden("bv-vit-map-scan", "tokens.npy")) < TOL


def test_sincos2d_needs_the_image_size_and_is_recomputed_exactly(tmp_path):
    err = refused(tmp_path, "bv-vit-gap-sincos", "timm")
    assert "--image-size" in err and "sincos2d" in err
    d = model_json("bv-vit-gap-sincos")["hidden"]
    patch = model_json("bv-vit-gap-sincos")["patch"]
    for grid in (4, 6):
        out, _ = convert(tmp_path, "bv-vit-gap-sincos", "timm", f"g{grid}.safetensors",
                         "--image-size", str(grid * patch))
        pos = read_weights(out)["pos_embed"].numpy()[0]
        want = sincos2d(grid, grid, d)
        # Computed in f64 and rounded once: exactly the f32 rounding of the f64 table.
        assert np.array_equal(pos, want.astype(np.float32)), grid
    out, _ = convert(tmp_path, "bv-vit-gap-sincos", "timm", "b.safetensors", "--image-size", "32",
                     "--dtype", "bf16")
    pos = read_weights(out)["pos_embed"][0]
    assert torch.equal(pos, torch.from_numpy(sincos2d(4, 4, d)).to(torch.bfloat16))


def test_learned_table_without_class_row_resizes(tmp_path):
    out, stdout = convert(tmp_path, "bv-vit-tok-scan", "timm", "r.safetensors", "--image-size", "64")
    assert "resized from 3x3 to 4x4" in stdout
    pos = read_weights(out)["pos_embed"].numpy()
    assert pos.shape == (1, 16, 64)
    model, _ = timm_model(out)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("case,args,key", [
    ("bv-vit-tok-scan", [], "logits"),
    ("bv-vit-gap-sincos", ["--image-size", "32"], "logits"),
    ("bv-vit-map-scan", ["--drop-head"], "features"),
])
def test_timm_folder_loads_with_create_model_alone(tmp_path, case, args, key):
    import timm

    out, _ = convert(tmp_path, case, "timm", "folder", *args)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    y = model(nchw(golden(case, "input.npy"))).numpy()
    if key == "features":
        y = pre_logits(case, y)
    assert max_diff(y, golden(case, f"{key}.npy")) < TOL


# ---------------------------------------------------------------- transformers


def test_transformers_tok_is_vit_with_a_zero_class_position(tmp_path):
    from transformers import ViTForImageClassification

    out, _ = convert(tmp_path, "bv-vit-tok-scan", "hf", "hf")
    model = ViTForImageClassification.from_pretrained(out).eval()
    pos = model.vit.embeddings.position_embeddings[0, 0]
    assert torch.count_nonzero(pos) == 0
    x = nchw(golden("bv-vit-tok-scan", "input.npy"))
    assert max_diff(model(x).logits.numpy(), golden("bv-vit-tok-scan", "logits.npy")) < TOL


def test_transformers_gap_is_siglip_for_image_classification(tmp_path):
    from transformers import SiglipForImageClassification

    out, _ = convert(tmp_path, "bv-vit-gap-sincos", "hf", "hf", "--image-size", "32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision_config"]["vision_use_head"] is False
    assert cfg["vision_config"]["hidden_act"] == "gelu_pytorch_tanh"
    assert cfg["vision_config"]["layer_norm_eps"] == 1e-6
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [0.5] * 3 and pre["size"]["height"] == 32
    model = SiglipForImageClassification.from_pretrained(out).eval()
    x = nchw(golden("bv-vit-gap-sincos", "input.npy"))
    assert max_diff(model(x).logits.numpy(), golden("bv-vit-gap-sincos", "logits.npy")) < TOL


def test_transformers_map_is_siglip_vision_model_with_its_head(tmp_path):
    from transformers import SiglipVisionModel

    assert "--drop-head" in refused(tmp_path, "bv-vit-map-scan", "hf")
    out, _ = convert(tmp_path, "bv-vit-map-scan", "hf", "hf", "--drop-head")
    assert json.loads((out / "config.json").read_text())["vision_use_head"] is True
    model = SiglipVisionModel.from_pretrained(out).eval()
    x = nchw(golden("bv-vit-map-scan", "input.npy"))
    y = model(x)
    assert max_diff(y.last_hidden_state.numpy(), golden("bv-vit-map-scan", "tokens.npy")) < TOL
    feats = pre_logits("bv-vit-map-scan", y.pooler_output.numpy())
    assert max_diff(feats, golden("bv-vit-map-scan", "features.npy")) < TOL


# ---------------------------------------------------------------- CLIP-style


def test_open_clip_holds_a_class_token_model(tmp_path):
    from test_loaders import open_clip_visual

    out, _ = convert(tmp_path, "bv-vit-tok-scan", "open_clip", "o.safetensors")
    visual, cfg = open_clip_visual(out)
    x = golden("bv-vit-tok-scan", "input.npy")
    got = visual(renormalise(x, cfg)).numpy() + np.asarray(cfg["head_bias"])
    assert max_diff(got, golden("bv-vit-tok-scan", "logits.npy")) < TOL


@pytest.mark.parametrize("layout", ["open_clip", "clip"])
def test_clip_style_layouts_refuse_map_and_gap(tmp_path, layout):
    assert "MAP head" in refused(tmp_path, "bv-vit-map-scan", layout, "--drop-head")
    assert "class token" in refused(tmp_path, "bv-vit-gap-sincos", layout, "--image-size", "32")


def test_inspect_summarises_big_vision_files():
    run = subprocess.run([str(BINARY), "inspect", "--json", str(source("bv-vit-tok-scan")),
                          str(source("bv-vit-gap-sincos")), str(source("bv-vit-map-scan"))],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    files = json.loads(run.stdout)["files"]
    lines = [f["summary"]["architecture"] for f in files]
    assert all(f["summary"]["family"] == "big_vision" for f in files), files
    assert "stacked" in lines[0] and "class token without a position embedding" in lines[0]
    assert "sincos2d" in lines[1] and "mean pooling" in lines[1]
    assert "MAP head" in lines[2] and "pre_logits 32" in lines[2]
