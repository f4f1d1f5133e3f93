//! Provider presets: `preset = "github"` in a `[[source]]` stands for the keys that source
//! would otherwise write out (scheme, headers, signed layout, encodings, field map,
//! tolerance). A preset is TOML text, merged under the source's own table before anything
//! is read from it: a key written beside the preset wins (a table such as `hmac` or `fields`
//! key by key, each of its values whole), so a source written out by hand with the same keys
//! is the same source.
//! `vfgate check-config --explain` prints what each preset expanded to.
//!
//! Owns: the presets and the merge. A new preset is one [`Preset`] line in [`PRESETS`] (and
//! its example config and docs page entry). Uses only the `toml` crate.

/// One provider preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// `preset = "<name>"`.
    pub name: &'static str,
    /// The provider, for messages and docs.
    pub provider: &'static str,
    /// The source keys it stands for.
    pub toml: &'static str,
}

/// Every preset, by name.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "github",
        provider: "GitHub",
        toml: r#"
scheme = "hmac"
hmac = { header = "X-Hub-Signature-256", prefix = "sha256=", encoding = "hex", algorithm = "sha256" }
fields = { event_id = { header = "X-GitHub-Delivery" }, event_type = { header = "X-GitHub-Event" }, timestamp = "received", org_id = "/organization/login" }
"#,
    },
    Preset {
        name: "shopify",
        provider: "Shopify",
        toml: r#"
scheme = "hmac"
hmac = { header = "X-Shopify-Hmac-SHA256", encoding = "base64", algorithm = "sha256" }
fields = { event_id = { header = "X-Shopify-Webhook-Id" }, event_type = { header = "X-Shopify-Topic" }, timestamp = "received", org_id = { header = "X-Shopify-Shop-Domain" } }
"#,
    },
    Preset {
        name: "slack",
        provider: "Slack (Events API)",
        toml: r#"
scheme = "hmac"
hmac = { header = "X-Slack-Signature", prefix = "v0=", encoding = "hex", algorithm = "sha256", signed = "v0:{timestamp}:{body}", timestamp = { header = "X-Slack-Request-Timestamp" } }
tolerance = "5m"
fields = { event_id = "/event_id", event_type = "/event/type", timestamp = "/event_time", org_id = "/team_id" }
handshake = "slack"
"#,
    },
    Preset {
        name: "okta",
        provider: "Okta (event hooks)",
        toml: r#"
scheme = "shared-secret"
shared_secret = { header = "Authorization" }
fields = { event_id = "/eventId", event_type = "/eventType", timestamp = "/eventTime" }
handshake = "okta"
"#,
    },
    Preset {
        name: "stripe",
        provider: "Stripe",
        toml: r#"
scheme = "hmac"
hmac = { header = "Stripe-Signature", param = "v1", encoding = "hex", algorithm = "sha256", signed = "{timestamp}.{body}", timestamp = { param = "t" } }
tolerance = "5m"
fields = { event_id = "/id", event_type = "/type", timestamp = "/created", org_id = "/account" }
"#,
    },
    Preset {
        name: "standard-webhooks",
        provider: "Standard Webhooks (Svix and its adopters)",
        toml: r#"
scheme = "standard-webhooks"
tolerance = "5m"
fields = { event_type = "/type" }
"#,
    },
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names, for messages: `"github", "shopify", ...`.
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| format!("{:?}", p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a source's preset could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    /// `preset` is not a string.
    #[error("must be a string naming a preset: {0}")]
    NotAString(String),
    /// No such preset.
    #[error("unknown preset {name:?}; the presets are {known}")]
    Unknown {
        /// What was written.
        name: String,
        /// The known names.
        known: String,
    },
}

/// `source` with its `preset` key (if any) replaced by the preset's keys, the source's own
/// keys winning. Returns the preset's name too, `None` when the source names none.
pub fn expand(
    mut source: toml::Table,
) -> Result<(toml::Table, Option<&'static Preset>), PresetError> {
    let Some(value) = source.remove("preset") else {
        return Ok((source, None));
    };
    let name = match value {
        toml::Value::String(s) => s,
        _ => return Err(PresetError::NotAString(names())),
    };
    let preset = find(&name).ok_or_else(|| PresetError::Unknown {
        name,
        known: names(),
    })?;
    let mut merged: toml::Table = preset
        .toml
        .parse()
        .expect("every preset is valid TOML (tested)");
    merge(&mut merged, source);
    Ok((merged, Some(preset)))
}

/// Puts `over`'s keys into `base`: a table of the source (`hmac`, `fields`) is merged key by
/// key, one level deep; a value inside it (`hmac.timestamp`, `fields.event_id`) is replaced
/// whole, so an override is exactly what was written, never half the preset's.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => b.extend(o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// What `preset` expanded to in `source` (already expanded): the keys the preset sets, with
/// the source's overrides, one `key = value` line each (secrets, sinks and the like are not
/// the preset's, and not shown).
pub fn explain(preset: &Preset, expanded: &toml::Table) -> Vec<String> {
    let own: toml::Table = preset.toml.parse().expect("valid preset");
    own.keys()
        .filter_map(|k| expanded.get(k).map(|v| format!("{k} = {v}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_toml_with_a_scheme_that_validates() {
        for p in PRESETS {
            let t: toml::Table = p.toml.parse().unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(t.contains_key("scheme"), "{}", p.name);
            assert!(super::super::preset_scheme(p.name).is_some());
        }
        assert!(super::super::preset_scheme("gitlab").is_none());
    }

    #[test]
    fn keys_beside_a_preset_win_key_by_key() {
        let src: toml::Table = r#"
preset = "github"
name = "gh"
fields = { org_id = "/repository/owner/login" }
hmac = { algorithm = "sha512" }
"#
        .parse()
        .unwrap();
        let (t, p) = expand(src).unwrap();
        assert_eq!(p.unwrap().name, "github");
        assert!(!t.contains_key("preset"));
        assert_eq!(t["name"].as_str(), Some("gh"));
        assert_eq!(t["hmac"]["algorithm"].as_str(), Some("sha512"));
        assert_eq!(t["hmac"]["header"].as_str(), Some("X-Hub-Signature-256"));
        assert_eq!(
            t["fields"]["org_id"].as_str(),
            Some("/repository/owner/login")
        );
        assert_eq!(
            t["fields"]["event_id"]["header"].as_str(),
            Some("X-GitHub-Delivery")
        );
        let lines = explain(p.unwrap(), &t);
        assert!(
            lines.iter().any(|l| l.starts_with("scheme = \"hmac\"")),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.starts_with("name")));
    }

    #[test]
    fn a_nested_override_replaces_the_presets_value_whole() {
        let src: toml::Table = r#"
preset = "slack"
hmac = { timestamp = { param = "t" } }
fields = { event_id = { header = "X-Id" } }
"#
        .parse()
        .unwrap();
        let (t, _) = expand(src).unwrap();
        assert_eq!(t["hmac"]["timestamp"].as_table().unwrap().len(), 1);
        assert_eq!(t["hmac"]["timestamp"]["param"].as_str(), Some("t"));
        assert_eq!(t["fields"]["event_id"]["header"].as_str(), Some("X-Id"));
        assert_eq!(t["hmac"]["prefix"].as_str(), Some("v0="), "the rest stays");
    }

    #[test]
    fn an_unknown_preset_names_the_known_ones() {
        let src: toml::Table = "preset = \"gitlab\"".parse().unwrap();
        let e = expand(src).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown preset \"gitlab\"; the presets are \"github\""),
            "{e}"
        );
        let src: toml::Table = "preset = 1".parse().unwrap();
        assert!(expand(src).is_err());
        let none: toml::Table = "name = \"x\"".parse().unwrap();
        assert!(expand(none).unwrap().1.is_none());
    }
}
