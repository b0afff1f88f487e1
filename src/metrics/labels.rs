//! The closed sets metric labels take. Their own file so that the families in [`super`] and
//! the per-peer figures in [`peers`](super::peers) share them without importing each other.

/// Which way a stanza or session goes, seen from fedgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a remote server into fedgate.
    Inbound,
    /// From fedgate to a remote server.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
