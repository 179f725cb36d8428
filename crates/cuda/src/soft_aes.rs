//! AES-128 in the byte-wise form of the GPU kernel, in Rust: the host expands the key for the
//! kernel, and this twin (tested against the `aes` crate) pins down what the kernel computes.

/// The AES S-box.
pub const SBOX: [u8; 256] = {
    // Built at compile time from the multiplicative inverse in GF(2^8) and the affine map.
    let mut s = [0u8; 256];
    let mut p: u8 = 1;
    let mut q: u8 = 1;
    loop {
        // p ← p·3, q ← q / 3 (so q = p⁻¹).
        p = p ^ (p << 1) ^ (if p & 0x80 != 0 { 0x1b } else { 0 });
        q ^= q << 1;
        q ^= q << 2;
        q ^= q << 4;
        if q & 0x80 != 0 {
            q ^= 0x09;
        }
        let x = q ^ q.rotate_left(1) ^ q.rotate_left(2) ^ q.rotate_left(3) ^ q.rotate_left(4);
        s[p as usize] = x ^ 0x63;
        if p == 1 {
            break;
        }
    }
    s[0] = 0x63;
    s
};

fn xtime(b: u8) -> u8 {
    (b << 1) ^ if b & 0x80 != 0 { 0x1b } else { 0 }
}

/// The 11 round keys (176 bytes) of an AES-128 key.
pub fn expand_key(key: &[u8; 16]) -> [u8; 176] {
    let mut rk = [0u8; 176];
    rk[..16].copy_from_slice(key);
    let mut rcon = 1u8;
    for i in 4..44 {
        let mut t = [rk[4 * i - 4], rk[4 * i - 3], rk[4 * i - 2], rk[4 * i - 1]];
        if i % 4 == 0 {
            t = [
                SBOX[t[1] as usize] ^ rcon,
                SBOX[t[2] as usize],
                SBOX[t[3] as usize],
                SBOX[t[0] as usize],
            ];
            rcon = xtime(rcon);
        }
        for j in 0..4 {
            rk[4 * i + j] = rk[4 * (i - 4) + j] ^ t[j];
        }
    }
    rk
}

/// Encrypt one block with round keys `rk`, step for step as the `aes128_ecb` kernel does.
pub fn encrypt(rk: &[u8; 176], block: &[u8; 16]) -> [u8; 16] {
    let mut s = [0u8; 16];
    for i in 0..16 {
        s[i] = block[i] ^ rk[i];
    }
    for r in 1..=10 {
        let mut t = [0u8; 16];
        for c in 0..4 {
            for row in 0..4 {
                t[c * 4 + row] = SBOX[s[((c + row) % 4) * 4 + row] as usize];
            }
        }
        if r != 10 {
            for c in 0..4 {
                let (a0, a1, a2, a3) = (t[c * 4], t[c * 4 + 1], t[c * 4 + 2], t[c * 4 + 3]);
                let all = a0 ^ a1 ^ a2 ^ a3;
                t[c * 4] = a0 ^ all ^ xtime(a0 ^ a1);
                t[c * 4 + 1] = a1 ^ all ^ xtime(a1 ^ a2);
                t[c * 4 + 2] = a2 ^ all ^ xtime(a2 ^ a3);
                t[c * 4 + 3] = a3 ^ all ^ xtime(a3 ^ a0);
            }
        }
        for i in 0..16 {
            s[i] = t[i] ^ rk[r * 16 + i];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    use proptest::prelude::*;

    #[test]
    fn fips197_vector() {
        // FIPS-197 appendix C.1.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let ct = encrypt(&expand_key(&key), &pt);
        let want = [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ];
        assert_eq!(ct, want);
    }

    proptest! {
        #[test]
        fn matches_the_aes_crate(key in any::<[u8; 16]>(), pt in any::<[u8; 16]>()) {
            let c = aes::Aes128::new(&key.into());
            let mut b = aes::Block::from(pt);
            c.encrypt_block(&mut b);
            let ours = encrypt(&expand_key(&key), &pt);
            prop_assert_eq!(ours.as_slice(), b.as_slice());
        }
    }
}
