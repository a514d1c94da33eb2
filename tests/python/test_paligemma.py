"""Real clients load the PaliGemma image towers `vitconv npz-to-pt --tower image` writes.

The golden cases (fixtures/siglip2/paligemma-tower-tiny, f32, and its bf16 twin stored as numpy's `|V2`) hold
big_vision's own outputs: `tokens.npy`, the tower after `encoder_norm`, and `zimg.npy`, the per-token `head`
that projects every image token to the LLM width. transformers' `SiglipVisionModel.from_pretrained(OUT)` must
give `tokens` as `last_hidden_state`, and the projector written beside it (`multi_modal_projector.linear`) must
give `zimg`; timm's `VisionTransformer(global_pool='')` must give `tokens` from `forward_features` and `zimg` from
`forward`, built from the recorded kwargs, from the printed Python and from the folder alone. The bf16 outputs
were computed from the rounded weights, so both cases are held to the same tolerance.
"""

import json
import pathlib
import subprocess

import numpy as np
import pytest
import torch

from test_loaders import BINARY, max_diff, nchw, read_metadata, read_weights

torch.set_grad_enabled(False)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = ["paligemma-tower-tiny", "paligemma-tower-tiny-bf16"]
# big_vision's f32 forward reproduced in PyTorch's f32: float noise only (the bf16 case's outputs come from its
# rounded weights, which the conversion keeps exactly).
TOL = 1e-5


def case_dir(case):
    return ROOT / "fixtures" / "siglip2" / case


def golden(case, name):
    return np.load(case_dir(case) / name)


def images(case):
    # NHWC in [-1, 1]: what the unit input normalisation (mean = std = 0.5 on [0, 1] pixels) hands the model.
    return nchw(golden(case, "input.npy"))


def run(case, out, layout, *args):
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build --release first"
    cmd = [str(BINARY), "npz-to-pt", str(case_dir(case) / "checkpoint.npz"), str(out), "--layout", layout, *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def convert(tmp_path, case, layout, name, *args):
    out = tmp_path / name
    r = run(case, out, layout, "--tower", "image", *args)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def printed_python(stdout):
    """The loader lines the report prints after `python:` (indented), as one script."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("python"))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        body.append(line[2:])
    return "\n".join(body)


def check(case, tokens, zimg):
    d = max_diff(tokens.float().numpy(), golden(case, "tokens.npy"))
    assert d < TOL, f"{case} tokens: max |diff| = {d:.3g}"
    d = max_diff(zimg.float().numpy(), golden(case, "zimg.npy"))
    assert d < TOL, f"{case} zimg: max |diff| = {d:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_hf_vision_model_and_projector_match_big_vision(tmp_path, case):
    from safetensors.torch import load_file
    from transformers import SiglipVisionModel

    out, stdout = convert(tmp_path, case, "hf", "hf")
    assert "language model left out (--tower image" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "siglip_vision_model" and cfg["vision_use_head"] is False
    assert cfg["hidden_act"] == "gelu_pytorch_tanh" and cfg["layer_norm_eps"] == 1e-6
    assert (cfg["image_size"], cfg["patch_size"], cfg["intermediate_size"]) == (28, 14, 308)
    model, info = SiglipVisionModel.from_pretrained(out, output_loading_info=True)
    model = model.eval()
    # Every weight of the vision model is loaded; the projector beside it is the only key it does not use.
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert sorted(info["unexpected_keys"]) == [
        "multi_modal_projector.linear.bias",
        "multi_modal_projector.linear.weight",
    ], info
    tokens = model(pixel_values=images(case)).last_hidden_state
    w = load_file(out / "model.safetensors")
    projector = torch.nn.Linear(72, 48)
    projector.load_state_dict(
        {"weight": w["multi_modal_projector.linear.weight"], "bias": w["multi_modal_projector.linear.bias"]}
    )
    check(case, tokens, projector(tokens))


def test_hf_printed_python_loads_the_tower_and_the_projector(tmp_path):
    case = CASES[0]
    out, stdout = convert(tmp_path, case, "hf", "hf")
    scope = {}
    exec(printed_python(stdout), scope)
    tokens = scope["model"].eval()(pixel_values=images(case)).last_hidden_state
    check(case, tokens, scope["projector"](tokens))


@pytest.mark.parametrize("case", CASES)
def test_timm_file_from_the_printed_python_matches_big_vision(tmp_path, case):
    out, stdout = convert(tmp_path, case, "timm", "m.safetensors")
    meta = read_metadata(out)
    kwargs = json.loads(meta["vitconv.timm_kwargs"])
    assert kwargs["global_pool"] == "" and kwargs["class_token"] is False and kwargs["num_classes"] == 48
    scope = {}
    exec(printed_python(stdout), scope)
    model = scope["model"]
    model.load_state_dict(read_weights(out), strict=True)
    model = model.eval()
    x = images(case)
    check(case, model.forward_features(x), model(x))
    assert model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5] and model.pretrained_cfg["input_size"] == [3, 28, 28]


@pytest.mark.parametrize("case", CASES)
def test_timm_folder_loads_with_create_model_alone(tmp_path, case):
    import timm

    out, _ = convert(tmp_path, case, "timm", "folder")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images(case)
    check(case, model.forward_features(x), model(x))


@pytest.mark.parametrize("layout", ["hf", "timm", "open_clip", "clip"])
def test_without_tower_image_nothing_is_written(tmp_path, layout):
    out = tmp_path / "refused"
    r = run(CASES[0], out, layout)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "--tower image" in r.stderr and "is not converted by vitconv" in r.stderr
    assert not out.exists()
