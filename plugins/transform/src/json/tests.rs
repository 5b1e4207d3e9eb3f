use super::*;

fn doc(text: &str) -> Json {
    Json::parse(text.as_bytes()).expect("valid JSON")
}

fn ptr(text: &str) -> Pointer {
    Pointer::parse(text).expect("valid pointer")
}

fn text(j: &Json) -> String {
    String::from_utf8(j.to_vec()).expect("utf-8")
}

#[test]
fn round_trip_keeps_order_numbers_and_duplicates() {
    let src = r#"{"z":1,"a":[1.50,-0,1e400,12345678901234567890123],"m":{"b":true,"a":null},"z":"dup"}"#;
    assert_eq!(text(&doc(src)), src);
    // Whitespace goes, content stays.
    assert_eq!(text(&doc(" { \"a\" : [ 1 , 2 ] }\n")), r#"{"a":[1,2]}"#);
}

#[test]
fn strings_are_decoded_and_reescaped() {
    let d = doc(r#"["a\"b\\c\/d\n\t\u00e9\ud83d\ude00\u0001"]"#);
    assert_eq!(d, Json::Array(vec![Json::String("a\"b\\c/d\n\té😀\u{1}".into())]));
    assert_eq!(text(&d), "[\"a\\\"b\\\\c/d\\n\\té😀\\u0001\"]");
    // What we write parses back to the same value with serde_json.
    let back: serde_json::Value = serde_json::from_slice(&d.to_vec()).expect("serde_json reads our output");
    assert_eq!(back[0], "a\"b\\c/d\n\té😀\u{1}");
}

/// Our parser accepts exactly what serde_json accepts into a `Value`.
#[test]
fn validity_matches_serde_json() {
    let cases = [
        "",
        " ",
        "{}",
        "[]",
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1.5",
        "1e5",
        "1E+5",
        "1e-5",
        "-1.0e10",
        "\"\"",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "0x10",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "[1,]",
        "[,1]",
        "{,}",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\":}",
        "{a:1}",
        "{'a':1}",
        "[1 2]",
        "{\"a\":1 \"b\":2}",
        "[1]]",
        "[[1]",
        "\"abc",
        "\"a\\x\"",
        "\"\\u12\"",
        "\"\\uZZZZ\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"tab\there\"",
        "\"\u{1}\"",
        "\u{feff}{}",
        "{} x",
        "[1] [2]",
        "\"\\ud83d\\ude00\"",
        "[\"\\/\"]",
        " [ ] ",
        "{\"a\":{\"b\":[{\"c\":null}]}}",
        "1 ",
        "\t\r\n1",
    ];
    for case in cases {
        let ours = Json::parse(case.as_bytes()).is_ok();
        let theirs = serde_json::from_str::<serde_json::Value>(case).is_ok();
        assert_eq!(ours, theirs, "disagree on {case:?}");
    }
    assert!(Json::parse(b"\"\xff\"").is_err(), "invalid UTF-8");
}

#[test]
fn nesting_is_bounded() {
    let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
    assert!(Json::parse(ok.as_bytes()).is_ok());
    let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
    let err = Json::parse(deep.as_bytes()).expect_err("too deep");
    assert!(err.contains("nested too deeply"), "{err}");
    let err = Json::parse(b"{\"a\" 1}").expect_err("bad");
    assert_eq!(err, "expected ':' at byte 5");
}

#[test]
fn pointers() {
    assert!(ptr("").is_root());
    assert_eq!(ptr("/a~1b/~0c/0").tokens, ["a/b", "~c", "0"]);
    assert_eq!(ptr("/").tokens, [""]);
    assert!(Pointer::parse("a").expect_err("no slash").contains("must be empty or start with '/'"));
    assert!(Pointer::parse("/a~2").expect_err("bad escape").contains("'~' must be followed by 0 or 1"));
    assert!(Pointer::parse("/a~").is_err());
    assert!(ptr("/a/b").starts_with(&ptr("/a")));
    assert!(!ptr("/ab").starts_with(&ptr("/a")));
    let d = doc(r#"{"a/b":{"~c":[10,20]},"":5,"a":1,"a":2}"#);
    assert_eq!(d.get(&ptr("/a~1b/~0c/1")), Some(&Json::Number("20".into())));
    assert_eq!(d.get(&ptr("/")), Some(&Json::Number("5".into())));
    assert_eq!(d.get(&ptr("/a")), Some(&Json::Number("2".into())), "the last duplicate counts");
    assert_eq!(d.get(&ptr("/a~1b/~0c/01")), None, "leading zeros are not an index");
    assert_eq!(d.get(&ptr("/a~1b/~0c/-")), None);
    assert_eq!(d.get(&ptr("")), Some(&d));
}

#[test]
fn set_replaces_appends_and_creates() {
    let mut d = doc(r#"{"a":1,"list":[1,2],"s":"x"}"#);
    d.set(&ptr("/a"), Json::Bool(true)).expect("replace");
    d.set(&ptr("/list/0"), Json::Null).expect("replace element");
    d.set(&ptr("/list/-"), Json::Number("3".into())).expect("append with -");
    d.set(&ptr("/list/3"), Json::Number("4".into())).expect("append at len");
    d.set(&ptr("/new/deep/x"), Json::Number("5".into())).expect("create intermediates");
    d.set(&ptr("/list/-/k"), Json::String("v".into())).expect("append an object");
    assert_eq!(text(&d), r#"{"a":true,"list":[null,2,3,4,{"k":"v"}],"s":"x","new":{"deep":{"x":5}}}"#);

    let before = d.clone();
    assert!(d.set(&ptr("/s/x"), Json::Null).is_err(), "inside a string");
    assert!(d.set(&ptr("/list/9"), Json::Null).is_err(), "past the end");
    assert!(d.set(&ptr("/list/x"), Json::Null).is_err(), "not an index");
    assert!(d.set(&ptr("/list/9/a/b"), Json::Null).is_err(), "past the end, deeper");
    assert_eq!(d, before, "a failed set changes nothing");

    d.set(&ptr(""), Json::Array(vec![])).expect("root");
    assert_eq!(text(&d), "[]");
    let mut dup = doc(r#"{"a":1,"b":2,"a":3}"#);
    dup.set(&ptr("/a"), Json::Number("9".into())).expect("set");
    assert_eq!(text(&dup), r#"{"a":9,"b":2}"#, "duplicates collapse into the first position");
}

#[test]
fn remove_and_rename() {
    let mut d = doc(r#"{"a":1,"b":{"c":[1,2,3]},"a":2,"x":"y"}"#);
    assert!(d.remove(&ptr("/a")), "removes every duplicate");
    assert!(d.remove(&ptr("/b/c/1")));
    assert!(!d.remove(&ptr("/b/c/7")));
    assert!(!d.remove(&ptr("/b/c/-")));
    assert!(!d.remove(&ptr("/missing/x")));
    assert!(!d.remove(&ptr("/x/y")), "inside a string");
    assert_eq!(text(&d), r#"{"b":{"c":[1,3]},"x":"y"}"#);

    assert!(d.rename(&ptr("/x"), &ptr("/meta/x")));
    assert!(d.rename(&ptr("/b/c/0"), &ptr("/first")));
    assert!(!d.rename(&ptr("/nope"), &ptr("/z")));
    assert_eq!(text(&d), r#"{"b":{"c":[3]},"meta":{"x":"y"},"first":1}"#);

    // A rename that cannot be placed puts the value back where it was.
    let mut d = doc(r#"{"a":1,"b":2,"s":"str"}"#);
    assert!(!d.rename(&ptr("/a"), &ptr("/s/inner")));
    assert_eq!(text(&d), r#"{"a":1,"b":2,"s":"str"}"#);
    let mut d = doc(r#"{"l":[1,2,3],"s":0}"#);
    assert!(!d.rename(&ptr("/l/1"), &ptr("/s/x")));
    assert_eq!(text(&d), r#"{"l":[1,2,3],"s":0}"#);
    // Within one object, a renamed member keeps its place.
    let mut d = doc(r#"{"a":1,"b":2,"c":3}"#);
    assert!(d.rename(&ptr("/b"), &ptr("/z")));
    assert_eq!(text(&d), r#"{"a":1,"z":2,"c":3}"#);
    // An existing target is replaced.
    let mut d = doc(r#"{"old":1,"new":2}"#);
    assert!(d.rename(&ptr("/old"), &ptr("/new")));
    assert_eq!(text(&d), r#"{"new":1}"#);
}

#[test]
fn from_config_values() {
    // Keys in sorted order: serde_json keeps insertion order when a crate in
    // the build enables `preserve_order` (the host does), sorted otherwise.
    let v = serde_json::json!({"f": 1.5, "l": [true, null], "n": 1, "s": "x"});
    assert_eq!(text(&Json::from(&v)), r#"{"f":1.5,"l":[true,null],"n":1,"s":"x"}"#);
}

/// With duplicate keys on the way to a pointer, every duplicate parent is
/// edited: a parser that keeps the first duplicate then sees the same as
/// one that keeps the last.
#[test]
fn remove_reaches_every_duplicate_parent() {
    for (src, pointer, expected) in [
        (r#"{"a":{"role":"admin"},"a":{}}"#, "/a/role", r#"{"a":{},"a":{}}"#),
        (r#"{"a":{},"a":{"role":"admin"}}"#, "/a/role", r#"{"a":{},"a":{}}"#),
        (r#"{"a":{"role":1,"role":2},"b":0,"a":{"role":3}}"#, "/a/role", r#"{"a":{},"b":0,"a":{}}"#),
        // Two levels of duplicates, and a duplicate that is not an object.
        (
            r#"{"a":{"b":{"x":1},"b":{"x":2,"y":0}},"a":"s","a":{"b":{"x":3}}}"#,
            "/a/b/x",
            r#"{"a":{"b":{},"b":{"y":0}},"a":"s","a":{"b":{}}}"#,
        ),
        (r#"{"a":[{"x":1}],"a":[{"x":2},{"x":3}]}"#, "/a/0/x", r#"{"a":[{}],"a":[{},{"x":3}]}"#),
    ] {
        let mut d = doc(src);
        assert!(d.remove(&ptr(pointer)), "{src}");
        assert_eq!(text(&d), expected, "{src}");
    }
    let mut d = doc(r#"{"a":{},"a":{}}"#);
    assert!(!d.remove(&ptr("/a/role")), "nothing to remove");
}

#[test]
fn set_reaches_every_duplicate_parent() {
    let user = || Json::String("user".into());
    let mut d = doc(r#"{"a":{"role":"admin"},"a":{}}"#);
    d.set(&ptr("/a/role"), user()).expect("set");
    assert_eq!(text(&d), r#"{"a":{"role":"user"},"a":{"role":"user"}}"#);
    // A duplicate the value cannot go into is left alone; the others get it.
    let mut d = doc(r#"{"a":{"role":"admin"},"a":"scalar"}"#);
    d.set(&ptr("/a/role"), user()).expect("set where it can");
    assert_eq!(text(&d), r#"{"a":{"role":"user"},"a":"scalar"}"#);
    // Missing intermediates are created in each duplicate that lacks them.
    let mut d = doc(r#"{"a":{"m":{"k":0}},"a":{}}"#);
    d.set(&ptr("/a/m/role"), user()).expect("set");
    assert_eq!(text(&d), r#"{"a":{"m":{"k":0,"role":"user"}},"a":{"m":{"role":"user"}}}"#);
    // No duplicate can take it: nothing changes.
    let mut d = doc(r#"{"a":1,"a":"s"}"#);
    assert!(d.set(&ptr("/a/role"), user()).is_err());
    assert_eq!(text(&d), r#"{"a":1,"a":"s"}"#);
}

#[test]
fn rename_reaches_every_duplicate_parent() {
    // Within the parent: each duplicate renames its own member, in place.
    let mut d = doc(r#"{"a":{"role":"admin","z":1},"a":{"role":"x"},"a":{"z":2}}"#);
    assert!(d.rename(&ptr("/a/role"), &ptr("/a/r")));
    assert_eq!(text(&d), r#"{"a":{"r":"admin","z":1},"a":{"r":"x"},"a":{"z":2}}"#);
    let mut d = doc(r#"{"a":{"role":"admin"},"a":{"role":"x","r":0}}"#);
    assert!(d.rename(&ptr("/a/role"), &ptr("/a/m/r")));
    assert_eq!(text(&d), r#"{"a":{"m":{"r":"admin"}},"a":{"r":0,"m":{"r":"x"}}}"#);
    // Elsewhere: taken from every duplicate; the last value is the one moved.
    let mut d = doc(r#"{"a":{"k":1},"a":{"k":2},"b":{}}"#);
    assert!(d.rename(&ptr("/a/k"), &ptr("/b/k")));
    assert_eq!(text(&d), r#"{"a":{},"a":{},"b":{"k":2}}"#);
    // ... into every duplicate target.
    let mut d = doc(r#"{"k":1,"b":{},"b":{"k":0}}"#);
    assert!(d.rename(&ptr("/k"), &ptr("/b/k")));
    assert_eq!(text(&d), r#"{"b":{"k":1},"b":{"k":1}}"#);
    // A target that cannot be placed changes nothing, duplicates included.
    let src = r#"{"a":{"k":1,"k":2},"a":{"k":3},"s":0}"#;
    let mut d = doc(src);
    assert!(!d.rename(&ptr("/a/k"), &ptr("/s/x")));
    assert_eq!(text(&d), src);
    let src = r#"{"a":{"k":1,"s":0},"a":{"k":2,"s":0}}"#;
    let mut d = doc(src);
    assert!(!d.rename(&ptr("/a/k"), &ptr("/a/s/x")));
    assert_eq!(text(&d), src);
    // Within an array: the element is taken first, so later ones move down.
    let mut d = doc(r#"{"l":[1,2],"l":[3]}"#);
    assert!(d.rename(&ptr("/l/0"), &ptr("/l/1")));
    assert_eq!(text(&d), r#"{"l":[2,1],"l":[3]}"#, "the second list has no index 1 once its 3 is taken");
}
