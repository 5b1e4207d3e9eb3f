//! Demo upstream for `scripts/demo.sh` and benchmarks: an HTTP server that
//! echoes each request as JSON (see `weir_tests::Upstream`).
//!
//! Usage: `weir-demo-upstream NAME ADDR [NAME ADDR ...]`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        !args.is_empty() && args.len().is_multiple_of(2),
        "usage: weir-demo-upstream NAME ADDR [NAME ADDR ...]"
    );
    let mut servers = Vec::new();
    for pair in args.chunks(2) {
        let upstream = weir_tests::Upstream::start_on(pair[1].parse()?, &pair[0]).await;
        eprintln!("upstream {} on http://{}", pair[0], upstream.addr);
        servers.push(upstream);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
