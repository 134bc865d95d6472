//! The WebSocket protocol's edges (docs/protocol.md): token placement, auth
//! failures, redirect, bad input and limits. After each, the node still serves.

mod common;

use common::*;
use presence::cluster::Cluster;
use presence_client::{ClientMessage, Connection, Error, ServerMessage, TokenPlacement, UserId};
use presence_model::auth::{mint_hs256_claims, Claims};
use tokio_tungstenite::tungstenite::Message;

/// A node that does not own `user`.
fn other_node(c: &Cluster, user: &str) -> String {
    let (owner_id, _) = owner(c, user);
    c.nodes.iter().find(|n| n.node.config.node_id != owner_id).expect("another node").url.clone()
}

fn now_s() -> u64 {
    presence_model::time::now_ms() / 1000
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn expired() -> String {
    mint_hs256_claims(
        SECRET.as_bytes(),
        &Claims {
            sub: "alice".into(),
            exp: now_s() - 600,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            ..Default::default()
        },
    )
}

fn alg_none() -> String {
    let payload = format!(r#"{{"sub":"alice","exp":{}}}"#, now_s() + 600);
    format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(payload.as_bytes()))
}

fn no_sub() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(&Header::default(), &serde_json::json!({"exp": now_s() + 600}), &EncodingKey::from_secret(SECRET.as_bytes()))
        .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_header_query_or_first_message() {
    let c = cluster(2).await;
    let (_, url) = owner(&c, "alice");
    for placement in [
        TokenPlacement::Header(token("alice")),
        TokenPlacement::Query(token("alice")),
        TokenPlacement::Message(token("alice")),
    ] {
        let mut conn = Connection::connect(&url, placement.clone()).await.expect("connects");
        let w = expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
        assert!(
            matches!(w, ServerMessage::Welcome { ref user_id, .. } if user_id.as_str() == "alice"),
            "{placement:?}"
        );
        conn.close().await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_on_the_upgrade_get_401_json() {
    let c = cluster(2).await;
    let (_, url) = owner(&c, "alice");
    let cases = [
        (expired(), "token_expired"),
        (presence_model::auth::mint_hs256(b"wrong-secret", "alice", 600), "unauthorized"),
        (alg_none(), "unauthorized"),
        (no_sub(), "unauthorized"),
        ("garbage".to_string(), "unauthorized"),
    ];
    for (tok, want) in cases {
        for placement in [TokenPlacement::Header(tok.clone()), TokenPlacement::Query(tok.clone())] {
            match Connection::connect(&url, placement.clone()).await {
                Err(Error::Api { status: 401, code, .. }) => assert_eq!(code, want, "{placement:?}"),
                Err(e) => panic!("expected 401 for {placement:?}, got {e}"),
                Ok(_) => panic!("upgrade accepted a bad token: {placement:?}"),
            }
        }
    }
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_in_the_auth_message_get_error_and_4001() {
    let c = cluster(2).await;
    let (_, url) = owner(&c, "alice");
    for (tok, want) in [(expired(), "token_expired"), (alg_none(), "unauthorized"), (no_sub(), "unauthorized")] {
        let mut conn = Connection::connect(&url, TokenPlacement::Message(tok)).await.expect("upgrades");
        let (code, before) = expect_close(&mut conn).await;
        assert_eq!(code, 4001);
        assert!(
            matches!(before.as_slice(), [ServerMessage::Error { code, .. }] if code == want),
            "expected one {want} error, got {before:?}"
        );
    }
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_in_time_closes_4008() {
    let c = cluster(1).await;
    let mut conn = Connection::connect(&c.nodes[0].url, TokenPlacement::None).await.expect("upgrades");
    let (code, before) = expect_close(&mut conn).await;
    assert_eq!(code, 4008);
    assert!(before.is_empty(), "{before:?}");
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_auth_first_closes_4001_without_an_echo() {
    let c = cluster(1).await;
    for first in [
        Message::Text(r#"{"type":"ping"}"#.into()),
        Message::Text(format!(r#"{{"type":"{}"}}"#, "x".repeat(4000)).into()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        let mut conn = Connection::connect(&c.nodes[0].url, TokenPlacement::None).await.expect("upgrades");
        conn.send_raw(first).await.expect("send");
        let (code, before) = expect_close(&mut conn).await;
        assert_eq!(code, 4001);
        let [ServerMessage::Error { message, .. }] = before.as_slice() else { panic!("{before:?}") };
        assert!(!message.contains("xxxx"), "what the client sent is not echoed: {message}");
    }
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_node_redirects_to_the_owner_then_closes_4010() {
    let c = cluster(3).await;
    let (_, owner_url) = owner(&c, "alice");
    let wrong = other_node(&c, "alice");
    let mut conn = Connection::connect(&wrong, TokenPlacement::Header(token("alice"))).await.expect("upgrades");
    let (code, before) = expect_close(&mut conn).await;
    assert_eq!(code, 4010);
    match before.as_slice() {
        [ServerMessage::Redirect { url, epoch }] => {
            assert_eq!(url, &owner_url);
            assert_eq!(*epoch, c.coordinator.table.epoch());
        }
        other => panic!("expected one redirect, got {other:?}"),
    }
    // Following it works.
    let mut conn = Connection::connect(&owner_url, TokenPlacement::Header(token("alice"))).await.expect("connects");
    expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_and_the_connection_stays() {
    let c = cluster(1).await;
    let (mut conn, _) = connect(&c, "alice").await;
    let cases: [(Message, &str); 6] = [
        (Message::Text("{not json".into()), "malformed_message"),
        (Message::Text("[1,2,3]".into()), "malformed_message"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "unknown_type"),
        (Message::Text(r#"{"type":"subscribe","userIds":["ok","bad\u0001id"]}"#.into()), "invalid_user_id"),
        (
            Message::Text(format!(r#"{{"type":"subscribe","userIds":["{}"]}}"#, "x".repeat(129)).into()),
            "invalid_user_id",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "binary_not_supported"),
    ];
    for (frame, want) in cases {
        conn.send_raw(frame).await.expect("send");
        let m = expect(&mut conn, |m| matches!(m, ServerMessage::Error { .. }), want).await;
        assert!(matches!(&m, ServerMessage::Error { code, .. } if code == want), "{m:?}");
    }
    // A second `auth` is a token refresh: for another user it is refused, the connection stays.
    conn.send(&ClientMessage::Auth { token: token("bob"), device: None }).await.expect("send");
    expect(&mut conn, |m| matches!(m, ServerMessage::Error { code, .. } if code == "unauthorized"), "error").await;
    conn.send(&ClientMessage::Ping).await.expect("send");
    expect(&mut conn, |m| *m == ServerMessage::Pong, "pong").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_closes_4009() {
    let c = cluster(1).await;
    let (mut conn, _) = connect(&c, "alice").await;
    // 2000 short IDs in one frame (under 16 KiB): refused whole.
    let short: Vec<UserId> = (0..2000).map(|i| UserId::parse(&format!("{i}")).expect("id")).collect();
    let mut one = {
        let (c1, _) = connect(&c, "bob").await;
        c1
    };
    one.send(&ClientMessage::Subscribe { user_ids: short }).await.expect("send");
    let (code, before) = expect_close(&mut one).await;
    assert_eq!(code, 4009);
    assert!(
        before.iter().any(|m| matches!(m, ServerMessage::Error { code, .. } if code == "too_many_subscriptions")),
        "{before:?}"
    );
    // 1000 then 1000 more: the first thousand are served, the next frame is refused.
    let ids: Vec<UserId> = (0..2000).map(|i| UserId::parse(&format!("u{i}")).expect("id")).collect();
    conn.send(&ClientMessage::Subscribe { user_ids: ids[..1000].to_vec() }).await.expect("send");
    for i in [0, 999] {
        expect_status(&mut conn, &format!("u{i}"), 0).await;
    }
    conn.send(&ClientMessage::Subscribe { user_ids: ids[1000..].to_vec() }).await.expect("send");
    let (code, before) = expect_close(&mut conn).await;
    assert_eq!(code, 4009);
    assert!(
        before.iter().any(|m| matches!(m, ServerMessage::Error { code, .. } if code == "too_many_subscriptions")),
        "{before:?}"
    );
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_frame_closes_4009() {
    let c = cluster(1).await;
    let (mut conn, _) = connect(&c, "alice").await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1 << 20));
    // The server may close before the whole frame is written; that is the point.
    let _ = conn.send_raw(Message::Text(big.into())).await;
    let (code, before) = expect_close(&mut conn).await;
    assert_eq!(code, 4009);
    assert!(
        before.iter().any(|m| matches!(m, ServerMessage::Error { code, .. } if code == "frame_too_large")),
        "{before:?}"
    );
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_endpoint_refuses_plain_http() {
    let c = cluster(1).await;
    let api = presence_client::CoordinatorClient::new(&c.nodes[0].http_url).expect("url");
    match api.get::<serde_json::Value>("/socket").await {
        Err(Error::Api { status: 426, code, .. }) => assert_eq!(code, "upgrade_required"),
        other => panic!("expected 426, got {other:?}"),
    }
    let health: serde_json::Value = api.get("/healthz").await.expect("healthz");
    assert_eq!(health["status"], "ok");
    let ready: serde_json::Value = api.get("/readyz").await.expect("readyz");
    assert_eq!(ready["ready"], true);
    c.shutdown().await;
}
