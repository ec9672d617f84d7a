//! Building a line's text with a hard byte cap.
//!
//! Every input turns bytes into a [`crate::LogLine`] message, and some mappings produce
//! more than they read: invalid UTF-8 becomes U+FFFD (three bytes for one), JSON escaping
//! turns a control byte into six, a record is rendered as JSON. [`BoundedText`] is the
//! only way decoders build a message: it stops at the cap while building (never builds
//! more and cuts afterwards), cuts on a character boundary, and remembers that it did,
//! so decoding cost stays linear in the bytes received and no line exceeds the cap.

use std::fmt::Write;

/// A message under construction, at most `max` bytes long.
#[derive(Debug)]
pub struct BoundedText {
    text: String,
    max: usize,
    truncated: bool,
}

impl BoundedText {
    /// An empty text that will hold at most `max` bytes.
    pub fn new(max: usize) -> Self {
        BoundedText {
            text: String::new(),
            max,
            truncated: false,
        }
    }

    /// Bytes that still fit.
    pub fn room(&self) -> usize {
        self.max - self.text.len()
    }

    /// Whether the cap was reached (more input is ignored).
    pub fn is_full(&self) -> bool {
        self.truncated
    }

    /// The text, and whether it was cut at the cap.
    pub fn finish(self) -> (String, bool) {
        (self.text, self.truncated)
    }

    /// Appends `s`, cut at a character boundary if it does not fit.
    pub fn push_str(&mut self, s: &str) {
        if self.truncated {
            return;
        }
        let room = self.max - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            self.truncated = true;
        }
    }

    /// Appends `s` only if all of it fits (an escape sequence is never cut in half).
    pub fn push_whole(&mut self, s: &str) {
        if self.truncated {
            return;
        }
        if s.len() <= self.max - self.text.len() {
            self.text.push_str(s);
        } else {
            self.truncated = true;
        }
    }

    /// Appends `bytes` as text, invalid UTF-8 replaced by U+FFFD.
    pub fn push_lossy(&mut self, bytes: &[u8]) {
        if let Ok(s) = std::str::from_utf8(bytes) {
            self.reserve_for(s.len());
            return self.push_str(s);
        }
        for chunk in bytes.utf8_chunks() {
            self.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                self.push_str("\u{fffd}");
            }
            if self.truncated {
                return;
            }
        }
    }

    /// Appends `bytes` (invalid UTF-8 replaced) escaped for the inside of a JSON string,
    /// without the surrounding quotes.
    pub fn push_json_escaped(&mut self, bytes: &[u8]) {
        for chunk in bytes.utf8_chunks() {
            let valid = chunk.valid();
            let mut start = 0;
            for (i, c) in valid.char_indices() {
                let escaped = match c {
                    '"' => "\\\"",
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    c if (c as u32) < 0x20 => "",
                    _ => continue,
                };
                self.push_str(&valid[start..i]);
                if escaped.is_empty() {
                    let mut buf = String::with_capacity(6);
                    let _ = write!(buf, "\\u{:04x}", c as u32);
                    self.push_whole(&buf);
                } else {
                    self.push_whole(escaped);
                }
                start = i + c.len_utf8();
                if self.truncated {
                    return;
                }
            }
            self.push_str(&valid[start..]);
            if !chunk.invalid().is_empty() {
                self.push_str("\u{fffd}");
            }
            if self.truncated {
                return;
            }
        }
    }

    /// Appends `bytes` as a quoted JSON string.
    pub fn push_json_string(&mut self, bytes: &[u8]) {
        self.push_str("\"");
        self.push_json_escaped(bytes);
        self.push_str("\"");
    }

    fn reserve_for(&mut self, more: usize) {
        let want = more.min(self.max - self.text.len());
        self.text.reserve(want);
    }
}

/// `write!` into a bounded text cuts at the cap like [`BoundedText::push_str`].
impl Write for BoundedText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(max: usize, build: impl FnOnce(&mut BoundedText), expected: (&str, bool)) {
        let mut t = BoundedText::new(max);
        build(&mut t);
        let (text, cut) = t.finish();
        assert_eq!((text.as_str(), cut), expected);
        assert!(text.len() <= max);
    }

    #[test]
    fn cuts_at_the_cap_on_a_char_boundary() {
        check(5, |t| t.push_str("hello"), ("hello", false));
        check(5, |t| t.push_str("hello!"), ("hello", true));
        check(4, |t| t.push_str("héllo"), ("hél", true));
        check(3, |t| t.push_str("hél"), ("hé", true));
        check(2, |t| t.push_str("hél"), ("h", true));
        check(
            3,
            |t| {
                t.push_str("ab");
                t.push_str("cd");
                t.push_str("e");
            },
            ("abc", true),
        );
    }

    #[test]
    fn lossy_text_is_bounded_after_replacement() {
        check(
            9,
            |t| t.push_lossy(&[0xff; 100]),
            ("\u{fffd}\u{fffd}\u{fffd}", true),
        );
        check(10, |t| t.push_lossy(b"ok\xffok"), ("ok\u{fffd}ok", false));
    }

    #[test]
    fn json_escaping_is_bounded() {
        check(
            100,
            |t| t.push_json_string(b"a\"b\\c\n\x01\xff"),
            ("\"a\\\"b\\\\c\\n\\u0001\u{fffd}\"", false),
        );
        check(7, |t| t.push_json_escaped(&[1; 10]), ("\\u0001", true));
    }
}
