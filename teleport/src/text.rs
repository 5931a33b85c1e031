//! Text from the other side (a cluster, a client), on its way into a log line or an error.
//!
//! A server (or whoever answers at its address) chooses many strings a client repeats: the
//! messages of the statuses it ends calls with, the names in its join messages, its certificates'
//! attributes; a client chooses what the dev cluster logs. Each passes through [`Sanitized`]
//! ([`message`], [`name`], [`quoted`]): control characters, Unicode line separators and invisible
//! or bidirectional formatting characters are escaped (`\n`, `\u{1b}`, `\u{202e}`), so the
//! other side can neither start a log line of its own nor reach the terminal with escape
//! sequences; and the length is bounded, the rest counted.

use std::fmt::{self, Write as _};

/// The most of a server's message (a status message, a reason) an error or log line repeats.
pub const MAX_MESSAGE: usize = 512;
/// The most of a server-chosen name (a key, a key ID, a suite, a cluster, a role) repeated.
pub const MAX_NAME: usize = 120;

/// Server text fit for one log line or error: see the [module](self) documentation. Made by
/// [`message`], [`name`], [`quoted`] or [`bounded`]; its `Display` writes the safe form.
#[derive(Clone, Copy)]
pub struct Sanitized<'a> {
    text: &'a str,
    max: usize,
    quote: bool,
}

/// A server's message: at most [`MAX_MESSAGE`] characters.
pub fn message(text: &str) -> Sanitized<'_> {
    bounded(text, MAX_MESSAGE)
}

/// A server-chosen name: at most [`MAX_NAME`] characters.
pub fn name(text: &str) -> Sanitized<'_> {
    bounded(text, MAX_NAME)
}

/// A server-chosen name in double quotes, with `"` and `\` escaped too, so that where the name
/// ends is never in doubt: at most [`MAX_NAME`] characters.
pub fn quoted(text: &str) -> Sanitized<'_> {
    Sanitized {
        text,
        max: MAX_NAME,
        quote: true,
    }
}

/// Server text of at most `max` characters.
pub fn bounded(text: &str, max: usize) -> Sanitized<'_> {
    Sanitized {
        text,
        max,
        quote: false,
    }
}

/// Characters no server text may put into a log line or an error as they are: control
/// characters (C0, DEL, C1: line feeds, escape sequences), the Unicode line and paragraph
/// separators, and the invisible and bidirectional formatting characters that make a line
/// read differently from what it holds (zero-width spaces and joiners, LRM/RLM, the embeddings,
/// overrides and isolates, the word joiner, the byte order mark).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

impl fmt::Display for Sanitized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quote {
            f.write_char('"')?;
        }
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.max) {
            if hidden(c) || (self.quote && matches!(c, '"' | '\\')) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if self.quote {
            f.write_char('"')?;
        }
        let rest = chars.as_str().len();
        if rest > 0 {
            write!(f, "... ({rest} more bytes)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sanitized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text keybound wrote itself but which may carry server text it missed, made one line: the
/// characters [`Sanitized`] escapes are escaped here too, nothing is cut. The last line of defence at the edge (the final
/// `error:` line), never a replacement for sanitizing where server text enters.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
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
    fn server_text_is_one_bounded_line() {
        let text = |t: &str, max| bounded(t, max).to_string();
        assert_eq!(text("balanced-v1", 20), "balanced-v1");
        assert_eq!(text("a\nb\u{1b}[2J", 20), "a\\nb\\u{1b}[2J");
        assert_eq!(
            text(&"x".repeat(1000), 10),
            "xxxxxxxxxx... (990 more bytes)"
        );
        // Never cut inside a character.
        assert_eq!(text("ééé", 2), "éé... (2 more bytes)");
        // Unicode line separators and bidirectional overrides are escaped too; quotes are not.
        assert_eq!(
            text("a\u{2028}b\u{202e}c \"d\" \\", 20),
            "a\\u{2028}b\\u{202e}c \"d\" \\"
        );
        assert_eq!(
            message(&"y".repeat(600)).to_string(),
            format!("{}... (88 more bytes)", "y".repeat(512))
        );
    }

    #[test]
    fn quoted_names_cannot_end_early() {
        assert_eq!(quoted("a\"b\\c\n").to_string(), r#""a\"b\\c\n""#);
        assert_eq!(
            quoted(&"z".repeat(121)).to_string(),
            format!("\"{}\"... (1 more bytes)", "z".repeat(120))
        );
    }

    #[test]
    fn one_line_escapes_without_cutting() {
        assert_eq!(one_line("a\nb\r\u{1b}"), "a\\nb\\r\\u{1b}");
        let long = "é".repeat(5000);
        assert_eq!(one_line(&long), long);
    }
}
