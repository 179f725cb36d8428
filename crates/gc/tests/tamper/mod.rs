//! Tampering with garbled material the way a malicious worker or store can: through the
//! documented chunk layout, fixing every CRC it breaks so that only the output check can stop it.

use tessera_garble::store::{CHUNK_HEADER_LEN, HEADER_LEN};

/// The CRC-32 that the documented layout puts after a chunk's header and payload.
pub fn fix_chunk_crc(stream: &mut [u8], chunk_at: usize, payload_len: usize) {
    let end = chunk_at + CHUNK_HEADER_LEN + payload_len;
    let crc = crc32fast::hash(&stream[chunk_at..end]);
    stream[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Walks the chunks of a material stream: (offset, tag, payload length).
pub fn chunks(stream: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + CHUNK_HEADER_LEN <= stream.len() {
        let tag = stream[at];
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, tag, len));
        if tag == 0xFF {
            break;
        }
        at += CHUNK_HEADER_LEN + len + 4;
    }
    out
}

/// Moves every row of the middle tables chunk by ±1 in Z_{q^n} (so the reader's range check on
/// rows still passes) and fixes its CRC.
pub fn tamper_tables(material: &mut [u8]) {
    let tables: Vec<_> = chunks(material).into_iter().filter(|c| c.1 == 1).collect();
    let (at, _, len) = tables[tables.len() / 2];
    let rows_at = at + CHUNK_HEADER_LEN + 16;
    let rows_end = at + CHUNK_HEADER_LEN + len;
    for row in material[rows_at..rows_end].chunks_exact_mut(16) {
        let v = u128::from_le_bytes(row.try_into().unwrap());
        let w = if v == 0 { 1 } else { v - 1 };
        row.copy_from_slice(&w.to_le_bytes());
    }
    fix_chunk_crc(material, at, len);
}
