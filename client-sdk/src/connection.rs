//! One WebSocket connection to a ws-node, with typed messages.
//!
//! This is the building block: it does not follow redirects or reconnect by
//! itself. It reports every server message and, at the end, the close code,
//! so callers (and the reconnecting client built on it) can act on 4010
//! redirects, 4011 handoffs and 4001 expired tokens.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presence_model::wire::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Error;

/// Where the token travels.
#[derive(Debug, Clone)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <jwt>` on the upgrade request.
    Header(String),
    /// `?token=<jwt>` on the URL.
    Query(String),
    /// A first `{"type":"auth"}` message after the upgrade.
    Message(String),
    /// No token (the server waits for `auth`, then times out).
    None,
}

/// What a connection yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A protocol message.
    Message(ServerMessage),
    /// A text frame that is not a protocol message (kept for diagnostics).
    Unparsed(String),
    /// The server closed the connection with this code and reason.
    Closed {
        /// Close code (1000, 4001, 4010, ...); 1005 when the frame had none.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// An open WebSocket to a ws-node.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Statuses of a `statuses` batch not handed out yet: a batch is a
    /// transport detail, and [`Connection::next`] yields its entries one by one.
    unbatched: std::collections::VecDeque<ServerMessage>,
}

impl Connection {
    /// Connects to a node's `/socket` URL and places the token as asked. A
    /// token refused during the upgrade comes back as [`Error::Api`] with
    /// status 401 and the server's code (`unauthorized` or `token_expired`).
    pub async fn connect(url: &str, token: TokenPlacement) -> Result<Self, Error> {
        let full = match &token {
            TokenPlacement::Query(t) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}token={}", crate::coordinator::encode(t))
            }
            _ => url.to_string(),
        };
        let mut req = full
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidUrl { url: url.to_string(), reason: e.to_string() })?;
        if let TokenPlacement::Header(t) = &token {
            let v = format!("Bearer {t}").parse().map_err(|_| Error::InvalidUrl {
                url: url.to_string(),
                reason: "token is not a valid header value".into(),
            })?;
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        // Small buffers: presence messages are small, and tungstenite's
        // defaults (128 KiB to read, 128 KiB to write) cost an app that holds
        // many sessions (a bot, a gateway, a load test) 256 KiB each. A larger
        // message grows the read buffer as it needs.
        let config =
            WebSocketConfig::default().max_message_size(Some(1 << 20)).read_buffer_size(4096).write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(config), true).await.map_err(|e| match e {
                WsError::Http(res) => {
                    let status = res.status().as_u16();
                    Error::from_body(status, res.body().as_deref().unwrap_or_default())
                }
                other => Error::WebSocket(other.to_string()),
            })?;
        let mut conn = Self { ws, unbatched: std::collections::VecDeque::new() };
        if let TokenPlacement::Message(t) = token {
            conn.send(&ClientMessage::Auth { token: t, device: None }).await?;
        }
        Ok(conn)
    }

    /// Sends a protocol message.
    pub async fn send(&mut self, m: &ClientMessage) -> Result<(), Error> {
        self.send_raw(Message::Text(m.to_json().into())).await
    }

    /// Sends any frame (tests use it to send what a protocol message cannot express).
    pub async fn send_raw(&mut self, m: Message) -> Result<(), Error> {
        self.ws.send(m).await.map_err(|e| Error::WebSocket(e.to_string()))
    }

    /// The next frame; `None` once the connection is gone. Pings are answered
    /// by tungstenite and not reported; a `statuses` batch comes out as its
    /// `status` messages, one per call.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(m) = self.unbatched.pop_front() {
                return Some(Frame::Message(m));
            }
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    return Some(match serde_json::from_str(&t) {
                        Ok(ServerMessage::Statuses { statuses }) => {
                            self.unbatched.extend(statuses);
                            continue;
                        }
                        Ok(m) => Frame::Message(m),
                        Err(_) => Frame::Unparsed(t.to_string()),
                    })
                }
                Ok(Message::Close(c)) => {
                    return Some(match c {
                        Some(f) => Frame::Closed { code: f.code.into(), reason: f.reason.to_string() },
                        None => Frame::Closed { code: 1005, reason: String::new() },
                    })
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<Frame>, Error> {
        tokio::time::timeout(timeout, self.next()).await.map_err(|_| Error::Timeout)
    }

    /// Closes the connection normally.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server's close reply so the close is clean on both sides.
        let _ = tokio::time::timeout(Duration::from_secs(1), async { while self.ws.next().await.is_some() {} }).await;
    }
}
