//! AFL++ target: see `tessera_fuzz::ima`.
fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::ima(data));
}
