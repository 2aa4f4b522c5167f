//! Reference parsing: never panics, and the normalized form is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_images::reference::{normalize, short_display, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(s) else {
        return;
    };
    let full = r.to_string();
    let again = Reference::parse(&full).expect("a normalized reference parses");
    assert_eq!(again.to_string(), full, "normalization is idempotent");
    assert_eq!(normalize(&full).as_deref(), Ok(full.as_str()));
    let _ = r.repository();
    let _ = short_display(&full);
    let _ = r.short();
});
