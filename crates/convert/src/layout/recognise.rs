//! What `inspect` needs to recognise a converted file: the shared helpers each layout's `recognise` uses to
//! read an architecture off a state dict's keys and shapes, with the keys taken from the layout's own name
//! tables, so that a target key is written in one place.

use std::collections::BTreeMap;

use vitconv_tensors::TensorInfo;

use crate::arch::Arch;
use crate::layout::prepared::{BlockRole, BlockTable, TextRole, TextTable};
use crate::model::TextArch;

/// A state dict's keys and shapes.
pub type Shapes<'a> = BTreeMap<&'a str, &'a [usize]>;

/// A file recognised as one of the layouts.
#[derive(Debug, Clone)]
pub struct Recognised {
    /// The family `inspect` names (`timm`, `transformers`, `open_clip`, `openai_clip`).
    pub family: &'static str,
    /// The architecture read off the shapes.
    pub arch: Arch,
    /// The class token's shape as the layout stores it, when it is not `[1, 1, D]`.
    pub class_shape: Option<String>,
    /// Whether the patch convolution has a bias.
    pub patch_bias: bool,
    /// What the parts are, one sentence each, beyond the architecture's own.
    pub notes: Vec<String>,
    /// The text tower of a two-tower file (its head count is not in fused or square weights: 0 there).
    pub text: Option<TextArch>,
}

/// The text tower of a two-tower state dict, read off the shapes of a layout's own tables: the token and
/// position embeddings' `[rows, width]`, the blocks counted by the MLP's first weight `[mlp, width]` after
/// `block_prefix`, and the head's `[embed, width]` where the table has one and the file holds it.
pub fn text_arch(
    s: &Shapes<'_>,
    table: &TextTable,
    blocks: &BlockTable,
    block_prefix: &str,
) -> Option<TextArch> {
    let key = |role: TextRole| table.iter().find(|(_, r)| *r == role).map(|(k, _)| *k);
    let &[vocab, width] = get(s, key(TextRole::Token)?)? else {
        return None;
    };
    let &[context, pos_width] = get(s, key(TextRole::Position)?)? else {
        return None;
    };
    let fc1 = blocks
        .iter()
        .find(|(_, r)| *r == BlockRole::Fc1Weight)
        .map(|(k, _)| *k)?;
    let depth = count_blocks(s, block_prefix, fc1);
    let &[mlp, fc_width] = get(
        s,
        &format!("{block_prefix}{}", super::prepared::name(fc1, 0)),
    )?
    else {
        return None;
    };
    if pos_width != width || fc_width != width || depth == 0 {
        return None;
    }
    let embed = key(TextRole::HeadWeight)
        .and_then(|k| get(s, k))
        .and_then(|h| h.first().copied());
    Some(TextArch {
        vocab,
        context,
        width,
        heads: 0,
        mlp,
        depth,
        embed,
        stacked: false,
    })
}

/// The listing's keys and shapes.
pub fn shapes(tensors: &[TensorInfo]) -> Shapes<'_> {
    tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect()
}

/// The shape of tensor `k`, if the file has it.
pub fn get<'a>(s: &Shapes<'a>, k: &str) -> Option<&'a [usize]> {
    s.get(k).copied()
}

/// How many of `template` with `{i}` = 0, 1, ... exist after `prefix`.
pub fn count_blocks(s: &Shapes<'_>, prefix: &str, template: &str) -> usize {
    (0..)
        .take_while(|i| {
            s.contains_key(format!("{prefix}{}", super::prepared::name(template, *i)).as_str())
        })
        .count()
}

/// Grid side from position-embedding rows, given the number of prefix (class) rows.
pub fn grid_side(rows: usize, prefix: usize) -> Option<usize> {
    let cells = rows.checked_sub(prefix)?;
    let side = cells.isqrt();
    (side > 0 && side.checked_mul(side) == Some(cells)).then_some(side)
}
