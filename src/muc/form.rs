//! The room configuration form (XEP-0045 §10.2, XEP-0004 data forms, FORM_TYPE
//! `http://jabber.org/protocol/muc#roomconfig`) and the `muc#roominfo` form of disco#info
//! (§6.4).

use super::room::{Room, RoomConfig, Whois};
use crate::xml::Element;

pub use crate::xml::ns::DATA as NS_DATA;
/// The FORM_TYPE of the room configuration form (§10.2).
pub const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// The FORM_TYPE of the extended disco#info of a room (§6.4): description, occupants.
pub const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// §7.13 voice requests and §8.6 their approval.
pub const REQUEST: &str = "http://jabber.org/protocol/muc#request";

/// Why a submitted form was refused: the text of the `<not-acceptable/>` answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// A boolean field with another value.
    #[error("the field {var} needs a boolean (1, 0, true or false), not `{value}`")]
    Boolean {
        /// The field's `var`.
        var: String,
        /// The value submitted.
        value: String,
    },
    /// A number field (`maxusers`, `maxhistoryfetch`) with something else.
    #[error("the field {var} needs a whole number, not `{value}`")]
    Number {
        /// The field's `var`.
        var: String,
        /// The value submitted.
        value: String,
    },
    /// `muc#roomconfig_whois` with another value (the value).
    #[error("muc#roomconfig_whois is `moderators` or `anyone`, not `{0}`")]
    Whois(String),
    /// `maxusers` of 0: a room nobody could join.
    #[error("muc#roomconfig_maxusers must be at least 1")]
    NoUsers,
    /// Password protection asked for without a non-empty secret, in the form or already set.
    #[error("a password-protected room needs muc#roomconfig_roomsecret")]
    NoSecret,
    /// A form of another type (its FORM_TYPE).
    #[error("the form's FORM_TYPE is `{0}`, not http://jabber.org/protocol/muc#roomconfig")]
    FormType(String),
}

fn field(var: &str, type_: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", type_);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    for v in values {
        f = f.with_child(Element::new("value", NS_DATA).with_text(v));
    }
    f
}

fn boolean(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// The form an owner gets (§10.2), filled with the room's configuration.
pub fn config_form(c: &RoomConfig, max_occupants: usize) -> Element {
    let max_users = c.max_users.to_string();
    let history = c.history_length.to_string();
    let whois = match c.whois {
        Whois::Moderators => "moderators",
        Whois::Anyone => "anyone",
    };
    let mut whois_field = field(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs",
        &[whois],
    );
    for option in ["moderators", "anyone"] {
        whois_field = whois_field.with_child(
            Element::new("option", NS_DATA)
                .with_child(Element::new("value", NS_DATA).with_text(option)),
        );
    }
    Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", NS_DATA).with_text("Room configuration"))
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMCONFIG]))
        .with_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            &[&c.name],
        ))
        .with_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Description",
            &[&c.description],
        ))
        .with_child(field(
            "muc#roomconfig_persistentroom",
            "boolean",
            "Keep the room when the last occupant leaves",
            &[boolean(c.persistent)],
        ))
        .with_child(field(
            "muc#roomconfig_publicroom",
            "boolean",
            "List the room in the directory",
            &[boolean(c.public)],
        ))
        .with_child(field(
            "muc#roomconfig_membersonly",
            "boolean",
            "Only members may enter",
            &[boolean(c.members_only)],
        ))
        .with_child(field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            "Only participants with voice may speak",
            &[boolean(c.moderated)],
        ))
        .with_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            "A password is needed to enter",
            &[boolean(c.password.is_some())],
        ))
        .with_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[c.password.as_deref().unwrap_or("")],
        ))
        .with_child(field(
            "muc#roomconfig_maxusers",
            "text-single",
            &format!("Most occupants (up to {max_occupants})"),
            &[&max_users],
        ))
        .with_child(whois_field)
        .with_child(field(
            "muc#maxhistoryfetch",
            "text-single",
            "Messages of history for newcomers",
            &[&history],
        ))
}

/// The FORM_TYPE of a data form, if it has one.
pub fn form_type(x: &Element) -> Option<String> {
    field_value(x, "FORM_TYPE")
}

/// The first value of the field `var`, if the form has it.
pub fn field_value(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.name == "field" && f.attr("var") == Some(var))
        .map(value_of)
}

/// Whether a submitted boolean field is true (1 or true); absent or anything else is false.
pub fn is_true(x: &Element, var: &str) -> bool {
    matches!(field_value(x, var).as_deref(), Some("1" | "true"))
}

/// §8.6: the form a moderator gets for a visitor's voice request, to approve or skip.
pub fn voice_approval(jid: &str, nick: &str) -> Element {
    Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", NS_DATA).with_text("Voice request"))
        .with_child(Element::new("instructions", NS_DATA).with_text(
            "To give this occupant voice, check \"Grant voice\" and submit; to skip the request, cancel.",
        ))
        .with_child(field("FORM_TYPE", "hidden", "", &[REQUEST]))
        .with_child(field("muc#role", "list-single", "Requested role", &["participant"]))
        .with_child(field("muc#jid", "jid-single", "User ID", &[jid]))
        .with_child(field("muc#roomnick", "text-single", "Room nickname", &[nick]))
        .with_child(field("muc#request_allow", "boolean", "Grant voice", &["false"]))
}

fn value_of(f: &Element) -> String {
    f.child("value", NS_DATA)
        .map(Element::text)
        .unwrap_or_default()
}

fn parse_bool(var: &str, v: &str) -> Result<bool, FormError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(FormError::Boolean {
            var: var.to_owned(),
            value: v.to_owned(),
        }),
    }
}

fn parse_number(var: &str, v: &str) -> Result<usize, FormError> {
    v.trim().parse().map_err(|_| FormError::Number {
        var: var.to_owned(),
        value: v.to_owned(),
    })
}

/// The configuration a submitted form asks for, starting from `current` (fields left out
/// keep their value; unknown fields are ignored, as XEP-0004 allows). Numbers above the
/// service's limits are lowered to them.
pub fn apply_form(
    current: &RoomConfig,
    form: &Element,
    max_occupants: usize,
    max_history: usize,
) -> Result<RoomConfig, FormError> {
    let mut c = current.clone();
    let mut protected = None;
    let mut secret = None;
    for f in form.children().filter(|f| f.name == "field") {
        let var = f.attr("var").unwrap_or_default();
        let v = value_of(f);
        match var {
            "FORM_TYPE" if v != ROOMCONFIG => return Err(FormError::FormType(v)),
            "muc#roomconfig_roomname" => c.name = v,
            "muc#roomconfig_roomdesc" => c.description = v,
            "muc#roomconfig_persistentroom" => c.persistent = parse_bool(var, &v)?,
            "muc#roomconfig_publicroom" => c.public = parse_bool(var, &v)?,
            "muc#roomconfig_membersonly" => c.members_only = parse_bool(var, &v)?,
            "muc#roomconfig_moderatedroom" => c.moderated = parse_bool(var, &v)?,
            "muc#roomconfig_passwordprotectedroom" => protected = Some(parse_bool(var, &v)?),
            "muc#roomconfig_roomsecret" => secret = Some(v),
            "muc#roomconfig_maxusers" => {
                let n = parse_number(var, &v)?;
                if n == 0 {
                    return Err(FormError::NoUsers);
                }
                c.max_users = n.min(max_occupants);
            }
            "muc#roomconfig_whois" => {
                c.whois = match v.as_str() {
                    "moderators" => Whois::Moderators,
                    "anyone" => Whois::Anyone,
                    _ => return Err(FormError::Whois(v)),
                }
            }
            "muc#maxhistoryfetch" => c.history_length = parse_number(var, &v)?.min(max_history),
            _ => {}
        }
    }
    let protected = protected.unwrap_or(c.password.is_some() || secret.is_some());
    c.password = match (protected, secret) {
        (false, _) => None,
        (true, Some(s)) if !s.is_empty() => Some(s),
        (true, Some(_)) => return Err(FormError::NoSecret),
        (true, None) => match current.password.clone() {
            Some(p) => Some(p),
            None => return Err(FormError::NoSecret),
        },
    };
    Ok(c)
}

/// The `muc#roominfo` form of the room's disco#info (§6.4).
pub fn roominfo(room: &Room) -> Element {
    let occupants = room.occupants.len().to_string();
    let subject = room.subject.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
    Element::new("x", NS_DATA)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMINFO]))
        .with_child(field(
            "muc#roominfo_description",
            "text-single",
            "Description",
            &[&room.config.description],
        ))
        .with_child(field(
            "muc#roominfo_occupants",
            "text-single",
            "Number of occupants",
            &[&occupants],
        ))
        .with_child(field(
            "muc#roominfo_subject",
            "text-single",
            "Subject",
            &[subject],
        ))
        .with_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            &[&room.config.name],
        ))
        .with_child(field(
            "muc#maxhistoryfetch",
            "text-single",
            "Messages of history for newcomers",
            &[&room.config.history_length.to_string()],
        ))
}
