//! Stored preprocessing on a local directory and on a real S3 server (when the test script
//! started one: TESSERA_TEST_S3): oldest first, one use each, tied to the model and side,
//! bounded in total.

use tessera_objstore::Location;
use tessera_twopc::store::{Kind, Store};

fn stores(name: &str) -> Vec<Store> {
    let dir = std::env::temp_dir().join(format!("tessera-2pc-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut v = vec![Store::open(&dir, 1 << 20).expect("local")];
    match std::env::var("TESSERA_TEST_S3") {
        Ok(u) => {
            let loc: Location = format!(
                "{}/2pc-{name}-{}",
                u.trim_end_matches('/'),
                std::process::id()
            )
            .parse()
            .expect("location");
            v.push(Store::open_at(&loc, 1 << 20).expect("S3"));
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TESSERA_TEST_S3 is not: scripts/test.sh starts the S3 server")
        }
        Err(_) => eprintln!("skipping the S3 half: TESSERA_TEST_S3 is not set"),
    }
    v
}

#[test]
fn preprocessing_is_taken_once_oldest_first() {
    for s in stores("once") {
        let model = [7u8; 32];
        let (a, b) = ([1u8; 16], [2u8; 16]);
        s.put(&a, Kind::ClientSg, &model, b"first").expect("put");
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.put(&b, Kind::ClientSg, &model, b"second").expect("put");
        assert_eq!(s.ids(Kind::ClientSg, &model).expect("ids"), vec![a, b]);
        assert!(s.ids(Kind::ServerSg, &model).expect("ids").is_empty());
        assert!(s.ids(Kind::ClientSg, &[8u8; 32]).expect("ids").is_empty());
        // Another side or model is refused (and the preprocessing stays).
        assert!(s.take(&a, Kind::ClientCg, &model).is_err());
        assert_eq!(s.take(&a, Kind::ClientSg, &model).expect("take"), b"first");
        let again = s.take(&a, Kind::ClientSg, &model).expect_err("one use");
        assert!(again.to_string().contains("used already"), "{again}");
        assert!(
            s.put(&b, Kind::ClientSg, &model, b"x").is_err(),
            "ids are unique"
        );
        assert_eq!(s.take(&b, Kind::ClientSg, &model).expect("take"), b"second");
        assert_eq!(s.used().expect("used"), 0);
        // The limit counts what is stored.
        let big = vec![0u8; (1 << 20) - 10];
        let e = s
            .put(&a, Kind::ClientSg, &model, &big)
            .expect_err("over the limit");
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
