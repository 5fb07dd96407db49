//! The clickhouse sink against a real ClickHouse server (the distribution's package, which
//! `.ci/run` installs) started on loopback inside the test's own network namespace: a live
//! `depmap run` inserts its records, and SQL over them returns the test's connections with
//! the bytes its client really sent.

mod common;

use std::time::{Duration, Instant};

use common::clickhouse::*;
use common::*;

#[test]
fn a_live_depmap_run_fills_clickhouse_and_sql_finds_the_connections() {
    let _serial = serial();
    let ns = Netns::new("ch");
    let dir = TempDir::new("ch");
    let _server = Server::start(&ns, &dir);
    std::fs::write(dir.0.join("password"), format!("{PASSWORD}\n")).expect("password file");
    let cfg = config_file(
        &dir,
        &format!(
            "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n\
             [sink]\nkind = \"clickhouse\"\n\
             [sink.clickhouse]\nurl = \"http://127.0.0.1:{CH_PORT}\"\nuser = \"depmap\"\npassword_file = \"{}\"\n\
             [sink.delivery]\nbatch_max_age = \"500ms\"\nmax_backoff = \"2s\"\n",
            dir.0.join("password").display()
        ),
    );
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["run", "--config"]).arg(&cfg);
    let mut dm = Proc::spawn(cmd);
    // The connections start once depmap's baseline poll is done (its first inventory is
    // delivered after it): connections that close while depmap starts are older than depmap
    // and not counted (README "Attribution rules"). Without this wait a fresh CI machine,
    // where depmap's first start is slow, lost all twelve.
    assert!(
        wait_until(Duration::from_secs(30), || number(
            &ns,
            "SELECT count() FROM depmap.VMComputer"
        ) >= 1),
        "depmap's first inventory never reached ClickHouse"
    );

    let (_srv, _) = server(&ns, "127.0.0.1", 9401, 0);
    let totals = client(
        &ns,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9401",
            "--conns",
            "12",
            "--req",
            "250",
            "--resp",
            "3500",
        ],
    );
    let inbound = "FROM depmap.VMConnection WHERE Direction = 'inbound' AND DestinationPort = 9401";
    let deadline = Instant::now() + Duration::from_secs(30);
    while number(&ns, &format!("SELECT sum(LinksTerminated) {inbound}")) < 12
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = dm.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "depmap exit {status:?}"
    );

    assert_eq!(
        number(&ns, &format!("SELECT sum(LinksEstablished) {inbound}")),
        12
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(LinksTerminated) {inbound}")),
        12
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(BytesReceived) {inbound}")),
        totals["sent"].as_i64().unwrap()
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(BytesSent) {inbound}")),
        totals["received"].as_i64().unwrap()
    );
    // The other tables arrived too, and the server's process is named.
    assert!(number(&ns, "SELECT count() FROM depmap.VMComputer") >= 1);
    assert!(
        number(
            &ns,
            "SELECT count() FROM depmap.VMBoundPort WHERE Port = 9401"
        ) >= 1
    );
    let (status, names) = sql(
        &ns,
        "SELECT DISTINCT ProcessName FROM depmap.VMConnection WHERE Direction = 'inbound' AND DestinationPort = 9401 FORMAT TabSeparated",
    );
    assert_eq!(status, 200, "{names}");
    assert!(names.contains("python"), "{names}");
}
