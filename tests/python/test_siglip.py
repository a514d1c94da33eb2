"""Real clients load the SigLIP two-tower models `vitconv npz-to-pt` writes from big_vision checkpoints.

Both golden SigLIP cases (fixtures/big_vision/siglip-tiny with a head on both towers, siglip-nohead as
published: no image head) and the bf16 variant go through every target that accepts them:
open_clip's `create_model_and_transforms('local-dir:OUT')`, transformers' `SiglipModel.from_pretrained(OUT)`
and timm's image tower alone (`--tower image`). Image embeddings, text embeddings and logits_per_image are
compared with big_vision's own outputs. The tokenizer files are checked by tokenising a sentence with the
real processors, against a SentencePiece model trained here. Refusals are checked for the option they name.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

from test_big_vision import BV, TOL, TOL_BF16, convert, golden, refused, run_convert, source

torch.set_grad_enabled(False)

CASES = ["siglip-tiny", "siglip-nohead"]


def images(case):
    # Golden images are NHWC in [-1, 1], which is what the unit input normalisation (mean = std = 0.5 on
    # [0, 1] pixels) hands the model.
    return torch.from_numpy(golden(case, "input.npy")).permute(0, 3, 1, 2).contiguous().float()


def text_ids(case):
    return torch.from_numpy(golden(case, "text.npy").astype(np.int64))


def l2(x):
    return x / x.norm(dim=-1, keepdim=True)


def check(case, image_embeds, text_embeds, logits, tol):
    for name, got in [("image_embeds", image_embeds), ("text_embeds", text_embeds), ("logits_per_image", logits)]:
        want = golden(case, name + ".npy")
        diff = np.abs(got.float().numpy() - want).max()
        assert diff < tol, f"{case} {name}: max |diff| = {diff:.3g}"


def open_clip_model(out):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    return model.eval(), preprocess


@pytest.mark.parametrize("case", CASES)
def test_open_clip_folder_matches_big_vision(tmp_path, case):
    out, report = convert(tmp_path, case, "open_clip", "oc")
    assert "image_tower/config.json" in report
    cfg = json.loads((out / "open_clip_config.json").read_text())
    text = cfg["model_cfg"]["text_cfg"]
    assert text["no_causal_mask"] is True and text["pool_type"] == "last"
    assert text["norm_kwargs"] == {"eps": 1e-6} and text["act_kwargs"] == {"approximate": "tanh"}
    assert cfg["model_cfg"]["vision_cfg"]["timm_proj"] == ("" if case == "siglip-tiny" else "none")
    assert cfg["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    model, _ = open_clip_model(out)
    img = model.encode_image(images(case), normalize=True)
    txt = model.encode_text(text_ids(case), normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
    check(case, img, txt, logits, TOL)
    # The scalars are the checkpoint's, 0-dim as open_clip declares them.
    z = np.load(source(case))
    assert model.logit_scale.shape == () and float(model.logit_scale) == float(z["params/t"][0])
    assert float(model.logit_bias) == float(z["params/b"][0])


def test_open_clip_bf16_variant(tmp_path):
    out, _ = convert(tmp_path, "siglip-tiny", "open_clip", "oc", variant="bfloat16")
    model, _ = open_clip_model(out)
    img = model.encode_image(images("siglip-tiny"), normalize=True)
    txt = model.encode_text(text_ids("siglip-tiny"), normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
    check("siglip-tiny", img, txt, logits, TOL_BF16)


def test_open_clip_without_tokenizer_fails_loudly(tmp_path):
    import open_clip

    out, report = convert(tmp_path, "siglip-nohead", "open_clip", "oc")
    assert "--tokenizer" in report
    # Never CLIP's BPE tokenizer in silence: without tokenizer files, asking for one is an error.
    with pytest.raises(Exception):
        open_clip.get_tokenizer(f"local-dir:{out}")


@pytest.mark.parametrize("variant", [None, "bfloat16"])
def test_hf_siglip_model_matches_big_vision(tmp_path, variant):
    from transformers import SiglipModel

    case = "siglip-nohead"
    if variant:
        # siglip-nohead has no bf16 variant: write the f32 model as bf16 instead, the same rounding.
        out, _ = convert(tmp_path, case, "hf", "hf", "--dtype", "bf16")
    else:
        out, _ = convert(tmp_path, case, "hf", "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["SiglipModel"]
    assert cfg["text_config"]["max_position_embeddings"] == 8
    assert cfg["text_config"]["vocab_size"] == 100
    assert cfg["text_config"]["layer_norm_eps"] == 1e-6
    assert cfg["text_config"]["hidden_act"] == "gelu_pytorch_tanh"
    model = SiglipModel.from_pretrained(out, torch_dtype=torch.float32).eval()
    res = model(input_ids=text_ids(case), pixel_values=images(case))
    check(case, res.image_embeds, res.text_embeds, res.logits_per_image, TOL_BF16 if variant else TOL)


def test_hf_refuses_an_image_head(tmp_path):
    err = refused(tmp_path, "siglip-tiny", "hf")
    assert "open_clip" in err and "image" in err


@pytest.mark.parametrize("case", CASES)
def test_timm_image_tower(tmp_path, case):
    import timm

    err = refused(tmp_path, case, "timm")
    assert "--tower image" in err
    out, report = convert(tmp_path, case, "timm", "tower", "--tower", "image")
    assert "left out (--tower image)" in report
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    img = l2(model(images(case)))
    diff = np.abs(img.numpy() - golden(case, "image_embeds.npy")).max()
    assert diff < TOL, f"{case} timm image tower: {diff:.3g}"


def train_spiece(tmp_path, vocab):
    """A small SentencePiece model with SigLIP's special pieces: <pad> 0, </s> 1, <unk> 2."""
    import sentencepiece as spm

    tmp_path = tmp_path / f"spiece-{vocab}"
    tmp_path.mkdir()
    corpus = tmp_path / "corpus.txt"
    words = ["a photo of a cat", "a photo of a dog", "two dogs on the grass", "the cat sleeps",
             "a red car", "a blue sky", "an orange on a table", "the dog runs", "a small bird"]
    # Enough distinct words for a vocabulary past the text tower's 100 ids.
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words += [" ".join("".join(rng.choice(letters, 5)) for _ in range(6)) for _ in range(200)]
    corpus.write_text("\n".join(words * 5) + "\n")
    prefix = tmp_path / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    return pathlib.Path(f"{prefix}.model"), spm.SentencePieceProcessor(model_file=f"{prefix}.model")


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_tokenizer_files_work_offline(tmp_path, layout):
    model_file, sp = train_spiece(tmp_path, 60)
    out, report = convert(tmp_path, "siglip-nohead", layout, "out", "--tokenizer", str(model_file))
    assert (out / "spiece.model").read_bytes() == model_file.read_bytes()
    assert "</s> = id 1" in report
    sentence = "a cat"
    # SigLIP's sequences: the pieces, </s>, then </s> padding to the context (8).
    assert len(sp.encode(sentence)) < 7
    want = (sp.encode(sentence) + [1] * 8)[:8]
    if layout == "hf":
        from transformers import SiglipModel, SiglipProcessor

        processor = SiglipProcessor.from_pretrained(out)
        ids = processor(text=[sentence], padding="max_length", return_tensors="pt")["input_ids"]
        assert ids.tolist() == [want], (ids.tolist(), want)
        assert processor.tokenizer.model_max_length == 8
        model = SiglipModel.from_pretrained(out).eval()
        model(input_ids=ids, pixel_values=images("siglip-nohead"))
    else:
        import open_clip

        tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
        assert type(tokenizer).__name__ == "HFTokenizer"
        ids = tokenizer([sentence])
        assert ids.tolist() == [want], (ids.tolist(), want)


def test_tokenizer_refusals(tmp_path):
    model_file, _ = train_spiece(tmp_path, 60)
    big, big_sp = train_spiece(tmp_path, 150)
    assert big_sp.get_piece_size() > 100
    # More pieces than the text tower's 100 embeddings: another model's tokenizer.
    err = refused(tmp_path, "siglip-nohead", "hf", "--tokenizer", str(big))
    assert "100" in err and "pieces" in err
    # A file that is not a SentencePiece model.
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"model": {}}')
    err = refused(tmp_path, "siglip-nohead", "open_clip", "--tokenizer", str(bogus))
    assert "not a SentencePiece model" in err
    # No text tower to tokenise for.
    run = run_convert(source("siglip-nohead"), tmp_path / "img", "timm", "--tower", "image",
                      "--tokenizer", str(model_file))
    assert run.returncode == 2 and "--tokenizer" in run.stderr


def write_b32_256_two_tower(path):
    """A random two-tower checkpoint whose image tower has the sizes of timm's registered, tanh-GELU
    vit_base_patch32_siglip_256 (SigLIP 2 B/32 at 256 px), with a small text tower, in big_vision's scan
    format. Kernels get std 1/sqrt(fan_in) so that activations stay of order one."""
    rng = np.random.default_rng(1)
    arrays = {}

    def put(key, *shape, fan_in=None):
        a = rng.standard_normal(shape, dtype=np.float32)
        if key.endswith("/scale"):
            a = 1.0 + 0.02 * a
        else:
            a *= np.float32(1.0 / np.sqrt(fan_in) if fan_in else 0.02)
        arrays[f"params/{key}"] = a

    def tower(prefix, enc, depth, d, heads, mlp):
        blk = f"{prefix}{enc}encoderblock/"
        for ln in ["LayerNorm_0", "LayerNorm_1"]:
            put(blk + ln + "/scale", depth, d)
            put(blk + ln + "/bias", depth, d)
        for p in ["query", "key", "value"]:
            put(f"{blk}MultiHeadDotProductAttention_0/{p}/kernel", depth, d, heads, d // heads, fan_in=d)
            put(f"{blk}MultiHeadDotProductAttention_0/{p}/bias", depth, heads, d // heads)
        put(f"{blk}MultiHeadDotProductAttention_0/out/kernel", depth, heads, d // heads, d, fan_in=d)
        put(f"{blk}MultiHeadDotProductAttention_0/out/bias", depth, d)
        put(f"{blk}MlpBlock_0/Dense_0/kernel", depth, d, mlp, fan_in=d)
        put(f"{blk}MlpBlock_0/Dense_0/bias", depth, mlp)
        put(f"{blk}MlpBlock_0/Dense_1/kernel", depth, mlp, d, fan_in=mlp)
        put(f"{blk}MlpBlock_0/Dense_1/bias", depth, d)
        put(f"{prefix}{enc}encoder_norm/scale", d)
        put(f"{prefix}{enc}encoder_norm/bias", d)

    d, mlp = 768, 3072
    put("img/embedding/kernel", 32, 32, 3, d, fan_in=32 * 32 * 3)
    put("img/embedding/bias", d)
    put("img/pos_embedding", 1, 64, d)
    tower("img/", "Transformer/", 12, d, 12, mlp)
    m = "img/MAPHead_0/"
    put(m + "probe", 1, 1, d)
    for p in ["query", "key", "value"]:
        put(f"{m}MultiHeadDotProductAttention_0/{p}/kernel", d, 12, 64, fan_in=d)
        put(f"{m}MultiHeadDotProductAttention_0/{p}/bias", 12, 64)
    put(f"{m}MultiHeadDotProductAttention_0/out/kernel", 12, 64, d, fan_in=d)
    put(f"{m}MultiHeadDotProductAttention_0/out/bias", d)
    put(m + "LayerNorm_0/scale", d)
    put(m + "LayerNorm_0/bias", d)
    put(m + "MlpBlock_0/Dense_0/kernel", d, mlp, fan_in=d)
    put(m + "MlpBlock_0/Dense_0/bias", mlp)
    put(m + "MlpBlock_0/Dense_1/kernel", mlp, d, fan_in=mlp)
    put(m + "MlpBlock_0/Dense_1/bias", d)
    put("txt/Embed_0/embedding", 100, 64)
    put("txt/pos_embedding", 1, 8, 64)
    tower("txt/", "Encoder_0/", 1, 64, 4, 128)
    put("txt/head/kernel", 64, d, fan_in=64)
    put("txt/head/bias", d)
    put("t", 1)
    put("b", 1)
    np.savez(path, **arrays)


def test_open_clip_names_a_registered_tanh_tower_and_the_folder_moves(tmp_path):
    """An image tower of the exact sizes of a registered tanh-GELU timm tower (SigLIP 2 B/32-256) is named by
    that name: the folder loads after it is moved, and the registered model is the one the recorded kwargs
    describe, giving the same features."""
    import shutil

    import open_clip
    import timm
    from safetensors import safe_open
    from timm.models.vision_transformer import VisionTransformer

    src = tmp_path / "b32.npz"
    write_b32_256_two_tower(src)
    out, report = convert(tmp_path, None, "open_clip", "oc", source_path=src)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["timm_model_name"] == "vit_base_patch32_siglip_256"
    assert not (out / "image_tower").exists() and "vitconv" not in cfg
    assert "the folder can be moved" in report
    moved = tmp_path / "elsewhere" / "oc"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    model, _ = open_clip_model(moved)
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32))
    got = model.encode_image(x)
    # The tower the recorded kwargs describe (what image_tower/config.json would hold), with the same weights.
    with safe_open(moved / "open_clip_model.safetensors", "pt") as f:
        kwargs = json.loads(f.metadata()["vitconv.timm_kwargs"])
        trunk = {k.removeprefix("visual.trunk."): f.get_tensor(k) for k in f.keys() if k.startswith("visual.trunk.")}
    assert kwargs["act_layer"] == "gelu_tanh"
    ref = VisionTransformer(**{**kwargs, "num_classes": 0}).eval()
    ref.load_state_dict(trunk)
    want = ref(x)
    assert got.shape == want.shape == (2, 768)
    diff = (got - want).abs().max().item()
    assert diff < 1e-6, diff
    # And the registered tower is built with the tanh GELU (open_clip's own SigLIP 1 entries are erf).
    assert type(model.visual.trunk.blocks[0].mlp.act).__name__ == "GELUTanh"
    del timm
    # vitconv verify runs the moved folder against the source, both towers.
    import subprocess

    from test_loaders import BINARY

    run = subprocess.run([str(BINARY), "verify", str(src), str(moved), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["pass"] is True
    assert report["two_tower"]["logits_per_image"]["max_abs_diff"] < 1e-4, report["two_tower"]


def test_open_clip_holds_a_text_tower_without_a_head(tmp_path):
    """A text tower without `txt/head` is open_clip's `proj_type='none'`: its text features are the pooled
    last position after the final LayerNorm, which transformers' SiglipTextTransformer computes before its
    head (compared on the conversion of the same weights with the head)."""
    import open_clip
    from transformers import SiglipModel

    with np.load(source("siglip-nohead")) as src:
        headless = {k: src[k] for k in src.files if "/txt/head/" not in k}
    assert len(headless) == len(src.files) - 2
    path = tmp_path / "txt-no-head.npz"
    np.savez(path, **headless)
    out, _ = convert(tmp_path, None, "open_clip", "oc", source_path=path)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["proj_type"] == "none"
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    got = model.eval().encode_text(text_ids("siglip-nohead"))
    hf, _ = convert(tmp_path, "siglip-nohead", "hf", "hf")
    text = SiglipModel.from_pretrained(hf).eval().text_model
    want = text(input_ids=text_ids("siglip-nohead")).last_hidden_state[:, -1]
    assert (got - want).abs().max().item() < TOL
