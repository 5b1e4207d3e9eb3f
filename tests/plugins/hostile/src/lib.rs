//! `hostile.wasm` — a test-only plugin written against the raw WIT bindings
//! (no SDK), so it can do what the SDK would not let it: loop forever, trap,
//! exhaust memory, recurse without end, return invalid headers. The
//! behaviour is `config.mode`; modes other than `ok` act in `on-request`.

#![allow(unsafe_code)]
// Natively (workspace `cargo test`) nothing is exported, so nothing is used.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code, unused_imports))]

use std::cell::Cell;

wit_bindgen::generate!({ path: "../../../wit", world: "plugin" });

use exports::weir::plugin::handler::Guest;
use weir::plugin::types::*;

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Ok) };
    static EVERY: Cell<u64> = const { Cell::new(0) };
    static SEEN: Cell<u64> = const { Cell::new(0) };
    static CANARY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Loop,
    Trap,
    /// Trap on every n-th request (`every`) of this instance.
    TrapEvery,
    /// Trap when the request has `x-trap`.
    TrapOnHeader,
    /// Try edits the gateway must refuse, ignore the refusals, continue.
    InvalidEdit,
    MemoryBomb,
    Recurse,
    InvalidHeader,
    HugeBody,
    /// Answer with a 100 MiB body (needs a memory limit above that).
    HugeBody100,
    /// Answer with 10,000 headers.
    HugeHeaders,
    /// Try to leave the sandbox: read a file, the environment, connect to
    /// `canary` over TCP, resolve a name. Report each outcome in
    /// `x-escape` (upstream) and continue.
    Escape,
}

/// What each escape attempt got: `denied`, or what leaked.
fn try_escape(canary: &str) -> String {
    let fs = match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => format!("read {} bytes", text.len()),
        Err(_) => "denied".into(),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(entries) => format!("listed {}", entries.count()),
        Err(_) => "denied".into(),
    };
    let env = match std::env::vars().count() {
        0 => "denied".into(),
        n => format!("{n} vars"),
    };
    let tcp: String = match std::net::TcpStream::connect(canary) {
        Ok(mut s) => {
            use std::io::Write;
            let _ = s.write_all(b"escaped");
            "connected".into()
        }
        Err(_) => "denied".into(),
    };
    let dns = match std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)) {
        Ok(mut addrs) => format!("resolved {:?}", addrs.next()),
        Err(_) => "denied".into(),
    };
    format!("fs={fs} dir={dir} env={env} tcp={tcp} dns={dns}")
}

struct Hostile;

fn cont() -> Action {
    Action::Continue
}

#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: it must overflow the stack
fn recurse(n: u64) -> u64 {
    let pad = [n; 64];
    std::hint::black_box(&pad);
    recurse(n + 1) + pad[(n % 64) as usize]
}

impl Guest for Hostile {
    fn init(config: String) -> Result<PluginInfo, String> {
        let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let mode = match v.get("mode").and_then(|m| m.as_str()).unwrap_or("ok") {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "trap" => Mode::Trap,
            "trap_every" => Mode::TrapEvery,
            "trap_on_header" => Mode::TrapOnHeader,
            "memory_bomb" => Mode::MemoryBomb,
            "recurse" => Mode::Recurse,
            "invalid_header" => Mode::InvalidHeader,
            "invalid_edit" => Mode::InvalidEdit,
            "huge_body" => Mode::HugeBody,
            "huge_body_100m" => Mode::HugeBody100,
            "huge_headers" => Mode::HugeHeaders,
            "escape" => Mode::Escape,
            "loop_in_init" => loop {
                std::hint::spin_loop();
            },
            other => return Err(format!("unknown mode {other:?}")),
        };
        MODE.set(mode);
        EVERY.set(v.get("every").and_then(|e| e.as_u64()).unwrap_or(100));
        CANARY.with(|c| *c.borrow_mut() = v.get("canary").and_then(|c| c.as_str()).unwrap_or("127.0.0.1:9").to_owned());
        Ok(PluginInfo { phases: Phases::REQUEST_HEADERS })
    }

    fn on_request(req: &Request) -> Action {
        match MODE.get() {
            Mode::Ok => cont(),
            Mode::Loop => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Mode::Trap => panic!("hostile plugin: trap on purpose"),
            Mode::TrapEvery => {
                let n = SEEN.get() + 1;
                SEEN.set(n);
                if n.is_multiple_of(EVERY.get().max(1)) {
                    panic!("hostile plugin: trap on request {n}");
                }
                cont()
            }
            Mode::TrapOnHeader => {
                if !req.header("x-trap").is_empty() {
                    panic!("hostile plugin: trap on header");
                }
                cont()
            }
            Mode::MemoryBomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                    if hoard.len() > 1024 {
                        break cont();
                    }
                }
            }
            Mode::Recurse => {
                std::hint::black_box(recurse(0));
                cont()
            }
            Mode::InvalidHeader => Action::Respond(Reply {
                status: 200,
                headers: vec![Header { name: "x-evil".into(), value: b"a\r\nx-injected: 1".to_vec() }],
                body: Vec::new(),
            }),
            Mode::InvalidEdit => {
                let tries = [
                    req.set_header("x-evil", b"a\r\nx-injected: 1"),
                    req.set_header("content-length", b"0"),
                    req.append_header("bad name", b"x"),
                    req.set_path_with_query("http://elsewhere/"),
                    req.set_method("GE T"),
                ];
                let refused = tries.iter().filter(|t| t.is_err()).count();
                let _ = req.set_header("x-refused", refused.to_string().as_bytes());
                cont()
            }
            Mode::HugeBody => Action::Respond(Reply { status: 200, headers: vec![], body: vec![b'x'; 8 << 20] }),
            Mode::HugeBody100 => Action::Respond(Reply { status: 200, headers: vec![], body: vec![b'x'; 100 << 20] }),
            Mode::HugeHeaders => Action::Respond(Reply {
                status: 200,
                headers: (0..10_000).map(|i| Header { name: format!("x-h{i}"), value: b"v".to_vec() }).collect(),
                body: Vec::new(),
            }),
            Mode::Escape => {
                let report = CANARY.with(|c| try_escape(&c.borrow()));
                let _ = req.set_header("x-escape", report.as_bytes());
                cont()
            }
        }
    }

    fn on_request_body(_req: &Request, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue(None)
    }

    fn on_response(_req: &Request, _resp: &Response) -> Action {
        Action::Continue
    }

    fn on_response_body(_req: &Request, _resp: &Response, _body: Vec<u8>) -> BodyAction {
        BodyAction::Continue(None)
    }
}

// Component export names are not valid native symbols.
#[cfg(target_arch = "wasm32")]
export!(Hostile);
