//! Rich presence (docs/protocol.md, "Rich presence") in-process, over real
//! sockets: idleness, invisibility, the claims subscribe policy, lastSeen
//! visibility, the offline grace period, and the SDK's typed events and idle
//! helper. The multi-node cases on real Redis and Kafka are in
//! `rich_cluster.rs`.

mod common;

use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{ClientMessage, Connection, Frame, ServerMessage, TokenPlacement};
use presence_model::api::PresenceView;
use presence_model::{Availability, LastSeenPolicy, UserId};

fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("id")
}

/// A cluster of one node whose node settings `edit` changes.
async fn one_node(edit: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut config = ClusterConfig::for_tests(1, SECRET);
    edit(&mut config);
    let c = Cluster::start(config).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("settles");
    c
}

/// `user` connected with `token` (and `?device=` when given), past its welcome.
async fn join(c: &Cluster, user: &str, token: String, device: Option<&str>) -> Connection {
    let (_, url) = owner(c, user);
    let url = match device {
        Some(d) => format!("{url}?device={d}"),
        None => url,
    };
    let mut conn = Connection::connect(&url, TokenPlacement::Header(token)).await.expect("connects");
    expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    conn
}

/// Subscribes and reads the snapshot of `user`.
async fn watch(conn: &mut Connection, user: &str) -> ServerMessage {
    conn.send(&ClientMessage::Subscribe { user_ids: vec![uid(user)] }).await.expect("send");
    status_of(conn, user, |_| true, "the snapshot").await
}

/// Every `status` of `user` that arrives within `d`.
async fn statuses_within(conn: &mut Connection, user: &str, d: Duration) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(f)) = tokio::time::timeout_at(deadline, conn.next()).await {
        if let Frame::Message(m @ ServerMessage::Status(PresenceView { .. })) = f {
            if matches!(&m, ServerMessage::Status(PresenceView { user_id, .. }) if user_id.as_str() == user) {
                out.push(m);
            }
        }
    }
    out
}

fn idle(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Status(PresenceView { idle: true, .. }))
}

fn online(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Status(PresenceView { online: true, .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_idle_when_every_connection_is() {
    let c = one_node(|_| {}).await;
    let mut w = join(&c, "idle-watcher", token("idle-watcher"), None).await;
    let mut a = join(&c, "dana", token("dana"), Some("web")).await;
    let mut b = join(&c, "dana", token("dana"), Some("mobile")).await;
    let first = watch(&mut w, "dana").await;
    assert!(online(&first) && !idle(&first), "{first:?}");

    a.send(&ClientMessage::Activity { idle: true }).await.expect("send");
    // One connection idle is not enough: nothing idle reaches the watcher.
    let meanwhile = statuses_within(&mut w, "dana", Duration::from_millis(500)).await;
    assert!(meanwhile.iter().all(|m| !idle(m)), "{meanwhile:?}");
    let before = presence_model::time::now_ms();
    b.send(&ClientMessage::Activity { idle: true }).await.expect("send");
    let all_idle = status_of(&mut w, "dana", idle, "dana idle").await;
    let ServerMessage::Status(PresenceView { idle_since: Some(since), connections: 2, .. }) = all_idle else {
        panic!("{all_idle:?}")
    };
    assert!(since >= before.saturating_sub(1000), "idle since the last connection went idle: {since} vs {before}");
    a.send(&ClientMessage::Activity { idle: false }).await.expect("send");
    let back = status_of(&mut w, "dana", |m| !idle(m), "dana active").await;
    assert!(matches!(back, ServerMessage::Status(PresenceView { idle_since: None, connections: 2, .. })), "{back:?}");
    // An idle connection that closes leaves the active one: still not idle;
    // the active one closing leaves only idle ones: idle.
    b.close().await;
    let one =
        status_of(&mut w, "dana", |m| matches!(m, ServerMessage::Status(PresenceView { connections: 1, .. })), "1")
            .await;
    assert!(!idle(&one), "{one:?}");
    let mut c2 = join(&c, "dana", token("dana"), None).await;
    c2.send(&ClientMessage::Activity { idle: true }).await.expect("send");
    a.close().await;
    let left =
        status_of(&mut w, "dana", |m| matches!(m, ServerMessage::Status(PresenceView { connections: 1, .. })), "1")
            .await;
    assert!(idle(&left), "only an idle connection is left: {left:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_users_look_offline_to_everyone_but_themselves() {
    let c = one_node(|_| {}).await;
    let api = coordinator(&c);
    let mut w = join(&c, "inv-watcher", token("inv-watcher"), None).await;
    let mut me = join(&c, "ivy", token("ivy"), None).await;
    expect_count(&mut me, 1).await;
    watch(&mut w, "ivy").await;
    watch(&mut me, "ivy").await;
    let at = presence_model::time::now_ms();
    let invisible = ClientMessage::SetStatus { availability: Availability::Invisible, text: None, expires_in_ms: None };
    me.send(&invisible).await.expect("send");
    let seen = status_of(&mut w, "ivy", |m| !online(m), "ivy offline to watchers").await;
    let ServerMessage::Status(PresenceView {
        connections: 0,
        last_seen: Some(ls),
        availability: Availability::Available,
        ..
    }) = seen
    else {
        panic!("{seen:?}")
    };
    assert!(ls >= at.saturating_sub(1000) && ls <= presence_model::time::now_ms(), "lastSeen frozen then: {ls}");
    let own = status_of(
        &mut me,
        "ivy",
        |m| matches!(m, ServerMessage::Status(PresenceView { availability: Availability::Invisible, .. })),
        "own truth",
    )
    .await;
    assert!(online(&own), "{own:?}");
    let view = api.status(&["ivy"]).await.expect("presence").remove(0);
    assert!(!view.online && view.connections == 0 && view.last_seen == Some(ls), "the server API: {view:?}");
    // The user's own count stays exact; watchers still see nothing.
    let mut second = join(&c, "ivy", token("ivy"), None).await;
    expect_count(&mut second, 2).await;
    let quiet = statuses_within(&mut w, "ivy", Duration::from_millis(500)).await;
    assert!(quiet.iter().all(|m| !online(m)), "{quiet:?}");
    let later = api.status(&["ivy"]).await.expect("presence").remove(0);
    assert_eq!(later.last_seen, Some(ls), "lastSeen stays frozen");
    // Back to available: watchers see the truth again.
    me.send(&ClientMessage::SetStatus { availability: Availability::Available, text: None, expires_in_ms: None })
        .await
        .expect("send");
    let back = status_of(&mut w, "ivy", online, "ivy online").await;
    assert!(matches!(back, ServerMessage::Status(PresenceView { connections: 2, .. })), "{back:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_policy_lets_users_watch_only_whom_their_token_lists() {
    let c = one_node(|config| {
        config.node.subscribe_policy = presence_ws_node::config::SubscribePolicy::Claims;
        config.node.views.last_seen = LastSeenPolicy::Coarse;
    })
    .await;
    let claims = presence_model::auth::Claims {
        sub: "fran".into(),
        exp: presence_model::time::now_ms() / 1000 + 600,
        watch: Some(vec!["gus".into()]),
        ..Default::default()
    };
    let mut fran = join(&c, "fran", presence_model::auth::mint_hs256_claims(SECRET.as_bytes(), &claims), None).await;
    fran.send(&ClientMessage::Subscribe { user_ids: vec![uid("gus"), uid("hal")] }).await.expect("send");
    let refused = expect(&mut fran, |m| matches!(m, ServerMessage::Error { .. }), "forbidden").await;
    let ServerMessage::Error { code, message } = refused else { unreachable!() };
    assert_eq!(code, "forbidden");
    assert!(message.contains("hal") && !message.contains("gus"), "{message}");
    status_of(&mut fran, "gus", |_| true, "gus's snapshot").await;
    // A token without the claim may watch only its own user.
    let mut ida = join(&c, "ida", token("ida"), None).await;
    ida.send(&ClientMessage::Subscribe { user_ids: vec![uid("gus")] }).await.expect("send");
    expect(&mut ida, |m| matches!(m, ServerMessage::Error { code, .. } if code == "forbidden"), "forbidden").await;
    watch(&mut ida, "ida").await;
    // lastSeen is coarse for watchers.
    let gus = join(&c, "gus", token("gus"), None).await;
    status_of(&mut fran, "gus", online, "gus online").await;
    gus.close().await;
    let gone = status_of(&mut fran, "gus", |m| !online(m), "gus offline").await;
    let ServerMessage::Status(PresenceView { last_seen: Some(ls), .. }) = gone else { panic!("{gone:?}") };
    assert_eq!(ls % presence_model::rich::COARSE_LAST_SEEN_MS, 0, "rounded to the quarter hour: {ls}");
    assert!(presence_model::time::now_ms() - ls < presence_model::rich::COARSE_LAST_SEEN_MS + 5_000);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_last_seen_is_never_shown_to_watchers() {
    let c = one_node(|config| config.node.views.last_seen = LastSeenPolicy::Hidden).await;
    let mut w = join(&c, "hid-watcher", token("hid-watcher"), None).await;
    let jo = join(&c, "jo", token("jo"), None).await;
    let first = watch(&mut w, "jo").await;
    assert!(matches!(first, ServerMessage::Status(PresenceView { online: true, last_seen: None, .. })), "{first:?}");
    jo.close().await;
    let gone = status_of(&mut w, "jo", |m| !online(m), "jo offline").await;
    assert!(matches!(gone, ServerMessage::Status(PresenceView { last_seen: None, .. })), "{gone:?}");
    // The server API keeps the exact time.
    let view = coordinator(&c).status(&["jo"]).await.expect("presence").remove(0);
    assert!(view.last_seen.is_some(), "{view:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_offline_grace_a_return_is_never_seen_as_offline() {
    let c = one_node(|config| config.node.views.offline_grace_ms = 1500).await;
    let mut w = join(&c, "grace-watcher", token("grace-watcher"), None).await;
    watch(&mut w, "kit").await;
    let first = join(&c, "kit", token("kit"), None).await;
    status_of(&mut w, "kit", online, "kit online").await;
    // A page reload: closed and back 200 ms later.
    first.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = join(&c, "kit", token("kit"), None).await;
    let during = statuses_within(&mut w, "kit", Duration::from_millis(2500)).await;
    assert!(during.iter().all(online), "a watcher saw kit offline: {during:?}");
    // The count and the server API are exact meanwhile: they say offline at once.
    let api = coordinator(&c);
    let closed_at = presence_model::time::now_ms();
    second.close().await;
    eventually("/presence says offline at once", || async { api.status(&["kit"]).await.is_ok_and(|v| !v[0].online) })
        .await;
    let told = tokio::time::Instant::now();
    let gone = status_of(&mut w, "kit", |m| !online(m), "kit offline after the grace").await;
    let waited = told.elapsed();
    assert!(waited >= Duration::from_millis(1200), "offline came after {waited:?}, before the grace");
    let ServerMessage::Status(PresenceView { last_seen: Some(ls), .. }) = gone else { panic!("{gone:?}") };
    assert!(ls >= closed_at.saturating_sub(50) && ls <= closed_at + 1000, "lastSeen is the close: {ls} vs {closed_at}");
    c.shutdown().await;
}

/// The next SDK event that satisfies `pred`.
async fn event_where(
    s: &mut presence_client::Session,
    pred: impl Fn(&presence_client::Event) -> bool,
    what: &str,
) -> presence_client::Event {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(e) = s.next_event().await {
            if pred(&e) {
                return Some(e);
            }
            seen.push(e);
        }
        None
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        _ => panic!("no {what}; saw {seen:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sets_statuses_reports_idleness_and_types_rich_events() {
    use presence_client::{Client, ConnectOptions, Event, IdleTimer, TokenSource};
    let c = one_node(|_| {}).await;
    let client = Client::new(&c.admin_url).expect("client");
    let mut options = ConnectOptions::new(TokenSource::fixed(token("lee")));
    options.device = Some("desktop".into());
    let mut lee = client.connect("lee", options).await.expect("connects");
    event_where(&mut lee, |e| matches!(e, Event::Welcome { .. }), "welcome").await;
    let mut watcher = client
        .connect("lee-watcher", ConnectOptions::new(TokenSource::fixed(token("lee-watcher"))))
        .await
        .expect("connects");
    watcher.subscribe(&["lee"]).await.expect("subscribe");
    let first =
        event_where(&mut watcher, |e| matches!(e, Event::Status(PresenceView { online: true, .. })), "lee online")
            .await;
    let Event::Status(PresenceView { devices, .. }) = &first else { unreachable!() };
    assert_eq!(devices.get("desktop"), 1, "{first:?}");

    lee.set_status(Availability::Busy, Some("Focus time"), Some(Duration::from_secs(600))).await.expect("set");
    let busy = event_where(
        &mut watcher,
        |e| matches!(e, Event::Status(PresenceView { availability: Availability::Busy, .. })),
        "busy",
    )
    .await;
    let Event::Status(PresenceView { status_text, status_expires_at, .. }) = &busy else { unreachable!() };
    assert_eq!(status_text.as_deref(), Some("Focus time"));
    assert!(status_expires_at.is_some_and(|t| t > presence_model::time::now_ms() + 500_000), "{busy:?}");

    // The idle helper: idle after 300 ms without activity, active at the next touch.
    let timer = IdleTimer::start(&lee, Duration::from_millis(300));
    event_where(&mut watcher, |e| matches!(e, Event::Status(PresenceView { idle: true, .. })), "lee idle").await;
    timer.touch();
    event_where(&mut watcher, |e| matches!(e, Event::Status(PresenceView { idle: false, .. })), "lee active").await;
    drop(timer);
    lee.close().await;
    watcher.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_lapses_at_its_expiry() {
    let c = one_node(|_| {}).await;
    let mut w = join(&c, "lapse-watcher", token("lapse-watcher"), None).await;
    let mut me = join(&c, "max", token("max"), None).await;
    watch(&mut w, "max").await;
    let set = ClientMessage::SetStatus {
        availability: Availability::Away,
        text: Some("lunch".into()),
        expires_in_ms: Some(1500),
    };
    me.send(&set).await.expect("send");
    let away = status_of(
        &mut w,
        "max",
        |m| matches!(m, ServerMessage::Status(PresenceView { availability: Availability::Away, .. })),
        "away",
    )
    .await;
    let ServerMessage::Status(PresenceView { status_expires_at: Some(at), .. }) = away else { panic!("{away:?}") };
    status_of(
        &mut w,
        "max",
        |m| {
            matches!(
                m,
                ServerMessage::Status(PresenceView { availability: Availability::Available, status_text: None, .. })
            )
        },
        "lapsed",
    )
    .await;
    let now = presence_model::time::now_ms();
    assert!(now >= at && now < at + 3000, "lapsed at {now}, expiry {at}");
    c.shutdown().await;
}
