//! VMComputer and VMProcess: turning host facts and process pools into inventory records.
//!
//! Emitted at start, every `inventory_interval`, and for a pool as soon as it is first seen.
//! Package data (ProductName/ProductVersion, Group) comes from the distribution's package
//! database for the pool's executable; `Role` is inferred from well-known executables and
//! listening ports. [`Inventory`] owns what those records are made from besides the pools:
//! the package database, the boot clock and the Azure instance metadata (asked at start
//! where it can answer, and again at an inventory pass, a minute apart at most, until it
//! does).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::collect::containers::{self, ContainerNames};
use crate::collect::host::HostFacts;
use crate::collect::imds::{self, Compute, non_empty};
use crate::collect::packages::PackageDb;
use crate::collect::sources::Availability;
use crate::config::{AzureMetadata, EnrichConfig};
use crate::identity::Identity;
use crate::records::{Origin, Record, VmComputer, VmProcess, datetime};
use crate::track::pools::Pool;

/// The sources of the inventory records (see the module comment).
pub struct Inventory {
    packages: PackageDb,
    containers: ContainerNames,
    clock: Clock,
    /// Azure instance metadata, once it answered; whether to ask it (again); when it was.
    azure: Option<Compute>,
    ask_imds: bool,
    imds_asked: Instant,
    imds_endpoint: String,
    /// What IMDS said at start, or why it was not asked or did not answer (the report).
    pub azure_metadata: Availability,
}

impl Inventory {
    /// Reads the boot clock and asks IMDS where it can answer (`enrich.azure_metadata`);
    /// an answer's ResourceId goes into `identity`.
    pub fn start(config: &EnrichConfig, facts: &HostFacts, identity: &mut Identity) -> Inventory {
        // Azure metadata only where it can answer (see collect::imds).
        let ask_imds = match config.azure_metadata {
            AzureMetadata::Never => false,
            AzureMetadata::Always => true,
            AzureMetadata::Auto => imds::is_azure_vm(facts.dmi_chassis_asset_tag.as_deref()),
        };
        let mut inv = Inventory {
            packages: PackageDb::new(),
            containers: ContainerNames::new(config.docker_dir.clone()),
            clock: Clock::read(facts),
            azure: None,
            ask_imds,
            imds_asked: Instant::now(),
            imds_endpoint: config.imds_endpoint.clone(),
            azure_metadata: Availability::Unavailable(match config.azure_metadata {
                AzureMetadata::Never => "not queried (enrich.azure_metadata = \"never\")".into(),
                _ => "not queried: not an Azure VM (DMI chassis asset tag)".into(),
            }),
        };
        if ask_imds {
            inv.azure_metadata = match inv.query_imds(identity) {
                Ok(c) => {
                    Availability::Available(format!("{} in {} ({})", c.name, c.location, c.vm_size))
                }
                Err(e) => Availability::Unavailable(format!(
                    "no answer ({e}); asked again at each inventory"
                )),
            };
        }
        inv
    }

    /// Asks IMDS (at start, and at an inventory pass after it did not answer); keeps the
    /// answer and its ResourceId.
    fn query_imds(&mut self, identity: &mut Identity) -> Result<&Compute, imds::ImdsError> {
        self.imds_asked = Instant::now();
        match imds::query(&self.imds_endpoint) {
            Ok(c) => {
                if !c.resource_id.is_empty() {
                    identity.resource_id = c.resource_id.clone();
                }
                Ok(self.azure.insert(c))
            }
            Err(e) => {
                tracing::warn!(error = %e, endpoint = %self.imds_endpoint, "Azure Instance Metadata did not answer; asked again at the next inventory");
                Err(e)
            }
        }
    }

    /// The VMComputer record now (asking IMDS again first when it has not answered yet).
    pub fn computer(&mut self, identity: &mut Identity, now: SystemTime) -> Record {
        if self.azure.is_none()
            && self.ask_imds
            && self.imds_asked.elapsed() >= Duration::from_secs(60)
        {
            let _ = self.query_imds(identity);
        }
        computer_record(identity, &HostFacts::read(), self.azure.as_ref(), now)
    }

    /// The VMProcess record of one pool.
    pub fn process(
        &mut self,
        identity: &Identity,
        pool: &Pool,
        listening_ports: &[u16],
        now: SystemTime,
    ) -> Record {
        process_record(
            identity,
            pool,
            &mut self.packages,
            &mut self.containers,
            &self.clock,
            listening_ports,
            now,
        )
    }
}

/// The agent version reported in `DependencyAgentVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `Computer`: configured, else FQDN, else hostname.
pub fn computer_name(configured: &str, facts: &HostFacts) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    facts
        .fqdn
        .clone()
        .or_else(|| facts.host_name.clone())
        .unwrap_or_else(|| "localhost".to_string())
}

pub fn computer_record(
    id: &Identity,
    facts: &HostFacts,
    azure: Option<&Compute>,
    now: SystemTime,
) -> Record {
    let az = |f: fn(&Compute) -> &str| azure.and_then(|c| non_empty(f(c)));
    let ms = |v: i64| datetime(UNIX_EPOCH + Duration::from_millis(v.max(0) as u64));
    let host = facts
        .host_name
        .clone()
        .unwrap_or_else(|| id.computer.clone());
    Record::Computer(Box::new(VmComputer {
        origin: Origin::new(id, datetime(now)),
        boot_time: facts.boot_time_ms.map(ms),
        cpus: facts.cpus,
        cpu_speed: facts.cpu_mhz,
        dependency_agent_version: VERSION.to_string(),
        display_name: host.clone(),
        dns_names: facts.dns_names.clone(),
        full_display_name: facts.fqdn.clone().unwrap_or(host),
        host_name: facts.host_name.clone(),
        hypervisor_type: facts.hypervisor_type.clone(),
        ipv4_addresses: facts.ipv4_addresses.clone(),
        ipv4_default_gateways: facts.ipv4_default_gateways.clone(),
        ipv4_subnet_masks: facts.ipv4_subnet_masks.clone(),
        ipv6_addresses: facts.ipv6_addresses.clone(),
        mac_addresses: facts.mac_addresses.clone(),
        operating_system_family: "linux".to_string(),
        operating_system_full_name: facts.os_full_name.clone(),
        physical_memory_mb: facts.physical_memory_mb,
        time_zone: facts.time_zone.clone(),
        virtualization_state: facts.virtualization_state.clone(),
        virtual_machine_native_id: facts.virtual_machine_native_id.clone(),
        virtual_machine_native_name: facts.virtual_machine_native_name.clone(),
        virtual_machine_type: facts.virtual_machine_type.clone(),
        hosting_provider: azure.map(|_| "azure".to_string()),
        azure_fault_domain: az(|c| &c.platform_fault_domain),
        azure_image_offering: az(|c| &c.offer),
        azure_image_publisher: az(|c| &c.publisher),
        azure_image_sku: az(|c| &c.sku),
        azure_image_version: az(|c| &c.version),
        azure_location: az(|c| &c.location),
        azure_resource_group: az(|c| &c.resource_group_name),
        azure_resource_name: az(|c| &c.name),
        azure_size: az(|c| &c.vm_size),
        azure_subscription_id: az(|c| &c.subscription_id),
        azure_update_domain: az(|c| &c.platform_update_domain),
        azure_vm_id: az(|c| &c.vm_id),
        azure_vm_scale_set_name: az(|c| &c.vm_scale_set_name),
        azure_vm_scale_set_resource_id: az(|c| &c.virtual_machine_scale_set.id),
        ..Default::default()
    }))
}

/// Clock facts needed to turn /proc start ticks into a time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub boot_time_ms: i64,
    pub ticks_per_second: u64,
}

impl Clock {
    pub fn read(facts: &HostFacts) -> Clock {
        use nix::unistd::{SysconfVar, sysconf};
        let hz = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(0);
        Clock {
            boot_time_ms: facts.boot_time_ms.unwrap_or(0),
            ticks_per_second: if hz > 0 { hz as u64 } else { 100 },
        }
    }

    pub fn start_time(&self, ticks: u64) -> SystemTime {
        let ms = self.boot_time_ms.max(0) as u64 + ticks * 1000 / self.ticks_per_second;
        UNIX_EPOCH + Duration::from_millis(ms)
    }
}

/// The systemd unit of a cgroup path (`/system.slice/nginx.service` → `nginx.service`).
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .rsplit('/')
        .find(|seg| seg.ends_with(".service"))
        .map(str::to_string)
}

/// `Role` from the executable name, else from the listening ports.
pub fn infer_role(executable: &str, listening_ports: &[u16]) -> Option<&'static str> {
    let exe = executable.to_ascii_lowercase();
    let by_name: &[(&[&str], &str)] = &[
        (
            &[
                "nginx", "apache2", "httpd", "caddy", "lighttpd", "haproxy", "envoy", "traefik",
            ],
            "webServer",
        ),
        (
            &[
                "postgres",
                "mysqld",
                "mariadbd",
                "mongod",
                "redis-server",
                "clickhouse-server",
                "memcached",
                "cassandra",
                "influxd",
                "etcd",
            ],
            "databaseServer",
        ),
        (&["slapd"], "ldapServer"),
        (&["smbd"], "smbServer"),
        (
            &["php-fpm", "gunicorn", "uwsgi", "puma", "unicorn", "tomcat"],
            "appServer",
        ),
    ];
    for (names, role) in by_name {
        if names.iter().any(|n| exe.starts_with(n)) {
            return Some(role);
        }
    }
    for port in listening_ports {
        let role = match port {
            80 | 443 | 8080 | 8443 => "webServer",
            5432 | 3306 | 1433 | 1521 | 27017 | 6379 | 9042 | 11211 => "databaseServer",
            389 | 636 => "ldapServer",
            139 | 445 => "smbServer",
            _ => continue,
        };
        return Some(role);
    }
    None
}

/// The VMProcess record of one pool.
pub fn process_record(
    id: &Identity,
    pool: &Pool,
    packages: &mut PackageDb,
    names: &mut ContainerNames,
    clock: &Clock,
    listening_ports: &[u16],
    now: SystemTime,
) -> Record {
    let container = pool.cgroup.as_deref().and_then(containers::from_cgroup);
    // A container's executable path is in the container's file system: the host's package
    // database does not describe it.
    let package = pool
        .executable_path
        .as_deref()
        .filter(|_| container.is_none())
        .and_then(|p| packages.lookup(p));
    let unit = pool.cgroup.as_deref().and_then(systemd_unit);
    // In a container: Group is the container (its name, else its short id) and Services its
    // full id as `runtime://id` (README "Containers").
    let (group, services) = match &container {
        Some(c) => (
            Some(names.name(c).unwrap_or_else(|| c.short().to_string())),
            Some(vec![c.uri()]),
        ),
        None => (
            package
                .as_ref()
                .map(|p| p.name.clone())
                .or_else(|| unit.clone()),
            unit.map(|u| vec![u]),
        ),
    };
    let oldest = pool.oldest();
    Record::Process(Box::new(VmProcess {
        origin: Origin {
            resource_id: format!("{}/processes/{}", id.resource_id, pool.id),
            ..Origin::new(id, datetime(now))
        },
        command_line: pool.command_line.clone(),
        display_name: pool.executable_name.clone(),
        executable_name: pool.executable_name.clone(),
        executable_path: pool.executable_path.clone(),
        first_pid: oldest.map(|(_, pid)| pid as i32),
        group,
        process: pool.id.to_string(),
        product_name: package.as_ref().map(|p| p.name.clone()),
        product_version: package.as_ref().map(|p| p.version.clone()),
        role: infer_role(&pool.executable_name, listening_ports).map(str::to_string),
        services,
        start_time: oldest.map(|(ticks, _)| datetime(clock.start_time(ticks))),
        user_name: pool.user_name.clone(),
        working_directory: pool.working_directory.clone(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_units() {
        assert_eq!(infer_role("nginx", &[]), Some("webServer"));
        assert_eq!(infer_role("postgres", &[]), Some("databaseServer"));
        assert_eq!(infer_role("myapp", &[5432]), Some("databaseServer"));
        assert_eq!(infer_role("myapp", &[12345]), None);
        assert_eq!(
            systemd_unit("/system.slice/nginx.service"),
            Some("nginx.service".into())
        );
        assert_eq!(
            systemd_unit("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn start_time_from_ticks() {
        let c = Clock {
            boot_time_ms: 1_000_000,
            ticks_per_second: 100,
        };
        assert_eq!(
            c.start_time(250),
            UNIX_EPOCH + Duration::from_millis(1_002_500)
        );
    }
}
