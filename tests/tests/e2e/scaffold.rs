//! `weir plugin new` and `weir plugin build`, as a person would run them:
//! for every language, scaffold a project with the real binary, build it,
//! `weir check` its generated config, serve a request through it, and see
//! its config checks refuse a typo. Slow (real npm, pip and cargo builds),
//! so each language is one test that does everything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_tests::{client, config_file, echo_json, echoed_header, TestProxy, Upstream};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-e2e"))
}

/// Scaffolds live here, inside the checkout (so a Rust project uses the
/// SDK by path), and the Rust builds share a target dir across runs.
fn scratch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("scaffold-test")
}

fn succeed(command: &mut Command, what: &str) -> String {
    let output: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The whole round: new, build, check, serve, refuse a typo.
async fn scaffold_round_trip(lang: &str, name: &str) {
    scaffold_round_trip_with(lang, name, &[]).await;
}

/// [`scaffold_round_trip`], with `extra` arguments to `weir plugin new`.
async fn scaffold_round_trip_with(lang: &str, name: &str, extra: &[&str]) {
    let base = scratch().join(lang);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();

    let created = succeed(
        weir()
            .args(["plugin", "new", name, "--lang", lang])
            .args(extra)
            .arg("--dir")
            .arg(dir.path()),
        "weir plugin new",
    );
    assert!(created.contains(&format!("({lang} plugin)")), "{created}");
    let project = dir.path().join(name);
    assert!(project.join("README.md").is_file());
    let config = project.join(format!("{name}.toml"));
    assert!(config.is_file());
    if lang == "js" {
        // QuickJS unless SpiderMonkey was asked for.
        let engine = if extra.contains(&"spidermonkey") {
            "\"@bytecodealliance/componentize-js\""
        } else {
            "\"componentize-qjs\""
        };
        let pins = std::fs::read_to_string(project.join("package.json")).unwrap();
        assert!(pins.contains(engine), "{pins}");
    }

    let built = succeed(
        weir()
            .args(["plugin", "build"])
            .arg(&project)
            .env("CARGO_TARGET_DIR", scratch().join("cargo-target")),
        "weir plugin build",
    );
    let wasm = dir.path().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(wasm.is_file(), "no {}: {built}", wasm.display());
    assert!(built.contains("bytes)"), "{built}");

    let checked = succeed(
        weir().args(["check", "--config"]).arg(&config),
        "weir check",
    );
    assert!(checked.contains("ok (1 plugins)"), "{checked}");

    // Serve the generated config as it is, but on ephemeral ports, with the
    // test's echo upstream, from the test's own config dir.
    let text = std::fs::read_to_string(&config).unwrap();
    let upstream = Upstream::echo().await;
    let file_line = format!("file = \"../{}.wasm\"", name.replace('-', "_"));
    assert!(text.contains(&file_line), "{text}");
    let served = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9000", &upstream.addr.to_string())
        .replace(
            &file_line,
            &format!("file = {:?}", wasm.display().to_string()),
        );
    let proxy = TestProxy::start(&served).await;
    for _ in 0..3 {
        let response = client().get(proxy.url("/hello")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-plugin"], name);
        let echo = echo_json(&response.text().await.unwrap());
        assert_eq!(
            echoed_header(&echo, "x-hello"),
            [format!("hello from {name}")]
        );
    }

    // The scaffold's validate-config refuses unknown keys.
    let (_typo_dir, typo) = config_file(&served.replace("message = ", "mesage = "));
    let output = weir()
        .args(["check", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a typo passed check");
    assert!(stderr.contains("mesage"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_scaffold_builds_and_serves() {
    scaffold_round_trip("rust", "hello-rust").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_scaffold_builds_and_serves() {
    scaffold_round_trip("js", "hello-js").await;
}

/// The engine kept selectable beside the QuickJS default; `weir plugin
/// build` picks it from the project's package.json.
#[tokio::test(flavor = "multi_thread")]
async fn js_spidermonkey_scaffold_builds_and_serves() {
    scaffold_round_trip_with("js", "hello-spidermonkey", &["--js-engine", "spidermonkey"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_scaffold_builds_and_serves() {
    scaffold_round_trip("python", "hello-python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_scaffold_builds_and_serves() {
    scaffold_round_trip("c", "hello-c").await;
}

#[test]
fn new_refuses_bad_names_and_existing_projects() {
    let dir = tempfile::tempdir().unwrap();
    let output = weir()
        .args(["plugin", "new", "Bad_Name", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be lower-case"));

    succeed(
        weir()
            .args(["plugin", "new", "twice", "--lang", "c", "--dir"])
            .arg(dir.path()),
        "weir plugin new",
    );
    let output = weir()
        .args(["plugin", "new", "twice", "--lang", "c", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    // Outside a checkout the project carries the WIT it builds against.
    assert!(dir.path().join("twice/wit/plugin.wit").is_file());
}
