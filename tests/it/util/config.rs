//! A builder for the TOML that follows the gateway's generated `[server]`/`[admin]` header,
//! for the blocks most tests share: the signed `syvault` source, an HTTP or file sink, a spool
//! and a dedupe table. `{dir}` in any value is the gateway's temp dir (see `Gateway::start`).
//!
//! ```ignore
//! let cfg = Toml::new()
//!     .source(&["up"])
//!     .http_sink("up", &mock.url("/ingest"))
//!     .with(r#"timeout = "300ms""#)
//!     .build();
//! ```

/// Tables in the order added, each a header and its `key = value` lines.
#[derive(Clone, Default)]
pub struct Toml {
    tables: Vec<(String, Vec<String>)>,
}

impl Toml {
    pub fn new() -> Toml {
        Toml::default()
    }

    /// Opens a table (`[x]` or `[[x]]`); [`Toml::with`] adds keys to it.
    pub fn table(mut self, header: &str) -> Toml {
        self.tables.push((header.to_string(), Vec::new()));
        self
    }

    /// Sets `key = value` (one line) in the table opened last, replacing that key if set.
    pub fn with(mut self, line: &str) -> Toml {
        let i = self
            .tables
            .len()
            .checked_sub(1)
            .expect("open a table first");
        self.set(i, line);
        self
    }

    /// Sets `key = value` in the first table whose header is `header`, e.g. to change the
    /// source of a config a helper built.
    pub fn with_in(mut self, header: &str, line: &str) -> Toml {
        let i = self
            .tables
            .iter()
            .position(|(h, _)| h == header)
            .unwrap_or_else(|| panic!("no table {header}"));
        self.set(i, line);
        self
    }

    fn set(&mut self, table: usize, line: &str) {
        let key = |l: &str| l.split('=').next().unwrap().trim().to_string();
        let lines = &mut self.tables[table].1;
        match lines.iter().position(|l| key(l) == key(line)) {
            Some(j) => lines[j] = line.to_string(),
            None => lines.push(line.to_string()),
        }
    }

    /// `[dedupe]`, keys to follow.
    pub fn dedupe(self) -> Toml {
        self.table("[dedupe]")
    }

    /// `[spool]` in the gateway's dir (`{dir}/spool`).
    pub fn spool(self) -> Toml {
        self.table("[spool]").with(r#"dir = "{dir}/spool""#)
    }

    /// The source most tests use: `syvault` on `/v1/events`, signed with `VF_SECRET`.
    pub fn source(self, sinks: &[&str]) -> Toml {
        self.source_at("syvault", "/v1/events", sinks)
    }

    /// A source signed with `VF_SECRET` (replace `secrets` with [`Toml::with`]).
    pub fn source_at(self, name: &str, path: &str, sinks: &[&str]) -> Toml {
        let sinks: Vec<String> = sinks.iter().map(|s| format!("\"{s}\"")).collect();
        self.table("[[source]]")
            .with(&format!("name = \"{name}\""))
            .with(&format!("path = \"{path}\""))
            .with(r#"secrets = [{ env = "VF_SECRET" }]"#)
            .with(&format!("sinks = [{}]", sinks.join(", ")))
    }

    /// `[sink.name]` of type `kind`, keys to follow.
    pub fn sink(self, name: &str, kind: &str) -> Toml {
        self.table(&format!("[sink.{name}]"))
            .with(&format!("type = \"{kind}\""))
    }

    /// An HTTP sink posting to `url`.
    pub fn http_sink(self, name: &str, url: &str) -> Toml {
        self.sink(name, "http").with(&format!("url = \"{url}\""))
    }

    /// A file sink appending to `path`.
    pub fn file_sink(self, name: &str, path: &str) -> Toml {
        self.sink(name, "file").with(&format!("path = \"{path}\""))
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        for (header, lines) in &self.tables {
            out.push('\n');
            out.push_str(header);
            out.push('\n');
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
