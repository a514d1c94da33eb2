//! What the user asked for: target layout, dtype, resolution, head, projection, input normalisation, GELU.

use serde::Serialize;

/// A target layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// timm's `VisionTransformer` state dict.
    Timm,
    /// A transformers model directory.
    Hf,
    /// open_clip's visual tower.
    OpenClip,
    /// OpenAI CLIP's visual tower.
    Clip,
}

/// What the command line and the writer know of a layout: one row per layout, in [`Layout::facts`].
struct Facts {
    /// The name on the command line and in `vitconv.layout`.
    name: &'static str,
    /// Other names accepted for the layout (the library's or family's own name, a dashed spelling).
    aliases: &'static [&'static str],
    /// Whether the layout writes a whole folder for some models even where a weights file was named.
    may_write_folder: bool,
    /// The pixel normalisation its outputs take by default.
    input_norm: InputNorm,
}

impl Layout {
    /// Every layout: the one list the command line, the converter and `verify` take their names from.
    pub const ALL: [Layout; 4] = [Layout::Timm, Layout::Hf, Layout::OpenClip, Layout::Clip];

    /// Everything known of the layout here, in one arm per layout, so that a new layout is one arm (and its
    /// place in [`Layout::ALL`]).
    fn facts(self) -> Facts {
        match self {
            Layout::Timm => Facts {
                name: "timm",
                aliases: &[],
                may_write_folder: false,
                input_norm: InputNorm::Unit,
            },
            Layout::Hf => Facts {
                name: "hf",
                aliases: &["transformers"],
                may_write_folder: false,
                input_norm: InputNorm::Unit,
            },
            // open_clip writes a two-tower model as a folder: its text tower needs a config and tokenizer files.
            // It takes CLIP-normalised pixels, as CLIP-style layouts do.
            Layout::OpenClip => Facts {
                name: "open_clip",
                aliases: &["open-clip"],
                may_write_folder: true,
                input_norm: InputNorm::Clip,
            },
            Layout::Clip => Facts {
                name: "clip",
                aliases: &["openai_clip"],
                may_write_folder: false,
                input_norm: InputNorm::Clip,
            },
        }
    }

    /// Other names accepted for the layout (the library's or family's own name, a dashed spelling).
    pub fn aliases(self) -> &'static [&'static str] {
        self.facts().aliases
    }

    /// Whether the layout writes a whole folder for some models even where a weights file was named.
    pub fn may_write_folder(self) -> bool {
        self.facts().may_write_folder
    }

    /// The layout a name (as `--layout` and `vitconv.layout` write it, or an alias) stands for.
    pub fn parse(name: &str) -> Option<Layout> {
        Layout::ALL
            .into_iter()
            .find(|l| l.as_str() == name || l.aliases().contains(&name))
    }

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        self.facts().name
    }

    /// CLIP-style layouts take CLIP-normalised pixels by default, the others the source's own [-1, 1].
    pub fn default_input_norm(self) -> InputNorm {
        self.facts().input_norm
    }
}

/// Element type of the written tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutDType {
    /// 32-bit floats.
    F32,
    /// 16-bit IEEE halves.
    F16,
    /// bfloat16.
    BF16,
}

impl OutDType {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OutDType::F32 => "f32",
            OutDType::F16 => "f16",
            OutDType::BF16 => "bf16",
        }
    }
    /// The tensor type written.
    pub fn dtype(self) -> vitconv_tensors::DType {
        match self {
            OutDType::F32 => vitconv_tensors::DType::F32,
            OutDType::F16 => vitconv_tensors::DType::F16,
            OutDType::BF16 => vitconv_tensors::DType::BF16,
        }
    }
}

/// How the position-embedding grid is resampled for `--image-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMethod {
    /// vit_jax `interpolate_posembed`: scipy `ndimage.zoom(order=1)`, i.e. bilinear with aligned corners.
    VitJax,
    /// timm's npz loader: `F.interpolate(mode='bilinear', align_corners=False, antialias=False)`.
    Bilinear,
    /// `F.interpolate(mode='bicubic', align_corners=False, antialias=False)` (cubic coefficient -0.75).
    Bicubic,
}

impl ResizeMethod {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMethod::VitJax => "vit-jax",
            ResizeMethod::Bilinear => "bilinear",
            ResizeMethod::Bicubic => "bicubic",
        }
    }
}

/// The pixel normalisation the converted model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputNorm {
    /// OpenAI CLIP's mean/std.
    Clip,
    /// ImageNet's mean/std.
    Imagenet,
    /// The source's own: [0, 1] pixels mapped to [-1, 1] (mean 0.5, std 0.5).
    Unit,
}

/// OpenAI CLIP's preprocessing (clip/clip.py `_transform`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation of [0, 1] pixels.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// torchvision's ImageNet statistics (timm `IMAGENET_DEFAULT_MEAN/STD`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation of [0, 1] pixels.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl InputNorm {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            InputNorm::Clip => "clip",
            InputNorm::Imagenet => "imagenet",
            InputNorm::Unit => "unit",
        }
    }
    /// The per-channel mean subtracted from [0, 1] pixels.
    pub fn mean(self) -> [f32; 3] {
        match self {
            InputNorm::Clip => CLIP_MEAN,
            InputNorm::Imagenet => IMAGENET_MEAN,
            InputNorm::Unit => [0.5; 3],
        }
    }
    /// The per-channel standard deviation [0, 1] pixels are divided by.
    pub fn std(self) -> [f32; 3] {
        match self {
            InputNorm::Clip => CLIP_STD,
            InputNorm::Imagenet => IMAGENET_STD,
            InputNorm::Unit => [0.5; 3],
        }
    }

    /// Per-channel `(scale, offset)` such that the source's input is `scale * x + offset` for the target's input `x`.
    ///
    /// The source reads `2p - 1` for [0, 1] pixels `p`; the target reads `x = (p - m) / s`, so `p = s x + m` and the
    /// source input is `2 s x + (2 m - 1)`. Folding that affine map into a convolution without padding is exact.
    pub fn affine(self) -> ([f32; 3], [f32; 3]) {
        let (m, s) = (self.mean(), self.std());
        (
            [2.0 * s[0], 2.0 * s[1], 2.0 * s[2]],
            [2.0 * m[0] - 1.0, 2.0 * m[1] - 1.0, 2.0 * m[2] - 1.0],
        )
    }
}

/// The GELU the converted model is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gelu {
    /// The tanh approximation flax's `nn.gelu` uses: the source's semantics.
    Tanh,
    /// The exact (erf) GELU the PyTorch libraries use by default.
    Erf,
}

impl Gelu {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Gelu::Tanh => "tanh",
            Gelu::Erf => "erf",
        }
    }
}

/// What becomes of the classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadChoice {
    /// Keep the source's head (and refuse where the layout cannot hold it).
    Keep,
    /// `--num-classes N`: must equal the source's class count (0 drops the head).
    NumClasses(usize),
    /// `--drop-head`: drop `head` (and `pre_logits`); the model gives pooled features.
    Drop,
}

/// What CLIP-style `proj` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjChoice {
    /// The head kernel (the model gives logits minus the head bias).
    Head,
    /// An identity matrix: the model gives the pooled features.
    None,
}

/// Which towers of a two-tower image-text model are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TowerChoice {
    /// Every tower the source has (a single-tower ViT's one tower, or both towers and the logit scalars).
    All,
    /// `--tower image`: the image tower alone; the text tower and the scalars are left out, and said so.
    Image,
}

/// Everything `npz-to-pt` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--layout`: the target layout.
    pub layout: Layout,
    /// `--dtype`: the output's float type.
    pub dtype: OutDType,
    /// `--image-size`: the output's resolution; `None` keeps the source's.
    pub image_size: Option<usize>,
    /// `--resize`: how a position table is resampled for another resolution.
    pub resize: ResizeMethod,
    /// `--drop-head` / `--num-classes`: what happens to the head.
    pub head: HeadChoice,
    /// `None` = the default (`head` where there is one).
    pub proj: Option<ProjChoice>,
    /// `None` = the layout's default.
    pub input_norm: Option<InputNorm>,
    /// `--gelu`: the GELU the output model is declared with; `None` = each tower's own activation, as its
    /// source states it ([`crate::model::Semantics`]).
    pub gelu: Option<Gelu>,
    /// `--tower`: which towers of a two-tower model are written.
    pub tower: TowerChoice,
    /// `--tokenizer`: a SentencePiece model file whose tokenizer files are written beside a two-tower model.
    pub tokenizer: Option<std::path::PathBuf>,
    /// `--labels`: the name of each class of the head, in order (the head's class count of them).
    pub labels: Option<Vec<String>>,
    /// `--force`: whether an existing output may be replaced.
    pub overwrite: bool,
    /// Set (by an interrupt handler) to stop a conversion: the executor checks it between bands and before
    /// anything is renamed into place, and returns [`crate::Error::Cancelled`], which drops the temporaries.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Threads computing output tensors while another writes them; `None` chooses from the cores (see
    /// `convert::producers`). The output is the same whatever the number.
    pub producers: Option<usize>,
    /// The largest band of a big tensor computed at once, in bytes; `None` is the default, 4 MiB
    /// (`convert::BAND_BYTES`). For tests: the output is the same whatever the size.
    pub band_bytes: Option<usize>,
}

impl Options {
    /// Defaults for a layout: f32, source resolution, head kept, source GELU, no overwrite.
    pub fn new(layout: Layout) -> Self {
        Options {
            layout,
            dtype: OutDType::F32,
            image_size: None,
            resize: ResizeMethod::VitJax,
            head: HeadChoice::Keep,
            proj: None,
            input_norm: None,
            gelu: None,
            tower: TowerChoice::All,
            tokenizer: None,
            labels: None,
            overwrite: false,
            cancel: None,
            producers: None,
            band_bytes: None,
        }
    }

    /// The input normalisation asked for, or the layout's default.
    pub fn input_norm(&self) -> InputNorm {
        self.input_norm.unwrap_or(self.layout.default_input_norm())
    }

    /// Every option that changes what is written, in one stable line: batch mode records it with each output
    /// and converts a source again when it differs. The options are taken apart field by field, so that one
    /// added to them cannot be left out of the line unnoticed: the build fails until it is placed here.
    pub fn fingerprint(&self) -> String {
        let Options {
            layout,
            dtype,
            image_size,
            resize,
            head,
            proj,
            input_norm,
            gelu,
            tower,
            tokenizer,
            labels,
            // These change how an output is written (replacing one, stopping, threads, band sizes), never its
            // bytes.
            overwrite: _,
            cancel: _,
            producers: _,
            band_bytes: _,
        } = self;
        let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".to_string());
        let head = match head {
            HeadChoice::Keep => "keep".to_string(),
            HeadChoice::NumClasses(n) => format!("num-classes={n}"),
            HeadChoice::Drop => "drop".to_string(),
        };
        let proj = proj.map(|p| match p {
            ProjChoice::Head => "head",
            ProjChoice::None => "none",
        });
        let tower = match tower {
            TowerChoice::All => "all",
            TowerChoice::Image => "image",
        };
        // The class names themselves, so that an edited labels file converts again; JSON keeps every name
        // (spaces, commas) apart.
        let labels = labels
            .as_ref()
            .map(|l| serde_json::to_string(l).unwrap_or_default());
        format!(
            "layout={} dtype={} image-size={} resize={} head={head} proj={} input-norm={} gelu={} tower={tower} tokenizer={} labels={}",
            layout.as_str(),
            dtype.as_str(),
            or_default(image_size.map(|n| n.to_string())),
            resize.as_str(),
            or_default(proj.map(str::to_string)),
            or_default(input_norm.map(|n| n.as_str().to_string())),
            or_default(gelu.map(|g| g.as_str().to_string())),
            or_default(tokenizer.as_ref().map(|p| p.to_string_lossy().into_owned())),
            or_default(labels),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_is_found_by_its_name_and_aliases_and_no_name_is_shared() {
        let mut names = std::collections::BTreeSet::new();
        for l in Layout::ALL {
            for name in std::iter::once(l.as_str()).chain(l.aliases().iter().copied()) {
                assert_eq!(Layout::parse(name), Some(l), "{name}");
                assert!(names.insert(name), "{name} names two layouts");
            }
        }
        assert_eq!(Layout::parse("keras"), None);
        assert!(Layout::OpenClip.may_write_folder() && !Layout::Timm.may_write_folder());
        assert_eq!(Layout::Clip.default_input_norm(), InputNorm::Clip);
        assert_eq!(Layout::Hf.default_input_norm(), InputNorm::Unit);
    }

    /// A named change of one option.
    type Change = (&'static str, fn(&mut Options));

    #[test]
    fn the_fingerprint_moves_with_what_is_written_and_only_with_that() {
        let base = Options::new(Layout::Timm);
        let changes: Vec<Change> = vec![
            ("layout", |o| o.layout = Layout::Hf),
            ("dtype", |o| o.dtype = OutDType::BF16),
            ("image size", |o| o.image_size = Some(64)),
            ("resize", |o| o.resize = ResizeMethod::Bicubic),
            ("head", |o| o.head = HeadChoice::Drop),
            ("classes", |o| o.head = HeadChoice::NumClasses(0)),
            ("proj", |o| o.proj = Some(ProjChoice::None)),
            ("input norm", |o| o.input_norm = Some(InputNorm::Clip)),
            ("gelu", |o| o.gelu = Some(Gelu::Tanh)),
            ("tower", |o| o.tower = TowerChoice::Image),
            ("tokenizer", |o| o.tokenizer = Some("spiece.model".into())),
            ("labels", |o| {
                o.labels = Some(vec!["a b".into(), "c".into()])
            }),
        ];
        let mut seen = std::collections::BTreeSet::from([base.fingerprint()]);
        for (what, change) in changes {
            let mut o = base.clone();
            change(&mut o);
            assert!(seen.insert(o.fingerprint()), "{what}: {}", o.fingerprint());
        }
        // Two label lists that would read the same joined by spaces stay apart.
        let mut a = base.clone();
        a.labels = Some(vec!["a b".into()]);
        let mut b = base.clone();
        b.labels = Some(vec!["a".into(), "b".into()]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        // How the output is written leaves it alone.
        let mut o = base.clone();
        o.overwrite = true;
        o.producers = Some(3);
        o.band_bytes = Some(1);
        o.cancel = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            true,
        )));
        assert_eq!(o.fingerprint(), base.fingerprint());
    }
}
