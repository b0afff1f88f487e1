//! Whether an HTTP PUT matches its slot (XEP-0363 §5), sans I/O: the token in
//! `Authorization`, then the body's length and type against what the token grants. Each
//! refusal maps to the HTTP status the XEP and clients expect, with a text for the body.

use super::token::{Signer, SlotGrant, TokenError};

/// Why a PUT stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutRefusal {
    /// The PUT carries no `Authorization` header (403).
    #[error("no Authorization header: PUT with the header the slot named")]
    NoToken,
    /// The token is malformed, expired, or not signed for this path and slot (403).
    #[error("the Authorization header does not authorise this upload: {0}")]
    BadToken(TokenError),
    /// No `Content-Length`, so the size cannot be checked before anything is stored (411).
    #[error("no Content-Length: send the file with its length")]
    NoLength,
    /// The length differs from the slot's size (413).
    #[error("Content-Length is {got}, the slot is for {want} bytes")]
    WrongLength {
        /// The request's `Content-Length`.
        got: u64,
        /// The size the slot was given for.
        want: u64,
    },
    /// The media type differs from the slot's (415).
    #[error("Content-Type is `{got}`, the slot is for `{want}`")]
    WrongType {
        /// The request's `Content-Type` as sent (`application/octet-stream` if absent).
        got: String,
        /// The content type the slot was given for.
        want: String,
    },
}

impl PutRefusal {
    /// The HTTP status: 403 for the token, 411 without a length, 413 for another size,
    /// 415 for another type.
    pub fn status(&self) -> u16 {
        match self {
            PutRefusal::NoToken | PutRefusal::BadToken(_) => 403,
            PutRefusal::NoLength => 411,
            PutRefusal::WrongLength { .. } => 413,
            PutRefusal::WrongType { .. } => 415,
        }
    }

    /// The reason label in the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PutRefusal::NoToken | PutRefusal::BadToken(_) => "token",
            PutRefusal::NoLength | PutRefusal::WrongLength { .. } => "size",
            PutRefusal::WrongType { .. } => "content_type",
        }
    }
}

/// What a PUT's request line and headers say, as the HTTP side read them.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    /// The URL path without its leading `/`, as it was signed (percent-encoded).
    pub path: &'a str,
    /// The `Authorization` header: the slot's token, as the slot's `<header/>` gave it.
    pub authorization: Option<&'a str>,
    /// The `Content-Length` header (one that is not a number got 400 before this).
    pub content_length: Option<u64>,
    /// `None` is taken as the slot's default, `application/octet-stream`.
    pub content_type: Option<&'a str>,
}

/// The slot `put` may fill at `now` (seconds since the epoch), or why it may not. A
/// content type matches its slot's ignoring case and parameters (`; charset=...`), as HTTP
/// media types compare.
pub fn check(signer: &Signer, put: &Put<'_>, now: u64) -> Result<SlotGrant, PutRefusal> {
    let token = put.authorization.ok_or(PutRefusal::NoToken)?;
    let grant = signer
        .verify(token.trim(), put.path, now)
        .map_err(PutRefusal::BadToken)?;
    let got = put.content_length.ok_or(PutRefusal::NoLength)?;
    if got != grant.size {
        return Err(PutRefusal::WrongLength {
            got,
            want: grant.size,
        });
    }
    let sent = put.content_type.unwrap_or("application/octet-stream");
    let media = sent.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(&grant.content_type) {
        return Err(PutRefusal::WrongType {
            got: sent.to_owned(),
            want: grant.content_type,
        });
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "d1/a.png";

    fn token(signer: &Signer) -> String {
        signer.sign(&SlotGrant {
            path: PATH.into(),
            size: 10,
            content_type: "image/png".into(),
            expires: 100,
            owner: "alice@a.test".into(),
        })
    }

    fn put<'a>(auth: Option<&'a str>, len: Option<u64>, ty: Option<&'a str>) -> Put<'a> {
        Put {
            path: PATH,
            authorization: auth,
            content_length: len,
            content_type: ty,
        }
    }

    #[test]
    fn a_put_that_matches_its_slot_is_accepted() {
        let s = Signer::new(b"k");
        let t = token(&s);
        let g = check(&s, &put(Some(&t), Some(10), Some("image/png")), 50).unwrap();
        assert_eq!(g.size, 10);
        assert!(check(&s, &put(Some(&t), Some(10), Some("IMAGE/PNG; q=1")), 50).is_ok());
    }

    #[test]
    fn a_put_without_a_valid_token_is_forbidden() {
        let s = Signer::new(b"k");
        let t = token(&s);
        let ok = (Some(10), Some("image/png"));
        assert_eq!(
            check(&s, &put(None, ok.0, ok.1), 50).unwrap_err().status(),
            403
        );
        let other = token(&Signer::new(b"other"));
        assert_eq!(
            check(&s, &put(Some(&other), ok.0, ok.1), 50)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            check(&s, &put(Some(&t), ok.0, ok.1), 101)
                .unwrap_err()
                .status(),
            403
        );
        let moved = Put {
            path: "d2/a.png",
            ..put(Some(&t), ok.0, ok.1)
        };
        assert_eq!(check(&s, &moved, 50).unwrap_err().status(), 403);
    }

    #[test]
    fn a_put_of_another_size_or_type_gets_its_own_status() {
        let s = Signer::new(b"k");
        let t = token(&s);
        let e = check(&s, &put(Some(&t), Some(11), Some("image/png")), 50).unwrap_err();
        assert_eq!(e, PutRefusal::WrongLength { got: 11, want: 10 });
        assert_eq!(e.status(), 413);
        let e = check(&s, &put(Some(&t), None, Some("image/png")), 50).unwrap_err();
        assert_eq!(e.status(), 411);
        let e = check(&s, &put(Some(&t), Some(10), Some("text/plain")), 50).unwrap_err();
        assert_eq!(e.status(), 415);
        assert!(e.to_string().contains("image/png"));
        let e = check(&s, &put(Some(&t), Some(10), None), 50).unwrap_err();
        assert_eq!(e.status(), 415);
    }
}
