//! Text the CLI prints that came from someone else: a bundle's author, an
//! event's signer, a server. Such text must not drive the reader's terminal
//! (escape sequences) nor make it show something other than what is there
//! (bidirectional overrides, invisible characters), in plain or JSON output.

use std::borrow::Cow;

pub use crate::event::hidden;

/// `s` with [`hidden`] characters written as `\u{202e}`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if hidden(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `v` as indented JSON with [`hidden`] characters as `\uXXXX` escapes
/// (serde_json escapes only those below U+0020). The text means the same
/// JSON: outside strings JSON has nothing but ASCII.
pub fn json_pretty<T: serde::Serialize + ?Sized>(v: &T) -> String {
    escape_hidden(serde_json::to_string_pretty(v).expect("a JSON value serializes"))
}

/// [`json_pretty`] on one line.
pub fn json_line<T: serde::Serialize + ?Sized>(v: &T) -> String {
    escape_hidden(serde_json::to_string(v).expect("a JSON value serializes"))
}

/// Escapes the [`hidden`] characters from DEL up. serde_json has escaped
/// those below U+0020 inside strings; outside them it writes only layout
/// (newlines and spaces), which stays.
fn escape_hidden(json: String) -> String {
    let escape = |c: char| c >= '\u{7f}' && hidden(c);
    if !json.chars().any(escape) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_reordering_characters_are_escaped() {
        assert_eq!(printable("env prod"), "env prod");
        assert_eq!(printable("\u{1b}[31mred\u{0}"), "\\u{1b}[31mred\\u{0}");
        assert_eq!(
            printable("facts/\u{202e}evil\u{7f}\u{9b}\u{200b}.json"),
            "facts/\\u{202e}evil\\u{7f}\\u{9b}\\u{200b}.json"
        );
        assert_eq!(printable("café ünïcode"), "café ünïcode");
    }

    #[test]
    fn json_keeps_its_meaning_and_shows_no_hidden_character() {
        let v = serde_json::json!({"what": "a\u{7f}\u{9b}2J\u{202e}b\u{E0041}c é"});
        let line = json_line(&v);
        assert!(!line.chars().any(hidden), "{line}");
        assert!(
            line.contains(r"\u007f\u009b2J\u202eb\udb40\udc41c é"),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), v);
        let pretty = json_pretty(&v);
        assert!(
            pretty.contains('\n') && !pretty.contains('\u{202e}'),
            "{pretty}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            v
        );
    }
}
