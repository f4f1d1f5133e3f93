//! Integration tests: the real `vfgate` binary on ephemeral ports, with in-test mock upstreams.

mod cli;
mod crash;
mod edges;
mod forward;
mod health;
mod lifecycle;
mod presets;
mod prometheus;
mod receive;
mod redis;
mod reload;
mod restart;
mod schemes;
mod security;
mod sender;
mod siem;
mod spool;
mod util;
