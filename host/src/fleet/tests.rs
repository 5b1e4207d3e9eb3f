//! Locations and the revision line, without etcd (the tests in
//! `tests/it/fleet.rs` run a real one).

use super::*;

#[test]
fn locations_parse_with_their_endpoints_and_prefix() {
    let l = Location::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/weir/prod/", false).expect("parses");
    assert_eq!(l.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert_eq!(l.config_key(), "/weir/prod/config");
    assert_eq!(l.source_path(), PathBuf::from("etcd://10.0.0.1:2379,10.0.0.2:2379/weir/prod/config"));
    let tls = Location::parse("etcd://etcd.internal:2379/weir", true).expect("parses");
    assert_eq!(tls.endpoints(), ["https://etcd.internal:2379"]);
    for bad in ["http://x:1/weir", "etcd://x:1", "etcd://x:1/", "etcd://x/weir", "etcd://:1/weir", "etcd://x:1/a b"] {
        assert!(Location::parse(bad, false).is_err(), "{bad} accepted");
    }
}

#[test]
fn the_revision_line_round_trips_and_keeps_line_numbers() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n";
    let pulled = with_revision(text, 42);
    assert!(pulled.starts_with(text), "the document's lines come first, unchanged");
    assert_eq!(split_revision(&pulled), (Some(42), text.to_owned()));
    // A file never pulled has no revision, and is pushed as it is.
    assert_eq!(split_revision(text), (None, text.to_owned()));
    // Edited after the pull, with trailing blank lines.
    let edited = format!("{}\n\n", pulled.replace("8080", "9090"));
    assert_eq!(split_revision(&edited), (Some(42), text.replace("8080", "9090")));
}
