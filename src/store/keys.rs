//! The key layout of the store, in one place.
//!
//! Keys are ASCII and readable in a dump. Anything that comes from outside
//! (a uid, a container id, a node name) is escaped so it can never contain
//! the separator `/` or reach into another object's prefix.

use ipnet::IpNet;
use std::net::IpAddr;

/// Prefix of IP pools: `pool/<cidr>`.
pub const POOLS: &str = "pool/";
/// Prefix of address blocks: `block/<cidr>`.
pub const BLOCKS: &str = "block/";
/// Prefix of handles (allocations by uid): `handle/<uid>`.
pub const HANDLES: &str = "handle/";
/// Prefix of the index of node-affine blocks that still have free addresses:
/// `blockfree/<node>/<v4|v6>/<cidr>`.
pub const FREE_BLOCKS: &str = "blockfree/";
/// Prefix of endpoints: `endpoint/<node>/<container id>`.
pub const ENDPOINTS: &str = "endpoint/";
/// Prefix of profiles: `profile/<name>`.
pub const PROFILES: &str = "profile/";
/// Prefix of nodes: `node/<name>`.
pub const NODES: &str = "node/";
/// Prefix of node liveness keys (`alive/<node>`), kept by a lease.
pub const ALIVE: &str = "alive/";
/// Prefix of each node's reconcile-loop status (`loop/<node>`).
pub const LOOPS: &str = "loop/";

/// Key of a node's reconcile-loop status.
pub fn loop_status(node: &str) -> String {
    format!("{LOOPS}{}", escape(node))
}

/// Escape outside text for use as one key segment: bytes outside
/// `[A-Za-z0-9._:-]` become `%XX`.
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A CIDR as one key segment: `198.18.0.0/26` → `198.18.0.0-26`.
pub fn cidr_segment(net: &IpNet) -> String {
    format!("{}-{}", net.network(), net.prefix_len())
}

/// Key of the pool with this CIDR.
pub fn pool(cidr: &IpNet) -> String {
    format!("{POOLS}{}", cidr_segment(cidr))
}

/// Key of the block with this CIDR.
pub fn block(cidr: &IpNet) -> String {
    format!("{BLOCKS}{}", cidr_segment(cidr))
}

/// Key of a handle.
pub fn handle(uid: &str) -> String {
    format!("{HANDLES}{}", escape(uid))
}

/// `v4` or `v6`, the family segment of index keys.
pub fn family(addr_is_v4: bool) -> &'static str {
    if addr_is_v4 {
        "v4"
    } else {
        "v6"
    }
}

/// Prefix of a node's blocks with free addresses of one family.
pub fn free_blocks_of(node: &str, v4: bool) -> String {
    format!("{FREE_BLOCKS}{}/{}/", escape(node), family(v4))
}

/// Index key saying "this node-affine block has free addresses".
pub fn free_block(node: &str, cidr: &IpNet) -> String {
    format!(
        "{}{}",
        free_blocks_of(node, matches!(cidr, IpNet::V4(_))),
        cidr_segment(cidr)
    )
}

/// Key of an endpoint.
pub fn endpoint(node: &str, container_id: &str) -> String {
    format!("{}{}", endpoints_of(node), escape(container_id))
}

/// Prefix of one node's endpoints.
pub fn endpoints_of(node: &str) -> String {
    format!("{ENDPOINTS}{}/", escape(node))
}

/// Key of a profile.
pub fn profile(name: &str) -> String {
    format!("{PROFILES}{}", escape(name))
}

/// Key of a node.
pub fn node(name: &str) -> String {
    format!("{NODES}{}", escape(name))
}

/// Key of a node's liveness, present while its daemon renews its lease.
pub fn alive(name: &str) -> String {
    format!("{ALIVE}{}", escape(name))
}

/// The exclusive upper bound of a prefix range (`prefix` with its last byte
/// incremented); keys are ASCII so this never overflows a byte.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).expect("keys are ASCII");
        }
    }
    // An empty (or all-0x7f) prefix covers everything.
    "\u{7f}".repeat(prefix.len() + 1)
}

/// True when `addr` has the family of `net`.
pub fn same_family(net: &IpNet, addr: &IpAddr) -> bool {
    matches!(
        (net, addr),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_safe_text_and_hides_separators() {
        assert_eq!(escape("agent-1.example:5051"), "agent-1.example:5051");
        assert_eq!(escape("a/b c"), "a%2Fb%20c");
        assert_eq!(escape("%"), "%25");
    }

    #[test]
    fn prefix_end_is_the_next_key_range() {
        assert_eq!(prefix_end("block/"), "block0");
        assert!("block/zzz" < prefix_end("block/").as_str());
        assert!("blockfree/" > prefix_end("block/").as_str());
    }

    #[test]
    fn keys_are_readable() {
        let net: IpNet = "198.18.0.64/26".parse().unwrap();
        assert_eq!(block(&net), "block/198.18.0.64-26");
        assert_eq!(
            free_block("node-1", &net),
            "blockfree/node-1/v4/198.18.0.64-26"
        );
        assert_eq!(endpoint("n", "c/1"), "endpoint/n/c%2F1");
    }
}
