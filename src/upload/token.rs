//! Slot tokens (XEP-0363 §4 `<header name='Authorization'>`): an HMAC-SHA256 over what the
//! slot allows (path, size, content type) and until when, so the HTTP side needs no record
//! of the slots it gave out: a PUT proves its slot by its token alone.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What one slot allows: one PUT of exactly `size` bytes of `content_type` to `path`, until
/// `expires` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGrant {
    pub path: String,
    pub size: u64,
    pub content_type: String,
    pub expires: u64,
}

/// Why a token does not authorise a PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not of the form EXPIRY.SIGNATURE")]
    Malformed,
    #[error("the slot has expired")]
    Expired,
    #[error("the token was not made for this path, size and content type")]
    BadSignature,
}

/// Signs and checks slot tokens with the service's key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    /// The MAC over the grant's fields, each length-prefixed so that no two grants
    /// (e.g. a path ending in a digit and a size) produce the same input.
    fn mac(&self, grant: &SlotGrant) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for field in [
            grant.path.as_bytes(),
            &grant.size.to_be_bytes(),
            grant.content_type.as_bytes(),
            &grant.expires.to_be_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The token for `grant`: `EXPIRY.HEXMAC`.
    pub fn sign(&self, grant: &SlotGrant) -> String {
        let tag = self.mac(grant).finalize().into_bytes();
        format!("{}.{}", grant.expires, hex::encode(tag))
    }

    /// Whether `token` authorises a PUT of `size` bytes of `content_type` to `path` at `now`
    /// (seconds since the epoch). The signature is compared in constant time.
    pub fn verify(
        &self,
        token: &str,
        path: &str,
        size: u64,
        content_type: &str,
        now: u64,
    ) -> Result<(), TokenError> {
        let (expires, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TokenError::Malformed)?;
        let grant = SlotGrant {
            path: path.to_owned(),
            size,
            content_type: content_type.to_owned(),
            expires,
        };
        self.mac(&grant)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if now > expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> SlotGrant {
        SlotGrant {
            path: "0123abcd/photo.jpg".into(),
            size: 1234,
            content_type: "image/jpeg".into(),
            expires: 1_000,
        }
    }

    #[test]
    fn a_token_authorises_its_own_slot_until_it_expires() {
        let s = Signer::new(b"key");
        let t = s.sign(&grant());
        assert_eq!(
            s.verify(&t, "0123abcd/photo.jpg", 1234, "image/jpeg", 999),
            Ok(())
        );
        assert_eq!(
            s.verify(&t, "0123abcd/photo.jpg", 1234, "image/jpeg", 1_000),
            Ok(())
        );
        assert_eq!(
            s.verify(&t, "0123abcd/photo.jpg", 1234, "image/jpeg", 1_001),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_does_not_authorise_another_path_size_type_or_key() {
        let s = Signer::new(b"key");
        let t = s.sign(&grant());
        let bad = Err(TokenError::BadSignature);
        assert_eq!(
            s.verify(&t, "0123abcd/other.jpg", 1234, "image/jpeg", 0),
            bad
        );
        assert_eq!(
            s.verify(&t, "0123abcd/photo.jpg", 1235, "image/jpeg", 0),
            bad
        );
        assert_eq!(
            s.verify(&t, "0123abcd/photo.jpg", 1234, "image/png", 0),
            bad
        );
        assert_eq!(
            Signer::new(b"other").verify(&t, "0123abcd/photo.jpg", 1234, "image/jpeg", 0),
            bad
        );
    }

    #[test]
    fn a_later_expiry_cannot_be_written_into_a_token() {
        let s = Signer::new(b"key");
        let t = s.sign(&grant());
        let (_, tag) = t.split_once('.').unwrap();
        let forged = format!("9999999999.{tag}");
        assert_eq!(
            s.verify(&forged, "0123abcd/photo.jpg", 1234, "image/jpeg", 2_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_malformed_token_is_refused() {
        let s = Signer::new(b"key");
        for t in ["", "abc", "12.zz", "x.00"] {
            assert_eq!(
                s.verify(t, "p", 1, "a/b", 0),
                Err(TokenError::Malformed),
                "{t}"
            );
        }
    }
}
