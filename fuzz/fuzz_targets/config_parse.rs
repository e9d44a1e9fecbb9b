//! `Config::parse` on arbitrary text: it must never panic, and every
//! failure must be a non-empty `ConfigErrors` that names the file and a
//! line inside it.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir::Config;

/// A config path inside a scratch tree holding the files that
/// `examples/proxy.toml` and the seeds refer to, so inputs that name them
/// get past the "no such file" checks into the deeper validation.
fn config_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("weir-fuzz-config-{}", std::process::id()));
        let conf = base.join("conf");
        let plugins = base.join("plugins");
        std::fs::create_dir_all(&conf).expect("create scratch conf dir");
        std::fs::create_dir_all(&plugins).expect("create scratch plugins dir");
        for name in ["auth", "rate_limit", "cache_policy", "router", "p"] {
            std::fs::write(plugins.join(format!("{name}.wasm")), b"").expect("write stub plugin");
        }
        for name in ["p.wasm", "cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(conf.join(name), b"").expect("write stub file");
        }
        conf.join("proxy.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = config_path();
    match Config::parse(path, text) {
        Ok(config) => {
            assert_eq!(config.path, path);
            assert!(
                !config.listeners.is_empty(),
                "accepted a config without listeners"
            );
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected with no error");
            let lines = text.split('\n').count();
            for err in &errors.0 {
                assert_eq!(err.file, path);
                if let Some(line) = err.line {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}");
                }
            }
            let _ = errors.to_string();
        }
    }
});
