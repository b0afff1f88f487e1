//! XEP-0115 entity capabilities, as PEP's filtered notifications need them (XEP-0163 §4.2):
//! who is interested in which node is learned from the `NODE+notify` features of the entities
//! that send us presence.
//!
//! 1. An available presence carrying `<c hash node ver/>` maps its full JID to `ver`
//!    ([`CapsState::watch`]), per account that received it.
//! 2. A `ver` not in the cache is asked for once: disco#info to that full JID with node
//!    `node#ver`, from the account's domain ([`CapsState::begin_query`]).
//! 3. The answer is cached by `ver` only when the verification string of its identities,
//!    features and extended forms (§5.1) hashes to `ver` with the announced hash (`sha-1` or
//!    `sha-256`; others are not trusted) ([`verification_string`], [`verify`]); a wrong hash
//!    would let one entity poison what every entity with that `ver` is sent.
//! 4. The cache and the outstanding queries are bounded ([`CAPS_CACHE_MAX`],
//!    [`PENDING_MAX`]); the oldest entries go first. While a query for a `ver` is out (at most
//!    [`QUERY_PATIENCE`]), others announcing it wait for its answer instead of being asked.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::Digest as _;

use super::form::Form;
use crate::core::disco::NS_DISCO_INFO;
use crate::xml::Element;

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// Most `ver` strings whose features are remembered.
pub const CAPS_CACHE_MAX: usize = 10_000;
/// Most disco#info queries for caps outstanding at once.
pub const PENDING_MAX: usize = 1_000;
/// Most full JIDs watched per account (its own resources and its contacts' resources).
pub const WATCHERS_MAX: usize = 4_096;
/// How long a query for a `ver` holds back asking someone else with the same `ver`: one that
/// never answers must not keep a popular `ver` unknown.
pub const QUERY_PATIENCE: Duration = Duration::from_secs(30);

/// The hash functions §5 allows that we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsHash {
    Sha1,
    Sha256,
}

impl CapsHash {
    pub fn from_name(name: &str) -> Option<CapsHash> {
        match name {
            "sha-1" => Some(CapsHash::Sha1),
            "sha-256" => Some(CapsHash::Sha256),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            CapsHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            CapsHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }
}

/// A `<c/>` from a presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub hash: CapsHash,
    pub node: String,
    pub ver: String,
}

impl Caps {
    /// The caps of a presence; `None` without `<c/>`, or with a hash we cannot check.
    pub fn of_presence(presence: &Element) -> Option<Caps> {
        let c = presence.child("c", NS_CAPS)?;
        Some(Caps {
            hash: CapsHash::from_name(c.attr("hash")?)?,
            node: c.attr("node").unwrap_or_default().to_owned(),
            ver: c.attr("ver").filter(|v| !v.is_empty())?.to_owned(),
        })
    }
}

/// The §5.1 verification string of a disco#info `<query/>`; `None` when §5.4 says the answer
/// must not be trusted (a duplicate identity or feature, or forms with a repeated
/// `FORM_TYPE`).
pub fn verification_string(query: &Element) -> Option<String> {
    let mut identities: Vec<[String; 4]> = query
        .children()
        .filter(|c| c.name == "identity" && c.ns == NS_DISCO_INFO)
        .map(|i| {
            [
                i.attr("category").unwrap_or_default().to_owned(),
                i.attr("type").unwrap_or_default().to_owned(),
                i.attr("xml:lang").unwrap_or_default().to_owned(),
                i.attr("name").unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    identities.sort();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.name == "feature" && c.ns == NS_DISCO_INFO)
        .filter_map(|f| f.attr("var"))
        .collect();
    features.sort_unstable();
    if identities.windows(2).any(|w| w[0] == w[1]) || features.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut forms: Vec<Form> = query
        .children()
        .filter_map(Form::parse)
        .filter(|f| f.form_type.is_some())
        .collect();
    forms.sort_by(|a, b| a.form_type.cmp(&b.form_type));
    if forms.windows(2).any(|w| w[0].form_type == w[1].form_type) {
        return None;
    }
    let mut s = String::new();
    for [category, type_, lang, name] in &identities {
        s.push_str(&format!("{category}/{type_}/{lang}/{name}<"));
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    for mut form in forms {
        s.push_str(form.form_type.as_deref().unwrap_or_default());
        s.push('<');
        form.fields.sort_by(|a, b| a.var.cmp(&b.var));
        for mut field in form.fields {
            s.push_str(&field.var);
            s.push('<');
            field.values.sort();
            for v in field.values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    Some(s)
}

/// Whether `query` hashes to `caps.ver` (§5.4 step 3).
pub fn verify(caps: &Caps, query: &Element) -> bool {
    let Some(s) = verification_string(query) else {
        return false;
    };
    let hashed = base64::engine::general_purpose::STANDARD.encode(caps.hash.digest(s.as_bytes()));
    hashed == caps.ver
}

/// The features of a verified disco#info answer.
pub fn features_of(query: &Element) -> Arc<[String]> {
    query
        .children()
        .filter(|c| c.name == "feature" && c.ns == NS_DISCO_INFO)
        .filter_map(|f| f.attr("var").map(str::to_owned))
        .collect()
}

/// A full JID that sent an account available presence.
#[derive(Debug, Clone)]
struct Watcher {
    /// Its caps `ver`, `None` when its presence had none we can check.
    ver: Option<String>,
    /// It became available and has not been sent the last published items yet (its caps
    /// were unknown then).
    owed_last: bool,
}

/// A disco#info query for caps waiting for its answer.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The full JID asked: only its answer counts.
    pub jid: String,
    pub caps: Caps,
    sent: Instant,
}

#[derive(Default)]
struct Inner {
    features: HashMap<String, Arc<[String]>>,
    /// Cached `ver`s, oldest first, for eviction.
    order: VecDeque<String>,
    /// Outstanding queries by iq id, and in order of sending.
    pending: HashMap<String, Pending>,
    pending_order: VecDeque<String>,
    /// Per canonical account: who sent it available presence, by full JID.
    watchers: HashMap<String, HashMap<String, Watcher>>,
}

/// The caps cache and who is watching which account. Its lock is never held across an await.
#[derive(Default)]
pub struct CapsState {
    inner: Mutex<Inner>,
}

/// What to do after an available presence ([`CapsState::watch`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Caps known: send the last items now if `send_last` (the JID became available and has
    /// not had them yet).
    Known { send_last: bool },
    /// Caps unknown: ask with a disco#info query (unless one is out already).
    Ask { caps: Caps },
    /// Caps unknown and a query for the `ver` is already out, or no usable caps: nothing now.
    Wait,
}

impl CapsState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an available presence from `jid` to `account`.
    pub fn watch(&self, account: &str, jid: &str, caps: Option<Caps>) -> Watch {
        let mut inner = self.lock();
        let known = caps
            .as_ref()
            .is_some_and(|c| inner.features.contains_key(&c.ver));
        let asking = caps.as_ref().is_some_and(|c| {
            inner
                .pending
                .values()
                .any(|p| p.caps.ver == c.ver && p.sent.elapsed() < QUERY_PATIENCE)
        });
        let list = inner.watchers.entry(account.to_owned()).or_default();
        let fresh = !list.contains_key(jid);
        if fresh && list.len() >= WATCHERS_MAX {
            // Bounded: the account's watchers are full, this one gets no notifications.
            return Watch::Wait;
        }
        let entry = list.entry(jid.to_owned()).or_insert(Watcher {
            ver: None,
            owed_last: true,
        });
        entry.ver = caps.as_ref().map(|c| c.ver.clone());
        match caps {
            Some(_) if known => Watch::Known {
                send_last: std::mem::take(&mut entry.owed_last),
            },
            Some(_) if asking => Watch::Wait,
            Some(caps) => Watch::Ask { caps },
            None => Watch::Wait,
        }
    }

    /// Forgets `jid` as a watcher of `account` (unavailable presence, session end).
    pub fn unwatch(&self, account: &str, jid: &str) {
        let mut inner = self.lock();
        if let Some(list) = inner.watchers.get_mut(account) {
            list.remove(jid);
            if list.is_empty() {
                inner.watchers.remove(account);
            }
        }
    }

    /// Registers a query with `id`; the oldest outstanding one is dropped when too many are.
    pub fn begin_query(&self, id: &str, jid: &str, caps: Caps) {
        let mut inner = self.lock();
        while inner.pending.len() >= PENDING_MAX {
            let Some(old) = inner.pending_order.pop_front() else {
                break;
            };
            inner.pending.remove(&old);
        }
        inner.pending.insert(
            id.to_owned(),
            Pending {
                jid: jid.to_owned(),
                caps,
                sent: Instant::now(),
            },
        );
        inner.pending_order.push_back(id.to_owned());
    }

    /// Takes the query answered by an iq with `id`.
    pub fn take_query(&self, id: &str) -> Option<Pending> {
        let mut inner = self.lock();
        let p = inner.pending.remove(id)?;
        inner.pending_order.retain(|i| i != id);
        Some(p)
    }

    /// Caches the (verified) features of `ver`; returns the `(account, full JID)` pairs that
    /// were waiting for them to get the last published items.
    pub fn learn(&self, ver: &str, features: Arc<[String]>) -> Vec<(String, String)> {
        let mut inner = self.lock();
        if !inner.features.contains_key(ver) {
            while inner.features.len() >= CAPS_CACHE_MAX {
                let Some(old) = inner.order.pop_front() else {
                    break;
                };
                inner.features.remove(&old);
            }
            inner.order.push_back(ver.to_owned());
        }
        inner.features.insert(ver.to_owned(), features);
        let mut owed = Vec::new();
        for (account, list) in inner.watchers.iter_mut() {
            for (jid, w) in list.iter_mut() {
                if w.owed_last && w.ver.as_deref() == Some(ver) {
                    w.owed_last = false;
                    owed.push((account.clone(), jid.clone()));
                }
            }
        }
        owed
    }

    /// The full JIDs watching `account` whose caps include `feature`.
    pub fn interested(&self, account: &str, feature: &str) -> Vec<String> {
        let inner = self.lock();
        let Some(list) = inner.watchers.get(account) else {
            return Vec::new();
        };
        list.iter()
            .filter(|(_, w)| {
                w.ver
                    .as_ref()
                    .and_then(|v| inner.features.get(v))
                    .is_some_and(|f| f.iter().any(|x| x == feature))
            })
            .map(|(jid, _)| jid.clone())
            .collect()
    }

    /// The features announced by `jid` watching `account`, if its caps are known.
    pub fn features_for(&self, account: &str, jid: &str) -> Option<Arc<[String]>> {
        let inner = self.lock();
        let ver = inner.watchers.get(account)?.get(jid)?.ver.as_ref()?;
        inner.features.get(ver).cloned()
    }
}
