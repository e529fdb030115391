//! The report's first screen: for each model at each precision, what running it costs (latency
//! at one shape, throughput, peak memory, dollars per million questions) beside what it answers
//! (EM/F1, the change against the same checkpoint at f32, the share of answers that changed);
//! a chart of cost (or latency) against F1 with the Pareto front marked; and the
//! recommendation, with its uncertainty. The detail follows it in the report.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::Result;

use super::build::{display_name, figure, Accuracy, Context};
use super::render::{self, dash, Block, Column};
use crate::bench::env::Key;
use crate::bench::memory::to_mb;
use crate::bench::ratio_interval;
use crate::bench::{Cell, Measurement, Mode, Status};
use crate::chart::{Chart, Point, Series};
use crate::cost::usd_per_1000_questions;
use crate::stats::paired_bootstrap_mean;

/// How much F1 the recommendation gives up at most for speed and cost: it names the cheapest
/// (or fastest) variant within this many F1 points of the most accurate one.
pub const F1_TOLERANCE: f64 = 1.0;

/// The plot palette's grey, for the Pareto front.
const GREY: usize = 7;

/// The sequence length the summary prefers for its latency: SQuAD's windows.
const PREFERRED_SEQUENCE: usize = 384;

/// One inference shape: batch, sequence length and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub sequence: usize,
    pub threads: usize,
}

impl Shape {
    fn of(cell: &Cell) -> Self {
        Self {
            batch: cell.batch_size,
            sequence: cell.sequence_length,
            threads: cell.threads,
        }
    }

    fn label(&self) -> String {
        format!("{}x{}", self.batch, self.sequence)
    }
}

/// The inference shape the summary reads latency at: one that every variant measured when there
/// is one (else the one most of them measured), preferring batch 1 (one request's latency),
/// then the sequence length nearest SQuAD's 384-token windows, then the most threads.
pub fn chosen_shape(cells: &[&Measurement]) -> Option<Shape> {
    let mut counts: Vec<(Shape, Vec<String>)> = Vec::new();
    for m in cells {
        let shape = Shape::of(&m.cell);
        let variant = m.cell.variant();
        match counts.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, vs)) if !vs.contains(&variant) => vs.push(variant),
            Some(_) => {}
            None => counts.push((shape, vec![variant])),
        }
    }
    counts
        .into_iter()
        .min_by_key(|(s, vs)| {
            (
                Reverse(vs.len()),
                s.batch,
                s.sequence.abs_diff(PREFERRED_SEQUENCE),
                Reverse(s.threads),
            )
        })
        .map(|(s, _)| s)
}

/// One row of the summary: a model at a precision, from the bench, an evaluation, or both.
struct Row<'a> {
    /// As the report names it.
    label: String,
    /// The cell at the chosen shape.
    at_shape: Option<&'a Measurement>,
    /// The most sequences per second at the chosen sequence length and threads, and the batch.
    best: Option<(f64, usize)>,
    eval: Option<&'a Accuracy>,
    /// F1 minus the same checkpoint's at f32, with the 95% paired bootstrap interval over the
    /// questions both answered when their answers could be rescored.
    f1_change: Option<(f64, Option<(f64, f64)>)>,
    /// Answers that differ from the f32 evaluation's, of the questions both answered.
    changed: Option<(usize, usize)>,
}

impl Row<'_> {
    /// USD per million questions, and whether it comes from the evaluation's own throughput
    /// (else from the bench's best at the chosen sequence length, one window per question).
    fn usd_per_million(&self, usd_per_hour: f64) -> Option<(f64, bool)> {
        if let Some(a) = self.eval.filter(|a| a.windows_per_s > 0.0) {
            let usd = usd_per_1000_questions(a.windows_per_s, a.windows_per_question, usd_per_hour);
            return Some((1e3 * usd, true));
        }
        self.best
            .map(|(sps, _)| (1e3 * usd_per_1000_questions(sps, 1.0, usd_per_hour), false))
    }

    fn latency_s(&self) -> Option<f64> {
        self.at_shape?.speed.as_ref().map(|s| s.median_interval().0)
    }

    fn peak_mb(&self) -> Option<f64> {
        self.at_shape?.memory.as_ref().map(|m| to_mb(m.peak_rss))
    }
}

/// Milliseconds with three significant digits.
fn ms(seconds: f64) -> String {
    let v = seconds * 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Per-question F1s of the evaluations, read once each (an evaluation whose answers or
/// dataset cannot be read has none, and its differences no interval).
#[derive(Default)]
struct Scores {
    read: RefCell<HashMap<PathBuf, Option<QuestionF1s>>>,
}

/// An evaluation's F1 per question id.
type QuestionF1s = Rc<HashMap<String, f64>>;

/// Bootstrap resamplings for an F1 difference's interval, and their seed (fixed: the same
/// folder gives the same report).
const RESAMPLES: usize = 2000;
const SEED: u64 = 0x5eed;

impl Scores {
    fn of(&self, eval: &Accuracy) -> Option<QuestionF1s> {
        self.read
            .borrow_mut()
            .entry(eval.source.clone())
            .or_insert_with(|| {
                crate::answer::f1_per_question(&eval.source)
                    .ok()
                    .map(Rc::new)
            })
            .clone()
    }

    /// `a`'s F1 minus `b`'s over the questions both answered, with its 95% paired bootstrap
    /// interval: `(difference, low, high)`.
    fn difference(&self, a: &Accuracy, b: &Accuracy) -> Option<(f64, f64, f64)> {
        let (fa, fb) = (self.of(a)?, self.of(b)?);
        let mut ids: Vec<&String> = fa.keys().filter(|id| fb.contains_key(*id)).collect();
        // In id order: the resampling must not depend on a hash map's order.
        ids.sort();
        let diffs: Vec<f64> = ids.iter().map(|id| fa[*id] - fb[*id]).collect();
        paired_bootstrap_mean(&diffs, RESAMPLES, SEED)
    }
}

/// The rows: every variant the bench measured at inference, in plan order, joined by name
/// with the evaluation of the same model at the same precision; then evaluations of models
/// the bench did not measure.
fn rows<'a>(
    cx: &Context,
    cells: &[&'a Measurement],
    evals: &'a [Accuracy],
    scores: &Scores,
) -> Vec<Row<'a>> {
    let shape = chosen_shape(cells);
    // Evaluations are named by the model's short form and the precision (`model int8`).
    let key = |variant: &str| {
        let (model, suffix) = Cell::split_variant(variant);
        format!("{}{suffix}", display_name(model))
    };
    let mut rows: Vec<Row<'a>> = Vec::new();
    let mut joined: Vec<&str> = Vec::new();
    for variant in crate::bench::distinct(cells.iter().map(|m| m.cell.variant())) {
        let mine: Vec<&Measurement> = cells
            .iter()
            .copied()
            .filter(|m| m.cell.variant() == variant)
            .collect();
        let at_shape = shape.and_then(|s| mine.iter().copied().find(|m| Shape::of(&m.cell) == s));
        let best = shape.and_then(|s| best_batch(&mine, s));
        let eval = evals.iter().find(|a| a.model == key(&variant));
        if let Some(a) = eval {
            joined.push(&a.model);
        }
        rows.push(Row {
            label: cx.name(&variant),
            at_shape,
            best,
            eval,
            f1_change: None,
            changed: None,
        });
    }
    for a in evals.iter().filter(|a| !joined.contains(&a.model.as_str())) {
        rows.push(Row {
            label: a.model.clone(),
            at_shape: None,
            best: None,
            eval: Some(a),
            f1_change: None,
            changed: None,
        });
    }
    compare_precisions(&mut rows, evals, scores);
    rows
}

/// A variant's highest throughput at the shape's sequence length and threads, over the batch
/// sizes it measured: `(sequences per second, batch)`; on a tie the smaller batch, which keeps
/// fewer requests waiting.
fn best_batch(mine: &[&Measurement], s: Shape) -> Option<(f64, usize)> {
    mine.iter()
        .filter(|m| m.cell.sequence_length == s.sequence && m.cell.threads == s.threads)
        .filter_map(|m| m.samples_per_s().map(|v| (v, m.cell.batch_size)))
        .fold(None, |best: Option<(f64, usize)>, c| match best {
            Some(b) if b.0 > c.0 || (b.0 == c.0 && b.1 <= c.1) => Some(b),
            _ => Some(c),
        })
}

/// Each precision's evaluation against the same checkpoint's at f32 on the same questions: the
/// F1 change with its paired interval, and how many answers changed.
fn compare_precisions(rows: &mut [Row], evals: &[Accuracy], scores: &Scores) {
    for row in rows.iter_mut() {
        let Some(a) = row.eval else { continue };
        let (model, suffix) = Cell::split_variant(&a.model);
        if suffix.is_empty() {
            continue;
        }
        let Some(base) = evals
            .iter()
            .find(|b| b.model == model && b.questions == a.questions)
        else {
            continue;
        };
        row.f1_change = Some((
            a.f1 - base.f1,
            scores.difference(a, base).map(|(_, lo, hi)| (lo, hi)),
        ));
        if let (Some(mine), Some(theirs)) = (
            crate::answer::read_predictions(&a.source).ok(),
            crate::answer::read_predictions(&base.source).ok(),
        ) {
            let both: Vec<(&String, &String)> = mine
                .iter()
                .filter_map(|(id, text)| theirs.get(id).map(|t| (text, t)))
                .collect();
            let differ = both.iter().filter(|(x, y)| x != y).count();
            row.changed = Some((differ, both.len()));
        }
    }
}

/// The points of the Pareto front of `(x, y)` pairs (x lower is better; y higher is better when
/// `higher_y`, else lower), by x.
pub fn pareto_front(points: &[(f64, f64)], higher_y: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    let better = |a: f64, b: f64| if higher_y { a > b } else { a < b };
    order.sort_by(|&i, &j| {
        points[i].0.total_cmp(&points[j].0).then_with(|| {
            // At equal x the better y first, so it alone joins the front.
            if better(points[i].1, points[j].1) {
                std::cmp::Ordering::Less
            } else if better(points[j].1, points[i].1) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
    });
    let mut front: Vec<usize> = Vec::new();
    for i in order {
        if front
            .last()
            .is_none_or(|&last| better(points[i].1, points[last].1))
        {
            front.push(i);
        }
    }
    front
}

/// What the chart and the recommendation rank by: dollars when there is a price, else time.
struct Axis {
    name: &'static str,
    cheaper: &'static str,
}

/// The summary: the recommendation, the table, and the chart (returned with its PNG).
pub(super) fn section(cx: &Context, evals: &[Accuracy]) -> Result<(Vec<Block>, Vec<PathBuf>)> {
    let cells: Vec<&Measurement> = cx
        .results
        .plan
        .iter()
        .filter(|c| c.mode == Mode::Inference)
        .filter_map(|c| cx.results.find(c))
        .filter(|m| m.status == Status::Ok && m.speed.is_some())
        .collect();
    if cells.is_empty() && evals.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let shape = chosen_shape(&cells);
    let scores = Scores::default();
    let rows = rows(cx, &cells, evals, &scores);
    let price = cx.opts.price.as_ref().map(|p| p.usd_per_hour);
    let mut blocks = vec![Block::Heading(2, "Which to ship".into())];
    blocks.push(Block::Bullets(recommendation(&rows, shape, price, &scores)));
    blocks.push(table(&rows, shape, price));
    blocks.push(Block::Paragraph(footnote(cx, shape, price)));
    let mut plots = Vec::new();
    if let Some(chart) = chart(&rows, shape, price) {
        let (fig, png) = figure(&chart, &cx.out.join("plots"), "pareto", (1000, 650))?;
        blocks.push(fig);
        plots.push(png);
    }
    Ok((blocks, plots))
}

fn table(rows: &[Row], shape: Option<Shape>, price: Option<f64>) -> Block {
    let at = shape.map_or_else(dash, |s| s.label());
    let seq = shape.map_or_else(dash, |s| s.sequence.to_string());
    let mut columns: Vec<Column<Row>> = vec![
        Column::new("model", |r: &Row| r.label.clone()),
        Column::new(format!("latency at {at}, ms [95% CI]"), move |r: &Row| {
            r.at_shape
                .and_then(|m| m.speed.as_ref())
                .map(|s| {
                    let (mid, lo, hi) = s.median_interval();
                    format!("{} [{}, {}]", ms(mid), ms(lo.max(0.0)), ms(hi))
                })
                .unwrap_or_else(dash)
        }),
        Column::new(
            format!("sequences/s (best batch, sequence {seq})"),
            move |r: &Row| {
                r.best
                    .map(|(v, b)| format!("{v:.1} (batch {b})"))
                    .unwrap_or_else(dash)
            },
        ),
        Column::new(format!("peak RSS MB at {at}"), move |r: &Row| {
            r.peak_mb().map(|v| format!("{v:.0}")).unwrap_or_else(dash)
        }),
        Column::new("EM", move |r: &Row| {
            r.eval
                .map(|a| format!("{:.2}", a.exact_match))
                .unwrap_or_else(dash)
        }),
        Column::new("F1", move |r: &Row| {
            r.eval.map(|a| format!("{:.2}", a.f1)).unwrap_or_else(dash)
        }),
        Column::new("F1 vs f32", move |r: &Row| {
            r.f1_change
                .map(|(d, ci)| match ci {
                    Some((lo, hi)) => format!("{d:+.2} [{lo:+.2}, {hi:+.2}]"),
                    None => format!("{d:+.2}"),
                })
                .unwrap_or_else(dash)
        }),
        Column::new("answers changed vs f32", move |r: &Row| {
            r.changed
                .map(|(d, n)| format!("{:.1}% ({d} of {n})", 100.0 * d as f64 / n.max(1) as f64))
                .unwrap_or_else(dash)
        }),
    ];
    if let Some(p) = price {
        columns.push(Column::new("USD per million questions", move |r: &Row| {
            r.usd_per_million(p)
                .map(|(v, from_eval)| format!("{v:.2}{}", if from_eval { "" } else { " *" }))
                .unwrap_or_else(dash)
        }));
    }
    render::table(rows, &columns)
}

fn footnote(cx: &Context, shape: Option<Shape>, price: Option<f64>) -> String {
    let mut text = match shape {
        Some(s) => format!(
            "On {} with {} threads. Latency: the median time of one forward pass at batch {}, \
             sequence {}, with its 95% interval (across processes where the cell was timed in \
             several, else within its one). Sequences/s: the best batch measured at sequence \
             {}. Peak RSS: the process's resident high-water mark through that pass.",
            cx.env(Key::Cpu),
            s.threads,
            s.batch,
            s.sequence,
            s.sequence
        ),
        None => "No inference cell was measured: the rows come from evaluations alone.".into(),
    };
    text.push_str(
        " EM/F1: SQuAD v1.1 scores of `eval` on the model at that precision; `F1 vs f32` and \
         `answers changed` compare it with the same checkpoint's f32 evaluation on the same \
         questions, the F1 change with its 95% interval from a paired bootstrap over those \
         questions (each answer rescored against the dataset the evaluation names; none when \
         that file cannot be read).",
    );
    if price.is_some() {
        text.push_str(
            " USD per million questions: from the evaluation's own throughput and windows per \
             question where the model was evaluated, else (*) from the best throughput at that \
             sequence length at one window per question.",
        );
    }
    text
}

/// The chart: cost (or ms per question) against F1 where evaluations exist, else latency
/// against peak memory; the Pareto front joined by a dashed line.
fn chart(rows: &[Row], shape: Option<Shape>, price: Option<f64>) -> Option<Chart> {
    let axis = axis(price);
    let with_f1 = ranked(rows, price);
    let (points, title, x_label, y_label, higher_y) = if !with_f1.is_empty() {
        (
            with_f1,
            format!(
                "F1 against {} (up and left is better; dashed: the Pareto front)",
                axis.name
            ),
            axis.name.to_string(),
            "SQuAD F1".to_string(),
            true,
        )
    } else {
        let s = shape?;
        let points: Vec<(&Row, f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r, r.latency_s()? * 1e3, r.peak_mb()?)))
            .collect();
        if points.is_empty() {
            return None;
        }
        (
            points,
            format!(
                "Peak memory against latency at {} (down and left is better; dashed: the \
                 Pareto front)",
                s.label()
            ),
            format!("latency at {}, ms", s.label()),
            "peak RSS MB".to_string(),
            false,
        )
    };
    let xy: Vec<(f64, f64)> = points.iter().map(|(_, x, y)| (*x, *y)).collect();
    let front = pareto_front(&xy, higher_y);
    // The front first, in grey and unlabelled, so the variants' points draw over it.
    let mut series: Vec<Series> = Vec::new();
    if front.len() > 1 {
        series.push(Series {
            label: String::new(),
            points: front
                .iter()
                .map(|&i| Point {
                    x: xy[i].0,
                    y: xy[i].1,
                    interval: None,
                })
                .collect(),
            color: Some(GREY),
            dash: 1,
        });
    }
    series.extend(points.iter().map(|(r, x, y)| Series {
        label: r.label.clone(),
        points: vec![Point {
            x: *x,
            y: *y,
            interval: None,
        }],
        ..Default::default()
    }));
    Some(Chart {
        title,
        x_label,
        y_label,
        log_x: false,
        log_y: false,
        // F1 differences of a point or two are what matter: the axis fits the scores.
        y_from_zero: !higher_y,
        series,
        label_points: true,
    })
}

fn axis(price: Option<f64>) -> Axis {
    match price {
        Some(_) => Axis {
            name: "USD per million questions",
            cheaper: "cheaper",
        },
        None => Axis {
            name: "ms per question",
            cheaper: "faster",
        },
    }
}

/// What a row's F1 is ranked against: its cost per million questions, or its time per
/// question, from its evaluation.
fn x_of(row: &Row, price: Option<f64>) -> Option<f64> {
    let a = row.eval?;
    match price {
        Some(p) => row.usd_per_million(p).map(|(v, _)| v),
        None => Some(a.ms_per_question).filter(|v| v.is_finite()),
    }
}

/// The evaluated rows with what they are ranked by: `(row, cost or ms per question, F1)`.
fn ranked<'r, 'a>(rows: &'r [Row<'a>], price: Option<f64>) -> Vec<Ranked<'r, 'a>> {
    rows.iter()
        .filter_map(|r| Some((r, x_of(r, price)?, r.eval?.f1)))
        .collect()
}

/// The recommendation, in sentences, each with what it rests on: by accuracy and cost where
/// rows were evaluated, else by speed and memory.
fn recommendation(
    rows: &[Row],
    shape: Option<Shape>,
    price: Option<f64>,
    scores: &Scores,
) -> Vec<String> {
    let ranked = ranked(rows, price);
    match most_accurate(&ranked) {
        Some(best) => by_accuracy(&ranked, best, shape, price, scores),
        None => by_speed(rows, shape),
    }
}

/// A ranked row: `(row, cost or ms per question, F1)`.
type Ranked<'r, 'a> = (&'r Row<'a>, f64, f64);

/// The most accurate; on a tie the first listed (f32 before its lower precisions).
fn most_accurate<'x, 'r, 'a>(ranked: &'x [Ranked<'r, 'a>]) -> Option<&'x Ranked<'r, 'a>> {
    ranked.iter().fold(None, |acc, r| match acc {
        Some(b) if b.2 >= r.2 => Some(b),
        _ => Some(r),
    })
}

/// How much faster `fast` is than `slow` at the summary's shape, with its 95% interval, where
/// both were timed there.
fn speed_at(fast: &Row, slow: &Row, shape: Option<Shape>) -> Option<String> {
    let (f, s) = (
        fast.at_shape?.speed.as_ref()?,
        slow.at_shape?.speed.as_ref()?,
    );
    let (ratio, low, high) = ratio_interval(s, f);
    let s0 = shape?;
    Some(format!(
        "at batch {}, sequence {} it is {ratio:.2}x [{low:.2}, {high:.2}] as fast (95% interval)",
        s0.batch, s0.sequence
    ))
}

/// The recommendation among evaluated rows: the cheapest (or fastest) within
/// [`F1_TOLERANCE`] of the most accurate, and the cheapest overall when that is another.
fn by_accuracy(
    ranked: &[Ranked],
    best: &Ranked,
    shape: Option<Shape>,
    price: Option<f64>,
    scores: &Scores,
) -> Vec<String> {
    let axis = axis(price);
    let mut out = Vec::new();
    let within: Vec<&Ranked> = ranked
        .iter()
        .filter(|r| r.2 >= best.2 - F1_TOLERANCE)
        .collect();
    // The best is within its own tolerance, so `within` is never empty.
    // On a tie in cost, the more accurate (so a free machine recommends the most accurate).
    let pick = within
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .unwrap_or(best);
    let questions = best.0.eval.map_or(0, |a| a.questions);
    if pick.0.label == best.0.label {
        out.push(format!(
            "Recommended: {}: the most accurate (F1 {:.2} on {questions} questions), and \
             nothing within {F1_TOLERANCE:.1} F1 of it is {}.",
            best.0.label, best.2, axis.cheaper
        ));
    } else {
        out.push(pick_over_best(pick, best, shape, price, scores));
    }
    if let Some(cheapest) = ranked
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|c| c.1 < pick.1)
    {
        out.push(format!(
            "{} overall: {}, {:.2}x {} than {} for {:+.2} F1.",
            if price.is_some() {
                "Cheapest"
            } else {
                "Fastest"
            },
            cheapest.0.label,
            pick.1 / cheapest.1,
            axis.cheaper,
            pick.0.label,
            cheapest.2 - pick.2
        ));
    }
    out
}

/// The sentence recommending `pick` over the most accurate `best`: how much cheaper or
/// faster, for what F1 (with its paired interval and the answers changed), and the speed
/// ratio's interval at the summary's shape where both were timed there.
fn pick_over_best(
    pick: &Ranked,
    best: &Ranked,
    shape: Option<Shape>,
    price: Option<f64>,
    scores: &Scores,
) -> String {
    let axis = axis(price);
    let questions = best.0.eval.map_or(0, |a| a.questions);
    let changed = pick
        .0
        .changed
        .map(|(d, n)| {
            format!(
                ", {:.1}% of its answers changed",
                100.0 * d as f64 / n.max(1) as f64
            )
        })
        .unwrap_or_default();
    let interval = match (pick.0.eval, best.0.eval) {
        (Some(a), Some(b)) => scores.difference(a, b).map(|(_, lo, hi)| {
            format!(" [{lo:+.2}, {hi:+.2}], 95% paired bootstrap over the questions")
        }),
        _ => None,
    }
    .unwrap_or_default();
    let mut s = format!(
        "Recommended: {}: {:.2}x {} than {}, the most accurate, for {:+.2} F1{interval} \
         ({:.2} against {:.2} on {questions} questions{changed}). It is the {} within \
         {F1_TOLERANCE:.1} F1 of the most accurate, by {} from the evaluations",
        pick.0.label,
        best.1 / pick.1,
        axis.cheaper,
        best.0.label,
        pick.2 - best.2,
        pick.2,
        best.2,
        if price.is_some() {
            "cheapest"
        } else {
            "fastest"
        },
        axis.name
    );
    match speed_at(pick.0, best.0, shape) {
        Some(t) => s.push_str(&format!("; {t}")),
        None => s.push_str(
            ", one run of each, so the ratio has no interval (bench both models for one)",
        ),
    }
    s.push('.');
    s
}

/// The recommendation without accuracy: the fastest at the summary's shape (against the
/// runner-up) and the smallest peak memory, and what would weigh F1 in.
fn by_speed(rows: &[Row], shape: Option<Shape>) -> Vec<String> {
    let mut out = Vec::new();
    let mut timed: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, r.latency_s()?)))
        .collect();
    timed.sort_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some(s), Some(first)) = (shape, timed.first()) {
        let mut text = format!(
            "Fastest at batch {}, sequence {}: {} ({} ms)",
            s.batch,
            s.sequence,
            first.0.label,
            ms(first.1)
        );
        if let Some(t) = timed
            .get(1)
            .and_then(|second| speed_at(first.0, second.0, shape))
        {
            text.push_str(&format!(
                "; against the runner-up, {}, {t}",
                timed[1].0.label
            ));
        }
        text.push('.');
        out.push(text);
    }
    if let Some((r, mb)) = rows
        .iter()
        .filter_map(|r| Some((r, r.peak_mb()?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
    {
        out.push(format!("Smallest peak memory: {} ({mb:.0} MB).", r.label));
    }
    out.push(
        "No accuracy was measured, so nothing here weighs what a model or precision costs in F1: \
         `bertbench run --checkpoint DIR --dataset dev-v1.1.json` evaluates fine-tuned \
         checkpoints at each precision and the recommendation weighs them."
            .into(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_only_the_undominated() {
        // (cost, F1): 0 dominates 3; 1 and 2 trade cost for F1; 4 ties 1's cost with less F1.
        let points = [
            (1.0, 80.0),
            (2.0, 85.0),
            (4.0, 88.0),
            (3.0, 79.0),
            (2.0, 84.0),
        ];
        assert_eq!(pareto_front(&points, true), vec![0, 1, 2]);
        // (latency, memory), both lower better.
        let points = [(1.0, 300.0), (2.0, 200.0), (3.0, 250.0), (0.5, 400.0)];
        assert_eq!(pareto_front(&points, false), vec![3, 0, 1]);
        assert!(pareto_front(&[], true).is_empty());
    }

    #[test]
    fn milliseconds_keep_three_digits() {
        assert_eq!(ms(0.001234), "1.23");
        assert_eq!(ms(0.01234), "12.3");
        assert_eq!(ms(0.1234), "123");
        assert_eq!(ms(1.5), "1500");
    }
}
