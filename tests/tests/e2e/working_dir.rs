//! `weir run` and `weir check` as a user runs them: from the folder holding
//! `proxy.toml`, with a bare relative config name and plugin paths relative
//! to it, and with a compilation cache folder that cannot be used.

use std::path::Path;

use weir_tests::{artifacts, client, spawn_weir, Upstream};

fn weir() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"))
}

/// A folder as a user lays it out: `proxy.toml` beside `plugins/tagger.wasm`,
/// every path in the file relative, no `[runtime]` section unless given.
fn project(upstream: &Upstream, runtime: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(artifacts::TAGGER, dir.path().join("plugins/tagger.wasm")).unwrap();
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"tagger\"]\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         {}\n[plugins.tagger]\nfile = \"plugins/tagger.wasm\"\n[plugins.tagger.config]\ntag = \"cwd\"\n\n{runtime}",
        upstream.toml("up")
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    dir
}

fn check_in(dir: &Path, args: &[&str]) {
    let output = weir()
        .current_dir(dir)
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "weir check {args:?} failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn check_works_with_a_bare_relative_config_name() {
    let upstream = Upstream::echo().await;
    let dir = project(&upstream, "");
    check_in(dir.path(), &[]);
    check_in(dir.path(), &["--config", "proxy.toml"]);
    check_in(dir.path(), &["--config", "./proxy.toml"]);
    // The cache went beside the config, not into some other folder.
    assert!(dir.path().join(".weir/cache").is_dir());
}

async fn serves_tagged(address: &str) {
    let response = client()
        .get(format!("http://{address}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = weir_tests::echo_json(&response.text().await.unwrap());
    assert_eq!(
        weir_tests::echoed_header(&echo, "x-weir-chain"),
        ["cwd"],
        "{echo}"
    );
}

#[tokio::test]
async fn run_works_from_the_config_folder() {
    let upstream = Upstream::echo().await;
    let dir = project(&upstream, "");
    for args in [
        &[][..],
        &["--config", "proxy.toml"],
        &["--config", "./proxy.toml"],
    ] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"));
        command.current_dir(dir.path()).arg("run").args(args);
        let weir = spawn_weir(command).await;
        serves_tagged(&weir.address).await;
        assert!(
            !weir
                .startup
                .iter()
                .any(|l| l.contains("compilation cache disabled")),
            "{:#?}",
            weir.startup
        );
    }
}

#[tokio::test]
async fn an_unusable_cache_folder_costs_one_warning_not_the_start() {
    let upstream = Upstream::echo().await;
    // A folder below a plain file can never be created, even by root.
    let dir = project(&upstream, "[runtime]\ncache_dir = \"blocker/cache\"\n");
    std::fs::write(dir.path().join("blocker"), b"a file, not a folder").unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"));
    command.current_dir(dir.path()).arg("run");
    let weir = spawn_weir(command).await;
    serves_tagged(&weir.address).await;
    let warnings: Vec<&String> = weir
        .startup
        .iter()
        .filter(|l| l.contains("compilation cache disabled"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", weir.startup);
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("blocker"), "{}", warnings[0]);
}
