//! The spool: a crash-safe, segmented append-only log of accepted events, with one cursor
//! per sink.
//!
//! This is the storage layer (the durability issue's first step); `ack = "spool"` in `serve`
//! builds on it. Records are `[len u32][crc32 u32][seq u64][payload]` (little endian; the CRC
//! covers seq and payload) appended to segment files `seg-<first seq>.log`. Recovery scans
//! the last segment and truncates it at the first record whose length or checksum does not
//! hold (a write torn by a crash); everything before it is kept. Each sink's cursor (the next
//! sequence number it needs) is a small file replaced atomically; segments every cursor has
//! passed are deleted.

pub mod log;
