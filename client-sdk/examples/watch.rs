//! Connects as a user and prints its connection count and the status of the
//! users it follows, reconnecting through handoffs and restarts.
//!
//! Against `presence demo` (which prints a token for alice):
//!
//! ```sh
//! cargo run -p presence-client --example watch -- http://127.0.0.1:8080 alice "$TOKEN" bob carol
//! ```

use presence_client::PresenceView;
use presence_client::{Client, ConnectOptions, Event, TokenSource};

#[tokio::main]
async fn main() -> Result<(), presence_client::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, coordinator, user, token, follow @ ..] = args.as_slice() else {
        eprintln!("usage: watch <coordinator-url> <user> <token> [user-to-follow ...]");
        std::process::exit(2);
    };
    let client = Client::new(coordinator)?;
    let mut session = client.connect(user, ConnectOptions::new(TokenSource::fixed(token.clone()))).await?;
    let follow: Vec<&str> = follow.iter().map(String::as_str).collect();
    if !follow.is_empty() {
        session.subscribe(&follow).await?;
    }
    while let Some(event) = session.next_event().await {
        match event {
            Event::Welcome { node_id, connections, .. } => {
                println!("connected to {node_id}; {user} has {connections} connection(s)")
            }
            Event::Count { connections } => println!("{user} has {connections} connection(s)"),
            Event::Status(PresenceView { user_id, online, connections, .. }) => {
                println!("{user_id} is {} ({connections})", if online { "online" } else { "offline" })
            }
            Event::Reconnecting { reason, delay, .. } => println!("reconnecting in {delay:?}: {reason:?}"),
            Event::Error { code, message } => eprintln!("error {code}: {message}"),
        }
    }
    Ok(())
}
