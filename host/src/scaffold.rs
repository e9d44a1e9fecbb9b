//! `weir plugin new` and `weir plugin build`: start a plugin in Rust,
//! JavaScript, Python or C from a template that builds and runs as it is,
//! and compile one into `NAME.wasm`.
//!
//! A new project is a directory `DIR/NAME` with the sources, a README, and
//! `NAME.toml`, a config that serves the plugin in front of a `weir echo`
//! upstream. `weir plugin build` writes the component beside the project
//! (`DIR/NAME.wasm`, `-` becoming `_` as Cargo names it), where that config
//! looks for it.
//!
//! Inside a Weir checkout the project uses the repository's WIT (and a Rust
//! project the `weir-plugin` SDK at `plugins/sdk`) by relative path;
//! anywhere else it gets a copy of the WIT that this `weir` implements, and a
//! Rust project binds it with `wit-bindgen` directly.
//!
//! Part of the command line: errors are `anyhow`, for a person to read.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The WIT this `weir` implements, written into projects outside a checkout.
const WIT: &str = include_str!("../../wit/plugin.wit");

/// `NAME.toml`: serves the new plugin in front of a `weir echo` upstream.
const CONFIG: &str = include_str!("../templates/plugin.toml");

/// A plugin's source language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
    C,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
            Lang::C => "c",
        })
    }
}

/// The engine a JavaScript plugin runs on, chosen by the npm package its
/// `package.json` pins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JsEngine {
    /// QuickJS (componentize-qjs): a pooled call about a fifth of
    /// SpiderMonkey's and a component of 1.7 MB instead of 12 MB
    /// (BENCHMARKS.md, "JavaScript on QuickJS").
    #[default]
    Quickjs,
    /// SpiderMonkey (componentize-js): more of the language's library
    /// (`Intl`, `TextEncoder`), at about five times the cost of a call.
    Spidermonkey,
}

impl JsEngine {
    /// The npm package that builds components on this engine.
    fn package(self) -> &'static str {
        match self {
            JsEngine::Quickjs => "componentize-qjs",
            JsEngine::Spidermonkey => "@bytecodealliance/componentize-js",
        }
    }

    /// The command that package installs in `node_modules/.bin`.
    fn tool(self) -> &'static str {
        match self {
            JsEngine::Quickjs => "componentize-qjs",
            JsEngine::Spidermonkey => "componentize-js",
        }
    }

    /// The engine `package.json` (its text) pins.
    fn pinned_by(package_json: &str) -> Option<JsEngine> {
        let pins: serde_json::Value = serde_json::from_str(package_json).ok()?;
        [JsEngine::Quickjs, JsEngine::Spidermonkey]
            .into_iter()
            .find(|engine| {
                ["dependencies", "devDependencies"]
                    .iter()
                    .any(|deps| pins[deps].get(engine.package()).is_some())
            })
    }
}

impl fmt::Display for JsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsEngine::Quickjs => "quickjs",
            JsEngine::Spidermonkey => "spidermonkey",
        })
    }
}

/// A template file: where it goes in the project, and its text.
type Template = (&'static str, &'static str);

const RUST_SDK: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust-sdk/Cargo.toml"),
    ),
    ("src/lib.rs", include_str!("../templates/rust-sdk/lib.rs")),
    (
        ".gitignore",
        include_str!("../templates/rust-sdk/gitignore"),
    ),
    ("README.md", include_str!("../templates/rust-sdk/README.md")),
];
const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/lib.rs")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
    ("README.md", include_str!("../templates/rust/README.md")),
];
const JS: &[Template] = &[
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    ("package.json", include_str!("../templates/js/package.json")),
    (".gitignore", include_str!("../templates/js/gitignore")),
    ("README.md", include_str!("../templates/js/README.md")),
];
const JS_SPIDERMONKEY: &[Template] = &[
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    (
        "package.json",
        include_str!("../templates/js/spidermonkey/package.json"),
    ),
    (".gitignore", include_str!("../templates/js/gitignore")),
    (
        "README.md",
        include_str!("../templates/js/spidermonkey/README.md"),
    ),
];
const PYTHON: &[Template] = &[
    ("plugin.py", include_str!("../templates/python/plugin.py")),
    (
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    (".gitignore", include_str!("../templates/python/gitignore")),
    ("README.md", include_str!("../templates/python/README.md")),
];
const C: &[Template] = &[
    ("plugin.c", include_str!("../templates/c/plugin.c")),
    (".gitignore", include_str!("../templates/c/gitignore")),
    ("README.md", include_str!("../templates/c/README.md")),
];

/// Creates `dir/name` for a plugin in `lang` (JavaScript on `engine`);
/// returns its path.
pub fn new_project(name: &str, lang: Lang, engine: JsEngine, dir: &Path) -> Result<PathBuf> {
    check_name(name)?;
    let project = dir.join(name);
    if project.exists() {
        bail!("{} already exists", project.display());
    }
    std::fs::create_dir_all(&project).with_context(|| format!("creating {}", project.display()))?;
    let project_abs = project.canonicalize()?;
    let checkout = weir_checkout(&project_abs);

    let wit = match &checkout {
        Some(root) => relative(&project_abs, &root.join("wit")),
        None => PathBuf::from("wit"),
    };
    let sdk = checkout
        .as_ref()
        .map(|root| relative(&project_abs, &root.join("plugins").join("sdk")));
    let wasm = wasm_stem(name);
    let instances = match lang {
        // Heavy guests: keep warm instances rather than start one per call.
        Lang::Js | Lang::Python => "instances = \"pooled\"\ntimeout_ms = 2000\n",
        Lang::Rust | Lang::C => "",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{wasm}}", &wasm)
            .replace("{{wit}}", &slashed(&wit))
            .replace("{{sdk}}", &sdk.as_deref().map(slashed).unwrap_or_default())
            .replace("{{instances}}", instances)
    };

    let templates = match lang {
        Lang::Rust if sdk.is_some() => RUST_SDK,
        Lang::Rust => RUST,
        Lang::Js if engine == JsEngine::Spidermonkey => JS_SPIDERMONKEY,
        Lang::Js => JS,
        Lang::Python => PYTHON,
        Lang::C => C,
    };
    for (path, text) in templates {
        write(&project.join(path), &fill(text))?;
    }
    write(&project.join(format!("{name}.toml")), &fill(CONFIG))?;
    if checkout.is_none() {
        write(&project.join("wit").join("plugin.wit"), WIT)?;
    }
    Ok(project)
}

/// Plugin names become crate names, file names and TOML keys.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("plugin name {name:?} must be lower-case letters, digits and '-', starting with a letter (e.g. `my-plugin`)");
    }
    Ok(())
}

fn wasm_stem(name: &str) -> String {
    name.replace('-', "_")
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The root of the Weir checkout `dir` is in, if any: it has the WIT and
/// the plugin SDK.
fn weir_checkout(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|root| {
            root.join("wit").join("plugin.wit").is_file()
                && root
                    .join("plugins")
                    .join("sdk")
                    .join("Cargo.toml")
                    .is_file()
        })
        .map(Path::to_path_buf)
}

/// `to` relative to `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    path
}

/// A path as written in TOML, JSON and shell lines: forward slashes.
fn slashed(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

/// Builds the project in `dir` into `out/NAME.wasm` (default `out`: the
/// project's parent directory); returns the component's path.
pub fn build_project(dir: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let project = dir
        .canonicalize()
        .with_context(|| format!("no plugin project at {}", dir.display()))?;
    let lang = detect(&project)?;
    let name = match lang {
        Lang::Rust => crate_name(&project)?,
        _ => project
            .file_name()
            .and_then(OsStr::to_str)
            .context("the project directory has no name")?
            .to_owned(),
    };
    let out_dir = match out {
        Some(out) => out.to_path_buf(),
        None => project
            .parent()
            .context("the project directory has no parent")?
            .to_path_buf(),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let output = out_dir.join(format!("{}.wasm", wasm_stem(&name)));
    match lang {
        Lang::Rust => build_rust(&project, &name, &output)?,
        Lang::Js => build_js(&project, &output)?,
        Lang::Python => build_python(&project, &output)?,
        Lang::C => build_c(&project, &output)?,
    }
    Ok(output)
}

/// Which language the project in `dir` is written in.
fn detect(dir: &Path) -> Result<Lang> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(Lang::Rust);
    }
    if dir.join("plugin.js").is_file() {
        return Ok(Lang::Js);
    }
    if dir.join("plugin.py").is_file() {
        return Ok(Lang::Python);
    }
    if !weir_build_c::c_sources(dir)?.is_empty() {
        return Ok(Lang::C);
    }
    bail!(
        "{} is not a plugin project: no Cargo.toml, plugin.js, plugin.py or .c files",
        dir.display()
    )
}

fn crate_name(dir: &Path) -> Result<String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no package.name", manifest.display()))
}

/// The WIT to build against: the project's own `wit/`, else the checkout's,
/// else a copy of the one this `weir` implements under `build/`.
fn wit_dir(project: &Path) -> Result<PathBuf> {
    let own = project.join("wit");
    if own.is_dir() {
        return Ok(own);
    }
    if let Some(root) = weir_checkout(project) {
        return Ok(root.join("wit"));
    }
    let copy = project.join("build").join("wit");
    write(&copy.join("plugin.wit"), WIT)?;
    Ok(copy)
}

/// Runs `command`, failing with `what` when it cannot start or fails.
fn run(command: &mut Command, what: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = match command.status() {
        Ok(status) => status,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("{what}: `{program}` not found")
        }
        Err(err) => return Err(err).with_context(|| format!("{what}: running `{program}`")),
    };
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn build_rust(project: &Path, name: &str, output: &Path) -> Result<()> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ensure_wasm_target(project)?;
    run(
        Command::new(cargo)
            .current_dir(project)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--target-dir")
            .arg(&target_dir)
            // Flags meant for another build must not leak into this one.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET"),
        "cargo build --target wasm32-wasip2 (rustup target add wasm32-wasip2 if the target is missing)",
    )?;
    let built = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", wasm_stem(name)));
    std::fs::copy(&built, output)
        .with_context(|| format!("copying {} to {}", built.display(), output.display()))?;
    Ok(())
}

/// Make sure the toolchain that builds `project` has the `wasm32-wasip2`
/// target. rustup adds a `rust-toolchain.toml`'s targets only when it
/// installs the toolchain itself, so a toolchain already present may lack
/// it; `rustup target add` is idempotent and quick when it is there.
fn ensure_wasm_target(project: &Path) -> Result<()> {
    let listed = Command::new("rustup")
        .current_dir(project)
        .args(["target", "list", "--installed"])
        .output();
    match listed {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.trim() == "wasm32-wasip2")
            {
                return Ok(());
            }
            run(
                Command::new("rustup").current_dir(project).args([
                    "target",
                    "add",
                    "wasm32-wasip2",
                ]),
                "rustup target add wasm32-wasip2",
            )
        }
        // No rustup: the toolchain must bring the target itself, and cargo
        // says so clearly enough if it does not.
        _ => {
            let sysroot = Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .ok()
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            match sysroot {
                Some(root) if root.join("lib/rustlib/wasm32-wasip2").is_dir() => Ok(()),
                _ => bail!(
                    "this Rust toolchain has no wasm32-wasip2 target and rustup was not found: \
                     install rustup (https://rustup.rs) and run `rustup target add wasm32-wasip2`"
                ),
            }
        }
    }
}

fn build_js(project: &Path, output: &Path) -> Result<()> {
    let manifest = project.join("package.json");
    let pins = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let Some(engine) = JsEngine::pinned_by(&pins) else {
        bail!(
            "{} pins no JavaScript engine: add \"{}\" (QuickJS) or \"{}\" (SpiderMonkey) to its devDependencies",
            manifest.display(),
            JsEngine::Quickjs.package(),
            JsEngine::Spidermonkey.package()
        );
    };
    let tool = engine.tool();
    let componentize = project.join("node_modules").join(".bin").join(tool);
    if !componentize.exists() {
        run(
            Command::new("npm").current_dir(project).args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ]),
            "npm install (needs Node.js >= 18 with npm)",
        )?;
    }
    let wit = wit_dir(project)?;
    let mut command = Command::new(&componentize);
    command.current_dir(project);
    match engine {
        // `--sync`: plain exports and imports, as Weir calls them, not the
        // component model's async ABI.
        JsEngine::Quickjs => command
            .args(["--sync", "--js", "plugin.js", "--world", "plugin", "--wit"])
            .arg(&wit)
            .arg("--output"),
        JsEngine::Spidermonkey => command
            .arg("plugin.js")
            .arg("--wit")
            .arg(&wit)
            .args(["--world-name", "plugin"])
            // Nothing beyond the plugin world: Weir gives no stdio, random,
            // clocks or HTTP to plugins.
            .args([
                "--disable",
                "stdio",
                "random",
                "clocks",
                "http",
                "fetch-event",
            ])
            .arg("--out"),
    };
    run(command.arg(output), tool)
}

fn build_python(project: &Path, output: &Path) -> Result<()> {
    let venv = project.join(".venv");
    let componentize = venv.join("bin").join("componentize-py");
    if !componentize.exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv (needs Python >= 3.10 with venv)",
        )?;
        run(
            Command::new(venv.join("bin").join("pip"))
                .current_dir(project)
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg("requirements.txt"),
            "pip install -r requirements.txt",
        )?;
    }
    let wit = wit_dir(project)?;
    run(
        Command::new(&componentize)
            .current_dir(project)
            .arg("--quiet")
            .arg("--wit-path")
            .arg(&wit)
            .args(["--world", "plugin", "componentize", "--python-path"])
            .arg(project)
            .arg("plugin")
            .arg("--output")
            .arg(output),
        "componentize-py",
    )
}

fn build_c(project: &Path, output: &Path) -> Result<()> {
    let wit = wit_dir(project)?;
    weir_build_c::build(&weir_build_c::Build {
        sources: weir_build_c::c_sources(project)?,
        wit,
        world: "plugin".into(),
        work_dir: project.join("build"),
        output: output.to_path_buf(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_tokens() {
        for good in ["a", "my-plugin", "p2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "2x", "a_b", "a-", "a b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_engine_is_the_one_package_json_pins() {
        let pins = |deps: &str| format!(r#"{{"name": "p", "devDependencies": {{{deps}}}}}"#);
        assert_eq!(
            JsEngine::pinned_by(&pins(r#""componentize-qjs": "0.4.5""#)),
            Some(JsEngine::Quickjs)
        );
        assert_eq!(
            JsEngine::pinned_by(&pins(r#""@bytecodealliance/componentize-js": "0.23.0""#)),
            Some(JsEngine::Spidermonkey)
        );
        assert_eq!(JsEngine::pinned_by(&pins(r#""left-pad": "1""#)), None);
        assert_eq!(JsEngine::pinned_by("not json"), None);
        // The templates pin what they say.
        for (templates, engine) in [
            (JS, JsEngine::Quickjs),
            (JS_SPIDERMONKEY, JsEngine::Spidermonkey),
        ] {
            let (_, package) = templates
                .iter()
                .find(|(path, _)| *path == "package.json")
                .expect("a package.json");
            assert_eq!(JsEngine::pinned_by(package), Some(engine));
        }
    }

    #[test]
    fn relative_paths_climb_then_descend() {
        assert_eq!(
            relative(Path::new("/r/plugins/x"), Path::new("/r/wit")),
            PathBuf::from("../../wit")
        );
        assert_eq!(
            relative(Path::new("/r/plugins/x"), Path::new("/r/plugins/sdk")),
            PathBuf::from("../sdk")
        );
    }
}
