//! The SDK's own behaviour, through the native harness: the head caches
//! stay true to the edits, and edits follow the gateway's rules.

use serde_json::json;

use crate::prelude::*;
use crate::testing::Harness;

/// Reads, edits, reads again, and reports what it saw in `x-seen`.
struct Reader;

impl Plugin for Reader {
    fn new(_: &Config) -> Result<Self> {
        Ok(Reader)
    }

    fn on_request(&self, req: &mut Request, _: &Context) -> Result<Action> {
        let mut seen = Vec::new();
        seen.push(format!("{:?}", req.header("x-a")));
        req.set_header("x-a", "2")?;
        seen.push(format!("{:?}", req.header("x-a")));
        req.append_header("x-a", "3")?;
        seen.push(format!("{:?}", req.header_all("x-a")));
        req.remove_header("x-a")?;
        seen.push(format!("{:?}", req.header("x-a")));
        seen.push(format!("{}", req.headers().len()));
        req.set_header("x-b", "b")?;
        seen.push(format!("{:?}", req.headers().get("x-b")));
        let refused = [
            req.set_header("content-length", "1").is_err(),
            req.set_header("bad name", "1").is_err(),
            req.set_header("x-c", "a\r\nb").is_err(),
        ];
        seen.push(format!("{refused:?}"));
        req.set_header("x-seen", seen.join(" | "))?;
        Ok(Action::Continue)
    }
}

#[test]
fn header_reads_follow_the_edits() {
    let h = Harness::<Reader>::new(json!({})).expect("init");
    let req = http::Request::get("/").header("x-a", "1").header("x-other", "o").body(()).expect("request");
    let out = h.on_request(req).unwrap_continue();
    assert_eq!(
        out.headers()["x-seen"],
        r#"Some("1") | Some("2") | ["2", "3"] | None | 1 | Some("b") | [true, true, true]"#
    );
    assert!(out.headers().get("x-a").is_none());
    assert_eq!(out.headers()["x-b"], "b");
    assert_eq!(out.headers()["x-other"], "o");
}

/// Edits, then fails: nothing of its edits may survive.
struct EditThenFail;

impl Plugin for EditThenFail {
    fn new(_: &Config) -> Result<Self> {
        Ok(EditThenFail)
    }

    fn on_request(&self, req: &mut Request, _: &Context) -> Result<Action> {
        req.set_header("x-half", "done")?;
        req.headers_mut().insert("x-map", HeaderValue::from_static("1"));
        Err(Error::new(StatusCode::FORBIDDEN, "no"))
    }

    fn on_response(&self, _: &Request, resp: &mut Response, _: &Context) -> Result<Action> {
        resp.headers_mut().insert("x-map", HeaderValue::from_static("1"));
        resp.set_status(StatusCode::ACCEPTED)?;
        Ok(Action::Continue)
    }
}

#[test]
fn a_failed_phase_leaves_no_edits_and_headers_mut_goes_back_whole() {
    let h = Harness::<EditThenFail>::new(json!({})).expect("init");
    let reply = h.on_request(http::Request::get("/").body(()).expect("request")).unwrap_respond();
    assert_eq!(reply.status(), 403);
    let resp = http::Response::builder().header("x-up", "u").body(()).expect("response");
    let out = h.on_response(&http::Request::get("/").body(()).expect("request"), resp).unwrap_continue();
    assert_eq!(out.status(), 202);
    assert_eq!(out.headers()["x-map"], "1");
    assert_eq!(out.headers()["x-up"], "u");
}

/// Admits only clients whose verified certificate names `CN=ops`.
struct OpsOnly;

impl Plugin for OpsOnly {
    fn new(_: &Config) -> Result<Self> {
        Ok(OpsOnly)
    }

    fn on_request(&self, req: &mut Request, _: &Context) -> Result<Action> {
        match req.tls().and_then(|t| t.client_subject.as_deref()) {
            Some(s) if s.starts_with("CN=ops,") => Ok(Action::Continue),
            _ => Ok(Reply::new(StatusCode::FORBIDDEN).into()),
        }
    }
}

#[test]
fn the_tls_connection_is_visible_to_plugins() {
    let req = || http::Request::get("/").body(()).expect("request");
    let cleartext = Harness::<OpsOnly>::new(json!({})).expect("init");
    assert_eq!(cleartext.on_request(req()).unwrap_respond().status(), StatusCode::FORBIDDEN);
    let other = Harness::<OpsOnly>::new(json!({})).expect("init").tls(crate::Tls::new("TLSv1.3"));
    assert_eq!(other.on_request(req()).unwrap_respond().status(), StatusCode::FORBIDDEN);
    let ops = Harness::<OpsOnly>::new(json!({}))
        .expect("init")
        .tls(crate::Tls::new("TLSv1.3").with_client_subject("CN=ops, O=Acme").with_server_name("api.test"));
    ops.on_request(req()).unwrap_continue();
}

/// Asks the `authz` upstream about each request, with its bearer token,
/// and the `audit` upstream in the same breath.
struct AskAuthz;

impl Plugin for AskAuthz {
    fn new(_: &Config) -> Result<Self> {
        Ok(AskAuthz)
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let token = req.header("authorization").unwrap_or_default().to_owned();
        let calls = vec![
            cx.http("authz").post("/check?scope=read").header("authorization", &token).body("{}"),
            cx.http("audit").get(&format!("/seen{}", req.path())),
        ];
        let mut results = cx.send_all(calls).into_iter();
        let verdict = results.next().unwrap_or_else(|| Err(crate::OutboundError::Invalid("no result".into())));
        match verdict {
            Ok(answer) if answer.status() == StatusCode::OK => {
                let user = answer.headers().get("x-user").cloned();
                if let Some(user) = user {
                    req.headers_mut().insert("x-user", user);
                }
                Ok(Action::Continue)
            }
            Ok(answer) => Ok(Reply::new(answer.status()).body(answer.into_body()).into()),
            Err(e) => Ok(Reply::new(StatusCode::SERVICE_UNAVAILABLE).body(e.to_string()).into()),
        }
    }
}

#[test]
fn the_harness_stubs_outbound_answers_and_records_the_calls() {
    crate::testing::reset();
    let h = Harness::<AskAuthz>::new(json!({})).expect("init");
    let req = |token: &str| http::Request::get("/orders").header("authorization", token).body(()).expect("request");

    // Nothing stubbed: the upstream is refused, as an unlisted one is.
    let refused = h.on_request(req("Bearer a")).unwrap_respond();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(refused.body()).contains("not allowed"), "{refused:?}");

    let ok = http::Response::builder().status(200).header("x-user", "ann").body(b"{}".to_vec()).expect("answer");
    crate::testing::stub_outbound("authz", "/check", ok);
    crate::testing::stub_outbound_error("audit", "/seen/orders", crate::OutboundError::Timeout("slow".into()));
    let passed = h.on_request(req("Bearer a")).unwrap_continue();
    assert_eq!(passed.headers().get("x-user").map(|v| v.as_bytes()), Some(&b"ann"[..]));

    // A later stub for the same path replaces the first.
    let no = http::Response::builder().status(403).body(b"nope".to_vec()).expect("answer");
    crate::testing::stub_outbound("authz", "/check", no);
    let denied = h.on_request(req("Bearer b")).unwrap_respond();
    assert_eq!((denied.status(), denied.body().as_slice()), (StatusCode::FORBIDDEN, &b"nope"[..]));

    // Every call was recorded, in order, as the plugin made it.
    let calls = crate::testing::outbound_calls();
    assert_eq!(calls.len(), 6);
    let check = &calls[2];
    assert_eq!((check.upstream(), check.method().as_str(), check.path()), ("authz", "POST", "/check?scope=read"));
    assert_eq!(check.headers(), [("authorization".to_owned(), b"Bearer a".to_vec())]);
    assert_eq!(check.body_bytes(), b"{}");
    assert_eq!((calls[3].upstream(), calls[3].path()), ("audit", "/seen/orders"));
}

/// The SDK's version is the contract's: `package weir:plugin@X.Y.Z` in the
/// WIT this crate carries and binds to.
#[test]
fn the_sdk_version_is_the_contract_version() {
    let wit = include_str!("../wit/plugin.wit");
    let contract = wit
        .lines()
        .find_map(|l| l.trim().strip_prefix("package weir:plugin@"))
        .map(|v| v.trim_end_matches(';'))
        .expect("a package line");
    assert_eq!(env!("CARGO_PKG_VERSION"), contract, "bump plugin-sdk/Cargo.toml's version with the contract");
}
