//! The floor of an HTTP server on Pingora on this machine: reads each request's body and
//! answers `200 {"status":"accepted"}`, nothing else (no verification, no dedupe, no sink).
//! `scripts/loadtest.sh` runs it as a baseline next to nginx, so that the report separates
//! what Pingora's HTTP/1 stack costs from what vfgate adds on top.
//!
//!     cargo run --release --example pingora_floor -- 127.0.0.1:8080

use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

struct Floor;

#[async_trait]
impl ServeHttp for Floor {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        while let Ok(Some(_)) = s.read_request_body().await {}
        let body = br#"{"status":"accepted"}"#.to_vec();
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body(body)
            .expect("static response")
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut app = HttpServer::new_app(Floor);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.keepalive_request_limit = Some(100_000);
    app.server_options = Some(options);
    let mut svc = Service::new("floor".to_string(), app);
    svc.add_tcp(&addr);
    svc.threads = Some(1);
    server.add_service(svc);
    server.run_forever();
}
