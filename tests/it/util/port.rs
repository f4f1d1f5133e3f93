//! Ports held for a process started later, without the bind-and-drop race.

use tokio::net::TcpSocket;

/// A local port held for a process this test starts later (a gateway, `redis-server`): bound
/// with `SO_REUSEADDR` but never listening. The child, which sets `SO_REUSEADDR` too, can still
/// bind and listen on it; meanwhile `bind(0)` elsewhere does not hand it out, and a connection
/// to it is refused. Keep it for as long as the child may (re)bind the port.
pub struct ReservedPort {
    pub port: u16,
    _sock: TcpSocket,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = sock.local_addr().unwrap().port();
        ReservedPort { port, _sock: sock }
    }
}
