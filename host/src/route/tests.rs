use super::*;

fn route(hosts: &[&str], path: PathMatch) -> Match {
    Match {
        hosts: hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect(),
        path,
        ..Match::default()
    }
}

fn find<'a>(router: &'a Router<&'static str>, authority: &str, path: &str) -> Option<&'a str> {
    find_with(
        router,
        authority,
        path,
        &Method::GET,
        &HeaderMap::new(),
        None,
    )
}

fn find_with<'a>(
    router: &'a Router<&'static str>,
    authority: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<&'a str> {
    router
        .find(&Request {
            authority,
            path,
            query,
            method,
            headers,
        })
        .copied()
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let router = Router::new(vec![(
        route(&[], PathMatch::prefix("/api/").unwrap()),
        "api",
    )]);
    assert_eq!(find(&router, "a", "/api"), Some("api"));
    assert_eq!(find(&router, "a", "/api/v1/x"), Some("api"));
    assert_eq!(find(&router, "a", "/apix"), None);
    assert_eq!(find(&router, "a", "/"), None);
}

#[test]
fn first_match_in_config_order_wins_across_buckets() {
    let router = Router::new(vec![
        (route(&[], PathMatch::prefix("/").unwrap()), "catch-all"),
        (
            route(&["api.example.com"], PathMatch::exact("/x").unwrap()),
            "never",
        ),
    ]);
    assert_eq!(find(&router, "api.example.com", "/x"), Some("catch-all"));
    let router = Router::new(vec![
        (
            route(&["api.example.com"], PathMatch::exact("/x").unwrap()),
            "exact",
        ),
        (route(&["*.example.com"], PathMatch::Any), "wild"),
        (route(&[], PathMatch::Any), "any"),
    ]);
    assert_eq!(find(&router, "api.example.com:8080", "/x"), Some("exact"));
    assert_eq!(find(&router, "api.example.com", "/y"), Some("wild"));
    assert_eq!(find(&router, "a.b.example.com", "/x"), Some("wild"));
    assert_eq!(find(&router, "example.com", "/x"), Some("any"));
    assert_eq!(find(&router, "[::1]:80", "/x"), Some("any"));
}

#[test]
fn patterns_bind_whole_segments() {
    let router = Router::new(vec![
        (
            route(&[], PathMatch::pattern("/users/{id}/posts").unwrap()),
            "posts",
        ),
        (
            route(&[], PathMatch::pattern("/files/{*rest}").unwrap()),
            "files",
        ),
    ]);
    assert_eq!(find(&router, "a", "/users/7/posts"), Some("posts"));
    assert_eq!(find(&router, "a", "/users//posts"), None);
    assert_eq!(find(&router, "a", "/users/7/posts/1"), None);
    assert_eq!(find(&router, "a", "/files/a/b/c"), Some("files"));
    assert_eq!(find(&router, "a", "/files/"), Some("files"));
    assert!(PathMatch::pattern("/a/{*rest}/b").is_err());
    assert!(PathMatch::pattern("/a/{x/b").is_err());
}

#[test]
fn methods_headers_and_query_must_all_hold() {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "acme".parse().unwrap());
    let matcher = Match {
        methods: vec![Method::GET],
        headers: vec![(http::HeaderName::from_static("x-tenant"), "acme".into())],
        query: vec![("debug".into(), "1".into())],
        ..Match::default()
    };
    let router = Router::new(vec![(matcher, "r")]);
    let q = Some("a=2&debug=1");
    assert_eq!(
        find_with(&router, "h", "/", &Method::GET, &headers, q),
        Some("r")
    );
    assert_eq!(
        find_with(&router, "h", "/", &Method::HEAD, &headers, q),
        Some("r")
    );
    assert_eq!(
        find_with(&router, "h", "/", &Method::POST, &headers, q),
        None
    );
    assert_eq!(
        find_with(&router, "h", "/", &Method::GET, &HeaderMap::new(), q),
        None
    );
    assert_eq!(
        find_with(&router, "h", "/", &Method::GET, &headers, Some("debug=2")),
        None
    );
}

#[test]
fn non_canonical_paths_and_bad_hosts_are_refused() {
    for path in ["api", "/a/../b", "/a//b", "/%61", "/a?b"] {
        assert!(PathMatch::prefix(path).is_err(), "{path}");
    }
    for host in ["", "*.", "a:80", "a/b", "*.*.a"] {
        assert!(HostMatch::parse(host).is_err(), "{host}");
    }
    assert_eq!(
        HostMatch::parse("*.Example.COM").unwrap(),
        HostMatch::Suffix(".example.com".into())
    );
}

#[test]
fn coverage_finds_shadowed_routes_and_only_those() {
    let catch = route(&[], PathMatch::prefix("/api").unwrap());
    let later = route(&["a.example.com"], PathMatch::exact("/api/x").unwrap());
    assert!(catch.covers(&later));
    assert!(!later.covers(&catch));
    let wild = route(&["*.example.com"], PathMatch::Any);
    assert!(wild.covers(&later));
    let pattern = route(&[], PathMatch::pattern("/api/{id}").unwrap());
    assert!(catch.covers(&pattern));
    let get = Match {
        methods: vec![Method::GET],
        ..Match::default()
    };
    let head = Match {
        methods: vec![Method::HEAD],
        ..Match::default()
    };
    assert!(get.covers(&head));
    assert!(!head.covers(&get));
    let with_header = Match {
        headers: vec![(http::HeaderName::from_static("x-a"), "1".into())],
        ..Match::default()
    };
    assert!(!with_header.covers(&Match::default()));
    assert!(Match::default().covers(&with_header));
}
