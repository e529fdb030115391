//! Dollar cost from measured speed and an hourly price. Part of the floor: the report, the
//! load generator and training's cost to reach an F1 all price time here.
//!
//! Prices come from the user: `--price-per-hour`, or a TOML price table (`--prices FILE`) from
//! which `--machine NAME` picks an entry. A built-in table of published on-demand prices, each
//! with its source and the date it was read, is used only when asked for (`--prices builtin`):
//! prices change, differ by region and contract, and a stale number presented as fact is worse
//! than none.
//!
//! The table format:
//!
//! ```toml
//! [[machine]]
//! name = "aws-g5.xlarge"                    # required, unique
//! usd_per_hour = 1.006                      # required, finite, >= 0
//! description = "NVIDIA A10G 24 GB, 4 vCPU" # optional
//! source = "https://..."                    # optional (required in the built-in table)
//! date = "2026-06-17"                       # optional, YYYY-MM-DD: when the price was read
//! ```

use std::collections::HashSet;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::input;

/// Seconds in an hour, the unit prices are quoted in.
const SECONDS_PER_HOUR: f64 = 3600.0;

/// What `--prices builtin` means.
pub const BUILTIN: &str = "builtin";

/// An hourly price for a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub usd_per_hour: f64,
    /// Where the price was published (a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the price was read, YYYY-MM-DD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// A validated list of machine prices with unique names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceTable {
    /// Where the table came from (its path, or `builtin`), for messages.
    pub origin: String,
    pub machines: Vec<Price>,
}

impl PriceTable {
    /// Parses and validates a price table; `origin` (a path, or `builtin`) names it in errors.
    ///
    /// Rejected, each as an input error naming `origin`, the entry and the field: TOML syntax
    /// errors, keys other than `[[machine]]` at the top or the five fields in an entry, a
    /// missing `name` or `usd_per_hour`, a negative or non-finite price, an empty or duplicate
    /// name, a date not written YYYY-MM-DD, and a table without machines.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| input(format!("{origin}: not valid TOML: {e}")))?;
        if let Some(key) = doc.keys().find(|k| k.as_str() != "machine") {
            return Err(input(format!(
                "{origin}: unknown top-level key `{key}`: a price table holds only [[machine]] \
                 entries"
            )));
        }
        let entries = match doc.get("machine") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(_) => {
                return Err(input(format!(
                    "{origin}: `machine` must be an array of tables, written [[machine]]"
                )))
            }
        };
        if entries.is_empty() {
            return Err(input(format!(
                "{origin}: no [[machine]] entries (each needs a name and a usd_per_hour)"
            )));
        }
        let mut machines = Vec::with_capacity(entries.len());
        let mut seen = HashSet::new();
        for (i, entry) in entries.into_iter().enumerate() {
            // Name the entry by position and, when it has one, by name.
            let label = match entry.get("name").and_then(|n| n.as_str()) {
                Some(name) => format!("machine #{} ('{name}')", i + 1),
                None => format!("machine #{}", i + 1),
            };
            let fail = |msg: String| input(format!("{origin}: {label}: {msg}"));
            if !entry.is_table() {
                return Err(fail("not a table".into()));
            }
            let price: Price = entry
                .try_into()
                .map_err(|e: toml::de::Error| fail(e.message().trim_end().to_string()))?;
            if price.name.trim().is_empty() {
                return Err(fail("field `name` is empty".into()));
            }
            if !price.usd_per_hour.is_finite() || price.usd_per_hour < 0.0 {
                return Err(fail(format!(
                    "field `usd_per_hour` must be a finite number >= 0, got {}",
                    price.usd_per_hour
                )));
            }
            if let Some(date) = &price.date {
                if chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err() {
                    return Err(fail(format!(
                        "field `date` must be written YYYY-MM-DD, got '{date}'"
                    )));
                }
            }
            if !seen.insert(price.name.clone()) {
                return Err(fail(format!(
                    "field `name`: '{}' is already used by an earlier machine",
                    price.name
                )));
            }
            machines.push(price);
        }
        Ok(Self {
            origin: origin.to_string(),
            machines,
        })
    }

    /// Reads and validates a price table file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| input(format!("{}: cannot read price table: {e}", path.display())))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The built-in table of published prices (see [`BUILTIN_PRICES`]).
    pub fn builtin() -> Result<Self> {
        Self::from_toml_str(BUILTIN_PRICES, BUILTIN)
    }

    /// The machine called `query`: an exact name (ignoring case), else the one name that
    /// contains it. Unknown and ambiguous names are input errors that list the candidates.
    pub fn find(&self, query: &str) -> Result<&Price> {
        let q = query.to_lowercase();
        if let Some(p) = self.machines.iter().find(|p| p.name.to_lowercase() == q) {
            return Ok(p);
        }
        let matches: Vec<&Price> = self
            .machines
            .iter()
            .filter(|p| p.name.to_lowercase().contains(&q))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(input(format!(
                "{}: no machine called '{query}'; machines: {}",
                self.origin,
                self.names(self.machines.iter())
            ))),
            many => Err(input(format!(
                "{}: machine '{query}' is ambiguous: it matches {}",
                self.origin,
                self.names(many.iter().copied())
            ))),
        }
    }

    fn names<'a>(&self, prices: impl Iterator<Item = &'a Price>) -> String {
        prices
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Picks the hourly price for a command's `--price-per-hour`, `--prices` and `--machine`.
///
/// - `price_per_hour` wins when given (it must be finite and >= 0); its `name` is
///   `--price-per-hour`.
/// - Otherwise `prices` (a TOML file path, or `builtin` for [`BUILTIN_PRICES`]) is read and
///   `machine` picks an entry ([`PriceTable::find`]); a table of one machine needs no
///   `--machine`.
/// - `machine` without `prices` is an error: the built-in table is used only when asked for.
/// - Nothing given: `Ok(None)`, no cost is computed.
pub fn resolve_price(
    price_per_hour: Option<f64>,
    prices: Option<&str>,
    machine: Option<&str>,
) -> Result<Option<Price>> {
    if let Some(p) = price_per_hour {
        if !p.is_finite() || p < 0.0 {
            return Err(input(format!(
                "--price-per-hour must be a finite number >= 0, got {p}"
            )));
        }
        return Ok(Some(Price {
            name: "--price-per-hour".into(),
            description: None,
            usd_per_hour: p,
            source: None,
            date: None,
        }));
    }
    let Some(prices) = prices else {
        return match machine {
            Some(m) => Err(input(format!(
                "--machine {m} needs a price table: --prices FILE, or --prices {BUILTIN} for the \
                 built-in published prices"
            ))),
            None => Ok(None),
        };
    };
    let table = if prices == BUILTIN {
        PriceTable::builtin()?
    } else {
        PriceTable::from_file(Path::new(prices))?
    };
    let price = match machine {
        Some(m) => table.find(m)?,
        None => match table.machines.as_slice() {
            [only] => only,
            _ => {
                return Err(input(format!(
                    "--prices {prices} lists {} machines: pick one with --machine NAME ({})",
                    table.machines.len(),
                    table.names(table.machines.iter())
                )))
            }
        },
    };
    Ok(Some(price.clone()))
}

/// Dollars for `seconds` of a machine billed `usd_per_hour`:
/// `usd = seconds / 3600 * usd_per_hour` (billing per second, no minimum).
pub fn usd_for_seconds(seconds: f64, usd_per_hour: f64) -> f64 {
    seconds / SECONDS_PER_HOUR * usd_per_hour
}

/// Dollars to answer 1000 questions on a machine billed `usd_per_hour` that runs the model at
/// `windows_per_s` windows (features) per second, when a question becomes
/// `windows_per_question` windows on average (long contexts are cut into several):
///
/// `usd = 1000 * windows_per_question / windows_per_s / 3600 * usd_per_hour`
///
/// The machine is assumed busy all the time it is paid for (the lower bound of a real bill);
/// the throughput should be the model's, measured at the batch size that will be served.
/// Zero throughput gives infinity.
pub fn usd_per_1000_questions(
    windows_per_s: f64,
    windows_per_question: f64,
    usd_per_hour: f64,
) -> f64 {
    usd_for_seconds(1000.0 * windows_per_question / windows_per_s, usd_per_hour)
}

/// Published on-demand prices, used only with `--prices builtin`. Every entry names the page
/// the price was read from and that page's date; prices change and differ by region, so check
/// them before relying on them.
pub const BUILTIN_PRICES: &str = r#"
# Hugging Face Inference Endpoints (dedicated), the hourly rate of each instance, billed per
# minute. Source page as of its last change on 2026-05-19 (huggingface/hf-endpoints-documentation,
# docs/source/support/pricing.md, commit 86ef8b3).

[[machine]]
name = "hf-aws-intel-spr-x2"
description = "Hugging Face Inference Endpoint on AWS: 2 vCPU Intel Sapphire Rapids, 4 GB"
usd_per_hour = 0.067
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-intel-spr-x4"
description = "Hugging Face Inference Endpoint on AWS: 4 vCPU Intel Sapphire Rapids, 8 GB"
usd_per_hour = 0.134
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-nvidia-t4-x1"
description = "Hugging Face Inference Endpoint on AWS: 1x NVIDIA T4"
usd_per_hour = 0.5
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-nvidia-l4-x1"
description = "Hugging Face Inference Endpoint on AWS: 1x NVIDIA L4 24 GB"
usd_per_hour = 0.8
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-nvidia-a10g-x1"
description = "Hugging Face Inference Endpoint on AWS: 1x NVIDIA A10G 24 GB"
usd_per_hour = 1.0
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-nvidia-a100-x1"
description = "Hugging Face Inference Endpoint on AWS: 1x NVIDIA A100 80 GB"
usd_per_hour = 2.5
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-aws-nvidia-h200-x1"
description = "Hugging Face Inference Endpoint on AWS: 1x NVIDIA H200 141 GB"
usd_per_hour = 5.0
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

[[machine]]
name = "hf-gcp-nvidia-h100-x1"
description = "Hugging Face Inference Endpoint on Google Cloud: 1x NVIDIA H100 80 GB"
usd_per_hour = 10.0
source = "https://huggingface.co/docs/inference-endpoints/support/pricing"
date = "2026-05-19"

# Amazon EC2 on-demand, Linux, us-east-1, as quoted by a third-party article dated 2026-06-17.

[[machine]]
name = "aws-m7g.large"
description = "Amazon EC2 m7g.large on-demand, Linux, us-east-1: 2 vCPU Graviton3 (Arm), 8 GiB"
usd_per_hour = 0.0816
source = "https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/"
date = "2026-06-17"

[[machine]]
name = "aws-g5.xlarge"
description = "Amazon EC2 g5.xlarge on-demand, Linux, us-east-1: 1x NVIDIA A10G 24 GB, 4 vCPU"
usd_per_hour = 1.006
source = "https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/"
date = "2026-06-17"

# Amazon EC2 on-demand, us-east-1, from a published comparison of GPU prices retrieved 2026-11-09.

[[machine]]
name = "aws-p5.48xlarge"
description = "Amazon EC2 p5.48xlarge on-demand, us-east-1: 8x NVIDIA H100 80 GB (the whole instance; a one-GPU measurement uses an eighth of it)"
usd_per_hour = 55.04
source = "https://raw.githubusercontent.com/datareceipts/data-receipts/main/109-gpu-pricing/hyperscalers.json"
date = "2026-11-09"

# Lambda on-demand, as recorded from https://lambda.ai/pricing by a published benchmark dataset
# checked on 2026-09-25.

[[machine]]
name = "lambda-1x-h100-sxm"
description = "Lambda on-demand instance: 1x NVIDIA H100 SXM 80 GB"
usd_per_hour = 4.29
source = "https://raw.githubusercontent.com/tgarg01/silybench-data/main/derived/csv/gpu_prices.csv"
date = "2026-09-25"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn hand_computed_costs() {
        // One hour at $1.006/h; 90 s at $3.60/h = $0.09.
        assert!(close(usd_for_seconds(3600.0, 1.006), 1.006));
        assert!(close(usd_for_seconds(90.0, 3.6), 0.09));
        // 50 windows/s, 1.2 windows per question: 1000 questions = 1200 windows = 24 s;
        // at $0.36/h that is 24 / 3600 * 0.36 = $0.0024.
        assert!(close(usd_per_1000_questions(50.0, 1.2, 0.36), 0.0024));
        // Twice the throughput halves the cost; a free machine costs nothing.
        assert!(close(usd_per_1000_questions(100.0, 1.2, 0.36), 0.0012));
        assert_eq!(usd_per_1000_questions(100.0, 1.2, 0.0), 0.0);
        assert!(usd_per_1000_questions(0.0, 1.0, 1.0).is_infinite());
    }
}
