//! `vitconv npz-to-pt`: converts a JAX ViT checkpoint (vit_jax, big_vision, SigLIP; `.npz`, `.bv`, Orbax, msgpack)
//! into a timm, transformers, open_clip or OpenAI CLIP weights file or folder.
//!
//! With a directory as SOURCE it builds a [`vitconv_batch::Request`] and hands it to [`crate::cmd_batch`], which
//! converts every checkpoint under it (`cmd_batch` imports nothing from here).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use vitconv_convert::{
    Gelu, HeadChoice, InputNorm, Layout, Options, OutDType, ProjChoice, ResizeMethod, TowerChoice,
};
use vitconv_tensors::TensorFile;

/// `--layout`: the names of [`Layout::ALL`] and their aliases, the converter's one list of layouts.
fn layout_parser() -> impl clap::builder::TypedValueParser<Value = Layout> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(
        Layout::ALL.map(|l| PossibleValue::new(l.as_str()).aliases(l.aliases().iter().copied())),
    )
    .try_map(|name| Layout::parse(&name).ok_or_else(|| format!("{name} is not one of the layouts")))
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum ResizeArg {
    VitJax,
    Bilinear,
    Bicubic,
}

#[derive(Clone, Copy, ValueEnum)]
enum NormArg {
    Clip,
    Imagenet,
    Unit,
}

#[derive(Clone, Copy, ValueEnum)]
enum GeluArg {
    Tanh,
    Erf,
}

#[derive(Clone, Copy, ValueEnum)]
enum TowerArg {
    All,
    Image,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProjArg {
    Head,
    None,
}

/// The weights format batch mode writes for the single-file layouts.
#[derive(Clone, Copy, ValueEnum)]
pub enum ExtArg {
    Safetensors,
    Pt,
}

impl ExtArg {
    /// The file extension, without the dot.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtArg::Safetensors => "safetensors",
            ExtArg::Pt => "pt",
        }
    }
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The source checkpoint, of a family and in a container listed above: a file, a big_vision .bv workdir or
    /// step folder, or an Orbax step or its parent. Any other directory is a tree of sources: every checkpoint
    /// under it is converted (batch mode).
    source: PathBuf,
    /// The output: a .pt/.pth/.bin or .safetensors weights file, or a folder (always for --layout hf and for
    /// open_clip two-tower models; for timm and open_clip when OUTPUT has no extension); in batch mode, the
    /// directory the outputs go under.
    output: PathBuf,
    /// Target layout.
    #[arg(long, value_parser = layout_parser())]
    layout: Layout,
    /// Element type of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// New input resolution in pixels (the position embedding grid is resampled).
    #[arg(long, value_name = "N")]
    image_size: Option<usize>,
    /// How the position embedding is resampled for --image-size (vit-jax = scipy zoom order 1, as vit_jax does).
    #[arg(long, value_enum, default_value = "vit-jax", requires = "image_size")]
    resize: ResizeArg,
    /// Check the class count (must match the source); 0 drops the head.
    #[arg(long, value_name = "N", conflicts_with = "drop_head")]
    num_classes: Option<usize>,
    /// Drop the classification head (and pre_logits): a feature extractor.
    #[arg(long)]
    drop_head: bool,
    /// CLIP-style layouts: `proj` holds the head kernel (default) or an identity (pooled features).
    #[arg(long, value_enum)]
    proj: Option<ProjArg>,
    /// Pixel normalisation the converted model expects, folded into the patch embedding
    /// (default: clip for open_clip/clip, unit = the source's own [-1, 1] for timm/hf).
    #[arg(long, value_enum)]
    input_norm: Option<NormArg>,
    /// GELU the target is declared with: tanh or erf (the loaders' usual); default: the source tower's own
    /// (tanh, flax's nn.gelu, for every family read)
    #[arg(long, value_enum)]
    gelu: Option<GeluArg>,
    /// Two-tower (SigLIP) models: `image` writes the image tower alone (for --layout timm, or features);
    /// default: every tower.
    #[arg(long, value_enum, default_value = "all")]
    tower: TowerArg,
    /// Two-tower models: the SentencePiece model (SigLIP's spiece.model, SigLIP 2's Gemma tokenizer.model)
    /// whose tokenizer files are written into the output folder, so that the loaders' tokenizers work offline.
    #[arg(long, value_name = "SPIECE_MODEL")]
    tokenizer: Option<PathBuf>,
    /// Class names for the head's classes, written into the configs (HF id2label, timm label_names): a file
    /// (one name per line, or a JSON list), or imagenet-1k / imagenet-21k (from timm's ImageNetInfo).
    #[arg(long, value_name = "FILE|imagenet-1k|imagenet-21k")]
    labels: Option<String>,
    /// Overwrite an existing output (batch mode: convert every file again, even those up to date).
    #[arg(long)]
    force: bool,
    /// Print nothing but errors (no progress bar, no report).
    #[arg(long)]
    quiet: bool,
    /// Batch mode: conversions run at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Batch mode: the format of each output, default safetensors (not for --layout hf, which writes a directory
    /// per file).
    #[arg(long, value_enum)]
    ext: Option<ExtArg>,
    /// Batch mode: print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Batch mode: of a folder of Orbax steps, convert only the newest complete step (default: every
    /// complete step).
    #[arg(long)]
    latest: bool,
}

impl ConvertArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let mut o = Options::new(self.layout);
        o.labels = self
            .labels
            .as_deref()
            .map(crate::labels::resolve)
            .transpose()?;
        o.dtype = match self.dtype {
            DTypeArg::F32 => OutDType::F32,
            DTypeArg::F16 => OutDType::F16,
            DTypeArg::Bf16 => OutDType::BF16,
        };
        o.image_size = self.image_size;
        o.resize = match self.resize {
            ResizeArg::VitJax => ResizeMethod::VitJax,
            ResizeArg::Bilinear => ResizeMethod::Bilinear,
            ResizeArg::Bicubic => ResizeMethod::Bicubic,
        };
        o.head = match (self.drop_head, self.num_classes) {
            (true, _) => HeadChoice::Drop,
            (false, Some(n)) => HeadChoice::NumClasses(n),
            (false, None) => HeadChoice::Keep,
        };
        o.proj = self.proj.map(|p| match p {
            ProjArg::Head => ProjChoice::Head,
            ProjArg::None => ProjChoice::None,
        });
        o.input_norm = self.input_norm.map(|n| match n {
            NormArg::Clip => InputNorm::Clip,
            NormArg::Imagenet => InputNorm::Imagenet,
            NormArg::Unit => InputNorm::Unit,
        });
        o.gelu = self.gelu.map(|g| match g {
            GeluArg::Tanh => Gelu::Tanh,
            GeluArg::Erf => Gelu::Erf,
        });
        o.tower = match self.tower {
            TowerArg::All => TowerChoice::All,
            TowerArg::Image => TowerChoice::Image,
        };
        o.tokenizer = self.tokenizer.clone();
        o.overwrite = self.force;
        Ok(o)
    }
}

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    // A conversion interrupted half-way must leave no temporary file and an existing output untouched. The
    // handler (run by `ctrlc` on its own thread) only sets the cancel flag; the conversion stops at its next
    // band and unwinds, which removes its temporaries, and the exit status says it was interrupted.
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
            .context("installing the interrupt handler")?;
    }
    let mut opts = args.options()?;
    opts.cancel = Some(Arc::clone(&cancel));
    // A folder is a tree of sources, unless it is one checkpoint (a `.bv` workdir, an Orbax step or its parent).
    if args.source.is_dir() && !vitconv_tensors::is_checkpoint_folder(&args.source) {
        return run_batch(&args, opts);
    }
    let batch_only = [
        ("--jobs", args.jobs.is_some()),
        ("--ext", args.ext.is_some()),
        ("--json", args.json),
        ("--latest", args.latest),
    ];
    if let Some((flag, _)) = batch_only.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "{flag} applies only when SOURCE is a directory (batch mode); {} is a file",
            args.source.display()
        );
    }
    let file = TensorFile::open(&args.source)?;
    let conv = vitconv_convert::prepare(&file, &opts)
        .with_context(|| args.source.display().to_string())?;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let written = vitconv_convert::write(&file, &conv, &opts, &args.output, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let written = match written {
        Err(vitconv_convert::Error::Cancelled) => {
            eprintln!("vitconv: interrupted; removed the partial output");
            return Ok(ExitCode::from(crate::cmd_batch::INTERRUPTED));
        }
        w => w?,
    };
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }

    let layout = opts.layout.as_str();
    println!(
        "source: {}: {} {}",
        args.source.display(),
        conv.family,
        conv.architecture
    );
    for n in &conv.source_notes {
        println!("  ({n})");
    }
    println!(
        "wrote: {} ({layout} layout, {} tensors, {}, {} bytes)",
        written.weights.display(),
        written.tensors,
        opts.dtype.as_str(),
        written.bytes
    );
    for s in &written.side_files {
        println!("wrote: {}", s.display());
    }
    println!("notes:");
    for n in &conv.plan.notes {
        println!("  - {n}");
    }
    println!("python:");
    // The plan names the output by placeholders; the real paths go in so that the lines run as printed.
    let python = vitconv_convert::python(&conv, &written, opts.layout, &args.output);
    for line in python {
        println!("  {line}");
    }
    if let Some(warning) = vitconv_convert::layout::def(opts.layout).and_then(|d| d.warning) {
        eprintln!("vitconv: warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Batch mode: checks the options that only it takes, then converts every checkpoint under SOURCE.
fn run_batch(args: &ConvertArgs, opts: Options) -> anyhow::Result<ExitCode> {
    let ext = match (opts.layout, args.ext) {
        (Layout::Hf, Some(_)) => anyhow::bail!(
            "--ext does not apply to --layout hf, which writes a directory per checkpoint"
        ),
        (Layout::Hf, None) => None,
        (_, ext) => Some(ext.unwrap_or(ExtArg::Safetensors)),
    };
    let jobs = match args.jobs {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let request = vitconv_batch::Request {
        source_dir: args.source.clone(),
        output_dir: args.output.clone(),
        ext: ext.map(|e| e.as_str().to_string()),
        fingerprint: format!(
            "{} ext={}",
            opts.fingerprint(),
            ext.map_or("directory", ExtArg::as_str)
        ),
        jobs,
        force: args.force,
        latest: args.latest,
        opts,
    };
    let printing = crate::cmd_batch::Printing {
        quiet: args.quiet,
        json: args.json,
    };
    crate::cmd_batch::run(&request, &printing)
}
