//! Benchmark tools for weir; see `bench/run.sh` and README's "Performance".

/// Take the `-H "name: value"` pairs out of `args` (they may come
/// anywhere); the rest stay, in order, as the positional arguments.
pub fn take_headers(args: &mut Vec<String>) -> anyhow::Result<Vec<(http::HeaderName, http::HeaderValue)>> {
    let mut headers = Vec::new();
    while let Some(i) = args.iter().position(|a| a == "-H") {
        anyhow::ensure!(i + 1 < args.len(), "-H needs \"name: value\"");
        let h = args.remove(i + 1);
        args.remove(i);
        let (name, value) = h.split_once(':').ok_or_else(|| anyhow::anyhow!("-H {h:?}: expected name: value"))?;
        headers.push((http::HeaderName::try_from(name.trim())?, http::HeaderValue::try_from(value.trim())?));
    }
    Ok(headers)
}
