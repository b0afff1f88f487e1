//! Errors of the XML layer and the wire conditions they map to.
//!
//! - [`StreamErrorCondition`]: the defined conditions of RFC 6120 §4.9.3, and
//!   [`stream_error`] to serialize a `<stream:error/>` (RFC 6120 §4.9.2).
//! - [`StanzaErrorCondition`] / [`StanzaErrorType`]: RFC 6120 §8.3.3 and §8.3.2,
//!   used to bounce stanzas.
//! - [`SaslCondition`]: the SASL `<failure/>` conditions of RFC 6120 §6.5.
//! - [`XmlError`]: everything the framer can reject. All of these are fatal for
//!   the stream; `impl From<&XmlError> for StreamErrorCondition` is the one place
//!   that decides which `<stream:error/>` the peer gets.

use std::fmt;

use super::escape::escape_text;
use super::ns;

/// A defined stream error condition (RFC 6120 §4.9.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamErrorCondition {
    /// §4.9.3.1: the peer sent XML that cannot be processed; the catch-all when no more specific
    /// condition fits.
    BadFormat,
    /// §4.9.3.2: an element uses an unsupported namespace prefix, or lacks a namespace it needs.
    BadNamespacePrefix,
    /// §4.9.3.3: the server closes this stream because a newer stream conflicts with it.
    Conflict,
    /// §4.9.3.4: the stream is closed because the other side seems gone (no traffic for too long).
    ConnectionTimeout,
    /// §4.9.3.5: the `to` of the stream header names a domain this server no longer serves.
    HostGone,
    /// §4.9.3.6: the `to` of the stream header names a domain this server does not serve.
    HostUnknown,
    /// §4.9.3.7: a stanza between servers lacks `to` or `from`, or one of them is not a valid JID.
    ImproperAddressing,
    /// §4.9.3.8: a misconfiguration or internal failure keeps the server from serving the stream.
    InternalServerError,
    /// §4.9.3.9: a stanza's `from` is not a domain (or JID) that was authenticated on this stream.
    InvalidFrom,
    /// §4.9.3.10: the stream element is not in the streams namespace, or the content namespace
    /// is not one the server supports (e.g. not `jabber:server`).
    InvalidNamespace,
    /// §4.9.3.11: the XML is well-formed but invalid against the schemas (only for servers that
    /// validate).
    InvalidXml,
    /// §4.9.3.12: the peer sent data before authenticating, or did something in stream
    /// negotiation it is not allowed to.
    NotAuthorized,
    /// §4.9.3.13: the peer sent XML that breaks the well-formedness rules of XML 1.0.
    NotWellFormed,
    /// §4.9.3.14: the peer broke a local policy, e.g. a stanza over the size limit; the text may
    /// say which.
    PolicyViolation,
    /// §4.9.3.15: the server could not reach a remote entity it needs for authentication, e.g.
    /// the authoritative server in dialback.
    RemoteConnectionFailed,
    /// §4.9.3.16: the stream must be set up again, e.g. because new security features are offered
    /// or the certificates or keys behind the security layer have changed.
    Reset,
    /// §4.9.3.17: the server lacks the resources (memory, connections) to serve the stream.
    ResourceConstraint,
    /// §4.9.3.18: the peer used XML that §11.1 forbids: comments, processing instructions, DTDs
    /// or entity references other than the predefined ones.
    RestrictedXml,
    /// §4.9.3.19: the XML character data of the element is the host (and
    /// optional port) the peer should reconnect to.
    SeeOtherHost(String),
    /// §4.9.3.20: the server is shutting down and closes all its streams.
    SystemShutdown,
    /// §4.9.3.21: a condition RFC 6120 does not define; meant to go with an application-specific
    /// condition element.
    UndefinedCondition,
    /// §4.9.3.22: the stream is not encoded in UTF-8.
    UnsupportedEncoding,
    /// §4.9.3.23: the receiving side requires a stream feature the initiating side does not
    /// support, and offers no other mandatory feature.
    UnsupportedFeature,
    /// §4.9.3.24: a top-level element the server does not understand (unknown namespace or
    /// element name).
    UnsupportedStanzaType,
    /// §4.9.3.25: the `version` of the stream header is one the server does not support.
    UnsupportedVersion,
}

impl StreamErrorCondition {
    /// The element name used on the wire.
    pub fn as_str(&self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost(_) => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    /// Parses an element name received from a peer. `see-other-host` comes back
    /// with an empty host: the host is the element's text, which the caller
    /// has to read from the element itself.
    pub fn from_name(name: &str) -> Option<Self> {
        use StreamErrorCondition::*;
        Some(match name {
            "bad-format" => BadFormat,
            "bad-namespace-prefix" => BadNamespacePrefix,
            "conflict" => Conflict,
            "connection-timeout" => ConnectionTimeout,
            "host-gone" => HostGone,
            "host-unknown" => HostUnknown,
            "improper-addressing" => ImproperAddressing,
            "internal-server-error" => InternalServerError,
            "invalid-from" => InvalidFrom,
            "invalid-namespace" => InvalidNamespace,
            "invalid-xml" => InvalidXml,
            "not-authorized" => NotAuthorized,
            "not-well-formed" => NotWellFormed,
            "policy-violation" => PolicyViolation,
            "remote-connection-failed" => RemoteConnectionFailed,
            "reset" => Reset,
            "resource-constraint" => ResourceConstraint,
            "restricted-xml" => RestrictedXml,
            "see-other-host" => SeeOtherHost(String::new()),
            "system-shutdown" => SystemShutdown,
            "undefined-condition" => UndefinedCondition,
            "unsupported-encoding" => UnsupportedEncoding,
            "unsupported-feature" => UnsupportedFeature,
            "unsupported-stanza-type" => UnsupportedStanzaType,
            "unsupported-version" => UnsupportedVersion,
            _ => return None,
        })
    }
}

impl fmt::Display for StreamErrorCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamErrorCondition::SeeOtherHost(host) => write!(f, "see-other-host ({host})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Serializes a `<stream:error/>` element (RFC 6120 §4.9.2). The caller sends
/// it followed by `</stream:stream>`; the `stream` prefix is the one fedgate
/// always declares on its own stream headers.
pub fn stream_error(cond: &StreamErrorCondition, text: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"<stream:error><");
    out.extend_from_slice(cond.as_str().as_bytes());
    out.extend_from_slice(b" xmlns='");
    out.extend_from_slice(ns::STREAMS.as_bytes());
    match cond {
        StreamErrorCondition::SeeOtherHost(host) => {
            out.extend_from_slice(b"'>");
            out.extend_from_slice(escape_text(host).as_bytes());
            out.extend_from_slice(b"</see-other-host>");
        }
        _ => out.extend_from_slice(b"'/>"),
    }
    if let Some(text) = text {
        write_text(&mut out, ns::STREAMS, text);
    }
    out.extend_from_slice(b"</stream:error>");
    out
}

/// Appends `<text xmlns='NS'>TEXT</text>` (escaped): the human-readable part of a stream or
/// stanza error. An empty text is left out: `<text/>` with nothing in it tells the reader
/// nothing, and clients show it as "unknown" (RFC 6120 §8.3.2 makes the element optional).
fn write_text(out: &mut Vec<u8>, ns: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    out.extend_from_slice(b"<text xmlns='");
    out.extend_from_slice(ns.as_bytes());
    out.extend_from_slice(b"'>");
    out.extend_from_slice(escape_text(text).as_bytes());
    out.extend_from_slice(b"</text>");
}

/// Appends the `<error type='…'><COND xmlns='…stanzas'/>[<text/>]</error>` child of an error
/// stanza (RFC 6120 §8.3.2). XEP-0220 dialback errors carry the same element.
pub fn write_stanza_error(out: &mut Vec<u8>, cond: StanzaErrorCondition, text: Option<&str>) {
    out.extend_from_slice(b"<error type='");
    out.extend_from_slice(cond.error_type().as_str().as_bytes());
    out.extend_from_slice(b"'><");
    out.extend_from_slice(cond.as_str().as_bytes());
    out.extend_from_slice(b" xmlns='");
    out.extend_from_slice(ns::STANZAS.as_bytes());
    out.extend_from_slice(b"'/>");
    if let Some(text) = text {
        write_text(out, ns::STANZAS, text);
    }
    out.extend_from_slice(b"</error>");
}

/// The `type` attribute of a stanza `<error/>` (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry: the error cannot be recovered from.
    Cancel,
    /// Go on: the condition was only a warning.
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting: the error is temporary.
    Wait,
}

impl StanzaErrorType {
    /// The `type` attribute value used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }
}

impl fmt::Display for StanzaErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A defined stanza error condition (RFC 6120 §8.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StanzaErrorCondition {
    /// §8.3.3.1: the stanza is malformed or cannot be processed, e.g. an IQ of unknown `type`.
    BadRequest,
    /// §8.3.3.2: access is refused because a resource or session of that name or address exists.
    Conflict,
    /// §8.3.3.3: the recipient or a server on the way does not implement a feature the stanza
    /// needs.
    FeatureNotImplemented,
    /// §8.3.3.4: the sender lacks the permissions the action needs.
    Forbidden,
    /// §8.3.3.5: the recipient or server is no longer at this address, usually for good; the
    /// character data may give the new address.
    Gone,
    /// §8.3.3.6: a misconfiguration or internal failure kept the server from handling the stanza.
    InternalServerError,
    /// §8.3.3.7: the addressed JID or the requested item does not exist.
    ItemNotFound,
    /// §8.3.3.8: the sender gave an address (e.g. in `to`) that breaks the JID rules of RFC 7622.
    JidMalformed,
    /// §8.3.3.9: the request is understood, but does not meet the recipient's or server's
    /// criteria (e.g. a size or content policy).
    NotAcceptable,
    /// §8.3.3.10: nobody is allowed to perform this action, e.g. sending to a barred domain.
    NotAllowed,
    /// §8.3.3.11: the sender must first authenticate, or gave wrong credentials.
    NotAuthorized,
    /// §8.3.3.12: the sender broke a local service policy; the text may say which.
    PolicyViolation,
    /// §8.3.3.13: the recipient is temporarily unavailable, e.g. offline with no resources.
    RecipientUnavailable,
    /// §8.3.3.14: the request is redirected, usually temporarily, to the address in the
    /// character data.
    Redirect,
    /// §8.3.3.15: the service needs the sender to register first.
    RegistrationRequired,
    /// §8.3.3.16: the recipient's domain does not exist or cannot be resolved (no SRV, A or AAAA).
    RemoteServerNotFound,
    /// §8.3.3.17: the recipient's domain was resolved but no stream to it came up in time.
    RemoteServerTimeout,
    /// §8.3.3.18: the server or recipient is busy or lacks the resources to handle the stanza.
    ResourceConstraint,
    /// §8.3.3.19: the server or recipient does not offer the requested service. Also what
    /// §8.3.3.7 and §8.3.3.13 answer instead when their condition would reveal presence.
    ServiceUnavailable,
    /// §8.3.3.20: the service needs a subscription first, e.g. to the recipient's presence.
    SubscriptionRequired,
    /// §8.3.3.21: a condition RFC 6120 does not define; meant to go with an application-specific
    /// condition element.
    UndefinedCondition,
    /// §8.3.3.22: the request is understood but not expected now, e.g. out of order.
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    /// The element name used on the wire.
    pub fn as_str(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// Parses an element name received from a peer.
    pub fn from_name(name: &str) -> Option<Self> {
        use StanzaErrorCondition::*;
        Some(match name {
            "bad-request" => BadRequest,
            "conflict" => Conflict,
            "feature-not-implemented" => FeatureNotImplemented,
            "forbidden" => Forbidden,
            "gone" => Gone,
            "internal-server-error" => InternalServerError,
            "item-not-found" => ItemNotFound,
            "jid-malformed" => JidMalformed,
            "not-acceptable" => NotAcceptable,
            "not-allowed" => NotAllowed,
            "not-authorized" => NotAuthorized,
            "policy-violation" => PolicyViolation,
            "recipient-unavailable" => RecipientUnavailable,
            "redirect" => Redirect,
            "registration-required" => RegistrationRequired,
            "remote-server-not-found" => RemoteServerNotFound,
            "remote-server-timeout" => RemoteServerTimeout,
            "resource-constraint" => ResourceConstraint,
            "service-unavailable" => ServiceUnavailable,
            "subscription-required" => SubscriptionRequired,
            "undefined-condition" => UndefinedCondition,
            "unexpected-request" => UnexpectedRequest,
            _ => return None,
        })
    }

    /// The error type RFC 6120 §8.3.3 gives for this condition in its
    /// definition and examples; used when fedgate bounces a stanza itself.
    pub fn error_type(self) -> StanzaErrorType {
        use StanzaErrorCondition::*;
        use StanzaErrorType as T;
        match self {
            BadRequest => T::Modify,
            Conflict => T::Cancel,
            FeatureNotImplemented => T::Cancel,
            Forbidden => T::Auth,
            Gone => T::Cancel,
            InternalServerError => T::Cancel,
            ItemNotFound => T::Cancel,
            JidMalformed => T::Modify,
            NotAcceptable => T::Modify,
            NotAllowed => T::Cancel,
            NotAuthorized => T::Auth,
            PolicyViolation => T::Modify,
            RecipientUnavailable => T::Wait,
            Redirect => T::Modify,
            RegistrationRequired => T::Auth,
            RemoteServerNotFound => T::Cancel,
            RemoteServerTimeout => T::Wait,
            ResourceConstraint => T::Wait,
            ServiceUnavailable => T::Cancel,
            SubscriptionRequired => T::Auth,
            UndefinedCondition => T::Cancel,
            UnexpectedRequest => T::Wait,
        }
    }
}

impl StanzaErrorCondition {
    /// The legacy `code` of XEP-0086 §2 ("Error codes to add to XMPP-style errors"), which
    /// pre-XMPP clients read and some clients still show (profanity). `None` for
    /// `<policy-violation/>`, which RFC 6120 added after that table.
    pub fn legacy_code(self) -> Option<u16> {
        use StanzaErrorCondition::*;
        Some(match self {
            BadRequest | JidMalformed | UnexpectedRequest => 400,
            NotAuthorized => 401,
            Forbidden => 403,
            ItemNotFound | RecipientUnavailable | RemoteServerNotFound => 404,
            NotAllowed => 405,
            NotAcceptable => 406,
            RegistrationRequired | SubscriptionRequired => 407,
            Conflict => 409,
            Gone | Redirect => 302,
            InternalServerError | ResourceConstraint | UndefinedCondition => 500,
            FeatureNotImplemented => 501,
            ServiceUnavailable => 503,
            RemoteServerTimeout => 504,
            PolicyViolation => return None,
        })
    }
}

impl fmt::Display for StanzaErrorCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SASL `<failure/>` condition (RFC 6120 §6.5), sent or received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SaslCondition {
    /// The receiving side confirms that the initiating side aborted the SASL exchange.
    Aborted,
    /// The account is (temporarily) disabled.
    AccountDisabled,
    /// The credentials given have expired.
    CredentialsExpired,
    /// The mechanism may only be used on a stream protected by TLS (confidentiality and
    /// integrity).
    EncryptionRequired,
    /// The base64 data of the exchange is not correctly encoded.
    IncorrectEncoding,
    /// The authorization identity is malformed, or the initiating side may not act as it (for
    /// s2s SASL EXTERNAL: not a domain its certificate covers).
    InvalidAuthzid,
    /// No mechanism was named, or one that was not offered.
    InvalidMechanism,
    /// The request breaks the syntax of the mechanism, e.g. an initial response the mechanism
    /// does not allow.
    MalformedRequest,
    /// The mechanism is weaker than the server's policy allows.
    MechanismTooWeak,
    /// Authentication failed: wrong credentials, or an attack the server chooses not to reveal.
    NotAuthorized,
    /// A temporary failure on the receiving side; try again later.
    TemporaryAuthFailure,
}

impl SaslCondition {
    /// The element name used on the wire.
    pub fn as_str(self) -> &'static str {
        use SaslCondition::*;
        match self {
            Aborted => "aborted",
            AccountDisabled => "account-disabled",
            CredentialsExpired => "credentials-expired",
            EncryptionRequired => "encryption-required",
            IncorrectEncoding => "incorrect-encoding",
            InvalidAuthzid => "invalid-authzid",
            InvalidMechanism => "invalid-mechanism",
            MalformedRequest => "malformed-request",
            MechanismTooWeak => "mechanism-too-weak",
            NotAuthorized => "not-authorized",
            TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    /// Parses an element name received from a peer.
    pub fn from_name(name: &str) -> Option<Self> {
        use SaslCondition::*;
        Some(match name {
            "aborted" => Aborted,
            "account-disabled" => AccountDisabled,
            "credentials-expired" => CredentialsExpired,
            "encryption-required" => EncryptionRequired,
            "incorrect-encoding" => IncorrectEncoding,
            "invalid-authzid" => InvalidAuthzid,
            "invalid-mechanism" => InvalidMechanism,
            "malformed-request" => MalformedRequest,
            "mechanism-too-weak" => MechanismTooWeak,
            "not-authorized" => NotAuthorized,
            "temporary-auth-failure" => TemporaryAuthFailure,
            _ => return None,
        })
    }

    /// `<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><COND/>[<text/>]</failure>`.
    pub fn failure(self, text: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"<failure xmlns='");
        out.extend_from_slice(ns::SASL.as_bytes());
        out.extend_from_slice(b"'><");
        out.extend_from_slice(self.as_str().as_bytes());
        out.extend_from_slice(b"/>");
        if let Some(text) = text {
            out.extend_from_slice(b"<text>");
            out.extend_from_slice(escape_text(text).as_bytes());
            out.extend_from_slice(b"</text>");
        }
        out.extend_from_slice(b"</failure>");
        out
    }
}

impl fmt::Display for SaslCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the XML layer rejects. Every variant is fatal for the stream:
/// the session sends the mapped `<stream:error/>` (see
/// `From<&XmlError> for StreamErrorCondition`) and closes, because after a
/// framing error there is no reliable way to find the next stanza boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// The input is not well-formed XML (XML 1.0 §2.1), e.g. a mismatched end
    /// tag, bad attribute syntax, a duplicate attribute or an illegal character.
    /// Fatal: maps to `not-well-formed`.
    #[error("not well-formed: {reason}")]
    NotWellFormed {
        /// What is malformed, for the log and the stream error text.
        reason: String,
    },
    /// XML that RFC 6120 §11.1 forbids on an XMPP stream (comment, processing
    /// instruction, DTD, entity declaration, non-predefined entity reference).
    /// Fatal: maps to `restricted-xml`.
    #[error("restricted XML: {what}")]
    RestrictedXml {
        /// Which construct was found, e.g. `comment`.
        what: &'static str,
    },
    /// The bytes are not valid UTF-8 (RFC 6120 §11.6). Fatal: maps to
    /// `not-well-formed`.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A top-level element (or the stream header) is larger than the limit.
    /// Fatal: maps to `policy-violation`.
    #[error("stanza exceeds {max} bytes")]
    StanzaTooLarge {
        /// The size limit that was exceeded, in bytes.
        max: usize,
    },
    /// Elements are nested deeper than the limit inside one stanza. Fatal:
    /// maps to `policy-violation`.
    #[error("stanza nesting exceeds depth {max}")]
    TooDeep {
        /// The deepest nesting allowed; the stanza element itself is depth 1.
        max: usize,
    },
    /// One element carries more attributes than the limit. Fatal: maps to
    /// `policy-violation`.
    #[error("element has more than {max} attributes")]
    TooManyAttributes {
        /// The most attributes allowed on one element, namespace declarations included.
        max: usize,
    },
    /// The stream element is not `stream` in the streams namespace, or a
    /// namespace declaration is illegal. Fatal: maps to `invalid-namespace`.
    #[error("invalid namespace: {reason}")]
    InvalidNamespace {
        /// Which namespace or declaration is wrong.
        reason: String,
    },
    /// Well-formed XML that is not a valid XMPP stream, e.g. character data
    /// between stanzas. Fatal: maps to `bad-format`.
    #[error("bad format: {reason}")]
    BadFormat {
        /// What was found where it does not belong.
        reason: String,
    },
    /// An element or attribute uses a prefix no declaration is in scope for.
    /// Fatal: maps to `bad-namespace-prefix`.
    #[error("undeclared namespace prefix {prefix:?}")]
    BadNamespacePrefix {
        /// The prefix as written.
        prefix: String,
    },
    /// The XML declaration names an encoding other than UTF-8 (RFC 6120
    /// §11.6). Fatal: maps to `unsupported-encoding`.
    #[error("unsupported encoding {encoding:?}")]
    UnsupportedEncoding {
        /// The encoding name the declaration gives.
        encoding: String,
    },
}

impl XmlError {
    pub(crate) fn nwf(reason: impl Into<String>) -> Self {
        XmlError::NotWellFormed {
            reason: reason.into(),
        }
    }
}

impl From<&XmlError> for StreamErrorCondition {
    fn from(e: &XmlError) -> Self {
        match e {
            XmlError::NotWellFormed { .. } | XmlError::InvalidUtf8 => {
                StreamErrorCondition::NotWellFormed
            }
            XmlError::RestrictedXml { .. } => StreamErrorCondition::RestrictedXml,
            XmlError::StanzaTooLarge { .. }
            | XmlError::TooDeep { .. }
            | XmlError::TooManyAttributes { .. } => StreamErrorCondition::PolicyViolation,
            XmlError::InvalidNamespace { .. } => StreamErrorCondition::InvalidNamespace,
            XmlError::BadFormat { .. } => StreamErrorCondition::BadFormat,
            XmlError::BadNamespacePrefix { .. } => StreamErrorCondition::BadNamespacePrefix,
            XmlError::UnsupportedEncoding { .. } => StreamErrorCondition::UnsupportedEncoding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_conditions_round_trip_and_failures_carry_their_text() {
        for c in [
            SaslCondition::InvalidMechanism,
            SaslCondition::IncorrectEncoding,
            SaslCondition::InvalidAuthzid,
            SaslCondition::TemporaryAuthFailure,
        ] {
            assert_eq!(SaslCondition::from_name(c.as_str()), Some(c));
        }
        assert_eq!(SaslCondition::from_name("no-such-condition"), None);
        assert_eq!(
            SaslCondition::InvalidAuthzid.failure(None),
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
        );
        assert_eq!(
            std::str::from_utf8(&SaslCondition::TemporaryAuthFailure.failure(Some("a<b"))).unwrap(),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/><text>a&lt;b</text></failure>"
        );
    }

    #[test]
    fn stream_error_bytes() {
        let out = stream_error(&StreamErrorCondition::HostUnknown, Some("a<b"));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b</text></stream:error>"
        );
        let out = stream_error(&StreamErrorCondition::Reset, None);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<stream:error><reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
        let out = stream_error(
            &StreamErrorCondition::SeeOtherHost("b.example:5269".into()),
            None,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>\
             b.example:5269</see-other-host></stream:error>"
        );
    }

    #[test]
    fn an_empty_text_is_left_out_of_stream_and_stanza_errors() {
        let out = stream_error(&StreamErrorCondition::Reset, Some(""));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<stream:error><reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
        let mut out = Vec::new();
        write_stanza_error(&mut out, StanzaErrorCondition::ServiceUnavailable, Some(""));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<error type='cancel'><service-unavailable \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        );
    }

    #[test]
    fn condition_names_round_trip() {
        for name in [
            "bad-format",
            "bad-namespace-prefix",
            "conflict",
            "connection-timeout",
            "host-gone",
            "host-unknown",
            "improper-addressing",
            "internal-server-error",
            "invalid-from",
            "invalid-namespace",
            "invalid-xml",
            "not-authorized",
            "not-well-formed",
            "policy-violation",
            "remote-connection-failed",
            "reset",
            "resource-constraint",
            "restricted-xml",
            "see-other-host",
            "system-shutdown",
            "undefined-condition",
            "unsupported-encoding",
            "unsupported-feature",
            "unsupported-stanza-type",
            "unsupported-version",
        ] {
            assert_eq!(
                StreamErrorCondition::from_name(name).unwrap().as_str(),
                name
            );
        }
        assert_eq!(StreamErrorCondition::from_name("nope"), None);
        assert_eq!(
            StanzaErrorCondition::from_name("remote-server-timeout"),
            Some(StanzaErrorCondition::RemoteServerTimeout)
        );
    }

    #[test]
    fn legacy_codes_follow_xep_0086() {
        use StanzaErrorCondition as C;
        for (c, code) in [
            (C::BadRequest, Some(400)),
            (C::Conflict, Some(409)),
            (C::FeatureNotImplemented, Some(501)),
            (C::Forbidden, Some(403)),
            (C::Gone, Some(302)),
            (C::InternalServerError, Some(500)),
            (C::ItemNotFound, Some(404)),
            (C::JidMalformed, Some(400)),
            (C::NotAcceptable, Some(406)),
            (C::NotAllowed, Some(405)),
            (C::NotAuthorized, Some(401)),
            (C::RecipientUnavailable, Some(404)),
            (C::Redirect, Some(302)),
            (C::RegistrationRequired, Some(407)),
            (C::RemoteServerNotFound, Some(404)),
            (C::RemoteServerTimeout, Some(504)),
            (C::ResourceConstraint, Some(500)),
            (C::ServiceUnavailable, Some(503)),
            (C::SubscriptionRequired, Some(407)),
            (C::UndefinedCondition, Some(500)),
            (C::UnexpectedRequest, Some(400)),
            (C::PolicyViolation, None),
        ] {
            assert_eq!(c.legacy_code(), code, "{c}");
        }
    }

    #[test]
    fn stanza_error_default_types() {
        use StanzaErrorCondition as C;
        use StanzaErrorType as T;
        assert_eq!(C::RemoteServerNotFound.error_type(), T::Cancel);
        assert_eq!(C::RemoteServerTimeout.error_type(), T::Wait);
        assert_eq!(C::ResourceConstraint.error_type(), T::Wait);
        assert_eq!(C::ServiceUnavailable.error_type(), T::Cancel);
        assert_eq!(C::PolicyViolation.error_type(), T::Modify);
        assert_eq!(C::NotAuthorized.error_type(), T::Auth);
        assert_eq!(C::JidMalformed.error_type(), T::Modify);
    }

    #[test]
    fn xml_error_mapping() {
        use StreamErrorCondition as S;
        let cases = [
            (XmlError::nwf("x"), S::NotWellFormed),
            (XmlError::InvalidUtf8, S::NotWellFormed),
            (
                XmlError::RestrictedXml { what: "comment" },
                S::RestrictedXml,
            ),
            (XmlError::StanzaTooLarge { max: 1 }, S::PolicyViolation),
            (XmlError::TooDeep { max: 1 }, S::PolicyViolation),
            (XmlError::TooManyAttributes { max: 1 }, S::PolicyViolation),
            (
                XmlError::InvalidNamespace { reason: "x".into() },
                S::InvalidNamespace,
            ),
            (XmlError::BadFormat { reason: "x".into() }, S::BadFormat),
            (
                XmlError::BadNamespacePrefix { prefix: "x".into() },
                S::BadNamespacePrefix,
            ),
        ];
        for (err, cond) in cases {
            assert_eq!(S::from(&err), cond, "{err}");
        }
    }
}
