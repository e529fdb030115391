//! Token-id inputs as JSON: the `inputs` object of the parity fixtures' `expected.json`,
//! `{"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]] | null}`.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::config::{ModelConfig, ModelType};
use super::qa::Batch;
use crate::error::input;

/// A rectangular batch of token ids with its mask and optional token types.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenInputs {
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Vec<Vec<i64>>,
    #[serde(default)]
    pub token_type_ids: Option<Vec<Vec<i64>>>,
}

impl TokenInputs {
    /// Reads an inputs file; also accepts a whole fixture `expected.json` and takes its
    /// `inputs` object.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| input(format!("cannot read {origin}: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| input(format!("{origin}: not valid JSON: {e}")))?;
        let value = match value.get("inputs") {
            Some(inner) if value.get("input_ids").is_none() => inner.clone(),
            _ => value,
        };
        serde_path_to_error::deserialize(value)
            .map_err(|e| input(format!("{origin}: field `{}`: {}", e.path(), e.inner())))
    }

    /// Checks shapes and value ranges against the model's config; `origin` names the file.
    pub fn validate(&self, config: &ModelConfig, origin: &str) -> Result<()> {
        let rows = self.input_ids.len();
        if rows == 0 {
            return Err(input(format!(
                "{origin}: `input_ids` is empty; expected at least one row"
            )));
        }
        let seq = self.input_ids[0].len();
        if seq == 0 {
            return Err(input(format!("{origin}: `input_ids[0]` is empty")));
        }
        if seq > config.max_position_embeddings {
            return Err(input(format!(
                "{origin}: sequence length {seq} exceeds the model's max_position_embeddings {}",
                config.max_position_embeddings
            )));
        }
        let check = |field: &str, m: &[Vec<i64>], upper: usize, what: &str| -> Result<()> {
            if m.len() != rows {
                return Err(input(format!(
                    "{origin}: `{field}` has {} rows, `input_ids` has {rows}",
                    m.len()
                )));
            }
            for (r, row) in m.iter().enumerate() {
                if row.len() != seq {
                    return Err(input(format!(
                        "{origin}: `{field}[{r}]` has {} tokens, expected {seq} like `input_ids[0]`",
                        row.len()
                    )));
                }
                if let Some((c, v)) = row
                    .iter()
                    .enumerate()
                    .find(|(_, v)| **v < 0 || **v as u64 >= upper as u64)
                {
                    return Err(input(format!(
                        "{origin}: `{field}[{r}][{c}]` = {v} is out of range: expected {what}"
                    )));
                }
            }
            Ok(())
        };
        check(
            "input_ids",
            &self.input_ids,
            config.vocab_size,
            &format!("0 <= id < vocab_size {}", config.vocab_size),
        )?;
        check("attention_mask", &self.attention_mask, 2, "0 or 1")?;
        if let Some(tt) = &self.token_type_ids {
            if config.model_type == ModelType::DistilBert {
                if tt.iter().flatten().any(|v| *v != 0) {
                    return Err(input(format!(
                        "{origin}: `token_type_ids` given, but DistilBERT has no token-type embeddings; pass null"
                    )));
                }
            } else {
                check(
                    "token_type_ids",
                    tt,
                    config.type_vocab_size,
                    &format!("0 <= type < type_vocab_size {}", config.type_vocab_size),
                )?;
            }
        }
        Ok(())
    }

    /// The batch as u32 tensors on `device`. Call [`Self::validate`] first.
    pub fn to_batch(&self, device: &Device) -> Result<Batch> {
        let tensor = |m: &[Vec<i64>]| -> Result<Tensor> {
            let rows = m.len();
            let flat: Vec<u32> = m.iter().flatten().map(|v| *v as u32).collect();
            let cols = flat.len() / rows.max(1);
            Ok(Tensor::from_vec(flat, (rows, cols), device)?)
        };
        Ok(Batch {
            input_ids: tensor(&self.input_ids)?,
            attention_mask: tensor(&self.attention_mask)?,
            token_type_ids: self.token_type_ids.as_deref().map(tensor).transpose()?,
        })
    }
}
