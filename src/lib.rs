pub mod config;
pub mod dialback;
pub mod jid;
