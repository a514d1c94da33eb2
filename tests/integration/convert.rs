//! Tests of `vitconv convert`.
