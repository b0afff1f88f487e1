//! The facts the [scanner](super::scan) learns about a top-level element while it validates it
//! (RFC 6120 §8.1: `to`, `from`, `id`, `type`, its name and namespace), which a
//! [`Stanza`](super::Stanza) keeps next to its bytes. Their own file because both sides use
//! them: the scanner fills them in, the stanza reads them.

use super::ns::NsUri;

/// An attribute value: a range into the raw bytes when it has no entity to
/// unescape (the common case, no allocation), else the unescaped string.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Span(usize, usize),
    Owned(Box<str>),
}

/// What the framer learned about a top element while validating it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    /// Qualified name of the top element, as a range of `raw`.
    pub(crate) name: (usize, usize),
    /// Resolved namespace of the top element.
    pub(crate) ns: Option<NsUri>,
    pub(crate) to: Option<Val>,
    pub(crate) from: Option<Val>,
    pub(crate) id: Option<Val>,
    pub(crate) type_: Option<Val>,
    /// The top element declares the source content namespace itself.
    pub(crate) declares_content_ns: bool,
    /// Length of the top start tag, `<` to `>` inclusive.
    pub(crate) start_len: usize,
    /// Bit i set: the stanza relies on prefix i of the source context
    /// without declaring it (bit 63 stands for every prefix from 63 on).
    pub(crate) inherited: u64,
}
