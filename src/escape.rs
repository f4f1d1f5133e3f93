//! Outside text made safe to show: event ids and types, upstream answers, stored entries.
//!
//! Text that came from outside (a sender, an upstream, a file) must not move a terminal's
//! cursor, forge a log line, or be visually reordered by bidirectional controls (an id
//! `evt_<U+202E>gpj.exe` displays as `evt_exe.jpg`). Every code point that does not print as
//! itself ([`is_non_printing`]) is shown as an escape: controls as Rust's `escape_debug` writes
//! them (`\n`, `\u{1b}`, `\u{85}`), every other one as `\u{...}`; a backslash is doubled, so
//! an escape in the output always stands for an escaped code point.
//!
//! [`printable`] is for terminals (`vfgate failed list`, `send`); [`Printable`] wraps a value
//! for a `tracing` field (`event_id = ?Printable(&id)`: quoted, as `?` quotes a string), so the
//! log's safety does not rest on what the standard library's `Debug` happens to escape;
//! [`printable_json`] escapes the same code points inside serialised JSON as `\uXXXX`, which
//! keeps it valid and equal JSON (`vfgate failed show`).
//!
//! Owns: the escaping rules. Imports nothing of the crate, so any layer may use it.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Whether `c` does not print as itself: a control (C0, DEL, C1 with U+0085 NEXT LINE), a
/// format character (Unicode category Cf: the bidirectional controls U+061C, U+200E, U+200F,
/// U+202A–U+202E and U+2066–U+2069, zero-width and invisible characters, the byte order mark,
/// tag characters...), or the line and paragraph separators U+2028 and U+2029.
pub fn is_non_printing(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{890}'..='\u{891}'
            | '\u{8E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

fn needs_escape(c: char) -> bool {
    c == '\\' || is_non_printing(c)
}

/// Writes `text` escaped (see the module doc); with `quote`, `"` is escaped too.
fn escape_into(out: &mut impl Write, text: &str, quote: bool) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' if quote => out.write_str("\\\"")?,
            c if c.is_control() => write!(out, "{}", c.escape_debug())?,
            c if is_non_printing(c) => write!(out, "{}", c.escape_unicode())?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// `text` with every non-printing code point escaped, for a terminal (borrowed when there is
/// nothing to escape).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    escape_into(&mut out, text, false).expect("writing to a String cannot fail");
    Cow::Owned(out)
}

/// Outside text for a log field or a format string: `Display` writes it as [`printable`]
/// does, `Debug` quoted with `"` escaped too (as `?` shows a string).
#[derive(Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape_into(f, self.0, false)
    }
}

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        escape_into(f, self.0, true)?;
        f.write_char('"')
    }
}

/// Serialised JSON with every non-printing code point that the serialiser left raw (DEL, C1
/// controls, format characters, separators) written as a `\uXXXX` escape. Such code points
/// can only stand inside strings, where the escape means the same code point: the result is
/// the same JSON value.
pub fn printable_json(json: &str) -> Cow<'_, str> {
    let raw = |c: char| c >= '\u{7F}' && is_non_printing(c);
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(out, "\\u{u:04x}").expect("writing to a String cannot fail");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIDDEN: [char; 18] = [
        '\u{85}',
        '\u{61C}',
        '\u{200E}',
        '\u{200F}',
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{2028}',
        '\u{2029}',
        '\u{200B}',
        '\u{FEFF}',
        '\u{E0041}',
    ];

    #[test]
    fn printable_escapes_bidi_and_other_invisible_code_points() {
        for c in HIDDEN {
            let shown = printable(&format!("evt{c}1")).into_owned();
            assert_eq!(
                shown,
                format!("evt\\u{{{:x}}}1", c as u32),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn printable_keeps_ordinary_text_and_escapes_controls_and_backslashes() {
        assert!(matches!(printable("evt_1 ünïcødé 日本"), Cow::Borrowed(_)));
        assert_eq!(printable("a\n\u{1b}[31m\t\0b"), "a\\n\\u{1b}[31m\\t\\0b");
        // A literal backslash-u in the text cannot pass for an escaped code point.
        assert_eq!(printable("evt\\u{202e}"), "evt\\\\u{202e}");
        assert_eq!(printable("say \"hi\""), "say \"hi\"");
    }

    #[test]
    fn the_log_wrapper_quotes_like_debug_and_escapes_every_hidden_code_point() {
        // The same as the standard library's `Debug` for ordinary text...
        for s in ["evt_1", "a\"b\\c", "x\ny\u{1b}", "ünïcødé"] {
            assert_eq!(format!("{:?}", Printable(s)), format!("{s:?}"), "{s}");
        }
        // ...and no hidden code point gets through, whatever `Debug` does with it.
        for c in HIDDEN {
            let logged = format!(
                "{:?} {}",
                Printable(&format!("a{c}")),
                Printable(&format!("b{c}"))
            );
            assert!(!logged.contains(c), "U+{:04X}: {logged:?}", c as u32);
            assert!(logged.contains(&format!("{}", c.escape_unicode())) || c.is_control());
        }
        assert_eq!(format!("{}", Printable("a\u{202e}\"b")), "a\\u{202e}\"b");
    }

    #[test]
    fn printable_json_stays_the_same_json_value() {
        let v = serde_json::json!({
            "event_id": "evt_\u{202E}gpj.exe\u{2066}\u{85}\u{7f}\u{E0041}",
            "event": "{\"a\":\"\\n\"}\n",
        });
        let text = serde_json::to_string_pretty(&v).unwrap();
        let shown = printable_json(&text);
        assert!(
            !shown.chars().any(|c| c >= '\u{7f}' && is_non_printing(c)),
            "{shown}"
        );
        assert!(
            shown.contains("\\u202e") && shown.contains("\\udb40\\udc41"),
            "{shown}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shown).unwrap(),
            v
        );
        assert_eq!(shown.lines().count(), text.lines().count(), "layout kept");
        assert!(matches!(printable_json("{\"a\": \"b\"}"), Cow::Borrowed(_)));
    }
}
