//! Test helper, not a product binary: a stand-in daemon for the test
//! `mariadbd_dies_with_the_daemon_that_started_it`
//! (crates/node/tests/mariadb_supervisor.rs): starts one mariadbd through the supervisor in the
//! directory given as its only argument, writes the mariadbd pid to `<dir>/mariadbd-pid`, then
//! waits to be SIGKILLed. The test checks that the mariadbd dies with it (PR_SET_PDEATHSIG).

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quorumsql_node::mariadb::{Mariadb, MariadbConfig};
use quorumsql_peer::NodeId;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: quorumsql-test-pdeathsig-daemon DIR")?,
    );
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cfg = MariadbConfig::new(NodeId(51), dir.join("n"), port);
    cfg.innodb_buffer_pool_size = "32M".into();
    let mut m = Mariadb::new(cfg)?;
    m.initialize_if_needed()?;
    let pid = m.start()?.pid;
    m.wait_ready(Instant::now() + Duration::from_secs(30))?;
    let tmp = dir.join("mariadbd-pid.tmp");
    std::fs::write(&tmp, pid.to_string())?;
    std::fs::rename(&tmp, dir.join("mariadbd-pid"))?;
    // Wait to be SIGKILLed; give up (and clean up via Drop) if the parent never does.
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}
