//! Benchmark tools for weir; see `bench/run.sh` and README's "Performance".
