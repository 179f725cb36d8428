//! Helpers shared by the attested crate's integration tests.

use std::path::PathBuf;
use tessera_attested::swtpm_installed;

/// Whether swtpm is here; without it a test skips with a printed reason, and fails under CI.
pub fn have_swtpm() -> bool {
    if swtpm_installed() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "swtpm is not installed, and CI must run the attested tests: apt-get install swtpm swtpm-tools"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)"
    );
    false
}

/// A scratch directory, emptied when made and removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("tessera-attested-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
