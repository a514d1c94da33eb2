//! The roles a layout's name tables give each tensor of a block, a MAP head and a text tower, the tables'
//! types, and the `{i}` name template they are written in.

use crate::model::Proj;

/// What one tensor of a block holds, in PyTorch's conventions; the shape and transform follow from the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRole {
    /// The LayerNorm before attention.
    Norm1Scale,
    /// The bias of the LayerNorm before attention.
    Norm1Bias,
    /// q, k and v weights `[3D, D]`, fused in that order with heads contiguous.
    QkvWeight,
    /// q, k and v biases `[3D]`, fused in that order.
    QkvBias,
    /// One projection's `[D, D]` weight (q, k, v or out).
    Weight(Proj),
    /// One projection's `[D]` bias (q, k, v or out).
    Bias(Proj),
    /// The LayerNorm before the MLP.
    Norm2Scale,
    /// The bias of the LayerNorm before the MLP.
    Norm2Bias,
    /// The MLP's first dense `[M, D]`.
    Fc1Weight,
    /// The bias `[M]` of the MLP's first dense.
    Fc1Bias,
    /// The MLP's second dense `[D, M]`.
    Fc2Weight,
    /// The bias `[D]` of the MLP's second dense.
    Fc2Bias,
}

/// What one tensor of a MAP head holds, in PyTorch's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRole {
    /// The learned query `[1, 1, D]`.
    Probe,
    /// One projection's `[D, D]` weight and bias.
    Weight(Proj),
    /// One projection's `[D]` bias.
    Bias(Proj),
    /// k and v fused `[2D, D]` (timm's `kv`).
    KvWeight,
    /// k and v biases fused `[2D]`.
    KvBias,
    /// q, k and v fused `[3D, D]` (`nn.MultiheadAttention`'s `in_proj`).
    QkvWeight,
    /// q, k and v biases fused `[3D]`.
    QkvBias,
    /// The LayerNorm before the MLP.
    NormScale,
    /// The bias of the LayerNorm before the MLP.
    NormBias,
    /// The MLP's first dense `[M, D]`.
    Fc1Weight,
    /// The bias `[M]` of the MLP's first dense.
    Fc1Bias,
    /// The MLP's second dense `[D, M]`.
    Fc2Weight,
    /// The bias `[D]` of the MLP's second dense.
    Fc2Bias,
}

/// What one tensor of a text tower (outside its blocks) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    /// The token embedding `[vocab, width]`.
    Token,
    /// The position embedding `[context, width]` (the source's `[1, context, width]` without its batch axis).
    Position,
    /// The final LayerNorm's scale.
    NormScale,
    /// The final LayerNorm's bias.
    NormBias,
    /// The head as a linear layer's `[embed, width]` weight.
    HeadWeight,
    /// The head's `[embed]` bias.
    HeadBias,
}

/// A layout's text tower outside its blocks: each target key with the role it holds.
pub type TextTable = [(&'static str, TextRole)];

/// A layout's MAP head: each target key with the role it holds.
pub type MapTable = [(&'static str, MapRole)];

/// A layout's block: each target key (`{i}` = block index) with the role it holds, in state-dict order.
pub type BlockTable = [(&'static str, BlockRole)];

/// Expands `{i}` in a name template.
pub fn name(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_templates_expand_every_block_index() {
        assert_eq!(
            name("blocks.{i}.attn.qkv.weight", 3),
            "blocks.3.attn.qkv.weight"
        );
        assert_eq!(name("layers.{i}.{i}", 12), "layers.12.12", "every `{{i}}`");
        assert_eq!(name("norm.weight", 5), "norm.weight", "no index: unchanged");
        assert_eq!(name("{i}", 0), "0");
    }
}
