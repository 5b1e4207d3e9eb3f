//! A real registry for the tests: the CNCF distribution registry from
//! Debian's `docker-registry` package (`/usr/bin/docker-registry`), on a
//! free loopback port with its storage in a temporary folder, killed on
//! drop. Plus a raw HTTP helper to put manifests by hand, the way other
//! tools (`wkg`, `oras`) would.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_oci::{Client, ClientOptions, Credentials, Reference, sha256_digest};

/// Where the registry binary is: `$WEIR_DOCKER_REGISTRY`, else
/// `docker-registry` on `PATH`, else `/usr/bin/docker-registry`.
fn registry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_DOCKER_REGISTRY") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("docker-registry"))
        .find(|p| p.is_file());
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
    assert!(
        path.is_file(),
        "the OCI tests need the CNCF distribution registry: install Debian's `docker-registry` package \
         (`apt-get install -y docker-registry`, binary /usr/bin/docker-registry) or set WEIR_DOCKER_REGISTRY"
    );
    path
}

/// A running registry.
pub(crate) struct Registry {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Anonymous read and write.
    pub(crate) fn start() -> Self {
        Self::start_with(None)
    }

    /// Basic auth (htpasswd, bcrypt) with one user.
    pub(crate) fn start_with_user(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password)))
    }

    fn start_with(user: Option<(&str, &str)>) -> Self {
        let binary = registry_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut auth = String::new();
        if let Some((user, password)) = user {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
            auth = format!("auth:\n  htpasswd:\n    realm: weir-test\n    path: {}\n", htpasswd.display());
        }
        // A free port can be taken between asking and binding: try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
                    dir.path().join("data").display()
                ),
            )
            .expect("write config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().expect("wait").is_some() {
                    break;
                }
                if raw(addr, "GET", "/v2/", &[], b"").is_some() {
                    return Registry { child: Some(child), addr, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("the registry did not start; its log:\n{log}");
    }

    /// `oci://127.0.0.1:PORT/{rest}`.
    pub(crate) fn reference(&self, rest: &str) -> Reference {
        Reference::parse(&format!("oci://{}/{rest}", self.addr)).expect("reference")
    }

    /// Stop it now (the port then refuses connections).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Upload a blob by hand; returns its digest.
    pub(crate) fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let (status, headers, _) =
            raw(self.addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"").expect("start upload");
        assert_eq!(status, 202, "start upload");
        let location = header(&headers, "location").expect("Location");
        let path = location.strip_prefix(&format!("http://{}", self.addr)).unwrap_or(&location).to_owned();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = raw(
            self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )
        .expect("upload");
        assert_eq!(status, 201, "upload: {}", String::from_utf8_lossy(&body));
        digest
    }

    /// Put a manifest by hand; returns its digest.
    pub(crate) fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, manifest: &serde_json::Value) -> String {
        let bytes = serde_json::to_vec(manifest).expect("json");
        let (status, _, body) =
            raw(self.addr, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[("Content-Type", media_type)], &bytes)
                .expect("put manifest");
        assert_eq!(status, 201, "put manifest: {}", String::from_utf8_lossy(&body));
        sha256_digest(&bytes)
    }

    /// Get a blob by hand.
    pub(crate) fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let (status, _, body) = raw(self.addr, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"").expect("get");
        assert_eq!(status, 200);
        body
    }

    /// Get a manifest by hand.
    pub(crate) fn get_manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        let accept = [("Accept", weir_oci::OCI_MANIFEST)];
        let (status, _, body) =
            raw(self.addr, "GET", &format!("/v2/{repo}/manifests/{reference}"), &accept, b"").expect("get");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("manifest json")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Status, headers (names lowercased), body.
pub(crate) type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.0 exchange (so the answer is never chunked): status,
/// headers (names lowercased), body. `None` when nothing answers.
pub(crate) fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, answer[end + 4..].to_vec()))
}

pub(crate) fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A client for a loopback registry over plain HTTP.
pub(crate) fn client() -> Client {
    client_with(ClientOptions::default())
}

pub(crate) fn client_with(options: ClientOptions) -> Client {
    Client::new(ClientOptions { insecure: true, timeout: Duration::from_secs(5), ..options })
}

pub(crate) fn credentials(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials { username: user.into(), password: password.into() })
}

/// A fake Wasm component of `len` bytes (a valid header, then filler
/// that depends on `seed`).
pub(crate) fn component(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"\0asm\x0d\x00\x01\x00".to_vec();
    v.extend((0..len.saturating_sub(8)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// The sha256 hex of `bytes` (a pin).
pub(crate) fn hex(bytes: &[u8]) -> String {
    sha256_digest(bytes).trim_start_matches("sha256:").to_owned()
}
