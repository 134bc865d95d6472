//! Looks up where users connect and whether they are online.
//!
//! ```sh
//! cargo run -p presence-client --example status -- http://127.0.0.1:8080 alice bob
//! ```

use presence_client::Client;

#[tokio::main]
async fn main() -> Result<(), presence_client::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, coordinator, users @ ..] = args.as_slice() else {
        eprintln!("usage: status <coordinator-url> <user> [user ...]");
        std::process::exit(2);
    };
    let client = Client::new(coordinator)?;
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    for (p, id) in client.status(&ids).await?.into_iter().zip(&ids) {
        let route = client.route(id).await?;
        println!(
            "{id}: {} with {} connection(s), last seen {:?}; vnode {} on {}",
            if p.online { "online" } else { "offline" },
            p.connections,
            p.last_seen,
            route.vnode,
            route.node_id.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
