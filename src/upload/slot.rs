//! Slot requests (XEP-0363 §4): `<request filename size content-type/>` in an iq get, and
//! what the service answers, a signed slot or a refusal naming the rule (sans I/O).

use super::token::{Signer, SlotGrant};
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{Element, Node};

/// XEP-0363's namespace: the disco feature, `<request/>`, `<slot/>` and `<file-too-large/>`.
pub const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";

/// The longest filename a slot takes, in bytes (a common file system limit).
const MAX_FILENAME_BYTES: usize = 255;

/// The content type of a request that names none (XEP-0363 §4: it is optional).
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The limits a slot request is held to.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The largest file, in bytes (announced in disco as `max-file-size`).
    pub max_file_bytes: u64,
    /// Bytes each account may have stored at once.
    pub quota_bytes: u64,
    /// How long a slot's PUT stays authorised, in seconds.
    pub slot_lifetime_secs: u64,
}

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file's name, one path segment (checked); it becomes the URL's last segment.
    pub filename: String,
    /// The file's size in bytes, more than 0; the PUT must match it exactly.
    pub size: u64,
    /// `type/subtype`; `application/octet-stream` when the request names none.
    pub content_type: String,
}

/// Why a request gets no slot: each with the stanza error XEP-0363 §4 names for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `<request/>`, or a filename or size that cannot be used.
    BadRequest(String),
    /// Larger than `max_file_bytes` (`<not-acceptable/>` with `<file-too-large/>`).
    TooLarge {
        /// `max_file_bytes`, sent back in `<max-file-size/>`.
        max: u64,
    },
    /// The account's stored files and this one would exceed `quota_bytes`.
    OverQuota {
        /// `quota_bytes`, for the error text.
        quota: u64,
        /// Bytes the account has stored now.
        used: u64,
    },
}

impl Refusal {
    /// The reason label in the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::OverQuota { .. } => "quota",
        }
    }

    fn condition(&self) -> StanzaErrorCondition {
        match self {
            Refusal::BadRequest(_) => StanzaErrorCondition::BadRequest,
            Refusal::TooLarge { .. } => StanzaErrorCondition::NotAcceptable,
            Refusal::OverQuota { .. } => StanzaErrorCondition::ResourceConstraint,
        }
    }

    fn text(&self) -> String {
        match self {
            Refusal::BadRequest(why) => why.clone(),
            Refusal::TooLarge { max } => format!("the file is larger than {max} bytes"),
            Refusal::OverQuota { quota, used } => {
                format!("the upload quota is {quota} bytes per account and {used} bytes are in use")
            }
        }
    }

    /// The error reply to the request `iq`; a file too large carries
    /// `<file-too-large><max-file-size>N</max-file-size></file-too-large>` (§4, Example 6).
    pub fn reply(&self, iq: &Element) -> Option<Element> {
        let mut reply = crate::component::client::error_reply(iq, self.condition(), &self.text())?;
        if let Refusal::TooLarge { max } = self {
            let detail = Element::new("file-too-large", NS_UPLOAD)
                .with_child(Element::new("max-file-size", NS_UPLOAD).with_text(max.to_string()));
            if let Some(error) = reply.children_mut().find(|c| c.name == "error") {
                error.children.push(Node::Element(detail));
            }
        }
        Some(reply)
    }
}

/// A slot given out: where to PUT (with which Authorization value) and where to GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// What the slot allows, as signed in its token.
    pub grant: SlotGrant,
    /// The HTTPS URL to PUT the file to.
    pub put_url: String,
    /// The URL to share, where the file is served once stored (the same as `put_url`).
    pub get_url: String,
    /// The token the PUT sends as its `Authorization` header ([`Signer::sign`]).
    pub authorization: String,
}

impl Slot {
    /// The iq result for the request `iq` (§4, Example 5).
    pub fn reply(&self, iq: &Element) -> Element {
        let mut result = Element::new("iq", iq.ns.as_str()).with_attr("type", "result");
        for (ours, theirs) in [("from", "to"), ("to", "from"), ("id", "id")] {
            if let Some(v) = iq.attr(theirs) {
                result.set_attr(ours, v);
            }
        }
        result.with_child(
            Element::new("slot", NS_UPLOAD)
                .with_child(
                    Element::new("put", NS_UPLOAD)
                        .with_attr("url", self.put_url.clone())
                        .with_child(
                            Element::new("header", NS_UPLOAD)
                                .with_attr("name", "Authorization")
                                .with_text(&self.authorization),
                        ),
                )
                .with_child(Element::new("get", NS_UPLOAD).with_attr("url", self.get_url.clone())),
        )
    }
}

/// The `<request/>` of an iq, checked for what every slot needs.
pub fn parse(iq: &Element) -> Result<Request, Refusal> {
    let bad = |why: &str| Refusal::BadRequest(why.to_owned());
    let req = iq
        .child("request", NS_UPLOAD)
        .ok_or_else(|| bad("the iq has no <request xmlns='urn:xmpp:http:upload:0'/>"))?;
    let filename = req
        .attr("filename")
        .ok_or_else(|| bad("the request has no filename"))?;
    check_filename(filename).map_err(|why| Refusal::BadRequest(why.to_owned()))?;
    let size = req
        .attr("size")
        .ok_or_else(|| bad("the request has no size"))?;
    let size: u64 = size
        .parse()
        .map_err(|_| bad("the size is not a whole number of bytes"))?;
    if size == 0 {
        return Err(bad("the size is zero: there is nothing to upload"));
    }
    let content_type = match req.attr("content-type") {
        None | Some("") => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(t) if is_content_type(t) => t.to_owned(),
        Some(_) => return Err(bad("the content-type is not of the form type/subtype")),
    };
    Ok(Request {
        filename: filename.to_owned(),
        size,
        content_type,
    })
}

/// A filename is one path segment: not empty, no `/` or `\`, no control characters, not
/// `.` or `..`, at most [`MAX_FILENAME_BYTES`].
fn check_filename(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the filename is empty");
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err("the filename is longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return Err("the filename may not be . or ..");
    }
    if name.contains(['/', '\\']) {
        return Err("the filename may not contain / or \\");
    }
    if name.chars().any(char::is_control) {
        return Err("the filename may not contain control characters");
    }
    Ok(())
}

/// `type/subtype` of visible ASCII with no separators that would break an HTTP header.
fn is_content_type(t: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(t.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The slot for `request` from `owner` (a bare JID), who has `used` bytes stored, at `now` (seconds
/// since the epoch), under `base_url`; `dir` is a fresh random folder name, so that two
/// files of one name never share a path. The checks in the order XEP-0363 lists them:
/// size, then quota.
// Eight inputs, each a different fact of the request; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    rules: &Rules,
    signer: &Signer,
    base_url: &str,
    request: &Request,
    owner: &str,
    used: u64,
    dir: &str,
    now: u64,
) -> Result<Slot, Refusal> {
    if request.size > rules.max_file_bytes {
        return Err(Refusal::TooLarge {
            max: rules.max_file_bytes,
        });
    }
    if used.saturating_add(request.size) > rules.quota_bytes {
        return Err(Refusal::OverQuota {
            quota: rules.quota_bytes,
            used,
        });
    }
    let path = format!("{dir}/{}", encode_segment(&request.filename));
    let grant = SlotGrant {
        path: path.clone(),
        size: request.size,
        content_type: request.content_type.clone(),
        expires: now + rules.slot_lifetime_secs,
        owner: owner.to_owned(),
    };
    let url = format!("{}/{path}", base_url.trim_end_matches('/'));
    Ok(Slot {
        authorization: signer.sign(&grant),
        grant,
        put_url: url.clone(),
        get_url: url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{NsContext, Stanza};

    fn rules() -> Rules {
        Rules {
            max_file_bytes: 1000,
            quota_bytes: 5000,
            slot_lifetime_secs: 300,
        }
    }

    fn iq(request: &str) -> Element {
        let xml =
            format!("<iq type='get' id='u1' from='a@x.test/r' to='upload.x.test'>{request}</iq>");
        Stanza::parse(bytes::Bytes::from(xml), &NsContext::component())
            .unwrap()
            .element()
            .unwrap()
    }

    fn request(size: u64) -> Request {
        Request {
            filename: "my photo.jpg".into(),
            size,
            content_type: "image/jpeg".into(),
        }
    }

    fn slot(size: u64, used: u64) -> Result<Slot, Refusal> {
        let signer = Signer::new(b"k");
        decide(
            &rules(),
            &signer,
            "https://upload.x.test:5443/",
            &request(size),
            "a@x.test",
            used,
            "d1",
            100,
        )
    }

    #[test]
    fn a_request_is_parsed_with_its_content_type_or_the_default() {
        let r = parse(&iq(&format!(
            "<request xmlns='{NS_UPLOAD}' filename='a.png' size='12' content-type='image/png'/>"
        )))
        .unwrap();
        assert_eq!(r.content_type, "image/png");
        assert_eq!(r.size, 12);
        let r = parse(&iq(&format!(
            "<request xmlns='{NS_UPLOAD}' filename='a' size='1'/>"
        )))
        .unwrap();
        assert_eq!(r.content_type, "application/octet-stream");
    }

    #[test]
    fn a_bad_filename_size_or_type_is_a_bad_request_with_a_text() {
        for attrs in [
            "size='1'",
            "filename='' size='1'",
            "filename='..' size='1'",
            "filename='a/b' size='1'",
            "filename='a\\b' size='1'",
            "filename='a&#x9;b' size='1'",
            "filename='a'",
            "filename='a' size='-1'",
            "filename='a' size='x'",
            "filename='a' size='0'",
            "filename='a' size='1' content-type='text'",
            "filename='a' size='1' content-type='text/plain\r\nX: y'",
        ] {
            let e = parse(&iq(&format!("<request xmlns='{NS_UPLOAD}' {attrs}/>"))).unwrap_err();
            let Refusal::BadRequest(text) = &e else {
                panic!("{attrs}: {e:?}")
            };
            assert!(!text.is_empty());
        }
        let long = "a".repeat(256);
        assert!(parse(&iq(&format!(
            "<request xmlns='{NS_UPLOAD}' filename='{long}' size='1'/>"
        )))
        .is_err());
        assert!(matches!(parse(&iq("")), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn a_slot_is_signed_for_its_path_size_and_type_and_encodes_the_filename() {
        let s = slot(1000, 4000).unwrap();
        assert_eq!(s.put_url, "https://upload.x.test:5443/d1/my%20photo.jpg");
        assert_eq!(s.get_url, s.put_url);
        assert_eq!(s.grant.expires, 400);
        let signer = Signer::new(b"k");
        assert_eq!(
            signer.verify(&s.authorization, "d1/my%20photo.jpg", 400),
            Ok(s.grant.clone())
        );
        let xml = String::from_utf8(s.reply(&iq("")).to_bytes()).unwrap();
        assert!(
            xml.contains("type='result'") || xml.contains("type=\"result\""),
            "{xml}"
        );
        assert!(xml.contains("Authorization"), "{xml}");
        assert!(
            xml.contains("to='a@x.test/r'") || xml.contains("to=\"a@x.test/r\""),
            "{xml}"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_not_acceptable_with_the_limit() {
        let e = slot(1001, 0).unwrap_err();
        assert_eq!(e, Refusal::TooLarge { max: 1000 });
        let xml = String::from_utf8(e.reply(&iq("")).unwrap().to_bytes()).unwrap();
        assert!(xml.contains("not-acceptable"), "{xml}");
        assert!(xml.contains("<max-file-size>1000</max-file-size>"), "{xml}");
        assert!(xml.contains("file-too-large"), "{xml}");
    }

    #[test]
    fn a_file_over_the_quota_is_a_resource_constraint_naming_it() {
        let e = slot(1000, 4001).unwrap_err();
        assert_eq!(
            e,
            Refusal::OverQuota {
                quota: 5000,
                used: 4001
            }
        );
        let xml = String::from_utf8(e.reply(&iq("")).unwrap().to_bytes()).unwrap();
        assert!(xml.contains("resource-constraint"), "{xml}");
        assert!(xml.contains("5000 bytes per account"), "{xml}");
    }
}
