//! The layout-independent decisions every target layout shares: the source with its options resolved
//! ([`Prepared`]: grid, head, input normalisation, towers, tokenizer, notes). Its parts by role: `grid`
//! (the output's patch grid and its limits), `embed` (patch and position embeddings), `weights` (the recipes
//! for each table role), `tables` (the roles and name tables), `declare` (`vitconv.config`, the common
//! metadata, the plan's common part) and `python` (literals for printed Python). Layout modules import
//! this module, and the registry in `layout/mod.rs` imports them: this module imports no layout.

mod declare;
mod embed;
mod grid;
mod python;
mod tables;
mod weights;

use crate::arch::{Arch, PatchEmbedKind};
use crate::error::{Error, Part, Result};
use crate::model::{Activation, Logit, Model, Param, PosEmbed, Semantics, TextTower, Tower};
use crate::options::{Gelu, HeadChoice, InputNorm, Options, TowerChoice};
use crate::tokenizer::SentencePiece;

pub use grid::{MAX_GRID_CELLS, MAX_IMAGE_SIZE, MAX_TABLE_VALUES};
pub use python::{exact_ratio, mlp_ratio, py_float, py_str};
pub use tables::{name, BlockRole, BlockTable, MapRole, MapTable, TextRole, TextTable};
pub use weights::{linear, norm_pair};

/// How a NaFlex model resizes its position grid to each image's patch grid, as `vitconv.config` declares it
/// (`pos_resize`): bilinear with antialias and half-pixel centres, big_vision's `jax.image.scale_and_translate`
/// and PyTorch's `F.interpolate(mode='bilinear', align_corners=False, antialias=True)`.
pub const NAFLEX_POS_RESIZE: &str = "bilinear_antialias";

/// LayerNorm epsilon of the flax model (`nn.LayerNorm` default): the model's fact, re-exported for the tests
/// that state it.
pub use crate::model::FLAX_LN_EPS;

/// The source with the layout-independent options resolved.
pub struct Prepared<'a> {
    /// The source model.
    pub model: &'a Model,
    /// The options asked for.
    pub opts: &'a Options,
    /// Patch grid of the output (differs from the source's with `--image-size`).
    pub grid: (usize, usize),
    /// Input resolution of the output, in pixels. A NaFlex tower has none (its outputs declare `image_size`
    /// null): here it is the side at which the stored position grid is used unresized (grid x patch), which only
    /// the preprocessing defaults of loaders that ask for a size take.
    pub image_size: usize,
    /// Whether `head` is written (false with `--drop-head`, `--num-classes 0`, or no head in the source).
    pub keep_head: bool,
    /// The input normalisation the output expects (folded into the patch embedding where it differs from the source's).
    pub norm: InputNorm,
    /// What was resolved so far, one sentence each (they join the plan's notes).
    pub notes: Vec<String>,
    /// Source tensors left out so far (training state, a dropped head).
    pub dropped: Vec<String>,
    /// The `--tokenizer` model, checked against the text tower.
    pub tokenizer: Option<SentencePiece>,
}

impl<'a> Prepared<'a> {
    /// Resolves image size, head and input normalisation against the source.
    pub fn new(model: &'a Model, opts: &'a Options) -> Result<Self> {
        let tower = &model.image;
        let arch = &tower.arch;
        let stride = arch.stride();
        let (grid, image_size) = grid::resolve(opts.image_size, arch)?;
        let mut notes = Vec::new();
        if let (Some(n), Some(px)) = (opts.image_size, arch.image_size()) {
            if n != px && Some(grid) == arch.grid {
                notes.push(format!(
                    "resolution: {n} px as --image-size gives it; the shapes read {px} px ({}x{} patches of {stride}), and VALID patching drops the last {} px, so the grid and every weight are the source's",
                    grid.0,
                    grid.1,
                    n.saturating_sub(px)
                ));
            }
        }
        if let (None, Some(px)) = (opts.image_size, arch.image_size()) {
            // A grid of 14-px patches reads as 378 px (27 x 14) where the model was published at 384 px: VALID
            // patching drops the rest. The size a user knows it by is the round one in the same grid.
            if let Some(n) = grid::published_size(px, stride) {
                notes.push(format!(
                    "resolution: {px} px is what the {}x{} grid of {stride}-px patches covers; a model published at {n} px (VALID patching drops the last {} px) is declared so with --image-size {n}, with the same weights",
                    grid.0,
                    grid.1,
                    n.saturating_sub(px)
                ));
            }
        }
        match (arch.grid, &tower.pos) {
            (_, PosEmbed::Sincos2d) => notes.push(format!(
                "position embedding: sincos2d computed for the {}x{} grid ({image_size} px)",
                grid.0, grid.1
            )),
            (_, PosEmbed::Grid { grid: (h, w), .. }) => notes.push(format!(
                "position embedding: the learned {h}x{w} grid written as stored; the model resizes it to each image's patch grid (bilinear, antialias, half-pixel centres), so no resolution is fixed"
            )),
            (Some(from), PosEmbed::Table { class_row, .. }) if from != grid => notes.push(format!(
                "position embedding grid resized from {}x{} to {}x{} ({image_size} px) with --resize {}{}",
                from.0,
                from.1,
                grid.0,
                grid.1,
                opts.resize.as_str(),
                if *class_row { "; class-token row unchanged" } else { "" }
            )),
            _ => {}
        }
        let mut dropped = model.left_out.clone();
        // A vision-language model's LLM is never converted: the user asks for the image tower alone.
        match (opts.tower, &model.llm) {
            (TowerChoice::All, Some(llm)) => {
                return Err(Error::LanguageModelNotConverted {
                    generation: llm.arch.generation,
                    params: llm.params,
                    bytes: llm.bytes,
                })
            }
            (TowerChoice::Image, Some(llm)) => {
                dropped.extend(llm.tensors.iter().cloned());
                notes.push(format!(
                    "{} language model left out (--tower image; {}): the output is the image tower with its projection to the LLM width {}",
                    llm.arch.name(),
                    crate::model::size_words(llm.params, llm.bytes),
                    llm.arch.width
                ));
            }
            (_, None) => {}
        }
        match (opts.tower, &model.text, &model.logit) {
            (TowerChoice::Image, None, _) if model.llm.is_some() => {}
            (TowerChoice::Image, None, _) => return Err(Error::NotTwoTower),
            (TowerChoice::Image, Some(text), logit) => {
                dropped.extend(text_tensors(text, logit.as_ref()));
                notes.push(format!(
                    "text tower ({} blocks, width {}) and the logit scale and bias left out (--tower image): the output is the image tower alone, whose features are the image embedding before L2 normalisation",
                    text.arch.depth, text.arch.width
                ));
            }
            (TowerChoice::All, _, _) => {}
        }
        let keep_head = match (opts.head, arch.num_classes) {
            (HeadChoice::Keep, c) => c.is_some(),
            (HeadChoice::NumClasses(0) | HeadChoice::Drop, _) => false,
            (HeadChoice::NumClasses(n), Some(c)) if n == c => true,
            (HeadChoice::NumClasses(n), c) => {
                return Err(Error::NumClassesMismatch { asked: n, found: c })
            }
        };
        if let Some(labels) = &opts.labels {
            match (keep_head, arch.num_classes) {
                (true, Some(c)) if c == labels.len() => {}
                (true, Some(c)) => {
                    return Err(Error::LabelCount {
                        given: labels.len(),
                        classes: c,
                    })
                }
                _ => {
                    return Err(Error::LabelsWithoutHead {
                        given: labels.len(),
                    })
                }
            }
        }
        if let (false, Some(head)) = (keep_head, &tower.head) {
            dropped.extend([head.kernel.tensor.clone(), head.bias.tensor.clone()]);
            notes.push(
                "head dropped (--drop-head / --num-classes 0): the model outputs pooled features"
                    .to_string(),
            );
        }
        if let (false, Some(pre)) = (keep_head, &tower.pre_logits) {
            dropped.extend([pre.kernel.tensor.clone(), pre.bias.tensor.clone()]);
            notes.push(
                "pre_logits (dense + tanh) dropped with the head: features are the pooled encoder_norm output".to_string(),
            );
        }
        // A two-tower model keeps its own [-1, 1] input unless asked otherwise: SigLIP's preprocessing is mean
        // and std 0.5 in every library that loads it.
        let norm = match (
            opts.input_norm,
            model.text.is_some() && opts.tower == TowerChoice::All,
        ) {
            (None, true) => InputNorm::Unit,
            _ => opts.input_norm(),
        };
        notes.push(format!(
            "input normalisation: {} (mean {:?}, std {:?} on [0, 1] pixels){}",
            norm.as_str(),
            norm.mean(),
            norm.std(),
            if norm == InputNorm::Unit {
                ", the source's own"
            } else {
                ", folded into the patch embedding"
            }
        ));
        let two_tower = model.text.is_some() && opts.tower == TowerChoice::All;
        let tokenizer = match (&opts.tokenizer, &model.text) {
            (None, _) => None,
            (Some(_), _) if !two_tower => {
                return Err(Error::TokenizerWithoutText {
                    what: if model.text.is_some() {
                        "the image tower alone (--tower image)"
                    } else {
                        "a single-tower ViT"
                    },
                })
            }
            (Some(path), text) => {
                let sp = crate::tokenizer::read(path)?;
                sp.check_vocab(text.as_ref().map(|t| t.arch.vocab).unwrap_or(0))?;
                notes.push(match sp.kind {
                    crate::tokenizer::Kind::Siglip => format!(
                        "tokenizer: {} (SigLIP kind: {} pieces, </s> = id {}) written as spiece.model with SiglipTokenizer configs; SigLIP reads sequences padded with </s> to the full context (padding='max_length')",
                        path.display(),
                        sp.pieces,
                        sp.eos_id
                    ),
                    crate::tokenizer::Kind::Gemma => format!(
                        "tokenizer: {} (Gemma kind: {} pieces, <pad> 0, <eos> 1, <bos> 2) written as tokenizer.json (a fast tokenizer built from the pieces) and tokenizer.model; as big_vision's SigLIP 2: ASCII-only lowercase, no BOS, <eos> appended and kept last when truncating, <pad> to the full context (padding='max_length')",
                        path.display(),
                        sp.pieces
                    ),
                });
                Some(sp)
            }
        };
        if two_tower && tokenizer.is_none() {
            notes.push(
                "no tokenizer: the .npz holds no vocabulary; text input needs the model's SentencePiece tokenizer (convert with --tokenizer spiece.model to include it)"
                    .to_string(),
            );
        }
        Ok(Prepared {
            model,
            opts,
            grid,
            image_size,
            keep_head,
            norm,
            notes,
            dropped,
            tokenizer,
        })
    }

    /// Refuses an input normalisation that cannot be folded exactly; layouts call it after their own
    /// structural refusals, so a source the layout cannot hold at all is told that first.
    pub fn check_input_norm(&self) -> Result<()> {
        if self.norm != InputNorm::Unit && self.arch().resnet.is_some() {
            return Err(Error::InputNormHybrid {
                norm: self.norm.as_str(),
            });
        }
        if self.norm != InputNorm::Unit && self.arch().patch_embed == PatchEmbedKind::Linear {
            return Err(Error::InputNormNaflex {
                norm: self.norm.as_str(),
            });
        }
        Ok(())
    }

    /// A NaFlex tower's stored position grid and its rows and columns; `None` for a fixed-resolution tower.
    /// Layouts that hold NaFlex models take this branch; the others refuse it in [`Prepared::pos_table`].
    pub fn naflex_grid(&self) -> Option<(&'a Param, (usize, usize))> {
        match &self.model.image.pos {
            PosEmbed::Grid { param, grid } => Some((param, *grid)),
            _ => None,
        }
    }

    /// Whether both towers of a two-tower model are to be written (not `--tower image`).
    pub fn two_tower(&self) -> bool {
        self.model.text.is_some() && self.opts.tower == TowerChoice::All
    }

    /// The architecture of the image tower.
    pub fn arch(&self) -> &Arch {
        &self.model.image.arch
    }

    /// The image tower being converted.
    pub fn tower(&self) -> &'a Tower {
        &self.model.image
    }

    /// Whether `pre_logits` is still to be written (source has it and the head is kept).
    pub fn has_pre_logits(&self) -> bool {
        self.arch().representation.is_some() && self.keep_head
    }

    /// The image tower's semantics, as its source states them.
    pub fn semantics(&self) -> &'a Semantics {
        &self.tower().semantics
    }

    /// The GELU the output declares for a tower of `semantics`: `--gelu` where given, else the tower's own.
    pub fn gelu_for(&self, semantics: &Semantics) -> Gelu {
        self.opts.gelu.unwrap_or(match semantics.activation {
            Activation::GeluTanh => Gelu::Tanh,
            Activation::GeluErf => Gelu::Erf,
        })
    }

    /// The GELU the output declares for the image tower.
    pub fn gelu(&self) -> Gelu {
        self.gelu_for(self.semantics())
    }

    /// Refuses a tower whose LayerNorm epsilon is not `fixed`, the one a layout's library builds its norms with
    /// and cannot be told otherwise.
    pub fn require_eps(
        &self,
        tower: &'static str,
        semantics: &Semantics,
        fixed: f64,
        why: &'static str,
    ) -> Result<()> {
        if semantics.norm_eps == fixed {
            return Ok(());
        }
        Err(self.refuse(
            Part::NormEps {
                tower,
                eps: format!("{:e}", semantics.norm_eps),
            },
            why,
        ))
    }

    /// A refusal for this layout: `what` describes the part of the source with its sizes, `why` is the
    /// layout's fixed reason and fix.
    pub fn refuse(&self, what: Part, why: &'static str) -> Error {
        Error::Refused {
            layout: self.opts.layout.as_str(),
            what,
            why,
        }
    }

    /// The class names `--labels` gave (checked against the head kept), if any.
    pub fn labels(&self) -> Option<&[String]> {
        self.opts.labels.as_deref().filter(|_| self.keep_head)
    }
}

/// Every tensor of a text tower and the logit scalars, for the list of what `--tower image` leaves out.
fn text_tensors(text: &TextTower, logit: Option<&Logit>) -> Vec<String> {
    let mut names: Vec<String> = vec![text.embedding.tensor.clone(), text.pos.tensor.clone()];
    for b in &text.blocks {
        names.extend(b.params().iter().map(|p| p.tensor.clone()));
    }
    names.extend([
        text.final_norm.scale.tensor.clone(),
        text.final_norm.bias.tensor.clone(),
    ]);
    if let Some(h) = &text.head {
        names.extend([h.kernel.tensor.clone(), h.bias.tensor.clone()]);
    }
    if let Some(l) = logit {
        names.push(l.scale.tensor.clone());
        names.extend(l.bias.iter().map(|b| b.tensor.clone()));
    }
    // Stacked blocks name the same tensor once per block.
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Layout;
    use crate::sources::vit_jax::tests::fixtures;

    /// The model a fixture's checkpoint reads as; `case` is its folder under `fixtures/`.
    pub fn model(case: &str) -> Model {
        let path = fixtures().join(case).join("checkpoint.npz");
        let file = vitconv_tensors::TensorFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        crate::sources::read(file.tensors()).unwrap_or_else(|e| panic!("{case}: {e}"))
    }

    /// The options of `layout` with `f` applied.
    pub fn opts(layout: Layout, f: impl FnOnce(&mut Options)) -> Options {
        let mut o = Options::new(layout);
        f(&mut o);
        o
    }

    /// The error `Prepared::new` gives, where it must refuse.
    pub fn refusal(model: &Model, opts: &Options) -> Error {
        match Prepared::new(model, opts) {
            Ok(_) => panic!("{} was accepted", model.recognised),
            Err(e) => e,
        }
    }

    #[test]
    fn the_source_grid_and_resolution_are_kept_without_image_size() {
        for (case, grid, px) in [
            ("vit-token", (4, 4), 64),
            // A hybrid's stride is its patch times the stem's: patch 1 behind a 2-stage stem is 8 px.
            ("hybrid-r2", (8, 8), 64),
        ] {
            let m = model(case);
            let o = Options::new(Layout::Timm);
            let p = Prepared::new(&m, &o).expect("prepared");
            assert_eq!((p.grid, p.image_size), (grid, px), "{case}");
            assert!(
                !p.notes.iter().any(|n| n.starts_with("resolution")),
                "{case}"
            );
        }
        // A sincos2d tower stores no grid: its resolution must be asked for.
        let sincos = model("big_vision/bv-vit-gap-sincos");
        assert!(matches!(
            refusal(&sincos, &Options::new(Layout::Timm)),
            Error::ImageSizeRequired { stride: 8 }
        ));
        let o = opts(Layout::Timm, |o| o.image_size = Some(32));
        let p = Prepared::new(&sincos, &o).expect("32 px");
        assert_eq!(p.grid, (4, 4));
        assert!(
            p.notes
                .iter()
                .any(|n| n == "position embedding: sincos2d computed for the 4x4 grid (32 px)"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn image_size_sets_the_grid_from_the_stride_and_says_the_resize() {
        let m = model("vit-token");
        let o = opts(Layout::Timm, |o| o.image_size = Some(96));
        let p = Prepared::new(&m, &o).expect("96 px is 6x6 patches of 16");
        assert_eq!((p.grid, p.image_size), ((6, 6), 96));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("resized from 4x4 to 6x6") && n.contains("class-token row")),
            "{:?}",
            p.notes
        );
        let hybrid = model("hybrid-r2");
        let o = opts(Layout::Timm, |o| o.image_size = Some(128));
        let p = Prepared::new(&hybrid, &o).expect("128 px is 16x16 cells of 8");
        assert_eq!(p.grid, (16, 16));
        // 100 px is no multiple of the hybrid's 8-px stride (its patch is 1).
        let o = opts(Layout::Timm, |o| o.image_size = Some(100));
        assert!(matches!(
            refusal(&hybrid, &o),
            Error::ImageSizeNotMultiple {
                size: 100,
                stride: 8
            }
        ));
    }

    #[test]
    fn bad_image_sizes_are_refused() {
        let m = model("vit-token");
        let refused = |size| refusal(&m, &opts(Layout::Timm, |o| o.image_size = Some(size)));
        assert!(matches!(
            refused(0),
            Error::ImageSizeNotMultiple {
                size: 0,
                stride: 16
            }
        ));
        assert!(matches!(
            refused(100),
            Error::ImageSizeNotMultiple {
                size: 100,
                stride: 16
            }
        ));
        // A multiple of the patch, but over the limit: the size limit speaks first.
        let over = MAX_IMAGE_SIZE + 16;
        assert!(matches!(
            refused(over),
            Error::ImageSizeTooLarge { size, max: MAX_IMAGE_SIZE } if size == over
        ));
        assert!(Prepared::new(
            &m,
            &opts(Layout::Timm, |o| o.image_size = Some(MAX_IMAGE_SIZE))
        )
        .is_ok());
        // A NaFlex tower takes each image's own grid: no size is chosen for it.
        let naflex = model("siglip2/siglip2-naflex-tiny");
        let o = opts(Layout::Hf, |o| o.image_size = Some(64));
        assert!(matches!(
            refusal(&naflex, &o),
            Error::NaflexImageSize {
                size: 64,
                grid: (4, 4)
            }
        ));
        let hf = Options::new(Layout::Hf);
        let p = Prepared::new(&naflex, &hf).expect("NaFlex");
        assert_eq!((p.grid, p.image_size), ((4, 4), 32), "grid x patch 8");
    }

    #[test]
    fn a_size_off_the_stride_is_taken_where_it_patches_to_the_source_grid() {
        let m = model("vit-token");
        // 70 px is 4 patches of 16 and 6 px VALID patching drops: the source's own grid.
        let o = opts(Layout::Timm, |o| o.image_size = Some(70));
        let p = Prepared::new(&m, &o).expect("the source's grid");
        assert_eq!((p.grid, p.image_size), ((4, 4), 70));
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("resolution: 70 px") && n.contains("drops the last 6 px")),
            "{:?}",
            p.notes
        );
        // 90 px patches to 5x5, not the source's grid: refused rather than truncated.
        assert!(matches!(
            refusal(&m, &opts(Layout::Timm, |o| o.image_size = Some(90))),
            Error::ImageSizeNotMultiple { size: 90, .. }
        ));
    }

    #[test]
    fn a_resolution_off_the_round_sizes_names_the_published_one() {
        let mut m = model("vit-token");
        // Patches of 14 over the 4x4 grid cover 56 px; a model published so would be known as 64 px.
        m.image.arch.patch = 14;
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        assert_eq!(p.image_size, 56);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("56 px") && n.contains("--image-size 64")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn the_head_is_kept_dropped_or_refused_as_asked() {
        let m = model("vit-token");
        let head = m.image.head.as_ref().expect("vit-token has a head");
        let head_names = [head.kernel.tensor.clone(), head.bias.tensor.clone()];
        let asked = |h| opts(Layout::Timm, |o| o.head = h);
        let (keep, ten, mismatch) = (
            asked(HeadChoice::Keep),
            asked(HeadChoice::NumClasses(10)),
            asked(HeadChoice::NumClasses(7)),
        );
        let prep = |o| Prepared::new(&m, o);
        let kept = prep(&keep).expect("keep");
        assert!(kept.keep_head && kept.dropped.is_empty());
        assert!(prep(&ten).expect("10 classes").keep_head);
        for drop in [HeadChoice::Drop, HeadChoice::NumClasses(0)] {
            let o = asked(drop);
            let p = Prepared::new(&m, &o).expect("drop");
            assert!(!p.keep_head);
            assert_eq!(p.dropped, head_names);
            assert!(p.notes.iter().any(|n| n.starts_with("head dropped")));
        }
        match prep(&mismatch).err() {
            Some(Error::NumClassesMismatch {
                asked: 7,
                found: Some(10),
            }) => {}
            other => panic!("{other:?}"),
        }
        // pre_logits goes with the head, and is said so.
        let pre = model("vit-prelogits");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&pre, &o).expect("keep");
        assert!(p.has_pre_logits());
        let drop = asked(HeadChoice::Drop);
        let p = Prepared::new(&pre, &drop).expect("drop");
        assert!(!p.has_pre_logits());
        assert_eq!(p.dropped.len(), 4, "{:?}", p.dropped);
        assert!(p.notes.iter().any(|n| n.starts_with("pre_logits")));
    }

    #[test]
    fn labels_must_match_a_kept_head() {
        let m = model("vit-token");
        let names = |n: usize| Some((0..n).map(|i| format!("class {i}")).collect::<Vec<_>>());
        let o = opts(Layout::Timm, |o| o.labels = names(10));
        let p = Prepared::new(&m, &o).expect("10 labels for 10 classes");
        assert_eq!(p.labels().map(<[String]>::len), Some(10));
        assert!(matches!(
            refusal(&m, &opts(Layout::Timm, |o| o.labels = names(9))),
            Error::LabelCount {
                given: 9,
                classes: 10
            }
        ));
        let o = opts(Layout::Timm, |o| {
            o.labels = names(10);
            o.head = HeadChoice::Drop;
        });
        assert!(matches!(
            refusal(&m, &o),
            Error::LabelsWithoutHead { given: 10 }
        ));
        assert_eq!(
            Prepared::new(&m, &Options::new(Layout::Timm))
                .expect("no labels")
                .labels(),
            None
        );
    }

    #[test]
    fn the_input_norm_is_the_layouts_unless_asked_or_two_tower() {
        let vit = model("vit-token");
        let siglip = model("big_vision/siglip-tiny");
        let norm = |m: &Model, o: Options| Prepared::new(m, &o).expect("prepared").norm;
        assert_eq!(norm(&vit, Options::new(Layout::Timm)), InputNorm::Unit);
        assert_eq!(norm(&vit, Options::new(Layout::OpenClip)), InputNorm::Clip);
        let asked = |n| opts(Layout::Timm, move |o| o.input_norm = Some(n));
        assert_eq!(norm(&vit, asked(InputNorm::Imagenet)), InputNorm::Imagenet);
        // A two-tower model keeps its own [-1, 1] input even where the layout's default is CLIP's...
        assert_eq!(
            norm(&siglip, Options::new(Layout::OpenClip)),
            InputNorm::Unit
        );
        // ...but its image tower alone takes the layout's default.
        let image = opts(Layout::OpenClip, |o| o.tower = TowerChoice::Image);
        assert_eq!(norm(&siglip, image), InputNorm::Clip);
        let o = Options::new(Layout::OpenClip);
        let p = Prepared::new(&vit, &o).expect("prepared");
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("input normalisation: clip")
                    && n.ends_with("folded into the patch embedding")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn an_input_norm_that_cannot_be_folded_is_refused() {
        let asked = |layout| opts(layout, |o| o.input_norm = Some(InputNorm::Imagenet));
        let hybrid = model("hybrid-r2");
        let o = asked(Layout::Timm);
        let p = Prepared::new(&hybrid, &o).expect("prepared");
        assert!(matches!(
            p.check_input_norm(),
            Err(Error::InputNormHybrid { norm: "imagenet" })
        ));
        let naflex = model("siglip2/siglip2-naflex-tiny");
        let o = asked(Layout::Hf);
        let p = Prepared::new(&naflex, &o).expect("prepared");
        assert!(matches!(
            p.check_input_norm(),
            Err(Error::InputNormNaflex { norm: "imagenet" })
        ));
        let vit = model("vit-token");
        let o = asked(Layout::Timm);
        let p = Prepared::new(&vit, &o).expect("prepared");
        assert!(p.check_input_norm().is_ok());
    }

    #[test]
    fn tower_image_leaves_out_every_text_tensor_once_and_says_so() {
        let m = model("big_vision/siglip-tiny");
        let both = Options::new(Layout::Hf);
        let p = Prepared::new(&m, &both).expect("both towers");
        assert!(p.two_tower() && p.dropped.is_empty());
        let o = opts(Layout::Hf, |o| o.tower = TowerChoice::Image);
        let p = Prepared::new(&m, &o).expect("image tower");
        assert!(!p.two_tower());
        let text = m.text.as_ref().expect("a text tower");
        let logit = m.logit.as_ref().expect("logit scalars");
        for name in [
            &text.embedding.tensor,
            &text.pos.tensor,
            &text.final_norm.scale.tensor,
            &logit.scale.tensor,
        ] {
            assert!(p.dropped.contains(name), "{name} not in {:?}", p.dropped);
        }
        for b in &text.blocks {
            for param in b.params() {
                assert!(p.dropped.contains(&param.tensor), "{}", param.tensor);
            }
        }
        let mut unique = p.dropped.clone();
        unique.dedup();
        assert_eq!(unique, p.dropped, "sorted, each tensor once");
        assert!(p
            .notes
            .iter()
            .any(|n| n.starts_with("text tower (2 blocks, width 64)")));
        // A single-tower ViT has no text tower to leave out.
        assert!(matches!(
            refusal(&model("vit-token"), &o),
            Error::NotTwoTower
        ));
    }

    #[test]
    fn a_language_model_is_never_converted_and_left_out_with_tower_image() {
        let m = model("siglip2/paligemma-tower-tiny");
        let llm = m.llm.as_ref().expect("an LLM");
        assert!(matches!(
            refusal(&m, &Options::new(Layout::Timm)),
            Error::LanguageModelNotConverted { .. }
        ));
        let o = opts(Layout::Timm, |o| o.tower = TowerChoice::Image);
        let p = Prepared::new(&m, &o).expect("the image tower");
        assert!(llm.tensors.iter().all(|t| p.dropped.contains(t)));
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("language model left out")));
    }

    #[test]
    fn a_tokenizer_needs_a_text_tower_and_its_absence_is_said() {
        let path = std::path::PathBuf::from("no/such/spiece.model");
        let with_tokenizer = |tower| {
            opts(Layout::Hf, |o| {
                o.tokenizer = Some(path.clone());
                o.tower = tower;
            })
        };
        // Refused before the file is read: the path does not exist.
        assert!(matches!(
            refusal(&model("vit-token"), &with_tokenizer(TowerChoice::All)),
            Error::TokenizerWithoutText {
                what: "a single-tower ViT"
            }
        ));
        let siglip = model("big_vision/siglip-tiny");
        assert!(matches!(
            refusal(&siglip, &with_tokenizer(TowerChoice::Image)),
            Error::TokenizerWithoutText { .. }
        ));
        let o = Options::new(Layout::Hf);
        let p = Prepared::new(&siglip, &o).expect("no tokenizer");
        assert!(p.tokenizer.is_none());
        assert!(p.notes.iter().any(|n| n.starts_with("no tokenizer")));
    }
}
