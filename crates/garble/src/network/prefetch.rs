//! Reading the garbled material ahead of the evaluation.
//!
//! Reading a chunk (copying it out of the file or socket, its checksum, the check that every
//! row is a label) is sequential work. Done on the evaluating thread it leaves the other cores
//! idle while it runs — about a fifth of the evaluation's CPU time on a 2-core machine. A
//! reader thread instead keeps up to [`DEPTH`] checked chunks ready while the evaluation runs
//! the previous ones, and takes back the row arrays the evaluation is done with, so memory stays
//! bounded by `DEPTH + 2` chunks.
//!
//! Nothing changes in what is checked or in which error is reported: the chunks arrive in
//! stream order, an error ends the reading and reaches the evaluation exactly where it would
//! have been met reading inline, and after the end marker or an error the feed answers as
//! [`StreamReader::next_chunk`] does.

use std::io::Read;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use crate::GarbleError;
use crate::store::{Chunk, StreamReader};

/// Chunks read ahead of the evaluation.
pub(super) const DEPTH: usize = 2;

type Item = Result<Option<Chunk>, GarbleError>;

/// The evaluation's end of the reader thread.
pub(super) struct Feed {
    chunks: Receiver<Item>,
    spare: Sender<Vec<u128>>,
    done: bool,
    failed: bool,
}

impl Feed {
    /// The next chunk, as [`StreamReader::next_chunk`] would return it.
    pub(super) fn next_chunk(&mut self) -> Item {
        if self.failed {
            return Err(GarbleError::StreamCorrupt(
                "an earlier error ended this stream".into(),
            ));
        }
        if self.done {
            return Ok(None);
        }
        let r = self.chunks.recv().unwrap_or_else(|_| {
            Err(GarbleError::Internal(
                "the material reader stopped without a result",
            ))
        });
        match &r {
            Err(_) => self.failed = true,
            Ok(None) => self.done = true,
            Ok(Some(_)) => {}
        }
        r
    }

    /// Hands a row array back to the reader for a later chunk.
    pub(super) fn recycle(&mut self, rows: Vec<u128>) {
        // The reader may have stopped (end or error): the array is then simply dropped.
        let _ = self.spare.send(rows);
    }
}

/// The reader thread's loop: chunk after chunk until the end marker, an error, or the
/// evaluation hanging up.
fn read_ahead<R: Read>(
    mut reader: StreamReader<R>,
    out: SyncSender<Item>,
    spare: Receiver<Vec<u128>>,
) {
    loop {
        while let Ok(rows) = spare.try_recv() {
            reader.recycle(rows);
        }
        let r = reader.next_chunk();
        let last = !matches!(r, Ok(Some(_)));
        if out.send(r).is_err() || last {
            return;
        }
    }
}

/// Runs `f` with a [`Feed`] of `reader`'s chunks read by a second thread. The thread ends with
/// the stream (end marker or error) or when `f` returns; `with_feed` returns after it has ended
/// (so a reader that blocks forever blocks here too: give it a finite source, a file or a
/// buffer).
pub(super) fn with_feed<R: Read + Send, T>(
    reader: StreamReader<R>,
    f: impl FnOnce(&mut Feed) -> T,
) -> T {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel(DEPTH);
        let (spare_tx, spare_rx) = channel();
        s.spawn(move || read_ahead(reader, tx, spare_rx));
        let mut feed = Feed {
            chunks: rx,
            spare: spare_tx,
            done: false,
            failed: false,
        };
        let out = f(&mut feed);
        // Hang up: a reader blocked on a full queue wakes with an error and stops.
        drop(feed);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProjectionBatch;
    use crate::modulus::Modulus;
    use crate::store::{MaterialKind, StreamHeader, StreamWriter};

    /// A stream of `n` small tables chunks (gates 0, 3, 6, …), each of its own chunk.
    fn stream(n: usize) -> Vec<u8> {
        let header = StreamHeader {
            kind: MaterialKind::Evaluation,
            garbling_id: [7; 16],
            first_gate: 0,
        };
        let (p, q) = (Modulus::new(3).expect("3"), Modulus::new(5).expect("5"));
        let mut w = StreamWriter::with_max_chunk(Vec::new(), &header, 4096).expect("writer");
        for i in 0..n {
            let rows = (0..6).map(|r| (i * 6 + r) as u128).collect();
            let b = ProjectionBatch::new(3 * i as u64, p, q, 3, rows).expect("batch");
            w.write_batch(&b).expect("write");
        }
        w.finish().expect("finish")
    }

    fn bases(feed: &mut Feed) -> Result<Vec<u64>, GarbleError> {
        let mut out = Vec::new();
        while let Some(c) = feed.next_chunk()? {
            match c {
                Chunk::Tables(b) => {
                    out.push(b.base_gate());
                    feed.recycle(b.into_rows());
                }
                Chunk::Labels(_) => return Err(GarbleError::Internal("labels")),
            }
        }
        Ok(out)
    }

    #[test]
    fn chunks_arrive_in_order_and_the_end_repeats() {
        let bytes = stream(9);
        let reader = StreamReader::with_max_chunk(bytes.as_slice(), 4096).expect("reader");
        let (got, after) = with_feed(reader, |f| (bases(f), f.next_chunk()));
        assert_eq!(got, Ok((0..9).map(|i| 3 * i).collect::<Vec<u64>>()));
        assert!(matches!(after, Ok(None)));
    }

    #[test]
    fn an_error_arrives_where_inline_reading_meets_it_and_ends_the_feed() {
        let bytes = stream(9);
        let cut = &bytes[..bytes.len() / 2];
        let inline = {
            let mut r = StreamReader::with_max_chunk(cut, 4096).expect("reader");
            let mut n = 0;
            let e = loop {
                match r.next_chunk() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => panic!("a cut stream ended cleanly"),
                    Err(e) => break e,
                }
            };
            (n, e)
        };
        let reader = StreamReader::with_max_chunk(cut, 4096).expect("reader");
        let (n, e, again) = with_feed(reader, |f| {
            let mut n = 0;
            loop {
                match f.next_chunk() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => panic!("a cut stream ended cleanly"),
                    Err(e) => return (n, e, f.next_chunk()),
                }
            }
        });
        assert_eq!((n, e), inline);
        assert!(matches!(again, Err(GarbleError::StreamCorrupt(m)) if m.contains("earlier error")));
    }

    #[test]
    fn stopping_early_ends_the_reader() {
        // Far more chunks than the queue holds: the reader must notice the hang-up.
        let bytes = stream(200);
        let reader = StreamReader::with_max_chunk(bytes.as_slice(), 4096).expect("reader");
        let first = with_feed(reader, |f| f.next_chunk().map(|c| c.is_some()));
        assert_eq!(first, Ok(true));
    }
}
