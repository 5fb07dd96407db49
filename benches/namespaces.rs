//! Namespaces benchmark: the cost of reading 10 network namespaces of 1,000 sockets each
//! against one namespace of 10,000, in the same run (target: ≤ 1.2 ×).
//!
//! Two layouts of the same 10,000 established loopback sockets (farm processes, as in
//! `poll.rs`): one namespace holding all of them, then ten holding 1,000 each. For each, the
//! median of `ROUNDS` runs of
//! * dump: sock_diag dumps (IPv4 + IPv6, tcp_info) parsed into samples — one socket in the
//!   big namespace, or one per small namespace, each made inside its namespace the way depmap
//!   makes them (`collect::namespaces::within`);
//! * poll: `Agent::poll` with `collect.namespaces = "all"`, run from an empty namespace of its
//!   own (it follows every namespace of the machine: the initial one's few sockets are in both
//!   layouts alike).
//!
//! Run with `cargo bench --bench namespaces` as root.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use depmap::agent::Agent;
use depmap::collect::namespaces::within;
use depmap::collect::sockdiag::{Family, SockDiag};
use depmap::config::{Config, NamespacesMode};

mod common;

use common::{Netns, ROUNDS, env_or, ms, time};

/// A farm of `conns` loopback connections (2 × `conns` sockets) in `ns`, once ready.
fn farm(ns: &Netns, port: u16, conns: usize) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/farm.py");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", script])
        .args([port.to_string(), conns.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("farm");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("farm stdout"))
        .read_line(&mut line)
        .expect("farm line");
    assert!(line.starts_with("ready"), "farm: {line}");
    child
}

fn stop(farms: Vec<Child>) {
    for mut f in farms {
        drop(f.stdin.take());
        let _ = f.wait();
    }
}

/// A sock_diag socket made inside `ns`, as depmap makes them.
fn diag_in(ns: &Netns) -> SockDiag {
    let path = PathBuf::from(format!("/run/netns/{}", ns.0));
    let id = std::fs::metadata(&path).expect("netns file").ino();
    within(id, &path, SockDiag::open).expect("enter the namespace")
}

/// What one layout cost.
struct Figures {
    /// Parsed dumps of every namespace of the layout.
    dump: Duration,
    /// The kernel's share: the same dumps read unparsed.
    kernel: Duration,
    /// The same with a dump per family.
    kernel_per_family: Duration,
    /// A dump of an empty namespace beside them (unparsed): what each dump pays for the
    /// others' sockets.
    empty: Duration,
    poll: Duration,
    sockets: usize,
}

/// The figures of the namespaces `spaces`, each of `per` connections.
fn measure(spaces: &[Netns], per: usize, port: u16) -> Figures {
    let mut farms = Vec::new();
    for (i, ns) in spaces.iter().enumerate() {
        let mut left = per;
        let mut p = port + (i as u16) * 10;
        while left > 0 {
            let n = left.min(2_500);
            farms.push(farm(ns, p, n));
            left -= n;
            p += 1;
        }
    }
    let mut diags: Vec<SockDiag> = spaces.iter().map(diag_in).collect();
    let mut sockets = 0;
    let dump = time(|| {
        sockets = 0;
        for d in &mut diags {
            d.dump_all(true, |_| sockets += 1).expect("dump");
        }
    });
    // Both families in one walk each, as depmap dumps.
    let kernel = time(|| {
        for d in &mut diags {
            d.dump_all_unparsed().expect("dump");
        }
    });
    // A dump per family (a walk each), as depmap dumped before.
    let kernel_per_family = time(|| {
        for d in &mut diags {
            d.dump_unparsed(Family::V4).expect("dump");
            d.dump_unparsed(Family::V6).expect("dump");
        }
    });
    // The bench's own (home) namespace is empty.
    let mut home = SockDiag::open().expect("sock_diag");
    let empty = time(|| {
        home.dump_all_unparsed().expect("dump");
    });
    let mut config = Config::default();
    config.collect.namespaces = NamespacesMode::All;
    config.collect.events = depmap::config::EventsMode::Off;
    let mut agent = Agent::start(config).expect("agent");
    agent.poll();
    let poll = time(|| agent.poll());
    drop(agent);
    stop(farms);
    Figures {
        dump,
        kernel,
        kernel_per_family,
        empty,
        poll,
        sockets,
    }
}

fn main() {
    // Established sockets in all (default 10,000); DEPMAP_BENCH_NS_SOCKETS=20 shows the floor.
    let sockets = env_or("DEPMAP_BENCH_NS_SOCKETS", 10_000) as usize;
    // The agent runs from an empty namespace: every farm namespace is "another" one.
    let home = Netns::new("dmnshome");
    let f = std::fs::File::open(format!("/run/netns/{}", home.0)).expect("home netns");
    // SAFETY: setns on a valid namespace fd for the calling (main) thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);

    let one = [Netns::new("dmnsbig")];
    let one_ns = measure(&one, sockets / 2, 21_000);
    drop(one);
    let ten: Vec<Netns> = (0..10).map(|i| Netns::new(&format!("dmns{i}"))).collect();
    let ten_ns = measure(&ten, sockets / 20, 22_000);
    drop(ten);
    // The same ten, each with a TCP hash table of its own (Linux ≥ 5.19): set before the
    // namespaces are made, restored after.
    let sysctl = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    let before = std::fs::read_to_string(sysctl).unwrap_or_else(|_| "0".into());
    let own_tables = std::fs::write(sysctl, "1024").is_ok().then(|| {
        let ten: Vec<Netns> = (0..10)
            .map(|i| Netns::new(&format!("dmnsown{i}")))
            .collect();
        let _ = std::fs::write(sysctl, before.trim());
        measure(&ten, sockets / 20, 23_000)
    });
    let _ = std::fs::write(sysctl, before.trim());

    println!(
        "| layout | sockets dumped | kernel (unparsed, one walk) | kernel, a dump per family | dump (parsed) | an empty namespace's dump beside them | Agent::poll |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rows = vec![("1 namespace", &one_ns), ("10 namespaces", &ten_ns)];
    if let Some(f) = &own_tables {
        rows.push((
            "10 namespaces, own hash tables (tcp_child_ehash_entries = 1024)",
            f,
        ));
    }
    for (name, f) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            f.sockets,
            ms(f.kernel),
            ms(f.kernel_per_family),
            ms(f.dump),
            ms(f.empty),
            ms(f.poll)
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let ratio_row = |name: &str, f: &Figures| {
        println!(
            "| {name} | | {:.2} × | {:.2} × | {:.2} × | | {:.2} × |",
            ratio(f.kernel, one_ns.kernel),
            ratio(f.kernel_per_family, one_ns.kernel_per_family),
            ratio(f.dump, one_ns.dump),
            ratio(f.poll, one_ns.poll)
        )
    };
    ratio_row("ratio (10 / 1)", &ten_ns);
    if let Some(f) = &own_tables {
        ratio_row("ratio (10 with own tables / 1)", f);
    }
    println!("(medians of {ROUNDS} runs)");
}
