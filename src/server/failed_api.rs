//! The failed-deliveries API of the admin listener: `GET /admin/failed[?limit=N&after=ID]`
//! and `POST /admin/failed/{id}/replay`, behind the admin token. It lists and claims entries
//! of the dead-letter store and replays a spool dead letter through its sink as built now, a
//! sender-mode entry through `crate::sender::replay`. Store I/O runs on blocking threads,
//! not the admin runtime.

use super::admin::Admin;
use super::outcome::{error_body, respond, HttpResponse};
use pingora::http::Method;
use pingora::protocols::http::ServerSession;

impl Admin {
    pub(super) async fn failed_routes(
        &self,
        s: &ServerSession,
        method: &Method,
        path: &str,
    ) -> HttpResponse {
        if let Some(refused) = self.refuse_unauthorized(s) {
            return refused;
        }
        let rest = path.strip_prefix("/admin/failed").unwrap_or_default();
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        match (method, segments.as_slice()) {
            (&Method::GET, [] | [""]) => self.list_failed(s).await,
            (&Method::POST, ["", "replay"]) => respond(
                400,
                error_body("invalid_id", "the entry id is empty"),
                &[],
            ),
            (&Method::POST, [id, "replay"]) => self.replay_failed(id).await,
            _ => respond(
                404,
                error_body(
                    "not_found",
                    "admin routes: GET /admin/failed[?limit=N&after=ID], POST /admin/failed/{id}/replay, POST /admin/reload",
                ),
                &[],
            ),
        }
    }

    /// `GET /admin/failed?limit=&after=`: one page of entries, oldest first (file I/O on a
    /// blocking thread, not the admin runtime).
    async fn list_failed(&self, s: &ServerSession) -> HttpResponse {
        let mut limit = 100usize;
        let mut after: Option<String> = None;
        for pair in s.req_header().uri.query().unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("limit", v)) => match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => limit = n,
                    _ => {
                        return respond(
                            400,
                            error_body("invalid_query", "limit must be a number from 1 to 1000"),
                            &[],
                        )
                    }
                },
                Some(("after", v)) => after = Some(v.to_string()),
                _ => {}
            }
        }
        let store = self.failed.clone();
        let listing =
            tokio::task::spawn_blocking(move || store.list_page(after.as_deref(), limit)).await;
        match listing {
            Ok(Ok(l)) => {
                let next = if l.more {
                    l.entries.last().map(|e| e.id.clone())
                } else {
                    None
                };
                respond(
                    200,
                    serde_json::to_vec(&serde_json::json!({
                        "entries": l.entries,
                        "skipped": l.skipped,
                        "next": next,
                    }))
                    .expect("json"),
                    &[],
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin: cannot list the failed-deliveries store");
                respond(
                    500,
                    error_body("store_error", "the store cannot be read (see the log)"),
                    &[],
                )
            }
            Err(_) => respond(500, error_body("store_error", "listing was cancelled"), &[]),
        }
    }

    /// `POST /admin/failed/{id}/replay`: a spool dead letter goes to its sink only, straight
    /// through it; any other entry to its recorded target. The entry is claimed first (see
    /// [`crate::deadletter`]): a replay of it already in progress answers 409
    /// `replay_in_progress`, so only one caller is ever told `delivered`.
    async fn replay_failed(&self, id: &str) -> HttpResponse {
        use crate::deadletter::StoreError;
        let (store, key) = (self.failed.clone(), id.to_string());
        let claim = match tokio::task::spawn_blocking(move || store.claim(&key)).await {
            Ok(Ok(c)) => c,
            Ok(Err(StoreError::NotFound(_))) => {
                return respond(
                    404,
                    error_body("not_found", "no failed delivery with that id"),
                    &[],
                )
            }
            Ok(Err(StoreError::InProgress(_))) => {
                return respond(
                    409,
                    error_body(
                        "replay_in_progress",
                        "another replay of this entry is in progress",
                    ),
                    &[],
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin: cannot read a failed delivery");
                return respond(
                    500,
                    error_body("store_error", "the entry cannot be read (see the log)"),
                    &[],
                );
            }
            Err(_) => return respond(500, error_body("store_error", "cancelled"), &[]),
        };
        if let Some(sink) = claim.entry().sink_route().map(|(_, s)| s.to_string()) {
            let built = self.sinks.load().get(&sink).map(|l| l.load().sink.clone());
            let Some(built) = built else {
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || claim.release()).await {
                    tracing::error!(error = %e, "admin: cannot hand a claimed entry back");
                }
                return respond(
                    409,
                    error_body(
                        "unknown_sink",
                        "the entry's sink is not in the running config; entry kept",
                    ),
                    &[],
                );
            };
            return match crate::spool::drain::replay_to_sink(claim, &*built, &self.metrics).await {
                Ok(r) if r.delivered => respond(
                    200,
                    serde_json::to_vec(&serde_json::json!({"status": "delivered", "id": id, "sink": sink, "upstream_status": r.status})).expect("json"),
                    &[],
                ),
                Ok(r) => respond(
                    502,
                    error_body("upstream_error", &format!("sink {sink} did not take it (status {}); entry kept", r.status)),
                    &[],
                ),
                Err(e) => {
                    tracing::error!(error = %e, "admin: replay failed");
                    respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
                }
            };
        }
        match crate::sender::replay::replay_entry(claim, None, &[], crate::sender::DEFAULT_TIMEOUT, &crate::config::RawClientTls::default()).await {
            Ok(a) if a.ok() => respond(200, serde_json::to_vec(&serde_json::json!({"status": "delivered", "id": id, "upstream_status": a.status})).expect("json"), &[]),
            Ok(a) => respond(502, error_body("upstream_error", &format!("replay failed: {}; entry kept", a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()))), &[]),
            Err(e) => {
                tracing::error!(error = %e, "admin: replay failed");
                respond(500, error_body("replay_error", "the entry cannot be replayed (see the log)"), &[])
            }
        }
    }
}
