//! The fuzz entry point of the config parser (feature `fuzzing`), called by `fuzz/`
//! and by the test that replays its corpus (`tests/it/fuzz_corpus.rs`): it
//! takes arbitrary bytes and must neither panic nor hang; what it checks
//! beyond that is asserted, so a fuzzer reports a violation as a crash.

use crate::Source;

/// The config parser: any text parses or yields errors that point inside it.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1);
    let source = Source::from_text("fuzz.toml", text.clone());
    if let Err(errors) = source.parse() {
        for e in &errors.0 {
            assert!(!e.message.is_empty(), "an error without a message");
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= lines + 1, "line {line} outside a {lines}-line file");
            }
        }
    }
}
