"""Real clients load what `vitconv npz-to-pt` writes and reproduce the golden flax outputs.

Every golden case goes to every layout that can hold it, in .pt and .safetensors; the weights are read with
torch.load(weights_only=True) / safetensors, built with the library's own classes from the configuration the
converter recorded, loaded with strict=True, and run on the golden input. Nothing is skipped: a missing
binary or fixture fails the test.
"""

import json
import pathlib
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
BINARY = ROOT / "target" / "release" / "vitconv"

# Same semantics as the golden reference: differences are float noise.
TOL_SAME = 1e-5
# The flax model's outputs (tanh GELU, eps 1e-6) reproduced by a PyTorch library.
TOL_FLAX = 1e-4

PLAIN = ["vit-token", "vit-prelogits", "vit-gap", "vit-mlp4"]
HYBRID = ["hybrid-r2", "hybrid-root"]
VARIANTS = ["bfloat16", "compressed", "opt-target-prefix"]
EXTS = [".pt", ".safetensors"]

torch.set_grad_enabled(False)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def source(case):
    if case in VARIANTS:
        return FIXTURES / "vit-token-variants" / f"{case}.npz"
    return FIXTURES / case / "checkpoint.npz"


def golden_dir(case):
    return FIXTURES / ("vit-token" if case in VARIANTS else case)


def golden(case, name):
    return np.load(golden_dir(case) / name)


def golden_logits(case):
    if case == "bfloat16":
        return np.load(FIXTURES / "vit-token-variants" / "bfloat16_logits.npy")
    return golden(case, "logits.npy")


def model_json(case):
    return json.loads((golden_dir(case) / "model.json").read_text())


def convert(tmp_path, case, layout, out_name, *args):
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build --release first"
    out = tmp_path / out_name
    cmd = [str(BINARY), "npz-to-pt", str(source(case)), str(out), "--layout", layout, *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr}"
    return out, run.stdout


def read_weights(path):
    if path.suffix == ".safetensors":
        return load_file(str(path))
    sd = torch.load(str(path), weights_only=True)
    assert isinstance(sd, dict)
    return sd


def read_metadata(path):
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.metadata()
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/vitconv_metadata.json")]
        assert len(names) == 1, z.namelist()
        return json.loads(z.read(names[0]))


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def renormalise(x, cfg):
    """Source pixels in [-1, 1] (NHWC) -> what the target declares: ((x + 1) / 2 - mean) / std, NCHW."""
    norm = cfg["input_norm"]
    mean = np.asarray(norm["mean"], np.float64)
    std = np.asarray(norm["std"], np.float64)
    return nchw((((x.astype(np.float64) + 1) / 2 - mean) / std).astype(np.float32))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def build_timm(meta):
    import functools

    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem
    from timm.models.vision_transformer import VisionTransformer

    kwargs = json.loads(meta["vitconv.timm_kwargs"])
    if "vitconv.timm_backbone" not in meta:
        return VisionTransformer(**kwargs).eval()
    b = json.loads(meta["vitconv.timm_backbone"])
    conv = functools.partial(StdConv2dSame, eps=b["conv_eps"])
    norm = functools.partial(GroupNormAct, num_groups=b["num_groups"], eps=b["norm_eps"])
    if b["class"] == "ResNetV2":
        backbone = ResNetV2(
            layers=tuple(b["layers"]), width_factor=b["width_factor"], num_classes=0, global_pool="",
            preact=False, stem_type=b["stem_type"], conv_layer=conv, norm_layer=norm)
    else:
        backbone = create_resnetv2_stem(
            3, out_chs=b["stem_chs"], stem_type=b["stem_type"], preact=False, conv_layer=conv, norm_layer=norm)
    return VisionTransformer(embed_layer=functools.partial(HybridEmbed, backbone=backbone), **kwargs).eval()


def timm_model(path):
    meta = read_metadata(path)
    assert meta["vitconv.layout"] == "timm"
    model = build_timm(meta)
    model.load_state_dict(read_weights(path), strict=True)
    return model, meta


# ---------------------------------------------------------------- timm


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("case", [c for c in PLAIN + HYBRID + VARIANTS if c != "vit-prelogits"])
def test_timm_tanh_matches_flax_logits(tmp_path, case, ext):
    out, stdout = convert(tmp_path, case, "timm", f"m{ext}")
    model, meta = timm_model(out)
    cfg = json.loads(meta["vitconv.config"])
    assert cfg["gelu"] == "tanh" and cfg["input_norm"]["name"] == "unit"
    assert "input normalisation: unit" in stdout
    x = golden(case, "input.npy")
    logits = model(renormalise(x, cfg)).numpy()
    d = max_diff(logits, golden_logits(case))
    assert d < TOL_FLAX, f"{case}: max |timm - flax| = {d}"


@pytest.mark.parametrize("case", ["vit-token", "vit-gap", "vit-mlp4"])
def test_timm_erf_matches_timm_golden(tmp_path, case):
    out, _ = convert(tmp_path, case, "timm", "m.pt", "--gelu", "erf")
    model, meta = timm_model(out)
    assert json.loads(meta["vitconv.timm_kwargs"])["act_layer"] == "gelu"
    logits = model(nchw(golden(case, "input.npy"))).numpy()
    d = max_diff(logits, golden(case, "timm_logits.npy"))
    assert d < TOL_SAME, f"{case}: max |ours - timm's own npz loader| = {d}"


def test_timm_prelogits_needs_drop_head_and_gives_pooled_tokens(tmp_path):
    run = subprocess.run(
        [str(BINARY), "npz-to-pt", str(source("vit-prelogits")), str(tmp_path / "r.pt"), "--layout", "timm"],
        capture_output=True, text=True)
    assert run.returncode == 2 and "--drop-head" in run.stderr, run.stderr
    assert not (tmp_path / "r.pt").exists()
    out, stdout = convert(tmp_path, "vit-prelogits", "timm", "m.pt", "--drop-head")
    assert "pre_logits" in stdout
    model, meta = timm_model(out)
    assert "pre_logits" in meta["vitconv.notes"]
    feats = model(nchw(golden("vit-prelogits", "input.npy"))).numpy()
    d = max_diff(feats, golden("vit-prelogits", "tokens.npy")[:, 0])
    assert d < TOL_FLAX, d


@pytest.mark.parametrize("case", ["vit-token", "vit-gap", "vit-mlp4", "vit-prelogits"] + VARIANTS)
def test_timm_folder_loads_with_create_model_alone(tmp_path, case):
    """A folder OUTPUT is a self-contained timm model: create_model('local-dir:...') builds it exactly."""
    import timm

    args = ["--drop-head"] if case == "vit-prelogits" else []
    out, stdout = convert(tmp_path, case, "timm", "folder", *args)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "timm.create_model('local-dir:'" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_args"]["act_layer"] == "gelu_tanh"
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = nchw(golden(case, "input.npy"))
    y = model(x).numpy()
    if case == "vit-prelogits":
        assert max_diff(y, golden(case, "tokens.npy")[:, 0]) < TOL_FLAX
    else:
        assert max_diff(y, golden_logits(case)) < TOL_FLAX
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, model_json(case)["image"], model_json(case)["image"])
    assert data["mean"] == (0.5, 0.5, 0.5) or list(data["mean"]) == [0.5, 0.5, 0.5]


def test_timm_folder_is_refused_for_hybrids(tmp_path):
    run = subprocess.run([str(BINARY), "npz-to-pt", str(source("hybrid-r2")), str(tmp_path / "folder"),
                          "--layout", "timm"], capture_output=True, text=True)
    assert run.returncode == 2 and ".safetensors" in run.stderr, run.stderr
    assert not (tmp_path / "folder").exists()


def test_timm_input_norm_imagenet_is_folded_exactly(tmp_path):
    out, stdout = convert(tmp_path, "vit-token", "timm", "m.safetensors", "--input-norm", "imagenet")
    model, meta = timm_model(out)
    cfg = json.loads(meta["vitconv.config"])
    assert cfg["input_norm"]["name"] == "imagenet" and "imagenet" in stdout
    assert json.loads(meta["vitconv.timm_pretrained_cfg"])["mean"] == cfg["input_norm"]["mean"]
    logits = model(renormalise(golden("vit-token", "input.npy"), cfg)).numpy()
    assert max_diff(logits, golden("vit-token", "logits.npy")) < TOL_FLAX


@pytest.mark.parametrize("dtype,torch_dtype,tol", [("f16", torch.float16, 1e-3), ("bf16", torch.bfloat16, 1e-2)])
def test_dtype_rounds_the_f32_weights(tmp_path, dtype, torch_dtype, tol):
    ref = read_weights(convert(tmp_path, "vit-token", "timm", "f32.pt")[0])
    low = read_weights(convert(tmp_path, "vit-token", "timm", f"{dtype}.safetensors", "--dtype", dtype)[0])
    assert ref.keys() == low.keys()
    for k, v in ref.items():
        assert low[k].dtype == torch_dtype, k
        assert torch.equal(low[k], v.to(torch_dtype)), k


@pytest.mark.parametrize("ext", EXTS)
def test_resize_vit_jax_matches_vit_jax_load_pretrained(tmp_path, ext):
    out, stdout = convert(tmp_path, "vit-token", "timm", f"r{ext}", "--image-size", "96", "--resize", "vit-jax")
    assert "resized" in stdout
    sd = read_weights(out)
    want = golden("vit-token", "resized_96_pos_embedding.npy")
    assert max_diff(sd["pos_embed"].numpy().reshape(want.shape), want) < 1e-6
    model, meta = timm_model(out)
    assert json.loads(meta["vitconv.timm_kwargs"])["img_size"] == 96
    logits = model(nchw(golden("vit-token", "resized_96_input.npy"))).numpy()
    d = max_diff(logits, golden("vit-token", "resized_96_logits.npy"))
    assert d < TOL_FLAX, d


def test_resize_bilinear_matches_timm_resample(tmp_path):
    from timm.layers import resample_abs_pos_embed

    out, _ = convert(tmp_path, "vit-token", "timm", "b.pt", "--image-size", "96", "--resize", "bilinear")
    src = torch.from_numpy(np.load(source("vit-token"))["Transformer/posembed_input/pos_embedding"])
    want = resample_abs_pos_embed(src, new_size=[6, 6], num_prefix_tokens=1, interpolation="bilinear", antialias=False)
    assert max_diff(read_weights(out)["pos_embed"], want) < 1e-6


def test_resize_bicubic_matches_torch(tmp_path):
    from timm.layers import resample_abs_pos_embed

    out, _ = convert(tmp_path, "vit-token", "timm", "c.pt", "--image-size", "96", "--resize", "bicubic")
    src = torch.from_numpy(np.load(source("vit-token"))["Transformer/posembed_input/pos_embedding"])
    want = resample_abs_pos_embed(src, new_size=[6, 6], num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    assert max_diff(read_weights(out)["pos_embed"], want) < 1e-5


# ---------------------------------------------------------------- transformers

HF_CASES = ["vit-token", "vit-mlp4"] + VARIANTS


@pytest.mark.parametrize("case", HF_CASES)
def test_transformers_from_pretrained_matches_flax_logits(tmp_path, case):
    from transformers import ViTForImageClassification

    out, _ = convert(tmp_path, case, "hf", "hf")
    for name in ["config.json", "model.safetensors", "preprocessor_config.json"]:
        assert (out / name).is_file(), name
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [0.5] * 3 and pre["image_std"] == [0.5] * 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["hidden_act"] == "gelu_pytorch_tanh"
    model = ViTForImageClassification.from_pretrained(str(out)).eval()
    # from_pretrained tolerates missing keys; strict loading of the file proves there are none.
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    logits = model(pixel_values=nchw(golden(case, "input.npy"))).logits.numpy()
    d = max_diff(logits, golden_logits(case))
    assert d < TOL_FLAX, f"{case}: {d}"


def test_transformers_prelogits_become_the_pooler(tmp_path):
    from transformers import ViTModel

    out, _ = convert(tmp_path, "vit-prelogits", "hf", "hf", "--drop-head")
    model = ViTModel.from_pretrained(str(out)).eval()
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    pooled = model(pixel_values=nchw(golden("vit-prelogits", "input.npy"))).pooler_output.numpy()
    # features.npy holds the pre_logits dense output before its tanh (head(tanh(features)) gives logits.npy).
    assert max_diff(pooled, np.tanh(golden("vit-prelogits", "features.npy"))) < TOL_FLAX


# ---------------------------------------------------------------- open_clip

OPEN_CLIP_CASES = ["vit-token", "vit-mlp4"] + VARIANTS


def open_clip_visual(out):
    from open_clip.model import _build_vision_tower

    cfg = json.loads(out.with_name(out.stem + ".open_clip.json").read_text())
    meta = read_metadata(out)
    assert json.loads(meta["vitconv.open_clip_config"]) == cfg
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()
    sd = read_weights(out)
    assert all(k.startswith("visual.") for k in sd)
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in sd.items()}, strict=True)
    return visual, json.loads(meta["vitconv.config"])


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("case", OPEN_CLIP_CASES)
def test_open_clip_proj_gives_logits_minus_head_bias(tmp_path, case, ext):
    out, stdout = convert(tmp_path, case, "open_clip", f"oc{ext}")
    assert "input normalisation: clip" in stdout and "head bias" in stdout
    visual, cfg = open_clip_visual(out)
    assert cfg["input_norm"]["name"] == "clip" and cfg["head"] == "proj"
    pooled = visual(renormalise(golden(case, "input.npy"), cfg)).numpy()
    want = golden_logits(case) - np.asarray(cfg["head_bias"], np.float32)
    d = max_diff(pooled, want)
    assert d < TOL_FLAX, f"{case}: {d}"


def test_open_clip_proj_none_gives_features(tmp_path):
    out, _ = convert(tmp_path, "vit-prelogits", "open_clip", "f.pt", "--proj", "none", "--input-norm", "unit")
    visual, cfg = open_clip_visual(out)
    pooled = visual(renormalise(golden("vit-prelogits", "input.npy"), cfg)).numpy()
    assert max_diff(pooled, golden("vit-prelogits", "tokens.npy")[:, 0]) < TOL_FLAX


# ---------------------------------------------------------------- OpenAI CLIP


@pytest.mark.parametrize("ext", EXTS)
def test_openai_clip_loads_strictly_and_reports_drift(tmp_path, ext):
    from clip.model import VisionTransformer

    out, stdout = convert(tmp_path, "vit-mlp4", "clip", f"c{ext}")
    meta = read_metadata(out)
    assert meta["vitconv.exact"] == "false" and "NOT EXACT" in meta["vitconv.notes"]
    kwargs = json.loads(meta["vitconv.clip_kwargs"])
    visual = VisionTransformer(**kwargs).eval()
    sd = read_weights(out)
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in sd.items()}, strict=True)
    cfg = json.loads(meta["vitconv.config"])
    pooled = visual(renormalise(golden("vit-mlp4", "input.npy"), cfg)).numpy()
    want = golden("vit-mlp4", "logits.npy") - np.asarray(cfg["head_bias"], np.float32)
    print(f"OpenAI CLIP drift on vit-mlp4 ({ext}): max |pooled - (logits - bias)| = {max_diff(pooled, want):.4g}")
    assert np.all(np.isfinite(pooled))


# ---------------------------------------------------------------- the printed Python


@pytest.mark.parametrize("case,layout,name", [
    ("vit-token", "timm", "p.pt"),
    ("hybrid-root", "timm", "p.safetensors"),
    ("vit-gap", "timm", "p.pt"),
    ("vit-token", "hf", "p-hf"),
    ("vit-token", "open_clip", "p.safetensors"),
    ("vit-mlp4", "clip", "p.pt"),
])
def test_printed_python_builds_and_loads_the_model(tmp_path, case, layout, name):
    out = tmp_path / name
    cmd = [str(BINARY), "npz-to-pt", str(source(case)), str(out), "--layout", layout]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("python:\n", 1)[1].splitlines()
    code = "\n".join(line[2:] for line in lines if line.startswith("  "))
    scope = {}
    exec(compile(code, f"<printed by vitconv for {case} -> {layout}>", "exec"), scope)
    model = scope.get("model", scope.get("visual"))
    assert isinstance(model, torch.nn.Module), code
    x = golden(case, "input.npy")
    cfg = json.loads(read_metadata(out / "model.safetensors" if layout == "hf" else out)["vitconv.config"])
    y = model.eval()(renormalise(x, cfg))
    y = getattr(y, "logits", y)
    assert y.shape[0] == x.shape[0]


@pytest.mark.parametrize("layout,name", [("timm", "m.pt"), ("timm", "m.safetensors"), ("hf", "hf"),
                                         ("open_clip", "o.safetensors")])
def test_printed_python_quotes_hostile_paths(tmp_path, layout, name):
    """A path with spaces, both quotes, a backslash and non-ASCII letters still prints Python that runs."""
    odd = tmp_path / "it's a \"Zürich\" dir \\ ü"
    odd.mkdir()
    out = odd / name
    cmd = [str(BINARY), "npz-to-pt", str(source("vit-token")), str(out), "--layout", layout]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split("python:\n", 1)[1].splitlines()
    code = "\n".join(line[2:] for line in lines if line.startswith("  "))
    scope = {}
    exec(compile(code, f"<printed by vitconv for {layout}>", "exec"), scope)
    model = scope.get("model", scope.get("visual"))
    assert isinstance(model, torch.nn.Module), code


# ---------------------------------------------------------------- --gelu erf everywhere it can be declared


@pytest.mark.parametrize("case", ["vit-token", "vit-mlp4"])
def test_erf_gelu_in_transformers_and_open_clip_matches_timm_golden(tmp_path, case):
    """With the loaders' usual exact GELU both libraries must give what timm's own npz loader gives."""
    from transformers import ViTForImageClassification

    x = golden(case, "input.npy")
    want = golden(case, "timm_logits.npy")
    out, _ = convert(tmp_path, case, "hf", "hf", "--gelu", "erf")
    assert json.loads((out / "config.json").read_text())["hidden_act"] == "gelu"
    model = ViTForImageClassification.from_pretrained(str(out)).eval()
    d = max_diff(model(pixel_values=nchw(x)).logits.numpy(), want)
    assert d < TOL_SAME, f"hf: {d}"
    out, _ = convert(tmp_path, case, "open_clip", "oc.pt", "--gelu", "erf", "--input-norm", "unit")
    visual, cfg = open_clip_visual(out)
    assert cfg["gelu"] == "erf"
    d = max_diff(visual(renormalise(x, cfg)).numpy(), want - np.asarray(cfg["head_bias"], np.float32))
    assert d < TOL_SAME, f"open_clip: {d}"


def test_bfloat16_source_to_bfloat16_output_is_bit_exact(tmp_path):
    out, _ = convert(tmp_path, "bfloat16", "timm", "b.safetensors", "--dtype", "bf16")
    sd = read_weights(out)
    src = np.load(source("bfloat16"))
    # numpy stores JAX bfloat16 as 2-byte voids; their bits are the top half of the f32 value.
    raw = src["Transformer/encoder_norm/scale"].view(np.uint16)
    assert np.array_equal(sd["norm.weight"].view(torch.int16).numpy().view(np.uint16), raw)
    kernel = src["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].view(np.uint16)
    assert np.array_equal(sd["blocks.0.mlp.fc1.weight"].view(torch.int16).numpy().view(np.uint16), kernel.T)


def test_linen_block_names_convert_like_the_published_ones(tmp_path):
    """Files written by the linen port name the block modules differently; the result must not change."""
    src = np.load(source("vit-token"))
    renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
               "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}

    def rename(key):
        for old, new in renames.items():
            key = key.replace(old, new)
        return key

    linen = tmp_path / "linen.npz"
    np.savez(linen, **{rename(k): src[k] for k in src.files})
    out = tmp_path / "linen.pt"
    run = subprocess.run([str(BINARY), "npz-to-pt", str(linen), str(out), "--layout", "timm", "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model, meta = timm_model(out)
    logits = model(nchw(golden("vit-token", "input.npy"))).numpy()
    assert max_diff(logits, golden("vit-token", "logits.npy")) < TOL_FLAX
