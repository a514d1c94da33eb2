//! Folds repeated numbered components of tensor names (`encoderblock_{0..23}/…`, `blocks.{0..23}.…`) into one pattern with index sets.
//!
//! Which numbered components are repeated blocks is the caller's knowledge, not this crate's:
//! every function takes the container prefixes (such as `"blocks."`) whose following number is
//! a block index. Numbers after any other text (`LayerNorm_0`, `Dense_1`) stay part of the name,
//! since sibling sub-layers are not copies of one another.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

/// A name with its block indices taken out: the literal text before, between and after them.
///
/// Two names with equal patterns differ only in their block indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern {
    /// One more piece than there are indices; index `i` sat between pieces `i` and `i + 1`.
    pieces: Vec<String>,
}

impl NamePattern {
    /// Number of indices taken out of the name.
    pub fn holes(&self) -> usize {
        self.pieces.len().saturating_sub(1)
    }

    /// Writes the name back with `fills[i]` where index `i` was (a missing fill is written empty).
    pub fn render<S: AsRef<str>>(&self, fills: &[S]) -> String {
        let mut out = String::new();
        let mut fills = fills.iter();
        let mut pieces = self.pieces.iter().peekable();
        while let Some(piece) = pieces.next() {
            out.push_str(piece);
            if pieces.peek().is_some() {
                out.push_str(fills.next().map(AsRef::as_ref).unwrap_or_default());
            }
        }
        out
    }
}

/// Splits a name into its pattern and its block indices, in order.
///
/// An index is the run of numeric characters right after one of `containers` (matched
/// anywhere in the name, the leftmost first, then the search goes on after the number),
/// provided the run is ASCII decimal and fits a `u64`; other runs stay literal. With
/// `["blocks."]`, `blocks.3.attn.qkv` gives the pattern `blocks.{}.attn.qkv` and `[3]`.
pub fn split_indices(name: &str, containers: &[&str]) -> (NamePattern, Vec<u64>) {
    let mut pieces = Vec::new();
    let mut indices = Vec::new();
    let mut piece_start = 0;
    let mut pos = 0;
    while let Some(rest) = name.get(pos..).filter(|r| !r.is_empty()) {
        // The first container at this position that a number follows.
        let found = containers.iter().find_map(|c| {
            let after = rest.strip_prefix(c)?;
            let digits: usize = after
                .chars()
                .take_while(|ch| ch.is_numeric())
                .map(char::len_utf8)
                .sum();
            (digits > 0).then_some((c.len(), digits))
        });
        let Some((prefix, digits)) = found else {
            pos = pos.saturating_add(rest.chars().next().map_or(1, char::len_utf8));
            continue;
        };
        // Positions within `name`, which a `&str`'s length bounds well below `usize::MAX`.
        let start = pos.saturating_add(prefix);
        let end = start.saturating_add(digits);
        let number = name
            .get(start..end)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok());
        if let Some(n) = number {
            pieces.push(name.get(piece_start..start).unwrap_or_default().to_string());
            indices.push(n);
            piece_start = end;
        }
        pos = end;
    }
    pieces.push(name.get(piece_start..).unwrap_or_default().to_string());
    (NamePattern { pieces }, indices)
}

/// Writes a set of indices compactly: `7` alone, `{0..23}` when contiguous, else `{0,2,5}`.
///
/// Order and repeats in `values` do not matter.
pub fn index_set(values: &[u64]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    match (v.first(), v.last()) {
        (Some(a), Some(_)) if v.len() == 1 => a.to_string(),
        (Some(&a), Some(&b))
            if b.checked_sub(a).and_then(|d| d.checked_add(1)) == Some(v.len() as u64) =>
        {
            format!("{{{a}..{b}}}")
        }
        _ => format!(
            "{{{}}}",
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ),
    }
}

/// Names that differ only in their block indices, folded into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGroup {
    /// The members' common name with each index replaced by its [`index_set`]
    /// (`blocks.{0..23}.attn.qkv.weight`); a group of one keeps its name as it was.
    pub name: String,
    /// Positions of the members in the input, in input order.
    pub members: Vec<usize>,
}

/// Folds names whose patterns (see [`split_indices`]) and extra keys are equal into groups.
///
/// The key lets callers fold only what is alike in other ways too, such as equal dtype and
/// shape. Groups come in the order of their first member.
pub fn group_names<'a, K: Eq + Hash>(
    items: impl IntoIterator<Item = (&'a str, K)>,
    containers: &[&str],
) -> Vec<NameGroup> {
    struct Acc {
        first: String,
        pattern: NamePattern,
        indices: Vec<Vec<u64>>,
        members: Vec<usize>,
    }
    let mut groups: Vec<Acc> = Vec::new();
    let mut by_key: HashMap<(NamePattern, K), usize> = HashMap::new();
    for (i, (name, key)) in items.into_iter().enumerate() {
        let (pattern, idx) = split_indices(name, containers);
        match by_key.entry((pattern, key)) {
            Entry::Occupied(e) => {
                if let Some(acc) = groups.get_mut(*e.get()) {
                    // Equal patterns have equally many holes, so the zip drops nothing.
                    for (set, n) in acc.indices.iter_mut().zip(idx) {
                        set.push(n);
                    }
                    acc.members.push(i);
                }
            }
            Entry::Vacant(e) => {
                let pattern = e.key().0.clone();
                e.insert(groups.len());
                groups.push(Acc {
                    first: name.to_string(),
                    pattern,
                    indices: idx.into_iter().map(|n| vec![n]).collect(),
                    members: vec![i],
                });
            }
        }
    }
    groups
        .into_iter()
        .map(|acc| NameGroup {
            name: if acc.members.len() > 1 {
                let sets: Vec<String> = acc.indices.iter().map(|v| index_set(v)).collect();
                acc.pattern.render(&sets)
            } else {
                acc.first
            },
            members: acc.members,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Containers as the flax and torch ViT layouts name them (the tests' own choice).
    const CONTAINERS: &[&str] = &["encoderblock_", "blocks.", "resblocks.", "layer.", "unit"];

    #[test]
    fn splits_only_numbers_after_a_container() {
        let (p, idx) = split_indices(
            "Transformer/encoderblock_12/MlpBlock_3/Dense_0/kernel",
            CONTAINERS,
        );
        assert_eq!(idx, [12]);
        assert_eq!(p.holes(), 1);
        assert_eq!(
            p.render(&["{}"]),
            "Transformer/encoderblock_{}/MlpBlock_3/Dense_0/kernel"
        );
        let (p, idx) = split_indices("block1/unit02/conv1/kernel", CONTAINERS);
        assert_eq!(idx, [2]);
        assert_eq!(p.render(&["x"]), "block1/unitx/conv1/kernel");
        // Two levels of numbering, and a container inside a longer word.
        let (p, idx) = split_indices("stages.1.blocks.7.layer.3.w", CONTAINERS);
        assert_eq!(idx, [7, 3]);
        assert_eq!(p.render(&["a", "b"]), "stages.1.blocks.a.layer.b.w");
        let (_, idx) = split_indices("transformer.resblocks.4.ln_1.weight", CONTAINERS);
        assert_eq!(idx, [4]);
    }

    #[test]
    fn a_name_without_indices_renders_back_unchanged() {
        for name in ["head.weight", "blocks.", "blocks.x1", "", "unité9"] {
            let (p, idx) = split_indices(name, CONTAINERS);
            assert!(idx.is_empty(), "{name}");
            assert_eq!(p.render::<&str>(&[]), name);
        }
    }

    #[test]
    fn numbers_that_are_not_plain_u64_stay_literal() {
        let huge = "blocks.123456789012345678901234567890.w";
        let (p, idx) = split_indices(huge, CONTAINERS);
        assert!(idx.is_empty());
        assert_eq!(p.render::<&str>(&[]), huge);
        // A non-ASCII digit in the run makes the whole run literal, and scanning goes on after it.
        let (p, idx) = split_indices("blocks.1\u{663}.unit4", CONTAINERS);
        assert_eq!(idx, [4]);
        assert_eq!(p.render(&["N"]), "blocks.1\u{663}.unitN");
    }

    #[test]
    fn an_empty_container_folds_every_number() {
        let (p, idx) = split_indices("a1.b22.c", &[""]);
        assert_eq!(idx, [1, 22]);
        assert_eq!(p.render(&["_", "_"]), "a_.b_.c");
    }

    #[test]
    fn index_sets() {
        assert_eq!(index_set(&[3, 1, 2]), "{1..3}");
        assert_eq!(index_set(&[0, 5]), "{0,5}");
        assert_eq!(index_set(&[4, 4]), "4");
        assert_eq!(index_set(&[0, u64::MAX]), format!("{{0,{}}}", u64::MAX));
        assert_eq!(index_set(&[]), "{}");
    }

    #[test]
    fn folds_flax_and_torch_blocks_but_not_sublayers() {
        let mut names = Vec::new();
        for i in 0..24 {
            names.push(format!("Transformer/encoderblock_{i}/LayerNorm_0/scale"));
            names.push(format!("Transformer/encoderblock_{i}/LayerNorm_2/scale"));
            names.push(format!("blocks.{i}.attn.qkv.weight"));
        }
        names.push("head.weight".into());
        let g = group_names(names.iter().map(|n| (n.as_str(), ())), CONTAINERS);
        let folded: Vec<&str> = g.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            folded,
            [
                "Transformer/encoderblock_{0..23}/LayerNorm_0/scale",
                "Transformer/encoderblock_{0..23}/LayerNorm_2/scale",
                "blocks.{0..23}.attn.qkv.weight",
                "head.weight"
            ]
        );
        assert_eq!(g[0].members.len(), 24);
        assert_eq!(g[2].members.first(), Some(&2));
        assert_eq!(g[2].members.get(1), Some(&5));
        assert_eq!(g[3].members, [72]);
    }

    #[test]
    fn unequal_keys_are_not_folded_and_singletons_keep_their_name() {
        let items = [("blocks.0.w", 2), ("blocks.1.w", 3), ("blocks.2.w", 2)];
        let g = group_names(items, CONTAINERS);
        assert_eq!(
            g,
            [
                NameGroup {
                    name: "blocks.{0,2}.w".into(),
                    members: vec![0, 2]
                },
                NameGroup {
                    name: "blocks.1.w".into(),
                    members: vec![1]
                },
            ]
        );
    }
}
