pub mod jid;
