//! Which reference runs each source family and which targets run each layout: the one table `verify` dispatches
//! through, keyed by the converter's own registries, so that a family or layout added there is either given a
//! verify path here or declared unverifiable with its reason.
//!
//! The converter's source registry (`vitconv_convert::sources::SOURCES`) says which family a file is; its
//! layout registry (`vitconv_convert::layout::LAYOUTS`) lists the layouts. The converter cannot name the
//! reference of a family itself (it has no libtorch), so the entries here are keyed by the family's name.
//! A comparison takes one of four [`Route`]s: which one follows from the family and from whether the conversion
//! holds the whole model or `--tower image`. A route runs only against a layout whose [`TargetDef`] lists it.
//! The coverage test below converts a fixture of every family into every layout and both tower choices, and
//! fails for each pair that converts but has no route here and no [`GAPS`] entry saying why.

use std::path::Path;

use vitconv_convert::sources::{big_vision, paligemma, siglip, siglip2_naflex, vit_jax, SOURCES};
use vitconv_convert::{Layout, TowerChoice};
use vitconv_tensors::TensorFile;

pub use crate::error::Uncovered;
use crate::error::{Error, Result};

/// How a source and its conversion are run side by side: which inputs both see and which outputs are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// One image tower on square pixels: logits and pooled features (or every token, for a tower without
    /// pooling).
    Pixels,
    /// Both towers of a SigLIP model on the same pixels and token ids: image and text embeddings and logits.
    TwoTower,
    /// Both towers of a SigLIP 2 NaFlex model on patch inputs with padding masks.
    NaflexTwoTower,
    /// The image tower of a SigLIP 2 NaFlex model on patch inputs.
    NaflexImage,
}

impl Route {
    /// The route in words, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Pixels => "one image tower on square pixels",
            Route::TwoTower => "both towers on pixels and token ids",
            Route::NaflexTwoTower => "both NaFlex towers on patch inputs",
            Route::NaflexImage => "the NaFlex image tower on patch inputs",
        }
    }
}

/// How the square-pixel reference reads a family's image tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelReference {
    /// google-research/vision_transformer's module tree and semantics.
    VitJax,
    /// big_vision's ViT.
    BigVision {
        /// Whether the family builds its tower with `pool_type='none'` (every token out, no pooling), which the
        /// tower's keys cannot tell from `gap`; otherwise the pooling is read from the keys (`tok`, `gap`, `map`).
        unpooled: bool,
    },
}

/// A source family's verify entry.
#[derive(Debug)]
pub struct ReferenceDef {
    /// The family's name in the converter's source registry.
    pub family: &'static str,
    /// The route of a conversion holding the whole model; `None` where the converter holds no such conversion.
    pub whole: Option<Route>,
    /// The route of a `--tower image` conversion; `None` for a one-tower family, where the option does not apply.
    pub image_tower: Option<Route>,
    /// How [`Route::Pixels`] reads the family; `None` where no route runs on square pixels.
    pub pixels: Option<PixelReference>,
}

impl ReferenceDef {
    /// The route of a conversion holding `tower` of this family.
    pub fn route(&self, tower: TowerChoice) -> Option<Route> {
        match tower {
            TowerChoice::All => self.whole,
            TowerChoice::Image => self.image_tower,
        }
    }
}

/// Every source family's reference, keyed by the converter's family names.
pub const REFERENCES: &[ReferenceDef] = &[
    ReferenceDef {
        family: vit_jax::FAMILY,
        whole: Some(Route::Pixels),
        image_tower: None,
        pixels: Some(PixelReference::VitJax),
    },
    ReferenceDef {
        family: big_vision::FAMILY,
        whole: Some(Route::Pixels),
        image_tower: None,
        pixels: Some(PixelReference::BigVision { unpooled: false }),
    },
    ReferenceDef {
        family: siglip::FAMILY,
        whole: Some(Route::TwoTower),
        image_tower: Some(Route::Pixels),
        pixels: Some(PixelReference::BigVision { unpooled: false }),
    },
    ReferenceDef {
        family: siglip2_naflex::FAMILY,
        whole: Some(Route::NaflexTwoTower),
        image_tower: Some(Route::NaflexImage),
        pixels: None,
    },
    ReferenceDef {
        family: paligemma::FAMILY,
        // The converter refuses the language model: only the image tower converts.
        whole: None,
        image_tower: Some(Route::Pixels),
        // PaliGemma builds its image tower with pool_type 'none', which the tower's keys cannot tell from
        // 'gap'; the family says so.
        pixels: Some(PixelReference::BigVision { unpooled: true }),
    },
];

/// A layout's verify entry: the routes its target forwards run.
#[derive(Debug)]
pub struct TargetDef {
    /// The layout, as the converter's layout registry names it.
    pub layout: Layout,
    /// The routes a conversion into this layout can be compared by.
    pub routes: &'static [Route],
}

/// Every layout's targets.
pub const TARGETS: &[TargetDef] = &[
    TargetDef {
        layout: Layout::Timm,
        // VisionTransformer files and folders; NaFlexVit for a NaFlex image tower.
        routes: &[Route::Pixels, Route::NaflexImage],
    },
    TargetDef {
        layout: Layout::Hf,
        // ViTModel / ViTForImageClassification, SiglipVisionModel; SiglipModel; Siglip2Model;
        // Siglip2VisionModel.
        routes: &[
            Route::Pixels,
            Route::TwoTower,
            Route::NaflexTwoTower,
            Route::NaflexImage,
        ],
    },
    TargetDef {
        layout: Layout::OpenClip,
        routes: &[Route::Pixels, Route::TwoTower],
    },
    TargetDef {
        layout: Layout::Clip,
        routes: &[Route::Pixels],
    },
];

/// A conversion verify cannot compare, and why: each entry is a pair the converter writes on purpose.
#[derive(Debug)]
pub struct Gap {
    /// The source family.
    pub family: &'static str,
    /// The layout.
    pub layout: Layout,
    /// Which towers the conversion holds.
    pub tower: TowerChoice,
    /// Why there is no comparison, and what checks the output instead.
    pub reason: &'static str,
}

/// The conversions declared unverifiable: none today. An entry names a pair the converter writes on purpose
/// that verify cannot compare, and why; the coverage test fails for an entry no conversion reaches.
pub const GAPS: &[Gap] = &[];

/// The verify entry of `family`.
pub fn reference(family: &str) -> Option<&'static ReferenceDef> {
    REFERENCES.iter().find(|r| r.family == family)
}

/// The verify entry of `layout`.
pub fn target(layout: Layout) -> Option<&'static TargetDef> {
    TARGETS.iter().find(|t| t.layout == layout)
}

/// The route a conversion of `family` into `layout`, holding `tower`, is verified by.
pub fn route(
    family: &str,
    layout: Layout,
    tower: TowerChoice,
) -> std::result::Result<Route, Uncovered> {
    route_in(GAPS, family, layout, tower)
}

/// [`route`] with `gaps` declared.
fn route_in(
    gaps: &[Gap],
    family: &str,
    layout: Layout,
    tower: TowerChoice,
) -> std::result::Result<Route, Uncovered> {
    if let Some(gap) = gaps
        .iter()
        .find(|g| g.family == family && g.layout == layout && g.tower == tower)
    {
        return Err(Uncovered::Declared(gap.reason));
    }
    let route = reference(family)
        .ok_or(Uncovered::NoReference)?
        .route(tower)
        .ok_or(Uncovered::NoRoute)?;
    match target(layout) {
        Some(t) if t.routes.contains(&route) => Ok(route),
        _ => Err(Uncovered::NoTarget {
            route: route.as_str(),
        }),
    }
}

/// [`route`], as the error `verify` reports.
pub fn check(
    path: &Path,
    family: &'static str,
    layout: Layout,
    tower: TowerChoice,
) -> Result<Route> {
    route(family, layout, tower).map_err(|why| Error::NoVerifyPath {
        path: path.to_path_buf(),
        family,
        layout: layout.as_str(),
        tower: tower_name(tower),
        why,
    })
}

/// `all` or `image`, as `--tower` spells them.
pub fn tower_name(tower: TowerChoice) -> &'static str {
    match tower {
        TowerChoice::All => "all",
        TowerChoice::Image => "image",
    }
}

/// The family of a source file, through the converter's source registry, with its verify entry.
pub fn family_of(path: &Path, file: &TensorFile) -> Result<&'static ReferenceDef> {
    let source = SOURCES
        .iter()
        .find(|s| (s.claims)(file.tensors()))
        .ok_or_else(|| Error::NotASource {
            path: path.to_path_buf(),
            tensors: file.tensors().len(),
        })?;
    reference(source.name).ok_or_else(|| Error::NoVerifyPath {
        path: path.to_path_buf(),
        family: source.name,
        layout: "any",
        tower: "all",
        why: Uncovered::NoReference,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use vitconv_convert::layout::LAYOUTS;
    use vitconv_convert::plan::OutputKind;
    use vitconv_convert::{prepare, Options};

    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// Golden files of each source family, the coverage test's inputs. A family added to the converter's
    /// registry needs its fixtures here too: the test fails until it has them.
    const FAMILY_FIXTURES: &[(&str, &[&str])] = &[
        (
            vit_jax::FAMILY,
            &[
                "vit-token/checkpoint.npz",
                "vit-gap/checkpoint.npz",
                "vit-prelogits/checkpoint.npz",
                "vit-mlp4/checkpoint.npz",
                "hybrid-r2/checkpoint.npz",
            ],
        ),
        (
            big_vision::FAMILY,
            &[
                "big_vision/bv-vit-tok-scan/checkpoint.npz",
                "big_vision/bv-vit-map-scan/checkpoint.npz",
                "big_vision/bv-vit-gap-sincos/checkpoint.npz",
            ],
        ),
        (
            siglip::FAMILY,
            &[
                "big_vision/siglip-tiny/checkpoint.npz",
                "big_vision/siglip-nohead/checkpoint.npz",
                "siglip2/siglip2-gopt-tiny/checkpoint.npz",
            ],
        ),
        (
            siglip2_naflex::FAMILY,
            &["siglip2/siglip2-naflex-tiny/checkpoint.npz"],
        ),
        (
            paligemma::FAMILY,
            &["siglip2/paligemma-tower-tiny/checkpoint.npz"],
        ),
    ];

    /// A conversion the converter writes: the family, the layout, the towers and the fixture it was seen on.
    type Pair = (&'static str, Layout, TowerChoice, String);

    /// Every (family, layout, tower) the converter writes for some fixture, with the fixture; and the families
    /// that have no fixture here.
    fn converting_pairs() -> (Vec<Pair>, Vec<String>) {
        let mut pairs = Vec::new();
        let mut problems = Vec::new();
        for source in SOURCES {
            let Some((_, files)) = FAMILY_FIXTURES.iter().find(|(f, _)| *f == source.name) else {
                problems.push(format!(
                    "family {}: no fixture in FAMILY_FIXTURES (crates/verify/src/registry.rs), so nothing shows which layouts it converts to",
                    source.name
                ));
                continue;
            };
            for rel in *files {
                let file = TensorFile::open(fixtures().join(rel)).expect("fixture opens");
                let claimed = SOURCES.iter().find(|s| (s.claims)(file.tensors()));
                assert_eq!(
                    claimed.map(|s| s.name),
                    Some(source.name),
                    "{rel} is not a {} file",
                    source.name
                );
                for def in LAYOUTS {
                    for tower in [TowerChoice::All, TowerChoice::Image] {
                        let mut opts = Options::new(def.layout);
                        opts.tower = tower;
                        // A sincos2d source states no resolution of its own.
                        opts.image_size = rel.contains("sincos").then_some(32);
                        if prepare(&file, &opts).is_ok() {
                            pairs.push((source.name, def.layout, tower, (*rel).to_string()));
                        }
                    }
                }
            }
        }
        (pairs, problems)
    }

    /// Converts fixture `rel` into `layout` holding `tower`, then runs `verify` on CPU on two random images (and
    /// texts) and requires a passing report; the error or failing report in words otherwise.
    fn verify_pair(
        tmp: &Path,
        n: usize,
        rel: &str,
        layout: Layout,
        tower: TowerChoice,
    ) -> std::result::Result<(), String> {
        let source = fixtures().join(rel);
        let file = TensorFile::open(&source).map_err(|e| e.to_string())?;
        let mut opts = Options::new(layout);
        opts.tower = tower;
        opts.image_size = rel.contains("sincos").then_some(32);
        let conv = prepare(&file, &opts).map_err(|e| e.to_string())?;
        // A folder where the plan has no single-file form, else one file.
        let folder = matches!(
            conv.plan.kind,
            OutputKind::HfDirectory | OutputKind::Directory { .. }
        );
        let out = match folder {
            true => tmp.join(format!("out{n}")),
            false => tmp.join(format!("out{n}.safetensors")),
        };
        vitconv_convert::write(&file, &conv, &opts, &out, &mut |_, _| {})
            .map_err(|e| e.to_string())?;
        let report = crate::verify(&crate::Options {
            source,
            converted: out,
            layout: None,
            device: "cpu".into(),
            precision: crate::Precision::F32,
            input: crate::InputSource::Random { batch: 2, seed: 7 },
            expect: None,
            tolerance: None,
            image_size: None,
            text: crate::TextSource::Random {
                texts: 2,
                seed: 7,
                eos_id: 1,
            },
            max_patches: None,
        })
        .map_err(|e| e.to_string())?;
        match report.pass {
            true => Ok(()),
            false => Err(format!("the comparison failed: {:?}", report.notes)),
        }
    }

    #[test]
    fn every_converting_family_and_layout_has_a_verify_path_or_a_declared_reason() {
        let (pairs, mut problems) = converting_pairs();
        // The fixtures reach every layout and both tower choices, so the loop below checks something.
        for def in LAYOUTS {
            assert!(
                pairs.iter().any(|p| p.1 == def.layout),
                "no fixture converts to {}",
                def.layout.as_str()
            );
        }
        assert!(pairs.iter().any(|p| p.2 == TowerChoice::Image));
        assert!(pairs.len() >= 20, "{} converting pairs", pairs.len());
        let tmp = tempfile::tempdir().expect("temporary directory");
        for (n, (family, layout, tower, rel)) in pairs.iter().enumerate() {
            match route(family, *layout, *tower) {
                Ok(route) => {
                    // The route is not only declared: verify runs it on this very conversion and passes.
                    if let Err(why) = verify_pair(tmp.path(), n, rel, *layout, *tower) {
                        problems.push(format!(
                            "{family} -> {} (--tower {}), {rel}, route {route:?}: {why}",
                            layout.as_str(),
                            tower_name(*tower)
                        ));
                    }
                }
                Err(Uncovered::Declared(_)) => {}
                Err(why) => problems.push(format!(
                    "{family} -> {} (--tower {}), e.g. {rel}: {}",
                    layout.as_str(),
                    tower_name(*tower),
                    why
                )),
            }
        }
        // A declared gap that no conversion reaches any longer is stale.
        for gap in GAPS {
            if !pairs
                .iter()
                .any(|p| p.0 == gap.family && p.1 == gap.layout && p.2 == gap.tower)
            {
                problems.push(format!(
                    "GAPS declares {} -> {} (--tower {}), which no fixture converts: remove the entry",
                    gap.family,
                    gap.layout.as_str(),
                    tower_name(gap.tower)
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "verify coverage:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn every_registered_family_and_layout_has_a_verify_entry() {
        for source in SOURCES {
            assert!(
                reference(source.name).is_some(),
                "family {}: {}",
                source.name,
                Uncovered::NoReference
            );
        }
        for def in LAYOUTS {
            assert!(
                target(def.layout).is_some(),
                "layout {} has no entry in TARGETS",
                def.layout.as_str()
            );
        }
        // Nothing here names a family or layout the converter does not have.
        for r in REFERENCES {
            assert!(SOURCES.iter().any(|s| s.name == r.family), "{}", r.family);
        }
        for t in TARGETS {
            assert!(LAYOUTS.iter().any(|d| d.layout == t.layout));
        }
    }

    #[test]
    fn routes_follow_the_towers_and_the_layouts_targets() {
        assert_eq!(
            route(siglip::FAMILY, Layout::Hf, TowerChoice::All),
            Ok(Route::TwoTower)
        );
        assert_eq!(
            route(siglip::FAMILY, Layout::Timm, TowerChoice::Image),
            Ok(Route::Pixels)
        );
        assert_eq!(
            route(siglip2_naflex::FAMILY, Layout::Timm, TowerChoice::Image),
            Ok(Route::NaflexImage)
        );
        assert_eq!(
            route(siglip2_naflex::FAMILY, Layout::OpenClip, TowerChoice::All),
            Err(Uncovered::NoTarget {
                route: Route::NaflexTwoTower.as_str()
            })
        );
        assert_eq!(
            route(paligemma::FAMILY, Layout::Hf, TowerChoice::All),
            Err(Uncovered::NoRoute)
        );
        assert_eq!(
            route("no-such-family", Layout::Timm, TowerChoice::All),
            Err(Uncovered::NoReference)
        );
        assert_eq!(
            route(siglip2_naflex::FAMILY, Layout::Hf, TowerChoice::Image),
            Ok(Route::NaflexImage)
        );
        // A declared gap wins over a route, and says why.
        let gaps = [Gap {
            family: siglip2_naflex::FAMILY,
            layout: Layout::Hf,
            tower: TowerChoice::Image,
            reason: "a reason",
        }];
        assert_eq!(
            route_in(
                &gaps,
                siglip2_naflex::FAMILY,
                Layout::Hf,
                TowerChoice::Image
            ),
            Err(Uncovered::Declared("a reason"))
        );
    }

    #[test]
    fn a_file_of_no_family_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tmp");
        let npz = dir.path().join("other.npz");
        let mut w = vitconv_tensors::Writer::create(
            &npz,
            vitconv_tensors::Format::Npz,
            vec![vitconv_tensors::TensorSpec {
                name: "something/else".into(),
                dtype: vitconv_tensors::DType::F32,
                shape: vec![2],
            }],
            std::collections::BTreeMap::new(),
            false,
        )
        .expect("writer");
        w.write_next(&[0u8; 8]).expect("written");
        w.finish().expect("finished");
        let file = TensorFile::open(&npz).expect("opens");
        let err = family_of(&npz, &file).expect_err("no family claims it");
        assert!(
            matches!(&err, Error::NotASource { path, tensors: 1 } if path == &npz),
            "{err}"
        );
    }
}
