//! A scriptable mock upstream (HTTP or HTTPS) that records every request it receives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request the mock upstream received.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the mock answered (0 until it answered).
    pub status: u16,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A reply computed from the request.
pub type ReplyFn = Arc<dyn Fn(&Captured) -> (u16, String) + Send + Sync>;

/// What the mock answers.
#[derive(Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Status(u16, Vec<(String, String)>, String),
    /// Sleep, then answer 200.
    Sleep(Duration),
    /// 400 when the body contains this text, else 200.
    RejectContaining(String),
    /// Status and body computed from the request.
    Compute(ReplyFn),
}

/// A scriptable upstream: answers from a queue of replies (then the default), records all.
#[derive(Clone)]
pub struct Mock {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
}

impl Mock {
    /// A mock on `port` that answers 200 `{}` until told otherwise.
    fn on(port: u16) -> Mock {
        Mock {
            port,
            got: Arc::default(),
            script: Arc::default(),
            default: Arc::new(Mutex::new(Reply::Status(200, vec![], "{}".into()))),
        }
    }

    pub async fn start() -> Mock {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let m = Mock::on(port);
        let mm = m.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = match l.accept().await {
                    Ok(x) => x,
                    Err(_) => return,
                };
                let mm = mm.clone();
                tokio::spawn(async move {
                    let _ = mm.serve_conn(s).await;
                });
            }
        });
        m
    }

    /// A mock that speaks HTTPS with the given PEM certificate chain and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Mock {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let m = Mock::on(port);
        let mm = m.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (mm, acceptor) = (mm.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        let _ = mm.serve_conn(tls).await;
                    }
                });
            }
        });
        m
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    pub fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = r;
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Captured> {
        let t0 = Instant::now();
        while self.got.lock().unwrap().len() < n && t0.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests()
    }

    async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut s: S,
    ) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut tmp = [0u8; 65536];
        loop {
            // Parse one request.
            let (cap, consumed) = loop {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut hs);
                if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                    let headers = super::http::owned_headers(r.headers);
                    let len = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse::<usize>().unwrap())
                        .unwrap_or(0);
                    if buf.len() >= n + len {
                        let cap = Captured {
                            method: r.method.unwrap().to_string(),
                            path: r.path.unwrap().to_string(),
                            headers,
                            body: buf[n..n + len].to_vec(),
                            status: 0,
                        };
                        break (cap, n + len);
                    }
                }
                let k = s.read(&mut tmp).await?;
                if k == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&tmp[..k]);
            };
            buf.drain(..consumed);
            let idx = {
                let mut g = self.got.lock().unwrap();
                g.push(cap);
                g.len() - 1
            };
            let reply = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.default.lock().unwrap().clone());
            let (status, headers, body) = match reply {
                Reply::Status(s, h, b) => (s, h, b),
                Reply::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    (200, vec![], "{}".to_string())
                }
                Reply::Compute(f) => {
                    let last = self.got.lock().unwrap().last().unwrap().clone();
                    let (st, b) = f(&last);
                    (st, vec![], b)
                }
                Reply::RejectContaining(t) => {
                    let last = self.got.lock().unwrap().last().unwrap().body.clone();
                    if String::from_utf8_lossy(&last).contains(&t) {
                        (400, vec![], "bad payload".to_string())
                    } else {
                        (200, vec![], "{}".to_string())
                    }
                }
            };
            self.got.lock().unwrap()[idx].status = status;
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            s.write_all(out.as_bytes()).await?;
        }
    }
}
