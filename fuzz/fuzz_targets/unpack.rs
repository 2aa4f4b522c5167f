//! Layer unpacking: any layer is applied or refused with an error, never a
//! panic, and nothing ever appears outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;
use vessel_images::unpack::{Budget, Unpacker};

fuzz_target!(|data: &[u8]| {
    // As root does it, and as a rootless instance does (owners, modes and
    // device nodes deferred).
    for privileged in [true, false] {
        unpack_twice(data, privileged);
    }
});

fn unpack_twice(data: &[u8], privileged: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let outer = dir.path().join("outer");
    let root = outer.join("root");
    fs::create_dir_all(&root).expect("root");
    // A victim next to the root: an escape would change or remove it.
    fs::write(outer.join("victim"), b"v").expect("victim");
    let mut u = Unpacker::with_privilege(
        &root,
        Budget {
            max_bytes: 4 << 20,
            max_inodes: 512,
        },
        privileged,
    );
    // Two layers, the second on top of the first: whiteouts, opaque dirs
    // and replacements across layers.
    let _ = u.apply_layer(data).and_then(|()| u.apply_layer(data));
    assert!(u.bytes() <= (4 << 20) + (1 << 20) || u.inodes() <= 513);
    assert_eq!(u.take_deferred().is_some(), !privileged);
    let mut names: Vec<_> = fs::read_dir(&outer)
        .expect("outer")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["root", "victim"], "something escaped the root");
    assert_eq!(fs::read(outer.join("victim")).expect("victim"), b"v");
    let m = fs::symlink_metadata(&root).expect("root");
    assert!(m.is_dir(), "the root was replaced");
}
