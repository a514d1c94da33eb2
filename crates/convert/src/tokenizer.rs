//! SentencePiece tokenizer models given with `--tokenizer`: read within a size limit, parsed (pieces with their
//! scores and types, the trainer and normaliser settings), told apart by kind, checked against the text
//! tower's vocabulary, and turned into the files transformers and open_clip load.
//!
//! Two kinds, told by the pieces themselves:
//! - **SigLIP** (SigLIP 1's vocabularies): `</s>` ends and pads every sequence. Written as `spiece.model` with
//!   transformers' `SiglipTokenizer` configs, which read the model file itself (lower case, no punctuation).
//! - **Gemma** (SigLIP 2's, the Gemma vocabulary): `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3. big_vision
//!   (`lower|tok(model="gemma", bos="no", eos="sticky")`) lowercases ASCII letters only, encodes with the
//!   model's own `EncodeAsIds`, adds no BOS, appends `<eos>` (kept last when truncating) and pads with `<pad>`.
//!   Written as a fast `tokenizer.json` (the tokenizers library's format) built from the pieces: 26 `Replace`
//!   rules `A`->`a` ... `Z`->`z` (not `Lowercase`, which lowercases `Ä` too), spaces as `▁` (the model's
//!   identity normalisation, no dummy prefix), a Unigram or BPE model as `trainer_spec.model_type` says, `<eos>`
//!   appended by the post-processor (transformers truncates before adding it: the EOS stays last), plus
//!   `tokenizer_config.json` (no BOS, EOS, `<pad>` on the right) and the model copied as `tokenizer.model`.
//!   The BPE merges follow SentencePiece's rule: the adjacent pair whose joined piece scores highest merges
//!   first, so the merges are every split of a piece into two pieces, by the joined piece's score.
//!
//! A `.npz` holds no vocabulary, so the ids a tokenizer gives are only right if its pieces are the model's:
//! the check here catches a tokenizer with more pieces than the embedding has rows, the one mismatch the
//! shapes can see. The model file is copied byte for byte.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::plan::SideFile;

/// The largest tokenizer model read: published SentencePiece models are 0.8 to 4.5 MB (Gemma's 256k
/// pieces); 64 MiB leaves room for any real one and refuses a wrong file before it is read whole.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The SentencePiece model's name inside the output folder for the SigLIP kind (`SiglipTokenizer`'s
/// `vocab_file`).
pub const SPIECE_FILE: &str = "spiece.model";
/// The SentencePiece model's name inside the output folder for the Gemma kind (as Gemma's releases name it).
pub const GEMMA_MODEL_FILE: &str = "tokenizer.model";
/// The fast tokenizer (tokenizers' JSON) the Gemma kind writes.
pub const TOKENIZER_JSON_FILE: &str = "tokenizer.json";
/// The tokenizer's configuration inside the output folder.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens' names inside the output folder.
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// Every file the tokenizer puts into a folder. A folder written again with `--force` and without
/// `--tokenizer` (or with the other kind) loses the ones an earlier run wrote, so that new weights never sit
/// beside an old tokenizer.
pub const FOLDER_FILES: [&str; 5] = [
    SPIECE_FILE,
    GEMMA_MODEL_FILE,
    TOKENIZER_JSON_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
];

/// The end-of-sequence piece SigLIP 1 pads with and pools after.
const EOS_PIECE: &str = "</s>";

/// Gemma's special pieces, ids 0 to 3: pad, end of sequence, beginning of sequence, unknown.
pub const GEMMA_SPECIALS: [&str; 4] = ["<pad>", "<eos>", "<bos>", "<unk>"];
/// Gemma's ids of its pad, EOS and BOS pieces (their places in [`GEMMA_SPECIALS`]).
const GEMMA_PAD: usize = 0;
const GEMMA_EOS: usize = 1;
const GEMMA_BOS: usize = 2;
const GEMMA_UNK: usize = 3;

/// SentencePiece's piece types (`ModelProto.SentencePiece.Type`).
const TYPE_NORMAL: u64 = 1;
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

/// SentencePiece's algorithms (`TrainerSpec.ModelType`).
const MODEL_UNIGRAM: u64 = 1;
const MODEL_BPE: u64 = 2;

/// Longest piece text quoted in an error.
const QUOTED_CHARS: usize = 32;

/// Which convention a tokenizer's special pieces follow, and so which files are written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// SigLIP 1: `</s>` ends and pads sequences.
    #[serde(rename = "SigLIP")]
    Siglip,
    /// Gemma (SigLIP 2): `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3; no BOS, EOS appended, `<pad>` pads.
    Gemma,
}

impl Kind {
    /// The kind's name, as reports and `inspect` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Siglip => "SigLIP",
            Kind::Gemma => "Gemma",
        }
    }
}

/// One piece: where its text is in the file, its score and its type.
#[derive(Debug, Clone)]
struct Piece {
    text: Range<usize>,
    score: f32,
    kind: u64,
}

/// A checked SentencePiece model.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's bytes, written unchanged into the output.
    pub bytes: Vec<u8>,
    /// How many pieces it holds: token ids run from 0 to `pieces - 1`.
    pub pieces: usize,
    /// The id of the end-of-sequence piece (`</s>` or `<eos>`).
    pub eos_id: usize,
    /// The id sequences are padded with (`</s>` for SigLIP, `<pad>` for Gemma).
    pub pad_id: usize,
    /// The id of the beginning-of-sequence piece, which the Gemma kind has (and never adds).
    pub bos_id: Option<usize>,
    /// The unknown piece's text (`<unk>`).
    pub unk: String,
    /// The convention its special pieces follow.
    pub kind: Kind,
    /// Every piece, in id order.
    entries: Vec<Piece>,
    /// `trainer_spec.model_type` (unigram or BPE for the Gemma kind).
    model_type: u64,
    /// `trainer_spec.byte_fallback`.
    byte_fallback: bool,
}

/// Reads and checks a SentencePiece model file.
pub fn read(path: &Path) -> Result<SentencePiece> {
    // A regular file only (a FIFO given as the tokenizer blocked the run), of bounded size.
    let bytes = match vitconv_tensors::read_regular_file(path, MAX_TOKENIZER_BYTES) {
        Ok(b) => b,
        Err(vitconv_tensors::Error::FileTooLarge { size, .. }) => {
            return Err(too_large(path, size))
        }
        Err(e) => return Err(e.into()),
    };
    from_bytes(path, bytes)
}

/// Checks a SentencePiece model held in `bytes` (named `path` in errors): the same limit and parse as
/// [`read`], for bytes that did not come from a file (the fuzz target).
///
/// The parse allocates, beyond `bytes` itself, one small record per piece (each piece takes at least two
/// bytes of the input) and the texts an error quotes: every length is checked against the bytes left before
/// anything is taken, and nesting stops at a piece's fields and the two spec messages.
pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SentencePiece> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > MAX_TOKENIZER_BYTES {
        return Err(too_large(path, size));
    }
    parse(path, bytes)
}

/// Parses untrusted `bytes` as a SentencePiece model through [`from_bytes`], for the `sentencepiece` fuzz target
/// and the replay of its seeds; returns how many pieces an accepted model holds.
///
/// Checks what every outcome must satisfy, so that a violation is a panic and a finding: an accepted model keeps
/// the input unchanged, has at least one piece and no more than its bytes can encode (each piece takes at least
/// two bytes: its key and its length), its EOS, pad and unknown ids among them (Gemma's at 1, 0 and 3), an
/// unknown piece whose text is part of the input, passes [`SentencePiece::check_vocab`] against exactly its own
/// number of pieces and no fewer, and gives its kind's files (the Gemma kind's `tokenizer.json` valid JSON with
/// one vocabulary entry per piece); a refusal for its format names an offset inside the input.
pub fn fuzz_model(bytes: &[u8]) -> Result<usize> {
    let path = Path::new("fuzz/spiece.model");
    match from_bytes(path, bytes.to_vec()) {
        Ok(sp) => {
            assert_eq!(sp.bytes, bytes, "the model's bytes are the input's");
            assert!(sp.pieces >= 1, "an accepted model has a piece");
            assert!(
                sp.pieces.saturating_mul(2) <= bytes.len(),
                "{} pieces from {} bytes",
                sp.pieces,
                bytes.len()
            );
            assert!(sp.eos_id < sp.pieces, "the EOS is one of the pieces");
            assert!(sp.pad_id < sp.pieces, "the pad is one of the pieces");
            assert!(
                sp.unk.len() <= bytes.len(),
                "the unknown piece is in the input"
            );
            assert!(sp.check_vocab(sp.pieces).is_ok(), "fits its own vocabulary");
            assert!(
                sp.check_vocab(sp.pieces.saturating_sub(1)).is_err(),
                "a smaller vocabulary is refused"
            );
            let (side, (name, copied)) = sp.files(8);
            assert_eq!(copied, bytes, "the model is copied unchanged");
            match sp.kind {
                Kind::Siglip => {
                    assert_eq!(name, SPIECE_FILE);
                    assert_eq!(side.len(), 2, "two configs");
                }
                Kind::Gemma => {
                    assert_eq!((sp.pad_id, sp.eos_id, sp.bos_id), (0, 1, Some(2)));
                    assert_eq!(sp.unk, GEMMA_SPECIALS[GEMMA_UNK]);
                    assert_eq!(name, GEMMA_MODEL_FILE);
                    assert_eq!(side.len(), 3, "tokenizer.json and two configs");
                    let vocab = side
                        .iter()
                        .find(|s| s.name == TOKENIZER_JSON_FILE)
                        .and_then(|s| serde_json::from_str::<Value>(&s.contents).ok())
                        .and_then(|j| match j.pointer("/model/vocab") {
                            Some(Value::Array(a)) => Some(a.len()),
                            Some(Value::Object(o)) => Some(o.len()),
                            _ => None,
                        });
                    // One entry per piece (a piece defined twice is refused, so a BPE map loses none).
                    assert_eq!(vocab, Some(sp.pieces), "vocabulary entries");
                }
            }
            Ok(sp.pieces)
        }
        Err(e) => {
            if let Error::TokenizerFormat { offset, .. } = &e {
                assert!(*offset <= bytes.len(), "offset {offset} past the input");
            }
            Err(e)
        }
    }
}

/// The refusal of a model file of `size` bytes, past [`MAX_TOKENIZER_BYTES`].
fn too_large(path: &Path, size: u64) -> Error {
    Error::TokenizerTooLarge {
        path: path.to_path_buf(),
        size,
        max: MAX_TOKENIZER_BYTES,
    }
}

/// A protobuf reader over one message's bytes; every read is bounds-checked and names its offset on failure.
struct Proto<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// Where `bytes` starts in the file, for error offsets inside nested messages.
    base: usize,
}

impl<'a> Proto<'a> {
    fn bad(&self, expected: &'static str) -> Error {
        Error::TokenizerFormat {
            path: self.path.to_path_buf(),
            offset: self.base.saturating_add(self.pos),
            expected,
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.bad("a varint, not the end of the data"))?;
            self.pos = self.pos.saturating_add(1);
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad("a varint of at most 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<(usize, &'a [u8])> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.bad("a field that ends inside the data"))?;
        self.pos = end;
        let slice = self
            .bytes
            .get(start..end)
            .ok_or_else(|| self.bad("a field that ends inside the data"))?;
        Ok((self.base.saturating_add(start), slice))
    }

    /// The next field: its number and, for length-delimited fields, its bytes with their file offset; other
    /// wire types are skipped (varints give their value).
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| self.bad("a length that fits in memory"))?;
                let (offset, data) = self.take(len)?;
                Field::Bytes(offset, data)
            }
            5 => {
                let (_, b) = self.take(4)?;
                let mut le = [0u8; 4];
                le.copy_from_slice(b);
                Field::Fixed32(u32::from_le_bytes(le))
            }
            _ => {
                // The error names the field's key, where the foreign data starts.
                self.pos = start;
                return Err(self.bad("a protobuf wire type 0, 1, 2 or 5"));
            }
        };
        Ok(Some((number, field)))
    }
}

enum Field<'a> {
    Varint(u64),
    Bytes(usize, &'a [u8]),
    Fixed32(u32),
    Other,
}

/// What the Gemma kind needs of `trainer_spec` and `normalizer_spec`, with proto2's defaults where a field is
/// absent (sentencepiece_model.proto: `model_type` UNIGRAM, `add_dummy_prefix`, `remove_extra_whitespaces` and
/// `escape_whitespaces` true).
struct Settings {
    model_type: u64,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    precompiled_charsmap: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model_type: MODEL_UNIGRAM,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            precompiled_charsmap: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// Parses `ModelProto`: field 1 is each `SentencePiece` (field 1 its text, 2 its score, 3 its type), field 2
/// the `TrainerSpec` (3 `model_type`, 24 `treat_whitespace_as_suffix`, 35 `byte_fallback`), field 3 the
/// `NormalizerSpec` (2 `precompiled_charsmap`, 3 `add_dummy_prefix`, 4 `remove_extra_whitespaces`, 5
/// `escape_whitespaces`). Fields of another wire type than declared are skipped.
fn parse(path: &Path, bytes: Vec<u8>) -> Result<SentencePiece> {
    let mut entries = Vec::new();
    let mut settings = Settings::default();
    {
        let mut top = Proto {
            path,
            bytes: &bytes,
            pos: 0,
            base: 0,
        };
        while let Some((number, field)) = top.field()? {
            let Field::Bytes(offset, data) = field else {
                continue;
            };
            let mut msg = Proto {
                path,
                bytes: data,
                pos: 0,
                base: offset,
            };
            match number {
                1 => entries.push(piece(&mut msg)?),
                2 => {
                    while let Some((n, f)) = msg.field()? {
                        match (n, f) {
                            (3, Field::Varint(v)) => settings.model_type = v,
                            (24, Field::Varint(v)) => settings.treat_whitespace_as_suffix = v != 0,
                            (35, Field::Varint(v)) => settings.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                3 => {
                    while let Some((n, f)) = msg.field()? {
                        match (n, f) {
                            (2, Field::Bytes(_, d)) => {
                                settings.precompiled_charsmap = !d.is_empty()
                            }
                            (3, Field::Varint(v)) => settings.add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => settings.remove_extra_whitespaces = v != 0,
                            (5, Field::Varint(v)) => settings.escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let pieces = entries.len();
    if pieces == 0 {
        return Err(Error::TokenizerFormat {
            path: path.to_path_buf(),
            offset: 0,
            expected: "a SentencePiece model (ModelProto) with at least one piece",
        });
    }
    let text = |i: usize| {
        entries
            .get(i)
            .and_then(|p: &Piece| bytes.get(p.text.clone()))
            .and_then(|b| std::str::from_utf8(b).ok())
    };
    let gemma = GEMMA_SPECIALS
        .iter()
        .enumerate()
        .all(|(i, s)| text(i) == Some(*s))
        && entries
            .get(GEMMA_UNK)
            .is_some_and(|p| p.kind == TYPE_UNKNOWN);
    if gemma {
        check_gemma(path, &bytes, &entries, &settings)?;
        return Ok(SentencePiece {
            path: path.to_path_buf(),
            pieces,
            eos_id: GEMMA_EOS,
            pad_id: GEMMA_PAD,
            bos_id: Some(GEMMA_BOS),
            unk: GEMMA_SPECIALS[GEMMA_UNK].to_string(),
            kind: Kind::Gemma,
            model_type: settings.model_type,
            byte_fallback: settings.byte_fallback,
            entries,
            bytes,
        });
    }
    let eos_id = (0..pieces).find(|i| text(*i) == Some(EOS_PIECE));
    let unk = entries
        .iter()
        .position(|p| p.kind == TYPE_UNKNOWN)
        .and_then(text);
    let (Some(eos_id), Some(unk)) = (eos_id, unk) else {
        return Err(Error::TokenizerPieces {
            path: path.to_path_buf(),
            pieces,
            siglip_missing: match (eos_id, unk) {
                (None, None) => "</s> and an unknown piece",
                (None, Some(_)) => "</s>",
                _ => "an unknown piece",
            },
            first: (0..GEMMA_SPECIALS.len())
                .filter_map(text)
                .map(|t| t.chars().take(QUOTED_CHARS).collect())
                .collect(),
        });
    };
    let unk = unk.to_string();
    Ok(SentencePiece {
        path: path.to_path_buf(),
        pieces,
        eos_id,
        pad_id: eos_id,
        bos_id: None,
        unk,
        kind: Kind::Siglip,
        model_type: settings.model_type,
        byte_fallback: settings.byte_fallback,
        entries,
        bytes,
    })
}

/// One `SentencePiece` message: its text (UTF-8, as a range of the file), score (finite) and type.
fn piece(msg: &mut Proto<'_>) -> Result<Piece> {
    let (mut text, mut score, mut kind) = (None, 0f32, TYPE_NORMAL);
    while let Some((n, f)) = msg.field()? {
        match (n, f) {
            (1, Field::Bytes(offset, t)) => text = Some((offset, t)),
            (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
            (3, Field::Varint(v)) => kind = v,
            _ => {}
        }
    }
    let (offset, t) = text.unwrap_or((msg.base, &[][..]));
    std::str::from_utf8(t).map_err(|_| msg.bad("a piece whose text is UTF-8"))?;
    if !score.is_finite() {
        return Err(msg.bad("a piece whose score is a finite number"));
    }
    Ok(Piece {
        text: offset..offset.saturating_add(t.len()),
        score,
        kind,
    })
}

/// Refuses a Gemma-kind model whose encoding the fast tokenizer written for it would not reproduce: another
/// algorithm than unigram or BPE, a normalisation other than Gemma's, or a piece defined twice (SentencePiece
/// refuses to load those, and a vocabulary map would keep only one).
fn check_gemma(path: &Path, bytes: &[u8], entries: &[Piece], s: &Settings) -> Result<()> {
    if s.model_type != MODEL_UNIGRAM && s.model_type != MODEL_BPE {
        return Err(Error::TokenizerModelType {
            path: path.to_path_buf(),
            model_type: s.model_type,
        });
    }
    let refuse = |setting, expected| {
        Err(Error::TokenizerNormalizer {
            path: path.to_path_buf(),
            setting,
            expected,
        })
    };
    if s.precompiled_charsmap {
        return refuse(
            "normalizer_spec.precompiled_charsmap (a normalisation such as NFKC)",
            "identity: no precompiled_charsmap",
        );
    }
    if s.add_dummy_prefix {
        return refuse(
            "normalizer_spec.add_dummy_prefix true",
            "add_dummy_prefix false",
        );
    }
    if s.remove_extra_whitespaces {
        return refuse(
            "normalizer_spec.remove_extra_whitespaces true",
            "remove_extra_whitespaces false",
        );
    }
    if !s.escape_whitespaces {
        return refuse(
            "normalizer_spec.escape_whitespaces false",
            "escape_whitespaces true: spaces become \u{2581}",
        );
    }
    if s.treat_whitespace_as_suffix {
        return refuse(
            "trainer_spec.treat_whitespace_as_suffix true",
            "treat_whitespace_as_suffix false",
        );
    }
    let mut seen = HashSet::with_capacity(entries.len());
    for p in entries {
        let text = bytes.get(p.text.clone()).unwrap_or_default();
        if !seen.insert(text) {
            return Err(Error::TokenizerFormat {
                path: path.to_path_buf(),
                offset: p.text.start,
                expected: "a piece whose text no earlier piece has",
            });
        }
    }
    Ok(())
}

impl SentencePiece {
    /// Checks the model against a text tower with `vocab` embedding rows.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        if self.pieces > vocab {
            return Err(Error::TokenizerVocab {
                path: self.path.clone(),
                pieces: self.pieces,
                vocab,
            });
        }
        Ok(())
    }

    /// Piece `i`'s text (checked to be UTF-8 by the parse).
    fn text(&self, i: usize) -> &str {
        self.entries
            .get(i)
            .and_then(|p| self.bytes.get(p.text.clone()))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// `tokenizer_config.json`, `context` tokens at most. SigLIP: transformers' `SiglipTokenizer`, `</s>` pads
    /// and ends every sequence. Gemma: the fast tokenizer of `tokenizer.json`, no BOS, EOS added, `<pad>` on the
    /// right. Both models are trained on sequences padded to exactly the context: pass
    /// `padding='max_length'`.
    pub fn tokenizer_config(&self, context: usize) -> Value {
        match self.kind {
            Kind::Siglip => json!({
                "tokenizer_class": "SiglipTokenizer",
                "processor_class": "SiglipProcessor",
                "model_max_length": context,
                "do_lower_case": true,
                "eos_token": EOS_PIECE,
                "pad_token": EOS_PIECE,
                "unk_token": self.unk,
                "padding_side": "right",
                "additional_special_tokens": [],
                "sp_model_kwargs": {},
            }),
            Kind::Gemma => json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "processor_class": "SiglipProcessor",
                "model_max_length": context,
                "add_bos_token": false,
                "add_eos_token": true,
                "bos_token": self.text(GEMMA_BOS),
                "eos_token": self.text(GEMMA_EOS),
                "pad_token": self.text(GEMMA_PAD),
                "unk_token": self.unk,
                "padding_side": "right",
                "clean_up_tokenization_spaces": false,
            }),
        }
    }

    /// `special_tokens_map.json`.
    pub fn special_tokens(&self) -> Value {
        match self.kind {
            Kind::Siglip => {
                json!({"eos_token": EOS_PIECE, "pad_token": EOS_PIECE, "unk_token": self.unk})
            }
            Kind::Gemma => json!({
                "bos_token": self.text(GEMMA_BOS),
                "eos_token": self.text(GEMMA_EOS),
                "pad_token": self.text(GEMMA_PAD),
                "unk_token": self.unk,
            }),
        }
    }

    /// The Gemma kind's `tokenizer.json` (see the module's notes): ASCII-only lowercasing and spaces as `▁` in
    /// the normaliser, the pieces as a Unigram or BPE model, `<eos>` appended by the post-processor.
    pub fn tokenizer_json(&self) -> Value {
        let texts: Vec<&str> = (0..self.pieces).map(|i| self.text(i)).collect();
        // Control and unknown pieces are special tokens; user-defined ones are matched whole in the normalised
        // text, as SentencePiece matches them before its algorithm.
        let added: Vec<Value> = self
            .entries
            .iter()
            .zip(&texts)
            .enumerate()
            .filter(|(_, (p, _))| matches!(p.kind, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(i, (p, t))| {
                json!({
                    "id": i,
                    "content": t,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": p.kind == TYPE_USER_DEFINED,
                    "special": p.kind != TYPE_USER_DEFINED,
                })
            })
            .collect();
        let replace = |from: String, to: String| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
        // big_vision's `tf.strings.lower`: ASCII letters only.
        let mut normalizers: Vec<Value> = (b'A'..=b'Z')
            .map(|c| {
                replace(
                    char::from(c).to_string(),
                    char::from(c.to_ascii_lowercase()).to_string(),
                )
            })
            .collect();
        // SentencePiece's `escape_whitespaces`: a space is the piece character `▁`.
        normalizers.push(replace(" ".to_string(), "\u{2581}".to_string()));
        let model = if self.model_type == MODEL_BPE {
            self.bpe(&texts)
        } else {
            json!({
                "type": "Unigram",
                "unk_id": GEMMA_UNK,
                "vocab": self
                    .entries
                    .iter()
                    .zip(&texts)
                    .map(|(p, t)| json!([t, f64::from(p.score)]))
                    .collect::<Vec<_>>(),
                "byte_fallback": self.byte_fallback,
            })
        };
        let eos = self.text(self.eos_id);
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let special = |type_id: u32| json!({"SpecialToken": {"id": eos, "type_id": type_id}});
        let mut special_tokens = serde_json::Map::new();
        special_tokens.insert(
            eos.to_string(),
            json!({"id": eos, "ids": [self.eos_id], "tokens": [eos]}),
        );
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "model": model,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [seq("A", 0), special(0)],
                "pair": [seq("A", 0), special(0), seq("B", 1), special(1)],
                "special_tokens": special_tokens,
            },
            "decoder": {
                "type": "Sequence",
                "decoders": [
                    replace("\u{2581}".to_string(), " ".to_string()),
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                ],
            },
        })
    }

    /// The BPE model: SentencePiece merges the adjacent pair whose joined piece (normal or user-defined) has
    /// the highest score, the leftmost first; tokenizers merges by rank, the leftmost first. So every split of
    /// such a piece into two such pieces is a merge, ranked by the joined piece's score (then its id, then the
    /// left part's id).
    fn bpe(&self, texts: &[&str]) -> Value {
        let mergeable = |p: &Piece| p.kind == TYPE_NORMAL || p.kind == TYPE_USER_DEFINED;
        let ids: HashMap<&str, usize> = self
            .entries
            .iter()
            .zip(texts)
            .enumerate()
            .filter(|(_, (p, _))| mergeable(p))
            .map(|(i, (_, t))| (*t, i))
            .collect();
        let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
        for (i, (p, t)) in self.entries.iter().zip(texts).enumerate() {
            if !mergeable(p) {
                continue;
            }
            for (k, _) in t.char_indices().skip(1) {
                let (Some(left), Some(right)) = (t.get(..k), t.get(k..)) else {
                    continue;
                };
                if let (Some(l), true) = (ids.get(left), ids.contains_key(right)) {
                    merges.push((p.score, i, *l, left, right));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let vocab: serde_json::Map<String, Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": self.unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": self.byte_fallback,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|m| json!([m.3, m.4])).collect::<Vec<_>>(),
        })
    }

    /// The files a folder output gets: the kind's JSON files as side files, and the model copied unchanged
    /// (as `spiece.model` for SigLIP, `tokenizer.model` for Gemma).
    pub fn files(&self, context: usize) -> (Vec<SideFile>, (String, Vec<u8>)) {
        let pretty = |v: &Value| {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            s.push('\n');
            s
        };
        let mut side = vec![
            SideFile {
                name: TOKENIZER_CONFIG_FILE.to_string(),
                contents: pretty(&self.tokenizer_config(context)),
            },
            SideFile {
                name: SPECIAL_TOKENS_FILE.to_string(),
                contents: pretty(&self.special_tokens()),
            },
        ];
        let model = match self.kind {
            Kind::Siglip => SPIECE_FILE,
            Kind::Gemma => {
                // One line: Gemma's 256k pieces would make a pretty-printed file several times larger.
                let mut json = self.tokenizer_json().to_string();
                json.push('\n');
                side.insert(
                    0,
                    SideFile {
                        name: TOKENIZER_JSON_FILE.to_string(),
                        contents: json,
                    },
                );
                GEMMA_MODEL_FILE
            }
        };
        (side, (model.to_string(), self.bytes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf varint.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field.
    fn bytes_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// A `ModelProto` with these pieces (text, type), each scored -1.5, and a trainer spec field to skip.
    fn model(pieces: &[(&str, u64)]) -> Vec<u8> {
        let scored: Vec<(&str, u64, f32)> = pieces.iter().map(|(t, k)| (*t, *k, -1.5)).collect();
        let mut out = scored_model(&scored);
        bytes_field(2, b"\x08\x01", &mut out);
        out
    }

    /// A `ModelProto` with these pieces (text, type, score) and no specs.
    fn scored_model(pieces: &[(&str, u64, f32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (text, kind, score) in pieces {
            let mut p = Vec::new();
            bytes_field(1, text.as_bytes(), &mut p);
            p.push(2 << 3 | 5);
            p.extend_from_slice(&score.to_le_bytes());
            varint(3 << 3, &mut p);
            varint(*kind, &mut p);
            bytes_field(1, &p, &mut out);
        }
        out
    }

    /// Varint fields (number, value) as one message.
    fn varints(fields: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            varint(n << 3, &mut out);
            varint(*v, &mut out);
        }
        out
    }

    /// Gemma's special pieces and a few normal ones (`ab` and `▁ab` joinable from others), a byte piece, then
    /// a trainer spec of `model_type` with byte fallback and Gemma's normaliser spec with `normalizer` fields
    /// appended (a later field overrides an earlier one).
    fn gemma(model_type: u64, normalizer: &[(u64, u64)]) -> Vec<u8> {
        let mut out = scored_model(&[
            ("<pad>", 3, 0.0),
            ("<eos>", 3, 0.0),
            ("<bos>", 3, 0.0),
            ("<unk>", 2, 0.0),
            ("a", 1, -1.0),
            ("b", 1, -2.0),
            ("\u{2581}ab", 1, -5.0),
            ("\u{2581}", 1, -4.0),
            ("ab", 1, -3.0),
            ("<0x41>", 6, 0.0),
        ]);
        bytes_field(2, &varints(&[(3, model_type), (35, 1)]), &mut out);
        let mut norm = Vec::new();
        bytes_field(1, b"identity", &mut norm);
        norm.extend(varints(&[(3, 0), (4, 0)]));
        norm.extend(varints(normalizer));
        bytes_field(3, &norm, &mut out);
        out
    }

    #[test]
    fn counts_pieces_and_finds_eos_and_unk() {
        let sp = parse(
            Path::new("t.model"),
            model(&[("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("\u{2581}a", 1)]),
        )
        .expect("parses");
        assert_eq!((sp.pieces, sp.eos_id, sp.unk.as_str()), (4, 1, "<unk>"));
        assert_eq!((sp.kind, sp.pad_id, sp.bos_id), (Kind::Siglip, 1, None));
        assert!(sp.check_vocab(4).is_ok());
        assert!(matches!(
            sp.check_vocab(3),
            Err(Error::TokenizerVocab {
                pieces: 4,
                vocab: 3,
                ..
            })
        ));
        let (side, (name, _)) = sp.files(8);
        assert_eq!(name, SPIECE_FILE);
        assert_eq!(side.len(), 2);
    }

    #[test]
    fn gemma_bpe_gives_merges_by_score() {
        let sp = parse(Path::new("g.model"), gemma(MODEL_BPE, &[])).expect("parses");
        assert_eq!(sp.kind, Kind::Gemma);
        assert_eq!((sp.pad_id, sp.eos_id, sp.bos_id), (0, 1, Some(2)));
        assert!(sp.check_vocab(10).is_ok() && sp.check_vocab(9).is_err());
        let j = sp.tokenizer_json();
        assert_eq!(j["model"]["type"], "BPE");
        assert_eq!(j["model"]["byte_fallback"], true);
        // `ab` (score -3) merges before `▁ab` (-5); `▁a` is no piece, so `▁`+`ab` is the only split of `▁ab`.
        assert_eq!(
            j["model"]["merges"],
            json!([["a", "b"], ["\u{2581}", "ab"]])
        );
        assert_eq!(j["model"]["vocab"]["<0x41>"], 9);
        // No BOS; the EOS appended; the specials are special tokens.
        assert_eq!(
            j["post_processor"]["single"][1]["SpecialToken"]["id"],
            "<eos>"
        );
        assert_eq!(
            j["post_processor"]["special_tokens"]["<eos>"]["ids"],
            json!([1])
        );
        let added: Vec<&str> = j["added_tokens"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|t| t["content"].as_str())
            .collect();
        assert_eq!(added, GEMMA_SPECIALS);
        // ASCII letters only, then spaces as `▁`.
        let norms = j["normalizer"]["normalizers"].as_array().expect("list");
        assert_eq!(norms.len(), 27);
        assert_eq!(norms[0]["pattern"]["String"], "A");
        assert_eq!(norms[25]["content"], "z");
        assert_eq!(norms[26]["content"], "\u{2581}");
        let (side, (name, _)) = sp.files(16);
        assert_eq!(name, GEMMA_MODEL_FILE);
        let names: Vec<&str> = side.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                TOKENIZER_JSON_FILE,
                TOKENIZER_CONFIG_FILE,
                SPECIAL_TOKENS_FILE
            ]
        );
        let cfg = sp.tokenizer_config(16);
        assert_eq!(
            (
                &cfg["add_bos_token"],
                &cfg["add_eos_token"],
                &cfg["pad_token"]
            ),
            (&json!(false), &json!(true), &json!("<pad>"))
        );
    }

    #[test]
    fn gemma_unigram_keeps_the_scores() {
        let sp = parse(Path::new("g.model"), gemma(MODEL_UNIGRAM, &[])).expect("parses");
        let j = sp.tokenizer_json();
        assert_eq!(j["model"]["type"], "Unigram");
        assert_eq!(j["model"]["unk_id"], 3);
        assert_eq!(j["model"]["vocab"][5], json!(["b", -2.0]));
        assert_eq!(j["model"]["vocab"].as_array().map(Vec::len), Some(10));
    }

    #[test]
    fn gemma_refuses_what_its_fast_tokenizer_cannot_reproduce() {
        let p = Path::new("g.model");
        assert!(matches!(
            parse(p, gemma(3, &[])),
            Err(Error::TokenizerModelType { model_type: 3, .. })
        ));
        for (field, value, setting) in [
            (3, 1, "normalizer_spec.add_dummy_prefix true"),
            (4, 1, "normalizer_spec.remove_extra_whitespaces true"),
            (5, 0, "normalizer_spec.escape_whitespaces false"),
        ] {
            match parse(p, gemma(MODEL_BPE, &[(field, value)])) {
                Err(Error::TokenizerNormalizer { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
        // No normaliser spec at all: proto2's defaults add a dummy prefix.
        let mut bare = scored_model(&[
            ("<pad>", 3, 0.0),
            ("<eos>", 3, 0.0),
            ("<bos>", 3, 0.0),
            ("<unk>", 2, 0.0),
        ]);
        assert!(matches!(
            parse(p, bare.clone()),
            Err(Error::TokenizerNormalizer { .. })
        ));
        // A precompiled normalisation (NFKC) is refused.
        let mut norm = Vec::new();
        bytes_field(2, b"\x01\x02", &mut norm);
        norm.extend(varints(&[(3, 0), (4, 0)]));
        bytes_field(3, &norm, &mut bare);
        match parse(p, bare) {
            Err(Error::TokenizerNormalizer { setting, .. }) => {
                assert!(setting.contains("precompiled_charsmap"))
            }
            other => panic!("{other:?}"),
        }
        // A piece defined twice.
        let mut twice = gemma(MODEL_BPE, &[]);
        twice.extend(scored_model(&[("a", 1, -9.0)]));
        assert!(matches!(
            parse(p, twice),
            Err(Error::TokenizerFormat { .. })
        ));
        // A score that is not a number.
        assert!(matches!(
            parse(p, scored_model(&[("<pad>", 3, f32::NAN)])),
            Err(Error::TokenizerFormat { .. })
        ));
    }

    #[test]
    fn neither_kind_names_what_is_missing() {
        match parse(
            Path::new("t.model"),
            model(&[("<s>", 3), ("<eos>", 3), ("<unk>", 2), ("a", 1)]),
        ) {
            Err(Error::TokenizerPieces {
                pieces: 4,
                siglip_missing,
                first,
                ..
            }) => {
                assert_eq!(siglip_missing, "</s>");
                assert_eq!(first, ["<s>", "<eos>", "<unk>", "a"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(Path::new("t.model"), model(&[("</s>", 3), ("a", 1)])),
            Err(Error::TokenizerPieces {
                siglip_missing: "an unknown piece",
                ..
            })
        ));
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let mut m = model(&[("</s>", 3), ("<unk>", 2)]);
        m.truncate(m.len() - 3);
        assert!(matches!(
            parse(Path::new("t.model"), m),
            Err(Error::TokenizerFormat { .. })
        ));
        // A JSON file is no protobuf: `{` is field 15 of wire type 3.
        assert!(matches!(
            parse(Path::new("t.json"), b"{\"a\": 1}".to_vec()),
            Err(Error::TokenizerFormat { offset: 0, .. })
        ));
        assert!(matches!(
            parse(Path::new("t.model"), Vec::new()),
            Err(Error::TokenizerFormat { .. })
        ));
        assert!(matches!(
            parse(Path::new("t.model"), model(&[("<unk>", 2), ("a", 1)])),
            Err(Error::TokenizerPieces { pieces: 2, .. })
        ));
        // A length far past the end of the data is refused, not allocated.
        let mut huge = Vec::new();
        varint(1 << 3 | 2, &mut huge);
        varint(u64::MAX >> 1, &mut huge);
        assert!(matches!(
            parse(Path::new("t.model"), huge),
            Err(Error::TokenizerFormat { .. })
        ));
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        assert!(matches!(
            from_bytes(
                Path::new("t.model"),
                vec![0; (MAX_TOKENIZER_BYTES + 1) as usize]
            ),
            Err(Error::TokenizerTooLarge { .. })
        ));
    }

    #[test]
    fn the_golden_gemma_model_parses_as_gemma_unigram() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-gopt-tiny/tokenizer.model");
        let sp = read(&path).expect("reads");
        assert_eq!((sp.kind, sp.pieces), (Kind::Gemma, 300));
        assert_eq!(sp.tokenizer_json()["model"]["type"], "Unigram");
        assert!(fuzz_model(&sp.bytes).is_ok());
    }
}
