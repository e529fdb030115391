//! The bench-cell protocol, both halves in one place: the parent ([`run`]) starts this binary's
//! hidden `bench-cell` command, writes the [`ChildJob`] to its stdin and reads progress lines
//! from its stderr and the [`ChildReply`] from the last line of its stdout; the child
//! ([`serve`]) reads the job, measures the cell and prints the reply. A child that dies (a
//! crash, the out-of-memory killer) becomes a `crashed` row naming how it ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cell::{run_cell, Phase};
use super::grid::{failed_row, Observer};
use super::{Cell, CellSettings, Measurement, Status};
use crate::models::ModelConfig;

/// Test hook: a child whose cell (as `Cell`'s Display prints it) equals this variable aborts,
/// as a crash or an out-of-memory kill would end it (the tests of crash handling set it).
pub const FAULT_ENV: &str = "BERTBENCH_FAULT_CELL";

/// What the parent sends a child on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildJob {
    pub cell: Cell,
    pub settings: CellSettings,
}

/// What a child prints as its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChildReply {
    Done(Box<Measurement>),
    Error { error: String },
}

/// Prefix of the progress lines a child writes on stderr.
pub const PROGRESS_PREFIX: &str = "@bertbench-progress";

/// Formats a progress line for the parent.
pub fn progress_line(phase: Phase, runs: usize, elapsed: Duration) -> String {
    let phase = match phase {
        Phase::Building => "building",
        Phase::Memory => "memory",
        Phase::Timing => "timing",
    };
    format!("{PROGRESS_PREFIX} {phase} {runs} {}", elapsed.as_secs_f64())
}

fn parse_progress(line: &str) -> Option<(Phase, usize, Duration)> {
    let mut parts = line.strip_prefix(PROGRESS_PREFIX)?.split_whitespace();
    let phase = match parts.next()? {
        "building" => Phase::Building,
        "memory" => Phase::Memory,
        _ => Phase::Timing,
    };
    let runs = parts.next()?.parse().ok()?;
    let secs: f64 = parts.next()?.parse().ok()?;
    Some((phase, runs, Duration::from_secs_f64(secs)))
}

enum ChildEvent {
    Progress(Phase, usize, Duration),
    Line(String),
}

/// Measures `cell` in a child process of `exe` (this binary): the observer hears its progress;
/// a child that fails or dies is a `failed` or `crashed` row.
pub(super) fn run(
    exe: &PathBuf,
    cell: &Cell,
    config: &ModelConfig,
    settings: &CellSettings,
    observer: &mut dyn Observer,
) -> Result<Measurement> {
    let mut child = start(exe, cell, settings)?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let event = match parse_progress(&line) {
                Some((p, r, e)) => ChildEvent::Progress(p, r, e),
                None => ChildEvent::Line(line),
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut tail: Vec<String> = Vec::new();
    for event in rx {
        match event {
            ChildEvent::Progress(p, r, e) => observer.cell_progress(p, r, e),
            ChildEvent::Line(l) => {
                tail.push(l);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
    }
    let _ = reader.join();
    let out = stdout_reader.join().unwrap_or_default();
    let status = child.wait()?;
    let failed = |status, reason| failed_row(cell, config, settings, status, reason);
    Ok(match ended(&status, &out, &tail) {
        Ended::Measured(m) => *m,
        Ended::Failed(error) => failed(Status::Failed, error),
        Ended::Crashed(reason) => failed(Status::Crashed, reason),
    })
}

/// Starts a `bench-cell` child of `exe` on `settings.threads` threads and sends it the job.
fn start(exe: &PathBuf, cell: &Cell, settings: &CellSettings) -> Result<std::process::Child> {
    let job = serde_json::to_string(&ChildJob {
        cell: cell.clone(),
        settings: settings.clone(),
    })?;
    let mut child = Command::new(exe)
        .arg("bench-cell")
        .env("RAYON_NUM_THREADS", settings.threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(job.as_bytes())?;
    Ok(child)
}

/// How a child ended.
#[derive(Debug)]
enum Ended {
    Measured(Box<Measurement>),
    /// It ran and reported an error.
    Failed(String),
    /// It died, or exited without a reply: how, with its last words.
    Crashed(String),
}

/// How a child that exited with `status` ended, from its stdout (`out`: the reply on its last
/// line) and the last lines of its stderr (`tail`).
fn ended(status: &std::process::ExitStatus, out: &str, tail: &[String]) -> Ended {
    if status.success() {
        if let Some(last) = out.lines().rev().find(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<ChildReply>(last) {
                Ok(ChildReply::Done(m)) => return Ended::Measured(m),
                Ok(ChildReply::Error { error }) => return Ended::Failed(error),
                Err(_) => {}
            }
        }
        return Ended::Crashed(format!(
            "child process exited without a result; stderr: {}",
            tail.join(" | ")
        ));
    }
    let how = describe_exit(status);
    let last = tail
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default();
    Ended::Crashed(if last.is_empty() {
        how
    } else {
        format!("{how}; last message: {last}")
    })
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                9 => " (SIGKILL: killed, often by the out-of-memory killer)",
                6 => " (SIGABRT: aborted, e.g. a failed allocation)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("child process killed by signal {sig}{name}");
        }
    }
    format!(
        "child process exited with {}",
        status.code().map_or("no code".into(), |c| c.to_string())
    )
}

/// The child's half: reads the [`ChildJob`] from stdin, measures the cell (progress lines on
/// stderr) and prints the [`ChildReply`] as the last line of stdout. A cell that fails is a
/// reply too; only a job that cannot be read is an error.
pub fn serve() -> Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let job: ChildJob = serde_json::from_str(&text).context("reading the cell job from stdin")?;
    if std::env::var(FAULT_ENV).ok().as_deref() == Some(job.cell.to_string().as_str()) {
        eprintln!("fault injected for {}", job.cell);
        std::process::abort();
    }
    let mut progress = |phase, runs, elapsed| eprintln!("{}", progress_line(phase, runs, elapsed));
    let reply = match run_cell(&job.cell, &job.settings, &mut progress) {
        Ok(m) => ChildReply::Done(Box::new(m)),
        Err(e) => ChildReply::Error {
            error: format!("{e:#}"),
        },
    };
    println!("{}", serde_json::to_string(&reply)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_round_trip() {
        let line = progress_line(Phase::Timing, 7, Duration::from_millis(1500));
        let (p, r, e) = parse_progress(&line).unwrap();
        assert_eq!((p, r, e), (Phase::Timing, 7, Duration::from_millis(1500)));
        assert!(parse_progress("warning: something").is_none());
    }

    /// A child's end read from its exit status, stdout and stderr: its reply when it exited
    /// cleanly with one, else a crash naming how it ended and its last words.
    #[cfg(unix)]
    #[test]
    fn a_child_ends_measured_failed_or_crashed() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let tail = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let replied = "note\n{\"error\":\"no such model\"}\n\n";
        assert!(matches!(ended(&ok, replied, &[]), Ended::Failed(e) if e == "no such model"));
        let Ended::Crashed(why) = ended(&ok, "not json", &tail(&["a", "b"])) else {
            panic!("a clean exit without a reply is a crash")
        };
        assert_eq!(why, "child process exited without a result; stderr: a | b");
        // Killed by SIGKILL (a raw wait status of 9): the signal named, the last line kept.
        let killed = std::process::ExitStatus::from_raw(9);
        let Ended::Crashed(why) = ended(&killed, "", &tail(&["loading", "timing", " "])) else {
            panic!("a killed child is a crash")
        };
        assert!(
            why.contains("SIGKILL") && why.ends_with("; last message: timing"),
            "{why}"
        );
        // Exit code 1 (a raw status of 1 << 8), silent.
        let Ended::Crashed(why) = ended(&std::process::ExitStatus::from_raw(1 << 8), "", &[])
        else {
            panic!("a failing exit is a crash")
        };
        assert_eq!(why, "child process exited with 1");
    }
}
