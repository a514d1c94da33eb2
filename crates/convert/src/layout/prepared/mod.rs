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
use crate::model::{Logit, Model, Param, PosEmbed, TextTower, Tower};
use crate::options::{HeadChoice, InputNorm, Options, TowerChoice};
use crate::tokenizer::SentencePiece;

pub use grid::{MAX_GRID_CELLS, MAX_IMAGE_SIZE, MAX_TABLE_VALUES};
pub use python::{mlp_ratio, py_float, py_str};
pub use tables::{name, BlockRole, BlockTable, MapRole, MapTable, TextRole, TextTable};

/// How a NaFlex model resizes its position grid to each image's patch grid, as `vitconv.config` declares it
/// (`pos_resize`): bilinear with antialias and half-pixel centres, big_vision's `jax.image.scale_and_translate`
/// and PyTorch's `F.interpolate(mode='bilinear', align_corners=False, antialias=True)`.
pub const NAFLEX_POS_RESIZE: &str = "bilinear_antialias";

/// LayerNorm epsilon of the flax model (`nn.LayerNorm` default).
pub const FLAX_LN_EPS: f64 = 1e-6;

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
