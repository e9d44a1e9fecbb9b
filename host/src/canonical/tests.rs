use super::*;

fn canon(raw: &str) -> Canonical {
    path(raw, PathOptions::default())
}

fn ok(raw: &str) -> String {
    match canon(raw) {
        Canonical::Path(p) => p,
        other => panic!("{raw:?} gave {other:?}"),
    }
}

fn refused(raw: &str) -> PathError {
    match canon(raw) {
        Canonical::Refused(e) => e,
        other => panic!("{raw:?} gave {other:?}, expected a refusal"),
    }
}

#[test]
fn decodes_unreserved_and_upper_cases_other_escapes() {
    assert_eq!(ok("/%61dmin"), "/admin");
    assert_eq!(ok("/%7euser"), "/~user");
    assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(ok("/a%20b"), "/a%20b");
    assert_eq!(ok("/a%3fb"), "/a%3Fb");
    assert_eq!(ok("/100%25"), "/100%25");
    assert_eq!(ok("/a\"b"), "/a%22b");
}

#[test]
fn removes_dot_segments_and_merges_slashes() {
    assert_eq!(ok("/"), "/");
    assert_eq!(ok("//"), "/");
    assert_eq!(ok("/a/./b"), "/a/b");
    assert_eq!(ok("/a/b/../c"), "/a/c");
    assert_eq!(ok("/../../a"), "/a");
    assert_eq!(ok("/a/.."), "/");
    assert_eq!(ok("/a/b/.."), "/a/");
    assert_eq!(ok("/a/."), "/a/");
    assert_eq!(ok("/a/"), "/a/");
    assert_eq!(ok("/anything//../health"), "/health");
    assert_eq!(ok("//internal/x"), "/internal/x");
    assert_eq!(ok("/x/%2e%2e/admin"), "/admin");
    assert_eq!(ok("/x/.%2E/admin"), "/admin");
    assert_eq!(ok("/a///b//"), "/a/b/");
}

#[test]
fn keeps_empty_segments_when_not_merging() {
    let options = PathOptions {
        merge_slashes: false,
        ..PathOptions::default()
    };
    assert_eq!(path("/a//b", options), Canonical::Path("/a//b".into()));
    assert_eq!(path("/a//../b", options), Canonical::Path("/a/b".into()));
}

#[test]
fn refuses_ambiguous_forms_by_default() {
    assert_eq!(refused("/health/..%2fanything"), PathError::EncodedSlash);
    assert_eq!(refused("/admin%2Fx"), PathError::EncodedSlash);
    assert_eq!(refused("/a%5cb"), PathError::EncodedSlash);
    assert_eq!(refused("/x\\..\\admin/x"), PathError::Backslash);
    assert_eq!(refused("/health/..;/anything"), PathError::Parameter);
    assert_eq!(refused("/admin;/x"), PathError::Parameter);
    assert_eq!(refused("/%2561dmin/x"), PathError::DoubleEncoding);
    assert_eq!(refused("/a%00b"), PathError::Control);
    assert_eq!(refused("/a%0d%0ab"), PathError::Control);
    assert_eq!(refused("/a%7f"), PathError::Control);
    assert_eq!(refused("/a%zz"), PathError::BrokenEscape);
    assert_eq!(refused("/a%4"), PathError::BrokenEscape);
    assert_eq!(refused("a"), PathError::NotAbsolute);
}

#[test]
fn keep_forwards_ambiguous_bytes_but_still_normalises() {
    let options = PathOptions {
        ambiguous: Ambiguous::Keep,
        ..PathOptions::default()
    };
    assert_eq!(path("/a%2fb", options), Canonical::Path("/a%2Fb".into()));
    assert_eq!(path("/a;x/./b", options), Canonical::Path("/a;x/b".into()));
    assert_eq!(path("/a\\b", options), Canonical::Path("/a%5Cb".into()));
    assert_eq!(path("/%2561", options), Canonical::Path("/%2561".into()));
    // Controls stay refused whatever the action.
    assert_eq!(
        path("/%00", options),
        Canonical::Refused(PathError::Control)
    );
}

#[test]
fn redirect_decodes_then_canonicalises() {
    let options = PathOptions {
        ambiguous: Ambiguous::Redirect,
        ..PathOptions::default()
    };
    assert_eq!(path("/a%2Fb", options), Canonical::Redirect("/a/b".into()));
    assert_eq!(
        path("/x\\..\\admin", options),
        Canonical::Redirect("/admin".into())
    );
    assert_eq!(
        path("/admin;jsessionid=1/x", options),
        Canonical::Redirect("/admin/x".into())
    );
    assert_eq!(
        path("/health/..;/anything", options),
        Canonical::Redirect("/anything".into())
    );
    assert_eq!(
        path("/%2561dmin", options),
        Canonical::Redirect("/admin".into())
    );
    // Unambiguous paths are served, not redirected.
    assert_eq!(path("/a/../b", options), Canonical::Path("/b".into()));
}

/// The invariants the fuzz target (fuzz/fuzz_targets/canonical_path.rs)
/// checks, over a deterministic stream of paths built from the characters
/// that matter, so CI runs them too.
#[test]
fn canonical_paths_are_fixed_points_without_dot_or_empty_segments() {
    const ALPHABET: &[&str] = &[
        "/", "/", "/", ".", "..", "a", "B", "%2e", "%2E", "%2f", "%5c", "\\", ";", "%25", "%41",
        "%7e", "%c3", "%00", "%", "~", "-", "é", "?", "%3b", "//", "/./", "/../",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..50_000 {
        let len = (next() % 12) as usize;
        let mut raw = String::from("/");
        for _ in 0..len {
            raw.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
        }
        for ambiguous in [Ambiguous::Reject, Ambiguous::Keep, Ambiguous::Redirect] {
            for merge_slashes in [true, false] {
                let options = PathOptions {
                    merge_slashes,
                    ambiguous,
                };
                check_invariants(&raw, options);
            }
        }
    }
}

pub(super) fn check_invariants(raw: &str, options: PathOptions) {
    if is_canonical(raw, options.merge_slashes) {
        assert_eq!(
            path(raw, options),
            Canonical::Path(raw.to_owned()),
            "{raw:?} passed the fast check"
        );
    }
    let out = match path(raw, options) {
        Canonical::Path(p) => p,
        Canonical::Redirect(target) => {
            // A redirect target is served as it is, never redirected again.
            assert_eq!(
                path(&target, options),
                Canonical::Path(target.clone()),
                "{raw:?}"
            );
            target
        }
        Canonical::Refused(_) => return,
    };
    assert_eq!(
        path(&out, options),
        Canonical::Path(out.clone()),
        "{raw:?} → {out:?}"
    );
    assert!(out.starts_with('/'), "{raw:?} → {out:?}");
    if options.merge_slashes {
        assert!(!out.contains("//"), "{raw:?} → {out:?}");
    }
    for bad in ["/./", "/../"] {
        assert!(!out.contains(bad), "{raw:?} → {out:?}");
    }
    assert!(
        !out.ends_with("/.") && !out.ends_with("/.."),
        "{raw:?} → {out:?}"
    );
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(b.is_ascii_graphic(), "{raw:?} → {out:?}");
        if b == b'%' {
            let h = hex(bytes[i + 1]).expect("escape");
            let l = hex(bytes[i + 2]).expect("escape");
            assert!(!is_unreserved(h << 4 | l), "{raw:?} → {out:?}");
            assert!(
                !bytes[i + 1].is_ascii_lowercase() && !bytes[i + 2].is_ascii_lowercase(),
                "{raw:?} → {out:?}"
            );
        }
    }
    if options.ambiguous == Ambiguous::Reject {
        assert!(
            !out.contains('\\') && !out.contains(';'),
            "{raw:?} → {out:?}"
        );
        assert!(
            !out.contains("%2F") && !out.contains("%5C"),
            "{raw:?} → {out:?}"
        );
    }
}

#[test]
fn the_fast_check_knows_canonical_paths() {
    for canonical in ["/", "/a", "/a/", "/a/b:c@d", "/..a/b..", "/a/..."] {
        assert!(is_canonical(canonical, true), "{canonical:?}");
    }
    for not in [
        "", "a", "//", "/a//b", "/./a", "/a/..", "/%61", "/a;b", "/a\\b", "/é",
    ] {
        assert!(!is_canonical(not, true), "{not:?}");
    }
    assert!(is_canonical("/a//b", false));
}

#[test]
fn authority_is_validated_and_normalised() {
    assert_eq!(authority("Example.COM", "http").unwrap(), "example.com");
    assert_eq!(authority("example.com:80", "http").unwrap(), "example.com");
    assert_eq!(
        authority("example.com:443", "https").unwrap(),
        "example.com"
    );
    assert_eq!(
        authority("example.com:443", "http").unwrap(),
        "example.com:443"
    );
    assert_eq!(
        authority("example.com:08080", "http").unwrap(),
        "example.com:8080"
    );
    assert_eq!(
        authority("127.0.0.1:8080", "http").unwrap(),
        "127.0.0.1:8080"
    );
    assert_eq!(authority("[::1]:8080", "http").unwrap(), "[::1]:8080");
    assert_eq!(authority("[::1]", "http").unwrap(), "[::1]");
    for bad in [
        "",
        ":80",
        "a/b",
        "a b",
        "user@host",
        "host:",
        "host:99999",
        "host:8x",
        "[::1",
        "[zz]",
        "[::1]x",
        "a,b",
        "a\\b",
        "ho%41st",
    ] {
        assert_eq!(authority(bad, "http"), Err(BadAuthority), "{bad:?}");
    }
}
