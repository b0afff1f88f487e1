//! Our certificates by domain, and the trust anchors for peers' certificates.

/// One loaded generation of certificates and trust anchors.
pub(crate) struct CertState {}
