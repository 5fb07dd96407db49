//! Column lists of the four tables. Field order is column order (the shared `Origin` block
//! first); `Option` is `null`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

/// An address column: typed until it is serialised (as text: `10.0.0.1`, `::1`), so that
/// enrichment reads the address itself, not its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Ip(pub IpAddr);

impl Default for Ip {
    fn default() -> Ip {
        Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The columns every record has: which machine and agent wrote it, and when.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Origin {
    pub agent_id: String,
    pub computer: String,
    pub machine: String,
    #[serde(rename = "_ResourceId")]
    pub resource_id: String,
    pub source_system: &'static str,
    pub time_generated: String,
}

/// VMConnection: one logical connection over one window.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VmConnection {
    #[serde(flatten)]
    pub origin: Origin,
    /// Null where not measured (UDP without the event source's flow counters).
    pub bytes_received: Option<i64>,
    pub bytes_sent: Option<i64>,
    pub confidence: Option<String>,
    pub connection_id: String,
    pub description: Option<String>,
    pub destination_ip: Ip,
    pub destination_port: i32,
    pub direction: String,
    pub first_reported_date_time: Option<String>,
    pub indicator_threat_type: Option<String>,
    pub is_active: Option<String>,
    pub last_reported_date_time: Option<String>,
    pub links_established: i64,
    pub links_failed: Option<i64>,
    pub links_live: i64,
    pub links_terminated: i64,
    pub malicious_ip: Option<Ip>,
    pub process: Option<String>,
    pub process_name: Option<String>,
    pub protocol: String,
    pub remote_classification: Option<String>,
    pub remote_country: Option<String>,
    pub remote_dns_canonical_names: Option<String>,
    pub remote_dns_questions: Option<String>,
    pub remote_ip: Ip,
    pub remote_latitude: Option<f64>,
    pub remote_longitude: Option<f64>,
    pub responses: Option<i64>,
    pub response_time_max: Option<i64>,
    pub response_time_min: Option<i64>,
    pub response_time_sum: Option<i64>,
    pub severity: Option<i32>,
    pub source_ip: Ip,
    #[serde(rename = "TLPLevel")]
    pub tlp_level: Option<String>,
}

/// VMBoundPort: one bound port over one window.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VmBoundPort {
    #[serde(flatten)]
    pub origin: Origin,
    /// Null where not measured (UDP without the event source's flow counters).
    pub bytes_received: Option<i64>,
    pub bytes_sent: Option<i64>,
    pub ip: Ip,
    pub is_wildcard_bind: bool,
    pub links_established: i64,
    pub links_live: i64,
    pub links_terminated: i64,
    pub port: i32,
    pub port_id: String,
    pub process: Option<String>,
    pub process_name: Option<String>,
    pub protocol: String,
    pub responses: Option<i64>,
    pub response_time_max: Option<i64>,
    pub response_time_min: Option<i64>,
    pub response_time_sum: Option<i64>,
}

/// VMProcess: inventory of one process pool.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VmProcess {
    #[serde(flatten)]
    pub origin: Origin,
    pub command_line: String,
    pub company_name: Option<String>,
    pub description: Option<String>,
    pub display_name: String,
    pub executable_name: String,
    pub executable_path: Option<String>,
    pub file_version: Option<String>,
    pub first_pid: Option<i32>,
    pub group: Option<String>,
    pub internal_name: Option<String>,
    pub process: String,
    pub product_name: Option<String>,
    pub product_version: Option<String>,
    pub role: Option<String>,
    pub services: Option<Vec<String>>,
    pub start_time: Option<String>,
    pub user_domain: Option<String>,
    pub user_name: String,
    pub working_directory: Option<String>,
}

/// VMComputer: inventory of the machine.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct VmComputer {
    #[serde(flatten)]
    pub origin: Origin,
    pub azure_cloud_service_deployment: Option<String>,
    pub azure_cloud_service_instance_id: Option<String>,
    pub azure_cloud_service_name: Option<String>,
    pub azure_cloud_service_role_name: Option<String>,
    pub azure_cloud_service_role_type: Option<String>,
    pub azure_fault_domain: Option<String>,
    pub azure_image_offering: Option<String>,
    pub azure_image_publisher: Option<String>,
    pub azure_image_sku: Option<String>,
    pub azure_image_version: Option<String>,
    pub azure_location: Option<String>,
    pub azure_resource_group: Option<String>,
    pub azure_resource_name: Option<String>,
    pub azure_service_fabric_cluster_id: Option<String>,
    pub azure_service_fabric_cluster_name: Option<String>,
    pub azure_size: Option<String>,
    pub azure_subscription_id: Option<String>,
    pub azure_update_domain: Option<String>,
    pub azure_vm_id: Option<String>,
    pub azure_vm_scale_set_deployment: Option<String>,
    pub azure_vm_scale_set_instance_id: Option<String>,
    pub azure_vm_scale_set_name: Option<String>,
    pub azure_vm_scale_set_resource_id: Option<String>,
    pub boot_time: Option<String>,
    pub cpus: Option<i32>,
    pub cpu_speed: Option<i32>,
    pub dependency_agent_version: String,
    pub display_name: String,
    pub dns_names: Vec<String>,
    pub full_display_name: String,
    pub hosting_provider: Option<String>,
    pub host_name: Option<String>,
    pub hypervisor_id: Option<String>,
    pub hypervisor_type: Option<String>,
    pub ipv4_addresses: Vec<String>,
    pub ipv4_default_gateways: Vec<String>,
    pub ipv4_subnet_masks: Vec<String>,
    pub ipv6_addresses: Vec<String>,
    pub mac_addresses: Vec<String>,
    pub operating_system_family: String,
    pub operating_system_full_name: Option<String>,
    #[serde(rename = "PhysicalMemoryMB")]
    pub physical_memory_mb: Option<i64>,
    pub time_zone: Option<String>,
    pub virtualization_state: Option<String>,
    pub virtual_machine_hypervisor_id: Option<String>,
    pub virtual_machine_native_id: Option<String>,
    pub virtual_machine_native_name: Option<String>,
    pub virtual_machine_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &impl Serialize) -> Vec<String> {
        let s = serde_json::to_string(v).unwrap();
        // serde_json keeps struct field order; read keys in order from the text.
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&s).unwrap();
        let mut ks: Vec<(usize, String)> = map
            .keys()
            .map(|k| (s.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        ks.sort();
        ks.into_iter().map(|(_, k)| k).collect()
    }

    #[test]
    fn connection_columns_are_the_tables_columns() {
        // `Type` comes from the record (see `Record`), the rest from the struct.
        let k = keys(&crate::records::Record::Connection(Box::default()));
        assert_eq!(k.len(), 41);
        for c in [
            "AgentId",
            "ConnectionId",
            "IndicatorThreatType",
            "RemoteClassification",
            "RemoteDnsQuestions",
            "_ResourceId",
            "ResponseTimeSum",
            "TLPLevel",
            "Type",
            "LinksFailed",
        ] {
            assert!(k.contains(&c.to_string()), "{c}");
        }
        use crate::records::Record;
        assert_eq!(keys(&Record::BoundPort(Box::default())).len(), 23);
        assert_eq!(keys(&Record::Process(Box::default())).len(), 26);
        let computer = keys(&Record::Computer(Box::default()));
        assert_eq!(computer.len(), 55);
        assert!(
            computer.contains(&"AzureSize".to_string())
                && computer.contains(&"PhysicalMemoryMB".to_string())
        );
        assert!(computer.contains(&"AzureVmScaleSetInstanceId".to_string()));
    }
}
