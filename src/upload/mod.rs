//! XEP-0363 HTTP file upload: the rules of the service, sans I/O. A client asks the upload
//! domain for a slot over XMPP; the answer names a URL to PUT the file to, with an
//! `Authorization` header, and the URL others GET it from.
//!
//! # Layout
//! - [`token`]: slot tokens, an HMAC-SHA256 over (path, size, content type, expiry), so the
//!   HTTP side checks a PUT against its slot with no record of the slots given out.
//! - [`slot`]: a `<request/>` parsed and checked (filename, size, content type), then held
//!   to the size limit and the account's quota; the slot or the refusal XEP-0363 §4 names.
//! - [`disco`]: the service's disco#info: `store/file`, the feature, `max-file-size`.
//! - [`put`]: whether an HTTP PUT matches its slot (token, length, type), and the HTTP
//!   status of each refusal.
//!
//! The service itself (its XEP-0114 link, disco, the HTTPS listener and the files on disk)
//! is not part of the crate yet: these modules are what it is to be built on.

pub mod disco;
pub mod put;
pub mod slot;
pub mod token;
