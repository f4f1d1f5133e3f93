//! One kept-alive HTTP/1.1 connection per load-generator slot (`vfgate send --generate`).
//!
//! The request (head and body) is written with one `write`, the answer parsed with
//! `httparse` from a buffer the connection keeps: no pool lookup, no task, no header map per
//! request, so that the generator costs less than the server it measures. The connection
//! itself comes from [`HttpClient::open_stream`] (DNS, TLS and its verification as for every
//! other outbound connection). Bodies: `Content-Length`, chunked, or to the end of the
//! connection; `Connection: close` or any error drops the connection, and the next request
//! opens a new one. A request that finds a kept connection closed by the server before any
//! byte of the answer arrived is sent once more on a new one, as the pooled client does.
//!
//! Owns: the slot's connection and its buffers. Uses `client`; knows nothing of events.

use crate::client::{ClientError, HttpClient, MAX_RESPONSE_BODY};
use bytes::{Buf, Bytes, BytesMut};
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body (decoded when chunked).
    pub body: Bytes,
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Why an exchange failed, and whether any byte of the answer had arrived.
struct Failed {
    error: ClientError,
    answered: bool,
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Io(e.to_string())
}

/// One slot's connection.
#[derive(Default)]
pub struct KeptConn {
    stream: Option<Stream>,
    out: Vec<u8>,
    inb: BytesMut,
}

impl KeptConn {
    /// A slot without a connection yet (the first request opens it).
    pub fn new() -> KeptConn {
        KeptConn::default()
    }

    /// Sends `head` (the request line and headers, ending with the blank line) and `body`,
    /// and reads the answer, within the client's timeout.
    pub async fn exchange(
        &mut self,
        client: &HttpClient,
        head: &[u8],
        body: &[u8],
    ) -> Result<Reply, ClientError> {
        let limit = client.timeout();
        let r = tokio::time::timeout(limit, async {
            let kept = self.stream.is_some();
            match self.once(client, head, body).await {
                Err(f) if kept && !f.answered => {
                    self.stream = None;
                    self.once(client, head, body).await
                }
                r => r,
            }
        })
        .await;
        match r {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(f)) => {
                self.stream = None;
                Err(f.error)
            }
            Err(_) => {
                self.stream = None;
                Err(ClientError::Timeout(limit))
            }
        }
    }

    async fn once(
        &mut self,
        client: &HttpClient,
        head: &[u8],
        body: &[u8],
    ) -> Result<Reply, Failed> {
        let not_answered = |error| Failed {
            error,
            answered: false,
        };
        if self.stream.is_none() {
            self.stream = Some(client.open_stream().await.map_err(not_answered)?);
            self.inb.clear();
        }
        self.out.clear();
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(body);
        let Some(s) = self.stream.as_mut() else {
            unreachable!("opened above")
        };
        let written = async {
            s.write_all(&self.out).await?;
            s.flush().await
        };
        written.await.map_err(|e| not_answered(io(e)))?;
        let (reply, keep) = read_reply(s, &mut self.inb).await?;
        if !keep {
            self.stream = None;
        }
        Ok(reply)
    }
}

/// Reads more of the answer into `inb`; an end of the connection is an error.
async fn fill(s: &mut Stream, inb: &mut BytesMut, answered: bool) -> Result<(), Failed> {
    inb.reserve(16 * 1024);
    match s.read_buf(inb).await {
        Ok(0) => Err(Failed {
            error: ClientError::Io("connection closed before the answer was complete".into()),
            answered,
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(Failed {
            error: io(e),
            answered,
        }),
    }
}

/// Reads one answer; true when the connection can carry the next request.
async fn read_reply(s: &mut Stream, inb: &mut BytesMut) -> Result<(Reply, bool), Failed> {
    let bad = |why: String| Failed {
        error: ClientError::Io(why),
        answered: true,
    };
    // Once an interim answer came, the server has the request: never sent again.
    let mut interim = false;
    let (status, framing, mut keep, head_len) = loop {
        if !inb.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(inb) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        // An interim answer (100 Continue): the real one follows.
                        inb.advance(n);
                        interim = true;
                        continue;
                    }
                    let http10 = resp.version == Some(0);
                    let (framing, keep) = framing(status, http10, resp.headers).map_err(bad)?;
                    break (status, framing, keep, n);
                }
                Ok(httparse::Status::Partial) if inb.len() > MAX_HEAD => {
                    return Err(bad(format!("answer head over {MAX_HEAD} bytes")));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(bad(format!("malformed answer: {e}"))),
            }
        }
        let answered = interim || !inb.is_empty();
        fill(s, inb, answered).await?;
    };
    inb.advance(head_len);
    let body = match framing {
        Framing::None => Bytes::new(),
        Framing::Length(n) => {
            if n > MAX_RESPONSE_BODY {
                return Err(bad(format!("answer body of {n} bytes")));
            }
            while inb.len() < n {
                fill(s, inb, true).await?;
            }
            // A copy: a view would keep the whole read buffer alive with the answer.
            let body = Bytes::copy_from_slice(&inb[..n]);
            inb.advance(n);
            body
        }
        Framing::Chunked => read_chunked(s, inb).await?,
        Framing::UntilClose => {
            keep = false;
            loop {
                if inb.len() > MAX_RESPONSE_BODY {
                    return Err(bad("answer body too large".into()));
                }
                inb.reserve(16 * 1024);
                match s.read_buf(inb).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(bad(e.to_string())),
                }
            }
            let body = Bytes::copy_from_slice(inb);
            inb.clear();
            body
        }
    };
    Ok((Reply { status, body }, keep))
}

/// The body's framing and whether the connection stays open, from the answer's headers
/// (an HTTP/1.0 answer keeps it only with `Connection: keep-alive`).
fn framing(
    status: u16,
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<(Framing, bool), String> {
    let mut length = None;
    let mut chunked = false;
    let mut keep = !http10;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| "malformed Content-Length in the answer".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers in the answer".into());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|b| *b == b',')
                .next_back()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err("unsupported Transfer-Encoding in the answer".into());
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for v in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if v.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if http10 && v.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        }
    }
    Ok(match (status, chunked, length) {
        (204 | 304, _, _) => (Framing::None, keep),
        (_, true, _) => (Framing::Chunked, keep),
        (_, false, Some(n)) => (Framing::Length(n), keep),
        (_, false, None) => (Framing::UntilClose, false),
    })
}

/// Reads a chunked body (trailers skipped).
async fn read_chunked(s: &mut Stream, inb: &mut BytesMut) -> Result<Bytes, Failed> {
    let bad = |why: &str| Failed {
        error: ClientError::Io(format!("malformed chunked answer: {why}")),
        answered: true,
    };
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(inb) {
                Ok(httparse::Status::Complete((n, size))) => break (n, size),
                Ok(httparse::Status::Partial) if inb.len() > MAX_HEAD => {
                    return Err(bad("chunk size line too long"))
                }
                Ok(httparse::Status::Partial) => fill(s, inb, true).await?,
                Err(_) => return Err(bad("bad chunk size")),
            }
        };
        inb.advance(skip);
        let size = usize::try_from(size).map_err(|_| bad("chunk too large"))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                if let Some(i) = inb.windows(2).position(|w| w == b"\r\n") {
                    inb.advance(i + 2);
                    if i == 0 {
                        return Ok(body.freeze());
                    }
                    continue;
                }
                if inb.len() > MAX_HEAD {
                    return Err(bad("trailers too long"));
                }
                fill(s, inb, true).await?;
            }
        }
        // (Compared without adding: a chunk size can be up to 2^64 - 1.)
        if size > MAX_RESPONSE_BODY - body.len() {
            return Err(bad("body too large"));
        }
        while inb.len() < size + 2 {
            fill(s, inb, true).await?;
        }
        body.extend_from_slice(&inb[..size]);
        if &inb[size..size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        inb.advance(size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<(Framing, bool), String> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        r.parse(head.as_bytes()).unwrap();
        framing(r.code.unwrap(), r.version == Some(0), r.headers)
    }

    #[test]
    fn framing_follows_the_answer_headers() {
        let ok = |h: &str| parse(&format!("HTTP/1.1 200 OK\r\n{h}\r\n"));
        assert_eq!(
            ok("Content-Length: 12\r\n"),
            Ok((Framing::Length(12), true))
        );
        assert_eq!(
            ok("content-length: 3\r\nConnection: keep-alive, Close\r\n"),
            Ok((Framing::Length(3), false))
        );
        assert_eq!(
            ok("Transfer-Encoding: gzip, chunked\r\n"),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(ok(""), Ok((Framing::UntilClose, false)));
        assert!(ok("Content-Length: x\r\n").is_err());
        assert!(ok("Content-Length: 1\r\nContent-Length: 2\r\n").is_err());
        assert!(ok("Transfer-Encoding: gzip\r\n").is_err());
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n"),
            Ok((Framing::None, true))
        );
        assert_eq!(
            parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"),
            Ok((Framing::Length(2), false))
        );
        assert_eq!(
            parse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n"),
            Ok((Framing::Length(2), true))
        );
    }
}

#[cfg(test)]
mod reads {
    use super::*;

    /// Reads one answer from `chunks`, each arriving as a separate read.
    async fn reply_of(chunks: &[&[u8]]) -> Result<(Reply, bool), Failed> {
        let mut b = tokio_test::io::Builder::new();
        for c in chunks {
            b.read(c);
        }
        let mut s: Stream = Box::new(b.build());
        read_reply(&mut s, &mut BytesMut::new()).await
    }

    fn body(r: Result<(Reply, bool), Failed>) -> (u16, Vec<u8>, bool) {
        let (reply, keep) = r.unwrap_or_else(|f| panic!("{}", f.error));
        (reply.status, reply.body.to_vec(), keep)
    }

    #[tokio::test]
    async fn an_answer_split_across_reads_is_put_together() {
        let r = reply_of(&[
            b"HTTP/1.1 202 Accepted\r\nCont",
            b"ent-Length: 5\r\n\r\nhe",
            b"llo",
        ])
        .await;
        assert_eq!(body(r), (202, b"hello".to_vec(), true));
        let r = reply_of(&[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
            b"c\r\n0\r\n\r\n",
        ])
        .await;
        assert_eq!(body(r), (200, b"abc".to_vec(), true));
        let r = reply_of(&[b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"the end"]).await;
        assert_eq!(body(r), (200, b"until the end".to_vec(), false));
    }

    #[tokio::test]
    async fn a_huge_chunk_size_is_refused_not_a_panic() {
        let r = reply_of(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
        ])
        .await;
        let f = r.expect_err("refused");
        assert!(
            f.answered && f.error.to_string().contains("too large"),
            "{}",
            f.error
        );
    }

    #[tokio::test]
    async fn a_close_after_an_interim_answer_counts_as_answered() {
        // The server has the request: it must not be sent again on a new connection.
        let f = reply_of(&[b"HTTP/1.1 100 Continue\r\n\r\n"])
            .await
            .expect_err("no answer");
        assert!(f.answered);
        let f = reply_of(&[]).await.expect_err("no answer");
        assert!(!f.answered);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Reads one answer from `bytes` cut into reads at `cuts`.
    fn read_cut(bytes: &[u8], cuts: &[usize]) -> Result<(Reply, bool), Failed> {
        let mut b = tokio_test::io::Builder::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        for p in points.into_iter().chain([bytes.len()]) {
            if p > at {
                b.read(&bytes[at..p]);
                at = p;
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut s: Stream = Box::new(b.build());
            let r = read_reply(&mut s, &mut BytesMut::new()).await;
            // (The mock asserts on drop that every read was taken; a refused answer leaves
            // some, which is the point.)
            std::mem::forget(s);
            r
        })
    }

    proptest! {
        /// Whatever a server sends, in whatever pieces: an answer or an error, never a panic.
        #[test]
        fn any_answer_bytes_are_read_or_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let _ = read_cut(&bytes, &cuts);
        }

        /// A well-formed answer, with a length or chunked, gives back its exact body
        /// however the reads cut it.
        #[test]
        fn a_framed_body_comes_back_whole(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            chunk in 1usize..64,
            chunked in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
            if chunked {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in body.chunks(chunk) {
                    wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    wire.extend_from_slice(c);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            } else {
                wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                wire.extend_from_slice(&body);
            }
            let (reply, keep) = read_cut(&wire, &cuts).unwrap_or_else(|f| panic!("{}", f.error));
            prop_assert_eq!((reply.status, reply.body.to_vec(), keep), (200, body, true));
        }
    }
}
