//! TLS on the listener (certificates by SNI, ALPN, versions, reload of
//! certificate files, client certificates) and to upstreams (CA, SNI,
//! client certificates, HTTP/2 by ALPN), with certificates made at test
//! time, rustls clients of the test's own and `curl`.

use std::time::Duration;

use weir_tests::tls::{Pki, TlsClient};
use weir_tests::{TestGateway, Upstream, wait_for};

/// `[server.tls]` with the given extra keys, serving `certs` (stems).
fn tls_section(certs: &[&str], extra: &str) -> String {
    let list: Vec<String> = certs.iter().map(|c| format!("{{ cert = \"{c}.pem\", key = \"{c}-key.pem\" }}")).collect();
    format!("[server.tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{}]\n{extra}", list.join(", "))
}

/// Wait for a reload error that contains `needle`.
async fn reload_error(gw: &TestGateway, needle: &str) -> String {
    let found = wait_for(Duration::from_secs(10), || async {
        let e = gw.status().await["last_reload_error"].as_str().map(str::to_owned)?;
        e.contains(needle).then_some(e)
    })
    .await;
    match found {
        Some(e) => e,
        None => panic!("no reload error with {needle:?}: {}", gw.status().await),
    }
}

/// A route to `upstream` through the probe, which reports the TLS
/// connection upstream (`x-probe-tls`, `x-probe-client`).
fn probe_route(upstream: &str) -> String {
    format!(
        r#"
[plugins.probe]
module = "probe.wasm"
config = {{ tls = true }}

[upstreams.svc]
targets = ["{upstream}"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
chain = ["probe"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_alpn_versions_and_live_reload() {
    let up = Upstream::start("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "ca");
    let a = pki.issue("a", "a.test", &["a.test"], false);
    let b = pki.issue("b", "b.test", &["*.b.test"], false);
    TestGateway::prepare(
        dir.path(),
        &tls_section(&["a", "b"], ""),
        &probe_route(&up.addr.to_string()),
        &["probe.wasm"],
    );
    let gw = TestGateway::start_in(dir).await;
    let addr = gw.tls.expect("TLS listener");
    let client = TlsClient::new(&pki, None, &["h2", "http/1.1"], false);

    // SNI picks the certificate; HTTP/2 by ALPN; the chain sees the TLS facts.
    let (shake, r) = client.get(addr, "a.test", "/x").await.expect("a.test");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((shake.version.as_str(), shake.alpn.as_deref()), ("TLSv1_3", Some("h2")));
    assert_eq!(shake.leaf, a.der, "a.test gets a's certificate");
    assert_eq!(r.seen("x-probe-tls").as_deref(), Some("TLSv1.3 h2 a.test"));
    assert_eq!(r.seen("x-probe-client").as_deref(), Some("none"));
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("https"));
    assert!(r.seen("forwarded").is_some_and(|f| f.contains("proto=https")), "{}", r.text());
    let (shake, _) = client.get(addr, "api.b.test", "/x").await.expect("api.b.test");
    assert_eq!(shake.leaf, b.der, "the wildcard *.b.test matches api.b.test");
    // No certificate for this name: the first is presented, and a client
    // that checks names refuses it.
    let err = client.get(addr, "c.test", "/x").await.expect_err("no certificate names c.test");
    assert!(err.contains("not valid for") || err.contains("NotValidForName"), "{err}");

    // TLS 1.2 and HTTP/1.1 when that is all the client offers.
    let old = TlsClient::new(&pki, None, &["http/1.1"], true);
    let (shake, r) = old.get(addr, "a.test", "/y").await.expect("TLS 1.2");
    assert_eq!((shake.version.as_str(), shake.alpn.as_deref()), ("TLSv1_2", Some("http/1.1")));
    assert_eq!(r.seen("x-probe-tls").as_deref(), Some("TLSv1.2 http/1.1 a.test"));
    // The cleartext listener is unchanged.
    let r = gw.get("/plain").await;
    assert_eq!(r.seen("x-probe-tls").as_deref(), Some("cleartext"));
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));

    // curl, over HTTP/2 and HTTP/1.1, verifying against the test CA.
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(pki.ca_path())
            .args(["--resolve", &format!("a.test:{}:127.0.0.1", addr.port()), "-o", "/dev/null"])
            .args(["-w", "%{http_version} %{http_code}", &format!("https://a.test:{}/curl", addr.port())])
            .output()
            .await
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want} 200"), "{out:?}");
    }

    // Renewed certificate files are served after the watcher's reload.
    let a2 = pki.issue("a", "a.test", &["a.test"], false);
    assert_ne!(a2.der, a.der);
    gw.wait_generation(2).await;
    let (shake, _) = client.get(addr, "a.test", "/x").await.expect("a.test after renewal");
    assert_eq!(shake.leaf, a2.der, "the renewed certificate is served");
    let status = gw.status().await;
    let names: Vec<&str> = status["tls"]["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter_map(|c| c["names"][0].as_str())
        .collect();
    assert_eq!(names, ["a.test", "*.b.test"], "{status}");

    // A broken certificate file is refused, naming it; the last good one stays.
    weir_tests::write_atomic(&a2.cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let err = reload_error(&gw, "not a valid PEM certificate").await;
    assert!(err.contains("gateway.toml:") && err.contains("[server.tls]") && err.contains("a.pem"), "{err}");
    let (shake, _) = client.get(addr, "a.test", "/x").await.expect("a.test after a broken file");
    assert_eq!(shake.leaf, a2.der, "the last good certificate keeps serving");
    // A key that belongs to another certificate is refused too (the key is
    // replaced first, so no good pair is ever on disk).
    let a3 = pki.issue("a3", "a.test", &["a.test"], false);
    weir_tests::write_atomic(&a2.key, &std::fs::read(&b.key).expect("b's key"));
    weir_tests::write_atomic(&a2.cert, &std::fs::read(&a3.cert).expect("a3"));
    let err = reload_error(&gw, "does not belong").await;
    assert!(err.contains("a-key.pem") && err.contains("a.pem"), "{err}");
    let (shake, _) = client.get(addr, "a.test", "/x").await.expect("a.test after a wrong key");
    assert_eq!(shake.leaf, a2.der);

    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_tls_handshakes_total{result="ok",version="TLSv1.3",alpn="h2"}"#), "{metrics}");
    assert!(metrics.contains(r#"weir_tls_handshakes_total{result="failed",version="",alpn=""}"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_their_subject_reaches_plugins() {
    let up = Upstream::start("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "ca");
    pki.issue("gw", "gw.test", &["gw.test"], false);
    let clients = Pki::new(dir.path(), "clients");
    let alice = clients.issue("alice", "alice", &[], true);
    let rogue_ca = Pki::new(dir.path(), "rogue");
    let mallory = rogue_ca.issue("mallory", "alice", &[], true);
    let server = tls_section(&["gw"], "client_ca = \"clients-ca.pem\"\nforward_client_cert = true");
    TestGateway::prepare(dir.path(), &server, &probe_route(&up.addr.to_string()), &["probe.wasm"]);
    let gw = TestGateway::start_in(dir).await;
    let addr = gw.tls.expect("TLS listener");

    // A verified client: its subject reaches the chain and the upstream.
    let (_, r) = TlsClient::new(&pki, Some(&alice), &["h2"], false).get(addr, "gw.test", "/me").await.expect("alice");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-probe-client").as_deref(), Some("CN=alice, O=Weir Tests"));
    let xfcc = r.seen("x-forwarded-client-cert").expect("x-forwarded-client-cert");
    assert!(xfcc.starts_with("Hash=") && xfcc.ends_with(";Subject=\"CN=alice, O=Weir Tests\""), "{xfcc}");

    // No certificate, or one from another CA: no request gets through.
    for (who, cert) in [("no certificate", None), ("a certificate from another CA", Some(&mallory))] {
        let res = TlsClient::new(&pki, cert, &["http/1.1"], false).get(addr, "gw.test", "/me").await;
        assert!(res.is_err(), "{who} must be refused: {res:?}");
    }
    // curl too, without and with the client certificate.
    let curl = |cert: bool| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--cacert"]).arg(pki.ca_path());
        cmd.args(["--resolve", &format!("gw.test:{}:127.0.0.1", addr.port())]);
        if cert {
            cmd.arg("--cert").arg(&alice.cert).arg("--key").arg(&alice.key);
        }
        cmd.args(["-H", "x-forwarded-client-cert: Subject=\"CN=admin\""]);
        cmd.arg(format!("https://gw.test:{}/curl", addr.port()));
        cmd
    };
    let refused = curl(false).output().await.expect("curl");
    assert!(!refused.status.success(), "curl without a certificate: {refused:?}");
    let ok = curl(true).output().await.expect("curl");
    assert!(ok.status.success(), "{ok:?}");
    let doc: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("echo");
    let xfcc = doc["headers"]["x-forwarded-client-cert"].as_array().expect("one value");
    assert_eq!(xfcc.len(), 1, "the client's own x-forwarded-client-cert is replaced: {doc}");
    assert!(xfcc[0].as_str().is_some_and(|v| v.contains("CN=alice")), "{doc}");
    assert_eq!(up.hits(), 2, "refused handshakes never reach the upstream");

    // `client_auth = "optional"`: no certificate is let through, marked.
    let server = tls_section(&["gw"], "client_ca = \"clients-ca.pem\"\nclient_auth = \"optional\"");
    gw.write_config_with_server(&server, &probe_route(&up.addr.to_string()));
    gw.wait_generation(2).await;
    let (_, r) = TlsClient::new(&pki, None, &["h2"], false).get(addr, "gw.test", "/anon").await.expect("anonymous");
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-probe-client").as_deref(), Some("none"));
    assert_eq!(r.seen("x-forwarded-client-cert"), None, "forward_client_cert is off");
    let res = TlsClient::new(&pki, Some(&mallory), &["h2"], false).get(addr, "gw.test", "/x").await;
    assert!(res.is_err(), "a presented certificate must still be valid: {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_tls_with_ca_sni_client_certificates_and_h2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "ca");
    let api = pki.issue("api", "api.internal", &["api.internal"], false);
    let clients = Pki::new(dir.path(), "clients");
    clients.issue("gateway", "weir-gateway", &[], true);
    // Asks for client certificates from `clients`.
    let up = Upstream::start_tls("secure", pki.server_config(&api, Some(&clients))).await;
    let body = |protocol: &str, ca: &str, server_name: &str| {
        format!(
            r#"
[upstreams.secure]
targets = ["{}"]
protocol = "{protocol}"
tls = {{ ca = "{ca}", server_name = "{server_name}", cert = "gateway.pem", key = "gateway-key.pem" }}
retry = {{ tries = 1 }}

[[routes]]
name = "all"
path_prefix = "/"
upstream = "secure"
"#,
            up.addr
        )
    };
    TestGateway::prepare(dir.path(), "", &body("auto", "ca-ca.pem", "api.internal"), &[]);
    let gw = TestGateway::start_in(dir).await;

    // `auto`: HTTP/2 by ALPN, SNI from server_name, the gateway's client
    // certificate presented and verified by the upstream.
    let r = gw.get("/v1/items?x=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
    assert_eq!(doc["tls"]["sni"], "api.internal");
    assert_eq!(doc["tls"]["alpn"], "h2");
    assert_eq!(doc["tls"]["client"], "CN=weir-gateway, O=Weir Tests");
    assert!(doc["uri"].as_str().is_some_and(|u| u.starts_with("https://") && u.ends_with("/v1/items?x=1")), "{doc}");
    assert_eq!(doc["headers"]["x-forwarded-host"][0], gw.url.trim_start_matches("http://"));

    // `h1`: HTTP/1.1 over TLS.
    gw.write_config(&body("h1", "ca-ca.pem", "api.internal"));
    gw.wait_generation(2).await;
    let doc = gw.get("/v1").await.json();
    assert_eq!((doc["version"].as_str(), doc["tls"]["alpn"].as_str()), (Some("HTTP/1.1"), Some("http/1.1")));

    // A CA that did not sign the upstream's certificate, or a name it is
    // not for: 502, nothing sent.
    let hits = up.hits();
    for (ca, name) in [("clients-ca.pem", "api.internal"), ("ca-ca.pem", "other.internal")] {
        gw.write_config(&body("auto", ca, name));
        let generation = gw.status().await["generation"].as_u64().expect("generation") + 1;
        gw.wait_generation(generation).await;
        let r = gw.get("/v1").await;
        assert_eq!(r.status, 502, "{ca} {name}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("certificate")), "{}", r.text());
    }
    assert_eq!(up.hits(), hits);

    // A bad CA file is a load error with the line.
    std::fs::write(gw.dir.path().join("bad-ca.pem"), "nothing here").expect("write");
    gw.write_config(&body("auto", "bad-ca.pem", "api.internal"));
    let err = reload_error(&gw, "bad-ca.pem").await;
    assert!(
        err.contains("gateway.toml:") && err.contains("upstream `secure`: tls:") && err.contains("bad-ca.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_both_ways_with_h2load() {
    let up = Upstream::start("h2c").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.h2c]
targets = ["{}"]
protocol = "h2"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "h2c"
"#,
            up.addr
        ),
        &[],
    )
    .await;
    // HTTP/1.1 in, HTTP/2 (prior knowledge) to the upstream.
    let doc = gw.get("/a").await.json();
    assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
    assert_eq!(doc["headers"].get("host"), None, "the authority travels in :authority");

    // h2load: HTTP/2 in (h2c prior knowledge), 10 connections × 10 streams.
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10", &format!("{}/load", gw.url)])
        .output()
        .await
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert!(up.hits() >= 2001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_tls_and_a_silent_client_is_cut() {
    let up = Upstream::start("svc").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "ca");
    pki.issue("gw", "gw.test", &["gw.test"], false);
    let body = format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n",
        up.addr
    );
    TestGateway::prepare(
        dir.path(),
        &format!("header_read_timeout = \"1s\"\n{}", tls_section(&["gw"], "")),
        &body,
        &[],
    );
    let gw = TestGateway::start_in(dir).await;
    let addr = gw.tls.expect("TLS listener");

    let out = tokio::process::Command::new("h2load")
        .args(["-n", "1000", "-c", "4", "-m", "10", &format!("https://127.0.0.1:{}/load", addr.port())])
        .output()
        .await
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(text.contains("1000 succeeded, 0 failed, 0 errored"), "{text}");

    // A client that completes the handshake and then says nothing is cut at
    // the header read timeout, like on the cleartext listener.
    let client = TlsClient::new(&pki, None, &["http/1.1"], false);
    let (_, mut tls) = client.connect(addr, "gw.test").await.expect("handshake");
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut tls, &mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the gateway must close the silent connection: {n:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "closed after {:?}", t.elapsed());
}
