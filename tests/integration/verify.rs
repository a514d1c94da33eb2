//! Tests of `vitconv verify`.
