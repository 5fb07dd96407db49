//! Host facts for the `VMComputer` record (SPEC §4), read from local Linux sources only.
//!
//! This module owns every `VMComputer` column that describes the machine itself: host name and
//! FQDN, boot time, UTC offset, OS name, kernel, CPUs, memory, addresses, gateways, MACs, DNS names
//! and virtualization. It never sends a packet: the FQDN comes from the kernel host name,
//! `/etc/hostname` and `/etc/hosts`, never from a DNS query. The `Azure*` and `HostingProvider`
//! columns are not read here (they come from IMDS, elsewhere); `dmi_chassis_asset_tag` is only
//! exposed so that the caller can decide whether the machine is an Azure VM.
//!
//! Every read can fail (missing file, permission denied, non-UTF-8) and then yields `None` or an
//! empty list; nothing here panics on system input.
//!
//! Not sysinfo: it would give memory, CPUs, the host and OS names, but none of the DMI asset
//! tag, virtualization, default gateways, subnet masks or DNS names the record needs — those
//! are read here from the same files anyway — and its `System` refreshes every process, which
//! the agent's fd cache already follows.
//!
//! Virtualization values:
//! * `virtualization_state` is `"virtual"`, `"physical"` or `"unknown"`. `"hypervisor"` (the
//!   Windows agent's value for a Hyper-V host) is never reported. Containers (`/.dockerenv`,
//!   `/run/.containerenv`) do not change it: cpuid and DMI describe the machine under the
//!   container, so a container on a VM is `"virtual"` and one on bare metal `"physical"`.
//! * `virtual_machine_type` / `hypervisor_type` use the ServiceMap enum values where one exists
//!   (`hyperv`, `vmware`, `xen`) and otherwise the real hypervisor, lower-cased: `kvm`, `qemu`
//!   (TCG emulation), `virtualbox`, `bhyve`, `parallels`, `acrn`, `amazon`, `google`; `"unknown"`
//!   when a hypervisor is present but not recognised. Linux sees more hypervisors than the
//!   Windows enum lists, and reporting `unknown` for KVM would throw the fact away.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Facts about this host for the VMComputer record, read from Linux sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    pub host_name: Option<String>,
    pub fqdn: Option<String>,
    pub boot_time_ms: Option<i64>,
    pub time_zone: Option<String>,
    pub os_full_name: Option<String>,
    pub kernel_release: Option<String>,
    pub cpus: Option<i32>,
    pub cpu_mhz: Option<i32>,
    pub physical_memory_mb: Option<i64>,
    pub ipv4_addresses: Vec<String>,
    pub ipv4_subnet_masks: Vec<String>,
    pub ipv4_default_gateways: Vec<String>,
    pub ipv6_addresses: Vec<String>,
    pub mac_addresses: Vec<String>,
    pub dns_names: Vec<String>,
    pub virtualization_state: Option<String>,
    pub virtual_machine_type: Option<String>,
    pub virtual_machine_native_id: Option<String>,
    pub virtual_machine_native_name: Option<String>,
    pub hypervisor_type: Option<String>,
    pub dmi_chassis_asset_tag: Option<String>,
}

impl HostFacts {
    /// Reads every fact; never fails, never blocks on the network.
    pub fn read() -> HostFacts {
        let full_name = kernel_host_name();
        let host_name = full_name
            .as_deref()
            .and_then(|n| n.split('.').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let fqdn = find_fqdn(full_name.as_deref(), host_name.as_deref());
        let mut dns_names: Vec<String> = Vec::new();
        for n in [&fqdn, &host_name].into_iter().flatten() {
            if !dns_names.iter().any(|d| d.eq_ignore_ascii_case(n)) {
                dns_names.push(n.clone());
            }
        }
        let (ipv4_addresses, ipv4_subnet_masks, ipv6_addresses) = interface_addresses();
        let (virtualization_state, virtual_machine_type) = detect_virtualization();
        let hypervisor_type = match virtualization_state.as_deref() {
            Some("virtual") => virtual_machine_type.clone(),
            _ => None,
        };
        HostFacts {
            host_name,
            fqdn,
            boot_time_ms: read_text("/proc/stat").and_then(|t| parse_btime_ms(&t)),
            time_zone: utc_offset(),
            os_full_name: read_text("/etc/os-release")
                .or_else(|| read_text("/usr/lib/os-release"))
                .and_then(|t| parse_os_release(&t)),
            kernel_release: kernel_release(),
            cpus: online_cpus(),
            cpu_mhz: read_text("/proc/cpuinfo")
                .and_then(|t| parse_cpuinfo_mhz(&t))
                .or_else(|| {
                    read_trim("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
                        .and_then(|s| s.parse::<i64>().ok())
                        .and_then(|khz| i32::try_from((khz + 500) / 1000).ok())
                        .filter(|m| *m > 0)
                }),
            physical_memory_mb: read_text("/proc/meminfo").and_then(|t| parse_meminfo_total_mb(&t)),
            ipv4_addresses,
            ipv4_subnet_masks,
            ipv4_default_gateways: read_text("/proc/net/route")
                .map(|t| parse_default_gateways(&t))
                .unwrap_or_default(),
            ipv6_addresses,
            mac_addresses: mac_addresses(),
            dns_names,
            virtualization_state,
            virtual_machine_type,
            virtual_machine_native_id: read_trim("/sys/class/dmi/id/product_uuid")
                .map(|s| s.to_ascii_lowercase()),
            virtual_machine_native_name: None,
            hypervisor_type,
            dmi_chassis_asset_tag: read_trim("/sys/class/dmi/id/chassis_asset_tag"),
        }
    }
}

fn read_text(path: &str) -> Option<String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Reads a one-value file, trimmed; `None` when missing, unreadable, non-UTF-8 or blank.
fn read_trim(path: &str) -> Option<String> {
    let t = read_text(path)?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn kernel_host_name() -> Option<String> {
    let name = match nix::unistd::gethostname() {
        Ok(n) => n.to_str()?.trim().to_string(),
        Err(_) => read_trim("/proc/sys/kernel/hostname")?,
    };
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// FQDN from local sources only: a dotted kernel host name, a dotted `/etc/hostname`, or an
/// `/etc/hosts` entry. No resolver call (getaddrinfo could send DNS packets) is made.
fn find_fqdn(full_name: Option<&str>, short: Option<&str>) -> Option<String> {
    let short = short?;
    if let Some(f) = full_name.filter(|f| f.contains('.')) {
        return Some(f.to_string());
    }
    if let Some(f) = read_trim("/etc/hostname").filter(|f| f.contains('.')) {
        let first = f.split('.').next().unwrap_or_default();
        if first.eq_ignore_ascii_case(short) {
            return Some(f);
        }
    }
    read_text("/etc/hosts").and_then(|t| fqdn_from_hosts(&t, short))
}

/// Finds the dotted name for `host_name` in `/etc/hosts` text: on a line that names the host
/// (by its short name or a dotted name starting with it), the first dotted name whose first
/// label is `host_name`. Comments and aliases are handled; `localhost.localdomain` never matches
/// another host.
pub fn fqdn_from_hosts(hosts: &str, host_name: &str) -> Option<String> {
    let short = host_name.split('.').next().filter(|s| !s.is_empty())?;
    let is_ours = |n: &str| {
        n.split('.')
            .next()
            .is_some_and(|l| l.eq_ignore_ascii_case(short))
    };
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        if addr.parse::<IpAddr>().is_err() {
            continue;
        }
        let names: Vec<&str> = fields.collect();
        if !names.iter().any(|n| is_ours(n)) {
            continue;
        }
        if let Some(f) = names.iter().find(|n| n.contains('.') && is_ours(n)) {
            return Some(f.trim_end_matches('.').to_string());
        }
    }
    None
}

/// `PRETTY_NAME`, else `NAME VERSION` (either alone if only one is set), from os-release text.
/// Handles double and single quotes and backslash escapes inside double quotes.
pub fn parse_os_release(text: &str) -> Option<String> {
    let (mut pretty, mut name, mut version) = (None, None, None);
    for line in text.lines() {
        let Some((key, raw)) = line.trim().split_once('=') else {
            continue;
        };
        let slot = match key.trim() {
            "PRETTY_NAME" => &mut pretty,
            "NAME" => &mut name,
            "VERSION" => &mut version,
            _ => continue,
        };
        let v = unquote(raw.trim());
        *slot = (!v.trim().is_empty()).then(|| v.trim().to_string());
    }
    pretty.or_else(|| match (name, version) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (n, v) => n.or(v),
    })
}

fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_string();
    }
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return raw.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `MemTotal` from /proc/meminfo (kB) in MB (integer division by 1024).
pub fn parse_meminfo_total_mb(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: i64 = line["MemTotal:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Largest `cpu MHz` over all CPUs in /proc/cpuinfo, rounded to an integer.
pub fn parse_cpuinfo_mhz(text: &str) -> Option<i32> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "cpu MHz")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|m| m.is_finite() && *m > 0.0 && *m < i32::MAX as f64)
        .map(|m| m.round() as i32)
        .max()
}

/// Boot time in unix milliseconds from the `btime` line of /proc/stat.
pub fn parse_btime_ms(proc_stat: &str) -> Option<i64> {
    let line = proc_stat.lines().find(|l| l.starts_with("btime "))?;
    let secs: i64 = line["btime ".len()..].trim().parse().ok()?;
    secs.checked_mul(1000)
}

/// Default gateways (destination `00000000`, route up, gateway not 0.0.0.0) from
/// /proc/net/route, dotted and deduplicated in file order. The kernel prints addresses as the
/// host-order hex of the network-order value, so they are decoded with native byte order.
pub fn parse_default_gateways(proc_net_route: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in proc_net_route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[1] != "00000000" {
            continue;
        }
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let Ok(gw) = u32::from_str_radix(f[2], 16) else {
            continue;
        };
        if flags & 0x1 == 0 || gw == 0 {
            continue;
        }
        let gw = Ipv4Addr::from(gw.to_ne_bytes()).to_string();
        if !out.contains(&gw) {
            out.push(gw);
        }
    }
    out
}

/// The local UTC offset (`TimeZone`), from the C library's time zone rules. Hand-written:
/// nix has no localtime, and a date-time crate for one offset at each inventory pass is more
/// than these two calls.
fn utc_offset() -> Option<String> {
    unsafe extern "C" {
        fn tzset();
    }
    // SAFETY: tzset has no arguments; localtime_r writes only into the zeroed `tm` we own.
    let off = unsafe {
        tzset();
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return None;
        }
        tm.tm_gmtoff
    };
    let sign = if off < 0 { '-' } else { '+' };
    let mins = off.unsigned_abs() / 60;
    Some(format!("{sign}{:02}:{:02}", mins / 60, mins % 60))
}

fn kernel_release() -> Option<String> {
    let from_uname = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().map(str::to_string));
    from_uname
        .filter(|s| !s.is_empty())
        .or_else(|| read_trim("/proc/sys/kernel/osrelease"))
}

fn online_cpus() -> Option<i32> {
    use nix::unistd::{SysconfVar, sysconf};
    if let Ok(Some(n)) = sysconf(SysconfVar::_NPROCESSORS_ONLN)
        && n > 0
    {
        return i32::try_from(n).ok();
    }
    // Fallback: count the ranges in /sys/devices/system/cpu/online ("0-3,6").
    let list = read_trim("/sys/devices/system/cpu/online")?;
    let mut count = 0i32;
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (a.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?);
        count = count.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    (count > 0).then_some(count)
}

/// Non-loopback IPv4 addresses with their masks, and global IPv6 addresses, via getifaddrs.
fn interface_addresses() -> (Vec<String>, Vec<String>, Vec<String>) {
    use nix::net::if_::InterfaceFlags;
    let (mut v4, mut masks, mut v6) = (Vec::new(), Vec::new(), Vec::new());
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return (v4, masks, v6);
    };
    for ifa in addrs {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            let ip = sin.ip().to_string();
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip()))
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            if !ip.starts_with("127.") && !v4.contains(&ip) {
                v4.push(ip);
                masks.push(mask.to_string());
            }
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let ip: Ipv6Addr = sin6.ip();
            let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
            if !ip.is_loopback() && !ip.is_unspecified() && !link_local {
                let ip = ip.to_string();
                if !v6.contains(&ip) {
                    v6.push(ip);
                }
            }
        }
    }
    (v4, masks, v6)
}

/// MACs from /sys/class/net/*/address, sorted by interface name; loopback interfaces (flag
/// IFF_LOOPBACK), empty and all-zero addresses are skipped. Duplicates (bond slaves) are kept once.
fn mac_addresses() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let base = format!("/sys/class/net/{name}");
        let flags = read_trim(&format!("{base}/flags"))
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        if name == "lo" || flags & libc::IFF_LOOPBACK as u32 != 0 {
            continue;
        }
        let Some(mac) = read_trim(&format!("{base}/address")) else {
            continue;
        };
        let mac = mac.to_ascii_lowercase();
        if mac.chars().all(|c| c == '0' || c == ':') || out.contains(&mac) {
            continue;
        }
        out.push(mac);
    }
    out
}

/// Returns (virtualization_state, virtual_machine_type). Sources in order: cpuid hypervisor bit
/// and leaf 0x40000000 signature (x86_64), DMI vendor/product, /sys/hypervisor/type (Xen PV).
fn detect_virtualization() -> (Option<String>, Option<String>) {
    let dmi = dmi_hypervisor();
    let xen_pv = read_trim("/sys/hypervisor/type").filter(|t| t == "xen");
    #[cfg(target_arch = "x86_64")]
    let (hv_bit, sig) = cpuid_hypervisor();
    #[cfg(not(target_arch = "x86_64"))]
    let (hv_bit, sig): (bool, Option<&'static str>) = (false, None);
    let vm_type = sig
        .map(str::to_string)
        .or(dmi)
        .or(xen_pv)
        .or_else(|| hv_bit.then(|| "unknown".to_string()));
    let state = if vm_type.is_some() {
        "virtual"
    } else if cfg!(target_arch = "x86_64")
        || std::path::Path::new("/sys/class/dmi/id/sys_vendor").exists()
    {
        // x86 without the hypervisor bit, or DMI that names no hypervisor.
        "physical"
    } else {
        "unknown"
    };
    (Some(state.to_string()), vm_type)
}

#[cfg(target_arch = "x86_64")]
fn cpuid_hypervisor() -> (bool, Option<&'static str>) {
    use core::arch::x86_64::__cpuid;
    if __cpuid(1).ecx & (1 << 31) == 0 {
        return (false, None);
    }
    let r = __cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&r.edx.to_le_bytes());
    let kind = match &sig {
        b"KVMKVMKVM\0\0\0" => Some("kvm"),
        b"Microsoft Hv" => Some("hyperv"),
        b"VMwareVMware" => Some("vmware"),
        b"XenVMMXenVMM" => Some("xen"),
        b"TCGTCGTCGTCG" => Some("qemu"),
        b"VBoxVBoxVBox" => Some("virtualbox"),
        b"bhyve bhyve " => Some("bhyve"),
        b" lrpepyh  vr" => Some("parallels"),
        b"ACRNACRNACRN" => Some("acrn"),
        _ => None,
    };
    (true, kind)
}

/// Hypervisor named by /sys/class/dmi/id (absent on microVMs and many non-x86 machines).
fn dmi_hypervisor() -> Option<String> {
    let field = |f: &str| read_trim(&format!("/sys/class/dmi/id/{f}")).unwrap_or_default();
    let text = [
        field("sys_vendor"),
        field("product_name"),
        field("bios_vendor"),
        field("board_vendor"),
    ]
    .join("\n")
    .to_ascii_lowercase();
    let kind = [
        ("kvm", "kvm"),
        ("qemu", "qemu"),
        ("vmware", "vmware"),
        ("innotek", "virtualbox"),
        ("virtualbox", "virtualbox"),
        ("xen", "xen"),
        ("bhyve", "bhyve"),
        ("parallels", "parallels"),
        ("amazon ec2", "amazon"),
        ("google compute engine", "google"),
    ]
    .iter()
    .find(|(needle, _)| text.contains(needle))
    .map(|(_, kind)| *kind);
    if let Some(k) = kind {
        return Some(k.to_string());
    }
    // Hyper-V (and Azure): vendor "Microsoft Corporation", product "Virtual Machine".
    (text.contains("microsoft corporation") && text.contains("virtual machine"))
        .then(|| "hyperv".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quotes_and_fallback() {
        let t = "NAME=\"Debian GNU/Linux\"\nVERSION='12 (bookworm)'\nPRETTY_NAME=\"Debian \\\"GNU\\\" 12\"\n";
        assert_eq!(parse_os_release(t).as_deref(), Some("Debian \"GNU\" 12"));
        let t = "NAME=\"Fedora Linux\"\nVERSION=\"40 (Server)\"\nPRETTY_NAME=\"\"\n";
        assert_eq!(
            parse_os_release(t).as_deref(),
            Some("Fedora Linux 40 (Server)")
        );
        assert_eq!(parse_os_release("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(parse_os_release("ID=x\n"), None);
    }

    #[test]
    fn meminfo_total() {
        let t = "MemTotal:       24684092 kB\nMemFree:        23631540 kB\n";
        assert_eq!(parse_meminfo_total_mb(t), Some(24105));
        assert_eq!(parse_meminfo_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total_mb("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn cpuinfo_max_mhz() {
        let t = "processor\t: 0\ncpu MHz\t\t: 2596.142\n\nprocessor\t: 1\ncpu MHz\t\t: 3400.600\n\nprocessor\t: 2\ncpu MHz\t\t: 800.000\n";
        assert_eq!(parse_cpuinfo_mhz(t), Some(3401));
        assert_eq!(parse_cpuinfo_mhz("processor : 0\nBogoMIPS : 50.00\n"), None);
    }

    #[test]
    fn btime() {
        let t = "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1795611693\nprocesses 42\n";
        assert_eq!(parse_btime_ms(t), Some(1_795_611_693_000));
        assert_eq!(parse_btime_ms("cpu 1\n"), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn default_gateways() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t FE01A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth1\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateways(t),
            vec!["192.0.2.1", "192.168.1.254"]
        );
        assert!(parse_default_gateways("").is_empty());
    }

    #[test]
    fn hosts_fqdn() {
        let hosts = "# comment myhost.bad.example\n127.0.0.1\tlocalhost localhost.localdomain myhost\n\
            ::1 ip6-localhost\n10.0.0.5  web1 web1.corp.example.com  # web1.other.example\n\
            127.0.1.1 myhost.lab.example.org myhost\n";
        assert_eq!(
            fqdn_from_hosts(hosts, "myhost").as_deref(),
            Some("myhost.lab.example.org")
        );
        assert_eq!(
            fqdn_from_hosts(hosts, "WEB1").as_deref(),
            Some("web1.corp.example.com")
        );
        assert_eq!(fqdn_from_hosts(hosts, "vm"), None);
        assert_eq!(fqdn_from_hosts("127.0.0.1 localhost vm\n", "vm"), None);
    }

    #[test]
    fn read_this_host() {
        let h = HostFacts::read();
        assert!(h.cpus.is_some_and(|c| c > 0), "{h:?}");
        assert!(h.physical_memory_mb.is_some_and(|m| m > 0), "{h:?}");
        assert!(
            h.host_name.as_deref().is_some_and(|n| !n.is_empty()),
            "{h:?}"
        );
        assert!(
            h.dns_names
                .contains(h.host_name.as_ref().unwrap_or(&String::new()))
        );
        assert_eq!(h.ipv4_addresses.len(), h.ipv4_subnet_masks.len());
        let state = h.virtualization_state.as_deref();
        assert!(matches!(state, Some("virtual" | "physical" | "unknown")));
        assert_eq!(state == Some("virtual"), h.virtual_machine_type.is_some());
        let tz = h.time_zone.unwrap_or_default();
        assert!(tz.len() == 6 && tz.as_bytes()[3] == b':', "{tz}");
        eprintln!("{:#?}", HostFacts::read());
    }
}
