//! What every output declares beside its tensors: the `vitconv.config` record, the metadata keys every output
//! carries, and the plan's common part.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Prepared, FLAX_LN_EPS, NAFLEX_POS_RESIZE};
use crate::arch::PosEmbKind;
use crate::plan::{OutTensor, Plan};
use crate::record::{
    ConfigRecord, DeclaredGelu, DeclaredHead, NormRecord, ResnetRecord, TextPool, TextRecord,
    TokenizerRecord, CONFIG_VERSION,
};

impl Prepared<'_> {
    /// `vitconv.config`: the sizes and semantics the output declares, as the typed record that `verify` and
    /// `inspect` read back ([`ConfigRecord`]).
    pub fn config(
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
            pool: TextPool::Last,
            causal: false,
            layer_norm_eps: FLAX_LN_EPS,
            gelu: self.opts.gelu.into(),
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
