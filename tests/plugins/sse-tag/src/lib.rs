//! `sse_tag.wasm`, a test plugin for the chunk-by-chunk body phases
//! (contract 0.2.4, `streaming`):
//!
//! * **response**: in a Server-Sent Events stream, every `data:` line gets
//!   `tag` put in front of its value (`data: hi` → `data: [tag] hi`), event
//!   by event as they flow. A line split across chunks is held back (in
//!   request-local state, since chunks may reach other instances) until its
//!   end arrives; at the end of the body a comment line counting the events
//!   is appended.
//! * **request**: counts the body's bytes as they flow and cuts the body
//!   off past `max_request_bytes`.
//!
//! `config = { tag = "weir", max_request_bytes = 1000000 }`

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_tag")]
    tag: String,
    #[serde(default = "default_max")]
    max_request_bytes: u64,
}

fn default_tag() -> String {
    "weir".into()
}

fn default_max() -> u64 {
    u64::MAX
}

struct SseTag {
    prefix: Vec<u8>,
    max_request_bytes: u64,
}

/// A number kept in request-local state.
fn local_number(cx: &Context, key: &str) -> u64 {
    cx.get_local(key).and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl Plugin for SseTag {
    fn new(config: &Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        if s.tag.is_empty() || s.tag.contains(['\n', '\r']) {
            return Err(Error::internal("`tag` must be one non-empty line"));
        }
        Ok(SseTag { prefix: format!("[{}] ", s.tag).into_bytes(), max_request_bytes: s.max_request_bytes })
    }

    fn phases(&self) -> Phases {
        Phases::empty()
    }

    fn streams(&self) -> Streams {
        Streams::REQUEST_BODY | Streams::RESPONSE_BODY
    }

    fn on_request_chunk(&self, _req: &Request, chunk: &mut Chunk, cx: &Context) -> Result<()> {
        let seen = local_number(cx, "request_bytes") + chunk.as_bytes().len() as u64;
        if seen > self.max_request_bytes {
            return Err(Error::internal(format!("request body over {} bytes", self.max_request_bytes)));
        }
        cx.set_local("request_bytes", seen.to_string());
        if chunk.is_end() {
            cx.counter_add("request_bytes", seen);
        }
        Ok(())
    }

    fn on_response_chunk(&self, _req: &Request, resp: &Response, chunk: &mut Chunk, cx: &Context) -> Result<()> {
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Ok(());
        }
        // The held-back partial line, then this chunk.
        let mut input = cx.get_local("partial").unwrap_or_default();
        input.extend_from_slice(chunk.as_bytes());
        let mut out = Vec::with_capacity(input.len() + 16);
        let mut events = local_number(cx, "events");
        let mut rest = &input[..];
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let line = &rest[..=nl];
            if let Some(value) = line.strip_prefix(b"data:") {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&self.prefix);
                out.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
            } else {
                if line == b"\n" || line == b"\r\n" {
                    events += 1;
                }
                out.extend_from_slice(line);
            }
            rest = &rest[nl + 1..];
        }
        if chunk.is_end() {
            out.extend_from_slice(rest);
            out.extend_from_slice(format!(": {events} events tagged\n\n").as_bytes());
        } else if !cx.set_local("partial", rest) {
            return Err(Error::internal("an SSE line longer than the request-local store"));
        }
        cx.set_local("events", events.to_string());
        chunk.set(out);
        Ok(())
    }
}

weir_plugin_sdk::export_plugin!(SseTag);

#[cfg(test)]
mod tests {
    use weir_plugin_sdk::http;
    use weir_plugin_sdk::testing::{self, Harness};

    use super::*;

    fn sse() -> http::Response<()> {
        http::Response::builder().header("content-type", "text/event-stream").body(()).expect("response")
    }

    #[test]
    fn data_lines_are_tagged_across_chunk_boundaries() {
        testing::reset();
        let h = Harness::<SseTag>::new(serde_json::json!({ "tag": "t" })).expect("config");
        assert_eq!(h.streams(), Streams::REQUEST_BODY | Streams::RESPONSE_BODY);
        let req = http::Request::get("/events").body(()).expect("request");
        let out = h.stream_response(&req, &sse(), &[b"data: one\n\nda", b"ta: two\n", b"\n"]).expect("streamed");
        let text: Vec<String> = out.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        assert_eq!(text, ["data: [t] one\n\n", "data: [t] two\n", "\n: 2 events tagged\n\n"]);
    }

    #[test]
    fn other_bodies_pass_and_large_requests_are_cut() {
        testing::reset();
        let h = Harness::<SseTag>::new(serde_json::json!({ "max_request_bytes": 5 })).expect("config");
        let req = http::Request::post("/up").body(()).expect("request");
        let json = http::Response::builder().header("content-type", "application/json").body(()).expect("response");
        assert_eq!(h.on_response_chunk(&req, &json, b"data: x\n", false).expect("passed"), b"data: x\n");
        assert_eq!(h.on_request_chunk(&req, b"abc", false).expect("passed"), b"abc");
        assert_eq!(h.on_request_chunk(&req, b"def", false), Err("request body over 5 bytes".into()));
    }
}
