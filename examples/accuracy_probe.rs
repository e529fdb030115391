//! Helper of `scripts/accuracy-vs-transformers.sh` (not a test): exposes, through the library,
//! the two things the side-by-side check needs from bertbench besides its commands' outputs.
//!
//! usage:
//!   cargo run --release --example accuracy_probe -- order N SEED EPOCHS
//!       the training features' order per epoch, as `bertbench train --seed SEED` draws it
//!       (JSON: a list of EPOCHS lists of N indices), so another trainer can use the same order;
//!   cargo run --release --example accuracy_probe -- logits MODEL DATASET LIMIT MAX_SEQ STRIDE OUT
//!       every window of the first LIMIT questions run as `bertbench eval` runs it (same
//!       tokenizer, windows, batches and kernels), written to OUT as JSON lines:
//!       `{"id", "input_ids", "start_logits", "end_logits"}` over the window's real tokens.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bertbench::answer::{real_length, run_model};
use bertbench::squad::{load_tokenizer, read_dataset, FeatureConfig};
use bertbench::train::trainer::epoch_order;
use candle_core::{DType, Device};

fn main() -> Result<()> {
    bertbench::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<usize> {
        args.get(i)
            .with_context(|| format!("argument {i} missing"))?
            .parse()
            .with_context(|| format!("argument {i} must be a whole number"))
    };
    match args.first().map(String::as_str) {
        Some("order") => {
            let (n, seed, epochs) = (num(1)?, num(2)? as u64, num(3)?);
            let orders: Vec<Vec<usize>> = (0..epochs).map(|e| epoch_order(n, seed, e)).collect();
            println!("{}", serde_json::to_string(&orders)?);
        }
        Some("logits") if args.len() == 7 => {
            let dir = Path::new(&args[1]);
            let (limit, max_seq_length, doc_stride) = (num(3)?, num(4)?, num(5)?);
            let (mut model, _) = bertbench::models::load_dir(dir, DType::F32, &Device::Cpu)?;
            model
                .prepare_for_inference(bertbench::device::Precision::F32)
                .unwrap();
            let tokenizer = load_tokenizer(dir)?;
            let dataset = read_dataset(Path::new(&args[2]))?.first_questions(limit);
            let examples: Vec<_> = dataset.examples().collect();
            let cfg = FeatureConfig {
                max_seq_length,
                doc_stride,
                ..FeatureConfig::default()
            };
            cfg.validate()?;
            let features = tokenizer.features(&examples, &cfg)?;
            let (starts, ends) = run_model(&model, &features, 32, |_| {})?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&args[6])?);
            for (i, f) in features.iter().enumerate() {
                let n = real_length(f);
                let row = serde_json::json!({
                    "id": examples[f.example_index].id,
                    "input_ids": &f.input_ids[..n],
                    "start_logits": &starts[i][..n],
                    "end_logits": &ends[i][..n],
                });
                writeln!(out, "{row}")?;
            }
            out.flush()?;
        }
        _ => bail!(
            "usage: accuracy_probe order N SEED EPOCHS | \
             accuracy_probe logits MODEL DATASET LIMIT MAX_SEQ STRIDE OUT"
        ),
    }
    Ok(())
}
