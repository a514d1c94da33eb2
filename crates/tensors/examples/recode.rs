//! Rewrites a tensor file in another format: `recode IN OUT [--force]`, format from OUT's extension.
//!
//! Used by the Python tests to produce `.pt` and `.safetensors` files that the real
//! `torch.load` and `safetensors` then read back. Metadata is carried over where the
//! target can hold it.

use std::process::ExitCode;

use vitconv_tensors::{output_format, Format, TensorFile, TensorSpec, Writer};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [input, output] = paths.as_slice() else {
        return Err("usage: recode IN OUT [--force]".into());
    };
    let output = std::path::Path::new(output.as_str());
    let format =
        output_format(output).ok_or("OUT must end in .pt, .pth, .bin, .safetensors or .npz")?;
    let src = TensorFile::open(input.as_str())?;
    let specs = src
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let metadata = if format == Format::Npz {
        Default::default()
    } else {
        src.metadata().clone()
    };
    let mut writer = Writer::create(output, format, specs, metadata, force)?;
    for t in src.tensors() {
        writer.write_next(&src.read(&t.name)?)?;
    }
    writer.finish()?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recode: error: {e}");
            ExitCode::from(2)
        }
    }
}
