//! Real processes: the in-process load that `bench/log-throughput` measures by default. On the
//! master it commits proposals and its count matches the log's growth; on a follower nothing
//! commits; out-of-range requests get an error and change nothing.

use std::path::Path;
use std::time::Duration;

use quorumsql_logbench::client::Client;
use quorumsql_logbench::cluster::Cluster;
use quorumsql_logbench::protocol::{Request, Response};

async fn call(c: &mut Client, req: &Request) -> Response {
    match c.call(req, Duration::from_secs(30)).await {
        Ok(r) => r,
        Err(e) => panic!("{req:?}: {e}"),
    }
}

async fn last_seq(c: &mut Client) -> u64 {
    match call(c, &Request::Status).await {
        Response::Status(s) => s.last_gtid.map_or(0, |g| g.seq),
        other => panic!("status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_commits_on_the_master_only_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = Path::new(env!("CARGO_BIN_EXE_quorumsql-logbench"));
    let mut cluster = Cluster::new(bin, tmp.path(), 3).expect("cluster");
    cluster.start_all().expect("start");
    let master = match cluster
        .wait_master(&[0, 1, 2], Duration::from_secs(30))
        .await
    {
        Ok(m) => m,
        Err(e) => panic!("{e}\n{}", cluster.log_tails(40)),
    };
    let follower = (master + 1) % 3;
    let mut m = Client::connect(cluster.nodes()[master].client_addr)
        .await
        .expect("connect master");
    let mut f = Client::connect(cluster.nodes()[follower].client_addr)
        .await
        .expect("connect follower");

    let before = last_seq(&mut m).await;
    let load = Request::Load {
        concurrency: 4,
        payload_bytes: 1024,
        millis: 500,
    };
    let (committed, failed) = match call(&mut m, &load).await {
        Response::Loaded {
            committed,
            failed,
            p50_us,
            p99_us,
            ..
        } => {
            assert!(
                p50_us > 0 && p50_us <= p99_us,
                "p50 {p50_us} µs, p99 {p99_us} µs"
            );
            (committed, failed)
        }
        other => panic!("load on the master: {other:?}"),
    };
    assert!(committed > 0, "no proposal committed on the master");
    assert_eq!(failed, 0, "proposals failed on a healthy master");
    let after = last_seq(&mut m).await;
    assert_eq!(
        after - before,
        committed,
        "the log grew by {} transactions, the load counted {committed}",
        after - before
    );

    match call(&mut f, &load).await {
        Response::Loaded {
            committed, failed, ..
        } => {
            assert_eq!(committed, 0, "a follower committed proposals");
            assert!(failed > 0, "a follower's proposers never tried");
        }
        other => panic!("load on a follower: {other:?}"),
    }

    for bad in [
        Request::Load {
            concurrency: 0,
            payload_bytes: 1024,
            millis: 100,
        },
        Request::Load {
            concurrency: 1_000_000,
            payload_bytes: 1024,
            millis: 100,
        },
        Request::Load {
            concurrency: 1,
            payload_bytes: 1024,
            millis: u64::MAX,
        },
        Request::Load {
            concurrency: 1,
            payload_bytes: u32::MAX,
            millis: 100,
        },
    ] {
        match call(&mut m, &bad).await {
            Response::Error(e) => assert!(e.contains("load:"), "{bad:?}: {e}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
    assert_eq!(
        last_seq(&mut m).await,
        after,
        "refused load requests changed the log"
    );
}
