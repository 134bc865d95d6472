//! The node's handle on one connection: a conflating outbox that the
//! connection's session drains onto the socket.
//!
//! A status is state, not an event stream: a watcher needs the latest status
//! of each user it follows, in order, not every intermediate one. So the
//! outbox holds at most one pending `status` per followed user and one
//! pending `count`; a newer one replaces the queued, unsent one in its place
//! (counted in `presence_statuses_conflated_total`). It also remembers the
//! newest `seq` it took for each followed user and drops anything older, so
//! a client never sees a user go backwards, whichever path (live fan-out or
//! the subscribe snapshot) a status came by. Other messages (`reconnect`)
//! wait in a small bounded queue.
//!
//! The outbox is therefore bounded by the connection's subscriptions plus a
//! few messages, and a burst of churn cannot overflow it. What bounds a
//! client that really does not read is time: the session's write deadline
//! (`docs/protocol.md`, "Slow readers").
//!
//! Everything that talks to a client from outside its session (fan-out,
//! handoff) goes through these `push` methods, which never wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::time::Instant;

use presence_model::{Device, UserId};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// A message other than `status` and `count`.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message, already serialised.
    Text(Utf8Bytes),
    /// A `reconnect` message: send it, then close with 4011 after the handoff timeout.
    Handoff(Utf8Bytes),
}

/// What the session takes from the outbox for one write.
#[derive(Debug)]
pub enum Taken {
    /// One message.
    One(Outbound),
    /// Pending `status` frames of several users, sent as one `statuses` message.
    Statuses(Vec<Utf8Bytes>),
}

/// The order messages were queued in, by what they are.
#[derive(Debug)]
enum Key {
    Status(UserId),
    Count,
    Other,
}

/// One followed user's place in the outbox.
#[derive(Debug, Default)]
struct Followed {
    /// The newest `seq` taken for this user (pending or sent).
    seq: Option<u64>,
    /// The pending frame, if any.
    pending: Option<Utf8Bytes>,
}

#[derive(Debug, Default)]
struct Outbox {
    order: VecDeque<Key>,
    statuses: HashMap<UserId, Followed>,
    count: Option<Utf8Bytes>,
    others: VecDeque<Outbound>,
}

/// The node's handle on one connection. Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnShared>,
}

struct ConnShared {
    /// Node-local connection number.
    id: u64,
    /// Bound on the queue of other messages.
    max_others: u32,
    /// [`OVERFLOWED`], [`CLOSING`], [`TIMER`].
    flags: AtomicU8,
    /// Plain data, a few map operations per push: a sync lock that is never
    /// held across an `.await`.
    outbox: Mutex<Outbox>,
    /// Rung when anything may need the session: something was queued, the
    /// session must end, or its timer rang. One signal for all of them keeps
    /// what an idle session waits on small (`BENCHMARKS.md`, idle memory).
    signal: Notify,
    /// When the session's timer should ring, in ms on [`clock_ms`] (0: not set).
    wake_at: AtomicU64,
    /// The device class the connection declared.
    device: Device,
    /// While [`IDLE`]: when the connection went idle, ms since the Unix epoch.
    idle_at: AtomicU64,
}

/// The queue of other messages overflowed.
const OVERFLOWED: u8 = 1;
/// The node is closing.
const CLOSING: u8 = 2;
/// The session's timer rang.
const TIMER: u8 = 4;
/// The client said the connection is idle.
const IDLE: u8 = 8;

/// Why a session was told to end (see [`Conn::told`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Told {
    /// The node is closing.
    Closing,
    /// The queue of other messages overflowed.
    Overflow,
}

/// Milliseconds on the process's monotonic clock (tokio's, so paused time in tests moves it).
pub fn clock_ms(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // A second before the first call, so that no real time reads as 0 ("not set").
    let start = *START.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(std::time::Duration::from_secs(1)).unwrap_or(now)
    });
    at.saturating_duration_since(start).as_millis() as u64
}

impl Conn {
    /// A handle whose queue of other messages holds at most `max_others`, of unknown device.
    pub fn new(id: u64, max_others: usize) -> Self {
        Self::of_device(id, max_others, Device::unknown())
    }

    /// A handle of a connection that declared `device`.
    pub fn of_device(id: u64, max_others: usize, device: Device) -> Self {
        let shared = ConnShared {
            id,
            max_others: max_others.clamp(1, u32::MAX as usize) as u32,
            outbox: Mutex::new(Outbox::default()),
            signal: Notify::new(),
            flags: AtomicU8::new(0),
            wake_at: AtomicU64::new(0),
            device,
            idle_at: AtomicU64::new(0),
        };
        Self { inner: Arc::new(shared) }
    }

    /// The device class the connection declared.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// When the connection went idle (ms since the Unix epoch), `None` while active.
    pub fn idle_since(&self) -> Option<u64> {
        (self.inner.flags.load(Ordering::Acquire) & IDLE != 0).then(|| self.inner.idle_at.load(Ordering::Acquire))
    }

    /// Marks the connection idle (since `now_ms`) or active; whether that changed anything.
    pub fn set_idle(&self, idle: bool, now_ms: u64) -> bool {
        if idle {
            // Only the connection's own session calls this: no race between the check and the store.
            if self.inner.flags.load(Ordering::Acquire) & IDLE != 0 {
                return false;
            }
            self.inner.idle_at.store(now_ms, Ordering::Release);
            self.inner.flags.fetch_or(IDLE, Ordering::AcqRel);
            true
        } else {
            self.inner.flags.fetch_and(!IDLE, Ordering::AcqRel) & IDLE != 0
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection number.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Waits until the connection is rung: something was queued, it was
    /// told to end ([`Conn::told`]) or its timer rang ([`Conn::timer_rang`]).
    /// A ring while nobody waits is kept for the next wait.
    pub async fn rung(&self) {
        self.inner.signal.notified().await
    }

    fn raise(&self, flag: u8) {
        self.inner.flags.fetch_or(flag, Ordering::AcqRel);
        self.inner.signal.notify_one();
    }

    /// Whether the session must end: the node closes, or a push found the
    /// queue of other messages full.
    pub fn told(&self) -> Option<Told> {
        let flags = self.inner.flags.load(Ordering::Acquire);
        if flags & CLOSING != 0 {
            Some(Told::Closing)
        } else if flags & OVERFLOWED != 0 {
            Some(Told::Overflow)
        } else {
            None
        }
    }

    /// Tells the session that the node closes.
    pub fn close(&self) {
        self.raise(CLOSING);
    }

    /// Asks for a ring at `at` (replacing the previous request). The node's
    /// ticker rings it ([`Conn::ring_if_due`]).
    pub fn set_timer(&self, at: Instant) {
        self.inner.wake_at.store(clock_ms(at).max(1), Ordering::Release);
    }

    /// Rings the session if its timer is due at `now_ms` ([`clock_ms`]).
    pub fn ring_if_due(&self, now_ms: u64) {
        let at = self.inner.wake_at.load(Ordering::Acquire);
        if at != 0
            && at <= now_ms
            && self.inner.wake_at.compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.raise(TIMER);
        }
    }

    /// Whether the timer rang since the last call.
    pub fn timer_rang(&self) -> bool {
        self.inner.flags.fetch_and(!TIMER, Ordering::AcqRel) & TIMER != 0
    }

    /// Makes the next [`Conn::rung`] return at once (more is left to write).
    pub fn wake(&self) {
        self.inner.signal.notify_one();
    }

    /// Queues `user`'s status at `seq` (see the module docs): replaces the
    /// pending one, or is dropped when not newer than what was taken.
    pub fn push_status(&self, user: &UserId, seq: u64, frame: Utf8Bytes, metrics: &Metrics) {
        {
            let mut o = self.outbox();
            let f = o.statuses.entry(user.clone()).or_default();
            if f.seq.is_some_and(|s| s > seq) {
                return;
            }
            f.seq = Some(seq);
            if f.pending.replace(frame).is_some() {
                metrics.statuses_conflated.inc();
                return;
            }
            o.order.push_back(Key::Status(user.clone()));
        }
        self.inner.signal.notify_one();
    }

    /// Stops following `user`: a pending status is dropped, and a later
    /// subscription starts afresh.
    pub fn forget(&self, user: &UserId) {
        self.outbox().statuses.remove(user);
    }

    /// Queues the user's own connection count, replacing a pending one.
    pub fn push_count(&self, frame: Utf8Bytes) {
        {
            let mut o = self.outbox();
            if o.count.replace(frame).is_none() {
                o.order.push_back(Key::Count);
            }
        }
        self.inner.signal.notify_one();
    }

    /// Queues another message. A full queue means the client reads too
    /// slowly: it is told to go (see [`Conn::told`]) and counted.
    pub fn push(&self, out: Outbound, metrics: &Metrics) {
        {
            let mut o = self.outbox();
            if o.others.len() >= self.inner.max_others as usize {
                drop(o);
                metrics.slow_consumers.inc();
                self.raise(OVERFLOWED);
                return;
            }
            o.others.push_back(out);
            o.order.push_back(Key::Other);
        }
        self.inner.signal.notify_one();
    }

    /// The next thing to write: the oldest queued message, with the pending
    /// statuses queued right after it when it is a status (at most
    /// `max_batch` together).
    pub fn take(&self, max_batch: usize) -> Option<Taken> {
        let mut o = self.outbox();
        let mut batch = Vec::new();
        loop {
            let next_is_status = matches!(o.order.front(), Some(Key::Status(_)));
            if !batch.is_empty() && (!next_is_status || batch.len() >= max_batch) {
                break;
            }
            match o.order.pop_front() {
                None => break,
                Some(Key::Status(user)) => {
                    // Gone when the user was unfollowed meanwhile.
                    if let Some(frame) = o.statuses.get_mut(&user).and_then(|f| f.pending.take()) {
                        batch.push(frame);
                    }
                }
                Some(Key::Count) => {
                    if let Some(frame) = o.count.take() {
                        return Some(Taken::One(Outbound::Text(frame)));
                    }
                }
                Some(Key::Other) => {
                    if let Some(out) = o.others.pop_front() {
                        return Some(Taken::One(out));
                    }
                }
            }
        }
        match batch.len() {
            0 => None,
            1 => batch.pop().map(|f| Taken::One(Outbound::Text(f))),
            _ => Some(Taken::Statuses(batch)),
        }
    }

    /// Messages waiting (statuses, count and others).
    pub fn pending(&self) -> usize {
        let o = self.outbox();
        o.statuses.values().filter(|f| f.pending.is_some()).count() + usize::from(o.count.is_some()) + o.others.len()
    }
}

/// A token bucket of `burst` messages refilled at `rate` per second: how
/// fast a client may send (`MESSAGE_RATE`, `MESSAGE_BURST`).
#[derive(Debug)]
pub struct Pace {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: tokio::time::Instant,
}

impl Pace {
    /// A full bucket of `burst`, refilled at `rate` messages per second.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { tokens: burst, burst, rate: f64::from(rate.max(1)), last: tokio::time::Instant::now() }
    }

    /// Takes a token, or says when the next one will be there.
    pub fn take(&mut self) -> Result<(), tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Flow control of a connection's outbox by the client's own reading.
///
/// At most `size` outbox frames are out unacknowledged. Halfway through, a
/// WebSocket ping carrying a probe number follows the frames; every client
/// answers a ping with a pong once it has read up to it (browsers and
/// tungstenite do so by themselves), so the pong acknowledges every frame
/// before its ping. A client that reads as fast as it is sent never fills
/// the window and gets each status at once; one that reads slowly fills it,
/// and meanwhile its statuses wait in the outbox, conflate, and leave as
/// fewer, larger `statuses` messages. So a slow reader is never more than a
/// window behind, however fast its followed users change, and nobody pays a
/// fixed pace for it. A window that stays full for the write timeout is a
/// client that stopped reading: it is dropped as a slow consumer.
#[derive(Debug)]
pub struct Window {
    size: u32,
    unacked: u32,
    /// The probe in flight: its number and the frames it acknowledges.
    probe: Option<(u32, u32)>,
    /// Numbers wrap: only one probe is in flight at a time.
    next_probe: u32,
}

/// Probe pings carry this prefix and an 8-byte number (keep-alive pings are empty).
const PROBE: &[u8] = b"w";

impl Window {
    /// A window of `size` frames (at least 1).
    pub fn new(size: u32) -> Self {
        Self { size: size.max(1), unacked: 0, probe: None, next_probe: 0 }
    }

    /// Whether another frame may go out now.
    pub fn is_open(&self) -> bool {
        self.unacked < self.size
    }

    /// Counts a frame written; returns the payload of a probe ping to send
    /// after it when one is due (halfway through the window, one at a time).
    pub fn sent(&mut self) -> Option<Vec<u8>> {
        self.unacked += 1;
        if self.probe.is_some() || self.unacked < self.size.div_ceil(2) {
            return None;
        }
        self.next_probe = self.next_probe.wrapping_add(1);
        self.probe = Some((self.next_probe, self.unacked));
        Some([PROBE, &u64::from(self.next_probe).to_be_bytes()].concat())
    }

    /// A pong arrived: if it answers the probe, what was before it was read.
    pub fn pong(&mut self, payload: &[u8]) {
        if let Some((id, frames)) = self.probe {
            if payload.strip_prefix(PROBE) == Some(&u64::from(id).to_be_bytes()[..]) {
                self.unacked -= frames;
                self.probe = None;
            }
        }
    }
}

/// The `statuses` message carrying these `status` frames (each entry is a
/// whole `status` message; `docs/protocol.md`).
pub fn statuses_frame(frames: &[Utf8Bytes]) -> Utf8Bytes {
    let mut s = String::with_capacity(32 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    s.push_str(r#"{"type":"statuses","statuses":["#);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(f.as_str());
    }
    s.push_str("]}");
    Utf8Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    fn text(t: Option<Taken>) -> String {
        match t {
            Some(Taken::One(Outbound::Text(f) | Outbound::Handoff(f))) => f.to_string(),
            Some(Taken::Statuses(fs)) => statuses_frame(&fs).to_string(),
            None => String::new(),
        }
    }

    #[test]
    fn a_newer_status_replaces_the_pending_one_in_its_place() {
        let m = Metrics::new();
        let c = Conn::new(1, 4);
        c.push_status(&uid("a"), 1, "a1".into(), &m);
        c.push_status(&uid("b"), 1, "b1".into(), &m);
        c.push_count("c1".into());
        c.push_status(&uid("a"), 2, "a2".into(), &m);
        c.push_count("c2".into());
        assert_eq!(m.statuses_conflated.get(), 1);
        assert_eq!(c.pending(), 3);
        assert_eq!(text(c.take(10)), r#"{"type":"statuses","statuses":[a2,b1]}"#);
        assert_eq!(text(c.take(10)), "c2");
        assert!(c.take(10).is_none());
    }

    #[test]
    fn nothing_older_than_what_was_taken_gets_through() {
        let m = Metrics::new();
        let c = Conn::new(1, 4);
        c.push_status(&uid("a"), 5, "a5".into(), &m);
        assert_eq!(text(c.take(10)), "a5");
        c.push_status(&uid("a"), 4, "a4".into(), &m);
        assert!(c.take(10).is_none(), "older than what the client has");
        c.push_status(&uid("a"), 5, "a5 again".into(), &m);
        assert_eq!(text(c.take(10)), "a5 again", "the same seq is allowed (a re-sent snapshot)");
        c.forget(&uid("a"));
        c.push_status(&uid("a"), 1, "a1".into(), &m);
        assert_eq!(text(c.take(10)), "a1", "a new subscription starts afresh");
    }

    #[test]
    fn batches_are_bounded_and_other_messages_keep_their_turn() {
        let m = Metrics::new();
        let c = Conn::new(1, 1);
        for i in 0..5 {
            c.push_status(&uid(&format!("u{i}")), 1, format!("s{i}").into(), &m);
        }
        c.push(Outbound::Handoff("r".into()), &m);
        assert_eq!(text(c.take(3)), r#"{"type":"statuses","statuses":[s0,s1,s2]}"#);
        assert_eq!(text(c.take(3)), r#"{"type":"statuses","statuses":[s3,s4]}"#);
        assert_eq!(text(c.take(3)), "r");
        // The bounded queue of other messages.
        c.push(Outbound::Text("x".into()), &m);
        c.push(Outbound::Text("y".into()), &m);
        assert_eq!(m.slow_consumers.get(), 1);
        assert!(futures_util::FutureExt::now_or_never(c.rung()).is_some());
        assert_eq!(c.told(), Some(Told::Overflow));
        c.close();
        assert_eq!(c.told(), Some(Told::Closing), "closing comes first");
    }

    #[tokio::test]
    async fn the_timer_rings_once_when_due() {
        let c = Conn::new(1, 4);
        let now = Instant::now();
        c.ring_if_due(clock_ms(now));
        assert!(!c.timer_rang(), "not set: never rings");
        c.set_timer(now + std::time::Duration::from_secs(1));
        c.ring_if_due(clock_ms(now));
        assert!(!c.timer_rang(), "not due yet");
        c.ring_if_due(clock_ms(now + std::time::Duration::from_secs(2)));
        assert!(futures_util::FutureExt::now_or_never(c.rung()).is_some(), "the session is woken");
        assert!(c.timer_rang());
        assert!(!c.timer_rang(), "once");
        c.ring_if_due(clock_ms(now + std::time::Duration::from_secs(3)));
        assert!(!c.timer_rang(), "a rung timer stays quiet until set again");
        assert_eq!(c.told(), None);
    }

    #[test]
    fn the_window_closes_until_the_probe_is_answered() {
        let mut w = Window::new(4);
        assert!(w.is_open());
        assert_eq!(w.sent(), None);
        let probe = w.sent().expect("a probe halfway");
        assert_eq!(w.sent(), None, "one probe at a time");
        assert_eq!(w.sent(), None);
        assert!(!w.is_open(), "four frames out, none acknowledged");
        w.pong(b"");
        w.pong(b"w\0\0\0\0\0\0\0\x09");
        assert!(!w.is_open(), "keep-alive pongs and strangers' pongs acknowledge nothing");
        w.pong(&probe);
        assert!(w.is_open(), "the two frames before the probe were read");
        assert!(w.sent().is_some(), "still half a window out: the next frame brings a new probe");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_allows_a_burst_then_the_rate() {
        let mut p = Pace::new(10, 3);
        assert!((0..3).all(|_| p.take().is_ok()));
        let next = p.take().expect_err("the bucket is empty");
        assert_eq!(next.duration_since(tokio::time::Instant::now()), std::time::Duration::from_millis(100));
        tokio::time::sleep_until(next).await;
        assert!(p.take().is_ok());
    }

    #[test]
    fn a_burst_never_grows_the_outbox_beyond_the_followed_users() {
        let m = Metrics::new();
        let c = Conn::new(1, 4);
        for seq in 1..=10_000u64 {
            let u = uid(&format!("u{}", seq % 100));
            c.push_status(&u, seq, format!("{seq}").into(), &m);
        }
        assert_eq!(c.pending(), 100);
        assert_eq!(m.statuses_conflated.get(), 9_900);
    }
}
