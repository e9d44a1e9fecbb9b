//! `weir-build-c`: builds a C plugin directory into a component.
//!
//! ```text
//! weir-build-c --wit WIT_DIR --out OUT.wasm [--world plugin] [--work DIR] SRC_DIR
//! ```
//!
//! Compiles every `.c` file directly in SRC_DIR; the bindings and the core
//! module go to `--work` (default: a `weir-build-c` directory beside OUT).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str =
    "usage: weir-build-c --wit WIT_DIR --out OUT.wasm [--world plugin] [--work DIR] SRC_DIR";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weir-build-c: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut wit = None;
    let mut out = None;
    let mut world = "plugin".to_owned();
    let mut work = None;
    let mut src = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(USAGE);
        match arg.to_str() {
            Some("--wit") => wit = Some(PathBuf::from(value()?)),
            Some("--out") => out = Some(PathBuf::from(value()?)),
            Some("--world") => world = value()?.to_string_lossy().into_owned(),
            Some("--work") => work = Some(PathBuf::from(value()?)),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Some(flag) if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            _ if src.is_none() => src = Some(PathBuf::from(arg)),
            _ => bail!("{USAGE}"),
        }
    }
    let (Some(wit), Some(output), Some(src)) = (wit, out, src) else {
        bail!("{USAGE}");
    };
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let work_dir = work.unwrap_or_else(|| {
        output
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("weir-build-c")
            .join(&name)
    });
    let sources = weir_build_c::c_sources(&src)?;
    if sources.is_empty() {
        bail!("no .c files in {}", src.display());
    }
    let bytes = weir_build_c::build(&weir_build_c::Build {
        sources,
        wit,
        world,
        work_dir,
        output: output.clone(),
    })?;
    println!("built {} ({bytes} bytes)", output.display());
    Ok(())
}
