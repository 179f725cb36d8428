//! The work queue on a real NATS server (when the test script started one:
//! `TESSERA_TEST_NATS=nats://127.0.0.1:PORT`): work is shared, acknowledged work is gone, and
//! work whose consumer let it go is delivered again to another.

use std::time::Duration;
use tessera_queue::{Queue, WorkOptions};

fn server() -> Option<String> {
    match std::env::var("TESSERA_TEST_NATS") {
        Ok(u) => Some(u),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TESSERA_TEST_NATS is not: scripts/test.sh starts nats-server")
        }
        Err(_) => {
            eprintln!(
                "skipping: TESSERA_TEST_NATS is not set (scripts/test.sh starts nats-server -js and sets it)"
            );
            None
        }
    }
}

#[test]
fn unacknowledged_work_is_delivered_again() {
    let Some(url) = server() else { return };
    let name = format!("TQTEST{}", std::process::id());
    let subject = format!("tessera.test.{}", std::process::id());
    let opts = WorkOptions {
        ack_wait: Duration::from_secs(1),
        max_deliver: 5,
    };
    // Two connections: two workers sharing one durable consumer.
    let (a, b) = (
        Queue::connect(&url).expect("connect"),
        Queue::connect(&url).expect("connect"),
    );
    let qa = a
        .work_queue(&name, &subject, "workers", &opts)
        .expect("queue");
    let qb = b
        .work_queue(&name, &subject, "workers", &opts)
        .expect("queue");
    for i in 0..3u8 {
        a.publish(&subject, vec![i]).expect("publish");
    }
    // Worker A takes one message and dies with it (dropped, never acknowledged).
    let lost = qa
        .next(Duration::from_secs(2))
        .expect("pull")
        .expect("a message");
    let lost_payload = lost.payload().to_vec();
    assert_eq!(lost.delivered(), 1);
    drop(lost);
    // Worker B does the other two, then gets the lost one again once its ack_wait passed.
    let mut seen = Vec::new();
    let mut redelivered = 0;
    let t0 = std::time::Instant::now();
    while seen.len() < 3 && t0.elapsed() < Duration::from_secs(20) {
        if let Some(j) = qb.next(Duration::from_millis(500)).expect("pull") {
            if j.delivered() > 1 {
                redelivered += 1;
                assert_eq!(j.payload(), lost_payload.as_slice());
            }
            seen.push(j.payload().to_vec());
            j.ack().expect("ack");
        }
    }
    seen.sort();
    assert_eq!(seen, [vec![0u8], vec![1], vec![2]]);
    assert_eq!(redelivered, 1, "the lost message came back once");
    // Acknowledged work is gone.
    assert!(
        qa.next(Duration::from_millis(1500))
            .expect("pull")
            .is_none()
    );
    a.delete_stream(&name).expect("delete");
}

#[test]
fn a_missing_server_is_a_clear_error() {
    let e = Queue::connect("nats://127.0.0.1:1").expect_err("no server there");
    assert!(e.to_string().contains("nats-server"), "{e}");
}
