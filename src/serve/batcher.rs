//! The system under test: a bounded queue, a dynamic batcher and workers in front of an
//! [`Engine`] (the model, or a simulated one in tests).
//!
//! A query's front stage (tokenising into windows) runs on the thread that submits it, as a
//! server's request handler would; its windows then wait in one queue. A worker takes the
//! oldest waiting window and the windows of the same run length behind it (up to
//! `max_batch`), waiting for more only until the oldest has waited `max_queue_delay`, and runs
//! them as one forward pass. Same run length only: every window is then run exactly as `eval`
//! runs it, so answers under load are the answers of `eval`, bit for bit, whatever the
//! batching (see [`crate::answer::LENGTH_BUCKET`]). A query is answered when its last window's
//! batch ends; its decoding runs on that worker. The queue is bounded in queries admitted and
//! not yet answered: past it, a query is refused at once ([`Rejected::QueueFull`]) and that
//! refusal is a result, never an unbounded wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::answer::{run_length, LogitRows};
use crate::squad::{DecodeConfig, Feature, FeatureConfig};

/// What a system under test does with a query, stage by stage.
pub trait Engine: Send + Sync + 'static {
    /// The front stage: a question and its context as windows.
    fn windows(
        &self,
        question: &str,
        context: &str,
        options: &QueryOptions,
    ) -> Result<Vec<Feature>>;
    /// One forward pass over windows of one run length; logits per window.
    fn forward(&self, windows: &[&Feature]) -> Result<LogitRows>;
    /// The answers from every window's logits (in the order [`Engine::windows`] gave them):
    /// best first, at least one, at most `options.top_k` (one when it is 0).
    fn decode(
        &self,
        question: &str,
        context: &str,
        windows: &[Feature],
        logits: LogitRows,
        options: &QueryOptions,
    ) -> Result<Vec<Answer>>;
}

/// How one query is windowed and decoded, where a client asks for other than the engine's
/// own settings (`None`: the engine's). Windows of any settings share batches: a batch holds
/// windows of one run length, whatever made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryOptions {
    pub features: Option<FeatureConfig>,
    pub decode: Option<DecodeConfig>,
    /// Answers wanted, best first; 0 and 1 both mean the best only.
    pub top_k: usize,
    /// Widen each answer to whole words, as transformers' QA pipeline does (`eval`, and
    /// `run_qa.py`, keep token boundaries).
    pub align_to_words: bool,
}

impl QueryOptions {
    /// Answers to return: at least one.
    pub fn answers(&self) -> usize {
        self.top_k.max(1)
    }
}

/// An answer: the span's text, its probability among the candidates, and where it lies in the
/// context (code points, end exclusive; `None` when no span was valid).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub score: f32,
    pub span: Option<(usize, usize)>,
}

/// How the batcher runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatcherConfig {
    /// Most windows per forward pass.
    pub max_batch: usize,
    /// How long the oldest waiting window may wait for a fuller batch.
    pub max_queue_delay: Duration,
    /// Queries admitted and not yet answered; past it a query is refused.
    pub queue_capacity: usize,
    /// Threads taking batches (each forward pass uses the whole compute pool).
    pub workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_queue_delay: Duration::from_millis(5),
            queue_capacity: 256,
            workers: 1,
        }
    }
}

/// Where a query's time went, from its arrival to its answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stages {
    /// Arrival (the time it was due) to the start of tokenising: the submitter's own delay.
    pub issue: Duration,
    pub tokenize: Duration,
    /// Enqueued to the start of its first window's forward pass.
    pub queue: Duration,
    /// Start of its first window's pass to the end of its last one's.
    pub model: Duration,
    pub decode: Duration,
    /// Windows the query became, and forward passes they rode in.
    pub windows: usize,
    pub batches: usize,
    /// Id of the batch its last window rode in, and that batch's windows.
    pub batch: u64,
    pub batch_windows: usize,
}

/// An answered query.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub answer: Answer,
    /// The next best answers, when more than one was asked for ([`QueryOptions::top_k`]).
    pub alternatives: Vec<Answer>,
    pub finished: Instant,
    /// `None` where the system under test does not say (a remote server).
    pub stages: Option<Stages>,
}

/// Why a query was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("queue full ({0} queries waiting)")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    Closed,
    #[error("{0}")]
    Invalid(String),
}

/// Called once per admitted query with its answer, or why it failed after admission (except
/// a query abandoned before it ran: see [`Submission::wanted`]).
pub type Reply = Box<dyn FnOnce(std::result::Result<Completion, String>) + Send>;

/// Whether the query's client still wants its answer.
pub type Wanted = Box<dyn Fn() -> bool + Send>;

/// A query to queue.
pub struct Submission {
    pub question: Arc<str>,
    pub context: Arc<str>,
    pub options: QueryOptions,
    /// When the query was due (latency counts from it).
    pub arrival: Instant,
    pub reply: Reply,
    /// Asked before each batch is formed: a query whose client went away (`false`) before
    /// any of its windows ran is dropped unanswered, its windows never run, so a client
    /// that disconnects costs no forward pass.
    pub wanted: Option<Wanted>,
}

/// One forward pass as the batcher ran it: what a server's metrics count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRecord {
    /// Windows in the batch, and their run length (tokens).
    pub windows: usize,
    pub length: usize,
    /// The forward pass's wall time.
    pub duration: Duration,
}

/// Told of every batch, on the worker that ran it (keep it cheap).
pub type BatchObserver = Arc<dyn Fn(&BatchRecord) + Send + Sync>;

/// The batching server: submit queries from any thread; [`Server::shutdown`] answers what
/// was admitted and stops the workers.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    config: BatcherConfig,
    observer: Option<BatchObserver>,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    pending: HashMap<u64, Pending>,
    next_query: u64,
    next_batch: u64,
    shutdown: bool,
    refused: u64,
    abandoned: u64,
}

/// A window waiting for a batch.
struct Waiting {
    query: u64,
    index: usize,
    length: usize,
    since: Instant,
}

/// A query admitted and not yet answered.
struct Pending {
    question: Arc<str>,
    context: Arc<str>,
    windows: Arc<Vec<Feature>>,
    starts: Vec<Vec<f32>>,
    ends: Vec<Vec<f32>>,
    remaining: usize,
    failed: Option<String>,
    options: QueryOptions,
    wanted: Option<Wanted>,
    issue: Duration,
    tokenize: Duration,
    enqueued: Instant,
    first_start: Option<Instant>,
    batches: usize,
    reply: Reply,
}

impl Server {
    /// Starts `config.workers` workers (at least one) over `engine`.
    pub fn start(engine: Arc<dyn Engine>, config: BatcherConfig) -> Self {
        Self::start_observed(engine, config, None)
    }

    /// As [`Server::start`], telling `observer` of every batch run.
    pub fn start_observed(
        engine: Arc<dyn Engine>,
        config: BatcherConfig,
        observer: Option<BatchObserver>,
    ) -> Self {
        let config = BatcherConfig {
            max_batch: config.max_batch.max(1),
            queue_capacity: config.queue_capacity.max(1),
            workers: config.workers.max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            engine,
            config,
            observer,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let workers = (0..config.workers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("batcher-{i}"))
                    .spawn(move || shared.work())
                    .expect("spawn a batcher worker")
            })
            .collect();
        Server { shared, workers }
    }

    pub fn config(&self) -> BatcherConfig {
        self.shared.config
    }

    /// Queries refused so far because the queue was full.
    pub fn refused(&self) -> u64 {
        self.shared.lock().refused
    }

    /// Queries dropped unanswered because their client went away before they ran.
    pub fn abandoned(&self) -> u64 {
        self.shared.lock().abandoned
    }

    /// Queries admitted and not yet answered, and windows waiting for a batch.
    pub fn waiting(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.pending.len(), st.queue.len())
    }

    /// Tokenises a query on this thread and queues its windows; `reply` gets the answer.
    /// `arrival` is when the query was due (latency counts from it). Refused at once when the
    /// queue is full, the server is closing, or the query cannot be tokenised.
    pub fn submit(
        &self,
        question: Arc<str>,
        context: Arc<str>,
        arrival: Instant,
        reply: Reply,
    ) -> std::result::Result<(), Rejected> {
        self.send(Submission {
            question,
            context,
            options: QueryOptions::default(),
            arrival,
            reply,
            wanted: None,
        })
    }

    /// As [`Server::submit`], with the query's own options and, where the client can go
    /// away, a way to tell.
    pub fn send(&self, query: Submission) -> std::result::Result<(), Rejected> {
        let Submission {
            question,
            context,
            options,
            arrival,
            reply,
            wanted,
        } = query;
        let begin = Instant::now();
        self.shared.admissible()?;
        let windows = self
            .shared
            .engine
            .windows(&question, &context, &options)
            .map_err(|e| Rejected::Invalid(format!("{e:#}")))?;
        if windows.is_empty() {
            return Err(Rejected::Invalid("the query became no window".into()));
        }
        let enqueued = Instant::now();
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(Rejected::Closed);
        }
        if st.pending.len() >= self.shared.config.queue_capacity {
            st.refused += 1;
            return Err(Rejected::QueueFull(st.pending.len()));
        }
        let id = st.next_query;
        st.next_query += 1;
        for (index, w) in windows.iter().enumerate() {
            st.queue.push_back(Waiting {
                query: id,
                index,
                length: run_length(w),
                since: enqueued,
            });
        }
        let n = windows.len();
        st.pending.insert(
            id,
            Pending {
                question,
                context,
                windows: Arc::new(windows),
                starts: vec![Vec::new(); n],
                ends: vec![Vec::new(); n],
                remaining: n,
                failed: None,
                options,
                wanted,
                issue: begin.saturating_duration_since(arrival),
                tokenize: enqueued - begin,
                enqueued,
                first_start: None,
                batches: 0,
                reply,
            },
        );
        drop(st);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Stops admitting, answers every admitted query, and joins the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A batch a worker took: its windows, by query and index.
struct Taken {
    id: u64,
    items: Vec<(u64, usize)>,
    windows: Vec<(Arc<Vec<Feature>>, usize)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked mid-batch leaves the state as consistent as any other
        // moment (every update is one statement under the lock): keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cheap check before tokenising: refuse early what would be refused after.
    fn admissible(&self) -> std::result::Result<(), Rejected> {
        let mut st = self.lock();
        if st.shutdown {
            return Err(Rejected::Closed);
        }
        if st.pending.len() >= self.config.queue_capacity {
            st.refused += 1;
            return Err(Rejected::QueueFull(st.pending.len()));
        }
        Ok(())
    }

    fn work(&self) {
        let mut st = self.lock();
        loop {
            drop_abandoned(&mut st);
            let Some(oldest) = st.queue.front() else {
                if st.shutdown {
                    return;
                }
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let length = oldest.length;
            let deadline = oldest.since + self.config.max_queue_delay;
            let same = st.queue.iter().filter(|w| w.length == length).count();
            let now = Instant::now();
            if same < self.config.max_batch && now < deadline && !st.shutdown {
                st = self
                    .wake
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let taken = take_batch(&mut st, length, self.config.max_batch);
            let start = Instant::now();
            for (q, _) in &taken.items {
                if let Some(p) = st.pending.get_mut(q) {
                    p.first_start.get_or_insert(start);
                }
            }
            drop(st);
            let refs: Vec<&Feature> = taken.windows.iter().map(|(w, i)| &w[*i]).collect();
            let out = crate::runtime::on_compute_pool(|| self.engine.forward(&refs));
            let end = Instant::now();
            if let Some(observe) = &self.observer {
                observe(&BatchRecord {
                    windows: refs.len(),
                    length,
                    duration: end - start,
                });
            }
            st = self.lock();
            let done = record_batch(&mut st, &taken, out);
            if !done.is_empty() {
                drop(st);
                for p in done {
                    self.finish(taken.id, taken.items.len(), end, p);
                }
                st = self.lock();
            }
        }
    }

    /// Decodes a query whose last window ended at `end` and replies.
    fn finish(&self, batch: u64, batch_windows: usize, end: Instant, p: Pending) {
        if let Some(e) = p.failed {
            (p.reply)(Err(e));
            return;
        }
        let t = Instant::now();
        // The batch just run still holds the windows (an `Arc` each): borrow, never copy.
        let windows: &[Feature] = &p.windows;
        let answers = self.engine.decode(
            &p.question,
            &p.context,
            windows,
            (p.starts, p.ends),
            &p.options,
        );
        let finished = Instant::now();
        let first = p.first_start.unwrap_or(end);
        let stages = Stages {
            issue: p.issue,
            tokenize: p.tokenize,
            queue: first.saturating_duration_since(p.enqueued),
            model: end.saturating_duration_since(first),
            decode: finished - t,
            windows: windows.len(),
            batches: p.batches,
            batch,
            batch_windows,
        };
        (p.reply)(match answers {
            Ok(mut answers) if !answers.is_empty() => {
                answers.truncate(p.options.answers());
                let answer = answers.remove(0);
                Ok(Completion {
                    answer,
                    alternatives: answers,
                    finished,
                    stages: Some(stages),
                })
            }
            Ok(_) => Err("decoding gave no answer".into()),
            Err(e) => Err(format!("decoding: {e:#}")),
        });
    }
}

/// Drops the queries whose client went away before any of their windows ran (a query with
/// a window in a batch runs to its end: its batch expects it).
fn drop_abandoned(st: &mut State) {
    let gone: Vec<u64> = st
        .pending
        .iter()
        .filter(|(_, p)| p.first_start.is_none() && p.wanted.as_ref().is_some_and(|w| !w()))
        .map(|(&q, _)| q)
        .collect();
    if gone.is_empty() {
        return;
    }
    st.queue.retain(|w| !gone.contains(&w.query));
    for q in &gone {
        st.pending.remove(q);
    }
    st.abandoned += gone.len() as u64;
}

/// Removes the oldest window of `length` and those of the same length behind it (at most
/// `max_batch`) from the queue.
fn take_batch(st: &mut State, length: usize, max_batch: usize) -> Taken {
    let id = st.next_batch;
    st.next_batch += 1;
    let mut items = Vec::new();
    let mut kept = VecDeque::with_capacity(st.queue.len());
    for w in st.queue.drain(..) {
        if items.len() < max_batch && w.length == length {
            items.push((w.query, w.index));
        } else {
            kept.push_back(w);
        }
    }
    st.queue = kept;
    let windows = items
        .iter()
        .map(|(q, i)| (Arc::clone(&st.pending[q].windows), *i))
        .collect();
    Taken { id, items, windows }
}

/// Stores a batch's logits (or its error) in its queries; returns the queries it finished.
fn record_batch(st: &mut State, taken: &Taken, out: Result<LogitRows>) -> Vec<Pending> {
    let mut rows = match out {
        Ok((s, e)) if s.len() == taken.items.len() && e.len() == taken.items.len() => {
            Ok(s.into_iter().zip(e))
        }
        Ok((s, _)) => Err(format!(
            "the engine returned {} rows for {} windows",
            s.len(),
            taken.items.len()
        )),
        Err(e) => Err(format!("forward pass: {e:#}")),
    };
    let mut touched: Vec<u64> = Vec::new();
    for &(q, i) in &taken.items {
        let p = st
            .pending
            .get_mut(&q)
            .expect("a taken window's query is pending");
        match &mut rows {
            Ok(it) => {
                let (s, e) = it.next().expect("one row per window (checked)");
                p.starts[i] = s;
                p.ends[i] = e;
            }
            Err(msg) => {
                p.failed.get_or_insert_with(|| msg.clone());
            }
        }
        p.remaining -= 1;
        if !touched.contains(&q) {
            touched.push(q);
            p.batches += 1;
        }
    }
    touched.retain(|q| st.pending[q].remaining == 0);
    touched
        .into_iter()
        .map(|q| st.pending.remove(&q).expect("pending"))
        .collect()
}
