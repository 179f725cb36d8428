//! Work dispatch between enclaves and workers over NATS JetStream, behind a blocking API.
//!
//! A [`WorkQueue`] is a JetStream stream with work-queue retention (a message is removed once
//! acknowledged) and one durable pull consumer: every process that pulls from it shares the
//! work, each message goes to one of them at a time, and a message not acknowledged within
//! `ack_wait` — its worker died, hung or lost its connection — is delivered again to whoever
//! pulls next, up to `max_deliver` times. [`Queue::publish`] returns once the server has stored
//! the message.
//!
//! # Threat model
//!
//! The queue server is untrusted for confidentiality and integrity: callers send nothing secret
//! through it (garbling slots, public input labels of a single-use garbling, output labels) and
//! check what comes back themselves (the garbler's output check). It can drop or delay work
//! (denial of service, out of scope) and redeliver it, so a consumer must treat every message
//! as possibly seen before: the gc enclave accepts one result per slot and refuses any other.

#![warn(missing_docs)]

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// Everything that can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No NATS server at the URL, or the connection failed.
    #[error("NATS at {url}: {reason} (is nats-server running with JetStream, -js?)")]
    Connect {
        /// The server.
        url: String,
        /// What failed.
        reason: String,
    },
    /// JetStream refused or failed an operation.
    #[error(
        "NATS JetStream: {op}: {reason} (is the server reachable and running with JetStream, -js?)"
    )]
    JetStream {
        /// What was being done.
        op: String,
        /// What failed.
        reason: String,
    },
}

fn js_err(op: impl Into<String>, e: impl std::fmt::Display) -> QueueError {
    QueueError::JetStream {
        op: op.into(),
        reason: e.to_string(),
    }
}

/// A connection to a NATS server with JetStream (cheap to clone: clones share it).
#[derive(Clone)]
pub struct Queue {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    url: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({})", self.inner.url)
    }
}

/// How a work queue redelivers.
#[derive(Clone, Debug)]
pub struct WorkOptions {
    /// A message not acknowledged this long after delivery is delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one message at most (then it stays unacknowledged and is dropped from
    /// delivery).
    pub max_deliver: i64,
}

impl Default for WorkOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
        }
    }
}

impl Queue {
    /// Connect to `url` (`nats://host:port`).
    pub fn connect(url: &str) -> Result<Self, QueueError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tessera-queue")
            .enable_all()
            .build()
            .map_err(|e| QueueError::Connect {
                url: url.into(),
                reason: format!("starting the I/O runtime: {e}"),
            })?;
        let client = rt
            .block_on(async_nats::ConnectOptions::new().connect(url))
            .map_err(|e| QueueError::Connect {
                url: url.into(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client);
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                rt,
                js,
                url: url.into(),
            }),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Open (creating if missing) the work-queue stream `stream` over `subject`, and its
    /// durable consumer `consumer` (filtered to `subject`).
    pub fn work_queue(
        &self,
        stream_name: &str,
        subject: &str,
        consumer: &str,
        opts: &WorkOptions,
    ) -> Result<WorkQueue, QueueError> {
        let s = self
            .inner
            .rt
            .block_on(self.inner.js.get_or_create_stream(stream::Config {
                name: stream_name.into(),
                subjects: vec![subject.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            }))
            .map_err(|e| js_err(format!("creating stream {stream_name}"), e))?;
        let c = self
            .inner
            .rt
            .block_on(s.get_or_create_consumer(
                consumer,
                pull::Config {
                    durable_name: Some(consumer.into()),
                    filter_subject: subject.into(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: opts.ack_wait,
                    max_deliver: opts.max_deliver,
                    ..Default::default()
                },
            ))
            .map_err(|e| js_err(format!("creating consumer {consumer} on {stream_name}"), e))?;
        Ok(WorkQueue {
            q: self.clone(),
            consumer: c,
        })
    }

    /// Publish `payload` on `subject`; returns once JetStream has stored it.
    pub fn publish(&self, subject: &str, payload: Vec<u8>) -> Result<(), QueueError> {
        self.inner
            .rt
            .block_on(async {
                self.inner
                    .js
                    .publish(subject.to_string(), Bytes::from(payload))
                    .await?
                    .await
                    .map(|_| ())
            })
            .map_err(|e| js_err(format!("publishing on {subject}"), e))
    }

    /// Delete a stream (tests, and clearing a namespace's queues).
    pub fn delete_stream(&self, stream_name: &str) -> Result<(), QueueError> {
        self.inner
            .rt
            .block_on(self.inner.js.delete_stream(stream_name))
            .map(|_| ())
            .map_err(|e| js_err(format!("deleting stream {stream_name}"), e))
    }
}

/// A durable pull consumer of a work-queue stream.
pub struct WorkQueue {
    q: Queue,
    consumer: jetstream::consumer::PullConsumer,
}

impl WorkQueue {
    /// The next message, waiting up to `wait` for one (at least 10 ms); `None` when none came.
    pub fn next(&self, wait: Duration) -> Result<Option<Job>, QueueError> {
        let wait = wait.max(Duration::from_millis(10));
        let msg = self.q.inner.rt.block_on(async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| js_err("pulling work", e))?;
            match batch.next().await {
                Some(Ok(m)) => Ok(Some(m)),
                Some(Err(e)) => Err(js_err("pulling work", e)),
                None => Ok(None),
            }
        })?;
        Ok(msg.map(|m| Job {
            q: self.q.clone(),
            msg: m,
        }))
    }
}

/// One delivered message: acknowledge it when its work is done, or let it go (drop it without
/// acknowledging) and it is delivered again after the stream's `ack_wait`.
pub struct Job {
    q: Queue,
    msg: jetstream::Message,
}

impl Job {
    /// The message's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.msg.payload
    }

    /// How many times this message has been delivered (1 the first time).
    pub fn delivered(&self) -> i64 {
        self.msg.info().map_or(1, |i| i.delivered)
    }

    /// The work is done: the stream removes the message.
    pub fn ack(self) -> Result<(), QueueError> {
        self.q
            .inner
            .rt
            .block_on(self.msg.double_ack())
            .map_err(|e| js_err("acknowledging work", e))
    }

    /// The work is still going on: extend the acknowledgement deadline by another `ack_wait`.
    pub fn in_progress(&self) -> Result<(), QueueError> {
        self.q
            .inner
            .rt
            .block_on(self.msg.ack_with(jetstream::AckKind::Progress))
            .map_err(|e| js_err("extending work", e))
    }

    /// Give the work back at once for another consumer.
    pub fn nak(self) -> Result<(), QueueError> {
        self.q
            .inner
            .rt
            .block_on(self.msg.ack_with(jetstream::AckKind::Nak(None)))
            .map_err(|e| js_err("returning work", e))
    }
}
