pub mod dialback;
pub mod jid;
