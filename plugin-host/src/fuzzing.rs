//! The fuzz entry point of plugin header lists (feature `fuzzing`), called by `fuzz/`
//! and by the test that replays its corpus (`tests/it/fuzz_corpus.rs`): it
//! takes arbitrary bytes and must neither panic nor hang; what it checks
//! beyond that is asserted, so a fuzzer reports a violation as a crash.

use http::HeaderMap;

use crate::Header;
use crate::heads::{MAX_PLUGIN_HEADERS, with_plugin_headers};

/// Header lists as a plugin returns them (`name: value` lines, a value may
/// hold any byte): refused as a whole, or a map with only valid fields and
/// none of the gateway-owned framing headers.
pub fn plugin_headers(data: &[u8]) {
    let list: Vec<Header> = data
        .split(|&b| b == b'\n')
        .take(MAX_PLUGIN_HEADERS + 2)
        .map(|line| {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            };
            Header { name: String::from_utf8_lossy(name).into_owned(), value: value.to_vec() }
        })
        .collect();
    let mut current = HeaderMap::new();
    current.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("5"));
    if let Ok(map) = with_plugin_headers(&current, list) {
        assert_eq!(map.get_all(http::header::CONTENT_LENGTH).iter().count(), 1, "framing stays the gateway's");
        assert!(!map.contains_key(http::header::TRANSFER_ENCODING), "a plugin cannot add chunked framing");
    }
}
