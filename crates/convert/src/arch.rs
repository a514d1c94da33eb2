//! The architecture of a Vision Transformer as read off its tensor shapes: sizes, pooling, head, hybrid stem.

use serde::{Deserialize, Serialize};

/// How the encoder output becomes one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classifier {
    /// A learned class token is prepended; its output (token 0) is the image representation.
    Token,
    /// No class token; the mean over all tokens after the final norm (vit_jax `classifier='gap'`).
    Gap,
    /// A learned probe attends over all tokens after the final norm, then a LayerNorm + MLP residual
    /// (big_vision `pool_type='map'`, `MAPHead_0`).
    Map,
    /// No pooling at all: every token after the final norm goes through the head on its own (big_vision
    /// `pool_type='none'`, the image tower of PaliGemma, whose head projects each token to the LLM width).
    None,
}

impl Classifier {
    /// The name used in reports and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Classifier::Token => "token",
            Classifier::Gap => "gap",
            Classifier::Map => "map",
            Classifier::None => "none",
        }
    }
}

/// A BiT-style ResNet stem in front of the patch embedding (vit_jax hybrids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResNet {
    /// Units per stage; empty for a root-only stem (conv, norm, max-pool).
    pub stages: Vec<usize>,
    /// Channels of the root convolution (64 times the width factor).
    pub width: usize,
}

impl ResNet {
    /// Channels of stage `s` (0-based) bottleneck interior; the stage outputs four times this.
    pub fn stage_width(&self, s: usize) -> usize {
        self.width << s.min(16)
    }

    /// Channels the stem hands to the patch embedding.
    pub fn out_channels(&self) -> usize {
        match self.stages.len() {
            0 => self.width,
            n => self.stage_width(n.saturating_sub(1)).saturating_mul(4),
        }
    }

    /// Spatial reduction of the stem: root conv /2, max-pool /2, then /2 for every stage after the first.
    pub fn stride(&self) -> usize {
        4 << self.stages.len().saturating_sub(1).min(16)
    }

    /// The conventional name: `R50` for (3, 4, 9), `R26` for (2, 2, 2, 2), `R` for a root-only stem.
    pub fn name(&self) -> String {
        if self.stages.is_empty() {
            "R".to_string()
        } else {
            let units = self.stages.iter().fold(0usize, |a, &u| a.saturating_add(u));
            format!("R{}", units.saturating_mul(3).saturating_add(2))
        }
    }
}

/// Where the position embedding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEmbKind {
    /// A stored, learned table.
    Learned,
    /// big_vision's fixed 2-D sine-cosine embedding, computed from the grid and the width, never stored.
    Sincos2d,
    /// A stored, learned `[G, G, D]` grid that the model resizes to each image's patch grid (bilinear with
    /// antialias, half-pixel centres: SigLIP 2 NaFlex, big_vision `naflex_vit.py`): no fixed resolution.
    #[serde(rename = "learned_grid")]
    LearnedGrid,
}

/// Channels of a linear (NaFlex) patch embedding's patches: its kernel's rows are `p * p * 3`, and the rows
/// alone cannot tell channels from pixels. RGB is what big_vision's NaFlex preprocessing cuts and what
/// transformers' `Siglip2` (`num_channels` 3) and timm's `NaFlexVit` (`in_chans` 3) read.
pub const LINEAR_PATCH_CHANNELS: usize = 3;

/// The patch side of a linear patch embedding with `rows` inputs (`p * p * LINEAR_PATCH_CHANNELS`), if the rows
/// are that for some `p > 0`.
pub fn linear_patch_side(rows: usize) -> Option<usize> {
    let p = rows.checked_div(LINEAR_PATCH_CHANNELS)?.isqrt();
    let back = p
        .checked_mul(p)
        .and_then(|a| a.checked_mul(LINEAR_PATCH_CHANNELS));
    (p > 0 && back == Some(rows)).then_some(p)
}

/// How patches become tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchEmbedKind {
    /// A `p x p` convolution with stride `p` over the image (HWIO kernel `[p, p, in, D]`).
    Conv,
    /// A dense layer over each patch flattened in (py, px, c) order (kernel `[p * p * in, D]`), fed patches the
    /// preprocessing cut out (SigLIP 2 NaFlex). On a fixed grid the two are the same map; the linear form
    /// comes with a position grid resized per image ([`PosEmbKind::LearnedGrid`]).
    Linear,
}

impl PatchEmbedKind {
    /// The name used in metadata (`patch_embed`).
    pub fn as_str(self) -> &'static str {
        match self {
            PatchEmbedKind::Conv => "conv",
            PatchEmbedKind::Linear => "linear",
        }
    }
}

/// Everything about a ViT that its shapes determine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arch {
    /// Side of the square patch the embedding sees (after the stem, for hybrids).
    pub patch: usize,
    /// How the patches are embedded: a convolution, or a dense layer over flattened patches (NaFlex).
    pub patch_embed: PatchEmbedKind,
    /// Channels the patch embedding reads: 3 for plain ViTs, the stem's output for hybrids.
    pub in_chans: usize,
    /// Width of the token embeddings.
    pub hidden: usize,
    /// `None` where the weights do not say (fused q/k/v layouts).
    pub heads: Option<usize>,
    /// Width of each block's MLP interior.
    pub mlp: usize,
    /// Number of encoder blocks.
    pub depth: usize,
    /// Patch grid (rows, columns); `None` where the file does not store it (a computed sincos2d position
    /// embedding), so that the resolution must come from the user. For a NaFlex tower
    /// ([`PosEmbKind::LearnedGrid`]) it is the stored position grid, which the model resizes to each image's
    /// patch grid: no image size follows from it.
    pub grid: Option<(usize, usize)>,
    /// How the position embedding is made.
    pub posemb: PosEmbKind,
    /// How the encoder's tokens are pooled for the head.
    pub classifier: Classifier,
    /// Whether the class token is given a position embedding (vit_jax: prepended first; big_vision `tok`:
    /// concatenated after the position embedding is added, so it has none).
    pub class_pos: bool,
    /// Classes of the head, where the source has one.
    pub num_classes: Option<usize>,
    /// Width of the `pre_logits` dense + tanh layer, where there is one.
    pub representation: Option<usize>,
    /// The ResNet stem of a hybrid, where there is one.
    pub resnet: Option<ResNet>,
    /// Whether the blocks are stored stacked along a leading depth axis (big_vision's scan format).
    pub stacked: bool,
}

impl Arch {
    /// Width of one attention head, where the number of heads is known and divides the hidden width.
    pub fn head_dim(&self) -> Option<usize> {
        self.heads.and_then(|h| self.hidden.checked_div(h))
    }

    /// Pixels per patch-grid cell: the patch times the stem's reduction.
    pub fn stride(&self) -> usize {
        self.patch
            .saturating_mul(self.resnet.as_ref().map_or(1, ResNet::stride))
    }

    /// Image side in pixels (the grid is square for every published checkpoint; rows are used), where the
    /// file says; `None` for a NaFlex tower, which has no fixed resolution.
    pub fn image_size(&self) -> Option<usize> {
        if self.naflex() {
            return None;
        }
        self.grid.map(|g| g.0.saturating_mul(self.stride()))
    }

    /// Whether the tower is a NaFlex tower: patches of any image's grid, a position grid resized per image.
    pub fn naflex(&self) -> bool {
        self.posemb == PosEmbKind::LearnedGrid
    }

    /// Whether the model has a class token (token pooling).
    pub fn class_token(&self) -> bool {
        self.classifier == Classifier::Token
    }

    /// The paper's size name (`Ti`, `S`, `B`, `L`, `H`, `g`, `G`) when hidden, depth and heads match one.
    pub fn size_name(&self) -> Option<&'static str> {
        const SIZES: &[(usize, usize, usize, &str)] = &[
            (192, 12, 3, "Ti"),
            (384, 12, 6, "S"),
            (768, 12, 12, "B"),
            (1024, 24, 16, "L"),
            (1280, 32, 16, "H"),
            (1408, 40, 16, "g"),
            (1664, 48, 16, "G"),
            // The shape-optimised SigLIP tower (PaliGemma's image encoder), named as big_vision names it.
            (1152, 27, 16, "So400m"),
        ];
        SIZES
            .iter()
            .find(|(d, l, h, _)| {
                *d == self.hidden && *l == self.depth && self.heads.is_none_or(|x| x == *h)
            })
            .map(|s| s.3)
    }

    /// `ViT-L/32`, `R50+ViT-B/16`, or `ViT/16` for sizes without a name.
    pub fn name(&self) -> String {
        let vit = match self.size_name() {
            Some(s) => format!("ViT-{s}"),
            None => "ViT".to_string(),
        };
        match &self.resnet {
            Some(r) => format!("{}+{vit}/{}", r.name(), self.stride()),
            None => format!("{vit}/{}", self.patch),
        }
    }

    /// The one-line description `inspect` and `npz-to-pt` print.
    pub fn describe(&self) -> String {
        let heads = match (self.heads, self.head_dim()) {
            (Some(h), _) => format!("{h} heads"),
            (None, _) => "heads not stored (fused q/k/v)".to_string(),
        };
        let pool = match (self.classifier, self.class_pos) {
            (Classifier::Token, true) => "+ class token",
            (Classifier::Token, false) => "+ class token without a position embedding",
            (Classifier::Gap, _) => "no class token, mean pooling",
            (Classifier::Map, _) => "no class token, MAP head pooling",
            (Classifier::None, _) => "no class token, no pooling",
        };
        let classes = match (self.num_classes, self.classifier) {
            (Some(c), Classifier::None) => format!("head {} -> {c} per token", self.hidden),
            (Some(c), _) => format!("{c} classes"),
            (None, _) => "no head".to_string(),
        };
        let pre = match self.representation {
            Some(r) => format!("pre_logits {r}"),
            None => "no pre_logits".to_string(),
        };
        let resolution = match (self.grid, self.image_size()) {
            (Some((h, w)), Some(px)) => format!("{px} px ({h}x{w} grid {pool})"),
            (Some((h, w)), None) if self.naflex() => format!(
                "no fixed resolution (NaFlex: a learned {h}x{w} position grid resized to each image's patch grid, {pool})"
            ),
            _ => format!("resolution not stored (sincos2d position embedding, {pool})"),
        };
        let layers = if self.stacked {
            format!("{} layers (stacked, scan format)", self.depth)
        } else {
            format!("{} layers", self.depth)
        };
        format!(
            "{}: hidden {}, {layers}, {heads}, mlp {}, {resolution}, {classes}, {pre}",
            self.name(),
            self.hidden,
            self.mlp,
        )
    }

    /// One sentence per part, for users asking what the tensors are.
    pub fn parts(&self) -> Vec<String> {
        self.parts_with(true, &format!("[1, 1, {}]", self.hidden))
    }

    /// [`Arch::parts`] for layouts whose patch convolution may lack a bias (CLIP-style `conv1`) and whose
    /// class token has another shape (`class_embedding` is `[D]`).
    pub fn parts_with(&self, patch_bias: bool, class_shape: &str) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(r) = &self.resnet {
            let stages = if r.stages.is_empty() {
                "no stages (root only)".to_string()
            } else {
                let widths: Vec<String> = (0..r.stages.len())
                    .map(|s| r.stage_width(s).saturating_mul(4).to_string())
                    .collect();
                format!(
                    "stages {:?} bottleneck units, output widths {}",
                    r.stages,
                    widths.join("/")
                )
            };
            parts.push(format!(
                "ResNet stem ({}): 7x7/2 StdConv root with {} channels, GroupNorm(32), 3x3/2 max-pool, {stages}; total stride {}",
                r.name(),
                r.width,
                r.stride()
            ));
        }
        let values = self
            .patch
            .saturating_mul(self.patch)
            .saturating_mul(self.in_chans);
        parts.push(match self.patch_embed {
            PatchEmbedKind::Conv => format!(
                "patch embedding: {p}x{p}x{c} = {values} values -> {d} (a {p}x{p} convolution with stride {p}{})",
                if patch_bias { " and bias" } else { ", no bias" },
                p = self.patch,
                c = self.in_chans,
                d = self.hidden
            ),
            PatchEmbedKind::Linear => format!(
                "patch embedding: {p}x{p}x{c} = {values} values -> {d} (a linear map{} over each {p}x{p} patch flattened in (py, px, c) order; the patch size is read off the kernel's {values} rows)",
                if patch_bias { " with bias" } else { " without bias" },
                p = self.patch,
                c = self.in_chans,
                d = self.hidden
            ),
        });
        match self.classifier {
            Classifier::Token => parts.push(format!("class token: learned, {class_shape}")),
            Classifier::Gap => {
                parts.push("class token: none (global average pooling over the tokens)".to_string())
            }
            Classifier::Map => parts.push(
                "class token: none (a MAP head: a learned probe attends over the tokens, then LayerNorm + MLP)"
                    .to_string(),
            ),
            Classifier::None => parts.push(
                "class token: none, and no pooling: every token goes through the head on its own".to_string(),
            ),
        }
        let prefix = if self.class_token() && self.class_pos {
            "1 + "
        } else {
            ""
        };
        parts.push(match (self.posemb, self.grid) {
            (PosEmbKind::Learned, Some((h, w))) => format!(
                "position embedding: learned, {prefix}{h}x{w} rows of {}",
                self.hidden
            ),
            (PosEmbKind::LearnedGrid, Some((h, w))) => format!(
                "position embedding: a learned {h}x{w} grid of {}, resized to each image's patch grid (bilinear, antialias, half-pixel centres); no fixed resolution",
                self.hidden
            ),
            _ => "position embedding: sincos2d (computed, not stored): the resolution must be given with --image-size"
                .to_string(),
        });
        let heads = match (self.heads, self.head_dim()) {
            (Some(h), Some(dh)) => format!("{h} heads x {dh}"),
            _ => "heads not stored".to_string(),
        };
        parts.push(format!(
            "encoder: {} pre-norm blocks (attention {heads}, MLP {d} -> {} -> {d})",
            self.depth,
            self.mlp,
            d = self.hidden
        ));
        if let Some(r) = self.representation {
            parts.push(format!("pre_logits: dense {} -> {r} + tanh", self.hidden));
        }
        if let Some(c) = self.num_classes {
            parts.push(format!(
                "head: {} -> {c}{}",
                self.representation.unwrap_or(self.hidden),
                if self.classifier == Classifier::None {
                    ", applied to every token"
                } else {
                    ""
                }
            ));
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit_l32() -> Arch {
        Arch {
            patch: 32,
            patch_embed: PatchEmbedKind::Conv,
            in_chans: 3,
            hidden: 1024,
            heads: Some(16),
            mlp: 4096,
            depth: 24,
            grid: Some((12, 12)),
            posemb: PosEmbKind::Learned,
            classifier: Classifier::Token,
            class_pos: true,
            num_classes: Some(1000),
            representation: None,
            resnet: None,
            stacked: false,
        }
    }

    #[test]
    fn describes_vit_l32_like_the_issue() {
        assert_eq!(
            vit_l32().describe(),
            "ViT-L/32: hidden 1024, 24 layers, 16 heads, mlp 4096, 384 px (12x12 grid + class token), 1000 classes, no pre_logits"
        );
        let parts = vit_l32().parts();
        assert!(
            parts
                .iter()
                .any(|p| p.contains("32x32x3 = 3072 values -> 1024")),
            "{parts:?}"
        );
        assert!(
            parts.iter().any(|p| p.contains("1 + 12x12 rows")),
            "{parts:?}"
        );
    }

    #[test]
    fn linear_patch_sides_come_from_whole_rgb_patches() {
        assert_eq!(linear_patch_side(192), Some(8));
        assert_eq!(linear_patch_side(768), Some(16));
        assert_eq!(linear_patch_side(588), Some(14));
        for rows in [0, 1, 2, 190, 189, 64, usize::MAX] {
            assert_eq!(linear_patch_side(rows), None, "{rows}");
        }
    }

    #[test]
    fn resnet_strides_and_names() {
        let r50 = ResNet {
            stages: vec![3, 4, 9],
            width: 64,
        };
        assert_eq!(
            (r50.stride(), r50.out_channels(), r50.name()),
            (16, 1024, "R50".to_string())
        );
        let root = ResNet {
            stages: vec![],
            width: 64,
        };
        assert_eq!(
            (root.stride(), root.out_channels(), root.name()),
            (4, 64, "R".to_string())
        );
    }
}
