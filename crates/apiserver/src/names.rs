//! Generated container names, Docker style (`adjective_noun`).

const ADJECTIVES: &[&str] = &[
    "agile", "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen",
    "lucid", "merry", "nimble", "proud", "quiet", "rapid", "serene", "sharp", "steady", "swift",
    "tidy", "vivid", "witty", "zealous",
];
const NOUNS: &[&str] = &[
    "albatross",
    "badger",
    "cormorant",
    "dolphin",
    "egret",
    "falcon",
    "gannet",
    "heron",
    "ibis",
    "jackal",
    "kestrel",
    "lynx",
    "marten",
    "narwhal",
    "osprey",
    "puffin",
    "quokka",
    "raven",
    "seal",
    "tern",
    "urchin",
    "vole",
    "walrus",
    "yak",
];

/// A random `adjective_noun` name.
pub fn generate() -> String {
    let a = ADJECTIVES[rand_index(ADJECTIVES.len())];
    let n = NOUNS[rand_index(NOUNS.len())];
    format!("{a}_{n}")
}

fn rand_index(n: usize) -> usize {
    let hex = vessel_api::fsutil::random_hex(4);
    usize::from_str_radix(&hex, 16).unwrap_or(0) % n
}
