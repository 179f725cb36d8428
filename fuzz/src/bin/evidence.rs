//! AFL++ target: see `tessera_fuzz::evidence`.
fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::evidence(data));
}
