//! Which container a process is in: its id from the cgroup path, and its name where the
//! runtime leaves it on disk. Never from a process's environment (anyone can set a variable).
//!
//! Recognised cgroup leaves (cgroup v2 or the first v1 hierarchy, as /proc/PID/cgroup shows):
//! - `docker-<64 hex>.scope` (Docker, systemd driver), `/docker/<64 hex>` (cgroupfs driver)
//! - `cri-containerd-<64 hex>.scope`, `crio-<64 hex>.scope`, `libpod-<64 hex>.scope`
//!   (containerd, CRI-O, Podman under systemd)
//! - `/kubepods/<qos>/pod<uid>/<64 hex>` (Kubernetes, cgroupfs driver: runtime unknown)
//!
//! Names: Docker's `<docker_dir>/containers/<id>/config.v2.json` has `"Name": "/web-1"`.
//! Read once per container (cached, at most [`MAX_CACHED`] containers), at most
//! [`MAX_CONFIG_BYTES`]; an unreadable or unparsable file leaves the name unknown.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

/// A container, as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    /// `docker`, `containerd`, `cri-o`, `podman`, or `kubepods` (runtime unknown).
    pub runtime: &'static str,
    /// The full id (64 lower-case hex).
    pub id: String,
}

impl ContainerId {
    /// The 12-character id `docker ps` shows.
    pub fn short(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// `runtime://id`, the form Kubernetes reports (`containerID` of a pod's status).
    pub fn uri(&self) -> String {
        format!("{}://{}", self.runtime, self.id)
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container of a cgroup path, if it is one (module comment).
pub fn from_cgroup(path: &str) -> Option<ContainerId> {
    const SCOPES: [(&str, &str); 4] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The innermost container wins (a process of a nested container).
    for (i, seg) in segments.iter().enumerate().rev() {
        if let Some(unit) = seg.strip_suffix(".scope") {
            for (prefix, runtime) in SCOPES {
                if let Some(id) = unit.strip_prefix(prefix).filter(|id| is_id(id)) {
                    return Some(ContainerId {
                        runtime,
                        id: id.to_string(),
                    });
                }
            }
        }
        if is_id(seg) && i > 0 {
            let runtime = if segments[0] == "docker" {
                "docker"
            } else if segments[0].starts_with("kubepods") {
                "kubepods"
            } else {
                continue;
            };
            return Some(ContainerId {
                runtime,
                id: seg.to_string(),
            });
        }
    }
    None
}

/// Most containers whose names are kept.
pub const MAX_CACHED: usize = 16_384;
/// Largest `config.v2.json` read (they are a few KiB; a larger one is not a container's).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Container names from the runtimes' state on disk, cached by id.
pub struct ContainerNames {
    docker_dir: PathBuf,
    cache: HashMap<String, Option<String>>,
}

impl ContainerNames {
    pub fn new(docker_dir: PathBuf) -> ContainerNames {
        ContainerNames {
            docker_dir,
            cache: HashMap::new(),
        }
    }

    /// The container's name, where its runtime keeps one on disk.
    pub fn name(&mut self, c: &ContainerId) -> Option<String> {
        if let Some(known) = self.cache.get(&c.id) {
            return known.clone();
        }
        let name = match c.runtime {
            "docker" => self.docker_name(&c.id),
            _ => None,
        };
        // Not cached while unknown: the file appears just after the container's first
        // process (runc starts it before dockerd writes the final config).
        if name.is_some() {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(c.id.clone(), name.clone());
        }
        name
    }

    fn docker_name(&self, id: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(rename = "Name")]
            name: Option<String>,
        }
        let path = self
            .docker_dir
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let mut text = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(MAX_CONFIG_BYTES)
            .read_to_end(&mut text)
            .ok()?;
        let config: Config = serde_json::from_slice(&text).ok()?;
        let name = config.name?;
        let name = name.trim_start_matches('/');
        (!name.is_empty()).then(|| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8c1d2b7a9e6f5c4d3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";

    #[test]
    fn container_ids_from_cgroup_paths() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Some("docker")),
            (format!("/docker/{ID}"), Some("docker")),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
            (format!("/machine.slice/libpod-{ID}.scope"), Some("podman")),
            (
                format!("/kubepods/burstable/pod1234/{ID}"),
                Some("kubepods"),
            ),
            (format!("/test-x/docker-{ID}.scope"), Some("docker")),
            ("/system.slice/nginx.service".to_string(), None),
            (format!("/user.slice/{ID}"), None),
            // Not 64 lower-case hex.
            (format!("/docker/{}", &ID[..63]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
        ];
        for (path, runtime) in cases {
            let got = from_cgroup(&path);
            assert_eq!(got.as_ref().map(|c| c.runtime), runtime, "{path}");
            if let Some(c) = got {
                assert_eq!(c.id, ID);
                assert_eq!(c.short(), &ID[..12]);
                assert_eq!(c.uri(), format!("{}://{ID}", c.runtime));
            }
        }
    }

    #[test]
    fn docker_names_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("depmap-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let at = dir.join("containers").join(ID);
        std::fs::create_dir_all(&at).unwrap();
        let c = from_cgroup(&format!("/docker/{ID}")).unwrap();
        let mut names = ContainerNames::new(dir.clone());
        // No file yet: unknown, and asked again later.
        assert_eq!(names.name(&c), None);
        std::fs::write(
            at.join("config.v2.json"),
            br#"{"ID":"x","Name":"/web-1","Config":{}}"#,
        )
        .unwrap();
        assert_eq!(names.name(&c).as_deref(), Some("web-1"));
        // Garbage is no name, never a panic.
        std::fs::write(at.join("config.v2.json"), b"\xff\xfe{").unwrap();
        let mut fresh = ContainerNames::new(dir.clone());
        assert_eq!(fresh.name(&c), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
