//! Fleet mode (issue 21, part 1): two `weir run` processes share one
//! configuration kept in a real etcd. A push reaches both; a conflicting
//! push is refused; a bad document is rejected by both while they serve
//! on; etcd down for 10 s under load fails no request and the watches
//! resume; a node restarted while etcd is down starts from its last good
//! configuration.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use weir_tests::{Client, Etcd, Load, Upstream, fixture, free_port, wait_for, weir_binary};

/// The shared document: one route through `add_header` setting
/// `x-version: VERSION`, plus `extra` (more TOML).
fn document(upstream: &str, version: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nplugins_dir = \"plugins\"\n\n\
         [upstreams.up]\ntargets = [\"{upstream}\"]\n\n\
         [plugins.version]\nmodule = \"add_header.wasm\"\nconfig = {{ name = \"x-version\", value = \"{version}\" }}\n\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"up\"\nchain = [\"version\"]\n{extra}"
    )
}

/// A folder with `plugins/add_header.wasm` (for `weir config push` to check
/// the document, and for the nodes).
fn folder() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("plugins")).expect("mkdir");
    std::fs::copy(fixture("add_header.wasm"), tmp.path().join("plugins/add_header.wasm")).expect("copy");
    tmp
}

fn weir(args: &[&str]) -> Output {
    Command::new(weir_binary()).args(args).output().expect("run weir")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `weir config push FILE LOCATION`, which must succeed.
fn push(file: &Path, location: &str) {
    let out = weir(&["config", "push", &file.to_string_lossy(), location]);
    assert!(out.status.success(), "push refused: {}", text(&out));
}

/// A gateway node: `weir run` on the etcd location with its own ports,
/// state folder and plugins folder.
struct Node {
    child: Child,
    port: u16,
    admin: u16,
    state: tempfile::TempDir,
}

impl Node {
    fn start(location: &str, plugins: &Path) -> Self {
        let (port, admin) = (free_port(), free_port());
        let state = tempfile::tempdir().expect("tempdir");
        let mut node = Self { child: Self::spawn(location, plugins, port, admin, state.path()), port, admin, state };
        node.wait_up();
        node
    }

    fn spawn(location: &str, plugins: &Path, port: u16, admin: u16, state: &Path) -> Child {
        Command::new(weir_binary())
            .args(["run", "--config", location])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--plugins-dir")
            .arg(plugins)
            .arg("--state-dir")
            .arg(state.join("state"))
            .current_dir(state)
            .env("XDG_STATE_HOME", state.join("xdg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weir")
    }

    /// Kill it and start it again with the same ports and state.
    fn restart(&mut self, location: &str, plugins: &Path) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(location, plugins, self.port, self.admin, self.state.path());
        self.wait_up();
    }

    fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("weir run exited: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not come up");
    }

    async fn status(&self, client: &Client) -> serde_json::Value {
        client.get(&format!("http://127.0.0.1:{}/admin/status", self.admin)).await.expect("admin").json()
    }

    /// `x-version` the upstream saw for `GET path` (None: not 200).
    async fn version(&self, client: &Client, path: &str) -> Option<String> {
        let r = client.get(&format!("http://127.0.0.1:{}{path}", self.port)).await.ok()?;
        (r.status == 200).then(|| r.seen("x-version")).flatten()
    }

    /// Wait until `GET path` is served with `x-version: want`.
    async fn serves(&self, client: &Client, path: &str, want: &str) -> Duration {
        let t0 = Instant::now();
        wait_for(Duration::from_secs(15), || async {
            (self.version(client, path).await.as_deref() == Some(want)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {} does not serve {path} with x-version {want}", self.port));
        t0.elapsed()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `text` to `key` directly, as another tool (etcdctl, a script)
/// would: etcd's JSON gateway, no checks.
async fn put_raw(client: &Client, etcd: &Etcd, key: &str, text: &str) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = serde_json::json!({ "key": b64(key), "value": b64(text) }).to_string();
    let r = client
        .request(
            http::Method::POST,
            &format!("http://{}/v3/kv/put", etcd.addr),
            &[("content-type", "application/json")],
            &body,
        )
        .await
        .expect("etcd put");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_both_nodes_and_conflicting_and_bad_pushes_are_refused() {
    let etcd = Etcd::start();
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/test");
    let work = folder();
    let file = work.path().join("gateway.toml");
    let client = Client::new();

    // Nothing pushed yet: pull says so.
    let out = weir(&["config", "pull", &location]);
    assert!(!out.status.success() && text(&out).contains("no configuration"), "{}", text(&out));

    std::fs::write(&file, document(&up.addr.to_string(), "v1", "")).expect("write");
    push(&file, &location);
    let plugins = work.path().join("plugins");
    let (a, b) = (Node::start(&location, &plugins), Node::start(&location, &plugins));
    for node in [&a, &b] {
        node.serves(&client, "/a", "v1").await;
        let status = node.status(&client).await;
        assert_eq!(status["config_source"]["kind"], "etcd", "{status}");
        assert_eq!(status["config_source"]["key"], "/weir/test/config");
        assert_eq!(status["config"], format!("{location}/config"));
    }

    // Two operators pull the same revision.
    let (mine, theirs) = (work.path().join("mine.toml"), work.path().join("theirs.toml"));
    for f in [&mine, &theirs] {
        let out = weir(&["config", "pull", &location, "-o", &f.to_string_lossy()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let pulled = std::fs::read_to_string(&mine).expect("pulled");
    assert!(pulled.trim_end().lines().last().is_some_and(|l| l.starts_with("# weir-etcd-revision = ")), "{pulled}");

    // One adds a route: both nodes serve it.
    let route_b = "\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"up\"\nchain = [\"version\"]\n";
    std::fs::write(
        &mine,
        pulled.replace("\"v1\"", "\"v2\"").replace("# weir-etcd", &format!("{route_b}\n# weir-etcd")),
    )
    .expect("edit");
    push(&mine, &location);
    let took = [a.serves(&client, "/b", "v2").await, b.serves(&client, "/b", "v2").await];
    println!("a pushed route served by both nodes after {:?} and {:?}", took[0], took[1]);

    // Both list each other, serving the stored revision.
    let fleet = |node: &Node| {
        let url = format!("http://127.0.0.1:{}/admin/fleet", node.admin);
        let client = client.clone();
        async move { client.get(&url).await.expect("fleet").json() }
    };
    let listed = wait_for(Duration::from_secs(10), || async {
        let doc = fleet(&b).await;
        let nodes = doc["nodes"].as_array()?;
        (nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "current" && n["revision"] == doc["revision"]))
            .then_some(doc)
    })
    .await
    .unwrap_or_else(|| panic!("both nodes current in /admin/fleet"));
    let ports: Vec<String> =
        listed["nodes"].as_array().expect("nodes").iter().map(|n| n["listen"].to_string()).collect();
    for node in [&a, &b] {
        assert!(ports.iter().any(|p| p.contains(&format!(":{}", node.port))), "{listed}");
    }

    // The other pushes their edit of the old revision: refused, and the
    // stored configuration is untouched.
    let theirs_text = std::fs::read_to_string(&theirs).expect("read").replace("\"v1\"", "\"v3\"");
    std::fs::write(&theirs, theirs_text).expect("edit");
    let out = weir(&["config", "push", &theirs.to_string_lossy(), &location]);
    assert!(!out.status.success(), "a conflicting push was accepted");
    assert!(text(&out).contains("refused: the configuration in etcd is at revision"), "{}", text(&out));
    // A file never pulled may not overwrite one either.
    let fresh = work.path().join("fresh.toml");
    std::fs::write(&fresh, document(&up.addr.to_string(), "v9", "")).expect("write");
    let out = weir(&["config", "push", &fresh.to_string_lossy(), &location]);
    assert!(!out.status.success() && text(&out).contains("pull it first"), "{}", text(&out));
    // A push that does not load here is refused before etcd sees it.
    std::fs::write(&fresh, "[server]\nlisten = \"127.0.0.1:1\"\n[[routes]]\nname = \"x\"\nupstream = \"nope\"\n")
        .expect("write");
    let out = weir(&["config", "push", &fresh.to_string_lossy(), &location, "--force"]);
    assert!(!out.status.success() && text(&out).contains("unknown upstream `nope`"), "{}", text(&out));
    for node in [&a, &b] {
        assert_eq!(node.version(&client, "/a").await.as_deref(), Some("v2"));
    }

    // A bad document written behind weir's back: each node rejects it,
    // names the key and line, and serves on.
    let bad = document(&up.addr.to_string(), "v4", "\n[[routes]]\nname = \"c\"\nupstream = \"missing\"\n");
    put_raw(&client, &etcd, "/weir/test/config", &bad).await;
    for node in [&a, &b] {
        let error = wait_for(Duration::from_secs(10), || async {
            node.status(&client).await["last_reload_error"].as_str().map(str::to_owned)
        })
        .await
        .expect("the bad document was rejected");
        assert!(
            error.contains(&format!("{location}/config:")) && error.contains("unknown upstream `missing`"),
            "{error}"
        );
        assert_eq!(node.version(&client, "/a").await.as_deref(), Some("v2"), "the last good configuration serves");
    }
    // The member list shows both failing on the new revision.
    wait_for(Duration::from_secs(10), || async {
        let doc = fleet(&a).await;
        let nodes = doc["nodes"].as_array()?;
        (nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "failing")).then_some(())
    })
    .await
    .expect("both nodes failing in /admin/fleet");
    // A node that stops leaves the list within the lease's TTL (10 s).
    drop(a);
    let left =
        wait_for(Duration::from_secs(20), || async { (fleet(&b).await["nodes"].as_array()?.len() == 1).then_some(()) })
            .await;
    assert!(left.is_some(), "the stopped node left the member list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_ten_seconds_under_load_fails_no_request_and_the_watches_resume() {
    let mut etcd = Etcd::start();
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/outage");
    let work = folder();
    let file = work.path().join("gateway.toml");
    std::fs::write(&file, document(&up.addr.to_string(), "v1", "")).expect("write");
    push(&file, &location);
    let plugins = work.path().join("plugins");
    let (a, b) = (Node::start(&location, &plugins), Node::start(&location, &plugins));
    let client = Client::new();
    for node in [&a, &b] {
        node.serves(&client, "/a", "v1").await;
    }

    let loads = [
        Load::start(format!("http://127.0.0.1:{}/a", a.port), 2),
        Load::start(format!("http://127.0.0.1:{}/a", b.port), 2),
    ];
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for node in [&a, &b] {
        let status = node.status(&client).await;
        assert_eq!(status["config_source"]["connected"], false, "{status}");
        assert!(status["config_source"]["last_error"].is_string(), "{status}");
    }
    etcd.resume();
    let pulled = work.path().join("pulled.toml");
    let out = wait_for(Duration::from_secs(10), || async {
        let out = weir(&["config", "pull", &location, "-o", &pulled.to_string_lossy()]);
        out.status.success().then_some(out)
    })
    .await;
    assert!(out.is_some(), "etcd answers again");
    let edited = std::fs::read_to_string(&pulled).expect("read").replace("\"v1\"", "\"v2\"");
    std::fs::write(&pulled, edited).expect("write");
    push(&pulled, &location);
    for node in [&a, &b] {
        node.serves(&client, "/a", "v2").await;
        let status = node.status(&client).await;
        assert_eq!(status["config_source"]["connected"], true, "{status}");
        assert!(status["config_source"]["reconnects"].as_u64() >= Some(1), "{status}");
    }
    let mut served = 0;
    for load in loads {
        let (ok, failed) = load.stop().await;
        assert_eq!(failed, 0, "requests failed while etcd was away");
        served += ok;
    }
    println!("etcd down 10 s: {served} requests served by the two nodes, none failed");
    assert!(served > 100, "the load ran: {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_etcd_is_down_starts_from_its_last_good_configuration() {
    let mut etcd = Etcd::start();
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/restart");
    let work = folder();
    let file = work.path().join("gateway.toml");
    std::fs::write(&file, document(&up.addr.to_string(), "v1", "")).expect("write");
    push(&file, &location);
    let plugins = work.path().join("plugins");
    let mut node = Node::start(&location, &plugins);
    let client = Client::new();
    node.serves(&client, "/a", "v1").await;
    // Saved as its last good state once it published it.
    wait_for(Duration::from_secs(10), || async {
        node.status(&client).await["last_good"]["saved_generation"].as_u64().map(|_| ())
    })
    .await
    .expect("the last good state was saved");

    etcd.stop();
    node.restart(&location, &plugins);
    node.serves(&client, "/a", "v1").await;
    let status = node.status(&client).await;
    assert_eq!(status["serving_last_good"], true, "{status}");
    assert!(status["last_reload_error"].as_str().is_some_and(|e| e.contains("etcd")), "{status}");

    // etcd back: the node reads the configuration and serves it as usual.
    etcd.resume();
    wait_for(Duration::from_secs(15), || async {
        (node.status(&client).await["serving_last_good"] == false).then_some(())
    })
    .await
    .expect("back on the configuration in etcd");
    node.serves(&client, "/a", "v1").await;
}

/// `weir register LOCATION --addr ADDR --ttl TTL`, running until dropped.
struct Registrar(Child);

impl Registrar {
    /// Kill it (as a crash would: no deregistration).
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.kill();
    }
}

fn register(location: &str, addr: &str, ttl: u32) -> Registrar {
    let child = Command::new(weir_binary())
        .args(["register", location, "--addr", addr, "--ttl", &ttl.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir register");
    Registrar(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_take_traffic_and_leave_within_their_lease_with_no_failed_request() {
    let etcd = Etcd::start();
    let (one, two) = (Upstream::start("one").await, Upstream::start("two").await);
    let location = etcd.location("weir/registry");
    let work = folder();
    let file = work.path().join("gateway.toml");
    let doc = "[server]\nlisten = \"127.0.0.1:8080\"\nplugins_dir = \"plugins\"\n\n\
               [upstreams.orders]\ndiscovery = { etcd = \"/services/orders\" }\n\n\
               [[routes]]\nname = \"orders\"\npath_prefix = \"/\"\nupstream = \"orders\"\n";
    std::fs::write(&file, doc).expect("write");
    // A key prefix on the fleet's etcd needs fleet mode: `weir check` on the
    // file alone says so.
    let out = weir(&["config", "push", &file.to_string_lossy(), &location]);
    assert!(!out.status.success() && text(&out).contains("not in fleet mode"), "{}", text(&out));
    std::fs::write(&file, doc.replace("\"/services/orders\"", &format!("\"{}\"", etcd.location("services/orders"))))
        .expect("write");
    push(&file, &location);
    let node = Node::start(&location, &work.path().join("plugins"));
    let client = Client::new();
    let services = etcd.location("services/orders");

    // Nothing registered: no target.
    let r = client.get(&format!("http://127.0.0.1:{}/x", node.port)).await.expect("proxy");
    assert_eq!(r.status, 503, "{}", r.text());

    // Two instances register; both take traffic.
    let mut first = register(&services, &one.addr.to_string(), 3);
    let _second = register(&services, &two.addr.to_string(), 3);
    let targets = || async {
        let doc = client.get(&format!("http://127.0.0.1:{}/admin/upstreams", node.admin)).await.ok()?.json();
        doc["upstreams"][0]["targets"].as_array().map(Vec::len)
    };
    wait_for(Duration::from_secs(15), || async { (targets().await == Some(2)).then_some(()) })
        .await
        .expect("both instances registered");
    let load = Load::start(format!("http://127.0.0.1:{}/x", node.port), 2);
    let both = wait_for(Duration::from_secs(15), || async {
        let share = load.share();
        (share.get("one").copied().unwrap_or(0) > 20 && share.get("two").copied().unwrap_or(0) > 20).then_some(share)
    })
    .await;
    assert!(both.is_some(), "both registered instances took traffic");

    // The first one's registrar dies (the instance stays up): it leaves
    // within its 3 s lease, and no request fails on the way.
    first.kill();
    let t0 = Instant::now();
    let _ = load.share();
    let gone = wait_for(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let share = load.share();
        (share.get("one").copied().unwrap_or(0) == 0 && share.get("two").copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the instance without a registrar left");
    println!("an instance left the upstream {:?} after its registrar died (lease TTL 3 s)", t0.elapsed());
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "{ok} served");
    assert_eq!(targets().await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_with_authentication_takes_a_user_and_a_password_from_the_environment() {
    let etcd = Etcd::start();
    let client = Client::new();
    // etcd's own auth on, through its JSON gateway (as etcdctl would).
    for (path, body) in [
        ("/v3/auth/role/add", serde_json::json!({ "name": "root" })),
        ("/v3/auth/user/add", serde_json::json!({ "name": "root", "password": "s3cret" })),
        ("/v3/auth/user/grant", serde_json::json!({ "user": "root", "role": "root" })),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        let url = format!("http://{}{path}", etcd.addr);
        let r = client
            .request(http::Method::POST, &url, &[("content-type", "application/json")], &body.to_string())
            .await
            .expect("etcd");
        assert!(r.status == 200 || path == "/v3/auth/role/add", "{path}: {}", r.text());
    }
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/auth");
    let work = folder();
    let file = work.path().join("gateway.toml");
    std::fs::write(&file, document(&up.addr.to_string(), "v1", "")).expect("write");
    let file = file.to_string_lossy().into_owned();

    // Without credentials: refused by etcd, and said so.
    let out = weir(&["config", "push", &file, &location]);
    assert!(!out.status.success(), "{}", text(&out));
    // With them: pushed and pulled.
    let with = |args: &[&str]| {
        Command::new(weir_binary())
            .args(args)
            .args(["--etcd-username", "root", "--etcd-password-env", "WEIR_TEST_ETCD_PASSWORD"])
            .env("WEIR_TEST_ETCD_PASSWORD", "s3cret")
            .output()
            .expect("run weir")
    };
    let out = with(&["config", "push", &file, &location]);
    assert!(out.status.success(), "{}", text(&out));
    let out = with(&["config", "pull", &location]);
    assert!(out.status.success() && text(&out).contains("x-version"), "{}", text(&out));
    // A wrong password is refused.
    let out = Command::new(weir_binary())
        .args([
            "config",
            "pull",
            &location,
            "--etcd-username",
            "root",
            "--etcd-password-env",
            "WEIR_TEST_ETCD_PASSWORD",
        ])
        .env("WEIR_TEST_ETCD_PASSWORD", "wrong")
        .output()
        .expect("run weir");
    assert!(!out.status.success(), "{}", text(&out));
    println!("without credentials: {}", text(&weir(&["config", "pull", &location])).trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_over_tls_is_reached_with_the_ca_given() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = weir_tests::tls::Pki::new(pki_dir.path(), "etcd");
    let server = pki.issue("etcd", "127.0.0.1", &["127.0.0.1", "localhost"], false);
    let etcd = Etcd::start_tls(&server.cert, &server.key);
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/tls");
    let work = folder();
    let file = work.path().join("gateway.toml");
    std::fs::write(&file, document(&up.addr.to_string(), "v1", "")).expect("write");
    let (file, ca) = (file.to_string_lossy().into_owned(), pki.ca_path().to_string_lossy().into_owned());

    // With the CA: pushed (retried while etcd finishes starting) and pulled.
    let pushed = wait_for(Duration::from_secs(15), || async {
        let out = weir(&["config", "push", &file, &location, "--etcd-ca", &ca]);
        out.status.success().then_some(())
    })
    .await;
    assert!(pushed.is_some(), "{}", text(&weir(&["config", "push", &file, &location, "--etcd-ca", &ca])));
    let out = weir(&["config", "pull", &location, "--etcd-ca", &ca]);
    assert!(out.status.success() && text(&out).contains("x-version"), "{}", text(&out));
    // Plain HTTP to it, or TLS verified against another CA: refused.
    assert!(!weir(&["config", "pull", &location]).status.success());
    let other = weir_tests::tls::Pki::new(pki_dir.path(), "other");
    let out = weir(&["config", "pull", &location, "--etcd-ca", &other.ca_path().to_string_lossy()]);
    assert!(!out.status.success(), "{}", text(&out));
}
