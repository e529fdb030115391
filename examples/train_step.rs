//! Benchmark (not a test): where a training step's time goes (forward, loss, backward,
//! AdamW), for a built-in model with random weights.
//!
//! usage: cargo run --release --example train_step [model] [batch] [seq] [steps]

use std::time::Instant;

use bertbench::compute::optim::{grads_of, AdamW, AdamWConfig};
use bertbench::models::trainable::{qa_loss, TrainableModel};
use bertbench::models::{Batch, ForwardCtx, ModelConfig};
use candle_core::{DType, Device, Tensor};

fn main() -> anyhow::Result<()> {
    bertbench::runtime::init();
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("bert-base-uncased", String::as_str);
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (b, s, steps) = (arg(2, 8), arg(3, 128), arg(4, 4));
    let config = ModelConfig::builtin(name).expect("a built-in model name");
    let dev = Device::Cpu;
    let model = TrainableModel::random(&config, 0, DType::F32, &dev)?;
    let mut opt = AdamW::new(&model.params, AdamWConfig::default())?;
    let ids: Vec<u32> = (0..b * s)
        .map(|i| (i * 7919 % 20000 + 1000) as u32)
        .collect();
    let batch = Batch {
        input_ids: Tensor::from_vec(ids, (b, s), &dev)?,
        attention_mask: Tensor::ones((b, s), DType::U32, &dev)?,
        token_type_ids: None,
    };
    let pos: Vec<u32> = (0..b).map(|i| (i * 13 % s) as u32).collect();
    let pos = Tensor::from_vec(pos, b, &dev)?;
    println!("{name} training step, batch {b} x {s}");
    for step in 0..steps {
        // As `TrainableModel::loss_and_grads` does, with the phases timed.
        bertbench::runtime::on_compute_pool(|| -> anyhow::Result<()> {
            let t0 = Instant::now();
            let out = model
                .model
                .forward(&batch, &mut ForwardCtx::training(step as u64))?;
            let t1 = Instant::now();
            let loss = qa_loss(&out, &pos, &pos)?;
            let store = loss.backward()?;
            let t2 = Instant::now();
            let grads = grads_of(&model.params, &store);
            drop(store);
            opt.step(&grads, 1e-5, 1.0)?;
            let t3 = Instant::now();
            println!(
            "step {step}: forward {:.0} ms, loss+backward {:.0} ms, AdamW {:.0} ms, total {:.0} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t3 - t0).as_secs_f64() * 1e3
        );
            Ok(())
        })?;
    }
    Ok(())
}
