//! The serving system under test and MLPerf's scenarios on it, on a simulated engine whose
//! costs are known (so its capacity is too), and `bertbench loadgen` end to end on a real
//! model, whose answers under load must be `eval`'s.

mod common;

use std::collections::HashMap;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bertbench::serve::scenario::{self, offline, search, single_stream};
use bertbench::serve::{Query, Rejected, RunSettings, SearchSettings, Server};
use common::serving::{batcher, query, start_server, Simulated};

/// Many queries from four threads at once: every admitted query is answered exactly once,
/// with its own answer; no batch holds more than `max_batch` windows or mixes run lengths;
/// every window ran exactly once.
#[test]
fn the_batcher_never_overfills_mixes_loses_or_repeats() {
    let engine = Simulated::new(1, 0);
    let server = Arc::new(Server::start(engine.clone(), batcher(4, 2, 10_000, 2)));
    let (tx, rx) = channel();
    let mut expected_windows = 0;
    let mut expected: HashMap<usize, String> = HashMap::new();
    let mut plan = Vec::new();
    for t in 0..4 {
        let mut mine = Vec::new();
        for i in 0..60 {
            let id = t * 1000 + i;
            let n = 1 + (i % 3);
            let len = [16, 32, 48][(i / 3) % 3];
            expected_windows += n;
            expected.insert(id, format!("w{n}l{len}:{n}"));
            mine.push((id, n, len));
        }
        plan.push(mine);
    }
    std::thread::scope(|s| {
        for mine in plan {
            let server = Arc::clone(&server);
            let tx = tx.clone();
            s.spawn(move || {
                for (id, n, len) in mine {
                    let tx = tx.clone();
                    let q = query(id, n, len);
                    server
                        .submit(
                            q.question,
                            q.context,
                            Instant::now(),
                            Box::new(move |r| tx.send((id, r)).unwrap()),
                        )
                        .unwrap();
                }
            });
        }
    });
    drop(tx);
    Arc::into_inner(server).unwrap().shutdown();
    let mut answered: HashMap<usize, String> = HashMap::new();
    for (id, r) in rx {
        let c = r.unwrap();
        assert!(
            answered.insert(id, c.answer.text).is_none(),
            "query {id} answered twice"
        );
        let s = c.stages.unwrap();
        assert!(s.batch_windows >= 1 && s.batch_windows <= 4);
    }
    assert_eq!(answered, expected);
    let batches = engine.batches.lock().unwrap();
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 4));
    assert!(
        batches.iter().all(|b| b.iter().all(|l| *l == b[0])),
        "a batch mixed lengths"
    );
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        expected_windows
    );
    // Batching happened: fewer passes than windows.
    assert!(batches.len() < expected_windows, "{} passes", batches.len());
}

/// The delay bound: a lone window waits for company about `max_queue_delay` and no longer
/// (generous slack for a busy machine); a full batch starts at once even with a long delay.
#[test]
fn the_queue_delay_is_a_bound_and_full_batches_do_not_wait() {
    let run = |delay_ms: u64, queries: usize| -> Vec<Duration> {
        let server = Server::start(Simulated::new(1, 0), batcher(4, delay_ms, 100, 1));
        let (tx, rx) = channel();
        for i in 0..queries {
            let tx = tx.clone();
            let q = query(i, 1, 16);
            server
                .submit(
                    q.question,
                    q.context,
                    Instant::now(),
                    Box::new(move |r| tx.send(r).unwrap()),
                )
                .unwrap();
        }
        drop(tx);
        let queue: Vec<Duration> = rx
            .iter()
            .map(|r| r.unwrap().stages.unwrap().queue)
            .collect();
        server.shutdown();
        queue
    };
    let lone = run(40, 1);
    assert!(lone[0] >= Duration::from_millis(39), "{lone:?}");
    assert!(lone[0] < Duration::from_millis(40 + 200), "{lone:?}");
    let full = run(20_000, 4);
    assert_eq!(full.len(), 4);
    assert!(full.iter().all(|q| *q < Duration::from_secs(5)), "{full:?}");
}

/// A query whose client went away before it ran is dropped: its windows never run, it is
/// counted, and the others are answered as ever.
#[test]
fn abandoned_queries_never_run() {
    use bertbench::serve::{QueryOptions, Submission};
    let engine = Simulated::new(200, 0);
    let server = Server::start(engine.clone(), batcher(1, 0, 16, 1));
    let (tx, rx) = channel();
    for (i, wanted) in [true, false, false, true].into_iter().enumerate() {
        let q = query(i, 1, 10 + i);
        let tx = tx.clone();
        server
            .send(Submission {
                question: q.question,
                context: q.context,
                options: QueryOptions::default(),
                arrival: Instant::now(),
                reply: Box::new(move |r| tx.send(r.unwrap().answer.text).unwrap()),
                wanted: Some(Box::new(move || wanted)),
            })
            .unwrap();
    }
    drop(tx);
    let answered: Vec<String> = rx.iter().collect();
    assert_eq!(answered, ["w1l10:1", "w1l13:1"]);
    assert_eq!(server.abandoned(), 2);
    let lengths: Vec<Vec<usize>> = engine.batches.lock().unwrap().clone();
    assert_eq!(lengths.len(), 2, "{lengths:?}");
    server.shutdown();
}

/// Overload is a result: past the capacity queries are refused at once, every admitted one
/// is answered, and the server counts the refusals.
#[test]
fn overload_refuses_instead_of_queueing_without_bound() {
    let server = Server::start(Simulated::new(0, 30), batcher(1, 0, 3, 1));
    let (tx, rx) = channel();
    let (mut admitted, mut refused) = (0, 0);
    for i in 0..20 {
        let tx = tx.clone();
        let q = query(i, 1, 16);
        match server.submit(
            q.question,
            q.context,
            Instant::now(),
            Box::new(move |r| tx.send(r).unwrap()),
        ) {
            Ok(()) => admitted += 1,
            Err(Rejected::QueueFull(n)) => {
                assert_eq!(n, 3);
                refused += 1
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(tx);
    assert!(refused >= 15, "{refused} refused");
    assert_eq!(server.refused(), refused as u64);
    assert_eq!(rx.iter().filter(|r| r.is_ok()).count(), admitted);
    // A malformed query is refused with its reason, not queued.
    let e = server
        .submit(
            Arc::from("nonsense"),
            Arc::from(""),
            Instant::now(),
            Box::new(|_| {}),
        )
        .unwrap_err();
    assert!(matches!(e, Rejected::Invalid(m) if m.contains("not a simulated query")));
    server.shutdown();
}

fn settings(min_ms: u64, min_count: usize, percentile: f64) -> RunSettings {
    RunSettings {
        min_duration: Duration::from_millis(min_ms),
        min_query_count: min_count,
        seed: 5,
        percentile,
        accuracy: false,
    }
}

/// The scenarios on one-window queries costing 10 ms each, one at a time: SingleStream's
/// latency is the cost, Offline's throughput about 100/s, and the records carry every stage.
#[test]
fn scenarios_measure_a_known_system() {
    let server = Server::start(Simulated::new(0, 10), batcher(1, 0, 1000, 1));
    let queries: Vec<Query> = (0..10).map(|i| query(i, 1, 16)).collect();
    let p = single_stream(&server, &queries, &settings(300, 20, 90.0), 0, &mut |_| {});
    let s = &p.summary;
    assert!(s.queries >= 20 && s.answered == s.queries);
    let p50 = s.latency.p50_ms.unwrap();
    assert!((10.0..40.0).contains(&p50), "p50 {p50}");
    let r = &p.records[0];
    assert_eq!(r.status, "ok");
    assert!(r.model_ms.unwrap() >= 9.9 && r.windows == Some(1));
    let p = offline(&server, &queries, &settings(0, 100, 99.0), 1, &mut |_| {});
    let s = &p.summary;
    assert_eq!((s.queries, s.answered), (100, 100));
    assert!(
        (40.0..101.0).contains(&s.achieved_qps),
        "{}",
        s.achieved_qps
    );
    server.shutdown();
}

/// The search on a system with a known capacity (10 ms per query, one at a time: 100 QPS):
/// it brackets and bisects to a rate below the capacity and above half of it (at half load
/// the 90th percentile of an M/D/1 queue is far under 60 ms), fails above the capacity,
/// and keeps every run's curve.
#[test]
fn the_server_search_finds_a_known_capacity() {
    let sut = Server::start(Simulated::new(0, 10), batcher(1, 0, 200, 1));
    let queries: Vec<Query> = (0..10).map(|i| query(i, 1, 16)).collect();
    let o = search(
        &sut,
        &queries,
        &settings(1000, 100, 90.0),
        &SearchSettings {
            target_ms: 60.0,
            start_qps: Some(25.0),
            tolerance: 0.1,
            max_probes: 12,
        },
        &mut |_| {},
    );
    let best = o.best_qps.expect("a rate met the bound");
    let failed = o.failed_qps.expect("a rate failed");
    assert!(
        (50.0..100.0).contains(&best),
        "best {best}, verdict {}",
        o.verdict
    );
    assert!(failed > best && failed <= 130.0, "failed {failed}");
    assert!(o.probes.len() >= 4);
    eprintln!(
        "search: {} ({best}-{failed} QPS, {} runs)",
        o.verdict,
        o.probes.len()
    );
    for p in &o.probes {
        let s = &p.summary;
        assert_eq!(s.met, Some(s.latency.meets(60.0)));
        let rate = s.target_qps.unwrap();
        // Each run as long as asked, and its arrivals at the rate asked (Poisson: +-25%).
        assert!(s.queries >= 100);
        let offered = s.offered_qps.unwrap();
        assert!(
            (offered / rate - 1.0).abs() < 0.25,
            "offered {offered} at {rate}"
        );
    }
    // One run far beyond the capacity: the queue fills, queries are refused, the bound fails.
    let p = scenario::server(
        &sut,
        &queries,
        &settings(1000, 100, 90.0),
        400.0,
        60.0,
        99,
        &mut |_| {},
    );
    assert_eq!(p.summary.met, Some(false));
    assert!(p.summary.refused > 0);
    sut.shutdown();
}

fn dev() -> std::path::PathBuf {
    common::shared().join("data/squad/dev-v1.1.json.gz")
}

/// `bertbench eval` of MiniLM on the first `limit` dev questions (batch 5) into `dir`: its
/// answers, the reference every answer under load must equal.
fn eval_predictions(dir: &std::path::Path, limit: usize) -> HashMap<String, String> {
    let mut cmd = common::bin();
    cmd.arg("eval")
        .arg("--model")
        .arg(common::minilm_dir())
        .arg("--dataset")
        .arg(dev())
        .arg("--output-dir")
        .arg(dir)
        .args([
            "--limit",
            &limit.to_string(),
            "--batch-size",
            "5",
            "--threads",
            "2",
        ]);
    let (code, _, stderr) = common::run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    bertbench::squad::read_predictions(&dir.join("predictions.json")).unwrap()
}

/// `bertbench loadgen` on MiniLM with `args`, into `out`.
fn loadgen(out: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = common::bin();
    cmd.arg("loadgen")
        .arg("--model")
        .arg(common::minilm_dir())
        .arg("--dataset")
        .arg(dev())
        .arg("--output-dir")
        .arg(out)
        .args(["--threads", "2"])
        .args(args);
    common::run(&mut cmd)
}

/// Accuracy mode: the answers given under load (Offline in batches of up to 4, Server at a
/// rate that queues) are `eval`'s, question for question, and score the same; the files hold
/// one record per question and a summary a reader can load.
#[test]
fn answers_under_load_are_evals_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let eval_dir = tmp.path().join("eval");
    let expected = eval_predictions(&eval_dir, 24);
    let eval = bertbench::answer::EvalResults::read(&eval_dir.join("eval_results.json")).unwrap();
    for (name, args) in [
        ("offline", vec!["--scenario", "offline", "--max-batch", "4"]),
        (
            "server",
            vec!["--scenario", "server", "--rate", "40", "--max-batch", "3"],
        ),
    ] {
        let out = tmp.path().join(name);
        let mut all = vec!["--accuracy", "--limit", "24", "--max-queue-delay-ms", "20"];
        all.extend(args);
        let (code, stdout, stderr) = loadgen(&out, &all);
        assert_eq!(code, 0, "{name}: {stderr}");
        let got = bertbench::squad::read_predictions(&out.join("predictions.json")).unwrap();
        assert_eq!(
            got, expected,
            "{name}: answers under load differ from eval's"
        );
        let results = bertbench::serve::LoadgenResults::read(&out.join("loadgen.json")).unwrap();
        let acc = results.accuracy.unwrap();
        assert_eq!((acc.questions, acc.inconsistent), (24, 0));
        assert_eq!(
            (acc.exact_match, acc.f1),
            (eval.report.exact_match, eval.report.f1)
        );
        assert!(stdout.contains("answers under load: EM"), "{stdout}");
        let mut rd = csv::Reader::from_path(out.join("queries.csv")).unwrap();
        let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
        for col in [
            "query",
            "id",
            "arrival_s",
            "latency_ms",
            "tokenize_ms",
            "queue_ms",
            "model_ms",
            "decode_ms",
            "batch",
            "batch_windows",
            "status",
            "answer",
        ] {
            assert!(
                header.iter().any(|h| h == col),
                "{name}: no {col} column in {header:?}"
            );
        }
        let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 24);
        // Batching happened in the offline run: some batch held more than one window.
        if name == "server" {
            assert!(out.join("latency_vs_load.png").is_file());
            let svg = std::fs::read_to_string(out.join("latency_vs_load.svg")).unwrap();
            assert!(svg.contains("p99") && svg.contains("answered queries per second"));
        }
        if name == "offline" {
            let bw = header.iter().position(|h| h == "batch_windows").unwrap();
            assert!(rows.iter().any(|r| r[bw].parse::<usize>().unwrap() > 1));
        }
        let summary = std::fs::read_to_string(out.join("loadgen.csv")).unwrap();
        assert!(
            summary.starts_with("probe,scenario,target_qps"),
            "{summary}"
        );
    }
}

/// Settings that cannot run are refused before the model loads, with the flag named, and a
/// folder with results is not overwritten.
#[test]
fn loadgen_refuses_bad_settings_and_keeps_results() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lg");
    for (args, needle) in [
        (
            vec!["--scenario", "offline", "--rate", "3"],
            "--rate is for --scenario server",
        ),
        (
            vec!["--scenario", "server", "--percentile", "100"],
            "--percentile",
        ),
        (
            vec!["--scenario", "server", "--target-latency", "0ms"],
            "--target-latency",
        ),
        (
            vec!["--scenario", "single-stream", "--max-batch", "0"],
            "--max-batch",
        ),
    ] {
        let (code, _, stderr) = loadgen(&out, &args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = loadgen(
        &out,
        &["--scenario", "single-stream", "--min-duration", "soon"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("expected a duration"), "{stderr}");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("loadgen.json"), "mine").unwrap();
    let (code, _, stderr) = loadgen(&out, &["--scenario", "single-stream"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("loadgen.json")).unwrap(),
        "mine"
    );
}

/// The HTTP server: a good request is answered with a span of the context; malformed,
/// empty, oversized and misaddressed requests get their 4xx and a reason; and `loadgen --url`
/// driving it gives `eval`'s answers.
#[test]
fn the_http_server_answers_and_refuses_clearly() {
    let s = start_server(&["--max-body-bytes", "400"]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let health = agent.get(format!("{}/health", s.base)).call().unwrap();
    assert_eq!(health.status(), 200);
    let context = "The book was written by Jane Austen in 1811.";
    let mut ok = agent
        .post(format!("{}/v1/qa", s.base))
        .send_json(serde_json::json!({"question": "Who wrote it?", "context": context}))
        .unwrap();
    assert_eq!(ok.status(), 200);
    let a: serde_json::Value = ok.body_mut().read_json().unwrap();
    let (start, end) = (
        a["start"].as_u64().unwrap() as usize,
        a["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(&context[start..end], a["answer"].as_str().unwrap());
    assert!(a["score"].as_f64().unwrap() > 0.0 && a["score"].as_f64().unwrap() <= 1.0);
    let post = |body: &str, ctype: &str| {
        let mut r = agent
            .post(format!("{}/v1/qa", s.base))
            .header("Content-Type", ctype)
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    };
    for (body, ctype, status, needle) in [
        ("{\"question\": 1}", "application/json", 400, "expected"),
        (
            "{\"question\": \"q\", \"context\": \" \"}",
            "application/json",
            400,
            "must not be empty",
        ),
        (
            "{\"question\": \"q\", \"context\": \"c\", \"x\": 1}",
            "application/json",
            400,
            "unknown field",
        ),
        ("question=q", "text/plain", 415, "JSON"),
        (
            &format!(
                "{{\"question\": \"q\", \"context\": \"{}\"}}",
                "a".repeat(500)
            ),
            "application/json",
            413,
            "limit is 400",
        ),
    ] {
        let (got, text) = post(body, ctype);
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let r = agent.get(format!("{}/v1/qa", s.base)).call().unwrap();
    assert_eq!(r.status(), 405);
    let r = agent.get(format!("{}/elsewhere", s.base)).call().unwrap();
    assert_eq!(r.status(), 404);
    // Still serving after the bad requests.
    assert_eq!(
        agent
            .get(format!("{}/health", s.base))
            .call()
            .unwrap()
            .status(),
        200
    );
}

/// `loadgen --url` drives a `bertbench serve` over HTTP, in either API: its answers are
/// `eval`'s.
#[test]
fn loadgen_over_http_gives_evals_answers() {
    let s = start_server(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let expected = eval_predictions(&tmp.path().join("eval"), 12);
    for api in ["bertbench", "hf"] {
        let out = tmp.path().join(format!("remote-{api}"));
        let mut cmd = common::bin();
        cmd.args(["loadgen", "--model", "remote-minilm", "--url", &s.base])
            .args(["--api", api])
            .arg("--dataset")
            .arg(dev())
            .arg("--output-dir")
            .arg(&out)
            .args([
                "--scenario",
                "server",
                "--rate",
                "20",
                "--accuracy",
                "--limit",
                "12",
            ]);
        let (code, stdout, stderr) = common::run(&mut cmd);
        assert_eq!(code, 0, "{api}: {stderr}");
        assert!(stdout.contains("driving http://"), "{stdout}");
        assert_eq!(
            bertbench::squad::read_predictions(&out.join("predictions.json")).unwrap(),
            expected,
            "{api}"
        );
    }
    // No server there: a clear error and exit 4.
    let mut cmd = common::bin();
    cmd.args([
        "loadgen",
        "--model",
        "x",
        "--url",
        "http://127.0.0.1:9",
        "--scenario",
        "offline",
    ])
    .arg("--dataset")
    .arg(dev())
    .arg("--output-dir")
    .arg(tmp.path().join("none"));
    let (code, _, stderr) = common::run(&mut cmd);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("127.0.0.1:9/health"), "{stderr}");
}

/// Without --dataset, loadgen takes the official dev set from bertbench's cache, downloading
/// it once (here from a local server) and refusing bytes that are not the official file.
#[test]
fn the_dev_set_is_downloaded_once_and_checked() {
    use std::io::Read;
    let mut official = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dev()).unwrap())
        .read_to_end(&mut official)
        .unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let url = common::http::serve(10, move |req| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match req.path.as_str() {
            "/dev-v1.1.json" => common::http::Response::new("200 OK", official.clone()),
            _ => common::http::Response::new(
                "200 OK",
                b"{\"version\": \"1.1\", \"data\": []}".to_vec(),
            ),
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |path: &str, out: &str| {
        let mut cmd = common::bin();
        cmd.arg("loadgen")
            .arg("--model")
            .arg(common::minilm_dir())
            .args([
                "--scenario",
                "single-stream",
                "--min-duration",
                "0s",
                "--min-query-count",
                "2",
            ])
            .arg("--output-dir")
            .arg(tmp.path().join(out))
            .env("BERTBENCH_CACHE", &cache)
            .env("BERTBENCH_SQUAD_DEV_URL", format!("{url}{path}"));
        common::run(&mut cmd)
    };
    // Bytes that are not the official file: refused, nothing cached.
    let (code, _, stderr) = run("/other.json", "bad");
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("not the official dev-v1.1.json"),
        "{stderr}"
    );
    assert!(!cache.join("squad/dev-v1.1.json").exists());
    let (code, stdout, stderr) = run("/dev-v1.1.json", "a");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 queries"), "{stdout}");
    let cached = cache.join("squad/dev-v1.1.json");
    assert!(cached.is_file());
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let (code, _, stderr) = run("/dev-v1.1.json", "b");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "downloaded twice"
    );
}
