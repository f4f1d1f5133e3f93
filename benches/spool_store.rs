//! Storage choice for the spool: the segmented append-only log (`vfgate::spool::log`) against
//! redb (a well-kept embedded B-tree store), on the spool's access pattern: append 1 KiB
//! events in groups with one fsync per group (group commit), read them back in order, delete
//! from the head. Both run in the same invocation on the same disk; the output is events/s per
//! phase and the ratio log/redb.
//!
//! `cargo bench --bench spool_store` (env: EVENTS=20000, GROUP=64, DIR=<a directory on the
//! spool's disk>, default the system temp dir)

use bytes::Bytes;
use redb::{Database, Durability, TableDefinition};
use std::time::{Duration, Instant};
use vfgate::spool::log::{Fsync, Log};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Phases {
    append: Duration,
    read: Duration,
    delete: Duration,
}

fn run_log(dir: &std::path::Path, events: &[Bytes], group: usize) -> Phases {
    let mut log = Log::open(dir, 64 * 1024 * 1024, Fsync::Always).unwrap();
    let t = Instant::now();
    for g in events.chunks(group) {
        log.append(g).unwrap();
    }
    let append = t.elapsed();
    let t = Instant::now();
    let mut from = 0;
    loop {
        let batch = log.read(from, 1000).unwrap();
        if batch.records.is_empty() {
            break;
        }
        from = batch.next;
    }
    assert_eq!(from as usize, events.len());
    let read = t.elapsed();
    let t = Instant::now();
    let mut c = vfgate::spool::log::Cursor::open(dir, "bench").unwrap();
    for k in (1000..=events.len()).step_by(1000) {
        c.advance(k as u64).unwrap();
        log.reclaim(k as u64).unwrap();
    }
    let delete = t.elapsed();
    Phases {
        append,
        read,
        delete,
    }
}

fn run_redb(dir: &std::path::Path, events: &[Bytes], group: usize) -> Phases {
    let db = Database::create(dir.join("spool.redb")).unwrap();
    let t = Instant::now();
    let mut seq = 0u64;
    for g in events.chunks(group) {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for e in g {
                table.insert(seq, e.as_ref()).unwrap();
                seq += 1;
            }
        }
        tx.commit().unwrap();
    }
    let append = t.elapsed();
    let t = Instant::now();
    let rx = db.begin_read().unwrap();
    let table = rx.open_table(TABLE).unwrap();
    let mut n = 0usize;
    for item in table.range(0u64..).unwrap() {
        let (_, v) = item.unwrap();
        std::hint::black_box(Bytes::copy_from_slice(v.value()));
        n += 1;
    }
    assert_eq!(n, events.len());
    drop(table);
    drop(rx);
    let read = t.elapsed();
    let t = Instant::now();
    for k in (1000..=events.len()).step_by(1000) {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(TABLE).unwrap();
            table
                .retain_in(((k - 1000) as u64)..(k as u64), |_, _| false)
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let delete = t.elapsed();
    Phases {
        append,
        read,
        delete,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    let n = env("EVENTS", 20_000);
    let group = env("GROUP", 64);
    let base = std::env::var("DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let events: Vec<Bytes> = (0..n)
        .map(|i| {
            let head = format!("{{\"event_id\":\"evt_{i:016x}\",\"timestamp\":\"2026-11-26T00:00:00.000Z\",\"pad\":\"");
            Bytes::from(format!("{head}{}\"}}", "x".repeat(1024 - head.len() - 2)))
        })
        .collect();
    let d1 = tempfile::tempdir_in(&base).unwrap();
    let d2 = tempfile::tempdir_in(&base).unwrap();
    let log = run_log(d1.path(), &events, group);
    let redb = run_redb(d2.path(), &events, group);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "spool store: {n} events of 1 KiB, groups of {group} with one fsync each, dir {}",
        base.display()
    );
    println!(
        "{:<28} {:>14} {:>14} {:>8}",
        "phase", "log ev/s", "redb ev/s", "log/redb"
    );
    for (name, a, b) in [
        ("append + fsync per group", log.append, redb.append),
        ("read in order", log.read, redb.read),
        ("delete from head", log.delete, redb.delete),
    ] {
        println!(
            "{name:<28} {:>14.0} {:>14.0} {:>8.2}",
            rate(a),
            rate(b),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
}
