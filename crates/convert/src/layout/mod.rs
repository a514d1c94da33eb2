//! Target layouts, one module each, and the registry that lists them ([`LAYOUTS`]).
//!
//! A layout module holds a reviewable `const` table of its tensor names and a `plan` function that turns a
//! [`Prepared`] source into a [`Plan`]. The layout-independent decisions they share (grid, head, input norm)
//! live in [`prepared`], which imports no layout; this module imports the layouts and no layout imports it.
//! Adding a layout means adding a module and a line in [`LAYOUTS`]; no other layout changes.

pub mod clip;
mod clip_style;
pub mod hf;
pub mod hf_files;
pub mod hf_siglip;
pub mod hf_siglip_model;
pub mod open_clip;
pub mod open_clip_siglip;
pub mod prepared;
pub mod recognise;
pub mod timm;
pub mod timm_naflex;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::options::{Layout, Options};
use crate::plan::{Fetch, Plan};
pub use prepared::{
    mlp_ratio, name, py_float, py_str, BlockRole, BlockTable, MapRole, MapTable, Prepared,
    TextRole, TextTable, FLAX_LN_EPS, MAX_GRID_CELLS, MAX_IMAGE_SIZE, MAX_TABLE_VALUES,
    NAFLEX_POS_RESIZE,
};
use recognise::{Recognised, Shapes};
use vitconv_tensors::TensorInfo;

/// One target layout: the module that plans its output and the one that recognises its files.
pub struct LayoutDef {
    /// The layout's name on the command line.
    pub layout: Layout,
    /// The output plan for a prepared source (`fetch` reads the few values a layout records, such as a
    /// head bias that has no tensor of its own).
    pub plan: fn(Prepared<'_>, &dyn Fetch, &str) -> Result<Plan>,
    /// Recognises a converted file of this layout for `inspect`.
    pub recognise: fn(&Shapes<'_>) -> Option<Recognised>,
    /// Whether the layout holds a two-tower image-text model whole; the others are offered `--tower image`.
    pub two_tower: bool,
    /// The Python line that loads a weights file into the model the plan's printed lines build, with `{read}`
    /// standing for the expression that reads the file's state dict; `None` where the output loads itself (a
    /// folder `from_pretrained` reads).
    pub load_weights: Option<&'static str>,
    /// What every output of the layout cannot reproduce, for the command line to warn about.
    pub warning: Option<&'static str>,
}

/// The `visual.`-prefixed state dict of open_clip and OpenAI CLIP, loaded into the visual tower alone.
const VISUAL_LOAD: &str =
    "visual.load_state_dict({k.removeprefix('visual.'): v for k, v in {read}.items()})  # strict";

/// The registry entry of `layout`.
pub fn def(layout: Layout) -> Option<&'static LayoutDef> {
    LAYOUTS.iter().find(|d| d.layout == layout)
}

/// Every target layout, in the order `inspect` tries to recognise them. Adding a layout means a module, a
/// [`Layout`] name and a line here.
pub const LAYOUTS: &[LayoutDef] = &[
    LayoutDef {
        layout: Layout::Timm,
        plan: timm::plan,
        recognise: timm::recognise,
        two_tower: false,
        load_weights: Some("model.load_state_dict({read})  # strict"),
        warning: None,
    },
    LayoutDef {
        layout: Layout::Hf,
        plan: hf::plan,
        recognise: hf::recognise,
        two_tower: true,
        // from_pretrained reads the directory itself.
        load_weights: None,
        warning: None,
    },
    LayoutDef {
        layout: Layout::OpenClip,
        plan: open_clip::plan,
        recognise: open_clip::recognise,
        two_tower: true,
        load_weights: Some(VISUAL_LOAD),
        warning: None,
    },
    LayoutDef {
        layout: Layout::Clip,
        plan: clip::plan,
        recognise: clip::recognise,
        two_tower: false,
        load_weights: Some(VISUAL_LOAD),
        warning: Some(clip::NOT_EXACT),
    },
];

/// Builds the plan for the chosen layout.
pub fn plan(model: &Model, opts: &Options, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    let prep = Prepared::new(model, opts)?;
    let def = def(opts.layout).ok_or(Error::NoLayoutModule {
        layout: opts.layout.as_str(),
    })?;
    if prep.two_tower() && !def.two_tower {
        let text = model.text.as_ref().map(|t| t.arch.width).unwrap_or(0);
        return Err(prep.refuse(
            crate::error::Part::TwoTower { text_width: text },
            match prep.naflex_grid() {
                // open_clip has no NaFlex model: only transformers holds the whole of one.
                Some(_) => "the layout holds one vision tower; pass --tower image for the image tower alone, or use --layout hf (Siglip2Model) for the whole NaFlex model",
                None => "the layout holds one vision tower; pass --tower image for the image tower alone, or use --layout hf or open_clip for the whole model",
            },
        ));
    }
    let plan = (def.plan)(prep, fetch, source_name)?;
    plan.check_shapes()?;
    Ok(plan)
}

/// Recognises a PyTorch state dict as one of the layouts, for `inspect`.
pub fn recognise(tensors: &[TensorInfo]) -> Option<Recognised> {
    let s = recognise::shapes(tensors);
    LAYOUTS.iter().find_map(|d| (d.recognise)(&s))
}

/// The layout a PyTorch state dict is in, by the same recognisers as [`recognise`] (for `verify`, which reads a
/// file without `vitconv.layout` metadata as the layout its keys are).
pub fn recognise_layout(tensors: &[TensorInfo]) -> Option<Layout> {
    let s = recognise::shapes(tensors);
    LAYOUTS
        .iter()
        .find(|d| (d.recognise)(&s).is_some())
        .map(|d| d.layout)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vitconv_tensors::{DType, TensorFile, TensorInfo};

    use super::*;
    use crate::model::Proj;
    use crate::options::{Gelu, HeadChoice, InputNorm, ProjChoice};
    use crate::sources::vit_jax::read as detect_vit_jax;
    use crate::sources::vit_jax::tests::{fixtures, golden_file, GOLDEN, VARIANTS};

    const LAYOUTS: [Layout; 4] = [Layout::Timm, Layout::Hf, Layout::OpenClip, Layout::Clip];

    fn plan_for(case: &str, opts: &Options) -> Result<Plan> {
        let file = golden_file(case);
        let src = detect_vit_jax(file.tensors())?;
        let p = plan(&src, opts, &file, "checkpoint.npz")?;
        p.check_complete(&src.shapes, &src.recognised)?;
        Ok(p)
    }

    fn refusal(case: &str, opts: &Options) -> String {
        match plan_for(case, opts) {
            Ok(_) => panic!("{case} to {} was accepted", opts.layout.as_str()),
            Err(e) => e.to_string(),
        }
    }

    /// Which golden cases each layout can hold with default options.
    fn holds(layout: Layout, case: &str) -> bool {
        let hybrid = case.starts_with("hybrid");
        match layout {
            Layout::Timm => case != "vit-prelogits",
            Layout::Hf => !hybrid && case != "vit-prelogits",
            Layout::OpenClip => !hybrid && case != "vit-gap" && case != "vit-prelogits",
            Layout::Clip => case == "vit-mlp4",
        }
    }

    #[test]
    fn every_golden_case_plans_completely_where_the_layout_holds_it() {
        for case in GOLDEN.iter().chain(VARIANTS) {
            for layout in LAYOUTS {
                let opts = Options::new(layout);
                match plan_for(case, &opts) {
                    Ok(p) => {
                        assert!(
                            holds(layout, case),
                            "{case} -> {layout:?} should be refused"
                        );
                        let config: serde_json::Value =
                            serde_json::from_str(&p.metadata[crate::meta::CONFIG])
                                .expect("config is JSON");
                        assert_eq!(p.metadata[crate::meta::LAYOUT], layout.as_str());
                        assert_eq!(p.metadata["format"], "pt");
                        assert_eq!(config["input_norm"]["name"], opts.input_norm().as_str());
                        // Each output's recipe produces exactly its shape's element count, as it says it will.
                        let file = golden_file(case);
                        for t in &p.tensors {
                            let n: usize = t.shape.iter().product();
                            let v = crate::exec::eval(&file, &t.recipe)
                                .unwrap_or_else(|e| panic!("{case} {}: {e}", t.name));
                            assert_eq!(v.len(), n, "{case} -> {layout:?}: {}", t.name);
                            assert_eq!(
                                t.recipe.out_len(),
                                Some(n),
                                "{case} -> {layout:?}: {}",
                                t.name
                            );
                        }
                    }
                    Err(e) => assert!(!holds(layout, case), "{case} -> {layout:?} refused: {e}"),
                }
            }
        }
    }

    #[test]
    fn outputs_are_recognised_as_their_family() {
        let want = [
            (Layout::Timm, "timm"),
            (Layout::Hf, "transformers"),
            (Layout::OpenClip, "open_clip"),
            (Layout::Clip, "openai_clip"),
        ];
        for (layout, family) in want {
            let p =
                plan_for("vit-mlp4", &Options::new(layout)).expect("vit-mlp4 converts everywhere");
            let infos: Vec<TensorInfo> = p
                .tensors
                .iter()
                .map(|t| TensorInfo {
                    name: t.name.clone(),
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                    stored_as: None,
                })
                .collect();
            let s = crate::summarize(&infos)
                .unwrap_or_else(|| panic!("{layout:?} output not recognised"));
            assert_eq!(s.family, family);
            assert!(
                s.architecture.contains("hidden 64, 2 layers")
                    && s.architecture.contains("mlp 256"),
                "{}",
                s.architecture
            );
            assert!(
                s.architecture.contains("32 px (4x4 grid"),
                "{}",
                s.architecture
            );
        }
    }

    #[test]
    fn refusals_name_the_layout_and_the_way_out() {
        let hf = Options::new(Layout::Hf);
        assert!(refusal("vit-gap", &Options::new(Layout::Clip)).contains("cannot hold a gap"));
        assert!(refusal("hybrid-r2", &hf).contains("no ViT-hybrid"));
        assert!(refusal("vit-prelogits", &hf).contains("--drop-head"));
        for layout in [Layout::OpenClip, Layout::Clip] {
            let o = Options::new(layout);
            assert!(refusal("vit-gap", &o).contains("gap"), "{layout:?}");
            assert!(refusal("hybrid-root", &o).contains("hybrid"), "{layout:?}");
        }
        assert!(refusal("vit-prelogits", &Options::new(Layout::OpenClip)).contains("--drop-head"));
        assert!(refusal("vit-token", &Options::new(Layout::Clip)).contains("4x"));
        assert!(refusal("vit-prelogits", &Options::new(Layout::Timm)).contains("--drop-head"));
    }

    #[test]
    fn option_errors() {
        let mut o = Options::new(Layout::Timm);
        o.image_size = Some(100);
        assert!(refusal("vit-token", &o).contains("--image-size"));
        let mut o = Options::new(Layout::Timm);
        o.head = HeadChoice::NumClasses(7);
        assert!(refusal("vit-token", &o).contains("--num-classes"));
        let mut o = Options::new(Layout::Timm);
        o.input_norm = Some(InputNorm::Imagenet);
        assert!(refusal("hybrid-r2", &o).contains("--input-norm"));
        let mut o = Options::new(Layout::OpenClip);
        o.head = HeadChoice::Drop;
        o.proj = Some(ProjChoice::Head);
        assert!(refusal("vit-token", &o).contains("--proj head"));
    }

    #[test]
    fn dropping_is_recorded_never_silent() {
        let mut o = Options::new(Layout::Timm);
        o.head = HeadChoice::Drop;
        let p = plan_for("vit-prelogits", &o).expect("--drop-head makes a feature extractor");
        assert!(p.tensors.iter().all(|t| !t.name.starts_with("head")));
        assert_eq!(p.dropped.len(), 4, "{:?}", p.dropped);
        assert!(p.metadata[crate::meta::NOTES].contains("pre_logits"));
        let kwargs: serde_json::Value =
            serde_json::from_str(&p.metadata[crate::meta::TIMM_KWARGS]).expect("json");
        assert_eq!(kwargs["num_classes"], 0);
        // hf keeps pre_logits as ViTModel's pooler instead.
        let mut o = Options::new(Layout::Hf);
        o.head = HeadChoice::Drop;
        let p = plan_for("vit-prelogits", &o).expect("hf feature extractor");
        assert!(p
            .tensors
            .iter()
            .any(|t| t.name == "pooler.dense.weight" && t.shape == [40, 48]));
        assert_eq!(p.dropped.len(), 2, "{:?}", p.dropped);
    }

    /// A source holding `values` (each tensor with its shape in `like`), written as an `.npz`, so that the
    /// recipes run through the one interpreter a conversion uses. The folder lives as long as the file.
    fn mem_file(
        like: &TensorFile,
        values: BTreeMap<String, Vec<f32>>,
    ) -> (tempfile::TempDir, TensorFile) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("mem.npz");
        let specs = values
            .keys()
            .map(|name| vitconv_tensors::TensorSpec {
                name: name.clone(),
                dtype: DType::F32,
                shape: like
                    .get(name)
                    .expect("a tensor of the source")
                    .shape
                    .clone(),
            })
            .collect();
        let mut w = vitconv_tensors::Writer::create(
            &path,
            vitconv_tensors::Format::Npz,
            specs,
            BTreeMap::new(),
            false,
        )
        .expect("writer");
        for v in values.values() {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_next(&bytes).expect("written");
        }
        w.finish().expect("finished");
        let file = TensorFile::open(&path).expect("opens");
        (dir, file)
    }

    #[test]
    fn fused_qkv_is_q_k_v_with_heads_contiguous() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let (d, h, dh) = (64usize, 4usize, 16usize);
        // value = (which projection) * 1e6 + input * 1e3 + (head * dh + dim), so every entry says where it came from.
        let mut mem = BTreeMap::new();
        for (pi, p) in [Proj::Query, Proj::Key, Proj::Value]
            .into_iter()
            .enumerate()
        {
            let k: Vec<f32> = (0..d * h * dh)
                .map(|x| (pi * 1_000_000 + (x / (h * dh)) * 1000 + x % (h * dh)) as f32)
                .collect();
            mem.insert(src.image.blocks[0].attn.proj(p).kernel.tensor.clone(), k);
        }
        let opts = Options::new(Layout::Timm);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        let (_dir, mem) = mem_file(&file, mem);
        let w = crate::exec::eval(&mem, &prep.qkv_weight(&src.image.blocks[0].attn)).expect("qkv");
        assert_eq!(w.len(), 3 * d * d);
        for row in 0..3 * d {
            for col in 0..d {
                let (pi, out) = (row / d, row % d);
                assert_eq!(
                    w[row * d + col],
                    (pi * 1_000_000 + col * 1000 + out) as f32,
                    "row {row} col {col}"
                );
            }
        }
    }

    #[test]
    fn out_projection_maps_heads_to_columns() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let (d, hd) = (64usize, 64usize);
        let k: Vec<f32> = (0..hd * d)
            .map(|x| ((x / d) * 1000 + x % d) as f32)
            .collect();
        let (_dir, mem) = mem_file(
            &file,
            [(src.image.blocks[0].attn.out.kernel.tensor.clone(), k)]
                .into_iter()
                .collect(),
        );
        let opts = Options::new(Layout::Timm);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        let w = crate::exec::eval(
            &mem,
            &prep.proj_weight(&src.image.blocks[0].attn, Proj::Out),
        )
        .expect("out");
        // torch weight [out, in]: out = model dim, in = head * dh + dim.
        for o in 0..d {
            for i in 0..hd {
                assert_eq!(w[o * hd + i], (i * 1000 + o) as f32);
            }
        }
    }

    #[test]
    fn vit_jax_resize_equals_vit_jax_interpolate_posembed() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let mut opts = Options::new(Layout::Timm);
        opts.image_size = Some(96);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        assert_eq!(prep.grid, (6, 6));
        let (_, recipe) = prep.pos_table(true, false).expect("table");
        let got = crate::exec::eval(&file, &recipe).expect("resized");
        let golden = TensorFile::open(fixtures().join("vit-token/resized_96_pos_embedding.npy"))
            .expect("golden npy");
        let name = golden
            .tensors()
            .first()
            .map(|t| t.name.clone())
            .expect("one array");
        let want = golden.read_f32(&name).expect("golden values");
        assert_eq!(got.len(), want.len());
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-6, "max |ours - vit_jax| = {max}");
        // The class-token row is untouched.
        let orig = file
            .read_f32("Transformer/posembed_input/pos_embedding")
            .expect("source");
        assert_eq!(&got[..64], &orig[..64]);
    }

    #[test]
    fn python_strings_are_written_as_repr_writes_them() {
        assert_eq!(py_str("a/b.pt"), "'a/b.pt'");
        assert_eq!(py_str("it's"), "\"it's\"");
        assert_eq!(py_str("it's \"q\""), "'it\\'s \"q\"'");
        assert_eq!(py_str("back\\slash"), "'back\\\\slash'");
        assert_eq!(py_str("new\nline\ttab\r"), "'new\\nline\\ttab\\r'");
        assert_eq!(py_str("bell\u{7}"), "'bell\\x07'");
        assert_eq!(py_str("Zürich ü"), "'Zürich ü'");
    }

    #[test]
    fn gelu_and_norm_reach_the_configs() {
        let mut o = Options::new(Layout::Hf);
        o.gelu = Some(Gelu::Erf);
        o.input_norm = Some(InputNorm::Imagenet);
        let p = plan_for("vit-token", &o).expect("hf");
        let cfg = p
            .side_files
            .iter()
            .find(|f| f.name == "config.json")
            .expect("config.json");
        assert!(
            cfg.contents.contains("\"hidden_act\": \"gelu\""),
            "{}",
            cfg.contents
        );
        let pre = p
            .side_files
            .iter()
            .find(|f| f.name == "preprocessor_config.json")
            .expect("preprocessor");
        assert!(pre.contents.contains("0.229"), "{}", pre.contents);
        assert!(p.notes.iter().any(|n| n.contains("imagenet")));
    }

    /// The side file `name` of a plan, parsed.
    fn side_json(p: &Plan, name: &str) -> serde_json::Value {
        let f = p
            .side_files
            .iter()
            .find(|f| f.name.ends_with(name))
            .unwrap_or_else(|| panic!("no {name}"));
        serde_json::from_str(&f.contents).expect("JSON")
    }

    /// `src`'s plan for `layout` with default options, `file` holding its values.
    fn default_plan(src: &Model, file: &TensorFile, layout: Layout) -> Result<Plan> {
        plan(src, &Options::new(layout), file, "checkpoint.npz")
    }

    /// The refusal of `src` by `layout`, in words ("" where it was accepted).
    fn refused(src: &Model, file: &TensorFile, layout: Layout) -> String {
        default_plan(src, file, layout)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// The typed record a plan writes.
    fn record(p: &Plan) -> crate::record::ConfigRecord {
        crate::record::ConfigRecord::from_json(&p.metadata[crate::meta::CONFIG]).expect("record")
    }

    #[test]
    fn a_towers_eps_and_activation_come_from_the_model_and_reach_every_declaration() {
        let file = golden_file("vit-token");
        let mut src = detect_vit_jax(file.tensors()).expect("vit-token");
        assert_eq!(src.image.semantics, crate::model::Semantics::FLAX_ENCODER);
        src.image.semantics.norm_eps = 1e-5;
        src.image.semantics.activation = crate::model::Activation::GeluErf;
        let hf = default_plan(&src, &file, Layout::Hf).expect("hf");
        let cfg = side_json(&hf, "config.json");
        assert_eq!(cfg["layer_norm_eps"], 1e-5);
        assert_eq!(cfg["hidden_act"], "gelu");
        assert_eq!(record(&hf).layer_norm_eps, 1e-5);
        assert_eq!(record(&hf).gelu, crate::record::DeclaredGelu::Erf);
        let oc = default_plan(&src, &file, Layout::OpenClip).expect("open_clip");
        let oc_cfg: serde_json::Value =
            serde_json::from_str(&oc.metadata[crate::meta::OPEN_CLIP_CONFIG]).expect("JSON");
        assert_eq!(oc_cfg["vision_cfg"]["norm_kwargs"]["eps"], 1e-5, "{oc_cfg}");
        // --gelu still overrides the tower's own activation.
        let mut o = Options::new(Layout::Hf);
        o.gelu = Some(Gelu::Tanh);
        let hf = plan(&src, &o, &file, "checkpoint.npz").expect("hf");
        assert_eq!(
            side_json(&hf, "config.json")["hidden_act"],
            "gelu_pytorch_tanh"
        );
        // timm builds every LayerNorm with 1e-6 and cannot be told otherwise: refused, naming the value.
        let err = refused(&src, &file, Layout::Timm);
        assert!(
            err.contains("eps 1e-5") && err.contains("--layout hf"),
            "{err}"
        );
    }

    #[test]
    fn a_causal_text_tower_is_declared_by_open_clip_and_refused_by_transformers() {
        let path = fixtures().join("big_vision/siglip-nohead/checkpoint.npz");
        let file = TensorFile::open(&path).expect("siglip-nohead");
        let mut src = crate::sources::read(file.tensors()).expect("a SigLIP model");
        let text = src.text.as_mut().expect("a text tower");
        assert!(!text.semantics.causal);
        let oc = default_plan(&src, &file, Layout::OpenClip).expect("open_clip");
        let text_cfg = &side_json(&oc, "open_clip_config.json")["model_cfg"]["text_cfg"];
        assert_eq!(text_cfg["no_causal_mask"], true);
        assert_eq!(text_cfg["pool_type"], "last");
        default_plan(&src, &file, Layout::Hf).expect("SiglipModel");

        let text = src.text.as_mut().expect("a text tower");
        text.semantics.causal = true;
        text.semantics.norm_eps = 1e-5;
        let oc = default_plan(&src, &file, Layout::OpenClip).expect("open_clip declares the mask");
        let text_cfg = &side_json(&oc, "open_clip_config.json")["model_cfg"]["text_cfg"];
        assert_eq!(text_cfg["no_causal_mask"], false);
        assert_eq!(text_cfg["norm_kwargs"]["eps"], 1e-5);
        let declared = record(&oc).text.expect("a text record");
        assert!(declared.causal);
        assert_eq!(declared.layer_norm_eps, 1e-5);
        let err = refused(&src, &file, Layout::Hf);
        assert!(err.contains("causal attention mask"), "{err}");
    }
}
