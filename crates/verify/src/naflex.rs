//! The NaFlex comparison: a SigLIP 2 NaFlex source ([`crate::references::naflex`]) against an hf `Siglip2Model` folder (both towers), an hf `Siglip2VisionModel` folder or a timm `NaFlexVit` (the image tower), on patch inputs of several aspect ratios.
//!
//! Both sides see the same [`NaflexInputs`] (each image resized to its own patch grid, patchified
//! and padded, see [`crate::input::naflex`]) and, for two towers, the same token ids. Two towers
//! compare image embeddings, text embeddings and `logits_per_image`; the timm image tower compares
//! the MAP head's output before normalisation (and the head's output where both sides have one).
//! Declared settings that contradict the source (a bicubic or unantialiased position resize, a
//! GELU, a LayerNorm eps) fail the comparison on their own, as in a two-tower one.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::input::{self, NaflexInputs};
use crate::references::naflex::{NaflexArch, NaflexTwoTower};
use crate::references::{Classifier, Family, PosEmb, SourceArch};
use crate::registry;
use crate::targets::hf::read_json;
use crate::targets::hf_siglip2::{self, HfSiglip2};
use crate::targets::timm_naflex::{self, TimmNaflex};
use crate::targets::two_tower::{self, DeclaredMismatch};
use crate::targets::{self, Layout, TargetArch};
use crate::{
    compare_expect, compare_tensors, device_name, timed, NaflexReport, Options, Precision, Report,
    TwoTowerReport, TWO_TOWER_F32_TOLERANCE,
};
use vitconv_convert::TowerChoice;

/// Runs a NaFlex source against its conversion (see the module documentation).
pub(crate) fn verify(opts: &Options, device: Device, family: &'static str) -> Result<Report> {
    let reference = NaflexTwoTower::open(&opts.source, device)?;
    let src = reference.image().arch().clone();
    let mismatch = |reason: String| Error::ArchitectureMismatch {
        source_file: opts.source.clone(),
        converted: opts.converted.clone(),
        reason,
    };
    let hf_folder = two_tower::detect(&opts.converted)?;
    // A transformers folder that is not a two-tower one may be the vision tower alone.
    let hf_vision = hf_folder.is_none()
        && targets::folder_layout(&opts.converted)? == Some(Layout::Hf)
        && hf_siglip2::is_siglip2_vision(&read_json(&opts.converted.join("config.json"))?);
    let (layout, tower) = match (hf_folder, opts.layout) {
        (Some(Layout::Hf), None | Some(Layout::Hf)) => (Layout::Hf, TowerChoice::All),
        (None, None | Some(Layout::Hf)) if hf_vision => (Layout::Hf, TowerChoice::Image),
        (None, None | Some(Layout::Timm)) if timm_naflex::is_naflex(&opts.converted) => {
            (Layout::Timm, TowerChoice::Image)
        }
        (Some(Layout::Hf), Some(asked)) => {
            return Err(Error::LayoutMismatch {
                path: opts.converted.clone(),
                layout: asked.as_str(),
                holds: "it is a two-tower hf folder (a transformers Siglip2Model)",
            })
        }
        _ => {
            if !opts.converted.exists() {
                return Err(Error::NotFound {
                    path: opts.converted.clone(),
                });
            }
            return Err(mismatch(
                "the source is a SigLIP 2 NaFlex model; the conversion is neither an hf Siglip2Model or Siglip2VisionModel folder nor a timm NaFlexVit (embeds.proj.weight)".into(),
            ));
        }
    };
    registry::check(&opts.source, family, layout, tower)?;
    // By default as many patches as the stored position grid has cells (256 for the released
    // 16x16 grids), so that some images shrink the grid on a side and some stretch it.
    let (inputs, input_note) = input::naflex(
        &opts.input,
        src.patch_size,
        opts.max_patches,
        src.pos_grid.saturating_mul(src.pos_grid),
    )?;
    let batch = inputs.batch();
    let mut notes: Vec<String> = reference.notes().to_vec();
    notes.push(input_note);
    let on_device = inputs.to_device(device)?;
    let stored = |dtype: Option<&str>| dtype.and_then(Precision::parse);
    let default_tolerance = |stored| opts.precision.tolerance_for(stored, true);
    let check = |t: &TargetArch| -> Result<()> {
        let pairs = [
            ("image width", src.hidden, t.hidden),
            ("image depth", src.depth, t.depth),
            ("image heads", src.heads, t.heads),
            ("image MLP width", src.mlp, t.mlp),
            ("patch size", src.patch_size, t.patch_size),
            ("position grid", src.pos_grid, t.grid),
        ];
        for (what, s, c) in pairs {
            if s != c {
                return Err(mismatch(format!("{what}: source {s}, converted {c}")));
            }
        }
        Ok(())
    };
    let naflex_report = |declared: Vec<DeclaredMismatch>| NaflexReport {
        max_patches: inputs.max_patches(),
        grids: inputs.grids.clone(),
        pos_grid: src.pos_grid,
        declared,
    };

    if tower == TowerChoice::Image {
        let (target, parts, declared) = match layout {
            Layout::Timm => {
                let (m, parts) = TimmNaflex::open(&opts.converted, device, opts.precision.kind())?;
                let declared = m.declared.clone();
                (ImageTower::Timm(m), parts, declared)
            }
            _ => {
                let (m, parts) = HfSiglip2::open(&opts.converted, device, opts.precision.kind())?;
                let config = opts.converted.join("config.json");
                let declared = two_tower::vision_declared(&config, Some(&read_json(&config)?), "")?;
                (ImageTower::Hf(m), parts, declared)
            }
        };
        check(&parts.arch)?;
        notes.extend(parts.notes.iter().cloned());
        notes.push("the conversion holds the image tower only: compared is the MAP head's output before normalisation; the text tower and t/b are not part of it".into());
        let patches = parts.norm.apply_patches(&on_device.patches)?;
        let target_inputs = NaflexInputs {
            patches: patches.f_to_kind(target.kind())?,
            ..on_device.to_device(device)?
        };
        let (out, reference_ms) = timed(device, || reference.image().forward(&on_device))?;
        let ((features, logits), target_ms) = timed(device, || target.forward(&target_inputs))?;
        let tolerance = opts
            .tolerance
            .unwrap_or(default_tolerance(stored(parts.declared.dtype.as_deref())));
        let features = compare_tensors(
            &features.f_to_kind(Kind::Float)?,
            &out.pooled,
            batch,
            tolerance,
        )?;
        let logits = match (logits, src.num_classes) {
            (Some(t), Some(_)) => {
                compare_tensors(&t.f_to_kind(Kind::Float)?, &out.embedding, batch, tolerance)?
            }
            (Some(_), None) => {
                notes.push("the converted model has a head the source has not: only the pooled features are compared".into());
                None
            }
            (None, _) => None,
        };
        declared_notes(&mut notes, &declared);
        let within =
            features.as_ref().is_some_and(|m| m.within) && logits.as_ref().is_none_or(|m| m.within);
        return Ok(Report {
            pass: within && declared.is_empty(),
            judged: true,
            layout,
            device: device_name(device),
            dtype: opts.precision.as_str().into(),
            batch,
            image_size: 0,
            tolerance,
            logits,
            features,
            expect: None,
            reference_ms,
            target_ms,
            input_norm: parts.norm.clone(),
            source: source_arch(&src),
            two_tower: None,
            naflex: Some(naflex_report(declared)),
            notes,
        });
    }

    let target = two_tower::open(&opts.converted, layout, device, opts.precision.kind())?;
    if !target.is_naflex() {
        return Err(mismatch(
            "the source is a SigLIP 2 NaFlex model, the conversion a fixed-resolution SiglipModel"
                .into(),
        ));
    }
    check(&target.arch)?;
    let text_arch = reference.text().arch().clone();
    for (what, s, c) in
        crate::text_pairs(&text_arch, reference.image_embed_width(), &target.text_arch)
    {
        if s != c {
            return Err(mismatch(format!("{what}: source {s}, converted {c}")));
        }
    }
    let tt = &target.text_arch;
    if tt.positions < text_arch.context {
        return Err(mismatch(format!(
            "text positions: source {}, converted {}",
            text_arch.context, tt.positions
        )));
    }
    notes.extend(target.notes.iter().cloned());
    let ids = input::load_text(&opts.text, text_arch.vocab, text_arch.context)?;
    let texts = usize::try_from(ids.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let text_ids = match &opts.text {
        input::TextSource::Npy(path) => path.display().to_string(),
        input::TextSource::Random { seed, eos_id, .. } => {
            format!("random (seed {seed}, padded with EOS id {eos_id})")
        }
    };
    let ids = ids.f_to_device(device)?;
    let patches = target.norm.apply_patches(&on_device.patches)?;
    let target_inputs = NaflexInputs {
        patches: patches.f_to_kind(target.kind())?,
        ..on_device.to_device(device)?
    };
    let (out, reference_ms) = timed(device, || reference.forward(&on_device, &ids))?;
    let ((ti, tt_features), target_ms) = timed(device, || {
        Ok((
            target.image_features_naflex(&target_inputs)?,
            target.text_features(&ids)?,
        ))
    })?;
    let logits = target.logits(&ti, &tt_features)?;
    let zi = crate::references::siglip::l2_normalise(&ti.f_to_kind(Kind::Float)?)?;
    let zt = crate::references::siglip::l2_normalise(&tt_features.f_to_kind(Kind::Float)?)?;
    let tolerance = opts.tolerance.unwrap_or(default_tolerance(stored(
        target.declared_config.dtype.as_deref(),
    )));
    let image_embeds = compare_tensors(&zi, &out.image_embeds, batch, tolerance)?;
    let text_embeds = compare_tensors(&zt, &out.text_embeds, texts, tolerance)?;
    let logits_per_image = compare_tensors(&logits, &out.logits_per_image, batch, tolerance)?;
    let expect = match &opts.expect {
        Some(path) => Some(compare_expect(
            path,
            Some(&out.logits_per_image),
            batch,
            opts.tolerance.unwrap_or(TWO_TOWER_F32_TOLERANCE),
        )?),
        None => None,
    };
    let declared = target.declared.clone();
    declared_notes(&mut notes, &declared);
    let within = [&image_embeds, &text_embeds, &logits_per_image]
        .iter()
        .all(|m| m.as_ref().is_some_and(|m| m.within));
    let pass = within && declared.is_empty() && expect.as_ref().is_none_or(|m| m.within);
    Ok(Report {
        pass,
        judged: true,
        layout,
        device: device_name(device),
        dtype: opts.precision.as_str().into(),
        batch,
        image_size: 0,
        tolerance,
        logits: None,
        features: None,
        expect,
        reference_ms,
        target_ms,
        input_norm: target.norm.clone(),
        source: source_arch(&src),
        two_tower: Some(TwoTowerReport {
            image_embeds,
            text_embeds,
            logits_per_image,
            texts,
            context: text_arch.context,
            text_ids,
            reference_t: reference.t,
            reference_b: reference.b,
            target_logit_scale: target.logit_scale,
            target_logit_bias: target.logit_bias,
            declared,
        }),
        naflex: Some(naflex_report(Vec::new())),
        notes,
    })
}

/// One note per declared mismatch.
fn declared_notes(notes: &mut Vec<String>, declared: &[DeclaredMismatch]) {
    for d in declared {
        notes.push(format!(
            "declared {} in {} is {}, the source computes {}",
            d.field,
            d.file.display(),
            d.found,
            d.expected
        ));
    }
}

/// The NaFlex tower's architecture in the report's common shape: its stored position grid as
/// the grid, `G * P` as the nominal image size (NaFlex images keep their own sizes).
fn source_arch(a: &NaflexArch) -> SourceArch {
    SourceArch {
        family: Family::BigVision,
        image_size: a.pos_grid.saturating_mul(a.patch_size),
        patch_size: a.patch_size,
        grid: a.pos_grid,
        hidden: a.hidden,
        depth: a.depth,
        heads: a.heads,
        head_dim: a.head_dim,
        mlp: a.mlp,
        classifier: Classifier::Map,
        posemb: PosEmb::Learned,
        class_pos: false,
        scan: a.scan,
        representation: None,
        num_classes: a.num_classes,
        resnet: None,
        embed_in: 3,
    }
}

/// A NaFlex image tower converted alone.
enum ImageTower {
    /// timm's `NaFlexVit`.
    Timm(TimmNaflex),
    /// transformers' `Siglip2VisionModel`.
    Hf(HfSiglip2),
}

impl ImageTower {
    /// The dtype the weights were loaded in.
    fn kind(&self) -> Kind {
        match self {
            ImageTower::Timm(m) => m.kind(),
            ImageTower::Hf(m) => m.kind(),
        }
    }

    /// The MAP head's output before normalisation and, where the tower has a head after it, that head's
    /// output (`Siglip2VisionModel`'s `pooler_output` is the MAP head's output: it has none).
    fn forward(&self, inputs: &NaflexInputs) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            ImageTower::Timm(m) => m.forward(inputs),
            ImageTower::Hf(m) => Ok((m.forward(inputs)?, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::references::naflex::Semantics;
    use crate::{verify, InputSource, TextSource};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use vitconv_tensors::{DType, Format, TensorFile, TensorSpec, Writer};

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-naflex-tiny")
            .join(rel)
    }

    /// Builds a conversion of the golden case with the real library (tests/naflex_targets.py, run by
    /// the venv's python that scripts/with-libtorch puts first on PATH); the helper itself checks
    /// that the library's forward gives the golden outputs. Once vitconv's converter writes NaFlex,
    /// these should be `vitconv npz-to-pt` outputs.
    fn build(layout: &str, out: &Path) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/naflex_targets.py");
        let o = std::process::Command::new("python")
            .arg(&script)
            .arg(fixture(""))
            .arg(out)
            .arg(layout)
            .output()
            .expect("python runs (run the tests through scripts/with-libtorch)");
        assert!(
            o.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn options(converted: &Path, input: InputSource, text: TextSource) -> Options {
        let golden = matches!(input, InputSource::Npy(_)) && matches!(text, TextSource::Npy(_));
        Options {
            source: fixture("checkpoint.npz"),
            converted: converted.to_path_buf(),
            layout: None,
            device: "cpu".into(),
            precision: Precision::F32,
            input,
            // On the golden inputs, the golden logits hold the reference itself to big_vision.
            expect: golden.then(|| fixture("logits_per_image.npy")),
            tolerance: None,
            image_size: None,
            text,
            max_patches: None,
        }
    }

    fn golden_patches() -> InputSource {
        InputSource::Npy(fixture("patches.npy"))
    }

    fn golden_text() -> TextSource {
        TextSource::Npy(fixture("text.npy"))
    }

    fn random_images() -> InputSource {
        InputSource::Random { batch: 3, seed: 1 }
    }

    fn random_text() -> TextSource {
        TextSource::Random {
            texts: 3,
            seed: 5,
            eos_id: 1,
        }
    }

    /// The compared metrics of a report: the two-tower triple, or the timm features (and logits).
    fn metrics(r: &Report) -> Vec<(&'static str, crate::Metrics)> {
        match &r.two_tower {
            Some(t) => [
                ("image_embeds", &t.image_embeds),
                ("text_embeds", &t.text_embeds),
                ("logits_per_image", &t.logits_per_image),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.clone().map(|m| (n, m)))
            .collect(),
            None => [("features", &r.features), ("logits", &r.logits)]
                .into_iter()
                .filter_map(|(n, m)| m.clone().map(|m| (n, m)))
                .collect(),
        }
    }

    fn declared_fields(r: &Report) -> Vec<String> {
        let from = |d: &[DeclaredMismatch]| d.iter().map(|d| d.field.clone()).collect::<Vec<_>>();
        match (&r.two_tower, &r.naflex) {
            (Some(t), _) => from(&t.declared),
            (None, Some(n)) => from(&n.declared),
            _ => Vec::new(),
        }
    }

    /// Asserts a pass within the two-tower bound on every compared output; returns the worst difference.
    fn assert_pass(what: &str, r: &Report) -> f64 {
        assert!(r.pass && r.judged, "{what}: {r:?}");
        assert!(declared_fields(r).is_empty(), "{what}: {r:?}");
        assert!(r.naflex.is_some(), "{what}: a NaFlex report");
        let mut worst = 0.0f64;
        let all = metrics(r);
        assert!(!all.is_empty(), "{what}: nothing compared");
        for (name, m) in all {
            assert!(
                m.max_abs_diff <= TWO_TOWER_F32_TOLERANCE,
                "{what}: {name} {m:?}"
            );
            eprintln!("{what}: {name} max abs diff {:e}", m.max_abs_diff);
            worst = worst.max(m.max_abs_diff);
        }
        if let Some(e) = &r.expect {
            assert!(e.within, "{what}: the reference vs the golden logits {e:?}");
        }
        worst
    }

    /// The largest difference of a failing report, asserting that it fails numerically.
    fn assert_numerically_apart(what: &str, r: &Report) -> f64 {
        assert!(!r.pass, "{what} passed: {r:?}");
        let worst = metrics(r)
            .iter()
            .map(|(_, m)| m.max_abs_diff)
            .fold(0.0f64, f64::max);
        assert!(
            metrics(r).iter().any(|(_, m)| !m.within),
            "{what}: no output beyond the bound: {r:?}"
        );
        eprintln!("{what}: caught, worst max abs diff {worst:e}");
        worst
    }

    /// Copies the safetensors `from` to `to`, rewriting tensors through `edit` (name, shape, values)
    /// and the metadata through `meta`.
    fn rewrite(
        from: &Path,
        to: &Path,
        edit: impl Fn(&str, &[usize], &mut Vec<f32>),
        meta: impl Fn(&mut BTreeMap<String, String>),
    ) {
        let file = TensorFile::open(from).expect("opens");
        let specs: Vec<TensorSpec> = file
            .tensors()
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dtype: DType::F32,
                shape: t.shape.clone(),
            })
            .collect();
        let mut metadata = file.metadata().clone();
        meta(&mut metadata);
        let mut w =
            Writer::create(to, Format::Safetensors, specs, metadata, false).expect("writer");
        for t in file.tensors() {
            let mut v = file.read_f32(&t.name).expect("reads");
            edit(&t.name, &t.shape, &mut v);
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_next(&bytes).expect("writes");
        }
        w.finish().expect("finishes");
    }

    /// Copies an hf folder, rewriting its weights through `edit`.
    fn rewrite_folder(from: &Path, to: &Path, edit: impl Fn(&str, &[usize], &mut Vec<f32>)) {
        std::fs::create_dir_all(to).expect("creates");
        for name in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(from.join(name), to.join(name)).expect("copies");
        }
        rewrite(
            &from.join("model.safetensors"),
            &to.join("model.safetensors"),
            edit,
            |_| {},
        );
    }

    /// A planted timm bug: its name, the metadata and tensor edits, and the declared field it
    /// should be named by (none for a weight edit).
    type PlantedCase = (
        &'static str,
        Box<dyn Fn(&mut BTreeMap<String, String>)>,
        Box<dyn Fn(&str, &[usize], &mut Vec<f32>)>,
        Option<&'static str>,
    );

    fn keep(_: &str, _: &[usize], _: &mut Vec<f32>) {}

    /// Sets one timm kwarg in `vitconv.timm_kwargs`.
    fn kwarg(
        key: &'static str,
        value: serde_json::Value,
    ) -> impl Fn(&mut BTreeMap<String, String>) {
        move |m| {
            let k = vitconv_convert::meta::TIMM_KWARGS;
            let mut kw: serde_json::Value =
                serde_json::from_str(m.get(k).expect("timm kwargs")).expect("JSON");
            kw[key] = value.clone();
            m.insert(k.to_string(), kw.to_string());
        }
    }

    /// Reorders the input axis of a `[D, P*P*3]` patch embedding from (py, px, c) to (c, py, px):
    /// the weight a converter that flattens patches channel-first would write.
    fn channel_first(target: &'static str) -> impl Fn(&str, &[usize], &mut Vec<f32>) {
        move |name, shape, v| {
            if name != target {
                return;
            }
            let (d, width) = (shape[0], shape[1]);
            let pp = width / 3;
            let old = v.clone();
            for o in 0..d {
                for pix in 0..pp {
                    for c in 0..3 {
                        v[o * width + c * pp + pix] = old[o * width + pix * 3 + c];
                    }
                }
            }
        }
    }

    /// Transposes a `[G*G, D]` position table's grid (row y, column x becomes row x, column y).
    fn transposed_grid(target: &'static str) -> impl Fn(&str, &[usize], &mut Vec<f32>) {
        move |name, shape, v| {
            if name != target {
                return;
            }
            let d = shape[1];
            let g = shape[0].isqrt();
            let old = v.clone();
            for y in 0..g {
                for x in 0..g {
                    let (to, from) = ((y * g + x) * d, (x * g + y) * d);
                    v[to..to + d].copy_from_slice(&old[from..from + d]);
                }
            }
        }
    }

    #[test]
    fn hf_siglip2_model_matches_and_planted_bugs_are_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("hf");
        build("hf", &good);
        let run = |p: &Path, i, t| verify(&options(p, i, t)).expect("verify runs");
        let r = run(&good, golden_patches(), golden_text());
        assert_pass("hf Siglip2Model (golden patches and ids)", &r);
        assert_eq!(r.layout, Layout::Hf);
        assert_eq!(
            r.naflex.as_ref().map(|n| (n.max_patches, n.grids.clone())),
            Some((24, vec![[4, 6], [3, 8], [6, 3]]))
        );
        let r = run(&good, random_images(), random_text());
        assert_pass("hf Siglip2Model (random images, 3 aspect ratios)", &r);
        let grids = r.naflex.as_ref().expect("naflex").grids.clone();
        assert!(
            grids.iter().any(|[h, w]| h * w < 16),
            "one is padded: {grids:?}"
        );
        assert!(
            grids.iter().any(|[h, w]| h.min(w) < &4),
            "one shrinks: {grids:?}"
        );

        let bad = dir.path().join("hf-cyx");
        rewrite_folder(
            &good,
            &bad,
            channel_first("vision_model.embeddings.patch_embedding.weight"),
        );
        let worst = assert_numerically_apart(
            "hf: patches flattened (c, py, px)",
            &run(&bad, golden_patches(), golden_text()),
        );
        assert!(worst > 0.01, "{worst}");

        let bad = dir.path().join("hf-transposed");
        rewrite_folder(
            &good,
            &bad,
            transposed_grid("vision_model.embeddings.position_embedding.weight"),
        );
        assert_numerically_apart(
            "hf: position grid transposed",
            &run(&bad, golden_patches(), golden_text()),
        );
    }

    #[test]
    fn timm_naflexvit_matches_and_planted_bugs_are_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("timm.safetensors");
        build("timm", &good);
        let run =
            |p: &Path, i: InputSource| verify(&options(p, i, golden_text())).expect("verify runs");
        let r = run(&good, golden_patches());
        assert_pass("timm NaFlexVit (golden patches)", &r);
        assert_eq!(r.layout, Layout::Timm);
        assert_pass(
            "timm NaFlexVit (random images)",
            &run(&good, random_images()),
        );
        let mut images = options(&good, random_images(), golden_text());
        images.max_patches = Some(24);
        let r = verify(&images).expect("runs");
        assert_pass("timm NaFlexVit (random images, 24 patches)", &r);
        assert_eq!(r.naflex.as_ref().map(|n| n.max_patches), Some(24));

        let folder = dir.path().join("timm-folder");
        build("timm-folder", &folder);
        assert_pass(
            "timm folder (golden patches)",
            &run(&folder, golden_patches()),
        );

        // Each planted bug fails; the declared ones are named, and every one of them moves the
        // outputs beyond the bound on the golden inputs.
        let cases: [PlantedCase; 4] = [
            (
                "bicubic position resize",
                Box::new(kwarg("pos_embed_interp_mode", serde_json::json!("bicubic"))),
                Box::new(keep),
                Some("pos_embed_interp_mode"),
            ),
            (
                "no antialias",
                Box::new(kwarg("pos_embed_antialias", serde_json::json!(false))),
                Box::new(keep),
                Some("pos_embed_antialias"),
            ),
            (
                "interp mode left to NaFlexVit's default (bicubic)",
                Box::new(|m: &mut BTreeMap<String, String>| {
                    let k = vitconv_convert::meta::TIMM_KWARGS;
                    let mut kw: serde_json::Value =
                        serde_json::from_str(m.get(k).expect("kwargs")).expect("JSON");
                    kw.as_object_mut()
                        .expect("object")
                        .remove("pos_embed_interp_mode");
                    m.insert(k.to_string(), kw.to_string());
                }),
                Box::new(keep),
                Some("pos_embed_interp_mode"),
            ),
            (
                "patches flattened (c, py, px)",
                Box::new(|_: &mut BTreeMap<String, String>| {}),
                Box::new(channel_first("embeds.proj.weight")),
                None,
            ),
        ];
        for (i, (what, meta, edit, field)) in cases.iter().enumerate() {
            let bad = dir.path().join(format!("bad-{i}.safetensors"));
            rewrite(&good, &bad, edit, meta);
            let r = run(&bad, golden_patches());
            let worst = assert_numerically_apart(what, &r);
            assert!(worst > TWO_TOWER_F32_TOLERANCE, "{what}: {worst}");
            assert_eq!(
                declared_fields(&r),
                field.map(|f| vec![f.to_string()]).unwrap_or_default(),
                "{what}"
            );
        }
    }

    #[test]
    fn padding_left_unmasked_in_the_map_head_is_caught_at_the_verify_tolerance() {
        // No converted file can express this mistake (the mask is the library's), so the reference
        // is run with the MAP head's key mask off against the correct timm conversion, and the
        // comparison verify makes is shown to fail at its bound.
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("timm.safetensors");
        build("timm", &good);
        let (target, _) = TimmNaflex::open(&good, Device::Cpu, Kind::Float).expect("opens");
        let reference =
            NaflexTwoTower::open(&fixture("checkpoint.npz"), Device::Cpu).expect("opens");
        let (inputs, _) = input::naflex(&golden_patches(), 8, None, 16).expect("inputs");
        let (features, _) = target.forward(&inputs).expect("runs");
        let right = reference.image().forward(&inputs).expect("runs");
        let wrong = reference
            .image()
            .forward_with(
                &inputs,
                Semantics {
                    antialias: true,
                    map_mask: false,
                },
            )
            .expect("runs");
        let ok = compare_tensors(&features, &right.pooled, 3, TWO_TOWER_F32_TOLERANCE)
            .expect("compares")
            .expect("same shapes");
        assert!(ok.within, "{ok:?}");
        let caught = compare_tensors(&features, &wrong.pooled, 3, TWO_TOWER_F32_TOLERANCE)
            .expect("compares")
            .expect("same shapes");
        eprintln!(
            "padding unmasked in the MAP head: max abs diff {:e}",
            caught.max_abs_diff
        );
        assert!(!caught.within, "{caught:?}");
    }

    #[test]
    fn a_naflex_source_and_a_fixed_resolution_conversion_do_not_mix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let timm = dir.path().join("timm.safetensors");
        build("timm", &timm);
        // A fixed-resolution SigLIP source against the NaFlex conversion.
        let big_vision =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/big_vision");
        let mut o = options(&timm, random_images(), random_text());
        o.source = big_vision.join("siglip-nohead/checkpoint.npz");
        assert!(
            verify(&o).is_err(),
            "a NaFlex conversion ran against a fixed-resolution source"
        );
        // The NaFlex source against a file that is no NaFlex conversion.
        let other = fixture("image_embeds.npy");
        let Err(err) = verify(&options(&other, random_images(), random_text())) else {
            panic!("an .npy ran as a NaFlex conversion");
        };
        assert!(matches!(err, Error::ArchitectureMismatch { .. }), "{err}");
    }
}
