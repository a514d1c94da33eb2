"""What a user's own pipeline gets from the folders and files `vitconv npz-to-pt` writes: each library's
preprocessing reproduces the source's (the whole image squashed to the model's size, bilinear, pixels to
[-1, 1]), class names given with --labels reach each library, folders made without --tokenizer load their
image processors and say how to get a tokenizer, and open_clip folders load after being moved or copied when
the image tower is one timm registers.

The reference preprocessing is written here with torch alone: `F.interpolate(bilinear, half-pixel centres)`
of the [0, 1] image to the model's size, then (x - 0.5) / 0.5. The test images are smaller than the models'
inputs and not square: upsampling, where antialiasing plays no part (see the README for shrinking).
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_big_vision import convert as convert_bv
from test_loaders import BINARY, convert as convert_vit

torch.set_grad_enabled(False)

# Pixels may differ by this much (in [0, 1]) between a library's resize and the reference: PIL rounds its
# resized image to 8 bits before rescaling (half a level), and its bilinear weights are computed in fixed point.
PIXEL_TOL = 2 / 255


def photo(width, height, seed=0):
    """A smooth, non-square RGB image (gradients plus a little noise), as a PIL image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 3 + y / 5)], axis=-1)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def reference(img, size):
    """The source's preprocessing: squash to `size` x `size`, bilinear, [-1, 1]; NCHW."""
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x - 0.5) / 0.5


def assert_pixels_close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = ((got - want) * 0.5).abs().max().item()
    assert diff <= PIXEL_TOL, f"pixels differ by {diff * 255:.2f}/255"


def assert_outputs_close(got, want):
    # Inputs within 2/255 of each other; the tiny models' outputs move by far less than this.
    diff = (got - want).abs().max().item()
    assert diff < 2e-2, f"outputs differ by {diff:.3g}"


# ------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("case,size", [("vit-token", 64), ("bv-vit-tok-scan", 48)])
def test_timm_folder_transform_is_the_sources(tmp_path, case, size):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    convert = convert_vit if case.startswith("vit-") else convert_bv
    out, _ = convert(tmp_path, case, "timm", "folder")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    cfg = resolve_model_data_config(model)
    assert cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash" and cfg["interpolation"] == "bilinear", cfg
    img = photo(size * 3 // 4, size // 2 + 3)
    got = create_transform(**cfg)(img)[None]
    want = reference(img, size)
    assert_pixels_close(got, want)
    assert_outputs_close(model(got), model(want))


def test_timm_weights_file_printed_python_carries_the_preprocessing(tmp_path):
    from timm.data import create_transform, resolve_model_data_config

    out, report = convert_vit(tmp_path, "vit-token", "timm", "m.safetensors")
    code = report.split("python:\n", 1)[1]
    code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("  "))
    scope = {}
    exec(code, scope)
    model = scope["model"].eval()
    cfg = resolve_model_data_config(model)
    assert (cfg["crop_mode"], cfg["interpolation"], tuple(cfg["mean"])) == ("squash", "bilinear", (0.5,) * 3), cfg
    img = photo(40, 29)
    got = create_transform(**cfg)(img)[None]
    assert_pixels_close(got, reference(img, 64))
    # The weights file's metadata says the same.
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["vitconv.timm_pretrained_cfg"])
    assert meta["crop_mode"] == "squash" and meta["interpolation"] == "bilinear"


@pytest.mark.parametrize("case,size", [("vit-token", 64), ("bv-vit-tok-scan", 48)])
def test_hf_image_processor_is_the_sources(tmp_path, case, size):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    convert = convert_vit if case.startswith("vit-") else convert_bv
    out, _ = convert(tmp_path, case, "hf", "hf")
    processor = AutoImageProcessor.from_pretrained(out)
    img = photo(size - 7, size // 2)
    got = processor(img, return_tensors="pt")["pixel_values"]
    want = reference(img, size)
    assert_pixels_close(got, want)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert_outputs_close(model(pixel_values=got).logits, model(pixel_values=want).logits)


def test_open_clip_and_hf_siglip_preprocessing_is_the_sources(tmp_path):
    import open_clip
    from transformers import AutoProcessor, SiglipModel

    img = photo(25, 19)
    want = reference(img, 32)
    oc, _ = convert_bv(tmp_path, "siglip-tiny", "open_clip", "oc")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc}")
    got = preprocess(img)[None]
    assert_pixels_close(got, want)
    assert_outputs_close(model.eval().encode_image(got), model.encode_image(want))
    hf, _ = convert_bv(tmp_path, "siglip-nohead", "hf", "hf")
    processor = AutoProcessor.from_pretrained(hf)
    got = processor(images=img, return_tensors="pt")["pixel_values"]
    assert_pixels_close(got, want)
    model = SiglipModel.from_pretrained(hf).eval()

    def features(x):
        f = model.get_image_features(pixel_values=x)
        # transformers 5 returns the output object; its pooled embedding is the features.
        return getattr(f, "pooler_output", f)

    assert_outputs_close(features(got), features(want))


# ------------------------------------------------------------ class names


def test_labels_reach_transformers_and_timm(tmp_path):
    import timm
    from transformers import AutoConfig

    names = [f"class number {i}" for i in range(10)]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(names))
    hf, _ = convert_vit(tmp_path, "vit-token", "hf", "hf", "--labels", str(labels))
    config = AutoConfig.from_pretrained(hf)
    assert [config.id2label[i] for i in range(10)] == names
    assert config.label2id["class number 3"] == 3
    lines = tmp_path / "labels.txt"
    lines.write_text("\n".join(names) + "\n")
    folder, _ = convert_vit(tmp_path, "vit-token", "timm", "timm", "--labels", str(lines))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert list(model.pretrained_cfg["label_names"]) == names


def test_imagenet_labels_come_from_timm_and_are_checked_against_the_head(tmp_path):
    env = dict(os.environ, VITCONV_PYTHON=sys.executable)
    for name, count in [("imagenet-1k", 1000), ("imagenet-21k", 21843)]:
        run = subprocess.run(
            [str(BINARY), "npz-to-pt", "fixtures/vit-token/checkpoint.npz", str(tmp_path / "m.safetensors"),
             "--layout", "timm", "--labels", name],
            capture_output=True, text=True, env=env, cwd=BINARY.parents[2])
        assert run.returncode == 2, run.stderr
        assert f"{count} names for a head of 10 classes" in run.stderr, run.stderr


# ------------------------------------------------------------ folders without a tokenizer


def test_folders_without_a_tokenizer_load_images_and_name_the_option(tmp_path, caplog):
    import open_clip
    from transformers import AutoImageProcessor, AutoProcessor, SiglipModel

    hf, _ = convert_bv(tmp_path, "siglip-nohead", "hf", "hf")
    assert type(AutoImageProcessor.from_pretrained(hf)).__name__ == "SiglipImageProcessor"
    assert type(AutoProcessor.from_pretrained(hf)).__name__ == "SiglipImageProcessor"
    with caplog.at_level(logging.WARNING):
        model = SiglipModel.from_pretrained(hf)
    assert "49406" not in caplog.text, caplog.text
    assert model.config.text_config.bos_token_id is None
    oc, _ = convert_bv(tmp_path, "siglip-nohead", "open_clip", "oc")
    with pytest.raises(BaseException, match="--tokenizer"):
        open_clip.get_tokenizer(f"local-dir:{oc}")


# ------------------------------------------------------------ folders that move


def test_a_moved_and_a_copied_timm_and_hf_folder_load_with_the_original_gone(tmp_path):
    import timm
    from transformers import AutoModelForImageClassification

    for layout, load in [
        ("timm", lambda p: timm.create_model(f"local-dir:{p}", pretrained=True)),
        ("hf", lambda p: AutoModelForImageClassification.from_pretrained(p)),
    ]:
        out, _ = convert_vit(tmp_path, "vit-token", layout, f"{layout}-made")
        want = load(out).eval()(reference(photo(30, 20), 64))
        copied = tmp_path / f"{layout}-copied"
        shutil.copytree(out, copied)
        moved = tmp_path / f"{layout}-moved"
        shutil.move(str(out), moved)
        for p in (copied, moved):
            got = load(p).eval()(reference(photo(30, 20), 64))
            got = got.logits if hasattr(got, "logits") else got
            ref = want.logits if hasattr(want, "logits") else want
            assert torch.equal(got, ref), layout
        assert not out.exists()
