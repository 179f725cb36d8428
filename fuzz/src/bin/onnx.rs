//! AFL++ target: see `tessera_fuzz::onnx`.
fn main() {
    afl::fuzz!(|data: &[u8]| tessera_fuzz::onnx(data));
}
