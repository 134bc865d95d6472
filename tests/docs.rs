//! The configuration reference in docs/operations.md covers every flag of both binaries.

use clap::CommandFactory;

fn env_vars(cmd: clap::Command) -> Vec<String> {
    cmd.get_arguments().filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())).collect()
}

#[test]
fn every_setting_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let mut vars = env_vars(presence_coordinator::args::Args::command());
    vars.extend(env_vars(presence_ws_node::args::Args::command()));
    assert!(vars.len() > 20);
    let missing: Vec<&String> = vars.iter().filter(|v| !doc.contains(&format!("`{v}`"))).collect();
    assert!(missing.is_empty(), "docs/operations.md does not document {missing:?}");
}
