//! Escaping for output (XML 1.0 §2.4, §3.1): attribute values and character data that fedgate
//! writes itself. Reading goes the other way in [`chars`](super::chars); the two are apart
//! because [`error`](super::error) writes escaped text while the checks return its errors.

use std::borrow::Cow;

/// Escapes a value for a single- or double-quoted attribute. Borrows when
/// there is nothing to escape, which is the common case for JIDs and ids.
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
}

/// Escapes character data. Quotes are left alone: they are legal in text.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>'))
}

fn escape(s: &str, special: impl Fn(u8) -> bool) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| special(b)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    let mut last = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        if !special(b) {
            continue;
        }
        out.push_str(&s[last..i]);
        out.push_str(match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&apos;",
        });
        last = i + 1;
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert!(matches!(escape_attr("a@b.example/r"), Cow::Borrowed(_)));
        assert_eq!(
            escape_attr(r#"a&b<c>d"e'f"#),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f"
        );
        assert_eq!(escape_text(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d\"e'f");
        assert!(matches!(escape_text("it's \"fine\""), Cow::Borrowed(_)));
        assert_eq!(escape_text("☃&"), "☃&amp;");
    }
}
