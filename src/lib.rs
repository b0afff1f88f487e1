//! fedgate: XMPP server-to-server federation gateway.

pub mod xml;
