//! Server Dialback keys ([XEP-0220]) generated per [XEP-0185], the shared dialback secret,
//! XEP-0114 component handshakes and stream ids.
//!
//! 1. The secret lives in a file shared by every fedgate instance of a deployment
//!    ([`DialbackSecret::load_or_create`]); the first start creates it.
//! 2. From it, `K = hex(SHA-256(secret))` is the HMAC key ([`DialbackSecret::from_bytes`]).
//! 3. A key is `hex(HMAC-SHA256(K, receiving + ' ' + originating + ' ' + stream_id))`
//!    ([`DialbackSecret::key`]). It depends on nothing but its inputs, so the instance that
//!    answers a `<db:verify/>` need not be the one that sent the `<db:result/>`: any instance
//!    with the same secret gives the same answer ([`DialbackSecret::verify`]).
//! 4. Stream ids are 128 random bits ([`new_stream_id`]): XEP-0185 §3 relies on them being
//!    unpredictable, because a guessable id would let an attacker precompute a valid key
//!    relayed from another stream.
//!
//! Comparisons of keys and handshake digests are constant time ([`ct_eq`]), so response
//! timing does not leak how many leading characters of a forged key were right.
//!
//! [XEP-0220]: https://xmpp.org/extensions/xep-0220.html
//! [XEP-0185]: https://xmpp.org/extensions/xep-0185.html

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::{Rng, TryRngCore};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted from a file, in bytes. A generated secret is 64 hex characters
/// (256 bits); 16 bytes is the floor below which a guessed secret becomes plausible.
pub const MIN_SECRET_BYTES: usize = 16;

/// Random bytes in a generated secret (written hex-encoded, so the file holds twice as many).
const GENERATED_SECRET_BYTES: usize = 32;

/// Errors loading or creating the dialback secret. All are fatal at startup: without the
/// secret the gateway cannot authenticate outbound streams.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialbackError {
    /// Reading, creating or writing the secret file failed.
    #[error("dialback secret file {}: {source}; check that the directory exists and is writable by fedgate", path.display())]
    Io {
        /// The secret file (or the temporary file next to it).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists but holds too short a secret (an empty file counts).
    #[error(
        "dialback secret file {} holds {len} bytes, fewer than the {MIN_SECRET_BYTES} required; \
         delete it to have fedgate generate a new one, or write a long random secret into it \
         (the same file on every fedgate instance of this deployment)",
        path.display()
    )]
    SecretTooShort {
        /// The secret file.
        path: PathBuf,
        /// Bytes in it after trimming trailing whitespace.
        len: usize,
    },
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {source}")]
    Random {
        /// The underlying error.
        #[source]
        source: rand::rand_core::OsError,
    },
}

/// The dialback secret, held only as the derived HMAC key `K = hex(SHA-256(secret))`.
///
/// Cheap to clone and share. `Debug` does not print the key.
#[derive(Clone)]
pub struct DialbackSecret {
    /// HMAC-SHA256 already keyed with K; cloning it skips the key schedule on every key.
    mac: HmacSha256,
}

impl fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DialbackSecret(<redacted>)")
    }
}

impl DialbackSecret {
    /// Derives the key from the raw secret bytes (exactly as given; no trimming here).
    pub fn from_bytes(secret: &[u8]) -> Self {
        let k = hex::encode(Sha256::digest(secret));
        let mac = HmacSha256::new_from_slice(k.as_bytes()).expect("HMAC accepts any key length");
        DialbackSecret { mac }
    }

    /// Reads the shared secret from `path`, creating the file with a fresh random secret if it
    /// does not exist.
    ///
    /// The secret is the file's content minus trailing whitespace (so an editor's newline does
    /// not change it). A new file gets 32 bytes from the operating system's CSPRNG,
    /// hex-encoded, with mode 0600 on Unix. It is written to a temporary file first and then
    /// hard-linked into place, so no instance ever reads a half-written secret, and when two
    /// instances start at once the loser of the race reads the winner's file.
    pub fn load_or_create(path: &Path) -> Result<Self, DialbackError> {
        match read_secret(path) {
            Ok(secret) => return Ok(Self::from_bytes(&secret)),
            Err(DialbackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        create_secret_file(path)?;
        Ok(Self::from_bytes(&read_secret(path)?))
    }

    /// Reads the shared secret from `path` like [`DialbackSecret::load_or_create`], but never
    /// creates the file: for diagnostics, which change nothing.
    pub fn load(path: &Path) -> Result<Self, DialbackError> {
        Ok(Self::from_bytes(&read_secret(path)?))
    }

    /// The dialback key for one stream and direction, as lowercase hex (64 characters).
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        hex::encode(self.mac_bytes(receiving, originating, stream_id))
    }

    /// Checks a key received in `<db:verify/>` against the one we would generate, in constant
    /// time. Surrounding whitespace and upper-case hex are tolerated; anything that is not
    /// 64 hex digits is simply invalid.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let mut given = [0u8; 32];
        if hex::decode_to_slice(key.trim(), &mut given).is_err() {
            return false;
        }
        ct_eq(&self.mac_bytes(receiving, originating, stream_id), &given)
    }

    fn mac_bytes(&self, receiving: &str, originating: &str, stream_id: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn read_secret(path: &Path) -> Result<Vec<u8>, DialbackError> {
    let mut bytes = fs::read(path).map_err(|source| DialbackError::Io {
        path: path.to_owned(),
        source,
    })?;
    let len = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    bytes.truncate(len);
    if len < MIN_SECRET_BYTES {
        return Err(DialbackError::SecretTooShort {
            path: path.to_owned(),
            len,
        });
    }
    warn_if_readable_by_others(path);
    Ok(bytes)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "dialback secret file is accessible to group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes a new random secret to a temporary file beside `path` and links it into place.
/// Returns Ok also when another process created `path` first.
fn create_secret_file(path: &Path) -> Result<(), DialbackError> {
    let mut raw = [0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut raw)
        .map_err(|source| DialbackError::Random { source })?;
    let mut content = hex::encode(raw).into_bytes();
    content.push(b'\n');

    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", new_stream_id()));
    let tmp = path.with_file_name(tmp_name);
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| DialbackError::Io { path: p, source }
    };

    let result = (|| {
        let mut file = open_private(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&content).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a new dialback secret");
                Ok(())
            }
            // Another instance won the race; its file is complete, because it was linked in
            // only after being written.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(path)(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(unix)]
fn open_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Constant-time equality of two byte strings; false when the lengths differ (the length
/// itself is not secret here: keys and digests have fixed lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The XEP-0114 §3 handshake digest a component sends: lowercase `hex(SHA-1(stream_id + secret))`.
pub fn component_handshake(stream_id: &str, secret: &str) -> String {
    hex::encode(handshake_bytes(stream_id, secret))
}

/// Checks a component's `<handshake/>` digest in constant time. Upper- or lowercase hex and
/// surrounding whitespace are accepted (XEP-0114 asks for lowercase, but some components send
/// uppercase); anything that is not 40 hex digits fails.
pub fn verify_component_handshake(stream_id: &str, secret: &str, digest: &str) -> bool {
    let mut given = [0u8; 20];
    if hex::decode_to_slice(digest.trim(), &mut given).is_err() {
        return false;
    }
    ct_eq(&handshake_bytes(stream_id, secret), &given)
}

fn handshake_bytes(stream_id: &str, secret: &str) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// A new stream id: 128 bits from the thread-local CSPRNG (ChaCha, seeded and periodically
/// reseeded from the operating system), as 32 lowercase hex characters.
pub fn new_stream_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill(&mut raw);
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    // XEP-0185 §2 / XEP-0220 example: secret, receiving, originating, stream id and the key
    // the spec prints. Independently recomputed with Python's hmac/hashlib:
    //   k = sha256(b"s3cr3tf0rd14lb4ck").hexdigest()
    //   hmac.new(k.encode(), b"xmpp.example.com example.org D60000229F", sha256).hexdigest()
    const SECRET: &str = "s3cr3tf0rd14lb4ck";
    const RECEIVING: &str = "xmpp.example.com";
    const ORIGINATING: &str = "example.org";
    const STREAM_ID: &str = "D60000229F";
    const KEY: &str = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643";

    #[test]
    fn xep0185_example_key() {
        let s = DialbackSecret::from_bytes(SECRET.as_bytes());
        assert_eq!(s.key(RECEIVING, ORIGINATING, STREAM_ID), KEY);
        assert!(s.verify(RECEIVING, ORIGINATING, STREAM_ID, KEY));
        assert!(s.verify(
            RECEIVING,
            ORIGINATING,
            STREAM_ID,
            &format!(" {}\n", KEY.to_uppercase())
        ));
    }

    #[test]
    fn same_secret_same_key_other_secret_fails() {
        let a = DialbackSecret::from_bytes(b"one shared secret!");
        let b = DialbackSecret::from_bytes(b"one shared secret!");
        let c = DialbackSecret::from_bytes(b"another secret...!");
        let key = a.key("b.test", "a.test", "id1");
        assert_eq!(key, b.key("b.test", "a.test", "id1"));
        assert!(b.verify("b.test", "a.test", "id1", &key));
        assert!(!c.verify("b.test", "a.test", "id1", &key));
    }

    #[test]
    fn key_binds_stream_and_direction() {
        let s = DialbackSecret::from_bytes(b"0123456789abcdef");
        let key = s.key("b.test", "a.test", "id1");
        assert_ne!(key, s.key("b.test", "a.test", "id2"));
        assert_ne!(key, s.key("a.test", "b.test", "id1"));
        assert!(!s.verify("b.test", "a.test", "id2", &key));
        assert!(!s.verify("a.test", "b.test", "id1", &key));
        assert!(!s.verify("b.test", "a.test", "id1", &key[..63]));
        assert!(!s.verify("b.test", "a.test", "id1", ""));
        assert!(!s.verify("b.test", "a.test", "id1", &format!("{key}00")));
        assert_eq!(key.len(), 64);
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn debug_does_not_leak() {
        let s = DialbackSecret::from_bytes(SECRET.as_bytes());
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(SECRET));
        assert!(!dbg.contains("a7136eb1"));
    }

    #[cfg(unix)]
    #[test]
    fn load_or_create_makes_private_file_and_reloads_same() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.secret");
        let a = DialbackSecret::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end().len(), 64);
        let b = DialbackSecret::load_or_create(&path).unwrap();
        assert_eq!(a.key("x", "y", "z"), b.key("x", "y", "z"));
        // The file's content (without the newline) is the secret.
        let c = DialbackSecret::from_bytes(text.trim_end().as_bytes());
        assert_eq!(a.key("x", "y", "z"), c.key("x", "y", "z"));
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        fs::write(&path, format!("{SECRET}-padding\n")).unwrap();
        let s = DialbackSecret::load_or_create(&path).unwrap();
        let expected = DialbackSecret::from_bytes(format!("{SECRET}-padding").as_bytes());
        assert_eq!(s.key("a", "b", "c"), expected.key("a", "b", "c"));
    }

    #[test]
    fn short_or_empty_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        fs::write(&path, "short\n").unwrap();
        let err = DialbackSecret::load_or_create(&path).unwrap_err();
        assert!(matches!(err, DialbackError::SecretTooShort { len: 5, .. }));
        assert!(err.to_string().contains("delete it"), "{err}");
        fs::write(&path, "").unwrap();
        assert!(matches!(
            DialbackSecret::load_or_create(&path),
            Err(DialbackError::SecretTooShort { len: 0, .. })
        ));
    }

    #[test]
    fn missing_directory_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("s");
        assert!(matches!(
            DialbackSecret::load_or_create(&path),
            Err(DialbackError::Io { .. })
        ));
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let keys: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        DialbackSecret::load_or_create(&path)
                            .unwrap()
                            .key("a", "b", "c")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn component_handshake_vector() {
        // XEP-0114 §3 shows stream id 3BF96D32 but not the secret behind its digest, so this
        // vector was computed independently: python3 -c 'import hashlib;
        // print(hashlib.sha1(b"3BF96D32secret").hexdigest())'.
        let digest = "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136";
        assert_eq!(component_handshake("3BF96D32", "secret"), digest);
        assert!(verify_component_handshake("3BF96D32", "secret", digest));
        assert!(verify_component_handshake(
            "3BF96D32",
            "secret",
            &digest.to_uppercase()
        ));
        assert!(!verify_component_handshake("3BF96D32", "Secret", digest));
        assert!(!verify_component_handshake("3BF96D33", "secret", digest));
        assert!(!verify_component_handshake(
            "3BF96D32",
            "secret",
            &digest[..39]
        ));
        assert!(!verify_component_handshake("3BF96D32", "secret", "zz"));
    }

    #[test]
    fn ct_eq_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn stream_ids_unique_hex() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_stream_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
    }
}
