//! Builds a Weir plugin written in C into a WebAssembly component, in three
//! steps and without any tool beyond clang:
//!
//! 1. [`generate_bindings`]: `wit-bindgen`'s C generator (as a library)
//!    writes `<world>.h`, `<world>.c` and `<world>_component_type.o` (the
//!    component-type custom section, which must be linked in) for the WIT;
//! 2. clang (`--target=wasm32-wasi -mexec-model=reactor`, wasi-libc)
//!    compiles the plugin's sources with those bindings into a core module;
//! 3. [`componentize`]: `wit-component` wraps the core module into a
//!    component, with wasmtime's preview1 reactor adapter for what wasi-libc
//!    imports.
//!
//! Used by `weir plugin build` (linked into `weir`) and by the
//! `weir-build-c` binary that `plugins/build-foreign.sh` runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::wit_parser::Resolve;
use wit_bindgen_core::Files;
use wit_component::ComponentEncoder;

/// What to build.
pub struct Build {
    /// The plugin's C sources.
    pub sources: Vec<PathBuf>,
    /// The WIT package (a directory or a `.wit` file).
    pub wit: PathBuf,
    /// The world the plugin targets (`plugin` for Weir).
    pub world: String,
    /// Scratch space: the generated bindings and the core module go here.
    pub work_dir: PathBuf,
    /// Where the component is written.
    pub output: PathBuf,
}

/// The C compiler: `$WASI_CC`, else `clang`.
pub fn compiler() -> String {
    std::env::var("WASI_CC").unwrap_or_else(|_| "clang".into())
}

/// How to get the compiler on Debian/Ubuntu, for error messages.
pub const INSTALL_HINT: &str =
    "install clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian/Ubuntu: `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`), or set WASI_CC to a clang with a wasm32-wasi sysroot";

/// Runs the three steps; returns the size of the component in bytes.
pub fn build(build: &Build) -> Result<u64> {
    if build.sources.is_empty() {
        bail!("no C sources to build");
    }
    let bindings = build.work_dir.join("bindings");
    let generated = generate_bindings(&build.wit, &build.world, &bindings)?;
    let core = build.work_dir.join("core.wasm");
    compile(build, &bindings, &generated, &core)?;
    let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let component = componentize(&module)?;
    // Write beside and rename: an interrupted build leaves no half-written
    // component that looks finished.
    let partial = build.output.with_extension("wasm.partial");
    std::fs::write(&partial, &component)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &build.output)
        .with_context(|| format!("writing {}", build.output.display()))?;
    Ok(component.len() as u64)
}

/// Writes the C bindings of `world` into `dir`; returns the files that must
/// be compiled and linked with the plugin (the `.c` and the `.o`).
pub fn generate_bindings(wit: &Path, world: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("reading the WIT at {}", wit.display()))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut linked = Vec::new();
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            linked.push(path);
        }
    }
    linked.sort();
    Ok(linked)
}

fn compile(build: &Build, bindings: &Path, generated: &[PathBuf], core: &Path) -> Result<()> {
    let cc = compiler();
    let mut command = Command::new(&cc);
    command
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-std=c11",
            "-Wall",
            "-Wextra",
            // The generated bindings declare helpers a plugin may not use.
            "-Wno-unused-parameter",
            "-Wno-unused-function",
        ])
        .arg("-I")
        .arg(bindings);
    for dir in source_dirs(&build.sources) {
        command.arg("-I").arg(dir);
    }
    command
        .args(&build.sources)
        .args(generated)
        .arg("-o")
        .arg(core);
    let status = match command.status() {
        Ok(status) => status,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{cc}` not found: {INSTALL_HINT}")
        }
        Err(err) => return Err(err).with_context(|| format!("running `{cc}`")),
    };
    if !status.success() {
        bail!("`{cc}` failed ({status}); if it cannot find wasm32-wasi headers or libraries: {INSTALL_HINT}");
    }
    Ok(())
}

/// The directories of the sources, each once: their headers are found.
fn source_dirs(sources: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for source in sources {
        let dir = source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Wraps a core module (with its component-type section) into a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    ComponentEncoder::default()
        .module(module)
        .context("the core module has no usable component type section")?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .context("encoding the component")
}

/// The `.c` files directly in `dir`, sorted.
pub fn c_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "c") && path.is_file() {
            sources.push(path);
        }
    }
    sources.sort();
    Ok(sources)
}
