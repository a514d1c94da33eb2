"""Real clients load the SigLIP 2 fixed-resolution model `vitconv npz-to-pt` writes from big_vision, with its
Gemma-kind tokenizer.

The golden case fixtures/siglip2/siglip2-gopt-tiny (big_vision's own outputs, g-opt shape: image width 96
without `img/head`, text width 64 with `txt/head` 64 -> 96, tanh GELU) goes to transformers' `SiglipModel` with
`AutoTokenizer`/`AutoProcessor`, open_clip's `local-dir:` folder with its `get_tokenizer`, and timm's image tower
alone (`--tower image`). The tokenizers must give exactly big_vision's ids (`text.npy`) on the four raw
sentences of `text.txt` (ASCII-only lowercase, no BOS, sticky EOS, `<pad>` 0 to the full context); the models
must give big_vision's embeddings and logits within TOL fed those ids and fed the ids of the folder's own
tokenizer. A BPE SentencePiece model with byte fallback (the real Gemma tokenizer's algorithm) is trained here
and the fast tokenizer written from it is compared with SentencePiece's own `EncodeAsIds`.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

from test_big_vision import TOL, run_convert

torch.set_grad_enabled(False)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASE = ROOT / "fixtures" / "siglip2" / "siglip2-gopt-tiny"
SOURCE = CASE / "checkpoint.npz"
TOKENIZER = CASE / "tokenizer.model"
CONTEXT = 16
EOS, PAD = 1, 0


def golden(name):
    return np.load(CASE / name)


def model_json():
    return json.loads((CASE / "model.json").read_text())


def texts():
    return (CASE / "text.txt").read_text(encoding="utf-8").splitlines()


def golden_ids():
    return golden("text.npy").astype(np.int64)


def images():
    # NHWC in [-1, 1], what the unit input normalisation hands the model.
    return torch.from_numpy(golden("input.npy")).permute(0, 3, 1, 2).contiguous().float()


def convert(tmp_path, layout, name, *args, source=SOURCE, tokenizer=TOKENIZER):
    out = tmp_path / name
    extra = ["--tokenizer", str(tokenizer)] if tokenizer else []
    run = run_convert(source, out, layout, *extra, *args)
    assert run.returncode == 0, run.stderr
    return out, run.stdout


def check(image_embeds, text_embeds, logits, what):
    for name, got in [("image_embeds", image_embeds), ("text_embeds", text_embeds), ("logits_per_image", logits)]:
        diff = np.abs(got.float().numpy() - golden(name + ".npy")).max()
        assert diff < TOL, f"{what} {name}: max |diff| = {diff:.3g}"


def ascii_lower(text):
    """big_vision's `tf.strings.lower`: A-Z only."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def big_vision_ids(sp, text, context):
    """big_vision's `tok(bos="no", eos="sticky")` after `lower`: pieces, EOS kept last, `<pad>` 0 to the context."""
    ids = sp.encode(ascii_lower(text))
    if len(ids) + 1 >= context:
        return ids[: context - 1] + [EOS]
    return ids + [EOS] + [PAD] * (context - len(ids) - 1)


def test_golden_sentences_test_what_they_claim():
    """The test data can fail: SentencePiece on the ASCII-lowered texts gives the golden ids, a Unicode
    lowercase gives other ids for the third sentence, and the second is truncated."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    want = golden_ids()
    assert [big_vision_ids(sp, t, CONTEXT) for t in texts()] == want.tolist()
    unicode = model_json()["texts"][2]["ids_if_unicode_lowercased"]
    assert (sp.encode(texts()[2].lower()) + [EOS] + [PAD] * 6)[:CONTEXT] == unicode
    assert unicode != want[2].tolist()
    assert len(sp.encode(ascii_lower(texts()[1]))) > CONTEXT


def hf_tokenizer(out):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(out)


def hf_ids(tokenizer, sentences, context):
    return tokenizer(sentences, padding="max_length", max_length=context, truncation=True)["input_ids"]


def test_hf_folder_tokenizer_and_processor_give_big_vision_ids(tmp_path):
    from transformers import AutoProcessor

    out, report = convert(tmp_path, "hf", "hf")
    assert "Gemma kind" in report
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert (out / "tokenizer.model").read_bytes() == TOKENIZER.read_bytes()
    tok = hf_tokenizer(out)
    assert tok.model_max_length == CONTEXT
    assert hf_ids(tok, texts(), CONTEXT) == golden_ids().tolist()
    # One at a time too (no batch padding rule involved), and the default max_length is the context.
    for text, want in zip(texts(), golden_ids().tolist()):
        assert tok(text, padding="max_length", truncation=True)["input_ids"] == want
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "SiglipProcessor"
    batch = processor(text=texts(), padding="max_length", truncation=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == golden_ids().tolist()


def test_a_unicode_lowercasing_tokenizer_json_would_differ(tmp_path):
    """The written normaliser lowercases A-Z only: the same tokenizer.json with tokenizers' `Lowercase` (what
    transformers' Siglip2Tokenizer uses) gives the other ids for `Über den ÄRGER`, so the id test above can
    fail."""
    from tokenizers import Tokenizer

    out, _ = convert(tmp_path, "hf", "hf")
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    norms = spec["normalizer"]["normalizers"]
    assert [n["pattern"]["String"] for n in norms[:26]] == [chr(c) for c in range(65, 91)]
    assert not any(n["type"] == "Lowercase" for n in norms)
    spec["normalizer"]["normalizers"] = [{"type": "Lowercase"}] + norms[26:]
    wrong = Tokenizer.from_str(json.dumps(spec))
    wrong.enable_padding(pad_id=PAD, length=CONTEXT)
    got = wrong.encode(texts()[2]).ids
    assert got == model_json()["texts"][2]["ids_if_unicode_lowercased"]
    assert got != golden_ids()[2].tolist()


def test_hf_unigram_tokenizer_matches_sentencepiece_beyond_the_golden_sentences(tmp_path):
    """The golden tokenizer is unigram without byte fallback: unknown characters, runs of spaces, digits,
    uppercase non-ASCII and an overlong text against SentencePiece's own encoding."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    out, _ = convert(tmp_path, "hf", "hf")
    tok = hf_tokenizer(out)
    sentences = ["two  spaces   and three", " leading and trailing ", "emoji 😀 and ✓ unknown", "ΩMEGA Москва",
                 "digits 1234567", "a\ttab", "", "x y z"] + texts()
    for text in sentences:
        assert hf_ids(tok, [text], CONTEXT)[0] == big_vision_ids(sp, text, CONTEXT), text


def test_hf_siglip_model_matches_big_vision(tmp_path):
    from transformers import AutoProcessor, SiglipModel

    out, _ = convert(tmp_path, "hf", "hf")
    cfg = json.loads((out / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["projection_size"] == 96 and text["hidden_size"] == 64 and vision["hidden_size"] == 96
    assert vision["vision_use_head"] is True
    assert text["hidden_act"] == vision["hidden_act"] == "gelu_pytorch_tanh"
    assert (text["pad_token_id"], text["eos_token_id"], text["bos_token_id"]) == (0, 1, 2)
    assert text["max_position_embeddings"] == CONTEXT and text["vocab_size"] == 300
    model = SiglipModel.from_pretrained(out).eval()
    res = model(input_ids=torch.from_numpy(golden_ids()), pixel_values=images())
    check(res.image_embeds, res.text_embeds, res.logits_per_image, "SiglipModel, golden ids")
    processor = AutoProcessor.from_pretrained(out)
    ids = processor(text=texts(), padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    res = model(input_ids=ids, pixel_values=images())
    check(res.image_embeds, res.text_embeds, res.logits_per_image, "SiglipModel, processor ids")


def test_open_clip_folder_matches_big_vision(tmp_path):
    import open_clip

    out, report = convert(tmp_path, "open_clip", "oc")
    assert "HFTokenizer cleans" in report
    cfg = json.loads((out / "open_clip_config.json").read_text())
    m = cfg["model_cfg"]
    assert m["embed_dim"] == 96 and m["vision_cfg"]["timm_proj"] == "none"
    assert m["text_cfg"]["tokenizer_kwargs"] == {"clean": "whitespace"}
    assert m["text_cfg"]["act_kwargs"] == {"approximate": "tanh"} and m["text_cfg"]["proj_bias"] is True
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert type(tokenizer).__name__ == "HFTokenizer"
    ids = tokenizer(texts())
    assert ids.tolist() == golden_ids().tolist()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    assert type(model.visual.trunk.blocks[0].mlp.act).__name__ == "GELUTanh"
    img = model.encode_image(images(), normalize=True)
    for what, text_ids in [("golden ids", torch.from_numpy(golden_ids())), ("get_tokenizer ids", ids)]:
        txt = model.encode_text(text_ids, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
        check(img, txt, logits, f"open_clip, {what}")


def test_timm_image_tower_is_tanh_and_erf_is_caught(tmp_path):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from test_loaders import read_metadata, read_weights

    out, _ = convert(tmp_path, "timm", "tower", "--tower", "image", tokenizer=None)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(model.blocks[0].mlp.act).__name__ == "GELUTanh"
    assert model.global_pool == "map" and model.num_classes == 0
    want = golden("image_embeds.npy")

    def embeds(m):
        z = m(images())
        return (z / z.norm(dim=-1, keepdim=True)).numpy()

    diff = np.abs(embeds(model) - want).max()
    assert diff < TOL, f"timm tower: {diff:.3g}"
    # The same weights with the exact-erf GELU miss by more than TOL (model.json: 5.3e-5): the tolerance
    # tells the two apart.
    weights = out / "model.safetensors"
    kwargs = json.loads(read_metadata(weights)["vitconv.timm_kwargs"])
    assert kwargs["act_layer"] == "gelu_tanh"
    erf = VisionTransformer(**{**kwargs, "act_layer": "gelu", "num_classes": 0}).eval()
    erf.load_state_dict(read_weights(weights), strict=True)
    erf_diff = np.abs(embeds(erf) - want).max()
    assert erf_diff > 2 * TOL, f"erf GELU only {erf_diff:.3g} away"


# ---------------------------------------------------------------- BPE with byte fallback


def train_gemma_bpe(tmp_path):
    """A tiny BPE SentencePiece model with Gemma's conventions: special ids 0-3, byte fallback, identity
    normalisation, no dummy prefix, whitespace kept, digits split, one user-defined piece."""
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    lines = ["a photo of a cat", "a dog plays with 2 balls in the park", "über den ärger", "naïve café résumé",
             "the quick brown fox 1234 jumps", "Ωmega  double  spaces", "москва ночью", "<start_of_turn> hi",
             "two small dogs play in the grass", "a red bicycle near the river"]
    corpus.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")
    prefix = tmp_path / "gemma-bpe"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", add_dummy_prefix=False, normalization_rule_name="identity", split_digits=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, user_defined_symbols=["<start_of_turn>"],
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    path = pathlib.Path(f"{prefix}.model")
    return path, spm.SentencePieceProcessor(model_file=str(path))


def with_vocab(tmp_path, rows):
    """The golden checkpoint with a text embedding of `rows` rows (the first 300 kept), for a larger
    vocabulary."""
    with np.load(SOURCE) as z:
        arrays = {k: z[k] for k in z.files}
    key = "params/txt/Embed_0/embedding"
    emb = arrays[key]
    extra = np.random.default_rng(0).standard_normal((rows - emb.shape[0], emb.shape[1])).astype(emb.dtype)
    arrays[key] = np.concatenate([emb, extra * emb.std()])
    path = tmp_path / f"vocab{rows}.npz"
    np.savez(path, **arrays)
    return path


BPE_SENTENCES = [
    "A photo of a cat.",
    "hello wörld 😀 ✓ 日本語",  # bytes: not in the vocabulary
    "numbers 12345 and 9",
    "multiple   spaces  here ",
    "  leading",
    "Über den ÄRGER",
    "<start_of_turn>user",
    "NAÏVE CAFÉ",
    "a\ttab\nand newline",
    "the quick brown fox jumps over the lazy dog near the river with two small dogs",
]


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_bpe_byte_fallback_tokenizer_matches_sentencepiece(tmp_path, layout):
    model_file, sp = train_gemma_bpe(tmp_path)
    assert sp.get_piece_size() > 300 and sp.id_to_piece(3) == "<unk>"
    assert sp.encode("😀") == [sp.piece_to_id(f"<0x{b:02X}>") for b in "😀".encode()]
    # More pieces than the golden text tower's 300 rows: refused there.
    run = run_convert(SOURCE, tmp_path / "refused", layout, "--tokenizer", str(model_file))
    assert run.returncode == 2 and "pieces" in run.stderr and "300" in run.stderr, run.stderr
    assert not (tmp_path / "refused").exists()
    out, _ = convert(tmp_path, layout, "out", source=with_vocab(tmp_path, sp.get_piece_size()),
                     tokenizer=model_file)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is True
    sentences = BPE_SENTENCES
    if layout == "hf":
        tok = hf_tokenizer(out)
        got = hf_ids(tok, sentences, CONTEXT)
        # Untruncated too: every piece, then the EOS.
        for s in sentences:
            assert tok(s)["input_ids"] == sp.encode(ascii_lower(s)) + [EOS], s
    else:
        import open_clip

        # open_clip cleans whitespace first (documented): compare on the texts it leaves alone.
        sentences = [s for s in BPE_SENTENCES if " ".join(s.split()) == s]
        assert len(sentences) >= 6
        got = open_clip.get_tokenizer(f"local-dir:{out}")(sentences).tolist()
    assert got == [big_vision_ids(sp, s, CONTEXT) for s in sentences]
