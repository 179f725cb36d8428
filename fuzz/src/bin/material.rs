//! AFL++ target: see `tessera_fuzz::material`.
fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::material(data));
}
