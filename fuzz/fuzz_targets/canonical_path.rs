//! The host's path canonicalisation (`weir::canonical::path`), fed arbitrary
//! paths under every option. Beyond "never panics": a canonical path is a
//! fixed point (canonicalising it again changes nothing), starts with `/`,
//! holds no `//` when merging, no `/./` or `/../`, no encoded unreserved
//! character and no lower-case escape; with ambiguous forms rejected it holds
//! no `\`, `;`, `%2F` or `%5C`; a redirect target is served as it is.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::canonical::{path, Ambiguous, Canonical, PathOptions};

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check(raw: &str, options: PathOptions) {
    let out = match path(raw, options) {
        Canonical::Path(p) => p,
        Canonical::Redirect(target) => {
            assert_eq!(path(&target, options), Canonical::Path(target.clone()));
            target
        }
        Canonical::Refused(_) => return,
    };
    assert_eq!(path(&out, options), Canonical::Path(out.clone()), "{raw:?}");
    assert!(out.starts_with('/'));
    if options.merge_slashes {
        assert!(!out.contains("//"), "{raw:?} -> {out:?}");
    }
    assert!(!out.contains("/./") && !out.contains("/../"), "{raw:?} -> {out:?}");
    assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{raw:?} -> {out:?}");
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(b.is_ascii_graphic(), "{raw:?} -> {out:?}");
        if b == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            assert_eq!(hex, hex.to_ascii_uppercase(), "{raw:?} -> {out:?}");
            let decoded = u8::from_str_radix(hex, 16).expect("hex escape");
            assert!(!unreserved(decoded), "{raw:?} -> {out:?}");
        }
    }
    if options.ambiguous == Ambiguous::Reject {
        for bad in ["\\", ";", "%2F", "%5C"] {
            assert!(!out.contains(bad), "{raw:?} -> {out:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = format!("/{text}");
    for ambiguous in [Ambiguous::Reject, Ambiguous::Keep, Ambiguous::Redirect] {
        for merge_slashes in [true, false] {
            check(&raw, PathOptions { merge_slashes, ambiguous });
        }
    }
});
