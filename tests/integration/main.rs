//! The one integration test binary: runs the built `vitconv` executable as a user would.
//!
//! Index:
//! - `common`: paths to fixtures and the binary, tolerances, small helpers.
//! - `inspect`: `vitconv inspect` on every format, grouping, stats, JSON, bad input.
//! - `convert`: `vitconv npz-to-pt` on every golden case and layout, options, refusals.
//! - `verify`: `vitconv verify` passes good conversions and catches planted bugs (feature `verify`).

mod common;
mod convert;
mod inspect;
#[cfg(feature = "verify")]
mod verify;
