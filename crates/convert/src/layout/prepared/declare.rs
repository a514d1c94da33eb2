//! What every output declares beside its tensors: the `vitconv.config` record, the metadata keys every output
//! carries, and the plan's common part.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Prepared, NAFLEX_POS_RESIZE};
use crate::arch::PosEmbKind;
use crate::plan::{OutTensor, Plan};
use crate::record::{
    ConfigRecord, DeclaredGelu, DeclaredHead, NormRecord, ResnetRecord, TextRecord,
    TokenizerRecord, CONFIG_VERSION,
};

impl Prepared<'_> {
    /// `vitconv.config` for an output that computes what its source does: the image tower's own LayerNorm eps
    /// and GELU (or `--gelu`), no `ln_pre`, and the given head.
    pub fn config(&self, head: DeclaredHead, head_bias: Option<Vec<f32>>) -> ConfigRecord {
        self.config_as(
            self.gelu().into(),
            self.semantics().norm_eps,
            false,
            head,
            head_bias,
        )
    }

    /// `vitconv.config`: the sizes and semantics the output declares, as the typed record that `verify` and
    /// `inspect` read back ([`ConfigRecord`]); for a layout whose library fixes semantics of its own (OpenAI
    /// CLIP's QuickGELU, eps and `ln_pre`), which it then declares instead of the source's.
    pub fn config_as(
        &self,
        gelu: DeclaredGelu,
        ln_eps: f64,
        ln_pre: bool,
        head: DeclaredHead,
        head_bias: Option<Vec<f32>>,
    ) -> ConfigRecord {
        let a = self.arch();
        ConfigRecord {
            version: CONFIG_VERSION,
            // A NaFlex output runs at each image's own patch grid: it declares no resolution.
            image_size: self.naflex_grid().is_none().then_some(self.image_size),
            patch_size: a.patch,
            hidden: a.hidden,
            depth: a.depth,
            heads: a.heads,
            mlp: a.mlp,
            classifier: a.classifier,
            num_classes: if self.keep_head { a.num_classes } else { None },
            representation: if self.has_pre_logits() {
                a.representation
            } else {
                None
            },
            gelu,
            layer_norm_eps: ln_eps,
            ln_pre,
            input_norm: NormRecord {
                name: self.norm.as_str().to_string(),
                mean: self.norm.mean().map(f64::from),
                std: self.norm.std().map(f64::from),
            },
            // How the position embedding was resampled, when the output's grid differs from the source's.
            resize: (a.posemb == PosEmbKind::Learned && Some(self.grid) != a.grid)
                .then(|| self.opts.resize.as_str().to_string()),
            posemb: a.posemb,
            class_pos: a.class_token() && a.class_pos,
            source_family: self.model.family.to_string(),
            resnet: a.resnet.as_ref().map(|r| ResnetRecord {
                stages: r.stages.clone(),
                width: r.width,
            }),
            head,
            head_bias,
            dtype: self.opts.dtype.as_str().to_string(),
            patch_embed: a.patch_embed,
            pos_grid: self.naflex_grid().map(|(_, g)| [g.0, g.1]),
            pos_resize: self.naflex_grid().map(|_| NAFLEX_POS_RESIZE.to_string()),
            text: self.text_declaration(),
        }
    }

    /// The text tower's part of `vitconv.config` (none without one): its sizes and the semantics the model
    /// says it computes.
    fn text_declaration(&self) -> Option<TextRecord> {
        let text = self.model.text.as_ref().filter(|_| self.two_tower())?;
        let t = &text.arch;
        Some(TextRecord {
            vocab: t.vocab,
            context: t.context,
            width: t.width,
            depth: t.depth,
            heads: t.heads,
            mlp: t.mlp,
            embed: t.embed,
            pool: text.pool,
            causal: text.semantics.causal,
            layer_norm_eps: text.semantics.norm_eps,
            gelu: self.gelu_for(&text.semantics).into(),
            logit_bias: self.model.logit.as_ref().is_some_and(|l| l.bias.is_some()),
            tokenizer: self.tokenizer.as_ref().map(|s| TokenizerRecord {
                kind: s.kind,
                pieces: s.pieces,
                eos_id: s.eos_id,
                pad_id: s.pad_id,
            }),
        })
    }
    /// The metadata keys every output carries; layouts add their own.
    pub fn metadata(&self, source_name: &str, config: &ConfigRecord) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".to_string(), "pt".to_string());
        m.insert(
            crate::meta::LAYOUT.to_string(),
            self.opts.layout.as_str().to_string(),
        );
        m.insert(crate::meta::SOURCE.to_string(), source_name.to_string());
        if let Some(labels) = self.labels() {
            m.insert(crate::meta::LABELS.to_string(), json!(labels).to_string());
        }
        m.insert(crate::meta::CONFIG.to_string(), config.to_json());
        m.insert(
            crate::meta::SOURCE_NOTES.to_string(),
            self.model.notes.join("\n"),
        );
        if !self.model.left_out.is_empty() {
            // Training state that is not part of the model: how much, and under which roots.
            let mut roots: Vec<&str> = Vec::new();
            for n in &self.model.left_out {
                let root = n.split_inclusive('/').next().unwrap_or(n);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            m.insert(
                crate::meta::LEFT_OUT.to_string(),
                json!({"tensors": self.model.left_out.len(), "roots": roots}).to_string(),
            );
        }
        m.insert(
            crate::meta::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        m
    }

    /// Builds the plan's common part; the layout fills in tensors, python and side files.
    pub fn finish(
        self,
        kind: crate::plan::OutputKind,
        tensors: Vec<OutTensor>,
        mut metadata: BTreeMap<String, String>,
        python: String,
        side_files: Vec<crate::plan::SideFile>,
    ) -> Plan {
        metadata.insert(crate::meta::NOTES.to_string(), self.notes.join("\n"));
        Plan {
            kind,
            tensors,
            dropped: self.dropped,
            metadata,
            notes: self.notes,
            python,
            side_files,
            copied_files: Vec::new(),
            no_folder: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::prepared::tests::{model, opts};
    use crate::model::FLAX_LN_EPS;
    use crate::options::{HeadChoice, Layout, Options, TowerChoice};
    use crate::plan::OutputKind;

    /// The record with the arguments every layout chooses fixed, so that what `Prepared` decides shows.
    fn config(p: &Prepared<'_>) -> ConfigRecord {
        p.config(DeclaredHead::Head, None)
    }

    #[test]
    fn the_config_declares_the_output_not_the_source() {
        let m = model("vit-token");
        let o = Options::new(Layout::Timm);
        let c = config(&Prepared::new(&m, &o).expect("prepared"));
        assert_eq!(
            (c.image_size, c.num_classes, c.resize.as_deref()),
            (Some(64), Some(10), None)
        );
        assert!(c.class_pos && c.pos_grid.is_none() && c.text.is_none());
        assert_eq!(c.input_norm.name, "unit");
        // Another resolution records how the table was resized; a dropped head declares no classes.
        let o = opts(Layout::Timm, |o| {
            o.image_size = Some(96);
            o.head = HeadChoice::Drop;
        });
        let c = config(&Prepared::new(&m, &o).expect("prepared"));
        assert_eq!(
            (c.image_size, c.num_classes, c.resize.as_deref()),
            (Some(96), None, Some("vit-jax"))
        );
        // A NaFlex tower declares its stored grid and how the model resizes it, and no resolution.
        let naflex = model("siglip2/siglip2-naflex-tiny");
        let o = opts(Layout::Hf, |o| o.tower = TowerChoice::Image);
        let c = config(&Prepared::new(&naflex, &o).expect("prepared"));
        assert_eq!(
            (c.image_size, c.pos_grid, c.pos_resize.as_deref()),
            (None, Some([4, 4]), Some(NAFLEX_POS_RESIZE))
        );
    }

    #[test]
    fn the_text_tower_is_declared_only_where_it_is_written() {
        let m = model("big_vision/siglip-tiny");
        let o = Options::new(Layout::Hf);
        let text = config(&Prepared::new(&m, &o).expect("prepared"))
            .text
            .expect("both towers: the text tower declared");
        assert_eq!(
            (text.vocab, text.context, text.width, text.depth, text.embed),
            (100, 8, 64, 2, Some(64))
        );
        assert!(text.logit_bias && text.tokenizer.is_none() && !text.causal);
        assert_eq!(text.layer_norm_eps, FLAX_LN_EPS);
        let o = opts(Layout::Hf, |o| o.tower = TowerChoice::Image);
        assert_eq!(config(&Prepared::new(&m, &o).expect("prepared")).text, None);
    }

    #[test]
    fn metadata_names_labels_and_left_out_roots_only_where_there_are_some() {
        let mut m = model("vit-token");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        let c = config(&p);
        let meta = p.metadata("checkpoint.npz", &c);
        assert_eq!(meta[crate::meta::SOURCE], "checkpoint.npz");
        assert_eq!(meta[crate::meta::LAYOUT], "timm");
        assert_eq!(meta[crate::meta::CONFIG], c.to_json());
        assert!(!meta.contains_key(crate::meta::LABELS));
        assert!(!meta.contains_key(crate::meta::LEFT_OUT));
        m.left_out = ["opt/state/mu", "opt/state/nu", "ema/params/x"]
            .map(String::from)
            .to_vec();
        let labelled = opts(Layout::Timm, |o| {
            o.labels = Some((0..10).map(|i| format!("c{i}")).collect());
        });
        let p = Prepared::new(&m, &labelled).expect("prepared");
        let meta = p.metadata("checkpoint.npz", &config(&p));
        let left: serde_json::Value =
            serde_json::from_str(&meta[crate::meta::LEFT_OUT]).expect("JSON");
        assert_eq!(left, json!({"tensors": 3, "roots": ["opt/", "ema/"]}));
        let labels: Vec<String> = serde_json::from_str(&meta[crate::meta::LABELS]).expect("JSON");
        assert_eq!(labels.len(), 10);
        assert_eq!(labels.first().map(String::as_str), Some("c0"));
        // The plan carries the notes, also as metadata, and what was left out.
        let dropped = p.dropped.clone();
        let notes = p.notes.join("\n");
        let plan = p.finish(
            OutputKind::File,
            Vec::new(),
            meta,
            String::new(),
            Vec::new(),
        );
        assert_eq!(plan.metadata[crate::meta::NOTES], notes);
        assert_eq!(plan.dropped, dropped);
        assert!(plan.dropped.iter().any(|d| d == "ema/params/x"));
    }
}
