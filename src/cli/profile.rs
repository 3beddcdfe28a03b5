//! `calico-mesos profile list|show`: the profiles in the store, their rules
//! in words, and the endpoints (any node) that have them.

use super::ipam::Output;
use calico_mesos::endpoint::Endpoint;
use calico_mesos::policy::{self, profiles, Profile, ProfileKind};
use calico_mesos::store::Store;
use reconcilers::policy::Rule;
use serde::Serialize;

/// Profile commands.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// List profiles: name, kind (netgroup, public, host), rules and how
    /// many endpoints have each.
    List {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one profile's rules and its member endpoints.
    Show {
        /// The profile's name: a netgroup, `public`, or `host:<node>`.
        name: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// One row of `profile list`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    kind: ProfileKind,
    inbound: Vec<Rule>,
    outbound: Vec<Rule>,
    members: usize,
}

/// A member endpoint in `profile show`.
#[derive(Debug, Serialize)]
struct Member {
    node: String,
    container_id: String,
    ipv4: Vec<String>,
    ipv6: Vec<String>,
}

/// Run a profile command.
pub fn run(store: &dyn Store, command: ProfileCommand) -> anyhow::Result<()> {
    // Endpoints being deleted have no policy any more: they are no members.
    let endpoints: Vec<Endpoint> = policy::all_endpoints(store)?
        .into_iter()
        .filter(|e| !e.deletion_requested)
        .collect();
    let members = |name: &str| -> Vec<&Endpoint> {
        endpoints
            .iter()
            .filter(|e| profiles::is_member(e, name))
            .collect()
    };
    match command {
        ProfileCommand::List { output } => {
            let rows: Vec<Row> = profiles::list(store)?
                .into_iter()
                .map(|p| Row {
                    kind: p.kind(),
                    members: members(&p.name).len(),
                    name: p.name,
                    inbound: p.rules.inbound,
                    outbound: p.rules.outbound,
                })
                .collect();
            print_list(&rows, output)
        }
        ProfileCommand::Show { name, output } => {
            let Some(profile) = profiles::get(store, &name)? else {
                anyhow::bail!(
                    "no profile named '{name}' (`calico-mesos profile list` shows every profile)"
                );
            };
            let members: Vec<Member> = members(&name)
                .into_iter()
                .map(|e| Member {
                    node: e.node.clone(),
                    container_id: e.container_id.clone(),
                    ipv4: e.ipv4.iter().map(ToString::to_string).collect(),
                    ipv6: e.ipv6.iter().map(ToString::to_string).collect(),
                })
                .collect();
            print_show(&profile, &members, output)
        }
    }
}

fn print_list(rows: &[Row], output: Output) -> anyhow::Result<()> {
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let short = |rules: &[Rule]| -> String {
        if rules.is_empty() {
            return "none".into();
        }
        rules.iter().map(rule_text).collect::<Vec<_>>().join(",")
    };
    println!(
        "{:<24} {:<9} {:<40} {:<40} {:>7}",
        "NAME", "KIND", "INBOUND", "OUTBOUND", "MEMBERS"
    );
    for r in rows {
        println!(
            "{:<24} {:<9} {:<40} {:<40} {:>7}",
            r.name,
            r.kind.to_string(),
            short(&r.inbound),
            short(&r.outbound),
            r.members
        );
    }
    Ok(())
}

fn print_show(profile: &Profile, members: &[Member], output: Output) -> anyhow::Result<()> {
    if let Output::Json = output {
        let doc = serde_json::json!({
            "name": profile.name,
            "kind": profile.kind(),
            "rules": profile.rules,
            "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("profile {} ({})", profile.name, profile.kind());
    for (direction, rules, word) in [
        ("inbound", &profile.rules.inbound, "from"),
        ("outbound", &profile.rules.outbound, "to"),
    ] {
        if rules.is_empty() {
            println!("{direction}: nothing allowed");
        }
        for rule in rules {
            println!("{direction}: {}", allow_text(rule, word));
        }
    }
    println!("members: {}", members.len());
    if members.is_empty() {
        return Ok(());
    }
    println!("{:<24} {:<38} ADDRESSES", "NODE", "CONTAINER");
    for m in members {
        let addrs: Vec<&str> = m.ipv4.iter().chain(&m.ipv6).map(String::as_str).collect();
        println!("{:<24} {:<38} {}", m.node, m.container_id, addrs.join(","));
    }
    Ok(())
}

/// A rule in a table cell: `all`, `netgroup web`, `198.19.0.1/32`.
fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::All => "all".into(),
        Rule::Netgroup(n) => format!("netgroup {n}"),
        Rule::Cidr(net) => net.to_string(),
    }
}

/// A rule in words: `allow all`, `allow from netgroup web`,
/// `allow to 198.19.0.1/32`.
fn allow_text(rule: &Rule, word: &str) -> String {
    match rule {
        Rule::All => "allow all".into(),
        other => format!("allow {word} {}", rule_text(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_words() {
        let cidr = Rule::Cidr("198.19.0.1/32".parse().unwrap());
        let web = Rule::Netgroup("web".into());
        for (rule, word, want) in [
            (&Rule::All, "from", "allow all"),
            (&web, "from", "allow from netgroup web"),
            (&cidr, "to", "allow to 198.19.0.1/32"),
        ] {
            assert_eq!(allow_text(rule, word), want);
        }
        assert_eq!(rule_text(&web), "netgroup web");
    }
}
