//! `image load` of an arbitrary archive (OCI layout or docker save, plain or
//! gzip): an error or a verified image, never a panic; a refused archive
//! leaves the store empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;
use vessel_api::paths::Home;
use vessel_images::archive::{load_with_limits, Limits};
use vessel_images::store::Store;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::new(dir.path().join("home"));
    let store = Store::open(&home).expect("store");
    let src = dir.path().join("in.tar");
    fs::write(&src, data).expect("input");
    let limits = Limits {
        max_bytes: 4 << 20,
        max_entries: 256,
    };
    match load_with_limits(&store, &src, limits) {
        Ok(images) => {
            assert!(!images.is_empty());
            for i in &images {
                assert!(store.has_blob(&i.id) && store.has_blob(&i.digest));
            }
        }
        Err(_) => {
            let blobs = home.content_dir().join("blobs/sha256");
            assert_eq!(
                fs::read_dir(blobs).expect("blobs").count(),
                0,
                "refused load left blobs"
            );
        }
    }
    assert_eq!(
        fs::read_dir(home.tmp_dir()).expect("tmp").count(),
        0,
        "load left its extraction behind"
    );
});
