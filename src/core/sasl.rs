//! SASL for c2s (RFC 6120 §6): SCRAM-SHA-256 (RFC 7677), SCRAM-SHA-1 (RFC 5802), their
//! `-PLUS` variants with channel binding (RFC 5802 §6, `tls-exporter` RFC 9266 and
//! `tls-server-end-point` RFC 5929, announced with XEP-0440) and PLAIN (RFC 4616), sans I/O.
//! The session in [`super::c2s`] moves the base64 payloads in and out.
//!
//! # What is stored
//! Never a password: per account one random salt and iteration count, and for each hash the
//! SCRAM `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
//! `ServerKey = HMAC(SaltedPassword, "Server Key")` with
//! `SaltedPassword = PBKDF2-HMAC(password, salt, iterations)` ([`Credentials`]). A stolen
//! database does not let anyone sign in with SCRAM (the proof needs `ClientKey`, which is not
//! stored) and costs a dictionary attack the full PBKDF2 per guess. PLAIN is checked by
//! deriving the same keys from the offered password.
//!
//! # SCRAM exchange
//! 1. [`ClientFirst::parse`]: `gs2-header` (`n`, `y` or `p=TYPE`, [`Gs2Flag`]), then
//!    `n=username,r=client-nonce`. [`binding_for`] checks the flag against the mechanism and
//!    what this connection offers: `-PLUS` needs `p=` with a type we have; `p=` needs
//!    `-PLUS`; `y` ("I could bind, but you do not offer it") while we do offer `-PLUS` is a
//!    downgrade by someone in the middle and fails (RFC 5802 §6).
//! 2. [`ScramServer::new`] answers `r=client-nonce+server-nonce,s=salt,i=iterations`. For an
//!    unknown user the salt is derived from the name with a per-process key, so the answer
//!    looks like any other and the exchange fails only at the proof.
//! 3. [`ScramServer::finish`] checks `c=` (the gs2 header again, followed by the channel
//!    binding data for `p=`), the nonce, and the proof:
//!    `ClientKey = proof XOR HMAC(StoredKey, AuthMessage)` must hash to `StoredKey`, compared
//!    in constant time; it answers `v=ServerSignature` for the `<success/>`.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::tls::{ChannelBindingType, ChannelBindings};

/// The SASL mechanisms the core offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// SCRAM-SHA-256 with channel binding: offered only on TLS with bindings (RFC 7677).
    ScramSha256Plus,
    /// SCRAM-SHA-1 with channel binding (RFC 5802).
    ScramSha1Plus,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-1 without channel binding, for older clients.
    ScramSha1,
    /// The password itself, inside TLS (RFC 4616); offered only with `allow_plain`, for
    /// clients that know no SCRAM.
    Plain,
}

impl Mechanism {
    /// The IANA name, as offered in `<mechanisms/>` and named in `<auth mechanism/>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// The mechanism a client names in `<auth/>`; `None` for one we do not implement.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256-PLUS" => Some(Mechanism::ScramSha256Plus),
            "SCRAM-SHA-1-PLUS" => Some(Mechanism::ScramSha1Plus),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-1" => Some(Mechanism::ScramSha1),
            "PLAIN" => Some(Mechanism::Plain),
            _ => None,
        }
    }

    /// The hash of a SCRAM mechanism, and whether it binds the channel; `None` for PLAIN.
    pub fn scram(self) -> Option<(ScramHash, bool)> {
        match self {
            Mechanism::ScramSha256Plus => Some((ScramHash::Sha256, true)),
            Mechanism::ScramSha1Plus => Some((ScramHash::Sha1, true)),
            Mechanism::ScramSha256 => Some((ScramHash::Sha256, false)),
            Mechanism::ScramSha1 => Some((ScramHash::Sha1, false)),
            Mechanism::Plain => None,
        }
    }
}

/// The channel binding flag of a SCRAM `gs2-header` (RFC 5802 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not.
    NotOffered,
    /// `p=TYPE`: the client binds to this channel.
    Binding(ChannelBindingType),
}

/// The channel binding data a SCRAM exchange must carry in `c=`, after checking the
/// client's flag against the mechanism and the connection (module docs, step 1). `offered`
/// is whether `-PLUS` mechanisms were offered on this stream.
pub fn binding_for(
    plus: bool,
    flag: Gs2Flag,
    bindings: &ChannelBindings,
    offered: bool,
) -> Result<Option<&[u8]>, SaslError> {
    match (plus, flag) {
        (true, Gs2Flag::Binding(t)) => bindings.get(t).map(Some).ok_or(SaslError::Malformed(
            "that channel binding type is not offered here",
        )),
        (true, _) => Err(SaslError::Malformed(
            "a -PLUS mechanism needs p= channel binding",
        )),
        (false, Gs2Flag::Binding(_)) => Err(SaslError::Malformed(
            "channel binding needs a -PLUS mechanism",
        )),
        (false, Gs2Flag::NotOffered) if offered => Err(SaslError::NotAuthorized),
        (false, _) => Ok(None),
    }
}

/// The hash a SCRAM mechanism is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    /// SHA-1, for SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SHA-256, for SCRAM-SHA-256 (RFC 7677).
    Sha256,
}

impl ScramHash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramHash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }

    /// `StoredKey` and `ServerKey` for a password (RFC 5802 §3).
    pub fn keys(self, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = self.salted_password(password.as_bytes(), salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        ScramKeys {
            stored_key: self.hash(&client_key),
            server_key: self.hmac(&salted, b"Server Key"),
        }
    }
}

/// What a server keeps to verify one SCRAM hash's proofs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    /// `H(ClientKey)`: what the client's proof is checked against.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`: signs our final message, so that the client
    /// knows we hold its credentials.
    pub server_key: Vec<u8>,
}

/// An account's stored credentials: no password, only salted SCRAM keys (module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The random PBKDF2 salt, the same for both hashes; sent to the client in `s=`.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count the keys were derived with (`scram_iterations` at the
    /// time); sent in `i=`.
    pub iterations: u32,
    /// The keys for SCRAM-SHA-1 and SCRAM-SHA-1-PLUS.
    pub sha1: ScramKeys,
    /// The keys for SCRAM-SHA-256, SCRAM-SHA-256-PLUS, and PLAIN's check.
    pub sha256: ScramKeys,
}

impl Credentials {
    /// Derives credentials for a new password with a fresh random 16-byte salt.
    pub fn derive(password: &str, iterations: u32) -> Credentials {
        let salt: [u8; 16] = rand::random();
        Credentials::derive_with_salt(password, &salt, iterations)
    }

    /// Derives credentials with a given salt: for tests against known vectors.
    pub fn derive_with_salt(password: &str, salt: &[u8], iterations: u32) -> Credentials {
        Credentials {
            salt: salt.to_vec(),
            iterations,
            sha1: ScramHash::Sha1.keys(password, salt, iterations),
            sha256: ScramHash::Sha256.keys(password, salt, iterations),
        }
    }

    fn keys(&self, hash: ScramHash) -> &ScramKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }

    /// Whether `password` is the account's password (for PLAIN): derives the SHA-256
    /// `StoredKey` and compares it in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        let keys = ScramHash::Sha256.keys(password, &self.salt, self.iterations);
        bool::from(keys.stored_key.ct_eq(&self.sha256.stored_key))
    }
}

/// Why authentication failed; each maps to a SASL `<failure/>` condition (RFC 6120 §6.5).
/// None is fatal for the stream: the client may try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The payload is not what the mechanism expects.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Wrong password, unknown user, or a proof that does not verify.
    #[error("not authorized")]
    NotAuthorized,
    /// The client asked to act as someone else.
    #[error("invalid authzid")]
    InvalidAuthzid,
    /// A mechanism we do not offer (here).
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The mechanism needs TLS first.
    #[error("encryption required")]
    EncryptionRequired,
    /// The client gave up (`<abort/>`).
    #[error("aborted")]
    Aborted,
    /// The account store failed.
    #[error("temporary authentication failure")]
    TemporaryFailure,
}

impl SaslError {
    /// The `<failure/>` child element name.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Malformed(_) => "malformed-request",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::Aborted => "aborted",
            SaslError::TemporaryFailure => "temporary-auth-failure",
        }
    }
}

/// A parsed `client-first-message` (RFC 5802 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The username, `=2C`/`=3D` decoded; not yet prepared.
    pub username: String,
    /// The identity to act as (`a=` in the gs2 header), decoded; `None` when absent. Only
    /// the account itself is accepted.
    pub authzid: Option<String>,
    /// The channel binding flag, checked by [`binding_for`].
    pub flag: Gs2Flag,
    gs2_header: String,
    bare: String,
    nonce: String,
}

/// Decodes a SCRAM `saslname` (`=2C` is `,`, `=3D` is `=`; any other `=` is malformed).
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError::Malformed("bad escape in a name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ClientFirst {
    /// Reads the client's first message (the decoded `<auth/>` payload); `Malformed` for
    /// anything RFC 5802 §7 does not allow, or a mandatory extension (`m=`).
    pub fn parse(data: &[u8]) -> Result<ClientFirst, SaslError> {
        let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed("not UTF-8"))?;
        let mut parts = s.splitn(3, ',');
        let (Some(cb), Some(authz), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SaslError::Malformed("no gs2 header"));
        };
        let flag = match cb {
            "n" => Gs2Flag::NotSupported,
            "y" => Gs2Flag::NotOffered,
            c => match c.strip_prefix("p=") {
                Some(name) => Gs2Flag::Binding(
                    ChannelBindingType::from_name(name)
                        .ok_or(SaslError::Malformed("unknown channel binding type"))?,
                ),
                None => return Err(SaslError::Malformed("bad gs2 channel binding flag")),
            },
        };
        let authzid = match authz {
            "" => None,
            a => Some(decode_saslname(
                a.strip_prefix("a=")
                    .ok_or(SaslError::Malformed("bad gs2 authzid"))?,
            )?),
        };
        let mut username = None;
        let mut nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_at_checked(2)) {
                (0, Some(("m=", _))) => return Err(SaslError::Malformed("mandatory extension")),
                (0, Some(("n=", v))) => username = Some(decode_saslname(v)?),
                (1, Some(("r=", v))) if !v.is_empty() && !v.contains(',') => {
                    nonce = Some(v.to_owned())
                }
                (0 | 1, _) => return Err(SaslError::Malformed("expected n= then r=")),
                _ => {} // extensions we do not know are ignored (RFC 5802 §5.1)
            }
        }
        let (Some(username), Some(nonce)) = (username, nonce) else {
            return Err(SaslError::Malformed("missing n= or r="));
        };
        if username.is_empty() {
            return Err(SaslError::Malformed("empty username"));
        }
        Ok(ClientFirst {
            username,
            authzid,
            flag,
            gs2_header: format!("{cb},{authz},"),
            bare: bare.to_owned(),
            nonce,
        })
    }
}

/// The server side of one SCRAM exchange after the client's first message.
pub struct ScramServer {
    hash: ScramHash,
    /// What `c=` must decode to: the gs2 header, then the channel binding data for `p=`.
    expected_cbind: Vec<u8>,
    nonce: String,
    /// `client-first-message-bare + "," + server-first-message`: the start of `AuthMessage`.
    auth_prefix: String,
    /// `None` for an unknown user: the exchange runs to the end and fails there.
    keys: Option<ScramKeys>,
}

/// A per-process key for the fake salts of unknown users.
fn fake_salt(username: &str) -> Vec<u8> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    ScramHash::Sha256.hmac(key, username.as_bytes())[..16].to_vec()
}

impl ScramServer {
    /// Answers the client's first message with `server_nonce` appended to its nonce.
    /// `credentials` is `None` when there is no such user; `cbind` is the channel binding
    /// data `c=` must carry ([`binding_for`]).
    pub fn new(
        hash: ScramHash,
        first: &ClientFirst,
        credentials: Option<&Credentials>,
        default_iterations: u32,
        server_nonce: &str,
        cbind: Option<&[u8]>,
    ) -> (ScramServer, Vec<u8>) {
        let mut expected_cbind = first.gs2_header.as_bytes().to_vec();
        expected_cbind.extend_from_slice(cbind.unwrap_or_default());
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let (salt, iterations) = match credentials {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (fake_salt(&first.username), default_iterations),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let server = ScramServer {
            hash,
            expected_cbind,
            nonce,
            auth_prefix: format!("{},{}", first.bare, server_first),
            keys: credentials.map(|c| c.keys(hash).clone()),
        };
        (server, server_first.into_bytes())
    }

    /// A fresh random server nonce (printable, no comma).
    pub fn random_nonce() -> String {
        let bytes: [u8; 18] = rand::random();
        B64.encode(bytes)
    }

    /// Checks the client's final message; returns the `server-final-message` to send with
    /// `<success/>`.
    pub fn finish(&self, data: &[u8]) -> Result<Vec<u8>, SaslError> {
        let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = s
            .rsplit_once(",p=")
            .ok_or(SaslError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cb = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::Malformed("expected c="))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::Malformed("expected r="))?;
        let cb = B64
            .decode(cb)
            .map_err(|_| SaslError::Malformed("c= is not base64"))?;
        if !bool::from(cb.ct_eq(&self.expected_cbind)) {
            return Err(SaslError::NotAuthorized);
        }
        if !bool::from(nonce.as_bytes().ct_eq(self.nonce.as_bytes())) {
            return Err(SaslError::NotAuthorized);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslError::Malformed("p= is not base64"))?;
        let Some(keys) = &self.keys else {
            return Err(SaslError::NotAuthorized);
        };
        if proof.len() != keys.stored_key.len() {
            return Err(SaslError::NotAuthorized);
        }
        let auth_message = format!("{},{}", self.auth_prefix, without_proof);
        let client_signature = self.hash.hmac(&keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !bool::from(self.hash.hash(&client_key).ct_eq(&keys.stored_key)) {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// A parsed PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
#[derive(Debug, PartialEq, Eq)]
pub struct Plain {
    /// The identity to act as; `None` when empty. Only the account itself is accepted.
    pub authzid: Option<String>,
    /// The authcid: the account's localpart (or `user@domain`), not yet prepared.
    pub username: String,
    /// The password as sent, checked by deriving the stored keys from it.
    pub password: String,
}

impl Plain {
    /// Reads a PLAIN message; `Malformed` unless it has exactly three parts and a non-empty
    /// authcid and password.
    pub fn parse(data: &[u8]) -> Result<Plain, SaslError> {
        let s = std::str::from_utf8(data).map_err(|_| SaslError::Malformed("not UTF-8"))?;
        let mut parts = s.split('\0');
        let (Some(authzid), Some(username), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::Malformed(
                "PLAIN needs authzid NUL authcid NUL password",
            ));
        };
        if username.is_empty() || password.is_empty() {
            return Err(SaslError::Malformed("empty authcid or password"));
        }
        Ok(Plain {
            authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the server side of an exchange whose client messages are given, with a fixed
    /// server nonce; returns the server's first and final messages.
    fn exchange(
        hash: ScramHash,
        creds: &Credentials,
        client_first: &str,
        server_nonce: &str,
        client_final: &str,
    ) -> (String, Result<String, SaslError>) {
        let first = ClientFirst::parse(client_first.as_bytes()).unwrap();
        let (server, server_first) =
            ScramServer::new(hash, &first, Some(creds), 4096, server_nonce, None);
        let fin = server
            .finish(client_final.as_bytes())
            .map(|v| String::from_utf8(v).unwrap());
        (String::from_utf8(server_first).unwrap(), fin)
    }

    /// RFC 5802 §5: the SCRAM-SHA-1 example.
    #[test]
    fn rfc5802_sha1_vector() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let creds = Credentials::derive_with_salt("pencil", &salt, 4096);
        let (first, fin) = exchange(
            ScramHash::Sha1,
            &creds,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(
            first,
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        assert_eq!(fin.unwrap(), "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    /// RFC 7677 §3: the SCRAM-SHA-256 example.
    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = Credentials::derive_with_salt("pencil", &salt, 4096);
        let (first, fin) = exchange(
            ScramHash::Sha256,
            &creds,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert_eq!(
            fin.unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    /// `client-final-message-without-proof` with the proof a client that knows `password`
    /// computes for it (RFC 5802 §3): right whatever nonce and binding it carries.
    fn signed_final(
        hash: ScramHash,
        password: &str,
        creds: &Credentials,
        client_first_bare: &str,
        server_first: &str,
        without_proof: &str,
    ) -> String {
        let salted = hash.salted_password(password.as_bytes(), &creds.salt, creds.iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hash.hmac(&hash.hash(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn a_wrong_proof_nonce_or_binding_is_refused() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let creds = Credentials::derive_with_salt("pencil", &salt, 4096);
        let cf = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
        let n = "3rfcNHYJY1ZVvWVs7j";
        // A client that knows the password but echoes another nonce, or a `c=` that does not
        // repeat its gs2 header: its proof verifies, so only those checks can refuse it.
        let sign = |without_proof: &str| {
            signed_final(
                ScramHash::Sha1,
                "pencil",
                &creds,
                "n=user,r=fyko+d2lbbFgONRv9qkxdawL",
                "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                without_proof,
            )
        };
        let right = sign("c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j");
        assert_eq!(
            right,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        assert!(exchange(ScramHash::Sha1, &creds, cf, n, &right).1.is_ok());
        for bad in [
            sign("c=biws,r=fyko+d2lbbFgONRv9qkxdawLXXX"),
            sign("c=biws,r=fyko+d2lbbFgONRv9qkxdawL"),
            sign("c=eSws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"),
        ] {
            let (_, fin) = exchange(ScramHash::Sha1, &creds, cf, n, &bad);
            assert_eq!(fin, Err(SaslError::NotAuthorized), "{bad}");
        }
        for bad in [
            // Proof for another password.
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            // Another nonce.
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawLXXX,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            // c= does not repeat the gs2 header ("y,,").
            "c=eSws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        ] {
            let (_, fin) = exchange(ScramHash::Sha1, &creds, cf, n, bad);
            assert_eq!(fin, Err(SaslError::NotAuthorized), "{bad}");
        }
        // The right proof over SHA-256 keys of the same password is not a SHA-1 proof.
        let (_, fin) = exchange(
            ScramHash::Sha256,
            &creds,
            cf,
            n,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(fin, Err(SaslError::NotAuthorized));
    }

    #[test]
    fn unknown_users_get_a_stable_salt_and_fail_at_the_proof() {
        let first = ClientFirst::parse(b"n,,n=nobody,r=abc").unwrap();
        let (a, fa) = ScramServer::new(ScramHash::Sha256, &first, None, 4096, "x", None);
        let (_, fb) = ScramServer::new(ScramHash::Sha256, &first, None, 4096, "x", None);
        assert_eq!(fa, fb);
        assert!(String::from_utf8(fa).unwrap().ends_with(",i=4096"));
        assert_eq!(
            a.finish(b"c=biws,r=abcx,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn client_first_parsing() {
        let f = ClientFirst::parse(b"n,a=al=2Cice=3D,n=us=3Der,r=nonce,x=ext").unwrap();
        assert_eq!(f.username, "us=er");
        assert_eq!(f.authzid.as_deref(), Some("al,ice="));
        assert_eq!(f.gs2_header, "n,a=al=2Cice=3D,");
        assert_eq!(
            ClientFirst::parse(b"p=tls-exporter,,n=u,r=x").unwrap().flag,
            Gs2Flag::Binding(ChannelBindingType::TlsExporter)
        );
        assert_eq!(
            ClientFirst::parse(b"y,,n=u,r=x").unwrap().flag,
            Gs2Flag::NotOffered
        );
        for bad in [
            &b"p=tls-unique,,n=u,r=x"[..],
            b"n,,m=x,n=u,r=x",
            b"n,,n=u",
            b"n,,r=x,n=u",
            b"x,,n=u,r=x",
            b"n,,n=a=b,r=x",
            b"n,,n=,r=x",
            b"\xff",
        ] {
            assert!(ClientFirst::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channel_binding_rules_and_a_plus_exchange() {
        let bindings = ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: None,
        };
        let exporter = Gs2Flag::Binding(ChannelBindingType::TlsExporter);
        let end_point = Gs2Flag::Binding(ChannelBindingType::TlsServerEndPoint);
        assert_eq!(
            binding_for(true, exporter, &bindings, true),
            Ok(Some(&[7u8; 32][..]))
        );
        for (plus, flag, offered, want) in [
            // A type this connection does not have, or -PLUS without binding.
            (true, end_point, true, "malformed-request"),
            (true, Gs2Flag::NotSupported, true, "malformed-request"),
            (true, Gs2Flag::NotOffered, true, "malformed-request"),
            // Binding without -PLUS.
            (false, exporter, true, "malformed-request"),
            // "y" while -PLUS was offered: a downgrade.
            (false, Gs2Flag::NotOffered, true, "not-authorized"),
        ] {
            assert_eq!(
                binding_for(plus, flag, &bindings, offered).map_err(|e| e.condition()),
                Err(want),
                "{plus} {flag:?}"
            );
        }
        assert_eq!(
            binding_for(false, Gs2Flag::NotOffered, &bindings, false),
            Ok(None)
        );
        assert_eq!(
            binding_for(false, Gs2Flag::NotSupported, &bindings, true),
            Ok(None)
        );
        // A -PLUS exchange: c= is the gs2 header followed by the binding data.
        let creds = Credentials::derive("pw", 4096);
        let cf = "p=tls-exporter,,n=user,r=abc";
        let first = ClientFirst::parse(cf.as_bytes()).unwrap();
        let data = [7u8; 32];
        let (server, server_first) = ScramServer::new(
            ScramHash::Sha256,
            &first,
            Some(&creds),
            4096,
            "xyz",
            Some(&data),
        );
        let server_first = String::from_utf8(server_first).unwrap();
        let sign = |cbind: &[u8]| {
            let c = B64.encode(cbind);
            signed_final(
                ScramHash::Sha256,
                "pw",
                &creds,
                "n=user,r=abc",
                &server_first,
                &format!("c={c},r=abcxyz"),
            )
        };
        let mut right = b"p=tls-exporter,,".to_vec();
        right.extend_from_slice(&data);
        assert!(server.finish(sign(&right).as_bytes()).is_ok());
        // Another channel's data (a relay in the middle), or none: refused even with a
        // proof that verifies.
        let mut other = b"p=tls-exporter,,".to_vec();
        other.extend_from_slice(&[8u8; 32]);
        for bad in [other, b"p=tls-exporter,,".to_vec()] {
            assert_eq!(
                server.finish(sign(&bad).as_bytes()),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn plain_parsing_and_password_check() {
        let p = Plain::parse(b"\0alice\0secret").unwrap();
        assert_eq!(p.username, "alice");
        assert_eq!(p.authzid, None);
        assert!(Plain::parse(b"alice\0secret").is_err());
        assert!(Plain::parse(b"\0alice\0").is_err());
        let c = Credentials::derive("secret", 4096);
        assert!(c.verify_password("secret"));
        assert!(!c.verify_password("Secret"));
        // Salts are random: two accounts with one password store different keys.
        assert_ne!(c.sha256, Credentials::derive("secret", 4096).sha256);
    }
}
