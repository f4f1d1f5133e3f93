//! A raw HTTP/1.1 client: one request per connection, framed by Content-Length or EOF.

use super::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    pub fn status_field(&self) -> String {
        self.json()["status"].as_str().unwrap_or("").to_string()
    }
}

/// POSTs `body` to `path` as a sender would: signed with `secret`, version 1, JSON.
pub async fn post_signed(port: u16, path: &str, secret: &str, body: &str) -> std::io::Result<Resp> {
    let sig = sign(secret, body.as_bytes());
    request(
        port,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("X-VF-Signature-256", &sig),
            ("X-VF-Webhook-Version", "1"),
        ],
        body.as_bytes(),
    )
    .await
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            has_len = true;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    let expect_continue = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue"));
    if expect_continue {
        // Like curl: wait for the interim answer (or a final one) before sending the body.
        let r = read_response_raw(&mut s).await?;
        if r.status != 100 {
            return Ok(r);
        }
    }
    // The server may answer early (413) and close: a failed body write still has an answer.
    let _ = s.write_all(body).await;
    read_response(&mut s).await
}

/// Reads one final response, skipping interim 100 Continue answers.
pub async fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    loop {
        let r = read_response_raw(s).await?;
        if r.status != 100 {
            return Ok(r);
        }
    }
}

/// Reads one response (Content-Length framed, or to EOF), interim ones included.
pub async fn read_response_raw(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
            let status = r.code.unwrap();
            let headers = owned_headers(r.headers);
            if status == 100 {
                return Ok(Resp {
                    status,
                    headers,
                    body: Vec::new(),
                });
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().unwrap());
            let mut body = buf[n..].to_vec();
            match len {
                Some(len) => {
                    while body.len() < len {
                        let k = s.read(&mut tmp).await?;
                        if k == 0 {
                            break;
                        }
                        body.extend_from_slice(&tmp[..k]);
                    }
                    body.truncate(len);
                }
                None => loop {
                    let k = s.read(&mut tmp).await?;
                    if k == 0 {
                        break;
                    }
                    body.extend_from_slice(&tmp[..k]);
                },
            }
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        let k = s.read(&mut tmp).await?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&tmp[..k]);
    }
}

/// Parsed headers as owned (name, value) pairs, values decoded lossily.
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect()
}
