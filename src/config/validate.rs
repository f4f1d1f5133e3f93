//! Raw shape -> validated [`Config`]: `Config::validate` and one `validate_*` function per
//! section. Every check lives here, secrets are loaded here (a missing env var or file is a
//! config error), defaults are filled in here (from `defaults`), and every error names its
//! key path (`sink.splunk.batch.max_events`), never a secret's value. It builds the types of
//! `mod.rs` and must not reach into the runtime (server, ingest, spool, pipeline, sender, the
//! CLI) nor name a sink type: a sink's own keys go to its type's `configure`, found in the
//! catalog the caller passed.

use super::raw::{
    OneOrMany, RawConfig, RawDedupe, RawLog, RawServer, RawSinkCommon, RawSource, RawSpool,
};
use super::{
    defaults, from_value, Ack, AdminConfig, BatchLimits, Config, ConfigError, DedupeBackend,
    DedupeConfig, Field, FieldMap, FsyncPolicy, Handshake, HmacAlgorithm, HmacScheme, LogConfig,
    LogFormat, OnError, RedisConfig, Scheme, ServerConfig, SignedTimestamp, SinkCatalog,
    SinkCommon, SinkConfig, SourceConfig, SourceSecret, SpoolConfig, TimeField, TimestampFrom,
    TypeFilter, MIN_SECRET_BYTES,
};
use crate::secret::{Secret, SecretRef};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Config {
    /// Turns the raw shape into the validated config. Each section, source and sink is
    /// checked even when an earlier one failed, so the error lists every problem found (one
    /// per section, source or sink: within one, the first); a check that needs another
    /// section's value uses its default when that section failed.
    pub fn validate<C: SinkCatalog + ?Sized>(
        raw: RawConfig,
        sink_types: &C,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let server = keep(&mut errors, validate_server(raw.server));
        let log = keep(&mut errors, validate_log(raw.log));
        let admin_listen = raw
            .admin
            .listen
            .unwrap_or_else(|| defaults::ADMIN_LISTEN.to_string());
        let token = match &raw.admin.token {
            None => None,
            Some(r) => {
                if r.is_inline() {
                    warnings.push("admin.token: token given inline in the config file; prefer { env = \"NAME\" } or { file = \"PATH\" }".into());
                }
                let token = r
                    .load()
                    .map_err(|e| ConfigError::invalid("admin.token", e.to_string()))
                    .and_then(|t| {
                        if t.expose().len() < 16 {
                            Err(ConfigError::invalid(
                                "admin.token",
                                "must be at least 16 bytes (vfgate keygen makes one)",
                            ))
                        } else {
                            Ok(t)
                        }
                    });
                keep(&mut errors, token)
            }
        };
        let spool_given = raw.spool.is_some();
        let spool = raw
            .spool
            .map(|s| keep(&mut errors, validate_spool(s)))
            .unwrap_or(None);
        let persist_off = raw.dedupe.persist == Some(false);
        let dedupe = keep(
            &mut errors,
            validate_dedupe(raw.dedupe, spool.as_ref().map(|s| s.dir.as_path())),
        );
        if persist_off {
            warnings.push("dedupe.persist = false: delivered event ids are kept in memory only, so after a restart a replay of an event inside max_event_age is accepted (and delivered) again".into());
        }
        if let (Some(sp), Some(server)) = (&spool, &server) {
            if sp.max_bytes < 2 * server.max_body_bytes {
                errors.push(ConfigError::invalid(
                    "spool.max_bytes",
                    format!(
                        "must be at least twice server.max_body_bytes ({} bytes)",
                        server.max_body_bytes
                    ),
                ));
            }
        }
        let admin = keep(
            &mut errors,
            parse_addr("admin.listen", &admin_listen).map(|listen| AdminConfig {
                listen,
                token,
                failed_dir: raw
                    .admin
                    .failed_dir
                    .clone()
                    .or_else(|| spool.as_ref().map(|s| s.dir.join("dead-letter")))
                    .unwrap_or_else(|| PathBuf::from(defaults::FAILED_DIR)),
            }),
        );
        if let (Some(server), Some(admin)) = (&server, &admin) {
            if server.listen.contains(&admin.listen) {
                errors.push(ConfigError::invalid(
                    "admin.listen",
                    "must differ from server.listen (the admin listener never serves webhooks)",
                ));
            }
        }

        // A source may name a sink whose own keys are wrong: that sink's error is reported,
        // not a second "no such sink" for each source naming it.
        let defined: HashSet<String> = raw.sink.keys().cloned().collect();
        let mut sinks = Vec::new();
        for (name, table) in raw.sink {
            let skip_verify = table
                .get("tls")
                .and_then(|t| t.get("insecure_skip_verify"))
                .and_then(toml::Value::as_bool)
                == Some(true);
            let kind = table
                .get("type")
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(sink) = keep(&mut errors, validate_sink(&name, table, sink_types)) {
                sinks.push(sink);
            }
            if skip_verify {
                let also = if kind == "azure_logs_ingestion" {
                    " (nor the Azure token endpoint's: the client secret could go to an impostor)"
                } else {
                    ""
                };
                warnings.push(format!("sink.{name}.tls.insecure_skip_verify: the upstream certificate is NOT verified{also}; anyone on the path can read and alter what this sink sends"));
            }
        }
        let sink_names: HashSet<&str> = defined.iter().map(String::as_str).collect();

        if raw.source.is_empty() {
            errors.push(ConfigError::invalid(
                "source",
                "at least one [[source]] is required",
            ));
        }
        let ttl = dedupe.as_ref().map_or(defaults::DEDUPE_TTL, |d| d.ttl);
        let mut sources = Vec::new();
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            let Some(src) = keep(
                &mut errors,
                validate_source(i, s, ttl, &sink_names, &mut warnings),
            ) else {
                continue;
            };
            // A [spool] section with an error has been reported already.
            if src.ack == Ack::Spool && !spool_given {
                errors.push(ConfigError::invalid(
                    format!("source[{i}].ack"),
                    "\"spool\" needs a [spool] section with a dir",
                ));
            }
            if !names.insert(src.name.clone()) {
                errors.push(ConfigError::invalid(
                    format!("source[{i}].name"),
                    format!("duplicate source name {:?}", src.name),
                ));
            }
            if !paths.insert(src.path.clone()) {
                errors.push(ConfigError::invalid(
                    format!("source[{i}].path"),
                    format!("path {:?} is used by another source", src.path),
                ));
            }
            sources.push(src);
        }
        match (server, admin, dedupe, log) {
            (Some(server), Some(admin), Some(dedupe), Some(log)) if errors.is_empty() => {
                Ok(Config {
                    server,
                    admin,
                    dedupe,
                    spool,
                    sources,
                    sinks,
                    log,
                    warnings,
                })
            }
            _ => Err(ConfigError::many(errors)),
        }
    }
}

/// The value of `r`, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

fn validate_log(raw: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw.format.as_deref().unwrap_or(defaults::LOG_FORMAT) {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::invalid(
                "log.format",
                format!("must be \"text\" or \"json\", got {other:?}"),
            ))
        }
    };
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint = "write error, warn, info, debug or trace, or directives such as \"info,vfgate::dedupe=debug\"";
    // A bare word would be taken as a target name, so a typo ("inof") would log nothing.
    if let Some(bad) = level
        .split(',')
        .map(str::trim)
        .find(|d| !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()))
    {
        return Err(ConfigError::invalid(
            "log.level",
            format!("{bad:?} is not a level ({hint})"),
        ));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| ConfigError::invalid("log.level", format!("{e} ({hint})")))?;
    Ok(LogConfig { format, level })
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
        )
    })
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen_raw = match raw.listen {
        None => vec![defaults::LISTEN.to_string()],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if listen_raw.is_empty() {
        return Err(ConfigError::invalid(
            "server.listen",
            "at least one address is required",
        ));
    }
    let mut listen = Vec::new();
    for (i, a) in listen_raw.iter().enumerate() {
        let key = if listen_raw.len() == 1 {
            "server.listen".to_string()
        } else {
            format!("server.listen[{i}]")
        };
        let addr = parse_addr(&key, a)?;
        if listen.contains(&addr) {
            return Err(ConfigError::invalid(key, "listed twice"));
        }
        listen.push(addr);
    }
    let max_body_bytes = raw
        .max_body_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::MAX_BODY_BYTES);
    if !(64..=64 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(ConfigError::invalid(
            "server.max_body_bytes",
            "must be between 64 bytes and 64 MiB",
        ));
    }
    let body_timeout = raw
        .body_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::BODY_TIMEOUT);
    if body_timeout < Duration::from_millis(100) {
        return Err(ConfigError::invalid(
            "server.body_timeout",
            "must be at least 100ms",
        ));
    }
    let max_inflight_body_bytes = raw
        .max_inflight_body_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::MAX_INFLIGHT_BODY_BYTES);
    if max_inflight_body_bytes < max_body_bytes {
        return Err(ConfigError::invalid(
            "server.max_inflight_body_bytes",
            format!("must be at least server.max_body_bytes ({max_body_bytes} bytes)"),
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::invalid(
            "server.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let header_timeout = raw
        .header_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::HEADER_TIMEOUT);
    if header_timeout < Duration::from_millis(100) {
        return Err(ConfigError::invalid(
            "server.header_timeout",
            "must be at least 100ms",
        ));
    }
    let keepalive_timeout = raw
        .keepalive_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::KEEPALIVE_TIMEOUT);
    if keepalive_timeout < header_timeout {
        return Err(ConfigError::invalid(
            "server.keepalive_timeout",
            format!(
                "must be at least server.header_timeout ({}): it covers the wait for the next request and its head",
                humantime::format_duration(header_timeout)
            ),
        ));
    }
    let threads = match raw.threads {
        Some(0) => return Err(ConfigError::invalid("server.threads", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            for (k, p) in [("server.tls.cert", &t.cert), ("server.tls.key", &t.key)] {
                std::fs::metadata(p).map_err(|e| {
                    ConfigError::invalid(k, format!("cannot read {}: {e}", p.display()))
                })?;
            }
            Some((t.cert, t.key))
        }
    };
    Ok(ServerConfig {
        listen,
        grace_period: raw
            .grace_period
            .map(|d| d.0)
            .unwrap_or(defaults::GRACE_PERIOD),
        max_body_bytes,
        body_timeout,
        max_inflight_body_bytes,
        max_connections,
        header_timeout,
        keepalive_timeout,
        trusted_proxies: validate_proxies(&raw.trusted_proxies)?,
        tls,
        threads,
    })
}

/// `server.trusted_proxies`: each an address (`10.0.0.7`) or a range (`10.0.0.0/8`).
fn validate_proxies(raw: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, p)| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::invalid(
                        format!("server.trusted_proxies[{i}]"),
                        format!("{p:?} is not an address like 10.0.0.7 or a range like 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

fn validate_dedupe(raw: RawDedupe, spool_dir: Option<&Path>) -> Result<DedupeConfig, ConfigError> {
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            for (k, set) in [
                ("url", raw.url.is_some()),
                ("password", raw.password.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
                ("on_error", raw.on_error.is_some()),
                ("timeout", raw.timeout.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("dedupe.{k}"),
                        "only used with backend = \"redis\"",
                    ));
                }
            }
            DedupeBackend::Memory
        }
        "redis" => {
            for (k, set) in [
                ("dir", raw.dir.is_some()),
                ("persist", raw.persist.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("dedupe.{k}"),
                        "only used with backend = \"memory\" (Redis keeps the ids itself)",
                    ));
                }
            }
            let url = raw.url.clone().ok_or_else(|| {
                ConfigError::invalid(
                    "dedupe.url",
                    "required with backend = \"redis\" (redis://host:6379/0)",
                )
            })?;
            let parsed: http::Uri = url
                .replacen("redis://", "http://", 1)
                .replacen("rediss://", "https://", 1)
                .parse()
                .map_err(|_| {
                    ConfigError::invalid("dedupe.url", "not a redis:// or rediss:// URL")
                })?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://"))
                || parsed.host().is_none()
            {
                return Err(ConfigError::invalid(
                    "dedupe.url",
                    "must be redis://host:port/db or rediss://host:port/db",
                ));
            }
            let display = format!(
                "{}:{}",
                parsed.host().unwrap_or(""),
                parsed.port_u16().unwrap_or(6379)
            );
            let password = match &raw.password {
                None => None,
                Some(r) => Some(
                    r.load()
                        .map_err(|e| ConfigError::invalid("dedupe.password", e.to_string()))?,
                ),
            };
            let on_error = match raw.on_error.as_deref().unwrap_or("reject") {
                "reject" => OnError::Reject,
                "allow" => OnError::Allow,
                other => {
                    return Err(ConfigError::invalid(
                        "dedupe.on_error",
                        format!("{other:?}: use \"reject\" or \"allow\""),
                    ))
                }
            };
            let timeout = raw
                .timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(500));
            if timeout.is_zero() {
                return Err(ConfigError::invalid("dedupe.timeout", "must be above 0"));
            }
            DedupeBackend::Redis(RedisConfig {
                url: Secret::new(url.into_bytes()),
                display,
                password,
                key_prefix: raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "vfgate:dedupe:".to_string()),
                on_error,
                timeout,
            })
        }
        other => {
            return Err(ConfigError::invalid(
                "dedupe.backend",
                format!("unknown backend {other:?} (available: \"memory\", \"redis\")"),
            ))
        }
    };
    let ttl = raw.ttl.map(|d| d.0).unwrap_or(defaults::DEDUPE_TTL);
    if ttl < Duration::from_secs(1) {
        return Err(ConfigError::invalid("dedupe.ttl", "must be at least 1s"));
    }
    let in_flight_ttl = raw.in_flight_ttl.map(|d| d.0);
    if in_flight_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(ConfigError::invalid(
            "dedupe.in_flight_ttl",
            "must be at least 1s (a request renews its mark every third of it)",
        ));
    }
    let max_entries = raw.max_entries.unwrap_or(defaults::DEDUPE_MAX_ENTRIES);
    if !(1..=1_000_000_000).contains(&max_entries) {
        return Err(ConfigError::invalid(
            "dedupe.max_entries",
            "must be between 1 and 1000000000",
        ));
    }
    let journal = match backend {
        DedupeBackend::Memory if raw.persist.unwrap_or(defaults::DEDUPE_PERSIST) => match raw.dir {
            Some(d) if d.as_os_str().is_empty() => {
                return Err(ConfigError::invalid("dedupe.dir", "must not be empty"))
            }
            Some(d) => Some(d),
            None => spool_dir
                .map(|s| s.join("dedupe"))
                .or_else(|| Some(PathBuf::from(defaults::DEDUPE_DIR))),
        },
        _ => None,
    };
    let reject_when_full = match raw.on_full.as_deref().unwrap_or("evict") {
        "evict" => false,
        "reject" => true,
        other => {
            return Err(ConfigError::invalid(
                "dedupe.on_full",
                format!("{other:?}: use \"evict\" or \"reject\""),
            ))
        }
    };
    Ok(DedupeConfig {
        backend,
        ttl,
        max_entries,
        journal,
        reject_when_full,
        in_flight_ttl,
    })
}

fn validate_source(
    i: usize,
    raw: RawSource,
    ttl: Duration,
    sinks: &HashSet<&str>,
    warnings: &mut Vec<String>,
) -> Result<SourceConfig, ConfigError> {
    let key = |k: &str| format!("source[{i}].{k}");
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            key("name"),
            "must be non-empty and use only letters, digits, '_' and '-'",
        ));
    }
    if !raw.path.starts_with('/') || raw.path.contains('?') || raw.path.contains('#') {
        return Err(ConfigError::invalid(
            key("path"),
            "must start with '/' and contain no query or fragment",
        ));
    }
    if raw.secrets.is_empty() {
        return Err(ConfigError::invalid(
            key("secrets"),
            "at least one secret is required",
        ));
    }
    let mut secrets = Vec::new();
    for (j, s) in raw.secrets.into_iter().enumerate() {
        let skey = key(&format!("secrets[{j}]"));
        let reference = match (s.env, s.file, s.value) {
            (Some(env), None, None) if !env.is_empty() => SecretRef::Env { env },
            (None, Some(file), None) => SecretRef::File { file },
            (None, None, Some(value)) => SecretRef::Value { value },
            _ => {
                return Err(ConfigError::invalid(
                    skey,
                    "exactly one of env, file or value is required",
                ))
            }
        };
        let secret = reference
            .load()
            .map_err(|e| ConfigError::invalid(skey.clone(), e.to_string()))?;
        if reference.is_inline() {
            warnings.push(format!(
                "{skey}: secret given inline in the config file; prefer {{ env = \"NAME\" }} or {{ file = \"PATH\" }}"
            ));
        }
        if secret.expose().len() < MIN_SECRET_BYTES {
            warnings.push(format!(
                "{skey}: the secret ({}) is only {} bytes; use at least {MIN_SECRET_BYTES} random bytes (vfgate keygen makes 32)",
                reference.describe(),
                secret.expose().len()
            ));
        }
        let not_after = match s.not_after {
            None => None,
            Some(t) => Some(
                crate::time::parse_rfc3339_s(&t)
                    .map_err(|e| ConfigError::invalid(format!("{skey}.not_after"), e))?,
            ),
        };
        secrets.push(SourceSecret {
            reference,
            secret,
            not_after,
        });
    }
    let now_s = crate::time::now_ms() / 1000;
    if secrets
        .iter()
        .all(|s| s.not_after.is_some_and(|t| t <= now_s))
    {
        warnings.push(format!(
            "{}: every secret is past its not_after: this source refuses every request (401) until a current secret is added",
            key("secrets")
        ));
    }
    let versions_given = raw.versions.is_some() || raw.require_version.is_some();
    let versions = raw.versions.unwrap_or_else(|| vec!["1".to_string()]);
    if versions.is_empty() || versions.iter().any(|v| v.is_empty()) {
        return Err(ConfigError::invalid(
            key("versions"),
            "must list at least one non-empty version",
        ));
    }
    let max_event_age = raw.max_event_age.map(|d| d.0).unwrap_or(ttl);
    if max_event_age > ttl {
        return Err(ConfigError::invalid(
            key("max_event_age"),
            format!(
                "must not exceed dedupe.ttl ({}): an older event could be a forgotten duplicate",
                humantime::format_duration(ttl)
            ),
        ));
    }
    let event_types = validate_event_types(&key("event_types"), raw.event_types)?;
    if raw.sinks.is_empty() {
        return Err(ConfigError::invalid(
            key("sinks"),
            "at least one sink is required",
        ));
    }
    for (j, s) in raw.sinks.iter().enumerate() {
        if !sinks.contains(s.as_str()) {
            return Err(ConfigError::invalid(
                key(&format!("sinks[{j}]")),
                format!("no [sink.{s}] is defined"),
            ));
        }
        if raw.sinks[..j].contains(s) {
            return Err(ConfigError::invalid(
                key(&format!("sinks[{j}]")),
                "listed twice",
            ));
        }
    }
    let (scheme, fields) = validate_scheme(
        i,
        SchemeKeys {
            scheme: raw.scheme,
            tolerance: raw.tolerance,
            hmac: raw.hmac,
            shared_secret: raw.shared_secret,
            fields: raw.fields,
            versions_given,
        },
        &secrets,
        ttl,
        warnings,
    )?;
    let ack = match raw.ack.as_deref().unwrap_or("forward") {
        "forward" => Ack::Forward,
        "spool" => Ack::Spool,
        other => {
            return Err(ConfigError::invalid(
                key("ack"),
                format!("must be \"forward\" or \"spool\", got {other:?}"),
            ))
        }
    };
    let handshake = match raw.handshake.as_deref() {
        None => None,
        Some("slack") if matches!(scheme, Scheme::Hmac(_)) => Some(Handshake::Slack),
        Some("okta") if matches!(scheme, Scheme::SharedSecret { .. }) => Some(Handshake::Okta),
        Some("slack") => {
            return Err(ConfigError::invalid(
                key("handshake"),
                "\"slack\" answers Slack's url_verification, which a source of scheme = \"hmac\" verifies (preset = \"slack\")",
            ))
        }
        Some("okta") => {
            return Err(ConfigError::invalid(
                key("handshake"),
                "\"okta\" answers Okta's verification GET, for a source of scheme = \"shared-secret\" (preset = \"okta\")",
            ))
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                key("handshake"),
                format!("must be \"slack\" or \"okta\", got {other:?}"),
            ))
        }
    };
    Ok(SourceConfig {
        name: raw.name,
        path: raw.path,
        secrets,
        scheme,
        fields,
        versions,
        require_version: raw.require_version.unwrap_or(defaults::REQUIRE_VERSION),
        max_event_age,
        max_future_skew: raw
            .max_future_skew
            .map(|d| d.0)
            .unwrap_or(defaults::MAX_FUTURE_SKEW),
        event_types,
        sinks: raw.sinks,
        ack,
        preset: raw.preset,
        handshake,
    })
}

fn validate_spool(raw: RawSpool) -> Result<SpoolConfig, ConfigError> {
    if raw.dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid("spool.dir", "must not be empty"));
    }
    let max_bytes = raw
        .max_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::SPOOL_MAX_BYTES);
    if max_bytes < 64 * 1024 {
        return Err(ConfigError::invalid(
            "spool.max_bytes",
            "must be at least 64KiB",
        ));
    }
    let fsync = match raw.fsync.as_deref().unwrap_or("batch") {
        "batch" => FsyncPolicy::Batch,
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        other => {
            return Err(ConfigError::invalid(
                "spool.fsync",
                format!("must be \"batch\", \"always\" or \"never\", got {other:?}"),
            ))
        }
    };
    let max_age = raw.max_age.map(|d| d.0).unwrap_or(defaults::SPOOL_MAX_AGE);
    if max_age < Duration::from_secs(1) {
        return Err(ConfigError::invalid("spool.max_age", "must be at least 1s"));
    }
    let segment_bytes = match raw.segment_bytes {
        Some(b) if b.0 < 4096 => {
            return Err(ConfigError::invalid(
                "spool.segment_bytes",
                "must be at least 4KiB",
            ))
        }
        Some(b) => b.0,
        None => defaults::SPOOL_SEGMENT_BYTES.min(max_bytes / 8),
    };
    Ok(SpoolConfig {
        dir: raw.dir,
        max_bytes,
        fsync,
        max_age,
        segment_bytes,
    })
}

fn validate_event_types(key: &str, raw: Option<Vec<String>>) -> Result<TypeFilter, ConfigError> {
    let list = raw.unwrap_or_else(|| vec!["*".to_string()]);
    if list.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "must list at least one type (\"*\" for all)",
        ));
    }
    if list.iter().any(|t| t == "*") {
        return Ok(TypeFilter::All);
    }
    let mut exact = Vec::new();
    let mut prefixes = Vec::new();
    for (j, t) in list.into_iter().enumerate() {
        if let Some(p) = t.strip_suffix(".*") {
            if p.is_empty() || p.contains('*') {
                return Err(ConfigError::invalid(
                    format!("{key}[{j}]"),
                    format!("{t:?}: a prefix is written \"word.*\""),
                ));
            }
            prefixes.push(format!("{p}."));
        } else if t.is_empty() || t.contains('*') {
            return Err(ConfigError::invalid(
                format!("{key}[{j}]"),
                format!("{t:?}: use \"*\", an exact type or a prefix \"word.*\""),
            ));
        } else {
            exact.push(t);
        }
    }
    Ok(TypeFilter::Some { exact, prefixes })
}

fn validate_sink<C: SinkCatalog + ?Sized>(
    name: &str,
    table: toml::Table,
    sink_types: &C,
) -> Result<SinkConfig, ConfigError> {
    let key = format!("sink.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            key,
            "a sink name uses only letters, digits, '_' and '-'",
        ));
    }
    if !table.contains_key("type") {
        return Err(ConfigError::invalid(
            format!("{key}.type"),
            format!("missing (one of: {})", sink_types.names().join(", ")),
        ));
    }
    let fingerprint = {
        use sha2::Digest;
        // toml::Table is ordered by key, so equal tables give equal text.
        sha2::Sha256::digest(toml::to_string(&table).unwrap_or_default().as_bytes()).into()
    };
    let raw: RawSinkCommon = from_value(&key, toml::Value::Table(table))?;
    let max_events = raw.batch.max_events.unwrap_or(defaults::BATCH_MAX_EVENTS);
    if !(1..=defaults::MAX_BATCH_EVENTS).contains(&max_events) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.max_events"),
            format!("must be between 1 and {}", defaults::MAX_BATCH_EVENTS),
        ));
    }
    let max_bytes = raw
        .batch
        .max_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::BATCH_MAX_BYTES);
    if !(1..=1024 * 1024 * 1024).contains(&max_bytes) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.max_bytes"),
            "must be between 1 byte and 1 GiB",
        ));
    }
    let linger = raw
        .batch
        .linger
        .map(|d| d.0)
        .unwrap_or(defaults::BATCH_LINGER);
    if linger > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.linger"),
            "must be at most 60s",
        ));
    }
    let timeout = raw.timeout.map(|d| d.0).unwrap_or(defaults::SINK_TIMEOUT);
    if timeout < Duration::from_millis(1) {
        return Err(ConfigError::invalid(
            format!("{key}.timeout"),
            "must be at least 1ms",
        ));
    }
    let retry_budget = raw
        .retry
        .budget
        .map(|d| d.0)
        .unwrap_or(defaults::RETRY_BUDGET);
    let concurrency = raw.concurrency.unwrap_or(defaults::SINK_CONCURRENCY);
    if !(1..=1024).contains(&concurrency) {
        return Err(ConfigError::invalid(
            format!("{key}.concurrency"),
            "must be between 1 and 1024",
        ));
    }
    let Some(kind) = sink_types.kind(&raw.kind) else {
        return Err(ConfigError::invalid(
            format!("{key}.type"),
            format!(
                "unknown sink type {:?} (one of: {})",
                raw.kind,
                sink_types.names().join(", ")
            ),
        ));
    };
    if max_events > kind.max_events {
        return Err(ConfigError::invalid(
            format!("{key}.batch.max_events"),
            format!(
                "must be between 1 and {} for a {} sink",
                kind.max_events, kind.name
            ),
        ));
    }
    let common = SinkCommon {
        name: name.to_string(),
        kind: raw.kind,
        batch: BatchLimits {
            max_events,
            max_bytes,
            linger,
        },
        timeout,
        retry_budget,
        concurrency,
    };
    let settings = (kind.configure)(&common, raw.rest)?;
    Ok(SinkConfig {
        common,
        settings,
        fingerprint,
    })
}

/// The scheme keys of one `[[source]]`, as written (a preset's are read straight into it).
#[derive(serde::Deserialize)]
struct SchemeKeys {
    scheme: Option<super::raw::RawScheme>,
    tolerance: Option<super::DurationStr>,
    hmac: Option<super::raw::RawHmac>,
    shared_secret: Option<super::raw::RawSharedSecret>,
    fields: Option<super::raw::RawFields>,
    #[serde(skip)]
    versions_given: bool,
}

/// `source[i]`'s scheme and field map. A Standard Webhooks source's secrets must read as
/// `whsec_` or `whpk_` keys (a malformed one, or a `whsk_` secret key, is an error naming it);
/// they are kept as written.
fn validate_scheme(
    i: usize,
    raw: SchemeKeys,
    secrets: &[SourceSecret],
    ttl: Duration,
    warnings: &mut Vec<String>,
) -> Result<(Scheme, FieldMap), ConfigError> {
    use super::raw::{RawField, RawScheme};
    let key = |k: &str| format!("source[{i}].{k}");
    let kind = raw.scheme.unwrap_or(RawScheme::Vf);
    let only =
        |k: &str, what: &str| ConfigError::invalid(key(k), format!("only for scheme = {what}"));
    let signs_time = raw.hmac.as_ref().is_some_and(|h| h.timestamp.is_some());
    if kind != RawScheme::StandardWebhooks && !signs_time && raw.tolerance.is_some() {
        return Err(only(
            "tolerance",
            "\"standard-webhooks\", or \"hmac\" with a signed hmac.timestamp",
        ));
    }
    if kind != RawScheme::SharedSecret && raw.shared_secret.is_some() {
        return Err(only("shared_secret", "\"shared-secret\""));
    }
    if kind != RawScheme::Hmac && raw.hmac.is_some() {
        return Err(only("hmac", "\"hmac\""));
    }
    if kind != RawScheme::Vf && raw.versions_given {
        return Err(only("versions", "\"vf\" (X-VF-Webhook-Version)"));
    }
    if kind == RawScheme::Vf {
        if raw.fields.is_some() {
            return Err(ConfigError::invalid(
                key("fields"),
                "a vf source's fields are fixed (event_id, event_type, timestamp, context.org_id)",
            ));
        }
        return Ok((Scheme::Vf, FieldMap::default()));
    }
    let raw_fields = raw.fields.unwrap_or_default();
    let field = |k: &str, f: Option<RawField>| -> Result<Option<Field>, ConfigError> {
        match f {
            None => Ok(None),
            Some(RawField::Pointer(p)) if p.starts_with('/') => Ok(Some(Field::Pointer(p))),
            Some(RawField::Pointer(p)) => Err(ConfigError::invalid(
                key(&format!("fields.{k}")),
                format!("{p:?} is not a JSON pointer (write \"/data/id\")"),
            )),
            Some(RawField::Header { header }) if is_header_name(&header) => {
                Ok(Some(Field::Header(header.to_ascii_lowercase())))
            }
            Some(RawField::Header { header }) => Err(ConfigError::invalid(
                key(&format!("fields.{k}.header")),
                format!("{header:?} is not a header name"),
            )),
        }
    };
    let event_type = field("event_type", raw_fields.event_type)?;
    let org_id = field("org_id", raw_fields.org_id)?;
    if kind == RawScheme::StandardWebhooks {
        for k in ["event_id", "timestamp"] {
            let given = match k {
                "event_id" => raw_fields.event_id.is_some(),
                _ => raw_fields.timestamp.is_some(),
            };
            if given {
                return Err(ConfigError::invalid(
                    key(&format!("fields.{k}")),
                    "a standard-webhooks source takes it from the signed webhook-id / webhook-timestamp headers",
                ));
            }
        }
        let tolerance = tolerance_within(&key("tolerance"), raw.tolerance, ttl)?;
        // Each secret must be a key of the scheme; it is kept as written (the verifier reads
        // it again: a whsec_ key for v1, a whpk_ public key for v1a).
        for (j, s) in secrets.iter().enumerate() {
            use crate::secret::StandardWebhooksKey;
            let k = key(&format!("secrets[{j}]"));
            match crate::secret::standard_webhooks_key_of(&s.secret) {
                Ok(StandardWebhooksKey::Private(_)) => {
                    return Err(ConfigError::invalid(
                        k,
                        "a whsk_ secret key signs: give the gateway the sender's whpk_ public key instead (it verifies and cannot forge)",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(ConfigError::invalid(k, e.to_string())),
            }
        }
        let fields = FieldMap {
            event_id: None,
            event_type,
            timestamp: None,
            org_id,
        };
        return Ok((Scheme::StandardWebhooks { tolerance }, fields));
    }
    // hmac and shared-secret: the id (and time) come from the field map
    let (scheme, signs_time) = if kind == RawScheme::SharedSecret {
        let Some(ss) = raw.shared_secret else {
            return Err(ConfigError::invalid(
                key("shared_secret"),
                "required for scheme = \"shared-secret\": { header = \"Authorization\" }",
            ));
        };
        if !is_header_name(&ss.header) {
            return Err(ConfigError::invalid(
                key("shared_secret.header"),
                format!("{:?} is not a header name", ss.header),
            ));
        }
        warnings.push(format!(
            "{}: a shared secret in a header authenticates the sender but does not protect the body: anyone who sees one request can send any body with it (use a signing scheme where the sender offers one)",
            key("scheme")
        ));
        let header = ss.header.to_ascii_lowercase();
        (Scheme::SharedSecret { header }, false)
    } else {
        let Some(h) = raw.hmac else {
            return Err(ConfigError::invalid(
                key("hmac"),
                "required for scheme = \"hmac\": { header = \"X-Hub-Signature-256\", prefix = \"sha256=\", encoding = \"hex\", algorithm = \"sha256\" }",
            ));
        };
        let h = hmac_scheme(&key, h, raw.tolerance, ttl, warnings)?;
        let signs_time = h.timestamp.is_some();
        (Scheme::Hmac(h), signs_time)
    };
    let Some(event_id) = field("event_id", raw_fields.event_id)? else {
        return Err(ConfigError::invalid(
            key("fields.event_id"),
            format!("required for scheme = \"{}\" (a JSON pointer or {{ header = \"...\" }}): without an id there is no dedupe", scheme.as_str()),
        ));
    };
    let time_field = match raw_fields.timestamp {
        Some(RawField::Pointer(p)) if p == "received" => TimeField::Received,
        Some(RawField::Pointer(p)) if p == "signed" && signs_time => TimeField::Signed,
        Some(RawField::Pointer(p)) if p.starts_with('/') => TimeField::Pointer(p),
        None if signs_time => TimeField::Signed,
        None => TimeField::Received,
        Some(_) => {
            return Err(ConfigError::invalid(
                key("fields.timestamp"),
                "a JSON pointer to an RFC 3339 string or unix seconds, \"received\", or (with a signed hmac.timestamp) \"signed\"",
            ))
        }
    };
    if time_field == TimeField::Received && !signs_time {
        warnings.push(format!(
            "{}: the event time is the time of receipt, so there is no age check: a replayed request is refused only while its id is remembered (dedupe.ttl)",
            key("fields.timestamp")
        ));
    }
    let fields = FieldMap {
        event_id: Some(event_id),
        event_type,
        timestamp: Some(time_field),
        org_id,
    };
    Ok((scheme, fields))
}

/// The scheme and field map a preset stands for (what a sender signs for, in `vfgate sign`
/// and `send --preset`); `None` for an unknown name.
pub fn preset_scheme(name: &str) -> Option<(Scheme, FieldMap)> {
    let preset = super::presets::find(name)?;
    // The preset's other keys (handshake) are not the scheme's; serde passes over them.
    let keys: SchemeKeys = toml::from_str(preset.toml).expect("every preset parses (tested)");
    let scheme = validate_scheme(0, keys, &[], Duration::MAX, &mut Vec::new());
    Some(scheme.expect("every preset validates (tested)"))
}

/// `source[i].hmac`, validated.
fn hmac_scheme(
    key: &impl Fn(&str) -> String,
    h: super::raw::RawHmac,
    tolerance: Option<super::DurationStr>,
    ttl: Duration,
    warnings: &mut Vec<String>,
) -> Result<HmacScheme, ConfigError> {
    if !is_header_name(&h.header) {
        return Err(ConfigError::invalid(
            key("hmac.header"),
            format!("{:?} is not a header name", h.header),
        ));
    }
    let param = match h.param {
        Some(p) if !p.is_empty() && is_header_name(&p) => {
            if !h.prefix.is_empty() {
                return Err(ConfigError::invalid(
                    key("hmac.prefix"),
                    "not with hmac.param: the MACs are the values of that key in a key=value list",
                ));
            }
            Some(p)
        }
        Some(p) => {
            return Err(ConfigError::invalid(
                key("hmac.param"),
                format!("{p:?} is not a key such as \"v1\""),
            ))
        }
        None => None,
    };
    let signed = signed_layout(&key, h.signed.as_deref())?;
    let timestamp = match (signed, h.timestamp) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                key("hmac.timestamp"),
                "hmac.signed has no {timestamp}: write e.g. signed = \"{timestamp}.{body}\"",
            ))
        }
        (Some(_), None) => return Err(ConfigError::invalid(
            key("hmac.timestamp"),
            "required when hmac.signed has {timestamp}: { header = \"...\" } or { param = \"t\" }",
        )),
        (Some((before, between)), Some(from)) => {
            use super::raw::RawTimestampFrom;
            let from = match from {
                RawTimestampFrom::Header { header } if is_header_name(&header) => {
                    TimestampFrom::Header(header.to_ascii_lowercase())
                }
                RawTimestampFrom::Header { header } => {
                    return Err(ConfigError::invalid(
                        key("hmac.timestamp.header"),
                        format!("{header:?} is not a header name"),
                    ))
                }
                RawTimestampFrom::Param { param: t } if param.is_some() && is_header_name(&t) => {
                    TimestampFrom::Param(t)
                }
                RawTimestampFrom::Param { .. } => {
                    return Err(ConfigError::invalid(
                        key("hmac.timestamp.param"),
                        "needs hmac.param (the signature header as a key=value list) and a key such as \"t\"",
                    ))
                }
            };
            Some(SignedTimestamp {
                from,
                before,
                between,
                tolerance: tolerance_within(&key("tolerance"), tolerance, ttl)?,
            })
        }
    };
    if h.algorithm == HmacAlgorithm::Sha1 {
        warnings.push(format!(
            "{}: HMAC-SHA1 is weak; use sha256 if the sender offers it",
            key("hmac.algorithm")
        ));
    }
    Ok(HmacScheme {
        header: h.header.to_ascii_lowercase(),
        prefix: h.prefix,
        encoding: h.encoding,
        algorithm: h.algorithm,
        param,
        timestamp,
    })
}

/// `source.tolerance` (default 5 minutes), which must not exceed the dedupe TTL.
fn tolerance_within(
    key: &str,
    given: Option<super::DurationStr>,
    ttl: Duration,
) -> Result<Duration, ConfigError> {
    let tolerance = given.map(|d| d.0).unwrap_or(defaults::TOLERANCE);
    if tolerance > ttl {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must not exceed dedupe.ttl ({}): a resend within the tolerance could be a forgotten duplicate",
                humantime::format_duration(ttl)
            ),
        ));
    }
    Ok(tolerance)
}

/// `hmac.signed`: `None` for the body alone (`"{body}"`, the default), or the signed text
/// before and after `{timestamp}` when the message is `<before>{timestamp}<between>{body}`.
fn signed_layout(
    key: &impl Fn(&str) -> String,
    signed: Option<&str>,
) -> Result<Option<(String, String)>, ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key("hmac.signed"), why.to_string());
    let Some(t) = signed else {
        return Ok(None);
    };
    let Some(head) = t.strip_suffix("{body}") else {
        return Err(bad("must end with {body}, e.g. \"{timestamp}.{body}\""));
    };
    if head.is_empty() {
        return Ok(None);
    }
    let Some((before, between)) = head.split_once("{timestamp}") else {
        return Err(bad(
            "text before {body} needs {timestamp}: \"{body}\", or e.g. \"v0:{timestamp}:{body}\"",
        ));
    };
    if [before, between]
        .iter()
        .any(|p| p.contains(['{', '}']) || p.contains(char::is_whitespace))
    {
        return Err(bad(
            "only {timestamp} and {body} may be written in braces, {timestamp} once, and no spaces",
        ));
    }
    Ok(Some((before.to_string(), between.to_string())))
}

/// An HTTP header name (RFC 9110 token).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filter_prefixes() {
        let f = validate_event_types("k", Some(vec!["user.*".into(), "vault.item.read".into()]))
            .unwrap();
        assert!(f.matches("user.x"));
        assert!(f.matches("user.login.failed"));
        assert!(!f.matches("user"));
        assert!(!f.matches("user."));
        assert!(!f.matches("users.x"));
        assert!(f.matches("vault.item.read"));
        assert!(!f.matches("vault.item.readx"));
        assert!(validate_event_types("k", Some(vec!["u*".into()])).is_err());
    }
}
