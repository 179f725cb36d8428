//! AFL++ target: see `tessera_fuzz::frame`.
fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::frame(data));
}
