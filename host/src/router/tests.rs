use super::*;

fn m(host: Option<&str>, path: Option<&str>, prefix: Option<&str>, methods: Option<&[&str]>) -> RouteMatcher {
    let methods: Option<Vec<String>> = methods.map(|ms| ms.iter().map(|s| s.to_string()).collect());
    RouteMatcher::new(host, path, prefix, methods.as_deref()).expect("valid route")
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let r = Router::new(vec![m(None, None, Some("/users"), None)]);
    assert_eq!(r.find("h", "/users", &Method::GET), Match::Found(0, vec![]));
    assert_eq!(r.find("h", "/users/7", &Method::GET), Match::Found(0, vec![]));
    assert_eq!(r.find("h", "/usersx", &Method::GET), Match::NotFound);
    assert_eq!(r.find("h", "/", &Method::GET), Match::NotFound);
}

#[test]
fn first_match_wins_and_host_is_case_insensitive_without_port() {
    let r = Router::new(vec![
        m(Some("api.example.com"), None, Some("/"), None),
        m(Some("*.example.com"), None, Some("/"), None),
        m(None, None, None, None),
    ]);
    assert_eq!(r.find("API.example.com:8080", "/x", &Method::GET), Match::Found(0, vec![]));
    assert_eq!(r.find("www.example.com", "/x", &Method::GET), Match::Found(1, vec![]));
    assert_eq!(r.find("example.com", "/x", &Method::GET), Match::Found(2, vec![]));
    assert_eq!(r.find("[::1]:80", "/x", &Method::GET), Match::Found(2, vec![]));
}

#[test]
fn params_and_rest() {
    let r = Router::new(vec![
        m(None, Some("/users/{id}/orders/{order}"), None, None),
        m(None, Some("/files/{*path}"), None, None),
        m(None, Some("/exact"), None, None),
    ]);
    assert_eq!(
        r.find("h", "/users/42/orders/7", &Method::GET),
        Match::Found(0, vec![("id".into(), "42".into()), ("order".into(), "7".into())])
    );
    assert_eq!(r.find("h", "/users//orders/7", &Method::GET), Match::NotFound);
    assert_eq!(r.find("h", "/users/42/orders/7/x", &Method::GET), Match::NotFound);
    assert_eq!(r.find("h", "/files/a/b/c", &Method::GET), Match::Found(1, vec![("path".into(), "a/b/c".into())]));
    assert_eq!(r.find("h", "/exact", &Method::GET), Match::Found(2, vec![]));
    assert_eq!(r.find("h", "/exact/", &Method::GET), Match::NotFound);
}

#[test]
fn method_not_allowed_lists_methods() {
    let r = Router::new(vec![m(None, None, Some("/a"), Some(&["get", "POST"]))]);
    assert_eq!(r.find("h", "/a", &Method::POST), Match::Found(0, vec![]));
    assert_eq!(r.find("h", "/a", &Method::DELETE), Match::MethodNotAllowed(vec![Method::GET, Method::POST]));
}

#[test]
fn invalid_definitions() {
    let err = |host, path, prefix, methods: Option<&[String]>| {
        RouteMatcher::new(host, path, prefix, methods).expect_err("must be rejected")
    };
    assert!(err(None, Some("x"), None, None).contains("must start with '/'"));
    assert!(err(None, Some("/a"), Some("/a"), None).contains("not both"));
    assert!(err(None, Some("/a/{*r}/b"), None, None).contains("last segment"));
    assert!(err(None, Some("/a/x{id}"), None, None).contains("whole segment"));
    assert!(err(Some("a b"), None, None, None).contains("invalid host"));
    assert!(err(None, None, None, Some(&["G ET".to_string()])).contains("invalid method"));
}
