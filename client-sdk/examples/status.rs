//! Asks the server API where users connect and whether they are online: an
//! app backend's view, from the coordinator's admin listener (the demo's is
//! on 8081; give the key in `ADMIN_API_KEY` when the coordinator has one).
//!
//! ```sh
//! cargo run -p presence-client --example status -- http://127.0.0.1:8081 alice bob
//! ```

use presence_client::CoordinatorClient;

#[tokio::main]
async fn main() -> Result<(), presence_client::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, coordinator, users @ ..] = args.as_slice() else {
        eprintln!("usage: status <coordinator-admin-url> <user> [user ...]");
        std::process::exit(2);
    };
    let mut api = CoordinatorClient::new(coordinator)?;
    if let Ok(key) = std::env::var("ADMIN_API_KEY") {
        api = api.with_api_key(&key)?;
    }
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    for (p, id) in api.status(&ids).await?.into_iter().zip(&ids) {
        let route = api.route(id).await?;
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
