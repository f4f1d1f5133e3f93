//! Memory of the in-memory dedupe table: resident-set growth per id after inserting 10 M
//! delivered ids (the target is at most 48 bytes per id). Not a criterion bench:
//! it measures bytes, once.
//!
//! `cargo bench --bench dedupe_memory` (`VFGATE_BENCH_IDS` changes the count)

use std::time::{Duration, Instant};
use vfgate::dedupe::memory::MemoryDedupe;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not use.
    let ids: u64 = std::env::var("VFGATE_BENCH_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_bytes();
    let t0 = Instant::now();
    let d = MemoryDedupe::new(Duration::from_secs(86400), Duration::from_secs(60), ids);
    let mut id = String::with_capacity(32);
    for i in 0..ids {
        use std::fmt::Write;
        id.clear();
        let _ = write!(id, "evt_{i:016x}");
        let k = d.key("syvault", &id);
        d.begin(k, 1_000);
        d.commit(k, 1_000);
    }
    let took = t0.elapsed();
    let after = rss_bytes();
    assert_eq!(d.len(), ids, "nothing evicted below max_entries");
    let per_id = (after.saturating_sub(before)) as f64 / ids as f64;
    println!(
        "dedupe memory: {ids} ids, RSS {:.1} MiB -> {:.1} MiB, {per_id:.1} bytes per id (target <= 48); inserted in {:.2}s ({:.0} ns per id)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        took.as_secs_f64(),
        took.as_nanos() as f64 / ids as f64
    );
}
