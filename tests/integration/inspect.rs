//! Tests of `vitconv inspect`.
