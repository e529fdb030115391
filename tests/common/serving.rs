//! A simulated serving engine whose costs are known, for the batcher, the scenarios and the
//! report's serving section.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bertbench::eval::{run_length, LogitRows};
use bertbench::serve::{Answer, BatcherConfig, Engine, Query};
use bertbench::squad::Feature;

/// A model stand-in: a query `"w{n}l{len}"` becomes `n` windows of `len` real tokens; a
/// forward pass sleeps `per_batch + per_window x windows` and logs its windows' lengths.
pub struct Simulated {
    per_batch: Duration,
    per_window: Duration,
    pub batches: Mutex<Vec<Vec<usize>>>,
}

impl Simulated {
    pub fn new(per_batch_ms: u64, per_window_ms: u64) -> Arc<Self> {
        Arc::new(Simulated {
            per_batch: Duration::from_millis(per_batch_ms),
            per_window: Duration::from_millis(per_window_ms),
            batches: Mutex::new(Vec::new()),
        })
    }
}

const SEQ: usize = 64;

fn window(len: usize) -> Feature {
    Feature {
        example_index: 0,
        input_ids: vec![1; SEQ],
        token_type_ids: vec![0; SEQ],
        attention_mask: (0..SEQ).map(|i| u32::from(i < len)).collect(),
        offsets: vec![None; SEQ],
        start_position: 0,
        end_position: 0,
    }
}

impl Engine for Simulated {
    fn windows(&self, question: &str, _context: &str) -> Result<Vec<Feature>> {
        let (n, len) = question
            .strip_prefix('w')
            .and_then(|r| r.split_once('l'))
            .ok_or_else(|| anyhow::anyhow!("not a simulated query: {question}"))?;
        Ok(vec![window(len.parse()?); n.parse()?])
    }

    fn forward(&self, windows: &[&Feature]) -> Result<LogitRows> {
        std::thread::sleep(self.per_batch + self.per_window * windows.len() as u32);
        self.batches
            .lock()
            .unwrap()
            .push(windows.iter().map(|w| run_length(w)).collect());
        let rows = vec![vec![0.0f32; SEQ]; windows.len()];
        Ok((rows.clone(), rows))
    }

    fn decode(&self, question: &str, _: &str, windows: &[Feature], _: LogitRows) -> Result<Answer> {
        Ok(Answer {
            text: format!("{question}:{}", windows.len()),
            score: 1.0,
            span: None,
        })
    }
}

pub fn query(id: usize, n: usize, len: usize) -> Query {
    Query {
        id: format!("q{id}"),
        question: Arc::from(format!("w{n}l{len}").as_str()),
        context: Arc::from(""),
    }
}

/// A batcher's settings: most windows per batch, queue delay (ms), capacity, workers.
pub fn batcher(
    max_batch: usize,
    delay_ms: u64,
    queue_capacity: usize,
    workers: usize,
) -> BatcherConfig {
    BatcherConfig {
        max_batch,
        max_queue_delay: Duration::from_millis(delay_ms),
        queue_capacity,
        workers,
    }
}
