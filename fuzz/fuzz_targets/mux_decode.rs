//! The agent transport's frame decoder (`agent_protocol::mux`) on bytes
//! from a guest: fed in pieces of any size, it yields frames or an error,
//! never a panic, never more buffered than it was fed; every frame it
//! yields encodes back to bytes that decode to the same frame.
#![no_main]

use agent_protocol::mux::{Decoder, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = Decoder::new();
    let mut fed = 0;
    for chunk in bytes.chunks(step) {
        d.feed(chunk);
        fed += chunk.len();
        assert!(d.buffered() <= fed);
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    let mut again = Decoder::new();
                    again.feed(&frame.encode());
                    assert_eq!(again.next_frame().ok().flatten(), Some(frame));
                }
                Ok(None) => break,
                // A host resynchronises by hunting for the next HELLO.
                Err(_) => {
                    let _ = d.hunt(&MAGIC);
                    break;
                }
            }
        }
    }
});
