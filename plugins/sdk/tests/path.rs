//! `PathPrefix` and `check_canonical`: segment-wise matching of canonical
//! paths, the opt-in to ASCII case-insensitivity, prefix replacement, and
//! the refusal of prefixes no canonical path could match.

use weir_plugin::path::check_canonical;
use weir_plugin::PathPrefix;

fn prefix(text: &str) -> PathPrefix {
    PathPrefix::new(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn prefixes_match_whole_segments() {
    let admin = prefix("/admin");
    for path in ["/admin", "/admin/", "/admin/x", "/admin/x/y"] {
        assert!(admin.matches(path), "{path}");
    }
    for path in ["/administrator", "/admi", "/", "/x/admin", "/ADMIN", ""] {
        assert!(!admin.matches(path), "{path}");
    }
}

#[test]
fn a_trailing_slash_matches_only_below_and_root_matches_everything() {
    let below = prefix("/admin/");
    assert!(below.matches("/admin/"));
    assert!(below.matches("/admin/x"));
    assert!(!below.matches("/admin"));
    assert!(!below.matches("/administrator"));
    let root = prefix("/");
    for path in ["/", "/x", "/x/y/", "/administrator"] {
        assert!(root.matches(path), "{path}");
    }
}

#[test]
fn case_insensitivity_is_opt_in_and_ascii_only() {
    let admin = prefix("/Admin");
    assert!(!admin.is_case_insensitive());
    assert!(!admin.matches("/admin"));
    let admin = admin.case_insensitive(true);
    assert!(admin.is_case_insensitive());
    for path in ["/admin", "/ADMIN/x", "/aDmIn/"] {
        assert!(admin.matches(path), "{path}");
    }
    assert!(!admin.matches("/ADMINISTRATOR"));
    // Escapes are upper-case in canonical paths; the letters in them fold
    // like any other, which changes nothing that matters.
    let cafe = prefix("/caf%C3%A9").case_insensitive(true);
    assert!(cafe.matches("/CAF%C3%A9/menu"));
    assert!(!cafe.matches("/CAF%C3%89"));
    assert_eq!(admin.as_str(), "/Admin");
    assert_eq!(admin.to_string(), "/Admin");
}

#[test]
fn rest_is_what_lies_below_the_prefix() {
    assert_eq!(prefix("/api").rest("/api/x"), Some("/x"));
    assert_eq!(prefix("/api").rest("/api"), Some(""));
    assert_eq!(prefix("/api").rest("/api/"), Some("/"));
    assert_eq!(prefix("/api/").rest("/api/"), Some("/"));
    assert_eq!(prefix("/api/").rest("/api/x"), Some("/x"));
    assert_eq!(prefix("/").rest("/x"), Some("/x"));
    assert_eq!(prefix("/api").rest("/apiary"), None);
    let ci = prefix("/api").case_insensitive(true);
    assert_eq!(ci.rest("/API/Users"), Some("/Users"));
}

#[test]
fn replace_joins_without_doubling_slashes() {
    let cases = [
        ("/api/v1/users", "/api/v1", "/v1", Some("/v1/users")),
        ("/api/users", "/api", "", Some("/users")),
        ("/api", "/api", "", Some("/")),
        ("/api/x", "/api", "/", Some("/x")),
        ("/other", "/api", "/v1", None),
        ("/apiary", "/api", "/v1", None),
        ("/api/x", "/api/", "", Some("/x")),
        ("/api/x", "/api/", "/v1", Some("/v1/x")),
        ("/api/", "/api/", "", Some("/")),
        ("/x", "/", "/v1/", Some("/v1/x")),
    ];
    for (path, from, to, expected) in cases {
        assert_eq!(
            prefix(from).replace(path, to).as_deref(),
            expected,
            "{path} with {from} → {to}"
        );
    }
    let ci = prefix("/api").case_insensitive(true);
    assert_eq!(ci.replace("/API/x", "/v1").as_deref(), Some("/v1/x"));
}

#[test]
fn covers_says_whether_one_prefix_shadows_another() {
    assert!(prefix("/").covers(&prefix("/admin")));
    assert!(prefix("/a").covers(&prefix("/a/b")));
    assert!(prefix("/a").covers(&prefix("/a/")));
    assert!(!prefix("/a/").covers(&prefix("/a")));
    assert!(!prefix("/a").covers(&prefix("/ab")));
    assert!(!prefix("/a/b").covers(&prefix("/a")));
    // A case-insensitive rule reaches `/A/b`, which a case-sensitive `/a`
    // does not cover; a case-insensitive one, or one without letters, does.
    let ci_rule = prefix("/a/b").case_insensitive(true);
    assert!(!prefix("/a").covers(&ci_rule));
    assert!(prefix("/a").case_insensitive(true).covers(&ci_rule));
    assert!(prefix("/").covers(&ci_rule));
    assert!(prefix("/A").case_insensitive(true).covers(&prefix("/a/b")));
}

#[test]
fn canonical_prefixes_are_accepted() {
    for ok in [
        "/",
        "/admin",
        "/admin/",
        "/a/b/c",
        "/a%20b",
        "/caf%C3%A9",
        "/100%25",
        "/a:b@c!$&'()*+,=",
        "/..a/.b/c.",
    ] {
        assert_eq!(check_canonical(ok), Ok(()), "{ok}");
        assert!(PathPrefix::new(ok).is_ok(), "{ok}");
    }
}

#[test]
fn prefixes_no_canonical_path_could_match_are_refused_with_the_reason() {
    let cases = [
        ("admin", "\"admin\" must start with '/'"),
        ("", "\"\" must start with '/'"),
        ("//admin", "empty segment '//'"),
        ("/a//b", "empty segment '//'"),
        ("/a/./b", "a \".\" segment"),
        ("/a/..", "a \"..\" segment"),
        ("/.", "a \".\" segment"),
        (
            "/%61dmin",
            "%61 is an escaped unreserved character: write 'a'",
        ),
        (
            "/%2e%2e/admin",
            "%2e is an escaped unreserved character: write '.'",
        ),
        ("/%7Euser", "write '~'"),
        ("/a%2Fb", "%2F is an encoded separator"),
        ("/a%5cb", "%5c is an encoded separator"),
        ("/a%3fb", "%3f has lower-case hex: the host writes %3F"),
        ("/a%2541", "%25 followed by hex digits is a double encoding"),
        ("/a%", "\"%\" is not an escape"),
        ("/a%4", "\"%4\" is not an escape"),
        ("/a%zz", "\"%zz\" is not an escape"),
        ("/a;jsessionid=1", "';' is not allowed"),
        ("/a\\b", "'\\\\' is not allowed"),
        ("/a?b", "'?' is not allowed"),
        ("/a#b", "'#' is not allowed"),
        ("/a b", "' ' must be percent-encoded"),
        ("/a\tb", "'\\t' must be percent-encoded"),
        ("/caf\u{e9}", "'é' must be percent-encoded"),
    ];
    for (bad, reason) in cases {
        let err = PathPrefix::new(bad).expect_err(bad);
        assert!(err.starts_with(&format!("{bad:?}")), "{bad}: {err}");
        assert!(err.contains(reason), "{bad}: expected {reason:?} in {err}");
        assert_eq!(check_canonical(bad), Err(err));
    }
    let err = PathPrefix::new("/a//b").unwrap_err();
    assert!(err.contains("no request path could match it"), "{err}");
}
