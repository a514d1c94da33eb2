"""Builds SigLIP 2 NaFlex conversions from the golden siglip2-naflex-tiny .npz with the real libraries, for the verify crate's NaFlex target tests.

Test-only: the verify crate's unit tests run this (through the venv of scripts/with-libtorch)
while vitconv's converter does not write NaFlex yet (once it does, the tests should convert
with `vitconv npz-to-pt` instead), so that the Rust NaFlex targets are held against files that
transformers and timm themselves load. Each output is checked here first: the library's own
forward on the golden patches must give the golden outputs within 1e-5, so a mismatch in Rust
is the Rust target's, not this helper's.

    python naflex_targets.py CASE_DIR OUT hf|timm|timm-folder

`hf` writes a transformers `Siglip2Model` folder (config.json, model.safetensors,
preprocessor_config.json); `timm` one safetensors file with the metadata vitconv writes
(`vitconv.layout`, `vitconv.config`, `vitconv.timm_kwargs`); `timm-folder` a timm folder
(`config.json` with `model_args`, `model.safetensors`). The mapping is written here from the
golden README's semantics (plain renames and transposes), independently of vitconv's converter.
"""

import json
import os
import sys

import numpy as np
import torch

TOL = 1e-5


def load(case):
    z = np.load(os.path.join(case, "checkpoint.npz"))
    root = "params/" if any(k.startswith("params/") for k in z.files) else ""
    return {k[len(root):]: np.asarray(z[k], dtype=np.float32) for k in z.files if k.startswith(root)}


def tower(p, enc):
    """The blocks of one tower, stacked (`encoderblock/`) or unrolled (`encoderblock_{i}/`), as
    PyTorch-layout [out, in] tensors, block by block."""
    stacked = f"{enc}/encoderblock/LayerNorm_0/scale" in p
    depth = p[f"{enc}/encoderblock/LayerNorm_0/scale"].shape[0] if stacked else \
        sum(1 for k in p if k.startswith(f"{enc}/encoderblock_") and k.endswith("LayerNorm_0/scale"))
    blocks = []
    for i in range(depth):
        g = (lambda rel: p[f"{enc}/encoderblock/{rel}"][i]) if stacked else \
            (lambda rel: p[f"{enc}/encoderblock_{i}/{rel}"])
        att = "MultiHeadDotProductAttention_0"
        d = g("LayerNorm_0/scale").shape[0]
        qkv = {w: (g(f"{att}/{w}/kernel").reshape(d, -1).T, g(f"{att}/{w}/bias").reshape(-1))
               for w in ("query", "key", "value")}
        blocks.append(dict(
            ln1=(g("LayerNorm_0/scale"), g("LayerNorm_0/bias")),
            q=qkv["query"], k=qkv["key"], v=qkv["value"],
            out=(g(f"{att}/out/kernel").reshape(-1, d).T, g(f"{att}/out/bias")),
            ln2=(g("LayerNorm_1/scale"), g("LayerNorm_1/bias")),
            fc1=(g("MlpBlock_0/Dense_0/kernel").T, g("MlpBlock_0/Dense_0/bias")),
            fc2=(g("MlpBlock_0/Dense_1/kernel").T, g("MlpBlock_0/Dense_1/bias")),
        ))
    return blocks


def map_head(p):
    m = "img/MAPHead_0"
    att = f"{m}/MultiHeadDotProductAttention_0"
    d = p[f"{m}/probe"].shape[-1]
    q, k, v = ((p[f"{att}/{w}/kernel"].reshape(d, -1).T, p[f"{att}/{w}/bias"].reshape(-1))
               for w in ("query", "key", "value"))
    return dict(
        probe=p[f"{m}/probe"], heads=p[f"{att}/query/kernel"].shape[1],
        in_w=np.concatenate([q[0], k[0], v[0]]), in_b=np.concatenate([q[1], k[1], v[1]]),
        out=(p[f"{att}/out/kernel"].reshape(-1, d).T, p[f"{att}/out/bias"]),
        ln=(p[f"{m}/LayerNorm_0/scale"], p[f"{m}/LayerNorm_0/bias"]),
        fc1=(p[f"{m}/MlpBlock_0/Dense_0/kernel"].T, p[f"{m}/MlpBlock_0/Dense_0/bias"]),
        fc2=(p[f"{m}/MlpBlock_0/Dense_1/kernel"].T, p[f"{m}/MlpBlock_0/Dense_1/bias"]),
    )


def sizes(p):
    rows, d = p["img/embedding/kernel"].shape
    patch = int(round((rows // 3) ** 0.5))
    grid = p["img/pos_embedding"].shape[0]
    img = tower(p, "img/Transformer")
    txt = tower(p, "txt/Encoder_0")
    vocab, dt = p["txt/Embed_0/embedding"].shape
    return dict(
        patch=patch, d=d, grid=grid, depth=len(img), heads=map_head(p)["heads"],
        mlp=img[0]["fc1"][0].shape[0], vocab=vocab, dt=dt, ctx=p["txt/pos_embedding"].shape[1],
        tdepth=len(txt), theads=p["txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape[1]
        if "txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in p
        else p["txt/Encoder_0/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape[2],
        tmlp=txt[0]["fc1"][0].shape[0], embed=p["txt/head/kernel"].shape[1],
    )


def golden(case):
    g = lambda n: np.load(os.path.join(case, n))
    return dict(
        patches=torch.from_numpy(g("patches.npy")),
        mask=torch.from_numpy(g("mask.npy").astype(np.int64)),
        yidx=torch.from_numpy(g("yidx.npy").astype(np.int64)),
        xidx=torch.from_numpy(g("xidx.npy").astype(np.int64)),
        spatial=torch.from_numpy(g("spatial_shapes.npy").astype(np.int64)),
        ids=torch.from_numpy(g("text.npy").astype(np.int64)),
        image_embeds=g("image_embeds.npy"), text_embeds=g("text_embeds.npy"),
        logits=g("logits_per_image.npy"),
    )


def check(name, got, want):
    diff = float(np.abs(got.detach().numpy() - want).max())
    print(f"{name}: library vs golden max abs diff {diff:.3e}")
    assert diff <= TOL, f"{name} differs by {diff}"


def vitconv_config(s, two_tower):
    """The whole `vitconv.config` record (version 1, crates/convert/src/record.rs) the converter writes for a
    NaFlex file: hf's two-tower Siglip2Model declares its MAP output and text tower, timm's image tower no head."""
    text = None
    if two_tower:
        text = {"vocab": s["vocab"], "context": s["ctx"], "width": s["dt"], "depth": s["tdepth"],
                "heads": s["theads"], "mlp": s["tmlp"], "embed": s["embed"], "pool": "last", "causal": False,
                "layer_norm_eps": 1e-6, "gelu": "tanh", "logit_bias": True, "tokenizer": None}
    return {"version": 1, "image_size": None, "patch_size": s["patch"], "hidden": s["d"], "depth": s["depth"],
            "heads": s["heads"], "mlp": s["mlp"], "classifier": "map", "num_classes": None,
            "representation": None, "gelu": "tanh", "layer_norm_eps": 1e-6, "ln_pre": False,
            "input_norm": {"name": "unit", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "resize": None,
            "posemb": "learned_grid", "class_pos": False, "source_family": "siglip2_naflex", "resnet": None,
            "head": "map" if two_tower else "none", "head_bias": None, "dtype": "f32", "patch_embed": "linear",
            "pos_grid": [s["grid"], s["grid"]], "pos_resize": "bilinear_antialias", "text": text}


def hf(case, out):
    from safetensors.torch import load_file, save_file
    from transformers import Siglip2Config, Siglip2Model

    p = load(case)
    s = sizes(p)
    cfg = Siglip2Config(
        text_config=dict(vocab_size=s["vocab"], hidden_size=s["dt"], intermediate_size=s["tmlp"],
                         num_hidden_layers=s["tdepth"], num_attention_heads=s["theads"],
                         max_position_embeddings=s["ctx"], hidden_act="gelu_pytorch_tanh",
                         layer_norm_eps=1e-6, projection_size=s["embed"],
                         pad_token_id=0, bos_token_id=None, eos_token_id=1),
        vision_config=dict(hidden_size=s["d"], intermediate_size=s["mlp"], num_hidden_layers=s["depth"],
                           num_attention_heads=s["heads"], num_patches=s["grid"] ** 2, patch_size=s["patch"],
                           hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True),
    )
    model = Siglip2Model(cfg).eval()
    sd = {}

    def put(name, a):
        sd[name] = torch.from_numpy(np.ascontiguousarray(a))

    def blocks(pre, bs):
        for i, b in enumerate(bs):
            L = f"{pre}encoder.layers.{i}."
            for ours, theirs in (("ln1", "layer_norm1"), ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"),
                                 ("v", "self_attn.v_proj"), ("out", "self_attn.out_proj"), ("ln2", "layer_norm2"),
                                 ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
                put(L + theirs + ".weight", b[ours][0])
                put(L + theirs + ".bias", b[ours][1])

    v = "vision_model."
    put(v + "embeddings.patch_embedding.weight", p["img/embedding/kernel"].T)
    put(v + "embeddings.patch_embedding.bias", p["img/embedding/bias"])
    put(v + "embeddings.position_embedding.weight", p["img/pos_embedding"].reshape(-1, s["d"]))
    blocks(v, tower(p, "img/Transformer"))
    put(v + "post_layernorm.weight", p["img/Transformer/encoder_norm/scale"])
    put(v + "post_layernorm.bias", p["img/Transformer/encoder_norm/bias"])
    m = map_head(p)
    put(v + "head.probe", m["probe"])
    put(v + "head.attention.in_proj_weight", m["in_w"])
    put(v + "head.attention.in_proj_bias", m["in_b"])
    for ours, theirs in (("out", "attention.out_proj"), ("ln", "layernorm"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
        put(v + f"head.{theirs}.weight", m[ours][0])
        put(v + f"head.{theirs}.bias", m[ours][1])
    t = "text_model."
    put(t + "embeddings.token_embedding.weight", p["txt/Embed_0/embedding"])
    put(t + "embeddings.position_embedding.weight", p["txt/pos_embedding"][0])
    blocks(t, tower(p, "txt/Encoder_0"))
    put(t + "final_layer_norm.weight", p["txt/Encoder_0/encoder_norm/scale"])
    put(t + "final_layer_norm.bias", p["txt/Encoder_0/encoder_norm/bias"])
    put(t + "head.weight", p["txt/head/kernel"].T)
    put(t + "head.bias", p["txt/head/bias"])
    put("logit_scale", p["t"].reshape(1))
    put("logit_bias", p["b"].reshape(1))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    model.save_pretrained(out)
    # The weights again with the metadata vitconv records beside transformers' own.
    weights = os.path.join(out, "model.safetensors")
    save_file(load_file(weights), weights, metadata={
        "format": "pt", "vitconv.layout": "hf", "vitconv.hf_architecture": "Siglip2Model",
        "vitconv.config": json.dumps(vitconv_config(s, True))})
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "Siglip2ImageProcessor", "do_normalize": True,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                   "patch_size": s["patch"]}, f)
    model = Siglip2Model.from_pretrained(out).eval()
    g = golden(case)
    with torch.no_grad():
        o = model(input_ids=g["ids"], pixel_values=g["patches"], pixel_attention_mask=g["mask"],
                  spatial_shapes=g["spatial"])
    check("hf image_embeds", o.image_embeds, g["image_embeds"])
    check("hf text_embeds", o.text_embeds, g["text_embeds"])
    check("hf logits_per_image", o.logits_per_image, g["logits"])


def timm_model_args(s):
    return dict(patch_size=s["patch"], embed_dim=s["d"], depth=s["depth"], num_heads=s["heads"],
                mlp_ratio=s["mlp"] / s["d"], pos_embed_grid_size=[s["grid"], s["grid"]],
                pos_embed_interp_mode="bilinear", global_pool="map", act_layer="gelu_tanh",
                num_classes=0, class_token=False)


def timm_state(p, s):
    sd = {}

    def put(name, a):
        sd[name] = torch.from_numpy(np.ascontiguousarray(a))

    put("embeds.proj.weight", p["img/embedding/kernel"].T)
    put("embeds.proj.bias", p["img/embedding/bias"])
    put("embeds.pos_embed", p["img/pos_embedding"][None])
    for i, b in enumerate(tower(p, "img/Transformer")):
        B = f"blocks.{i}."
        put(B + "norm1.weight", b["ln1"][0]); put(B + "norm1.bias", b["ln1"][1])
        put(B + "attn.qkv.weight", np.concatenate([b["q"][0], b["k"][0], b["v"][0]]))
        put(B + "attn.qkv.bias", np.concatenate([b["q"][1], b["k"][1], b["v"][1]]))
        put(B + "attn.proj.weight", b["out"][0]); put(B + "attn.proj.bias", b["out"][1])
        put(B + "norm2.weight", b["ln2"][0]); put(B + "norm2.bias", b["ln2"][1])
        for n in ("fc1", "fc2"):
            put(B + f"mlp.{n}.weight", b[n][0]); put(B + f"mlp.{n}.bias", b[n][1])
    put("norm.weight", p["img/Transformer/encoder_norm/scale"])
    put("norm.bias", p["img/Transformer/encoder_norm/bias"])
    m = map_head(p)
    d = s["d"]
    put("attn_pool.latent", m["probe"])
    put("attn_pool.q.weight", m["in_w"][:d]); put("attn_pool.q.bias", m["in_b"][:d])
    put("attn_pool.kv.weight", m["in_w"][d:]); put("attn_pool.kv.bias", m["in_b"][d:])
    for ours, theirs in (("out", "proj"), ("ln", "norm"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
        put(f"attn_pool.{theirs}.weight", m[ours][0]); put(f"attn_pool.{theirs}.bias", m[ours][1])
    return sd


def timm_check(case, model):
    g = golden(case)
    with torch.no_grad():
        z = model(g["patches"], patch_coord=torch.stack([g["yidx"], g["xidx"]], -1),
                  patch_valid=g["mask"].bool())
    check("timm image_embeds", torch.nn.functional.normalize(z, dim=-1), g["image_embeds"])


def timm_file(case, out):
    from safetensors.torch import save_file
    from timm.models.naflexvit import NaFlexVit

    p = load(case)
    s = sizes(p)
    kwargs = timm_model_args(s)
    sd = timm_state(p, s)
    model = NaFlexVit(**kwargs).eval()
    model.load_state_dict(sd, strict=True)
    save_file(sd, out, metadata={"vitconv.layout": "timm", "vitconv.timm_kwargs": json.dumps(kwargs),
                                 "vitconv.config": json.dumps(vitconv_config(s, True))})
    timm_check(case, model)


def timm_folder(case, out):
    from safetensors.torch import save_file
    import timm

    p = load(case)
    s = sizes(p)
    kwargs = timm_model_args(s)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"architecture": "naflexvit_base_patch16_siglip", "num_classes": 0, "num_features": s["d"],
                   "global_pool": "map", "model_args": kwargs,
                   "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 0}}, f, indent=2)
    save_file(timm_state(p, s), os.path.join(out, "model.safetensors"))
    model = timm.create_model("local-dir:" + os.path.abspath(out), pretrained=True).eval()
    timm_check(case, model)


if __name__ == "__main__":
    case, out, layout = sys.argv[1:4]
    torch.manual_seed(0)
    {"hf": hf, "timm": timm_file, "timm-folder": timm_folder}[layout](case, out)
