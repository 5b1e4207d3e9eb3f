use super::*;

fn request(headers: &[(&str, &str)]) -> LentRequest {
    let mut b = http::Request::get("/a?b=1");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let parts = b.body(()).expect("request").into_parts().0;
    let info = Arc::new(RequestInfo {
        client: SocketAddr::from(([127, 0, 0, 1], 1)),
        authority: "example.com".into(),
        route: "r".into(),
        request_id: "id".into(),
        params: Vec::new(),
        tls: None,
    });
    LentRequest::new(parts, info)
}

#[test]
fn edits_go_to_a_copy_until_committed() {
    let mut heads = Heads {
        request: request(&[("x-a", "1"), ("content-length", "3")]),
        response: None,
        chain: Default::default(),
        outbound: Default::default(),
    };
    let r = &mut heads.request;
    set_header(&mut r.edit().expect("editable").headers, 2, "x-a", b"2").expect("valid");
    append_header(&mut r.edit().expect("editable").headers, 2, "x-b", b"3").expect("valid");
    r.edit().expect("editable").method = Method::POST;
    assert_eq!(r.headers()["x-a"], "2", "reads see the phase's own edits");
    assert_eq!(r.parts.headers["x-a"], "1", "the head itself is untouched");
    heads.discard();
    assert_eq!(heads.request.headers()["x-a"], "1", "a failed phase leaves nothing behind");
    assert_eq!(heads.request.method(), Method::GET);

    let r = &mut heads.request;
    set_header(&mut r.edit().expect("editable").headers, 2, "x-a", b"9").expect("valid");
    heads.commit();
    assert_eq!(heads.request.parts.headers["x-a"], "9");
    assert_eq!(heads.request.parts.headers["content-length"], "3", "framing kept");
}

#[test]
fn edits_are_checked_when_made() {
    let mut h = HeaderMap::new();
    assert!(matches!(set_header(&mut h, 0, "bad name", b"x"), Err(EditError::Invalid(_))));
    assert!(matches!(set_header(&mut h, 0, "x", b"a\r\nb"), Err(EditError::Invalid(_))));
    assert!(matches!(set_header(&mut h, 0, "content-length", b"1"), Err(EditError::Reserved(_))));
    assert!(matches!(append_header(&mut h, 0, "Transfer-Encoding", b"chunked"), Err(EditError::Reserved(_))));
    assert!(matches!(remove_header(&mut h, "connection"), Err(EditError::Reserved(_))));
    assert!(matches!(set_header(&mut h, 0, "x", &vec![b'a'; MAX_PLUGIN_VALUE + 1]), Err(EditError::TooLarge(_))));
    for i in 0..MAX_PLUGIN_HEADERS {
        append_header(&mut h, 0, &format!("x-{i}"), b"v").expect("room");
    }
    assert!(matches!(append_header(&mut h, 0, "x-more", b"v"), Err(EditError::TooLarge(_))));
    set_header(&mut h, 0, "x-0", b"replaced").expect("replacing needs no room");
    assert!(h.is_empty() || h.len() == MAX_PLUGIN_HEADERS);
}

#[test]
fn read_only_heads_refuse_edits() {
    let mut r = request(&[]).snapshot();
    assert!(matches!(r.edit(), Err(EditError::ReadOnly)));
    let mut r = request(&[]);
    r.freeze();
    assert!(matches!(r.edit(), Err(EditError::ReadOnly)));
}

#[test]
fn set_headers_keeps_framing_and_skips_reserved() {
    let mut h = HeaderMap::new();
    h.insert("content-length", HeaderValue::from_static("5"));
    h.insert("x-old", HeaderValue::from_static("1"));
    let hdr = |n: &str, v: &[u8]| Header { name: n.into(), value: v.to_vec() };
    set_headers(&mut h, 2, vec![hdr("x-new", b"2"), hdr("content-length", b"999")]).expect("valid");
    assert_eq!(h["content-length"], "5");
    assert_eq!(h["x-new"], "2");
    assert!(!h.contains_key("x-old"));
    assert!(matches!(set_headers(&mut h, 2, vec![hdr("bad name", b"x")]), Err(EditError::Invalid(_))));
}

#[test]
fn chain_data_is_staged_per_phase_namespaced_and_bounded() {
    let (auth, other): (std::sync::Arc<str>, std::sync::Arc<str>) = ("auth".into(), "other".into());
    let mut heads =
        Heads { request: request(&[]), response: None, chain: ChainData::default(), outbound: Default::default() };
    assert!(heads.chain.publish(&auth, "consumer".into(), b"ann".to_vec()));
    assert_eq!(heads.chain.read("auth", "consumer"), Some(&b"ann"[..]), "its own phase sees it staged");
    heads.commit();
    // A failed phase's values are dropped; the committed ones stay.
    assert!(heads.chain.publish(&auth, "consumer".into(), b"mallory".to_vec()));
    heads.discard();
    assert_eq!(heads.chain.read("auth", "consumer"), Some(&b"ann"[..]));
    // Another plugin publishes in its own namespace only.
    assert!(heads.chain.publish(&other, "consumer".into(), b"eve".to_vec()));
    heads.commit();
    assert_eq!(heads.chain.read("auth", "consumer"), Some(&b"ann"[..]));
    assert_eq!(heads.chain.read("other", "consumer"), Some(&b"eve"[..]));
    // Limits: key length, key count, bytes; replacing a key is not a new one.
    assert!(!heads.chain.publish(&auth, String::new(), vec![]));
    assert!(!heads.chain.publish(&auth, "k".repeat(129), vec![]));
    for i in 1..32 {
        assert!(heads.chain.publish(&auth, format!("k{i}"), vec![]), "key {i}");
    }
    assert!(!heads.chain.publish(&auth, "one-too-many".into(), vec![]));
    assert!(heads.chain.publish(&auth, "consumer".into(), b"bob".to_vec()), "a replacement fits");
    assert!(!heads.chain.publish(&auth, "k1".into(), vec![0; 16 * 1024]));
    assert!(heads.chain.publish(&other, "k1".into(), vec![0; 8 * 1024]), "each plugin has its own budget");
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for text in
        ["127.0.0.1:40000", "0.0.0.0:0", "255.255.255.255:65535", "10.0.12.9:8", "[::1]:443", "[2001:db8::7]:80"]
    {
        let addr: SocketAddr = text.parse().expect("a socket address");
        assert_eq!(super::addr_text(&addr), addr.to_string(), "{text}");
        assert_eq!(super::addr_text(&addr), text);
    }
}

#[test]
fn response_headers_added_from_the_request_are_checked_and_staged() {
    let mut heads =
        Heads { request: request(&[]), response: None, chain: Default::default(), outbound: Default::default() };
    let r = &mut heads.request;
    add_response_header(r, 0, "x-quota", b"41").expect("valid");
    assert!(matches!(add_response_header(r, 0, "content-length", b"1"), Err(EditError::Reserved(_))));
    assert!(matches!(add_response_header(r, 0, "bad name", b"1"), Err(EditError::Invalid(_))));
    assert!(matches!(add_response_header(r, 0, "x-a", b"a\nb"), Err(EditError::Invalid(_))));
    assert!(r.parts.headers.is_empty() && r.edit.is_none(), "not a request edit");
    assert_eq!(r.response_headers.len(), 1);
    heads.discard();
    assert!(heads.request.response_headers.is_empty(), "a failed phase drops them");

    // At most MAX_RESPONSE_HEADERS_ADDED per plugin and request, counting
    // those its earlier phases added.
    let r = &mut heads.request;
    for _ in 0..MAX_RESPONSE_HEADERS_ADDED - 1 {
        add_response_header(r, 1, "x-many", b"1").expect("room");
    }
    assert!(matches!(add_response_header(r, 1, "x-many", b"1"), Err(EditError::TooLarge(_))));

    // Read-only heads (response phases, chunk calls) refuse.
    let mut sent = heads.request.snapshot();
    assert!(matches!(add_response_header(&mut sent, 0, "x-late", b"1"), Err(EditError::ReadOnly)));
}

#[test]
fn added_response_headers_land_on_the_head_the_chain_left() {
    let parts = http::Response::builder().header("x-up", "1").body(()).expect("response").into_parts().0;
    let mut resp = LentResponse::new(parts);
    resp.add_header(HeaderName::from_static("x-quota"), HeaderValue::from_static("41"));
    assert_eq!(resp.parts.headers["x-quota"], "41");
    assert_eq!(resp.parts.headers["x-up"], "1");
}
