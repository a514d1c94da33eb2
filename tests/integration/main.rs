//! The one integration test binary: runs the built `vitconv` executable as a user would.
//!
//! Index:
//! - `common`: paths to fixtures and the binary, tolerances, small helpers.
//! - `inspect`: `vitconv inspect` on every format, grouping, stats, JSON, bad input.
//! - `convert`: `vitconv npz-to-pt` on every golden case and layout, options, refusals; `--help` naming every
//!   family and container of the registries.
//! - `batch`: `vitconv npz-to-pt SRC_DIR OUT_DIR`: same relative paths, byte-identical to single conversions,
//!   resuming (skip, touched source, changed options, `--force`), broken and refused files among good ones,
//!   `--json`, usage errors, an interrupt.
//! - `siglip`: two-tower big_vision checkpoints: the hf and open_clip folders, `--tower image`,
//!   refusals, the inspect summary.
//! - `naflex`: the SigLIP 2 NaFlex checkpoint: the transformers `Siglip2Model` and timm `NaFlexVit` folders, the
//!   `vitconv.config` they declare, refusals (CLIP-style layouts, open_clip, options, bad kernels and grids),
//!   inspect.
//! - `paligemma`: PaliGemma checkpoints: `inspect` on the tiny files and on the published shapes (sparse
//!   files), the refusal without `--tower image`, the hf and timm image towers with the projection.
//! - `verify`: `vitconv verify` passes good conversions and catches planted bugs (feature `verify`).
//! - `containers`: big_vision `.bv` workdirs, Orbax checkpoints and flax msgpack files through `inspect` and
//!   `npz-to-pt`: the same bytes as the `.npz` conversion; damaged, linked-out and lying checkpoints refused.
//! - `hardening`: hostile pickles run nothing; failed conversions (unwritable directory, a source
//!   breaking half-way, a full disk) leave no output and existing files intact; only `--force` replaces;
//!   nothing written through a planted link; lying depths and huge position grids refused up front.
//! - `modules`: no crate's module graph has an import circle (read from the sources).

mod batch;
mod common;
mod containers;
mod convert;
mod hardening;
mod inspect;
mod modules;
mod naflex;
mod paligemma;
mod siglip;
#[cfg(feature = "verify")]
mod verify;
