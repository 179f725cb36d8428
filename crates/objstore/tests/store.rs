//! The store on the local filesystem (always) and on a real S3 server (when the test script
//! started one: `TESSERA_TEST_S3=s3://bucket/prefix` and the AWS_* variables): large objects
//! stream both ways in parts and ranges, an unfinished upload leaves nothing, deleted objects
//! are gone, and keys cannot leave the store's prefix.

use rand::{RngCore, SeedableRng};
use std::io::{Read, Write};
use tessera_objstore::{Location, Objects, PART_BYTES, StoreError};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The stores to test: a fresh local directory, and the S3 server when one is configured.
fn stores(name: &str) -> Vec<Objects> {
    let dir = std::env::temp_dir().join(format!("tessera-objstore-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut v = vec![Objects::open(&Location::Local(dir)).expect("local store")];
    match std::env::var("TESSERA_TEST_S3") {
        Ok(url) => {
            let loc: Location = format!("{}/{name}", url.trim_end_matches('/'))
                .parse()
                .expect("location");
            v.push(Objects::open(&loc).expect("S3 store"));
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TESSERA_TEST_S3 is not: scripts/test.sh starts the S3 server")
        }
        Err(_) => eprintln!(
            "skipping the S3 half of {name}: TESSERA_TEST_S3 is not set (scripts/test.sh starts a server and sets it)"
        ),
    }
    v
}

#[test]
fn large_objects_stream_in_parts_and_ranges() {
    for s in stores("stream") {
        let data = bytes(2 * PART_BYTES + 12_345, 1);
        let mut w = s.writer("material/a.bin").expect("writer");
        for c in data.chunks(1_000_003) {
            w.write_all(c).expect("write");
        }
        assert_eq!(
            w.finish().expect("finish"),
            data.len() as u64,
            "{}",
            s.name()
        );
        assert_eq!(s.size("material/a.bin").expect("size"), data.len() as u64);
        let mut r = s.reader("material/a.bin").expect("reader");
        let mut back = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(back == data, "{}: the object read back differs", s.name());
        let at = PART_BYTES as u64 - 7;
        assert_eq!(
            s.get_range("material/a.bin", at..at + 100).expect("range"),
            data[at as usize..at as usize + 100]
        );
        s.put("small/b", b"hello").expect("put");
        assert_eq!(s.get("small/b").expect("get"), b"hello");
        let keys: Vec<String> = s
            .list("")
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["material/a.bin", "small/b"], "{}", s.name());
    }
}

#[test]
fn an_unfinished_upload_leaves_nothing() {
    for s in stores("abort") {
        let mut w = s.writer("half").expect("writer");
        w.write_all(&bytes(PART_BYTES + 10, 2)).expect("write");
        drop(w);
        match s.size("half") {
            Err(StoreError::NotFound(k, _)) => assert_eq!(k, "half"),
            other => panic!("{}: an aborted upload is visible: {other:?}", s.name()),
        }
        assert!(s.list("").expect("list").is_empty(), "{}", s.name());
    }
}

#[test]
fn a_deleted_object_is_gone() {
    for s in stores("delete") {
        s.put("once", b"single use").expect("put");
        s.delete("once").expect("delete");
        assert!(
            matches!(s.get("once"), Err(StoreError::NotFound(..))),
            "{}",
            s.name()
        );
        assert!(
            matches!(s.delete("once"), Err(StoreError::NotFound(..))),
            "{}",
            s.name()
        );
        assert!(
            matches!(s.reader("once"), Err(StoreError::NotFound(..))),
            "{}",
            s.name()
        );
    }
}

#[test]
fn keys_cannot_leave_the_prefix() {
    for s in stores("keys") {
        for k in ["../x", "a//b", "a/./b", "/abs", "x y", "", "a/..", "é"] {
            match s.put(k, b"x") {
                Err(StoreError::Key(..)) => {}
                other => panic!("{}: key {k:?} accepted: {other:?}", s.name()),
            }
        }
    }
}

#[test]
fn locations_parse() {
    assert_eq!(
        "s3://bucket-1/a/b/".parse::<Location>().expect("s3"),
        Location::S3 {
            bucket: "bucket-1".into(),
            prefix: "a/b".into(),
            options: vec![]
        }
    );
    assert_eq!(
        "s3://b".parse::<Location>().expect("s3"),
        Location::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            options: vec![]
        }
    );
    assert_eq!(
        "file:///tmp/x".parse::<Location>().expect("file"),
        Location::Local("/tmp/x".into())
    );
    assert_eq!(
        "dir/x".parse::<Location>().expect("dir"),
        Location::Local("dir/x".into())
    );
    let with = "s3://b/p?endpoint=http://127.0.0.1:9000&allow_http=true";
    let loc = with.parse::<Location>().expect("settings");
    assert_eq!(loc.to_string(), with);
    for bad in [
        "s3://",
        "s3://Upper/x",
        "gs://b/x",
        "s3://b/../x",
        "",
        "s3://b/p?secret_access_key=x",
        "s3://b/p?endpoint=",
    ] {
        assert!(bad.parse::<Location>().is_err(), "{bad:?} accepted");
    }
}
