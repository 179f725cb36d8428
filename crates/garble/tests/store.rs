//! Garbled material on disk ([`tessera_garble::store`]): round trips through the stream,
//! chunk-by-chunk evaluation, and every truncation and single-byte corruption of a small stream
//! reported as an error.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::io::Read;
use tessera_garble::store::{CHUNK_HEADER_LEN, HEADER_LEN, MAGIC, VERSION};
use tessera_garble::{
    Chunk, Evaluator, GarbleError, Garbler, Label, LabelTensor, MaterialKind, Modulus,
    ProjectionBatch, Seed, StreamHeader, StreamReader, StreamWriter,
};

fn m(q: u64) -> Modulus {
    Modulus::new(q).expect("prime")
}

fn header(kind: MaterialKind, first_gate: u64) -> StreamHeader {
    StreamHeader {
        kind,
        garbling_id: [7; 16],
        first_gate,
    }
}

/// A batch of `count` gates mod p → q with random (valid) rows.
fn random_batch(
    rng: &mut ChaCha20Rng,
    base: u64,
    p: Modulus,
    q: Modulus,
    count: usize,
) -> ProjectionBatch {
    let len = count * (usize::from(p.q()) - 1);
    let rows: Vec<u128> = (0..len)
        .map(|_| {
            let digits: Vec<u8> = (0..q.digits())
                .map(|_| rng.random_range(0..q.q()))
                .collect();
            Label::from_digits(q, &digits)
                .expect("digits below q")
                .to_block()
        })
        .collect();
    ProjectionBatch::new(base, p, q, count, rows).expect("valid batch")
}

/// Reads every chunk of a stream; the error of the first failure.
fn read_all(bytes: &[u8], max_chunk: u32) -> Result<Vec<Chunk>, GarbleError> {
    let reader = StreamReader::with_max_chunk(bytes, max_chunk)?;
    reader.collect()
}

/// Concatenates consecutive table pieces back into batches (adjacent pieces with the same moduli
/// and consecutive gate numbers merge).
fn merge_tables(chunks: &[Chunk]) -> Vec<ProjectionBatch> {
    let mut out: Vec<ProjectionBatch> = Vec::new();
    for c in chunks {
        let Chunk::Tables(b) = c else { continue };
        if let Some(last) = out.last_mut()
            && last.input() == b.input()
            && last.output() == b.output()
            && last.base_gate() + last.len() as u64 == b.base_gate()
        {
            let mut rows = last.as_blocks().to_vec();
            rows.extend_from_slice(b.as_blocks());
            *last = ProjectionBatch::new(
                last.base_gate(),
                last.input(),
                last.output(),
                last.len() + b.len(),
                rows,
            )
            .expect("merged");
            continue;
        }
        out.push(b.clone());
    }
    out
}

/// A small stream of two batches and a tensor, several chunks each.
fn small_stream() -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut w = StreamWriter::with_max_chunk(Vec::new(), &header(MaterialKind::Evaluation, 10), 80)
        .expect("writer");
    w.write_batch(&random_batch(&mut rng, 10, m(3), m(2), 5))
        .expect("batch");
    w.write_labels(&LabelTensor::random(m(5), &[2, 3], &mut rng).expect("tensor"))
        .expect("labels");
    w.write_batch(&random_batch(&mut rng, 20, m(2), m(7), 3))
        .expect("batch");
    w.finish().expect("finish")
}

fn modulus() -> impl Strategy<Value = Modulus> {
    prop::sample::select(vec![2u64, 3, 5, 7, 11, 13, 17, 23, 251]).prop_map(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batches_and_tensors_round_trip(
        p in modulus(),
        q in modulus(),
        count in 0usize..40,
        dims in prop::collection::vec(0usize..5, 0..4),
        max_chunk in prop::sample::select(vec![4096u32, 8192, 1 << 20]),
        seed: u64,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let a = random_batch(&mut rng, 100, p, q, count);
        let b = random_batch(&mut rng, 100 + count as u64 + 3, q, p, count / 2 + 1);
        let t = LabelTensor::random(q, &dims, &mut rng).expect("tensor");
        let mut w = StreamWriter::with_max_chunk(Vec::new(), &header(MaterialKind::Evaluation, 100), max_chunk)
            .expect("writer");
        w.write_batch(&a).expect("a");
        w.write_labels(&t).expect("t");
        w.write_batch(&b).expect("b");
        let totals = w.totals();
        let bytes = w.finish().expect("finish");

        let mut r = StreamReader::with_max_chunk(&bytes[..], max_chunk).expect("reader");
        prop_assert_eq!(r.header(), &header(MaterialKind::Evaluation, 100));
        let mut chunks = Vec::new();
        // The batch `a` comes first; then the tensor, read whole; then `b`.
        loop {
            match r.next_chunk().expect("chunk") {
                Some(Chunk::Tables(x)) => chunks.push(Chunk::Tables(x)),
                Some(Chunk::Labels(part)) => {
                    prop_assert_eq!(part.first, 0);
                    let mut digits = part.labels.as_digits().to_vec();
                    let mut last = part.is_last();
                    while !last {
                        let Some(Chunk::Labels(next)) = r.next_chunk().expect("part") else {
                            return Err(TestCaseError::fail("tensor parts interrupted"));
                        };
                        digits.extend_from_slice(next.labels.as_digits());
                        last = next.is_last();
                    }
                    let back = LabelTensor::from_digits(q, &dims, digits).expect("tensor");
                    prop_assert_eq!(&back, &t);
                }
                None => break,
            }
        }
        prop_assert_eq!(r.totals(), totals);
        prop_assert!(r.next_chunk().expect("after end").is_none());
        let merged = merge_tables(&chunks);
        // `b` does not start where `a` ends, so the pieces merge back into exactly `a` and `b`
        // (an empty `a` is written as one empty piece).
        prop_assert_eq!(merged, vec![a, b]);
    }

    #[test]
    fn read_labels_reassembles_a_tensor(
        q in modulus(),
        dims in prop::collection::vec(0usize..6, 0..4),
        seed: u64,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let t = LabelTensor::random(q, &dims, &mut rng).expect("tensor");
        let u = LabelTensor::random(m(3), &[3], &mut rng).expect("tensor");
        let mut w = StreamWriter::with_max_chunk(Vec::new(), &header(MaterialKind::Labels, 0), 100)
            .expect("writer");
        w.write_labels(&t).expect("t");
        w.write_labels(&u).expect("u");
        let bytes = w.finish().expect("finish");
        let mut r = StreamReader::new(&bytes[..]).expect("reader");
        prop_assert_eq!(r.read_labels().expect("t"), t);
        prop_assert_eq!(r.read_labels().expect("u"), u);
        prop_assert!(r.read_labels().is_err());
    }
}

#[test]
fn evaluator_consumes_a_garbled_batch_one_chunk_at_a_time() {
    let (p, q) = (m(5), m(3));
    let phi: Vec<u8> = (0..5).map(|x| (x * x % 3) as u8).collect();
    let mut garbler = Garbler::new(&Seed::from_bytes([3; 32]));
    let a0 = garbler.input_tensor(p, &[300]).expect("inputs");
    let (tables, c0) = garbler.projection_batch(&a0, q, &phi).expect("garble");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let values: Vec<i64> = (0..300).map(|_| rng.random_range(0..5)).collect();
    let input = garbler.encode_tensor(&a0, &values).expect("encode");

    let mut w = StreamWriter::with_max_chunk(
        Vec::new(),
        &StreamHeader {
            kind: MaterialKind::Evaluation,
            garbling_id: garbler.hash_key(),
            first_gate: tables.base_gate(),
        },
        1024,
    )
    .expect("writer");
    w.write_batch(&tables).expect("tables");
    let bytes = w.finish().expect("finish");

    let mut r = StreamReader::with_max_chunk(&bytes[..], 1024).expect("reader");
    let mut evaluator = Evaluator::new(r.header().garbling_id);
    let n = p.digits();
    let mut out_digits = Vec::new();
    let mut pieces = 0;
    while let Some(chunk) = r.next_chunk().expect("chunk") {
        let Chunk::Tables(piece) = chunk else {
            panic!("only tables were written")
        };
        assert!(piece.len() * 4 * 16 <= 1024);
        let start = usize::try_from(piece.base_gate() - tables.base_gate()).expect("offset");
        let slice = input.as_digits()[start * n..(start + piece.len()) * n].to_vec();
        let a = LabelTensor::from_digits(p, &[piece.len()], slice).expect("slice");
        let out = evaluator.projection_batch(&piece, &a).expect("evaluate");
        out_digits.extend_from_slice(out.as_digits());
        pieces += 1;
    }
    assert!(pieces > 1, "the batch must span several chunks");
    let out = LabelTensor::from_digits(q, &[300], out_digits).expect("out");
    let whole = Evaluator::new(garbler.hash_key())
        .projection_batch(&tables, &input)
        .expect("whole");
    assert_eq!(out, whole);
    for (i, &x) in values.iter().enumerate() {
        let got = garbler
            .decode(&c0.label(i).expect("zero"), &out.label(i).expect("label"))
            .expect("valid");
        assert_eq!(got, phi[x as usize]);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_stream();
    assert!(read_all(&bytes, 80).is_ok());
    for len in 0..bytes.len() {
        match read_all(&bytes[..len], 80) {
            Err(GarbleError::StreamTruncated(_)) => {}
            other => panic!("truncated to {len} of {} bytes: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn every_single_byte_corruption_is_an_error() {
    let bytes = small_stream();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            assert!(
                read_all(&bad, 80).is_err(),
                "byte {i} ^ {flip:#x} was not detected"
            );
        }
    }
    // Bytes after the end marker.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        read_all(&long, 80),
        Err(GarbleError::StreamCorrupt(_))
    ));
}

#[test]
fn wrong_magic_and_version_are_clear_errors() {
    let bytes = small_stream();
    let mut bad = bytes.clone();
    bad[0] = b'P';
    let Err(GarbleError::StreamFormat(msg)) = read_all(&bad, 80) else {
        panic!("wrong magic accepted")
    };
    assert!(msg.contains("magic"), "{msg}");

    let mut bad = bytes.clone();
    bad[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let Err(GarbleError::StreamFormat(msg)) = read_all(&bad, 80) else {
        panic!("wrong version accepted")
    };
    assert!(msg.contains("version 2"), "{msg}");

    assert!(matches!(
        read_all(b"", 80),
        Err(GarbleError::StreamTruncated(_))
    ));
    assert_eq!(&bytes[..8], &MAGIC);
}

/// A reader that counts what is read from it.
struct Counting<'a> {
    inner: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

#[test]
fn an_oversized_length_field_is_refused_before_reading_the_payload() {
    let bytes = small_stream();
    // The first chunk's length field, set to 4 GiB − 1 (its checksum is not even looked at).
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut src = Counting {
        inner: &bad,
        read: 0,
    };
    let mut r = StreamReader::new(&mut src).expect("header");
    match r.next_chunk() {
        Err(GarbleError::ChunkTooLarge { len, max }) => {
            assert_eq!(len, u64::from(u32::MAX));
            // The header declared 80: the reader's limit is the smaller of the two.
            assert_eq!(max, 80);
        }
        other => panic!("{other:?}"),
    }
    // Errors are sticky: the stream cannot be resumed past a failure.
    assert!(r.next_chunk().is_err());
    drop(r);
    assert_eq!(src.read, HEADER_LEN + CHUNK_HEADER_LEN);

    // A reader with a lower limit than the writer's refuses the writer's chunks.
    assert!(matches!(
        read_all(&bytes, 64),
        Err(GarbleError::ChunkTooLarge { max: 64, .. })
    ));
}

#[test]
fn writer_misuse_is_an_error() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let h = header(MaterialKind::Evaluation, 10);
    assert!(StreamWriter::with_max_chunk(Vec::new(), &h, 16).is_err());
    let mut w = StreamWriter::with_max_chunk(Vec::new(), &h, 1000).expect("writer");
    // Below first_gate, then overlapping.
    assert!(
        w.write_batch(&random_batch(&mut rng, 9, m(3), m(3), 1))
            .is_err()
    );
    w.write_batch(&random_batch(&mut rng, 10, m(3), m(3), 4))
        .expect("batch");
    assert!(
        w.write_batch(&random_batch(&mut rng, 13, m(3), m(3), 1))
            .is_err()
    );
    // One gate mod 251 needs 250 rows: more than 1000 bytes.
    assert!(matches!(
        w.write_batch(&random_batch(&mut rng, 20, m(251), m(2), 1)),
        Err(GarbleError::ChunkTooLarge { .. })
    ));
    // Tables into a labels-only stream.
    let mut w = StreamWriter::new(Vec::new(), &header(MaterialKind::Labels, 0)).expect("writer");
    assert!(
        w.write_batch(&random_batch(&mut rng, 0, m(3), m(3), 1))
            .is_err()
    );
}

#[test]
fn a_stream_without_its_end_marker_reads_as_truncated() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::new(&mut out, &header(MaterialKind::Evaluation, 0)).expect("w");
        w.write_batch(&random_batch(&mut rng, 0, m(3), m(5), 4))
            .expect("batch");
        // Dropped without finish().
    }
    let mut r = StreamReader::new(&out[..]).expect("reader");
    assert!(matches!(r.next_chunk(), Ok(Some(Chunk::Tables(_)))));
    assert!(matches!(
        r.next_chunk(),
        Err(GarbleError::StreamTruncated(_))
    ));
}

/// A stream header followed by raw chunks, each with a correct checksum: semantic checks behind
/// the CRC.
fn raw_stream(kind: u8, chunks: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
    raw_stream_max(kind, 1024, chunks)
}

/// [`raw_stream`] with the header declaring chunks of up to `max` bytes.
fn raw_stream_max(kind: u8, max: u32, chunks: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&max.to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for (tag, seq, payload) in chunks {
        let mut c = vec![*tag, 0, 0, 0];
        c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(&seq.to_le_bytes());
        c.extend_from_slice(payload);
        let crc = crc32(&c);
        c.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&c);
    }
    out
}

/// CRC-32 (IEEE), bit by bit: an independent check of the format's checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn tables_payload(base: u64, p: u8, q: u8, count: u32, blocks: &[u128]) -> Vec<u8> {
    let mut v = base.to_le_bytes().to_vec();
    v.extend_from_slice(&[p, q, 0, 0]);
    v.extend_from_slice(&count.to_le_bytes());
    for b in blocks {
        v.extend_from_slice(&b.to_le_bytes());
    }
    v
}

fn end_payload(chunks: u64, gates: u64, labels: u64) -> Vec<u8> {
    [chunks, gates, labels]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn checksummed_but_inconsistent_chunks_are_errors() {
    let corrupt_with = |bytes: Vec<u8>, needle: &str| match read_all(&bytes, 1024) {
        Err(GarbleError::StreamCorrupt(msg)) => assert!(msg.contains(needle), "{msg}"),
        other => panic!("expected corruption about {needle:?}: {other:?}"),
    };
    // A well-formed raw stream reads (the format's CRC is the standard CRC-32).
    let good = raw_stream(
        1,
        &[
            (1, 0, tables_payload(0, 3, 3, 1, &[5, 7])),
            (0xFF, 1, end_payload(1, 1, 0)),
        ],
    );
    assert_eq!(read_all(&good, 1024).expect("good").len(), 1);
    // A block that is no label mod 3 (≥ 3^80).
    corrupt_with(
        raw_stream(1, &[(1, 0, tables_payload(0, 3, 3, 1, &[5, u128::MAX]))]),
        "no label",
    );
    // The same far into a chunk of several MiB, which the reader checks piece by piece as the
    // rows arrive: the bad row is in a later piece than the first.
    let mut rows = vec![5u128; (1 << 19) + 2];
    if let Some(last) = rows.last_mut() {
        *last = u128::MAX;
    }
    let gates = (rows.len() / 2) as u32;
    let big = raw_stream_max(
        1,
        16 << 20,
        &[(1, 0, tables_payload(0, 3, 3, gates, &rows))],
    );
    match read_all(&big, 16 << 20) {
        Err(GarbleError::StreamCorrupt(msg)) => assert!(msg.contains("no label"), "{msg}"),
        other => panic!("expected a row out of range: {other:?}"),
    }
    // A count that disagrees with the rows held.
    corrupt_with(
        raw_stream(1, &[(1, 0, tables_payload(0, 3, 3, 2, &[5, 7]))]),
        "declares 2 gates",
    );
    // A composite modulus.
    corrupt_with(
        raw_stream(1, &[(1, 0, tables_payload(0, 4, 3, 1, &[5, 7, 9]))]),
        "bad modulus",
    );
    // Repeated gate numbers.
    corrupt_with(
        raw_stream(
            1,
            &[
                (1, 0, tables_payload(0, 3, 3, 1, &[5, 7])),
                (1, 1, tables_payload(0, 3, 3, 1, &[5, 7])),
            ],
        ),
        "repeat",
    );
    // A chunk out of sequence.
    corrupt_with(
        raw_stream(1, &[(1, 1, tables_payload(0, 3, 3, 1, &[5, 7]))]),
        "where chunk 0 belongs",
    );
    // Tables in a labels-only stream.
    corrupt_with(
        raw_stream(2, &[(1, 0, tables_payload(0, 3, 3, 1, &[5, 7]))]),
        "labels only",
    );
    // An unknown chunk kind.
    corrupt_with(raw_stream(1, &[(9, 0, vec![])]), "unknown kind 9");
    // An end marker whose totals disagree.
    corrupt_with(
        raw_stream(
            1,
            &[
                (1, 0, tables_payload(0, 3, 3, 1, &[5, 7])),
                (0xFF, 1, end_payload(1, 2, 0)),
            ],
        ),
        "end marker counts",
    );
    // A labels part that does not start a tensor.
    let mut part = vec![3, 1, 0, 0];
    part.extend_from_slice(&1u32.to_le_bytes());
    part.extend_from_slice(&1u64.to_le_bytes());
    part.extend_from_slice(&2u64.to_le_bytes());
    part.extend_from_slice(&5u128.to_le_bytes());
    corrupt_with(raw_stream(2, &[(2, 0, part)]), "none was started");
}
