//! SQuAD data, tokenisation into windows, answer decoding and the official v1.1 metric.
