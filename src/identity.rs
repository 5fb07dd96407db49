//! Identifiers of SPEC §4: AgentId, Machine, and the `p-`/`c-`/`b-` ids, which are SHA-1 over
//! the fields that define the thing, so they are stable across restarts and windows.

use std::fs;
use std::path::Path;

use sha1::{Digest, Sha1};
use uuid::Uuid;

/// depmap's UUIDv5 namespace for AgentId derivation from /etc/machine-id.
pub const AGENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_3c3e_8a47_4f0e_9b9b_2c5d_0d3e_7a11);

/// The machine's identity, fixed for the life of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent_id: String,
    pub machine: String,
    pub computer: String,
    /// `_ResourceId` of the machine: the Azure resource id when known, else `Machine`.
    pub resource_id: String,
}

impl Identity {
    pub fn new(agent_id: String, computer: String) -> Identity {
        let agent_id = agent_id.to_ascii_lowercase();
        let machine = format!("m-{agent_id}");
        Identity {
            resource_id: machine.clone(),
            agent_id,
            machine,
            computer,
        }
    }
}

/// AgentId: configured, else UUIDv5 of /etc/machine-id, else a random UUID persisted in
/// `state_dir/agent-id` (created on first use).
pub fn agent_id(configured: &str, machine_id_file: &Path, state_dir: &Path) -> String {
    if let Some(id) = known_agent_id(configured, machine_id_file, state_dir) {
        return id;
    }
    let file = state_dir.join("agent-id");
    let id = Uuid::new_v4().to_string();
    if fs::create_dir_all(state_dir).is_ok() {
        let tmp = state_dir.join("agent-id.tmp");
        if fs::write(&tmp, &id).is_ok() {
            let _ = fs::rename(&tmp, &file);
        }
    }
    id
}

/// The AgentId [`agent_id`] would give, when it needs no new random one (nothing is written).
pub fn known_agent_id(
    configured: &str,
    machine_id_file: &Path,
    state_dir: &Path,
) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_ascii_lowercase());
    }
    if let Ok(text) = fs::read_to_string(machine_id_file) {
        let id = text.trim();
        if !id.is_empty() {
            return Some(Uuid::new_v5(&AGENT_NAMESPACE, id.as_bytes()).to_string());
        }
    }
    let text = fs::read_to_string(state_dir.join("agent-id")).ok()?;
    Uuid::parse_str(text.trim()).ok().map(|id| id.to_string())
}

fn hashed(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    format!("{prefix}{}", hex::encode(h.finalize()))
}

/// `p-` id of a process pool: (Machine, ExecutablePath, CommandLine, UserName, cgroup).
pub fn process_id(machine: &str, exe: &str, cmdline: &str, user: &str, cgroup: &str) -> String {
    hashed("p-", &[machine, exe, cmdline, user, cgroup])
}

/// `c-` id of a VMConnection grouping key.
pub fn connection_id(
    direction: &str,
    machine: &str,
    process: &str,
    source_ip: &str,
    destination_ip: &str,
    destination_port: u16,
    protocol: &str,
) -> String {
    hashed(
        "c-",
        &[
            direction,
            machine,
            process,
            source_ip,
            destination_ip,
            &destination_port.to_string(),
            protocol,
        ],
    )
}

/// `b-` id of a bound port: (Machine, Process, Ip, Port, Protocol).
pub fn port_id(machine: &str, process: &str, ip: &str, port: u16, protocol: &str) -> String {
    hashed("b-", &[machine, process, ip, &port.to_string(), protocol])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_shaped() {
        let p = process_id("m-1", "/usr/bin/x", "x -d", "root", "/");
        assert_eq!(p, process_id("m-1", "/usr/bin/x", "x -d", "root", "/"));
        assert_eq!(p.len(), 42);
        assert!(
            p[2..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // Field boundaries matter: ("ab","c") != ("a","bc").
        assert_ne!(
            process_id("m", "ab", "c", "", ""),
            process_id("m", "a", "bc", "", "")
        );
        assert!(
            connection_id("inbound", "m", "p", "1.1.1.1", "2.2.2.2", 80, "tcp").starts_with("c-")
        );
        assert!(port_id("m", "p", "0.0.0.0", 80, "tcp").starts_with("b-"));
        assert_ne!(
            port_id("m", "p", "0.0.0.0", 53, "tcp"),
            port_id("m", "p", "0.0.0.0", 53, "udp")
        );
    }

    #[test]
    fn agent_id_from_machine_id_or_persisted() {
        let dir = std::env::temp_dir().join(format!("depmap-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mid = dir.join("machine-id");
        fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let a = agent_id("", &mid, &dir);
        assert_eq!(a, agent_id("", &mid, &dir));
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 5);
        let missing = dir.join("none");
        let r = agent_id("", &missing, &dir.join("state"));
        assert_eq!(r, agent_id("", &missing, &dir.join("state")));
        assert_eq!(agent_id("ABC", &mid, &dir), "abc");
        let _ = fs::remove_dir_all(&dir);
    }
}
