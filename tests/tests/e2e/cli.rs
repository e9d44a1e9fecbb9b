//! The `weir` command line as a real process: `check` on good and broken
//! configs, and `run` + SIGTERM.

use std::path::Path;
use std::process::Command;

use weir_tests::{config_file, tagger_plugin};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-e2e"))
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

#[test]
fn check_accepts_the_example_config() {
    // The example points at plugins/*.wasm, where the README's demo
    // command drops them; put the freshly built ones there.
    let plugins = examples().join("../plugins");
    for (name, file) in weir_tests::artifacts::ALL {
        std::fs::copy(
            file,
            plugins.join(format!("{}.wasm", name.replace('-', "_"))),
        )
        .unwrap();
    }
    let output = weir()
        .args(["check", "--config"])
        .arg(examples().join("proxy.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok (4 plugins, 2 routes)"), "{stdout}");
}

fn check_errors(body: &str) -> String {
    let (_dir, path) = config_file(body);
    let output = weir()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a broken config passed check");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_names_the_key_and_line_of_a_typo() {
    let stderr = check_errors("default_upstream = \"up\"\n[upstreams.up]\nendpoints = [\"127.0.0.1:1\"]\nconect_timeout_ms = 5\n");
    assert!(stderr.contains("proxy.toml:4"), "{stderr}");
    assert!(stderr.contains("upstreams.up"), "{stderr}");
    assert!(
        stderr.contains("unknown field `conect_timeout_ms`"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_missing_plugin_file() {
    let stderr = check_errors("chain = [\"auth\"]\n[plugins.auth]\nfile = \"plugins/auth.wasm\"\n");
    assert!(
        stderr.contains("plugins.auth.file: no such file"),
        "{stderr}"
    );
    assert!(stderr.contains("plugins/auth.wasm"), "{stderr}");
    assert!(stderr.contains("proxy.toml:3"), "{stderr}");
}

#[test]
fn check_reports_every_problem_one_per_line() {
    let stderr = check_errors(
        "default_upstream = \"nope\"\nchain = [\"ghost\"]\n[upstreams.up]\nendpoints = [\"no-port\"]\n",
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(stderr.contains("upstreams.up.endpoints[0]"), "{stderr}");
    assert!(
        stderr.contains("default_upstream: unknown upstream \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("chain[0]: unknown plugin \"ghost\""),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_refused_plugin_config() {
    let stderr = check_errors(&format!(
        "chain = [\"t\"]\n{}",
        tagger_plugin("t", "bad tag!", "")
    ));
    assert!(stderr.contains("plugin t: config refused"), "{stderr}");
    assert!(stderr.contains("HTTP token"), "{stderr}");
}

#[test]
fn check_refuses_a_file_that_is_not_a_component() {
    let (dir, path) = config_file("chain = [\"junk\"]\n[plugins.junk]\nfile = \"junk.wasm\"\n");
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm at all").unwrap();
    let output = weir()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("junk.wasm: not a valid component"),
        "{stderr}"
    );
}

#[test]
fn a_log_queue_size_that_is_not_a_size_is_refused_before_anything_starts() {
    for value in ["lots", "1024", "-1"] {
        let output = weir()
            .args(["check", "--config"])
            .arg(examples().join("proxy.toml"))
            .env("WEIR_LOG_QUEUE_BYTES", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "weir: cannot start logging: WEIR_LOG_QUEUE_BYTES=\"{value}\": expected a number of bytes, at least 65536"
            )),
            "{stderr}"
        );
    }
}
