//! Why TLS could not be set up or a handshake failed. A file of its own so that the pieces of
//! the TLS service (certificates, handshakes) and the service itself all return it without
//! importing each other.

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file could not be used. Fatal at start; on reload the old
    /// configuration stays.
    #[error("{path}: {problem}")]
    File {
        /// The file as configured.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No certificate is configured for the name the peer asked for. Fatal for the stream.
    #[error("no certificate for {0}")]
    NoCertificate(String),
    /// The handshake failed (protocol error, I/O error, timeout of the peer). Fatal for the
    /// stream.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[from] std::io::Error),
}
