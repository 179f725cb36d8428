//! A relay of opaque bytes: the untrusted host between clients and the enclave (the shape of an
//! SGX host process forwarding to its enclave, or of a vsock proxy). It sees only the hello
//! frames, the evidence and TLS ciphertext.

use crate::RuntimeError;
use crate::enclave::{ServerHandle, serve_tcp};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A copy of everything a relay saw, for tests that check what an untrusted host learns.
pub type Tap = Arc<Mutex<Vec<u8>>>;

fn pump(mut from: TcpStream, mut to: TcpStream, tap: Option<Tap>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(t) = &tap
            && let Ok(mut v) = t.lock()
        {
            v.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forward every connection on `listener` to `upstream`, recording the bytes into `tap`.
pub fn relay(
    listener: TcpListener,
    upstream: SocketAddr,
    tap: Option<Tap>,
) -> Result<ServerHandle, RuntimeError> {
    serve_tcp(listener, 1024, move |down| {
        let up = TcpStream::connect(upstream).map_err(|e| {
            RuntimeError::Io(format!("connecting to the enclave at {upstream}: {e}"))
        })?;
        let (d2, u2) = (
            down.try_clone()
                .map_err(|e| RuntimeError::Io(e.to_string()))?,
            up.try_clone()
                .map_err(|e| RuntimeError::Io(e.to_string()))?,
        );
        let t = tap.clone();
        let back = std::thread::spawn(move || pump(u2, d2, t));
        pump(down, up, tap.clone());
        let _ = back.join();
        Ok(())
    })
}
