//! BERT-family models for extractive question answering.
