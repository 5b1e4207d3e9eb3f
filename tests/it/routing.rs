//! Routing, forwarding headers and upstream errors.

use http::Method;
use weir_tests::{TestGateway, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_and_method() {
    let api = Upstream::start("api").await;
    let www = Upstream::start("www").await;
    let users = Upstream::start("users").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.api]
targets = ["{api}"]
[upstreams.www]
targets = ["{www}"]
[upstreams.users]
targets = ["{users}"]

[[routes]]
name = "user-by-id"
path = "/users/{{id}}"
methods = ["GET", "DELETE"]
upstream = "users"

[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/"
upstream = "api"

[[routes]]
name = "exact"
path = "/health"
upstream = "www"

[[routes]]
name = "www"
path_prefix = "/site"
upstream = "www"
"#,
            api = api.addr,
            www = www.addr,
            users = users.addr
        ),
        &[],
    )
    .await;

    let r = gw.get("/users/42").await;
    assert_eq!((r.status.as_u16(), r.header("x-upstream")), (200, Some("users")));
    assert_eq!(r.json()["uri"], "/users/42");

    let r = gw.request(Method::POST, "/users/42", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, DELETE"));

    let r = gw.request(Method::GET, "/anything?q=1", &[("host", "API.example.com:8080")], "").await;
    assert_eq!(r.header("x-upstream"), Some("api"));
    assert_eq!(r.json()["uri"], "/anything?q=1");

    assert_eq!(gw.get("/health").await.header("x-upstream"), Some("www"));
    assert_eq!(gw.get("/health/x").await.status, 404);
    assert_eq!(gw.get("/site/a/b").await.header("x-upstream"), Some("www"));
    assert_eq!(gw.get("/sitemap").await.status, 404, "prefix matches whole segments");

    let r = gw.get("/nothing-here").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["source"], "client");
    assert_eq!(r.json()["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_forwarding_headers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(
        &format!(
            "[upstreams.svc]\ntargets = [\"{}\", \"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"svc\"\n",
            a.addr, b.addr
        ),
        &[],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));

    let r = gw
        .request(
            Method::GET,
            "/fwd",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("x-request-id", "client-id-1"),
            ],
            "",
        )
        .await;
    assert_eq!(r.seen("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert!(r.seen("forwarded").is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http")));
    assert_eq!(r.seen("x-hop"), None, "headers named in Connection are hop-by-hop");
    assert_eq!(r.seen("connection"), None);
    assert_eq!(r.seen("x-request-id").as_deref(), Some("client-id-1"));
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));

    let r = gw.get("/gen").await;
    let id = r.header("x-request-id").expect("generated id").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(r.seen("x-request-id"), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_is_504() {
    let slow = Upstream::start("slow").await;
    // A port with nothing listening: bind, note the address, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.dead]
targets = ["{dead}"]
connect_timeout = "500ms"
[upstreams.slow]
targets = ["{slow}"]
timeout = "200ms"
[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "dead"
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"
"#,
            slow = slow.addr
        ),
        &[],
    )
    .await;
    let r = gw.get("/dead").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["source"], "upstream");

    let started = std::time::Instant::now();
    let r = gw.request(Method::GET, "/slow", &[("x-delay-ms", "2000")], "").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "timed out at the configured 200ms");
    assert_eq!(gw.request(Method::GET, "/slow", &[("x-delay-ms", "10")], "").await.status, 200);

    let metrics = gw.metrics().await;
    // A failed connect is tried once more by default (`retry.tries = 2`).
    assert!(metrics.contains(r#"weir_upstream_errors_total{upstream="dead",kind="connect"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"weir_upstream_errors_total{upstream="slow",kind="timeout"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_downstream() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &format!(
            "[plugins.greet]\nmodule = \"add_header.wasm\"\nconfig = {{ name = \"x-greeting\", value = \"h2\" }}\n\
             [upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"up\"\nchain = [\"greet\"]\n",
            up.addr
        ),
        &["add_header.wasm"],
    )
    .await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for i in 0..3 {
        let req = http::Request::get(format!("{}/h2/{i}", gw.url)).body(Full::default()).expect("request");
        let resp = client.request(req).await.expect("h2c request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(seen["uri"], format!("/h2/{i}"));
        assert_eq!(seen["headers"]["x-greeting"][0], "h2");
        // The upstream hop is HTTP/1.1 and gets a Host header from :authority.
        assert_eq!(seen["headers"]["host"][0].as_str(), gw.url.strip_prefix("http://"));
    }
}

/// A raw connection that sends the start of a request head one byte every
/// 50 ms; returns how long until the gateway closed it.
async fn dribble(addr: String) -> Option<std::time::Duration> {
    use tokio::io::AsyncWriteExt;
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\nX-Slow: ").await.ok()?;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if s.write_all(b"a").await.is_err() {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_the_header_timeout_while_others_are_served() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start_with_server(
        "header_read_timeout = \"1s\"",
        &format!("[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr),
    )
    .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();

    let slow: Vec<_> = (0..500).map(|_| tokio::spawn(dribble(addr.clone()))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Normal traffic meanwhile: every request answered, quickly.
    let mut worst = std::time::Duration::ZERO;
    for i in 0..200 {
        let t = std::time::Instant::now();
        let r = gw.get(&format!("/normal/{i}")).await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
    }
    let mut cut = Vec::new();
    for t in slow {
        cut.push(t.await.expect("task").expect("every slow connection is closed by the gateway"));
    }
    cut.sort();
    let (first, last) = (cut[0], cut[cut.len() - 1]);
    println!("slow clients: 500 cut between {first:?} and {last:?}; slowest of 200 normal requests {worst:?}");
    assert!(first >= std::time::Duration::from_millis(900), "not before the 1 s timeout: {first:?}");
    assert!(last <= std::time::Duration::from_secs(5), "all within the timeout plus slack: {last:?}");
    assert!(worst < std::time::Duration::from_secs(1), "normal requests stayed fast: {worst:?}");
}
