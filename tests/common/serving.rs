//! A simulated serving engine whose costs are known, for the batcher, the scenarios and the
//! report's serving section.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bertbench::answer::{run_length, LogitRows};
use bertbench::serve::{Answer, BatcherConfig, Engine, Query, QueryOptions};
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
    fn windows(&self, question: &str, _: &str, _: &QueryOptions) -> Result<Vec<Feature>> {
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

    fn decode(
        &self,
        question: &str,
        _: &str,
        windows: &[Feature],
        _: LogitRows,
        _: &QueryOptions,
    ) -> Result<Vec<Answer>> {
        Ok(vec![Answer {
            text: format!("{question}:{}", windows.len()),
            score: 1.0,
            span: None,
        }])
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

/// A `bertbench serve` child on MiniLM on a free loopback port, ready (its `/ready` said
/// so), killed when dropped.
pub struct Serving {
    pub child: std::process::Child,
    pub base: String,
    /// `host:port`, for raw sockets.
    pub addr: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(args: &[&str]) -> Serving {
    use std::io::BufRead;
    let mut child = super::bin()
        .arg("serve")
        .arg("--model")
        .arg(super::minilm_dir())
        .args(["--port", "0", "--threads", "2"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split(':').next().zip(r.split(':').nth(1)))
        .map(|(h, p)| format!("{h}:{}", p.trim_end_matches(|c: char| !c.is_ascii_digit())))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let serving = Serving {
        child,
        base: format!("http://{addr}"),
        addr,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let begin = std::time::Instant::now();
    while agent
        .get(format!("{}/ready", serving.base))
        .call()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            begin.elapsed() < Duration::from_secs(60),
            "the server was not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serving
}
