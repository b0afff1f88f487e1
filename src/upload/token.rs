//! Slot tokens (XEP-0363 §4 `<header name='Authorization'>`): an HMAC-SHA256 over what the
//! slot allows (path, size, content type), for whom and until when, so the HTTP side needs
//! no record of the slots it gave out: a PUT proves its slot by its token alone, and the
//! account the stored file counts against is the one the token names.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What one slot allows: one PUT of exactly `size` bytes of `content_type` to `path`, until
/// `expires` (seconds since the epoch), counted against `owner`'s quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGrant {
    /// The URL path without its leading `/` or prefix: `ID/NAME`, percent-encoded.
    pub path: String,
    /// The exact `Content-Length` the PUT must have, in bytes.
    pub size: u64,
    /// The media type the PUT must send, `type/subtype`.
    pub content_type: String,
    /// The last second (since the epoch) at which the PUT is accepted.
    pub expires: u64,
    /// The bare JID that asked for the slot: whose quota the file counts against.
    pub owner: String,
}

/// Why a token does not authorise a PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the five dot-separated parts [`Signer::sign`] writes, or one
    /// does not decode.
    #[error(
        "the token is not of the form EXPIRY.SIZE.TYPE.OWNER.MAC (hex-encoded type, owner and MAC)"
    )]
    Malformed,
    /// The slot's lifetime is over; checked only after the signature.
    #[error("the slot has expired")]
    Expired,
    /// The MAC does not match: the token is for another path or was altered, or was
    /// signed by another process (keys are not kept across restarts).
    #[error("the token was not made for this path, size, content type, owner and expiry, or by this process")]
    BadSignature,
}

/// Signs and checks slot tokens with the service's key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// A signer with `key`, the service's random per-process key.
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
            grant.owner.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The token for `grant`: `EXPIRY.SIZE.HEX(CONTENT-TYPE).HEX(OWNER).HEXMAC`. The size
    /// and type are in clear (and signed) so that a PUT that does not match them is told
    /// which it broke; the owner so that the HTTP side knows whose quota the file is in.
    /// Only the uploader sees the token, and it names the uploader.
    pub fn sign(&self, grant: &SlotGrant) -> String {
        let tag = self.mac(grant).finalize().into_bytes();
        format!(
            "{}.{}.{}.{}.{}",
            grant.expires,
            grant.size,
            hex::encode(&grant.content_type),
            hex::encode(&grant.owner),
            hex::encode(tag)
        )
    }

    /// The grant `token` proves for `path` at `now` (seconds since the epoch). The
    /// signature is compared in constant time.
    pub fn verify(&self, token: &str, path: &str, now: u64) -> Result<SlotGrant, TokenError> {
        let mut parts = token.split('.');
        let (Some(expires), Some(size), Some(content_type), Some(owner), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let malformed = |_| TokenError::Malformed;
        let grant = SlotGrant {
            path: path.to_owned(),
            size: size.parse().map_err(|_| TokenError::Malformed)?,
            content_type: String::from_utf8(hex::decode(content_type).map_err(malformed)?)
                .map_err(|_| TokenError::Malformed)?,
            expires: expires.parse().map_err(|_| TokenError::Malformed)?,
            owner: String::from_utf8(hex::decode(owner).map_err(malformed)?)
                .map_err(|_| TokenError::Malformed)?,
        };
        let tag = hex::decode(tag).map_err(malformed)?;
        self.mac(&grant)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if now > grant.expires {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "0123abcd/photo.jpg";

    fn grant() -> SlotGrant {
        SlotGrant {
            path: PATH.into(),
            size: 1234,
            content_type: "image/jpeg".into(),
            expires: 1_000,
            owner: "alice@a.test".into(),
        }
    }

    #[test]
    fn a_token_proves_its_own_slot_until_it_expires() {
        let s = Signer::new(b"key");
        let t = s.sign(&grant());
        assert_eq!(s.verify(&t, PATH, 999), Ok(grant()));
        assert_eq!(s.verify(&t, PATH, 1_000), Ok(grant()));
        assert_eq!(s.verify(&t, PATH, 1_001), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_proves_nothing_for_another_path_or_key() {
        let t = Signer::new(b"key").sign(&grant());
        let bad = Err(TokenError::BadSignature);
        assert_eq!(Signer::new(b"key").verify(&t, "0123abcd/other.jpg", 0), bad);
        assert_eq!(Signer::new(b"other").verify(&t, PATH, 0), bad);
    }

    #[test]
    fn the_expiry_size_type_or_owner_in_a_token_cannot_be_changed() {
        let s = Signer::new(b"key");
        let t = s.sign(&grant());
        let parts: Vec<&str> = t.split('.').collect();
        let png = hex::encode("image/png");
        let bob = hex::encode("bob@a.test");
        let (e, z, t, o, m) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
        for forged in [
            format!("9999999999.{z}.{t}.{o}.{m}"),
            format!("{e}.99999.{t}.{o}.{m}"),
            format!("{e}.{z}.{png}.{o}.{m}"),
            format!("{e}.{z}.{t}.{bob}.{m}"),
        ] {
            assert_eq!(s.verify(&forged, PATH, 0), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn a_malformed_token_is_refused() {
        let s = Signer::new(b"key");
        for t in [
            "",
            "abc",
            "1.2.zz.00.00",
            "1.2.00.zz.00",
            "x.1.00.00.00",
            "1.x.00.00.00",
            "1.2.00.00",
            "1.2.00.00.00.00",
        ] {
            assert_eq!(s.verify(t, "p", 0), Err(TokenError::Malformed), "{t}");
        }
    }
}
