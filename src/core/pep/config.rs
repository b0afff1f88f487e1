//! A PEP node's configuration (XEP-0060 §16.4 `pubsub#node_config`, the fields PEP needs) and
//! changes to it from publish-options (§7.1.5) or the owner's configure form (§8.2).

use std::str::FromStr;

use super::form::Form;

pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";

/// Who may retrieve items and receive notifications (XEP-0060 §4.5, XEP-0163 §4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessModel {
    /// The owner and contacts subscribed to the owner's presence (`from` or `both`).
    #[default]
    Presence,
    /// Anyone.
    Open,
    /// The owner only (affiliations are not implemented, so the whitelist is empty).
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Presence => "presence",
            AccessModel::Open => "open",
            AccessModel::Whitelist => "whitelist",
        }
    }
}

impl FromStr for AccessModel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "presence" => Ok(AccessModel::Presence),
            "open" => Ok(AccessModel::Open),
            "whitelist" => Ok(AccessModel::Whitelist),
            _ => Err(()),
        }
    }
}

/// `pubsub#send_last_published_item`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendLast {
    Never,
    /// PEP has no explicit subscriptions here, so this behaves as `never`.
    OnSub,
    /// The default: to each entity allowed and interested when it becomes available.
    #[default]
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
}

impl FromStr for SendLast {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "never" => Ok(SendLast::Never),
            "on_sub" => Ok(SendLast::OnSub),
            "on_sub_and_presence" => Ok(SendLast::OnSubAndPresence),
            _ => Err(()),
        }
    }
}

/// A node's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    pub access: AccessModel,
    /// Items are kept; without persistence only the last item is kept (for
    /// last-published-item delivery).
    pub persist_items: bool,
    /// Items kept, at most the configured `pep_max_items`.
    pub max_items: u32,
    pub send_last: SendLast,
}

impl NodeConfig {
    /// A node created by a publish without options (XEP-0163 §4.1 defaults).
    pub const DEFAULT: NodeConfig = NodeConfig {
        access: AccessModel::Presence,
        persist_items: true,
        max_items: 1,
        send_last: SendLast::OnSubAndPresence,
    };

    /// The owner's configure form (§8.2.1).
    pub fn to_form(self) -> Form {
        Form::new("form", NS_NODE_CONFIG)
            .with_field("pubsub#access_model", self.access.as_str())
            .with_field(
                "pubsub#persist_items",
                if self.persist_items { "true" } else { "false" },
            )
            .with_field("pubsub#max_items", self.max_items.to_string())
            .with_field("pubsub#send_last_published_item", self.send_last.as_str())
    }
}

/// The fields a form sets; the others stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub access: Option<AccessModel>,
    pub persist_items: Option<bool>,
    pub max_items: Option<u32>,
    pub send_last: Option<SendLast>,
}

/// A form field whose value we cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: `{value}` is not supported")]
pub struct BadField {
    pub var: String,
    pub value: String,
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

impl ConfigChange {
    /// Reads publish-options or a configure form; `max_items` (a number or `max`) is clamped
    /// to `max_items_cap`. Fields we do not know are ignored.
    pub fn from_form(form: &Form, max_items_cap: u32) -> Result<ConfigChange, BadField> {
        let mut c = ConfigChange::default();
        for f in &form.fields {
            let Some(v) = f.values.first().map(String::as_str) else {
                continue;
            };
            let bad = || BadField {
                var: f.var.clone(),
                value: v.to_owned(),
            };
            match f.var.as_str() {
                "pubsub#access_model" => c.access = Some(v.parse().map_err(|_| bad())?),
                "pubsub#persist_items" => c.persist_items = Some(boolean(v).ok_or_else(bad)?),
                "pubsub#max_items" => {
                    let n = match v {
                        "max" => max_items_cap,
                        n => n.parse::<u32>().map_err(|_| bad())?.min(max_items_cap),
                    };
                    c.max_items = Some(n.max(1));
                }
                "pubsub#send_last_published_item" => {
                    c.send_last = Some(v.parse().map_err(|_| bad())?)
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// `base` with this change applied.
    pub fn apply(&self, base: &NodeConfig) -> NodeConfig {
        NodeConfig {
            access: self.access.unwrap_or(base.access),
            persist_items: self.persist_items.unwrap_or(base.persist_items),
            max_items: self.max_items.unwrap_or(base.max_items),
            send_last: self.send_last.unwrap_or(base.send_last),
        }
    }

    /// Whether every field set here equals `c`'s (the §7.1.5 precondition).
    pub fn matches(&self, c: &NodeConfig) -> bool {
        self.apply(c) == *c
    }
}
