"""Builds two-tower (SigLIP) target folders from a big_vision golden .npz with the real libraries, for the verify crate's target tests.

Test-only: the verify crate's unit tests run this (through the venv of scripts/with-libtorch)
before the converter writes these layouts, so that the Rust target forwards are held against
folders that transformers and open_clip themselves wrote and load. Each folder is checked
here first: the library's own forward must give the golden outputs within 1e-5, so a
mismatch in Rust is the Rust target's, not this helper's.

    python siglip_targets.py CASE_DIR OUT_DIR hf|open_clip

CASE_DIR holds checkpoint.npz, input.npy, text.npy and the golden outputs. The mapping is
written here from the golden README's semantics, independently of vitconv's converter.
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


def tower(p, pre, enc):
    """The blocks of one tower as PyTorch-layout [out, in] tensors, block by block."""
    base = f"{pre}{enc}/encoderblock"
    depth = p[f"{base}/LayerNorm_0/scale"].shape[0]
    blocks = []
    for i in range(depth):
        g = lambda rel: p[f"{base}/{rel}"][i]
        att = "MultiHeadDotProductAttention_0"
        d = g("LayerNorm_0/scale").shape[0]
        qkv = {w: (g(f"{att}/{w}/kernel").reshape(d, -1).T, g(f"{att}/{w}/bias").reshape(-1)) for w in ("query", "key", "value")}
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
    q, k, v = ((p[f"{att}/{w}/kernel"].reshape(d, -1).T, p[f"{att}/{w}/bias"].reshape(-1)) for w in ("query", "key", "value"))
    return dict(
        probe=p[f"{m}/probe"],
        in_w=np.concatenate([q[0], k[0], v[0]]), in_b=np.concatenate([q[1], k[1], v[1]]),
        out=(p[f"{att}/out/kernel"].reshape(-1, d).T, p[f"{att}/out/bias"]),
        ln=(p[f"{m}/LayerNorm_0/scale"], p[f"{m}/LayerNorm_0/bias"]),
        fc1=(p[f"{m}/MlpBlock_0/Dense_0/kernel"].T, p[f"{m}/MlpBlock_0/Dense_0/bias"]),
        fc2=(p[f"{m}/MlpBlock_0/Dense_1/kernel"].T, p[f"{m}/MlpBlock_0/Dense_1/bias"]),
    )


def sizes(p):
    emb = p["img/embedding/kernel"]
    patch, _, _, d = emb.shape
    n = p["img/pos_embedding"].shape[1]
    grid = int(round(n ** 0.5))
    vocab, dt = p["txt/Embed_0/embedding"].shape
    return dict(
        patch=patch, d=d, grid=grid, image=grid * patch,
        depth=p["img/Transformer/encoderblock/LayerNorm_0/scale"].shape[0],
        heads=p["img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape[2],
        mlp=p["img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape[2],
        vocab=vocab, dt=dt, ctx=p["txt/pos_embedding"].shape[1],
        tdepth=p["txt/Encoder_0/encoderblock/LayerNorm_0/scale"].shape[0],
        theads=p["txt/Encoder_0/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape[2],
        tmlp=p["txt/Encoder_0/encoderblock/MlpBlock_0/Dense_0/kernel"].shape[2],
        embed=p["txt/head/kernel"].shape[1] if "txt/head/kernel" in p else dt,
        img_head="img/head/kernel" in p,
    )


def golden(case):
    g = lambda n: np.load(os.path.join(case, n))
    pixels = torch.from_numpy(g("input.npy")).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(g("text.npy").astype(np.int64))
    return pixels, ids, g("image_embeds.npy"), g("text_embeds.npy"), g("logits_per_image.npy")


def check(name, got, want):
    diff = float(np.abs(got.detach().numpy() - want).max())
    print(f"{name}: library vs golden max abs diff {diff:.3e}")
    assert diff <= TOL, f"{name} differs by {diff}"


def hf(case, out):
    from transformers import SiglipConfig, SiglipModel

    p, s = load(case), None
    s = sizes(p)
    assert not s["img_head"], "transformers' SiglipModel has no image projection: only siglip-nohead fits"
    cfg = SiglipConfig(
        text_config=dict(vocab_size=s["vocab"], hidden_size=s["dt"], intermediate_size=s["tmlp"],
                         num_hidden_layers=s["tdepth"], num_attention_heads=s["theads"],
                         max_position_embeddings=s["ctx"], hidden_act="gelu_pytorch_tanh",
                         layer_norm_eps=1e-6, projection_size=s["embed"],
                         pad_token_id=1, bos_token_id=None, eos_token_id=1),
        vision_config=dict(hidden_size=s["d"], intermediate_size=s["mlp"], num_hidden_layers=s["depth"],
                           num_attention_heads=s["heads"], image_size=s["image"], patch_size=s["patch"],
                           hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True),
    )
    model = SiglipModel(cfg).eval()
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
    put(v + "embeddings.patch_embedding.weight", p["img/embedding/kernel"].transpose(3, 2, 0, 1))
    put(v + "embeddings.patch_embedding.bias", p["img/embedding/bias"])
    put(v + "embeddings.position_embedding.weight", p["img/pos_embedding"][0])
    blocks(v, tower(p, "img/", "Transformer"))
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
    blocks(t, tower(p, "txt/", "Encoder_0"))
    put(t + "final_layer_norm.weight", p["txt/Encoder_0/encoder_norm/scale"])
    put(t + "final_layer_norm.bias", p["txt/Encoder_0/encoder_norm/bias"])
    put(t + "head.weight", p["txt/head/kernel"].T)
    put(t + "head.bias", p["txt/head/bias"])
    put("logit_scale", p["t"].reshape(1))
    put("logit_bias", p["b"].reshape(1))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    model.save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "SiglipImageProcessor", "do_normalize": True,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, f)
    model = SiglipModel.from_pretrained(out).eval()
    pixels, ids, ie, te, lg = golden(case)
    with torch.no_grad():
        o = model(input_ids=ids, pixel_values=pixels)
    check("hf image_embeds", o.image_embeds, ie)
    check("hf text_embeds", o.text_embeds, te)
    check("hf logits_per_image", o.logits_per_image, lg)


def open_clip_folder(case, out):
    import open_clip
    from safetensors.torch import save_file

    p = load(case)
    s = sizes(p)
    out = os.path.abspath(out)
    os.makedirs(os.path.join(out, "image_tower"), exist_ok=True)
    embed = s["embed"]
    model_args = dict(img_size=s["image"], patch_size=s["patch"], embed_dim=s["d"], depth=s["depth"],
                      num_heads=s["heads"], mlp_ratio=s["mlp"] / s["d"], num_classes=embed if s["img_head"] else 0,
                      global_pool="map", class_token=False, act_layer="gelu_tanh")
    with open(os.path.join(out, "image_tower", "config.json"), "w") as f:
        json.dump({"architecture": "vit_base_patch16_224", "num_classes": model_args["num_classes"],
                   "num_features": s["d"], "global_pool": "map", "model_args": model_args,
                   "pretrained_cfg": {"input_size": [3, s["image"], s["image"]], "mean": [0.5] * 3,
                                      "std": [0.5] * 3, "num_classes": model_args["num_classes"]}}, f, indent=2)
    cfg = {
        "model_cfg": {
            "embed_dim": embed,
            "custom_text": True,
            "init_logit_bias": -10,
            "vision_cfg": {"image_size": s["image"], "timm_model_name": "local-dir:" + os.path.join(out, "image_tower"),
                           "timm_model_pretrained": False, "timm_pool": "map",
                           "timm_proj": "" if s["img_head"] else "none"},
            "text_cfg": {"context_length": s["ctx"], "vocab_size": s["vocab"], "width": s["dt"],
                         "heads": s["theads"], "layers": s["tdepth"], "mlp_ratio": s["tmlp"] / s["dt"],
                         "no_causal_mask": True, "pool_type": "last", "proj_bias": True,
                         "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        },
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                           "resize_mode": "squash"},
    }
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    sd = {}

    def put(name, a):
        sd[name] = torch.from_numpy(np.ascontiguousarray(a))

    v = "visual.trunk."
    put(v + "patch_embed.proj.weight", p["img/embedding/kernel"].transpose(3, 2, 0, 1))
    put(v + "patch_embed.proj.bias", p["img/embedding/bias"])
    put(v + "pos_embed", p["img/pos_embedding"])
    for i, b in enumerate(tower(p, "img/", "Transformer")):
        B = f"{v}blocks.{i}."
        put(B + "norm1.weight", b["ln1"][0]); put(B + "norm1.bias", b["ln1"][1])
        put(B + "attn.qkv.weight", np.concatenate([b["q"][0], b["k"][0], b["v"][0]]))
        put(B + "attn.qkv.bias", np.concatenate([b["q"][1], b["k"][1], b["v"][1]]))
        put(B + "attn.proj.weight", b["out"][0]); put(B + "attn.proj.bias", b["out"][1])
        put(B + "norm2.weight", b["ln2"][0]); put(B + "norm2.bias", b["ln2"][1])
        for n in ("fc1", "fc2"):
            put(B + f"mlp.{n}.weight", b[n][0]); put(B + f"mlp.{n}.bias", b[n][1])
    put(v + "norm.weight", p["img/Transformer/encoder_norm/scale"])
    put(v + "norm.bias", p["img/Transformer/encoder_norm/bias"])
    m = map_head(p)
    d = s["d"]
    put(v + "attn_pool.latent", m["probe"])
    put(v + "attn_pool.q.weight", m["in_w"][:d]); put(v + "attn_pool.q.bias", m["in_b"][:d])
    put(v + "attn_pool.kv.weight", m["in_w"][d:]); put(v + "attn_pool.kv.bias", m["in_b"][d:])
    for ours, theirs in (("out", "proj"), ("ln", "norm"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
        put(v + f"attn_pool.{theirs}.weight", m[ours][0]); put(v + f"attn_pool.{theirs}.bias", m[ours][1])
    if s["img_head"]:
        put(v + "head.weight", p["img/head/kernel"].T)
        put(v + "head.bias", p["img/head/bias"])
    t = "text."
    put(t + "token_embedding.weight", p["txt/Embed_0/embedding"])
    put(t + "positional_embedding", p["txt/pos_embedding"][0])
    for i, b in enumerate(tower(p, "txt/", "Encoder_0")):
        B = f"{t}transformer.resblocks.{i}."
        put(B + "ln_1.weight", b["ln1"][0]); put(B + "ln_1.bias", b["ln1"][1])
        put(B + "attn.in_proj_weight", np.concatenate([b["q"][0], b["k"][0], b["v"][0]]))
        put(B + "attn.in_proj_bias", np.concatenate([b["q"][1], b["k"][1], b["v"][1]]))
        put(B + "attn.out_proj.weight", b["out"][0]); put(B + "attn.out_proj.bias", b["out"][1])
        put(B + "ln_2.weight", b["ln2"][0]); put(B + "ln_2.bias", b["ln2"][1])
        put(B + "mlp.c_fc.weight", b["fc1"][0]); put(B + "mlp.c_fc.bias", b["fc1"][1])
        put(B + "mlp.c_proj.weight", b["fc2"][0]); put(B + "mlp.c_proj.bias", b["fc2"][1])
    put(t + "ln_final.weight", p["txt/Encoder_0/encoder_norm/scale"])
    put(t + "ln_final.bias", p["txt/Encoder_0/encoder_norm/bias"])
    put(t + "text_projection.weight", p["txt/head/kernel"].T)
    put(t + "text_projection.bias", p["txt/head/bias"])
    put("logit_scale", p["t"].reshape(()))
    put("logit_bias", p["b"].reshape(()))
    save_file(sd, os.path.join(out, "open_clip_model.safetensors"))
    model = open_clip.create_model("local-dir:" + out).eval()
    pixels, ids, ie, te, lg = golden(case)
    with torch.no_grad():
        zi = model.encode_image(pixels, normalize=True)
        zt = model.encode_text(ids, normalize=True)
        logits = model.logit_scale.exp() * zi @ zt.T + model.logit_bias
    check("open_clip image_embeds", zi, ie)
    check("open_clip text_embeds", zt, te)
    check("open_clip logits_per_image", logits, lg)


if __name__ == "__main__":
    case, out, layout = sys.argv[1:4]
    torch.manual_seed(0)
    {"hf": hf, "open_clip": open_clip_folder}[layout](case, out)
