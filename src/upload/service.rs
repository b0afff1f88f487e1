//! What the service answers over XMPP (sans I/O but for the quota, read from the store's
//! in-memory index): disco#info and #items on its domain, and slot requests (XEP-0363 §4)
//! from the domains allowed to upload.

use std::collections::HashSet;
use std::sync::Arc;

use super::slot::{self, Refusal, Rules, NS_UPLOAD};
use super::store::{new_id, Files};
use super::token::Signer;
use super::{disco, UploadConfig};
use crate::component::client::error_reply;
use crate::metrics::UploadMetrics;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::ns::{DISCO_INFO, DISCO_ITEMS};
use crate::xml::Element;

/// The XMPP side of the service.
pub struct Service {
    rules: Rules,
    signer: Signer,
    base_url: String,
    /// Bare domains whose users may ask for slots.
    allowed: HashSet<String>,
    files: Arc<Files>,
    metrics: Option<UploadMetrics>,
}

impl Service {
    /// `allowed`: the sender domains given slots (see `[upload] allow_domains`).
    pub fn new(
        config: &UploadConfig,
        allowed: impl IntoIterator<Item = String>,
        signer: Signer,
        files: Arc<Files>,
        metrics: Option<UploadMetrics>,
    ) -> Service {
        Service {
            rules: Rules {
                max_file_bytes: config.max_file_size,
                quota_bytes: config.quota,
                slot_lifetime_secs: config.slot_lifetime.as_secs(),
            },
            signer,
            base_url: config.base_url(),
            allowed: allowed.into_iter().collect(),
            files,
            metrics,
        }
    }

    /// The answer to `el`, at `now` (seconds since the epoch), if it gets one: iq gets and
    /// sets are answered, everything else is dropped (the service sends nothing first).
    pub fn handle(&self, el: &Element, now: u64) -> Option<Element> {
        if el.name != "iq" || !matches!(el.attr("type"), Some("get" | "set")) {
            return None;
        }
        let get = el.attr("type") == Some("get");
        if get
            && el
                .child("query", DISCO_INFO)
                .is_some_and(|q| q.attr("node").is_none())
        {
            return Some(result(el, disco::info(self.rules.max_file_bytes)));
        }
        if get && el.child("query", DISCO_ITEMS).is_some() {
            return Some(result(el, Element::new("query", DISCO_ITEMS)));
        }
        if get && el.child("request", NS_UPLOAD).is_some() {
            return self.slot(el, now);
        }
        error_reply(
            el,
            StanzaErrorCondition::ServiceUnavailable,
            "the upload service answers disco and XEP-0363 slot requests only",
        )
    }

    fn slot(&self, iq: &Element, now: u64) -> Option<Element> {
        let from = iq.attr("from").unwrap_or_default();
        let owner = from.split('/').next().unwrap_or_default();
        let domain = owner.rsplit('@').next().unwrap_or_default();
        if !self.allowed.contains(&domain.to_ascii_lowercase()) {
            if let Some(m) = &self.metrics {
                m.refusals.forbidden.inc();
            }
            return error_reply(
                iq,
                StanzaErrorCondition::Forbidden,
                &format!("users of {domain} may not upload files here"),
            );
        }
        let decided = slot::parse(iq).and_then(|request| {
            slot::decide(
                &self.rules,
                &self.signer,
                &self.base_url,
                &request,
                owner,
                self.files.used(owner),
                &new_id(),
                now,
            )
        });
        match decided {
            Ok(s) => {
                if let Some(m) = &self.metrics {
                    m.slots.inc();
                }
                Some(s.reply(iq))
            }
            Err(refusal) => {
                if let Some(m) = &self.metrics {
                    let r = &m.refusals;
                    match refusal {
                        Refusal::BadRequest(_) => r.bad_request.inc(),
                        Refusal::TooLarge { .. } => r.too_large.inc(),
                        Refusal::OverQuota { .. } => r.quota.inc(),
                    }
                }
                refusal.reply(iq)
            }
        }
    }
}

/// The iq result to `iq` carrying `payload`.
fn result(iq: &Element, payload: Element) -> Element {
    let mut r = Element::new("iq", iq.ns.as_str()).with_attr("type", "result");
    for (ours, theirs) in [("from", "to"), ("to", "from"), ("id", "id")] {
        if let Some(v) = iq.attr(theirs) {
            r.set_attr(ours, v);
        }
    }
    r.with_child(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{NsContext, Stanza};

    fn iq(from: &str, payload: &str) -> Element {
        let xml = format!("<iq type='get' id='q' from='{from}' to='upload.a.test'>{payload}</iq>");
        Stanza::parse(bytes::Bytes::from(xml), &NsContext::component())
            .unwrap()
            .element()
            .unwrap()
    }

    fn service(dir: &std::path::Path) -> Service {
        let config = UploadConfig {
            domain: "upload.a.test".into(),
            max_file_size: 100,
            quota: 150,
            ..UploadConfig::default()
        };
        let files = Arc::new(Files::open(dir).unwrap());
        Service::new(
            &config,
            ["a.test".to_owned()],
            Signer::new(b"k"),
            files,
            None,
        )
    }

    fn condition(reply: &Element) -> Option<String> {
        let error = reply.child("error", reply.ns.as_str())?;
        error.children().next().map(|c| c.name.to_string())
    }

    const REQUEST: &str =
        "<request xmlns='urn:xmpp:http:upload:0' filename='a.png' size='10' content-type='image/png'/>";

    #[test]
    fn users_of_allowed_domains_get_a_slot_and_strangers_are_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let reply = s.handle(&iq("alice@a.test/phone", REQUEST), 0).unwrap();
        assert_eq!(reply.attr("type"), Some("result"));
        let slot = reply.child("slot", NS_UPLOAD).unwrap();
        let put = slot.child("put", NS_UPLOAD).unwrap();
        assert!(put
            .attr("url")
            .unwrap()
            .starts_with("https://upload.a.test:5443/"));
        assert!(put.child("header", NS_UPLOAD).is_some());
        let reply = s.handle(&iq("mallory@evil.test/x", REQUEST), 0).unwrap();
        assert_eq!(condition(&reply).as_deref(), Some("forbidden"));
    }

    #[test]
    fn disco_info_is_answered_and_other_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let info = s
            .handle(
                &iq("x@b.test/r", &format!("<query xmlns='{DISCO_INFO}'/>")),
                0,
            )
            .unwrap();
        assert_eq!(info.attr("type"), Some("result"));
        assert!(info.child("query", DISCO_INFO).is_some());
        let other = s
            .handle(
                &iq("alice@a.test/r", "<query xmlns='jabber:iq:version'/>"),
                0,
            )
            .unwrap();
        assert_eq!(condition(&other).as_deref(), Some("service-unavailable"));
    }
}
