//! A server over HTTP as a system under test: `loadgen --url` drives any server speaking
//! bertbench's QA API or Hugging Face's ([`Api`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::api::{Api, HfAnswer, HfInputs, HfParameters, HfRequest, QaRequest, QaResponse};
use super::batcher::{Answer, Completion, Rejected, Reply};
use super::scenario::{Query, Sut};

/// Each query is one POST on a thread of its own, at most `max_in_flight` at once (beyond,
/// the query is refused here, which counts against the run like a refusal there).
pub struct HttpSut {
    url: String,
    api: Api,
    agent: ureq::Agent,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

/// How long `connect` waits for a server that is live but still loading its model.
const READY_WAIT: Duration = Duration::from_secs(300);

impl HttpSut {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`). Checks `GET /health`,
    /// then waits for `GET /ready` where the server has one (a 404 there: no readiness route).
    pub fn connect(base: &str, api: Api, max_in_flight: usize) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let get = |path: &str| -> Result<(u16, String)> {
            let url = format!("{base}{path}");
            let mut resp = agent
                .get(&url)
                .call()
                .map_err(|e| crate::error::unavailable(format!("{url}: {e}")))?;
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            Ok((resp.status().as_u16(), text))
        };
        let (status, text) = get("/health")?;
        if status != 200 {
            return Err(crate::error::unavailable(format!(
                "{base}/health answered {status}: {text}"
            )));
        }
        let begin = Instant::now();
        loop {
            match get("/ready")? {
                (200 | 404, _) => break,
                (503, _) if begin.elapsed() < READY_WAIT => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                (status, text) => {
                    return Err(crate::error::unavailable(format!(
                        "{base}/ready answered {status} after {:.0} s: {text}",
                        begin.elapsed().as_secs_f64()
                    )))
                }
            }
        }
        let path = match api {
            Api::Bertbench => "/v1/qa",
            Api::Hf => "/",
        };
        Ok(Self {
            url: format!("{base}{path}"),
            api,
            agent,
            in_flight: Arc::default(),
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// One request, answered or failed in words.
    fn post(agent: &ureq::Agent, url: &str, api: Api, query: &Query) -> Result<Answer> {
        let (question, context) = (query.question.to_string(), query.context.to_string());
        let sent = match api {
            Api::Bertbench => agent.post(url).send_json(QaRequest { question, context }),
            // Token boundaries, as `eval` answers (and scores) them.
            Api::Hf => agent.post(url).send_json(HfRequest {
                inputs: HfInputs { question, context },
                parameters: HfParameters {
                    align_to_words: Some(false),
                    ..HfParameters::default()
                },
            }),
        };
        let mut resp = sent.context("sending")?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("reading the answer")?;
        if status != 200 {
            return Err(anyhow!("HTTP {status}: {text}"));
        }
        let bad = || format!("not a QA answer: {text}");
        Ok(match api {
            Api::Bertbench => {
                let a: QaResponse = serde_json::from_str(&text).with_context(bad)?;
                Answer {
                    text: a.answer,
                    score: a.score,
                    span: a.start.zip(a.end),
                }
            }
            Api::Hf => {
                let a: HfAnswer = serde_json::from_str(&text).with_context(bad)?;
                Answer {
                    span: (a.end > a.start).then_some((a.start, a.end)),
                    text: a.answer,
                    score: a.score,
                }
            }
        })
    }
}

impl Sut for HttpSut {
    fn issue(&self, query: &Query, _arrival: Instant, reply: Reply) -> Result<(), Rejected> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if n >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Rejected::QueueFull(n));
        }
        let (agent, url, api, in_flight) = (
            self.agent.clone(),
            self.url.clone(),
            self.api,
            Arc::clone(&self.in_flight),
        );
        let query = query.clone();
        std::thread::spawn(move || {
            let r = Self::post(&agent, &url, api, &query);
            let finished = Instant::now();
            in_flight.fetch_sub(1, Ordering::SeqCst);
            reply(match r {
                Ok(answer) => Ok(Completion {
                    answer,
                    alternatives: Vec::new(),
                    finished,
                    stages: None,
                }),
                Err(e) => Err(format!("{e:#}")),
            });
        });
        Ok(())
    }
}
