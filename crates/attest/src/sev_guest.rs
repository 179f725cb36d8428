//! SEV-SNP sealing keys from the AMD secure processor: the `SNP_GET_DERIVED_KEY` request of
//! the Linux guest driver (`/dev/sev-guest`).
//!
//! The secure processor derives the key from a root key only it holds (the chip's VCEK root,
//! or the VM root key) mixed with the guest fields the request selects. [`DerivedKeyRequest::sealing`]
//! selects the guest policy and the launch measurement: the same VM image with the same
//! policy on the same chip gets the same key after a restart, and any other image, policy or
//! chip gets another one. The host never sees the key (it travels in the guest's encrypted
//! message channel to the secure processor).
//!
//! The ioctl argument, as the kernel's `include/uapi/linux/sev-guest.h` defines it (all
//! integers little-endian, x86-64 layout):
//!
//! | offset | size | `struct snp_guest_request_ioctl` |
//! |---|---|---|
//! | 0 | 1 | `msg_version` (1), then 7 bytes of padding |
//! | 8 | 8 | `req_data`: address of the request |
//! | 16 | 8 | `resp_data`: address of the response |
//! | 24 | 8 | `exitinfo2`: firmware error (low 32 bits) and VMM error (high 32 bits), written back |
//!
//! | offset | size | `struct snp_derived_key_req` |
//! |---|---|---|
//! | 0 | 4 | `root_key_select`: 0 the VCEK root, 1 the VM root key |
//! | 4 | 4 | reserved, zero |
//! | 8 | 8 | `guest_field_select`: bit 0 guest policy, 1 image ID, 2 family ID, 3 measurement, 4 guest SVN, 5 TCB version |
//! | 16 | 4 | `vmpl`: at least the guest's own VMPL |
//! | 20 | 4 | `guest_svn` mixed in (bit 4) |
//! | 24 | 8 | `tcb_version` mixed in (bit 5) |
//! | 32 | 8 | zero (`launch_mit_vector` in newer firmware; older kernels read only 32 bytes) |
//!
//! The response (`struct snp_derived_key_resp`, 64 bytes) is the firmware's `MSG_KEY_RSP`:
//! `status` u32 at 0 (0 is success), 28 reserved bytes, the 32-byte key at 32.
//!
//! `SNP_GET_DERIVED_KEY` is `_IOWR('S', 0x1, struct snp_guest_request_ioctl)`: direction
//! read|write (3) in bits 30–31, size 32 in bits 16–29, type `'S'` in bits 8–15, number 1.

use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use crate::AttestError;

/// The SEV guest device of the Linux `sev-guest` driver.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// Size of `struct snp_guest_request_ioctl`.
pub const GUEST_REQUEST_LEN: usize = 32;
/// Bytes of the derived-key request passed to the kernel (32 it reads, 8 more zero bytes).
pub const DERIVED_KEY_REQUEST_LEN: usize = 40;
/// Size of `struct snp_derived_key_resp`.
pub const DERIVED_KEY_RESPONSE_LEN: usize = 64;

const fn ioc_readwrite(ty: u8, nr: u8, size: usize) -> u64 {
    (3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// The ioctl request number of `SNP_GET_DERIVED_KEY` (0xC020_5301).
pub const SNP_GET_DERIVED_KEY: u64 = ioc_readwrite(b'S', 1, GUEST_REQUEST_LEN);

/// Guest field select bit: the guest policy.
pub const FIELD_GUEST_POLICY: u64 = 1 << 0;
/// Guest field select bit: the image ID.
pub const FIELD_IMAGE_ID: u64 = 1 << 1;
/// Guest field select bit: the family ID.
pub const FIELD_FAMILY_ID: u64 = 1 << 2;
/// Guest field select bit: the launch measurement.
pub const FIELD_MEASUREMENT: u64 = 1 << 3;
/// Guest field select bit: the guest SVN.
pub const FIELD_GUEST_SVN: u64 = 1 << 4;
/// Guest field select bit: the TCB version.
pub const FIELD_TCB_VERSION: u64 = 1 << 5;

/// Which root key the secure processor derives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKey {
    /// The chip's VCEK root: the key is bound to this chip.
    Vcek,
    /// The VM root key (VMRK), for migration agents.
    Vmrk,
}

/// A `SNP_GET_DERIVED_KEY` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivedKeyRequest {
    /// The root key.
    pub root_key: RootKey,
    /// The guest fields mixed into the key (`FIELD_*` bits).
    pub guest_field_select: u64,
    /// The VMPL mixed in; must be at least the guest's current VMPL.
    pub vmpl: u32,
    /// The guest SVN mixed in when `FIELD_GUEST_SVN` is selected.
    pub guest_svn: u32,
    /// The TCB version mixed in when `FIELD_TCB_VERSION` is selected.
    pub tcb_version: u64,
}

impl DerivedKeyRequest {
    /// The request tessera seals with: the chip's VCEK root, mixed with the guest policy and
    /// the launch measurement, at VMPL 0. (TCB version and SVN are left out so that a
    /// firmware update does not make sealed state unreadable.)
    pub fn sealing() -> Self {
        DerivedKeyRequest {
            root_key: RootKey::Vcek,
            guest_field_select: FIELD_GUEST_POLICY | FIELD_MEASUREMENT,
            vmpl: 0,
            guest_svn: 0,
            tcb_version: 0,
        }
    }

    /// The request bytes as the kernel reads them (see the module docs).
    pub fn encode(&self) -> [u8; DERIVED_KEY_REQUEST_LEN] {
        let mut b = [0u8; DERIVED_KEY_REQUEST_LEN];
        let root: u32 = match self.root_key {
            RootKey::Vcek => 0,
            RootKey::Vmrk => 1,
        };
        b[0..4].copy_from_slice(&root.to_le_bytes());
        b[8..16].copy_from_slice(&self.guest_field_select.to_le_bytes());
        b[16..20].copy_from_slice(&self.vmpl.to_le_bytes());
        b[20..24].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[24..32].copy_from_slice(&self.tcb_version.to_le_bytes());
        b
    }
}

/// The ioctl argument: message version 1 and the two buffer addresses.
pub fn encode_guest_request(req_addr: u64, resp_addr: u64) -> [u8; GUEST_REQUEST_LEN] {
    let mut b = [0u8; GUEST_REQUEST_LEN];
    b[0] = 1;
    b[8..16].copy_from_slice(&req_addr.to_le_bytes());
    b[16..24].copy_from_slice(&resp_addr.to_le_bytes());
    b
}

/// Reads the key out of a derived-key response; a non-zero status is an error.
pub fn parse_response(
    resp: &[u8; DERIVED_KEY_RESPONSE_LEN],
) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    let status = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]);
    if status != 0 {
        return Err(AttestError::DerivedKey(format!(
            "the secure processor refused the request with status {status:#x} (0x16: invalid parameters, e.g. a VMPL below the guest's own)"
        )));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&resp[32..64]);
    Ok(key)
}

/// Asks the secure processor for a derived key through [`SEV_GUEST_DEVICE`].
pub fn derived_key(req: &DerivedKeyRequest) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    derived_key_at(Path::new(SEV_GUEST_DEVICE), req)
}

/// [`derived_key`] through the device at `device`.
pub fn derived_key_at(
    device: &Path,
    req: &DerivedKeyRequest,
) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| {
            AttestError::DerivedKey(format!(
                "cannot open {}: {e}; an SEV-SNP sealing key needs the sev-guest driver inside an SEV-SNP guest (modprobe sev-guest), run as a user who may open the device",
                device.display()
            ))
        })?;
    ioctl_derived_key(&dev, req)
}

/// The sealing key of an enclave application inside an SEV-SNP guest: HKDF-SHA256 with the
/// secure processor's derived key ([`DerivedKeyRequest::sealing`]) as input key material and
/// the application measurement as info, so that another binary, model or enclave policy in
/// the same VM image derives another key. (Any software in that image can ask the secure
/// processor for the same derived key, so this separates applications only inside an image
/// that runs nothing else.)
pub fn sealing_key(app_measurement: &[u8]) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    let root = derived_key(&DerivedKeyRequest::sealing())?;
    Ok(sealing_key_from(&root, app_measurement))
}

/// The HKDF step of [`sealing_key`].
pub fn sealing_key_from(derived: &[u8; 32], app_measurement: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"tessera-snp-seal-v1"), derived);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    if hk.expand(app_measurement, &mut okm[..]).is_err() {
        unreachable!("HKDF-SHA256 expand of 32 bytes");
    }
    okm
}

/// 8-byte aligned buffers, as the kernel structures are.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

#[cfg(target_os = "linux")]
fn ioctl_derived_key(
    dev: &std::fs::File,
    req: &DerivedKeyRequest,
) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    use std::os::fd::AsRawFd;
    #[cfg(target_env = "musl")]
    type Request = std::ffi::c_int;
    #[cfg(not(target_env = "musl"))]
    type Request = std::ffi::c_ulong;
    unsafe extern "C" {
        fn ioctl(fd: std::ffi::c_int, request: Request, ...) -> std::ffi::c_int;
    }
    let request = Aligned(req.encode());
    let mut response = Aligned([0u8; DERIVED_KEY_RESPONSE_LEN]);
    let mut arg = Aligned(encode_guest_request(
        request.0.as_ptr() as u64,
        response.0.as_mut_ptr() as u64,
    ));
    // SAFETY: `arg` is a `struct snp_guest_request_ioctl` (see the module docs) whose two
    // addresses point at live buffers of the sizes the kernel reads (40 ≥ 32 bytes) and writes
    // (64 bytes); all three outlive the call, and the kernel writes only `arg` and `response`.
    let rc = unsafe {
        ioctl(
            dev.as_raw_fd(),
            SNP_GET_DERIVED_KEY as Request,
            arg.0.as_mut_ptr(),
        )
    };
    if rc != 0 {
        let os = std::io::Error::last_os_error();
        response.0.zeroize();
        let exitinfo2 = u64::from_le_bytes(arg.0[24..32].try_into().unwrap_or([0; 8]));
        return Err(AttestError::DerivedKey(format!(
            "SNP_GET_DERIVED_KEY failed: {os} (firmware error {:#x}, VMM error {:#x})",
            exitinfo2 & 0xffff_ffff,
            exitinfo2 >> 32
        )));
    }
    let key = parse_response(&response.0);
    response.0.zeroize();
    key
}

#[cfg(not(target_os = "linux"))]
fn ioctl_derived_key(
    _dev: &std::fs::File,
    _req: &DerivedKeyRequest,
) -> Result<Zeroizing<[u8; 32]>, AttestError> {
    Err(AttestError::DerivedKey(
        "SEV-SNP derived keys need the Linux sev-guest driver".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_number_is_iowr_s_1_of_32_bytes() {
        assert_eq!(SNP_GET_DERIVED_KEY, 0xC020_5301);
    }

    #[test]
    fn sealing_request_encodes_as_the_kernel_struct() {
        let b = DerivedKeyRequest::sealing().encode();
        let mut want = [0u8; DERIVED_KEY_REQUEST_LEN];
        want[8] = 0b1001; // guest policy | measurement
        assert_eq!(b, want);
        let b = DerivedKeyRequest {
            root_key: RootKey::Vmrk,
            guest_field_select: FIELD_TCB_VERSION | FIELD_GUEST_SVN | FIELD_IMAGE_ID,
            vmpl: 2,
            guest_svn: 0x0102_0304,
            tcb_version: 0x1122_3344_5566_7788,
        }
        .encode();
        assert_eq!(&b[0..4], &[1, 0, 0, 0], "root_key_select");
        assert_eq!(&b[4..8], &[0; 4], "reserved");
        assert_eq!(
            &b[8..16],
            &[0x32, 0, 0, 0, 0, 0, 0, 0],
            "guest_field_select"
        );
        assert_eq!(&b[16..20], &[2, 0, 0, 0], "vmpl");
        assert_eq!(&b[20..24], &[4, 3, 2, 1], "guest_svn");
        assert_eq!(
            &b[24..32],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
            "tcb_version"
        );
        assert_eq!(&b[32..], &[0; 8], "launch_mit_vector left zero");
    }

    #[test]
    fn guest_request_layout() {
        let b = encode_guest_request(0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00);
        assert_eq!(b[0], 1, "msg_version");
        assert_eq!(&b[1..8], &[0; 7], "padding");
        assert_eq!(
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
        assert_eq!(
            u64::from_le_bytes(b[16..24].try_into().unwrap()),
            0x99aa_bbcc_ddee_ff00
        );
        assert_eq!(&b[24..], &[0; 8], "exitinfo2 starts zero");
    }

    #[test]
    fn response_status_and_key() {
        let mut r = [0u8; DERIVED_KEY_RESPONSE_LEN];
        for (i, b) in r[32..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let k = parse_response(&r).unwrap();
        assert_eq!(k[0], 0);
        assert_eq!(k[31], 31);
        r[0] = 0x16;
        let e = parse_response(&r).unwrap_err();
        assert!(
            matches!(e, AttestError::DerivedKey(ref m) if m.contains("0x16")),
            "{e}"
        );
    }

    #[test]
    fn absent_device_is_a_clear_error() {
        let e = derived_key_at(
            Path::new("/nonexistent/sev-guest"),
            &DerivedKeyRequest::sealing(),
        )
        .unwrap_err();
        assert!(
            matches!(e, AttestError::DerivedKey(ref m) if m.contains("/nonexistent/sev-guest") && m.contains("sev-guest driver")),
            "{e}"
        );
    }
}
