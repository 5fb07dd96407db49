//! Azure Instance Metadata Service: `HostingProvider`, the `Azure*` columns of VMComputer and
//! `_ResourceId` (research/azure-tables.md §5).
//!
//! Asked only where it can answer: on an Azure VM, recognised locally first by the DMI chassis
//! asset tag Azure sets (`7783-7084-3265-9085-8269-3286-77`), or where `enrich.azure_metadata =
//! "always"`; with `"never"`, or on any other machine under `"auto"` (the default), depmap
//! sends nothing to that address. The request is `GET <endpoint>/metadata/instance?api-version=
//! 2021-02-01` with `Metadata: true`, never through a proxy, 2 s timeout; 410, 429, 5xx and
//! transport errors are retried (1 s, then 2 s), as the service asks, then left to the next
//! inventory pass.

use std::time::Duration;

use serde::Deserialize;

/// The tag Azure puts in the DMI chassis asset tag of its VMs.
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
const API_VERSION: &str = "2021-02-01";

/// The fields of `/metadata/instance` depmap reports (all strings, `""` when not applicable).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Compute {
    pub name: String,
    pub location: String,
    pub resource_group_name: String,
    pub subscription_id: String,
    pub vm_id: String,
    pub vm_size: String,
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
    pub platform_fault_domain: String,
    pub platform_update_domain: String,
    pub vm_scale_set_name: String,
    pub resource_id: String,
    pub virtual_machine_scale_set: ScaleSet,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScaleSet {
    pub id: String,
}

#[derive(Deserialize)]
struct Instance {
    compute: Compute,
}

/// Whether the DMI asset tag says this is an Azure VM.
pub fn is_azure_vm(asset_tag: Option<&str>) -> bool {
    asset_tag.is_some_and(|t| t.trim() == AZURE_ASSET_TAG)
}

/// Why the instance metadata gave nothing (after its retries).
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("{0}")]
    NoAnswer(crate::http_client::AnswerError),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("unreadable answer: {0}")]
    Unreadable(serde_json::Error),
}

/// Queries the instance metadata at `endpoint` (e.g. `http://169.254.169.254`).
pub fn query(endpoint: &str) -> Result<Compute, ImdsError> {
    let imds = crate::http_client::MetadataService::new(endpoint, Duration::from_secs(2));
    let path = format!("/metadata/instance?api-version={API_VERSION}");
    let mut last = ImdsError::Status(0);
    for wait in [
        Some(Duration::from_secs(1)),
        Some(Duration::from_secs(2)),
        None,
    ] {
        match imds.get(&path, 1 << 20) {
            Ok(a) if a.status == 200 => {
                return serde_json::from_str::<Instance>(&a.body)
                    .map(|i| i.compute)
                    .map_err(ImdsError::Unreadable);
            }
            Ok(a) => {
                last = ImdsError::Status(a.status);
                if !matches!(a.status, 410 | 429 | 500..=599) {
                    return Err(last);
                }
            }
            Err(e) => last = ImdsError::NoAnswer(e),
        }
        if let Some(w) = wait {
            std::thread::sleep(w);
        }
    }
    Err(last)
}

/// `Some(value)` for a non-empty string (IMDS reports inapplicable fields as `""`).
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_asset_tag_decides_and_the_sample_parses() {
        assert!(is_azure_vm(Some("7783-7084-3265-9085-8269-3286-77\n")));
        assert!(!is_azure_vm(Some("Default string")));
        assert!(!is_azure_vm(None));
        let sample = r#"{"compute": {"name": "vm1", "platformFaultDomain": "36",
            "virtualMachineScaleSet": {"id": "/x"}, "unknown": 1}, "network": {}}"#;
        let c = serde_json::from_str::<Instance>(sample).unwrap().compute;
        assert_eq!(c.name, "vm1");
        assert_eq!(c.platform_fault_domain, "36");
        assert_eq!(c.virtual_machine_scale_set.id, "/x");
        assert_eq!(non_empty(&c.sku), None);
    }
}
