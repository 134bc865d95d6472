//! What a user shows besides a connection count (`docs/protocol.md`, "Rich
//! presence"): the devices their connections declared, whether every
//! connection is idle, the availability they chose (`away`, `busy`,
//! `invisible`, with a text and an expiry), and what watchers may learn of
//! it (invisible users and `lastSeen` visibility).
//!
//! Devices and idleness are per connection, so each node writes its own
//! part of them ([`Share`]) absolutely, like its count, and the store sums
//! the parts: exact for the same reasons the count is. The availability is
//! the user's, set from any connection and kept with the presence record.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest device label, in bytes.
pub const MAX_DEVICE_LEN: usize = 16;
/// Longest status text, in characters (and at most four bytes each).
pub const MAX_STATUS_TEXT: usize = 128;
/// Longest availability expiry: a week, in ms.
pub const MAX_STATUS_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A connection's device class: `web`, `mobile`, `desktop` or a short label
/// of the application's own (1 to 16 of `a-z 0-9 _ -`, lower-cased on the way
/// in). Connections that declare none count as `unknown`.
///
/// The usual labels take no allocation: every connection holds its device,
/// and so does every user's breakdown.
#[derive(Debug, Clone)]
pub struct Device(Label);

#[derive(Debug, Clone)]
enum Label {
    /// An index into [`KNOWN_DEVICES`] (16 bytes in all, like the box).
    Known(u8),
    Custom(Box<str>),
}

/// Labels held without an allocation (`unknown` last).
const KNOWN_DEVICES: [&str; 4] = ["web", "mobile", "desktop", Device::UNKNOWN];

impl Device {
    /// What a connection that declares no device counts as.
    pub const UNKNOWN: &'static str = "unknown";

    /// A valid label (lower-cased), or why not.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s.len() > MAX_DEVICE_LEN {
            return Err(format!("a device label has 1 to {MAX_DEVICE_LEN} characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return Err("a device label has only a-z, 0-9, '_' and '-'".into());
        }
        Ok(Self(match KNOWN_DEVICES.iter().position(|k| *k == s) {
            Some(i) => Label::Known(i as u8),
            None => Label::Custom(s.into_boxed_str()),
        }))
    }

    /// `unknown`.
    pub fn unknown() -> Self {
        Self(Label::Known(KNOWN_DEVICES.len() as u8 - 1))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Label::Known(i) => KNOWN_DEVICES.get(usize::from(*i)).copied().unwrap_or(Self::UNKNOWN),
            Label::Custom(s) => s,
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Device {}

impl PartialOrd for Device {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Device {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Device {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Connections per device, sorted by label, no zeros. On the wire a JSON
/// object (`{"mobile": 2, "web": 1}`). Most users have one device, held
/// inline; several go in a vector (a map's first allocation alone is larger).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices(DeviceCounts);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum DeviceCounts {
    #[default]
    None,
    One(Device, u64),
    /// Two or more, sorted by label (never fewer: entries are only added).
    Many(Vec<(Device, u64)>),
}

impl Devices {
    /// No connections.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, DeviceCounts::None)
    }

    /// Adds `n` connections of `device`.
    pub fn add(&mut self, device: &Device, n: u64) {
        if n == 0 {
            return;
        }
        match &mut self.0 {
            DeviceCounts::None => self.0 = DeviceCounts::One(device.clone(), n),
            DeviceCounts::One(d, m) if d == device => *m += n,
            DeviceCounts::One(d, m) => {
                let mut v = vec![(d.clone(), *m), (device.clone(), n)];
                v.sort();
                self.0 = DeviceCounts::Many(v);
            }
            DeviceCounts::Many(v) => match v.binary_search_by(|(d, _)| d.cmp(device)) {
                Ok(i) => v[i].1 += n,
                Err(i) => v.insert(i, (device.clone(), n)),
            },
        }
    }

    /// (device, connections), sorted by label.
    fn entries(&self) -> impl Iterator<Item = (&Device, u64)> {
        let (one, many) = match &self.0 {
            DeviceCounts::None => (None, &[][..]),
            DeviceCounts::One(d, n) => (Some((d, *n)), &[][..]),
            DeviceCounts::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(d, n)| (d, *n)))
    }

    /// Connections of `device`.
    pub fn get(&self, device: &str) -> u64 {
        self.entries().find(|(d, _)| d.as_str() == device).map_or(0, |(_, n)| n)
    }

    /// All connections.
    pub fn total(&self) -> u64 {
        self.entries().map(|(_, n)| n).sum()
    }

    /// (label, connections), sorted by label.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries().map(|(d, n)| (d.as_str(), n))
    }
}

impl Serialize for Devices {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<Device, u64>::deserialize(d)?;
        let mut out = Self::default();
        for (device, n) in &map {
            out.add(device, *n);
        }
        Ok(out)
    }
}

/// What a user says about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// The default.
    #[default]
    Available,
    /// Away from the keyboard.
    Away,
    /// Do not disturb.
    Busy,
    /// Watchers and the server API see the user offline; their own connections see the truth.
    Invisible,
    /// A value this version does not know (written by a newer one); shown as available.
    #[serde(other)]
    Other,
}

impl Availability {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Away => "away",
            Self::Busy => "busy",
            Self::Invisible => "invisible",
            Self::Other => "other",
        }
    }

    /// The value of a wire name (`None` for one this version does not know).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Self::Available,
            "away" => Self::Away,
            "busy" => Self::Busy,
            "invisible" => Self::Invisible,
            _ => return None,
        })
    }
}

/// The status a user set: user-level, kept with the presence record,
/// surviving reconnects and node moves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    /// What they chose.
    #[serde(default)]
    pub availability: Availability,
    /// A short text ("In a meeting"), at most [`MAX_STATUS_TEXT`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When it lapses back to `available` without text, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When the user went invisible (the `lastSeen` watchers are shown), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invisible_since: Option<u64>,
}

impl UserStatus {
    /// Whether it still holds at `now_ms`: not expired, and saying something.
    pub fn holds(&self, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|t| t > now_ms)
            && (self.availability != Availability::Available || self.text.is_some())
    }

    /// Checks a text for length and control characters.
    pub fn check_text(text: &str) -> Result<(), String> {
        if text.chars().count() > MAX_STATUS_TEXT {
            return Err(format!("a status text has at most {MAX_STATUS_TEXT} characters"));
        }
        if text.chars().any(char::is_control) {
            return Err("a status text has no control characters".into());
        }
        Ok(())
    }
}

/// One node's part of a user's devices and activity: written with its count,
/// absolutely, and summed by the store over nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    /// Connections of the user on the node that are not idle.
    pub active: u32,
    /// When the node's last active connection of the user went idle (only while `active` is 0).
    pub idle_since: Option<u64>,
    /// The node's connections of the user per device.
    pub devices: Devices,
}

impl Share {
    /// `n` active connections of unknown device.
    pub fn plain(n: u32) -> Self {
        let mut devices = Devices::default();
        devices.add(&Device::unknown(), u64::from(n));
        Self { active: n, idle_since: None, devices }
    }

    /// The store's encoding: `active|idleSince|label:n,label:n` (labels hold
    /// none of `|:,`).
    pub fn encode(&self) -> String {
        let devices: Vec<String> = self.devices.iter().map(|(d, n)| format!("{d}:{n}")).collect();
        let idle = self.idle_since.map(|t| t.to_string()).unwrap_or_default();
        format!("{}|{}|{}", self.active, idle, devices.join(","))
    }

    /// Reads [`Share::encode`]'s output; `None` when it is not that.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        let active = parts.next()?.parse().ok()?;
        let idle = parts.next()?;
        let idle_since = if idle.is_empty() { None } else { Some(idle.parse().ok()?) };
        let mut devices = Devices::default();
        for item in parts.next()?.split(',').filter(|i| !i.is_empty()) {
            let (d, n) = item.split_once(':')?;
            devices.add(&Device::parse(d).ok()?, n.parse().ok()?);
        }
        Some(Self { active, idle_since, devices })
    }
}

/// Sums the nodes' shares of a user online with `total` connections: the
/// devices, and since when idle (only when no node has an active
/// connection: the latest of the nodes' idle times).
pub fn sum_shares<'a>(total: u64, shares: impl IntoIterator<Item = &'a Share>) -> (Devices, Option<u64>) {
    let mut devices = Devices::default();
    let (mut active, mut idle_since) = (0u64, None::<u64>);
    for s in shares {
        for (d, n) in s.devices.entries() {
            devices.add(d, n);
        }
        active += u64::from(s.active);
        idle_since = idle_since.max(s.idle_since);
    }
    let idle = total > 0 && active == 0;
    (devices, if idle { Some(idle_since.unwrap_or(0)) } else { None })
}

/// What watchers on other connections learn of `lastSeen` (`LAST_SEEN`):
/// the user's own connections and the server API always get the exact time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LastSeenPolicy {
    /// The time, to the millisecond.
    #[default]
    Exact,
    /// Rounded down to [`COARSE_LAST_SEEN_MS`] (a quarter of an hour): "recently".
    Coarse,
    /// Never shown (`null`).
    Hidden,
}

/// The rounding of a coarse `lastSeen`: 15 minutes.
pub const COARSE_LAST_SEEN_MS: u64 = 15 * 60 * 1000;

impl LastSeenPolicy {
    /// Reads `exact`, `coarse` or `hidden`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "exact" => Ok(Self::Exact),
            "coarse" => Ok(Self::Coarse),
            "hidden" => Ok(Self::Hidden),
            other => Err(format!("expected exact, coarse or hidden, got {other:?}")),
        }
    }

    /// `last_seen` as a watcher may see it.
    pub fn apply(self, last_seen: Option<u64>) -> Option<u64> {
        match self {
            Self::Exact => last_seen,
            Self::Coarse => last_seen.map(|t| t - t % COARSE_LAST_SEEN_MS),
            Self::Hidden => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_labels_are_checked_and_lowercased() {
        assert_eq!(Device::parse(" Web ").expect("valid").as_str(), "web");
        assert!(Device::parse("").is_err());
        assert!(Device::parse("a:b").is_err());
        assert!(Device::parse(&"x".repeat(17)).is_err());
        assert_eq!(Device::parse("tv-2_b").expect("valid").as_str(), "tv-2_b");
    }

    #[test]
    fn one_device_is_held_inline_and_several_stay_sorted() {
        assert_eq!(std::mem::size_of::<Device>(), 16);
        let mut d = Devices::default();
        d.add(&Device::parse("web").expect("valid"), 1);
        assert!(matches!(d.0, DeviceCounts::One(..)));
        for label in ["tv", "mobile", "web", "car"] {
            d.add(&Device::parse(label).expect("valid"), 1);
        }
        let labels: Vec<(&str, u64)> = d.iter().collect();
        assert_eq!(labels, vec![("car", 1), ("mobile", 1), ("tv", 1), ("web", 2)]);
        assert_eq!((d.total(), d.get("web"), d.get("fridge")), (5, 2, 0));
        let back: Devices = serde_json::from_str(&serde_json::to_string(&d).expect("json")).expect("parse");
        assert_eq!(back, d);
    }

    #[test]
    fn shares_round_trip_through_the_store_encoding() {
        let mut devices = Devices::default();
        devices.add(&Device::parse("web").expect("valid"), 1);
        devices.add(&Device::parse("mobile").expect("valid"), 2);
        devices.add(&Device::parse("web").expect("valid"), 1);
        let s = Share { active: 0, idle_since: Some(17), devices };
        assert_eq!(s.encode(), "0|17|mobile:2,web:2");
        assert_eq!(Share::decode(&s.encode()), Some(s));
        assert_eq!(Share::decode(&Share::plain(3).encode()), Some(Share::plain(3)));
        assert_eq!(Share::decode("x|1|"), None);
        assert_eq!(serde_json::to_string(&Share::plain(2).devices).expect("json"), r#"{"unknown":2}"#);
    }

    #[test]
    fn a_status_lapses_at_its_expiry() {
        let s = UserStatus { availability: Availability::Busy, expires_at: Some(100), ..Default::default() };
        assert!(s.holds(99));
        assert!(!s.holds(100));
        assert!(!UserStatus::default().holds(0), "available without text says nothing");
        assert!(UserStatus::check_text(&"é".repeat(128)).is_ok());
        assert!(UserStatus::check_text(&"é".repeat(129)).is_err());
        assert!(UserStatus::check_text("a\nb").is_err());
        let parsed: UserStatus = serde_json::from_str(r#"{"availability":"napping"}"#).expect("json");
        assert_eq!(parsed.availability, Availability::Other, "newer values still read");
    }

    #[test]
    fn last_seen_policies() {
        assert_eq!(LastSeenPolicy::Exact.apply(Some(1_000_000_123)), Some(1_000_000_123));
        assert_eq!(LastSeenPolicy::Coarse.apply(Some(COARSE_LAST_SEEN_MS * 3 + 5)), Some(COARSE_LAST_SEEN_MS * 3));
        assert_eq!(LastSeenPolicy::Hidden.apply(Some(5)), None);
        assert!(LastSeenPolicy::parse("fuzzy").is_err());
    }
}
