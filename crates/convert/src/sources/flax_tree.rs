//! The flax module tree of a ViT encoder as google-research/vision_transformer (`vit_jax`) and big_vision write
//! it: the tensor names of its blocks in each naming variant, which variant a listing uses, and the one reader
//! that checks an encoder's shapes and gives its blocks.
//!
//! An encoder `{root}{encoder}` (`Transformer/` in a ViT, `Encoder_0/` in big_vision's text tower) holds pre-norm
//! blocks and a final `encoder_norm`. A block holds two LayerNorms, a `MultiHeadDotProductAttention` (DenseGeneral
//! `query`, `key`, `value` kernels `[D, H, Dh]` with `[H, Dh]` biases, `out` `[H, Dh, D]`) and an `MlpBlock`
//! (`Dense_0` `[D, M]`, `Dense_1` `[M, D]`). The module names vary:
//!
//! - pre-Linen flax (the published vision_transformer files) numbers a block's sub-modules in creation order:
//!   `LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`;
//! - Linen (vision_transformer's linen port, and every big_vision file) numbers them per type: `LayerNorm_0`,
//!   `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`;
//! - the blocks are unrolled (`encoderblock_{i}/`), or stacked along a leading depth axis (`encoderblock/`,
//!   big_vision's `scan` format, where block i is slice i of every tensor).
//!
//! The names live here alone; the converter's sources and `verify`'s references both read them from here (the
//! references keep their own arithmetic). Nothing here knows a target layout.

use super::keys::{dims, Keys};
use crate::error::{Error, Result};
use crate::model::{Attention, Block, Dense, Norm, Param, Proj, MAX_DEPTH};

/// The encoder module of a ViT in both families.
pub const IMAGE_ENCODER: &str = "Transformer/";
/// The encoder module of big_vision's text tower.
pub const TEXT_ENCODER: &str = "Encoder_0/";

/// How the modules inside an encoder block are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The published 2020-2021 vision_transformer files: `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
    /// `LayerNorm_2`, `MlpBlock_3`.
    PreLinen,
    /// Linen modules, numbered per type: `LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`,
    /// `MlpBlock_0`.
    Linen,
}

/// The two LayerNorms of a pre-norm encoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNorm {
    /// Before attention (timm `norm1`).
    Attention,
    /// Before the MLP (timm `norm2`).
    Mlp,
}

/// The flax module name of an attention projection.
pub const fn proj_name(p: Proj) -> &'static str {
    match p {
        Proj::Query => "query",
        Proj::Key => "key",
        Proj::Value => "value",
        Proj::Out => "out",
    }
}

impl Naming {
    /// The attention module's name.
    pub const fn attention(self) -> &'static str {
        match self {
            Naming::PreLinen => "MultiHeadDotProductAttention_1",
            Naming::Linen => "MultiHeadDotProductAttention_0",
        }
    }

    /// The MLP module's name.
    pub const fn mlp_block(self) -> &'static str {
        match self {
            Naming::PreLinen => "MlpBlock_3",
            Naming::Linen => "MlpBlock_0",
        }
    }

    /// The name of the LayerNorm `which`.
    pub const fn norm(self, which: BlockNorm) -> &'static str {
        match (which, self) {
            (BlockNorm::Attention, _) => "LayerNorm_0",
            (BlockNorm::Mlp, Naming::PreLinen) => "LayerNorm_2",
            (BlockNorm::Mlp, Naming::Linen) => "LayerNorm_1",
        }
    }

    /// Parameter `p` (`kernel` or `bias`) of projection `proj`, relative to the module holding the attention.
    pub fn attn(self, proj: Proj, p: &str) -> String {
        format!("{}/{}/{p}", self.attention(), proj_name(proj))
    }

    /// Parameter `p` (`kernel` or `bias`) of the MLP's `Dense_{layer}` (0: hidden to mlp, 1: back), relative to
    /// the module holding the MLP.
    pub fn mlp(self, layer: usize, p: &str) -> String {
        format!("{}/Dense_{layer}/{p}", self.mlp_block())
    }

    /// Parameter `p` (`scale` or `bias`) of the LayerNorm `which`, relative to its block.
    pub fn block_norm(self, which: BlockNorm, p: &str) -> String {
        format!("{}/{p}", self.norm(which))
    }
}

/// The variants a family's files may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variants {
    /// The namings, the preferred first: a listing whose first block has none of them is read as the first
    /// (and refused by the missing names).
    pub namings: &'static [Naming],
    /// Whether the blocks may be stacked along a leading depth axis.
    pub may_stack: bool,
}

/// vision_transformer files: pre-Linen or Linen names, blocks always unrolled.
pub const VIT_JAX: Variants = Variants {
    namings: &[Naming::PreLinen, Naming::Linen],
    may_stack: false,
};

/// big_vision files: Linen names, blocks unrolled or stacked.
pub const BIG_VISION: Variants = Variants {
    namings: &[Naming::Linen],
    may_stack: true,
};

/// Where the tensors of one encoder live: the root above it, its module, the naming of its blocks and whether
/// they are stacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderTree {
    root: String,
    encoder: &'static str,
    naming: Naming,
    stacked: bool,
}

impl EncoderTree {
    /// The encoder `{root}{encoder}` (`encoder` ends in `/`) in the given variant.
    pub fn new(root: &str, encoder: &'static str, naming: Naming, stacked: bool) -> Self {
        EncoderTree {
            root: root.to_string(),
            encoder,
            naming,
            stacked,
        }
    }

    /// The variant of `variants` that the listing (`has` says whether it holds a name) uses for the encoder
    /// `{root}{encoder}`: stacked where allowed and the stacked tensor of the first LayerNorm is there, the first
    /// naming whose first block has a query kernel (else the preferred one, so that the caller's errors name what
    /// that one lacks). A listing that mixes variants gets the one of its first block; the other's tensors are
    /// none of this tree's names, so the reader refuses them as unmapped.
    pub fn detect(
        root: &str,
        encoder: &'static str,
        variants: Variants,
        has: impl Fn(&str) -> bool,
    ) -> Self {
        let preferred = variants.namings.first().copied().unwrap_or(Naming::Linen);
        let stacked =
            variants.may_stack && has(&Self::new(root, encoder, preferred, true).probe(0));
        let naming = variants
            .namings
            .iter()
            .copied()
            .find(|n| has(&Self::new(root, encoder, *n, stacked).attn(0, Proj::Query, "kernel")))
            .unwrap_or(preferred);
        Self::new(root, encoder, naming, stacked)
    }

    /// How the blocks' modules are named.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Whether the blocks are stacked along a leading depth axis.
    pub fn stacked(&self) -> bool {
        self.stacked
    }

    /// The prefix of block `i`'s tensors, ending in `/`; for stacked blocks the one prefix of them all.
    pub fn block_prefix(&self, i: usize) -> String {
        if self.stacked {
            format!("{}{}encoderblock/", self.root, self.encoder)
        } else {
            format!("{}{}encoderblock_{i}/", self.root, self.encoder)
        }
    }

    /// `rel` inside block `i`.
    pub fn block(&self, i: usize, rel: &str) -> String {
        format!("{}{rel}", self.block_prefix(i))
    }

    /// Parameter `p` of projection `proj` in block `i`.
    pub fn attn(&self, i: usize, proj: Proj, p: &str) -> String {
        self.block(i, &self.naming.attn(proj, p))
    }

    /// Parameter `p` of the MLP's `Dense_{layer}` in block `i`.
    pub fn mlp(&self, i: usize, layer: usize, p: &str) -> String {
        self.block(i, &self.naming.mlp(layer, p))
    }

    /// Parameter `p` of the LayerNorm `which` in block `i`.
    pub fn norm(&self, i: usize, which: BlockNorm, p: &str) -> String {
        self.block(i, &self.naming.block_norm(which, p))
    }

    /// Parameter `p` (`scale` or `bias`) of the final `encoder_norm`.
    pub fn encoder_norm(&self, p: &str) -> String {
        format!("{}{}encoder_norm/{p}", self.root, self.encoder)
    }

    /// The tensor whose presence says that block `i` exists (for stacked blocks, that there are blocks): the
    /// scale of its first LayerNorm, named alike in every naming.
    pub fn probe(&self, i: usize) -> String {
        self.norm(i, BlockNorm::Attention, "scale")
    }

    /// How many unrolled blocks the listing holds, counted from 0 while [`Self::probe`] is there, up to one past
    /// `max` (so that a caller can tell a listing deeper than `max`).
    pub fn count_unrolled(&self, max: usize, has: impl Fn(&str) -> bool) -> usize {
        (0..=max).take_while(|i| has(&self.probe(*i))).count()
    }
}

/// An encoder read and checked: its blocks, sizes and final norm.
pub(crate) struct Encoder {
    /// Where its tensors live.
    pub tree: EncoderTree,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
}

/// Reads the encoder `{root}{encoder}` of width `hidden` in whichever of `variants` it uses: the blocks found
/// (stacked along a leading axis or numbered), every shape checked against the first block's sizes, then
/// `encoder_norm`.
pub(crate) fn read_encoder(
    keys: &mut Keys<'_>,
    root: &str,
    encoder: &'static str,
    variants: Variants,
    hidden: usize,
) -> Result<Encoder> {
    let tree = EncoderTree::detect(root, encoder, variants, |k| keys.has(k));
    let depth = if tree.stacked {
        let ln = tree.probe(0);
        let [depth, d] = dims(
            &ln,
            keys.need(&ln, "stacked block LayerNorm")?,
            "[depth, hidden]",
            "stacked (scan) block LayerNorm",
        )?;
        if d != hidden || depth == 0 {
            return Err(Error::StackDepth {
                name: ln,
                hidden,
                found: vec![depth, d],
            });
        }
        // The model holds a record per block and tensor: a lying depth is refused before any is made.
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                name: ln,
                depth,
                max: MAX_DEPTH,
            });
        }
        depth
    } else {
        // Numbered blocks are bounded by the file's own entries; the limit keeps one rule for both forms.
        let depth = tree.count_unrolled(MAX_DEPTH, |k| keys.has(k));
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                name: tree.probe(MAX_DEPTH),
                depth,
                max: MAX_DEPTH,
            });
        }
        depth
    };
    if depth == 0 {
        let mut looked_for = vec![tree.probe(0)];
        if variants.may_stack {
            let stacked = EncoderTree::new(root, encoder, tree.naming, true);
            looked_for.push(stacked.probe(0));
        }
        return Err(Error::NoBlocks {
            recognised: keys.recognised.clone(),
            looked_for,
        });
    }
    // A stacked tensor carries the depth in front of each block's shape.
    let lead: Vec<usize> = if tree.stacked { vec![depth] } else { vec![] };
    let shape = |s: &[usize]| -> Vec<usize> { lead.iter().chain(s).copied().collect() };
    let (q_expected, mlp_expected) = if tree.stacked {
        (
            "[hidden, heads, head_dim] after the depth axis",
            "[hidden, mlp] after the depth axis",
        )
    } else {
        ("[hidden, heads, head_dim]", "[hidden, mlp]")
    };
    let qk = tree.attn(0, Proj::Query, "kernel");
    let q_shape = keys.need(&qk, "attention query")?;
    let [_, heads, head_dim] = dims(
        &qk,
        q_shape.get(lead.len()..).unwrap_or_default(),
        q_expected,
        "query kernel",
    )?;
    if heads.checked_mul(head_dim) != Some(hidden) {
        return Err(Error::HeadsMismatch {
            name: qk,
            hidden,
            found: q_shape.to_vec(),
        });
    }
    let d0 = tree.mlp(0, 0, "kernel");
    let d0_shape = keys.need(&d0, "MLP input dense")?;
    let [_, mlp] = dims(
        &d0,
        d0_shape.get(lead.len()..).unwrap_or_default(),
        mlp_expected,
        "MLP kernel",
    )?;
    // Stacked tensors are checked once; unrolled blocks one by one.
    let checked_blocks = if tree.stacked { 1 } else { depth };
    for i in 0..checked_blocks {
        for which in [BlockNorm::Attention, BlockNorm::Mlp] {
            for p in ["scale", "bias"] {
                keys.need_shape(
                    &tree.norm(i, which, p),
                    &shape(&[hidden]),
                    "block LayerNorm",
                )?;
            }
        }
        let block = tree.block_prefix(i);
        check_attention(keys, &block, tree.naming, &shape, [hidden, heads, head_dim])?;
        check_mlp(keys, &block, tree.naming, &shape, hidden, mlp)?;
    }
    for p in ["scale", "bias"] {
        keys.need_shape(&tree.encoder_norm(p), &[hidden], "encoder_norm")?;
    }
    let blocks = blocks(keys, &tree, depth)?;
    let final_norm = Norm {
        scale: keys.param(&tree.encoder_norm("scale"))?,
        bias: keys.param(&tree.encoder_norm("bias"))?,
    };
    Ok(Encoder {
        tree,
        depth,
        heads,
        mlp,
        blocks,
        final_norm,
    })
}

/// Checks the attention of `naming` in the module `prefix` (q/k/v `[D, H, Dh]` with `[H, Dh]` biases, out
/// `[H, Dh, D]`); `shape` adds the depth axis of stacked blocks.
pub(crate) fn check_attention(
    keys: &mut Keys<'_>,
    prefix: &str,
    naming: Naming,
    shape: &dyn Fn(&[usize]) -> Vec<usize>,
    [hidden, heads, head_dim]: [usize; 3],
) -> Result<()> {
    let name = |p: Proj, what: &str| format!("{prefix}{}", naming.attn(p, what));
    for p in [Proj::Query, Proj::Key, Proj::Value] {
        keys.need_shape(
            &name(p, "kernel"),
            &shape(&[hidden, heads, head_dim]),
            "q/k/v kernel [D, H, Dh]",
        )?;
        keys.need_shape(
            &name(p, "bias"),
            &shape(&[heads, head_dim]),
            "q/k/v bias [H, Dh]",
        )?;
    }
    keys.need_shape(
        &name(Proj::Out, "kernel"),
        &shape(&[heads, head_dim, hidden]),
        "out kernel [H, Dh, D]",
    )?;
    keys.need_shape(&name(Proj::Out, "bias"), &shape(&[hidden]), "out bias")
}

/// Checks the MLP of `naming` in the module `prefix` (`Dense_0` `[D, M]`, `Dense_1` `[M, D]`); `shape` adds the
/// depth axis of stacked blocks.
pub(crate) fn check_mlp(
    keys: &mut Keys<'_>,
    prefix: &str,
    naming: Naming,
    shape: &dyn Fn(&[usize]) -> Vec<usize>,
    hidden: usize,
    mlp: usize,
) -> Result<()> {
    let name = |layer: usize, what: &str| format!("{prefix}{}", naming.mlp(layer, what));
    keys.need_shape(
        &name(0, "kernel"),
        &shape(&[hidden, mlp]),
        "MLP kernel [D, M]",
    )?;
    keys.need_shape(&name(0, "bias"), &shape(&[mlp]), "MLP bias")?;
    keys.need_shape(
        &name(1, "kernel"),
        &shape(&[mlp, hidden]),
        "MLP kernel [M, D]",
    )?;
    keys.need_shape(&name(1, "bias"), &shape(&[hidden]), "MLP bias")
}

/// The parameters of every block, each in its role: block `i`'s part of a tensor is the whole tensor when
/// unrolled, slice `i` when stacked.
fn blocks(keys: &Keys<'_>, tree: &EncoderTree, depth: usize) -> Result<Vec<Block>> {
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let p = |name: String| -> Result<Param> {
            if tree.stacked {
                keys.slice(&name, i, depth)
            } else {
                keys.param(&name)
            }
        };
        let norm = |which: BlockNorm| -> Result<Norm> {
            Ok(Norm {
                scale: p(tree.norm(i, which, "scale"))?,
                bias: p(tree.norm(i, which, "bias"))?,
            })
        };
        let dense = |layer: usize| -> Result<Dense> {
            Ok(Dense {
                kernel: p(tree.mlp(i, layer, "kernel"))?,
                bias: p(tree.mlp(i, layer, "bias"))?,
            })
        };
        let proj = |pr: Proj| -> Result<Dense> {
            Ok(Dense {
                kernel: p(tree.attn(i, pr, "kernel"))?,
                bias: p(tree.attn(i, pr, "bias"))?,
            })
        };
        blocks.push(Block {
            norm1: norm(BlockNorm::Attention)?,
            attn: Attention {
                query: proj(Proj::Query)?,
                key: proj(Proj::Key)?,
                value: proj(Proj::Value)?,
                out: proj(Proj::Out)?,
            },
            norm2: norm(BlockNorm::Mlp)?,
            mlp: [dense(0)?, dense(1)?],
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use vitconv_tensors::TensorInfo;

    use super::*;
    use crate::sources::vit_jax::tests::info;

    /// The tensors of an encoder of `depth` blocks of width 8 (2 heads of 4, mlp 16) in the given variant.
    fn listing(
        root: &str,
        encoder: &'static str,
        naming: Naming,
        stacked: bool,
    ) -> Vec<TensorInfo> {
        let depth = 2;
        let tree = EncoderTree::new(root, encoder, naming, stacked);
        let lead: &[usize] = if stacked { &[2] } else { &[] };
        let at = |name: String, s: &[usize]| info(&name, &[lead, s].concat());
        let mut out = Vec::new();
        for i in 0..if stacked { 1 } else { depth } {
            for which in [BlockNorm::Attention, BlockNorm::Mlp] {
                for p in ["scale", "bias"] {
                    out.push(at(tree.norm(i, which, p), &[8]));
                }
            }
            for proj in [Proj::Query, Proj::Key, Proj::Value] {
                out.push(at(tree.attn(i, proj, "kernel"), &[8, 2, 4]));
                out.push(at(tree.attn(i, proj, "bias"), &[2, 4]));
            }
            out.push(at(tree.attn(i, Proj::Out, "kernel"), &[2, 4, 8]));
            out.push(at(tree.attn(i, Proj::Out, "bias"), &[8]));
            out.push(at(tree.mlp(i, 0, "kernel"), &[8, 16]));
            out.push(at(tree.mlp(i, 0, "bias"), &[16]));
            out.push(at(tree.mlp(i, 1, "kernel"), &[16, 8]));
            out.push(at(tree.mlp(i, 1, "bias"), &[8]));
        }
        for p in ["scale", "bias"] {
            out.push(info(&tree.encoder_norm(p), &[8]));
        }
        out
    }

    fn detect(tensors: &[TensorInfo], root: &str, variants: Variants) -> EncoderTree {
        EncoderTree::detect(root, IMAGE_ENCODER, variants, |k| {
            tensors.iter().any(|t| t.name == k)
        })
    }

    #[test]
    fn names_each_variant_as_the_files_do() {
        let pre = EncoderTree::new("", IMAGE_ENCODER, Naming::PreLinen, false);
        let linen = EncoderTree::new("opt/target/", IMAGE_ENCODER, Naming::Linen, false);
        let text = EncoderTree::new("params/txt/", TEXT_ENCODER, Naming::Linen, true);
        let cases = [
            (
                pre.attn(3, Proj::Value, "bias"),
                "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/value/bias",
            ),
            (
                pre.norm(0, BlockNorm::Mlp, "scale"),
                "Transformer/encoderblock_0/LayerNorm_2/scale",
            ),
            (
                pre.mlp(1, 1, "kernel"),
                "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel",
            ),
            (
                linen.attn(0, Proj::Out, "kernel"),
                "opt/target/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel",
            ),
            (
                linen.norm(2, BlockNorm::Mlp, "bias"),
                "opt/target/Transformer/encoderblock_2/LayerNorm_1/bias",
            ),
            (
                linen.encoder_norm("scale"),
                "opt/target/Transformer/encoder_norm/scale",
            ),
            // Every block of a stacked encoder is one tensor.
            (
                text.mlp(5, 0, "bias"),
                "params/txt/Encoder_0/encoderblock/MlpBlock_0/Dense_0/bias",
            ),
            (
                text.mlp(0, 0, "bias"),
                "params/txt/Encoder_0/encoderblock/MlpBlock_0/Dense_0/bias",
            ),
            (
                text.encoder_norm("bias"),
                "params/txt/Encoder_0/encoder_norm/bias",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn detects_each_naming_and_form() {
        for naming in [Naming::PreLinen, Naming::Linen] {
            let t = listing("", IMAGE_ENCODER, naming, false);
            let tree = detect(&t, "", VIT_JAX);
            assert_eq!((tree.naming(), tree.stacked()), (naming, false));
        }
        for stacked in [false, true] {
            let t = listing("params/", IMAGE_ENCODER, Naming::Linen, stacked);
            let tree = detect(&t, "params/", BIG_VISION);
            assert_eq!((tree.naming(), tree.stacked()), (Naming::Linen, stacked));
        }
        // A family whose files are never stacked does not read a stacked listing as stacked.
        let t = listing("", IMAGE_ENCODER, Naming::Linen, true);
        assert!(!detect(&t, "", VIT_JAX).stacked());
        // A family without pre-Linen names keeps to its own, so the reader names what is missing.
        let t = listing("", IMAGE_ENCODER, Naming::PreLinen, false);
        assert_eq!(detect(&t, "", BIG_VISION).naming(), Naming::Linen);
        // Nothing found: the preferred naming, unrolled.
        let tree = detect(&[], "", VIT_JAX);
        assert_eq!((tree.naming(), tree.stacked()), (Naming::PreLinen, false));
    }

    fn read(tensors: &[TensorInfo], root: &str, variants: Variants) -> Result<(Encoder, bool)> {
        let mut keys = Keys::new(tensors, "test encoder");
        let enc = read_encoder(&mut keys, root, IMAGE_ENCODER, variants, 8)?;
        Ok((enc, keys.unused().is_none()))
    }

    #[test]
    fn reads_stacked_and_unrolled_blocks_alike() {
        let [stacked, unrolled] = [true, false].map(|stacked| {
            let t = listing("", IMAGE_ENCODER, Naming::Linen, stacked);
            let (enc, all) = read(&t, "", BIG_VISION).expect("reads");
            assert!(all, "every tensor is accounted for");
            enc
        });
        for enc in [&stacked, &unrolled] {
            assert_eq!((enc.depth, enc.heads, enc.mlp), (2, 2, 16));
            assert_eq!(enc.blocks.len(), 2);
        }
        // Block 1 of the stacked encoder is slice 1 of the one tensor; unrolled, its own tensor.
        let q = &stacked.blocks[1].attn.query.kernel;
        assert_eq!(
            q.tensor,
            "Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"
        );
        assert_eq!(q.shape, vec![8, 2, 4]);
        assert_eq!(
            unrolled.blocks[1].norm2.scale.tensor,
            "Transformer/encoderblock_1/LayerNorm_1/scale"
        );
        let (pre, all) = read(
            &listing("", IMAGE_ENCODER, Naming::PreLinen, false),
            "",
            VIT_JAX,
        )
        .expect("reads");
        assert!(all);
        assert_eq!(
            pre.blocks[0].mlp[1].bias.tensor,
            "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias"
        );
    }

    #[test]
    fn a_listing_mixing_variants_is_refused() {
        // Block 1 in Linen names beside a pre-Linen block 0: the tree is block 0's, and block 1's tensors are
        // missing under it.
        let pre = listing("", IMAGE_ENCODER, Naming::PreLinen, false);
        let linen = listing("", IMAGE_ENCODER, Naming::Linen, false);
        let mixed: Vec<TensorInfo> = pre
            .iter()
            .filter(|t| !t.name.contains("encoderblock_1/"))
            .chain(linen.iter().filter(|t| t.name.contains("encoderblock_1/")))
            .cloned()
            .collect();
        assert_eq!(detect(&mixed, "", VIT_JAX).naming(), Naming::PreLinen);
        let e = read(&mixed, "", VIT_JAX).err().map(|e| e.to_string());
        let e = e.expect("a mixed listing is refused");
        assert!(
            e.contains("Transformer/encoderblock_1/LayerNorm_2/scale") && e.contains("missing"),
            "{e}"
        );
        // Stacked and unrolled blocks side by side: the stacked ones are read, the unrolled ones left unused,
        // which the sources refuse as unmapped.
        let both: Vec<TensorInfo> = listing("", IMAGE_ENCODER, Naming::Linen, true)
            .into_iter()
            .chain(
                linen
                    .iter()
                    .filter(|t| t.name.contains("encoderblock_"))
                    .cloned(),
            )
            .collect();
        let (enc, all) = read(&both, "", BIG_VISION).expect("the stacked blocks read");
        assert!(enc.tree.stacked());
        assert!(!all, "the unrolled blocks are left over");
    }

    #[test]
    fn no_blocks_names_what_each_form_looks_for() {
        let norms = |root: &str| -> Vec<TensorInfo> {
            ["scale", "bias"]
                .iter()
                .map(|p| info(&format!("{root}Transformer/encoder_norm/{p}"), &[8]))
                .collect()
        };
        let e = read(&norms(""), "", VIT_JAX).err().expect("no blocks");
        assert!(
            matches!(&e, Error::NoBlocks { looked_for, .. } if looked_for.len() == 1),
            "{e}"
        );
        let e = read(&norms("params/"), "params/", BIG_VISION)
            .err()
            .expect("no blocks");
        assert!(
            matches!(&e, Error::NoBlocks { looked_for, .. }
                if *looked_for == ["params/Transformer/encoderblock_0/LayerNorm_0/scale",
                    "params/Transformer/encoderblock/LayerNorm_0/scale"]),
            "{e}"
        );
    }
}
