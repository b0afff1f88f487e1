//! Durations in the configuration: read as humantime writes them (`"30s"`, `"10m"`, `"1day"`,
//! `"365d"`), written in the largest whole unit (`"365d"`, `"10m"`, `"250ms"`), so that
//! `fedgate check config` prints what an operator would type: humantime's own format splits a
//! year of 365 days into months of 30.44 days.

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// For `#[serde(with = "duration")]`: writes `d` as [`text`] does, e.g. `"10m"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&text(*d))
}

/// For `#[serde(with = "duration")]`: reads any form humantime accepts, e.g. `"30s"`,
/// `"1day"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    humantime_serde::deserialize(d)
}

/// `d` in the largest unit that divides it: d, h, m, s, ms, else humantime's form.
pub fn text(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs > 0 && secs % size == 0 {
                return format!("{}{unit}", secs / size);
            }
        }
        return format!("{secs}s");
    }
    if nanos % 1_000_000 == 0 {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(d).to_string()
}
